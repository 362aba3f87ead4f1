"""The routing space: graph, Architecture spec, classic nets, cells and the builder.

The torch-free names are imported here; ``build`` and ``StaticNet`` (which need torch) are loaded on
first use, so ``import routespace.spaces`` stays a pure, fast import (the layer contract in
tests/test_layers.py checks it)."""
from .architecture import FORMAT_NAME, FORMAT_VERSION, Architecture, load_architecture
from .celltypes import CELL_TYPES, CELLS
from .classics import CLASSICS, autodeeplab, classic, deeplabv3, fcn32s, hrnetv2, unet
from .errors import RoutespaceError
from .random_arch import random_architecture, random_path
from .space import PRESETS, RoutingSpace, parse_size, preset

_LAZY = {"build": "builder", "StaticNet": "builder"}

__all__ = [
    "Architecture", "CELLS", "CELL_TYPES", "CLASSICS", "FORMAT_NAME", "FORMAT_VERSION", "PRESETS", "RoutespaceError",
    "RoutingSpace", "StaticNet", "autodeeplab", "build", "classic", "deeplabv3", "fcn32s", "hrnetv2",
    "load_architecture", "parse_size", "preset", "random_architecture", "random_path", "unet",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
