"""The routing space: graph, Architecture spec, classic nets, cells and the builder."""
from .architecture import FORMAT_NAME, FORMAT_VERSION, Architecture, load_architecture
from .builder import StaticNet, build
from .classics import CLASSICS, autodeeplab, classic, deeplabv3, fcn32s, hrnetv2, unet
from .errors import RoutespaceError
from .random_arch import random_architecture, random_path
from .space import CELL_TYPES, PRESETS, RoutingSpace, parse_size, preset

__all__ = [
    "Architecture", "CELL_TYPES", "CLASSICS", "FORMAT_NAME", "FORMAT_VERSION", "PRESETS", "RoutespaceError",
    "RoutingSpace", "StaticNet", "autodeeplab", "build", "classic", "deeplabv3", "fcn32s", "hrnetv2",
    "load_architecture", "parse_size", "preset", "random_architecture", "random_path", "unet",
]
