"""Model exports of a static net: TorchScript, torch.export (.pt2), ONNX and a state dict with the spec embedded.

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
from typing import Iterator

import torch

from ..architecture import Architecture
from ..builder import StaticNet, build
from ..errors import RoutespaceError

ONNX_OPSET = 18  # the lowest opset the dynamo exporter implements; the TorchScript exporter writes it too
STATE_DICT_FORMAT = "routespace.state_dict"
STATE_DICT_VERSION = 1
DEFAULT_TRACE_SIZE = (64, 64)
MAX_SIDE = 8192  # the spec size limit: torch.export programs accept H, W = 32, 64, ..., 8192
SPEC_FILE = "routespace_spec.json"  # extra file of a .pt2 export: the architecture, for reference


def example_input(arch: Architecture, size: tuple[int, int] | None = None, batch: int = 1) -> torch.Tensor:
    h, w = size or DEFAULT_TRACE_SIZE
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))


def trace(net: StaticNet, size: tuple[int, int] | None = None) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of an eval-mode static net, valid at any input size (multiples of 32)."""
    net = net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.x deprecation notices for jit.trace
        with torch.no_grad():
            return torch.jit.trace(net, example_input(net.arch, size), check_trace=False)


def save_torchscript(net: StaticNet, path: str | Path, size: tuple[int, int] | None = None) -> str:
    from ..fileio import atomic_path

    traced = trace(net, size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save deprecation notice
        torch.jit.save(traced, str(tmp))
    return "torch.jit.trace, symbolic N, H, W"


@contextlib.contextmanager
def _symbolic_sizes() -> Iterator[None]:
    """While exporting: keep the resampling sizes symbolic, and do not specialise size-1 dimensions.

    ``cells.upsample_to`` casts its target size to ``int`` outside TorchScript tracing, which
    torch.export turns into constants (one program per input size); here it is swapped for the same
    bilinear resampling without the cast. ``backed_size_oblivious`` keeps torch.export from assuming the
    stride-32 feature map is never 1 pixel wide, so 32-pixel sides stay valid inputs.
    """
    import torch.nn.functional as F

    from .. import cells

    def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    original = getattr(cells, "upsample_to", None)
    config = getattr(getattr(torch.fx, "experimental", None), "_config", None)
    oblivious = (config.patch(backed_size_oblivious=True) if hasattr(config, "backed_size_oblivious")
                 else contextlib.nullcontext())
    if original is not None:
        cells.upsample_to = upsample_to
    try:
        with oblivious:
            yield
    finally:
        if original is not None:
            cells.upsample_to = original


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


def export_program(net: StaticNet, size: tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of an eval-mode static net with dynamic batch and H, W = 32 k (k <= 256).

    ``size`` is the example input (default 64x64; a side below 64 is raised to 64, since torch.export
    specialises dimensions traced at size 1); the program accepts every valid size.
    """
    from torch.export import Dim

    net = net.eval()
    h, w = size or DEFAULT_TRACE_SIZE
    x = example_input(net.arch, (max(h, 64), max(w, 64)), batch=2)  # batch 2: N is not specialised to 1
    dims = {0: Dim("N", min=1), 2: 32 * Dim("H_32", min=1, max=MAX_SIDE // 32),
            3: 32 * Dim("W_32", min=1, max=MAX_SIDE // 32)}
    with torch.no_grad(), _symbolic_sizes(), _quiet_export():
        return torch.export.export(net, (x,), dynamic_shapes=(dims,))


def save_export(net: StaticNet, path: str | Path, size: tuple[int, int] | None = None) -> str:
    """A ``.pt2`` file: the torch.export program, with the spec JSON as the extra file ``routespace_spec.json``."""
    from ..fileio import write_bytes_atomic

    program = export_program(net, size)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={SPEC_FILE: net.arch.to_json()})
    write_bytes_atomic(path, buffer.getvalue())
    return "torch.export, dynamic N, H, W"


def onnx_exporter() -> str:
    """``"dynamo"`` (torch's recommended exporter) when onnxscript is installed, else ``"torchscript"``."""
    return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"


def save_onnx(net: StaticNet, path: str | Path, size: tuple[int, int] | None = None, opset: int = ONNX_OPSET) -> str:
    """ONNX with dynamic axes N, H, W on input ``image`` and output ``logits``, written as one file.

    By the dynamo exporter (from :func:`export_program`) when onnxscript is installed, else by the
    TorchScript-based one; returns which was used.
    """
    if onnx_exporter() == "torchscript":
        _save_onnx_torchscript(net, path, size, opset)
        return f"opset {opset}, TorchScript-based exporter (pip install onnxscript for the dynamo exporter)"
    from ..fileio import write_bytes_atomic

    program = export_program(net, size)
    with _quiet_export():
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=["image"],
                                         output_names=["logits"], verbose=False)
    shape = onnx_program.model.graph.inputs[0].shape
    onnx_program.rename_axes({shape[0]: "N", shape[2]: "H", shape[3]: "W"})
    write_bytes_atomic(path, onnx_program.model_proto.SerializeToString())  # weights inside: one file
    return f"opset {opset}, dynamo exporter"


def _save_onnx_torchscript(net: StaticNet, path: str | Path, size: tuple[int, int] | None, opset: int) -> None:
    from ..fileio import atomic_path

    net = net.eval()
    axes = {0: "N", 2: "H", 3: "W"}
    with atomic_path(path) as tmp, torch.no_grad(), _quiet_export():
        torch.onnx.export(
            net,
            (example_input(net.arch, size),),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
        )


def state_dict_payload(net: StaticNet) -> dict:
    """A plain dict (loadable with ``torch.load(..., weights_only=True)``): format, version, the canonical
    spec JSON as a string, and the tensors."""
    return {
        "format": STATE_DICT_FORMAT,
        "version": STATE_DICT_VERSION,
        "spec": net.arch.to_json(),
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
    }


def save_state_dict(net: StaticNet, path: str | Path) -> str:
    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state_dict_payload(net), str(tmp))
    return "spec and weights, torch.load(..., weights_only=True)"


def load_state_dict(path: str | Path) -> StaticNet:
    """Rebuild the net of a state-dict export (spec + weights); the result is in eval mode."""
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
    if not isinstance(payload, dict) or payload.get("format") != STATE_DICT_FORMAT:
        raise RoutespaceError(f"{path} is not a routespace state dict (no format {STATE_DICT_FORMAT!r})")
    if payload.get("version") != STATE_DICT_VERSION:
        raise RoutespaceError(f"{path}: unknown state dict version {payload.get('version')!r}")
    arch = Architecture.from_json(payload.get("spec", ""))
    net = build(arch)
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

