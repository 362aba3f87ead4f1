"""Model exports of a static net: TorchScript, ONNX and a state dict with the spec embedded.

Layout of every exported model: input ``image`` (N, 3, H, W) float32 with H and W multiples of 32,
output ``logits`` (N, num_classes, H, W). TorchScript and ONNX are traced with symbolic H, W (and N), so
one file runs at any such size, with plain torch / onnxruntime and without routespace installed.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from ..architecture import Architecture
from ..builder import StaticNet, build
from ..errors import RoutespaceError

ONNX_OPSET = 17
STATE_DICT_FORMAT = "routespace.state_dict"
STATE_DICT_VERSION = 1
DEFAULT_TRACE_SIZE = (64, 64)


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


def save_torchscript(net: StaticNet, path: str | Path, size: tuple[int, int] | None = None) -> None:
    from ..fileio import atomic_path

    traced = trace(net, size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save deprecation notice
        torch.jit.save(traced, str(tmp))


def save_onnx(net: StaticNet, path: str | Path, size: tuple[int, int] | None = None, opset: int = ONNX_OPSET) -> None:
    """ONNX (opset 17, TorchScript-based exporter) with dynamic axes N, H, W on input and output."""
    from ..fileio import atomic_path

    net = net.eval()
    axes = {0: "N", 2: "H", 3: "W"}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                net,
                (example_input(net.arch, size),),
                str(tmp),
                dynamo=False,  # the dynamo exporter needs onnxscript, which routespace does not depend on
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


def save_state_dict(net: StaticNet, path: str | Path) -> None:
    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state_dict_payload(net), str(tmp))


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

