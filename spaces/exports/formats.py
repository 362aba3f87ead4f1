"""One entry point for every export format: ``export(arch_or_net, fmt, path)``."""
from __future__ import annotations

import os
from pathlib import Path

from ..architecture import Architecture
from ..builder import StaticNet, build
from ..errors import RoutespaceError

GRAPH_FORMATS = ("json", "nodelink", "graphml")
MODEL_FORMATS = ("torchscript", "onnx", "state_dict")
EXPORT_FORMATS = GRAPH_FORMATS + MODEL_FORMATS
SUFFIXES = {
    "json": ".json", "nodelink": ".json", "graphml": ".graphml",
    "torchscript": ".pt", "onnx": ".onnx", "state_dict": ".pt",
}


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


def export(
    model: Architecture | StaticNet,
    fmt: str,
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``model`` in format ``fmt`` (one of EXPORT_FORMATS) to ``path``, atomically.

    An Architecture given for a model format is built with freshly initialised weights
    (``torch.manual_seed(seed)``); pass a trained StaticNet to export its weights. ``size`` is the
    example input used for tracing (default 64x64); the exported graph accepts any H, W multiple of 32.
    """
    from ..fileio import write_text_atomic

    if fmt not in EXPORT_FORMATS:
        raise RoutespaceError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    path = check_output_path(path)
    arch = model.arch if isinstance(model, StaticNet) else model
    try:
        if fmt == "json":
            write_text_atomic(path, arch.to_json())
        elif fmt == "nodelink":
            from .graph import node_link_json

            write_text_atomic(path, node_link_json(arch))
        elif fmt == "graphml":
            import networkx as nx

            from ..fileio import atomic_path
            from .graph import architecture_to_graph

            with atomic_path(path) as tmp:
                nx.write_graphml(architecture_to_graph(arch), str(tmp))
        else:
            from . import model as m

            if isinstance(model, StaticNet):
                net = model
            else:
                import torch

                torch.manual_seed(seed)
                net = build(arch)
            if fmt == "torchscript":
                m.save_torchscript(net, path, size)
            elif fmt == "onnx":
                m.save_onnx(net, path, size)
            else:
                m.save_state_dict(net, path)
    except OSError as exc:  # disk full, permission denied at rename, ...: nothing partial is left
        raise RoutespaceError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


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
        return load_state_dict(path).arch
    raise RoutespaceError(f"cannot import format {fmt!r}: choose one of json, nodelink, graphml, state_dict")


def resolve_target(target: str, preset_name: str | None):
    """An Architecture (spec file or classic) or a StaticNet (state-dict export) for ``target``."""
    from ..classics import CLASSICS, classic
    from ..space import preset

    path = Path(target)
    if path.is_dir():
        raise RoutespaceError(f"{target} is a folder: give a spec file or a classic name")
    if path.is_file():
        from ..architecture import load_architecture
        from .model import is_state_dict_file, load_state_dict

        if is_state_dict_file(path):
            return load_state_dict(path)
        if preset_name and path.suffix.lower() == ".json" and b"routespace.architecture.graph" not in path.read_bytes()[:1_000_000]:
            return load_architecture(str(path), preset(preset_name))
        return import_architecture(path)
    key = target.lower().replace("-", "").replace("_", "")
    if key in CLASSICS:
        return classic(key, preset(preset_name or "paper"))
    if "/" in target or "." in target:
        raise RoutespaceError(f"spec file {target} does not exist")
    raise RoutespaceError(f"{target!r} is neither a spec file nor a classic: classics are {', '.join(CLASSICS)}")
