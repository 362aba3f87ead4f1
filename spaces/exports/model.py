"""Model exports of a static net: TorchScript, torch.export (.pt2), ONNX and a state dict with the spec embedded;
of the dynamic supernet: torch.export, ONNX and a state dict (its dense masked forward, ``dynamic.py``).

Layout of every exported model: input ``image`` (N, 3, H, W) float32 with H and W multiples of 32,
output ``logits`` (N, num_classes, H, W). Every model format keeps N, H and W symbolic, so one file runs
at any such size, with plain torch / onnxruntime and without routespace installed:

- TorchScript (``torch.jit.trace``; deprecated in torch 2.13 but still loads with ``torch.jit.load``);
- torch.export (``torch.export.export`` with dynamic N, H = 32 h, W = 32 w; ``torch.export.load``);
- ONNX, by the exporter torch recommends (``dynamo=True``, from the same torch.export program) when
  ``onnxscript`` is installed, else by the older TorchScript-based exporter; opset 18 either way.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Union

import torch
from torch import nn

from ..architecture import Architecture
from ..builder import StaticNet, build
from ..errors import RoutespaceError

ONNX_OPSET = 18  # the lowest opset the dynamo exporter implements; the TorchScript exporter writes it too
STATE_DICT_FORMAT = "routespace.state_dict"
STATE_DICT_VERSION = 1
DEFAULT_TRACE_SIZE = (64, 64)
MAX_SIDE = 8192  # the spec size limit: torch.export programs accept H, W = 32, 64, ..., 8192
SPEC_FILE = "routespace_spec.json"  # extra file of a .pt2 export: the architecture, for reference

if TYPE_CHECKING:
    from ..supernet import DynamicNet

Net = Union[StaticNet, "DynamicNet"]  # what the model formats take


def _is_dynamic(net: nn.Module) -> bool:
    from ..supernet import DynamicNet

    return isinstance(net, DynamicNet)


def _traceable(net: Net, size: tuple[int, int]) -> tuple[nn.Module, dict[str, str]]:
    """The eval-mode module an exporter traces (a dynamic net: its logits wrapper) and the extra files of
    its .pt2 (the spec, for reference)."""
    if _is_dynamic(net):
        import json

        from .dynamic import SPEC_FILE as DYNAMIC_SPEC_FILE
        from .dynamic import DynamicLogits

        return DynamicLogits(net, size), {DYNAMIC_SPEC_FILE: json.dumps(net.spec(), sort_keys=True)}
    return net.eval(), {SPEC_FILE: net.arch.to_json()}


def example_input(size: tuple[int, int] | None = None, batch: int = 1) -> torch.Tensor:
    h, w = size or DEFAULT_TRACE_SIZE
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))


def trace(net: StaticNet, size: tuple[int, int] | None = None) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of an eval-mode static net, valid at any input size (multiples of 32)."""
    net = net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.x deprecation notices for jit.trace
        with torch.no_grad():
            return torch.jit.trace(net, example_input(size), check_trace=False)


