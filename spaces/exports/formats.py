"""One entry point for every export format: ``export(arch_or_net, fmt, path)``; the formats are the table
``FORMATS``, which the CLI reads its choices from."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..architecture import Architecture
from ..errors import RoutespaceError

if TYPE_CHECKING:  # torch is imported only when a model is built or exported
    from ..builder import StaticNet
    from ..supernet import DynamicNet


@dataclass(frozen=True)
class ExportFormat:
    """One export format: its name (``--format``), usual file suffix, kind ("graph": the architecture only;
    "model": a net with weights), one line of help, and the writer ``write(arch_or_net, path, size, seed)``,
    which writes atomically and returns a few words on how the file was made."""

    name: str
    suffix: str
    kind: str
    help: str
    write: Callable[[Architecture | StaticNet | DynamicNet, Path, tuple[int, int] | None, int], str]


def _write_json(model, path, size, seed) -> str:
    from ..fileio import write_text_atomic

    write_text_atomic(path, _arch(model).to_json())
    return "routespace spec JSON"


def _write_nodelink(model, path, size, seed) -> str:
    from ..fileio import write_text_atomic
    from .graph import node_link_json

    write_text_atomic(path, node_link_json(_arch(model)))
    return "networkx node-link JSON"


def _write_graphml(model, path, size, seed) -> str:
    import networkx as nx

    from ..fileio import atomic_path
    from .graph import architecture_to_graph

    with atomic_path(path) as tmp:
        nx.write_graphml(architecture_to_graph(_arch(model)), str(tmp))
    return "GraphML"


def _write_torchscript(model, path, size, seed) -> str:
    from .model import save_torchscript

    return save_torchscript(_net(model, seed), path, size)


def _write_program(model, path, size, seed) -> str:
    from .model import save_export

    return save_export(_net(model, seed), path, size)


def _write_onnx(model, path, size, seed) -> str:
    from .model import save_onnx

    return save_onnx(_net(model, seed), path, size)


def _write_state_dict(model, path, size, seed) -> str:
    from .model import save_state_dict

    return save_state_dict(_net(model, seed), path)


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("json", ".json", "graph", "the spec (routespace JSON)", _write_json),
    ExportFormat("nodelink", ".json", "graph", "networkx node-link JSON", _write_nodelink),
    ExportFormat("graphml", ".graphml", "graph", "GraphML", _write_graphml),
    ExportFormat("torchscript", ".pt", "model", "TorchScript (torch.jit.load)", _write_torchscript),
    ExportFormat("export", ".pt2", "model", "torch.export program (torch.export.load)", _write_program),
    ExportFormat("onnx", ".onnx", "model", "ONNX (onnxruntime)", _write_onnx),
    ExportFormat("state_dict", ".pt", "model", "spec + weights (torch.load weights_only; re-exportable)",
                 _write_state_dict),
)}
EXPORT_FORMATS = tuple(FORMATS)
GRAPH_FORMATS = tuple(n for n, f in FORMATS.items() if f.kind == "graph")
MODEL_FORMATS = tuple(n for n, f in FORMATS.items() if f.kind == "model")
SUFFIXES = {n: f.suffix for n, f in FORMATS.items()}


def _arch(model: Architecture | StaticNet | DynamicNet) -> Architecture:
    if isinstance(model, Architecture):
        return model
    if not hasattr(model, "arch"):  # the dynamic supernet: every route is a different architecture
        raise RoutespaceError("the dynamic net has no single architecture to write as a graph: export it as a model "
                              "(--format export, onnx or state_dict), or its Common net (routespace extract, then export)")
    return model.arch


def _net(model: Architecture | StaticNet | DynamicNet, seed: int) -> StaticNet | DynamicNet:
    """``model`` itself if it is a net, else the Architecture built with weights seeded by ``seed``."""
    if not isinstance(model, Architecture):
        return model
    import torch

    from ..builder import build

    torch.manual_seed(seed)
    return build(model)


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, as a RoutespaceError, if ``path`` cannot be written (before any work is done)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise RoutespaceError(f"cannot write {path}: it is a folder; give a file name")
    if parent.exists() and not parent.is_dir():
        raise RoutespaceError(f"cannot write {path}: {parent} is a file, not a folder")
    if not parent.exists():
        raise RoutespaceError(f"cannot write {path}: folder {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK):
        raise RoutespaceError(f"cannot write {path}: no write permission in {parent}")
    return path


def write_export(
    model: Architecture | StaticNet | DynamicNet,
    fmt: str,
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[Path, str]:
    """:func:`export`, also returning the writer's few words on how the file was made (for the CLI)."""
    if fmt not in FORMATS:
        raise RoutespaceError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    path = check_output_path(path)
    try:
        detail = FORMATS[fmt].write(model, path, size, seed)
    except OSError as exc:  # disk full, permission denied at rename, ...: nothing partial is left
        raise RoutespaceError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path, detail


