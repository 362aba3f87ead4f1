"""The routing space: L layers x 4 scales (strides 4..32), edges up/keep/down between adjacent layers."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Iterator

from .celltypes import CELL_TYPES
from .errors import RoutespaceError

EDGE_KINDS = ("down", "keep", "up")
STRIDES = (4, 8, 16, 32)

# Size limits, so that a hostile or mistyped spec cannot allocate the machine away.
MAX_LAYERS = 64
MAX_BASE_CHANNELS = 1024
MAX_CLASSES = 1000

Node = tuple[int, int]  # (layer, scale)
Edge = tuple[int, int, int]  # (layer of the target node, source scale, target scale)


def edge_kind(src_scale: int, dst_scale: int) -> str:
    """'down' goes to a coarser scale (stride x2), 'up' to a finer one, 'keep' stays."""
    if dst_scale == src_scale + 1:
        return "down"
    if dst_scale == src_scale:
        return "keep"
    if dst_scale == src_scale - 1:
        return "up"
    raise RoutespaceError(
        f"scale jump {src_scale}->{dst_scale} is not an edge of the space: edges move at most one scale"
    )


@dataclass(frozen=True)
class RoutingSpace:
    """A frozen description of the space.

    Node (0, 0) is the stem output (stride 4). A node at layer l >= 1 takes inputs only from layer l-1
    at scales s-1, s, s+1, so layer l reaches scales 0..min(l, scales-1). Channels at scale s are
    ``base_channels * 2**s``. The last layer's nodes feed the decoder.
    """

    layers: int = 16
    base_channels: int = 64
    num_classes: int = 19
    cell: str = "sepconv"
    scales: int = 4
    input_size: tuple[int, int] = (1024, 2048)
    name: str = "custom"

    def __post_init__(self) -> None:
        for field, value, hi in (
            ("layers", self.layers, MAX_LAYERS),
            ("base_channels", self.base_channels, MAX_BASE_CHANNELS),
            ("num_classes", self.num_classes, MAX_CLASSES),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise RoutespaceError(f"space field '{field}' must be an integer in 1..{hi}, got {value!r}")
        if self.scales != 4:
            raise RoutespaceError(f"space field 'scales' must be 4 (strides 4, 8, 16, 32), got {self.scales!r}")
        if self.base_channels % 2:
            raise RoutespaceError(
                f"space field 'base_channels' must be even (gate heads use C/2), got {self.base_channels}"
            )
        if self.cell not in CELL_TYPES:
            raise RoutespaceError(f"unknown cell type {self.cell!r}: choose one of {', '.join(CELL_TYPES)}")
        check_input_size(self.input_size)
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))

    # --- structure -------------------------------------------------------------------------------
    def channels(self, scale: int) -> int:
        return self.base_channels * 2**scale

    def scales_at(self, layer: int) -> range:
        """Scales reachable at ``layer`` (layer 0 is the stem: scale 0 only)."""
        return range(0, min(layer, self.scales - 1) + 1)

    def nodes(self) -> Iterator[Node]:
        for layer in range(self.layers + 1):
            for scale in self.scales_at(layer):
                yield (layer, scale)

    def has_node(self, node: Node) -> bool:
        layer, scale = node
        return 0 <= layer <= self.layers and scale in self.scales_at(layer)

    def edges(self) -> Iterator[Edge]:
        """Every edge of the space as (target layer, source scale, target scale)."""
        for layer in range(1, self.layers + 1):
            for dst in self.scales_at(layer):
                for src in (dst - 1, dst, dst + 1):
                    if src in self.scales_at(layer - 1):
                        yield (layer, src, dst)

    def has_edge(self, edge: Edge) -> bool:
        layer, src, dst = edge
        return (
            1 <= layer <= self.layers
            and abs(src - dst) <= 1
            and src in self.scales_at(layer - 1)
            and dst in self.scales_at(layer)
        )

    def out_edges(self, node: Node) -> list[Edge]:
        """Edges leaving ``node`` in the space (empty for last-layer nodes, which feed the decoder)."""
        layer, scale = node
        if layer >= self.layers:
            return []
        return [(layer + 1, scale, d) for d in (scale - 1, scale, scale + 1) if self.has_edge((layer + 1, scale, d))]

    def in_edges(self, node: Node) -> list[Edge]:
        layer, scale = node
        if layer == 0:
            return []
        return [(layer, s, scale) for s in (scale - 1, scale, scale + 1) if self.has_edge((layer, s, scale))]

    @cached_property
    def graph(self):
        """The space as a ``networkx.DiGraph``: nodes (layer, scale) with scale/stride/channels, typed edges."""
        import networkx as nx

        g = nx.DiGraph(name=self.name, layers=self.layers, base_channels=self.base_channels)
        for layer, scale in self.nodes():
            g.add_node(
                (layer, scale),
                layer=layer,
                scale=scale,
                stride=STRIDES[scale],
                channels=self.channels(scale),
                stem=layer == 0,
            )
        for layer, src, dst in self.edges():
            g.add_edge((layer - 1, src), (layer, dst), kind=edge_kind(src, dst))
        return g

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, data: object) -> "RoutingSpace":
        if not isinstance(data, dict):
            raise RoutespaceError(f"'space' must be a JSON object, got {type(data).__name__}")
        allowed = {"layers", "base_channels", "num_classes", "cell", "scales", "input_size", "name"}
        unknown = set(data) - allowed
        if unknown:
            names = sorted(str(k)[:40] for k in unknown)  # a hostile spec may bring thousands
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            raise RoutespaceError(f"unknown space field(s) {names[:5]}{more}: allowed are {sorted(allowed)}")
        kwargs = dict(data)
        if "input_size" in kwargs:
            kwargs["input_size"] = check_input_size(kwargs["input_size"])
        if "name" in kwargs and not isinstance(kwargs["name"], str):
            raise RoutespaceError("space field 'name' must be a string")
        return cls(**kwargs)

    def describe(self) -> str:
        lines = [
            f"RoutingSpace '{self.name}': {self.layers} layers x {self.scales} scales (strides "
            + ", ".join(str(s) for s in STRIDES) + f"), cell {self.cell}, {self.num_classes} classes",
            "  channels per scale: " + ", ".join(f"s{s}={self.channels(s)}" for s in range(self.scales)),
            f"  default input: {self.input_size[0]}x{self.input_size[1]}",
            f"  nodes: {sum(1 for _ in self.nodes())} (incl. stem), edges: {sum(1 for _ in self.edges())}",
            "  cells per layer: " + ",".join(str(len(self.scales_at(l))) for l in range(1, self.layers + 1)),
        ]
        return "\n".join(lines)


MAX_INPUT_SIDE = 8192


def check_input_size(size: object) -> tuple[int, int]:
    """Validate an (H, W) input size: positive, divisible by 32, at most 8192 a side."""
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise RoutespaceError(f"input size must be two integers (H, W), got {size!r}")
    h, w = size
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        def near(v: int) -> int:  # a valid side close to v (the suggestion must itself be accepted)
            return min(MAX_INPUT_SIDE, max(32, v // 32 * 32))

        raise RoutespaceError(f"input size {h}x{w} is not divisible by 32: use e.g. {near(h)}x{near(w)}")
    if h > MAX_INPUT_SIDE or w > MAX_INPUT_SIDE:
        raise RoutespaceError(f"input size {h}x{w} is too large: at most {MAX_INPUT_SIDE} a side")
    return (h, w)


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'HxW' (e.g. '1024x2048') into a validated (H, W)."""
    parts = str(text).lower().split("x")
    try:  # isdigit() admits characters that int() rejects (superscripts); int() refuses over 4300 digits
        ok = len(parts) == 2 and all(p.strip().isdigit() and len(p.strip()) < 12 for p in parts)
        size = (int(parts[0]), int(parts[1])) if ok else None
    except ValueError:
        size = None
    if size is None:
        raise RoutespaceError(f"size {str(text)[:40]!r} is not of the form HxW, e.g. 1024x2048")
    return check_input_size(size)


PRESETS: dict[str, RoutingSpace] = {
    "paper": RoutingSpace(layers=16, base_channels=64, num_classes=19, input_size=(1024, 2048), name="paper"),
    # Sized from a CPU measurement: an all-open L=8, C=16 supernet trains at ~0.2 s/step (batch 8, 64x64)
    # on 2 cores, so a net learns in minutes.
    "tiny": RoutingSpace(layers=8, base_channels=16, num_classes=5, input_size=(64, 64), name="tiny"),
}


def preset(name: str) -> RoutingSpace:
    try:
        return PRESETS[name]
    except KeyError:
        raise RoutespaceError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