def save_torchscript(net: Net, path: str | Path, size: tuple[int, int] | None = None) -> str:
    from ..fileio import atomic_path

    if _is_dynamic(net):
        raise RoutespaceError("the dynamic net is exported as a torch.export program or ONNX, not TorchScript: "
                              "use --format export or onnx")
    traced = trace(net, size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save deprecation notice
        torch.jit.save(traced, str(tmp))
    return "torch.jit.trace, symbolic N, H, W"


@contextlib.contextmanager
def _symbolic_sizes() -> Iterator[None]:
    """While exporting, do not specialise size-1 dimensions: ``backed_size_oblivious`` keeps torch.export
    from assuming the stride-32 feature map is never 1 pixel wide, so 32-pixel sides stay valid inputs.
    (The resampling sizes stay symbolic by themselves: ``cells.upsample_to`` casts them to ``int`` only
    outside tracing and exporting.)"""
    config = getattr(getattr(torch.fx, "experimental", None), "_config", None)
    oblivious = (config.patch(backed_size_oblivious=True) if hasattr(config, "backed_size_oblivious")
                 else contextlib.nullcontext())
    with oblivious:
        yield


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """No warnings, progress prints or log lines from the exporters (the CLI prints one line)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example_size(size: tuple[int, int] | None) -> tuple[int, int]:
    """The example input's size: ``size`` (default 64x64), a side below 64 raised to 64, since torch.export
    specialises dimensions traced at size 1 (and a 32-pixel side is 1 pixel at stride 32)."""
    h, w = size or DEFAULT_TRACE_SIZE
    return max(h, 64), max(w, 64)


def export_program(net: Net, size: tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of an eval-mode net with dynamic batch and H, W = 32 k (k <= 256).

    ``size`` is the example input (see :func:`_example_size`); the program accepts every valid size. A
    :class:`DynamicNet` is exported as its dense masked forward, returning the logits (``dynamic.py``).
    """
    return _export_program(*_traceable(net, _example_size(size)), size)[0]


def _export_program(module: nn.Module, extra: dict[str, str], size: tuple[int, int] | None
                    ) -> tuple[torch.export.ExportedProgram, dict[str, str]]:
    from torch.export import Dim

    x = example_input(_example_size(size), batch=2)  # batch 2: N is not specialised to 1
    dims = {0: Dim("N", min=1), 2: 32 * Dim("H_32", min=1, max=MAX_SIDE // 32),
            3: 32 * Dim("W_32", min=1, max=MAX_SIDE // 32)}
    with torch.no_grad(), _symbolic_sizes(), _quiet_export():
        return torch.export.export(module, (x,), dynamic_shapes=(dims,)), extra


def save_export(net: Net, path: str | Path, size: tuple[int, int] | None = None) -> str:
    """A ``.pt2`` file: the torch.export program, with the spec JSON as an extra file (``routespace_spec.json``;
    for a dynamic net ``routespace_dynamic_spec.json``, its ``spec()``)."""
    from ..fileio import write_bytes_atomic

    program, extra = _export_program(*_traceable(net, _example_size(size)), size)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    write_bytes_atomic(path, buffer.getvalue())
    return "torch.export, dynamic N, H, W" + (_DYNAMIC_NOTE if _is_dynamic(net) else "")


_DYNAMIC_NOTE = "; the dynamic net's dense masked forward with its gates, logits only (no skipping)"


def onnx_exporter() -> str:
    """``"dynamo"`` (torch's recommended exporter) when onnxscript is installed, else ``"torchscript"``."""
    return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"


def save_onnx(net: Net, path: str | Path, size: tuple[int, int] | None = None, opset: int = ONNX_OPSET) -> str:
    """ONNX with dynamic axes N, H, W on input ``image`` and output ``logits``, written as one file.

    By the dynamo exporter (from :func:`export_program`) when onnxscript is installed, else by the
    TorchScript-based one; returns which was used.
    """
    if onnx_exporter() == "torchscript":
        _save_onnx_torchscript(net, path, size, opset)
        return (f"opset {opset}, TorchScript-based exporter (pip install onnxscript for the dynamo exporter)"
                + (_DYNAMIC_NOTE if _is_dynamic(net) else ""))
    from ..fileio import write_bytes_atomic

    program = export_program(net, size)
    with _quiet_export():
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=["image"],
                                         output_names=["logits"], verbose=False)
    shape = onnx_program.model.graph.inputs[0].shape
    onnx_program.rename_axes({shape[0]: "N", shape[2]: "H", shape[3]: "W"})
    write_bytes_atomic(path, onnx_program.model_proto.SerializeToString())  # weights inside: one file
    return f"opset {opset}, dynamo exporter" + (_DYNAMIC_NOTE if _is_dynamic(net) else "")


def _save_onnx_torchscript(net: Net, path: str | Path, size: tuple[int, int] | None, opset: int) -> None:
    from ..fileio import atomic_path

    module = _traceable(net, size or DEFAULT_TRACE_SIZE)[0]
    axes = {0: "N", 2: "H", 3: "W"}
    with atomic_path(path) as tmp, torch.no_grad(), _quiet_export():
        torch.onnx.export(
            module,
            (example_input(size),),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
        )


def state_dict_payload(net: Net) -> dict:
    """A plain dict (loadable with ``torch.load(..., weights_only=True)``): format, version, the spec as a
    JSON string (a static net: the canonical architecture JSON; a dynamic net: ``net.spec()``, with format
    ``routespace.dynamic_state_dict``), and the tensors."""
    if _is_dynamic(net):
        import json

        from .dynamic import STATE_DICT_FORMAT as fmt

        spec = json.dumps(net.spec(), sort_keys=True)
    else:
        fmt, spec = STATE_DICT_FORMAT, net.arch.to_json()
    return {
        "format": fmt,
        "version": STATE_DICT_VERSION,
        "spec": spec,
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
    }


def save_state_dict(net: Net, path: str | Path) -> str:
    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state_dict_payload(net), str(tmp))
    return ("dynamic net spec" if _is_dynamic(net) else "spec") + " and weights, torch.load(..., weights_only=True)"


def load_state_dict(path: str | Path) -> Net:
    """Rebuild the net of a state-dict export (spec + weights; a static net, or a dynamic net's export);
    the result is in eval mode."""
    from .dynamic import STATE_DICT_FORMAT as DYNAMIC_FORMAT
    from .dynamic import dynamic_net_from_spec

    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: one line is the contract
            warnings.simplefilter("ignore")
            payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RoutespaceError(f"state dict file {path} does not exist") from None
    except Exception as exc:  # pickle/zip errors of many types
        if str(exc).startswith("Weights only load failed"):
            raise RoutespaceError(f"{path} is not a routespace state dict: it pickles Python objects other than tensors, "
                                  "which could run code when loaded, so it was refused") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RoutespaceError(f"{path} is not a routespace state dict: {first[:120]}") from None
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt not in (STATE_DICT_FORMAT, DYNAMIC_FORMAT):
        raise RoutespaceError(f"{path} is not a routespace state dict (no format {STATE_DICT_FORMAT!r})")
    if payload.get("version") != STATE_DICT_VERSION:
        raise RoutespaceError(f"{path}: unknown state dict version {payload.get('version')!r}")
    if fmt == DYNAMIC_FORMAT:
        net = dynamic_net_from_spec(payload.get("spec", ""), path)
    else:
        net = build(Architecture.from_json(payload.get("spec", "")))
    try:
        net.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise RoutespaceError(f"{path}: weights do not match the embedded spec: {str(exc).splitlines()[0][:160]}") from None
    return net.eval()


def is_state_dict_file(path: str | Path) -> bool:
    """True if ``path`` looks like a torch zip archive (what ``torch.save`` writes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False