def export(
    model: Architecture | StaticNet | DynamicNet,
    fmt: str,
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``model`` in format ``fmt`` (one of EXPORT_FORMATS, see FORMATS) to ``path``, atomically.

    An Architecture given for a model format is built with freshly initialised weights
    (``torch.manual_seed(seed)``); pass a trained StaticNet to export its weights. ``size`` is the
    example input used for tracing (default 64x64); the exported graph accepts any H, W multiple of 32.
    A :class:`DynamicNet` goes to ``export``, ``onnx`` (its dense masked forward with the gates, logits
    only) and ``state_dict``.
    """
    return write_export(model, fmt, path, size, seed)[0]


def import_architecture(path: str | os.PathLike, fmt: str | None = None) -> Architecture:
    """Read an Architecture from a json / nodelink / graphml / state_dict export (format guessed if None)."""
    from ..architecture import load_architecture
    from .graph import from_node_link_json, read_graphml
    from .model import is_state_dict_file, load_state_dict

    path = Path(path)
    if not path.is_file():
        raise RoutespaceError(f"{path} does not exist or is not a file")
    if fmt is None:
        if is_state_dict_file(path):
            fmt = "state_dict"
        elif path.suffix.lower() == ".graphml":
            fmt = "graphml"
        else:
            head = path.read_bytes()[:1_000_000]
            fmt = "nodelink" if b'"nodes"' in head and b'"edges"' in head and b"routespace.architecture.graph" in head else "json"
    if fmt == "json":
        return load_architecture(str(path))
    if fmt == "nodelink":
        return from_node_link_json(path.read_bytes())
    if fmt == "graphml":
        return read_graphml(str(path))
    if fmt == "state_dict":
        net = load_state_dict(path)
        if not hasattr(net, "arch"):
            raise RoutespaceError(f"{path} holds a dynamic net, which has no single architecture: "
                                  "use routespace extract on its run for the Common architecture")
        return net.arch
    raise RoutespaceError(f"cannot import format {fmt!r}: choose one of json, nodelink, graphml, state_dict")


def resolve_target(target: str, preset_name: str | None, dynamic: bool = False):
    """An Architecture (spec file or classic), a StaticNet (state-dict export) or, with ``dynamic``, also a
    trained net of a run folder (static or dynamic) or a DynamicNet (dynamic state-dict export)."""
    from ..classics import CLASSICS, classic
    from ..space import preset

    path = Path(target)
    if path.is_dir():
        if dynamic and (path / "manifest.json").is_file():
            from ...evaluators.evaluate import load_run_model

            return load_run_model(path)[0].eval()
        raise RoutespaceError(f"{target} is a folder: give a spec file{', a run folder' if dynamic else ''} or a classic name")
    if path.is_file():
        from ..architecture import load_architecture
        from .model import is_state_dict_file, load_state_dict

        if is_state_dict_file(path):
            net = load_state_dict(path)
            if not dynamic and not hasattr(net, "arch"):
                raise RoutespaceError(f"{target} holds a dynamic net, which has no single architecture: "
                                      "give its run folder, or a spec file")
            return net
        if preset_name and path.suffix.lower() == ".json" and b"routespace.architecture.graph" not in path.read_bytes()[:1_000_000]:
            return load_architecture(str(path), preset(preset_name))
        return import_architecture(path)
    key = target.lower().replace("-", "").replace("_", "")
    if key in CLASSICS:
        return classic(key, preset(preset_name or "paper"))
    if "/" in target or "." in target:
        raise RoutespaceError(f"spec file {target} does not exist")
    raise RoutespaceError(f"{target!r} is neither a spec file nor a classic: classics are {', '.join(CLASSICS)}")
