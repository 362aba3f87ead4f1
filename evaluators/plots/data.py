"""Pure data steps of every plot: plain values in, plain records out (no matplotlib, no torch needed).

The drawing modules only turn these records into artists, so what a figure shows is tested here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ...spaces.architecture import Architecture
from ...spaces.celltypes import CELLS
from ...spaces.errors import RoutespaceError
from ...spaces.space import STRIDES, RoutingSpace, edge_kind
from ..pareto import pareto_indices
# the gate counting is evaluators.routes' (shared with dynamic routing); its names stay importable from here
from ..routes import EdgeKey, as_1d, edge_frequencies, parse_edge_key, routes_from_gates  # noqa: F401

# --- the layer x scale grid -------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeStyle:
    color: str
    linestyle: Any
    label: str


# Okabe-Ito colours (colour-blind safe) plus a distinct line style per kind, so kinds stay apart when
# colour encodes frequency instead.
EDGE_STYLES: dict[str, EdgeStyle] = {
    "keep": EdgeStyle("#333333", "-", "keep (same stride)"),
    "down": EdgeStyle("#0072B2", "--", "down (stride x2)"),
    "up": EdgeStyle("#D55E00", "-.", "up (stride /2)"),
    "out": EdgeStyle("#777777", ":", "to decoder"),
}
INACTIVE_EDGE = EdgeStyle("#BBBBBB", "-", "space edge (closed)")
# cell -> (marker, face colour), read from the cell registry
CELL_MARKERS: dict[str, tuple[str, str]] = {name: (c.marker, c.color) for name, c in CELLS.items()}
STATIC_WIDTH = 2.2
MIN_WIDTH, MAX_WIDTH = 0.5, 4.5
MIN_ALPHA = 0.15


@dataclass(frozen=True)
class NodeMark:
    node: tuple[int, int]
    x: float  # layer
    y: float  # scale index (0 = stride 4; the drawing puts it on top)
    active: bool
    cell: str | None  # None for inactive nodes


@dataclass(frozen=True)
class EdgeMark:
    key: EdgeKey
    kind: str  # down / keep / up / out
    x0: float
    y0: float
    x1: float
    y1: float
    active: bool
    frequency: float | None  # open frequency for dynamic nets, None for a static architecture
    width: float
    alpha: float


@dataclass(frozen=True)
class GridData:
    layers: int
    nodes: tuple[NodeMark, ...]
    edges: tuple[EdgeMark, ...]
    dynamic: bool
    name: str

    def active_nodes(self, layer: int | None = None) -> list[NodeMark]:
        return [n for n in self.nodes if n.active and (layer is None or n.node[0] == layer)]

    def active_edges(self, layer: int | None = None, kind: str | None = None) -> list[EdgeMark]:
        return [
            e for e in self.edges
            if e.active and (layer is None or e.key[-2 if e.kind == "out" else 0] == layer) and (kind is None or e.kind == kind)
        ]

    @property
    def cells_used(self) -> tuple[str, ...]:
        return tuple(sorted({n.cell for n in self.nodes if n.active and n.cell}, key=list(CELL_MARKERS).index))

    @property
    def kinds_used(self) -> tuple[str, ...]:
        return tuple(k for k in EDGE_STYLES if any(e.active and e.kind == k for e in self.edges))


DECODER_X_OFFSET = 0.7  # 'out' edges end this far right of the last layer


def normalise_frequencies(frequencies: Mapping[object, float], space: RoutingSpace) -> dict[EdgeKey, float]:
    """Validated {edge key: frequency in [0, 1]} with tuple keys; unknown edges are an error."""
    out: dict[EdgeKey, float] = {}
    for raw, value in frequencies.items():
        key = parse_edge_key(raw)
        if key[0] == "out":
            ok = key[1] == space.layers and key[2] in space.scales_at(space.layers)
        else:
            ok = space.has_edge(key)
        if not ok:
            raise RoutespaceError(f"edge {key} is not in the space ({space.layers} layers)")
        f = float(value)
        if not 0.0 <= f <= 1.0 or math.isnan(f):
            raise RoutespaceError(f"frequency of edge {key} must lie in [0, 1], got {value!r}")
        out[key] = f
    return out


def frequencies_to_json(frequencies: Mapping[object, float]) -> dict[str, float]:
    """{'l,s,d' or 'out,l,s': frequency}: the JSON form read by :func:`frequencies_from_json`."""
    return {",".join(str(v) for v in parse_edge_key(k)): float(f) for k, f in sorted(frequencies.items(), key=lambda kv: str(kv[0]))}


def frequencies_from_json(data: object, space: RoutingSpace) -> dict[EdgeKey, float]:
    if isinstance(data, dict) and isinstance(data.get("edge_frequencies"), dict):
        data = data["edge_frequencies"]
    if not isinstance(data, dict):
        raise RoutespaceError("edge frequencies must be a JSON object {'layer,src,dst': frequency}")
    return normalise_frequencies(data, space)


def _freq_style(f: float) -> tuple[float, float]:
    return MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * f, MIN_ALPHA + (1 - MIN_ALPHA) * f


def _edge_mark(key: EdgeKey, layers: int, active: bool, freq: float | None) -> EdgeMark:
    if key[0] == "out":
        _, layer, s = key
        x0, y0, x1, y1, kind = layer, s, layer + DECODER_X_OFFSET, s, "out"
    else:
        layer, s, d = key
        x0, y0, x1, y1, kind = layer - 1, s, layer, d, edge_kind(s, d)
    if freq is not None and active:
        width, alpha = _freq_style(freq)
    elif active:
        width, alpha = STATIC_WIDTH, 1.0
    else:
        width, alpha = 0.7, 0.5
    return EdgeMark(key, kind, x0, y0, x1, y1, active, freq, width, alpha)


def grid_data(
    arch: Architecture | None = None,
    *,
    space: RoutingSpace | None = None,
    frequencies: Mapping[object, float] | None = None,
    route: Iterable[object] | None = None,
    show_space: bool = True,
) -> GridData:
    """Nodes and edges of the layer x scale grid.

    - ``arch``: a static Architecture; its edges are open, its last-layer nodes feed the decoder.
    - ``frequencies``: a dynamic net's open frequency per edge ({edge: f}); open means f > 0.
    - ``route``: one image's set of open edges (from :func:`routes_from_gates`).
    With ``show_space`` the closed edges of the space are kept as inactive marks (drawn faint).
    """
    given = [arch is not None, frequencies is not None, route is not None]
    if sum(given) != 1:
        raise RoutespaceError("grid_data needs exactly one of: arch, frequencies or route")
    if arch is not None:
        space = arch.space
    if space is None:
        raise RoutespaceError("grid_data needs the space when drawing frequencies or a route")
    freqs: dict[EdgeKey, float] | None = None
    if arch is not None:
        open_edges: set[EdgeKey] = set(arch.edges) | {("out", space.layers, s) for s in arch.output_scales()}
    elif frequencies is not None:
        freqs = normalise_frequencies(frequencies, space)
        open_edges = {k for k, f in freqs.items() if f > 0}
    else:
        open_edges = {parse_edge_key(k) for k in route}
        normalise_frequencies({k: 1.0 for k in open_edges}, space)  # validates keys
    space_edges = [*space.edges(), *(("out", space.layers, s) for s in space.scales_at(space.layers))]
    active_nodes = {(0, 0)}
    for key in open_edges:
        if key[0] != "out":
            active_nodes |= {(key[0] - 1, key[1]), (key[0], key[2])}
    edges = []
    for key in space_edges:
        active = key in open_edges
        if not active and not show_space:
            continue
        if key[0] == "out" and not active and freqs is None:
            continue  # a static net's closed last-layer node has no decoder stub
        edges.append(_edge_mark(key, space.layers, active, freqs.get(key, 0.0) if freqs is not None else None))
    nodes = []
    for node in space.nodes():
        active = node in active_nodes
        if not active and not show_space:
            continue
        if active:
            cell = arch.cell_of(node) if arch is not None else space.cell
        else:
            cell = None
        nodes.append(NodeMark(node, float(node[0]), float(node[1]), active, cell))
    name = arch.name if arch is not None else ""
    return GridData(space.layers, tuple(nodes), tuple(edges), freqs is not None, name)


def stride_ticks() -> tuple[list[int], list[str]]:
    """y ticks of the grid: scale index -> 'stride N' label."""
    return list(range(len(STRIDES))), [f"{s}" for s in STRIDES]


# --- per-image routes ---------------------------------------------------------------------------------

# A fixed, distinct class palette (tab10 then tab20's lighter halves), RGB in [0, 1]; 255 (ignore) is black.
_PALETTE_HEX = (
    "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf "
    "aec7e8 ffbb78 98df8a ff9896 c5b0d5 c49c94 f7b6d2 c7c7c7 dbdb8d 9edae5"
).split()


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) RGB in [0, 1]; colours repeat after 20 classes."""
    base = np.array([[int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] for h in _PALETTE_HEX])
    return base[np.arange(num_classes) % len(base)]


def image_to_rgb(image: object) -> np.ndarray:
    """(3, H, W) or (H, W, 3) array/tensor -> (H, W, 3) float in [0, 1] (uint8 / 255, else min-max scaled)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim != 3:
        raise RoutespaceError(f"an image must have 3 dimensions (3,H,W or H,W,3), got shape {a.shape}")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.dtype == np.uint8:
        return a.astype(float) / 255.0
    a = a.astype(float)
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def labels_to_rgb(labels: object, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids, or (C, H, W) logits (argmax), -> (H, W, 3) colours; ``ignore_index`` is black."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    a = np.asarray(labels)
    if a.ndim == 3:
        a = a.argmax(0)
    if a.ndim != 2:
        raise RoutespaceError(f"labels must be (H, W) ids or (C, H, W) logits, got shape {a.shape}")
    a = a.astype(int)
    out = np.zeros((*a.shape, 3))
    valid = (a >= 0) & (a < num_classes) & (a != ignore_index)
    out[valid] = class_palette(num_classes)[a[valid]]
    return out


@dataclass(frozen=True)
class RouteRow:
    image: np.ndarray  # (H, W, 3) in [0, 1]
    prediction: np.ndarray  # (H, W, 3) colours
    target: np.ndarray | None
    grid: GridData
    caption: str


def route_rows(
    images: Sequence[object],
    predictions: Sequence[object],
    routes: Sequence[Iterable[object]],
    space: RoutingSpace,
    targets: Sequence[object] | None = None,
    captions: Sequence[str] | None = None,
) -> list[RouteRow]:
    """One row per image: the image, its prediction (and ground truth) coloured, and its route's grid."""
    n = len(images)
    if len(predictions) != n or len(routes) != n or (targets is not None and len(targets) != n):
        raise RoutespaceError("images, predictions, routes (and targets) must have the same length")
    if captions is not None and len(captions) != n:
        raise RoutespaceError("give one caption per image")
    rows = []
    for i in range(n):
        rows.append(
            RouteRow(
                image=image_to_rgb(images[i]),
                prediction=labels_to_rgb(predictions[i], space.num_classes),
                target=labels_to_rgb(targets[i], space.num_classes) if targets is not None else None,
                grid=grid_data(space=space, route=routes[i]),
                caption=captions[i] if captions is not None else f"image {i}",
            )
        )
    return rows


# --- realised FLOPs histogram -------------------------------------------------------------------------


@dataclass(frozen=True)
class HistogramData:
    counts: np.ndarray
    bin_edges: np.ndarray
    mean: float
    std: float
    minimum: float
    maximum: float
    target: float | None
    fraction_over_target: float | None


def flops_histogram(gflops: Sequence[float], target: float | None = None, bins: int | None = None) -> HistogramData:
    """Histogram of realised GFLOPs per image (``bins`` default: sqrt(n), 5..30)."""
    a = as_1d(gflops)
    if a.size == 0:
        raise RoutespaceError("no GFLOPs values to plot")
    if not np.isfinite(a).all():
        raise RoutespaceError("GFLOPs values must be finite numbers")
    nbins = bins or int(min(30, max(5, round(math.sqrt(a.size)))))
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-12:  # all equal: one visible bin around the value
        pad = max(abs(lo) * 0.01, 1e-3)
        lo, hi = lo - pad, hi + pad
    counts, edges = np.histogram(a, bins=nbins, range=(lo, hi))
    frac = float((a > target).mean()) if target is not None else None
    return HistogramData(counts, edges, float(a.mean()), float(a.std()), float(a.min()), float(a.max()),
                         None if target is None else float(target), frac)


# --- Pareto front -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultPoint:
    label: str
    gflops: float
    miou: float
    group: str = ""


def as_points(results: Iterable[object]) -> list[ResultPoint]:
    """ResultPoint, dicts (label|name, gflops, miou, group|kind) or tuples (label, gflops, miou[, group])."""
    points = []
    for r in results:
        if isinstance(r, ResultPoint):
            p = r
        elif isinstance(r, Mapping):
            try:
                p = ResultPoint(str(r.get("label", r.get("name", ""))), float(r["gflops"]), float(r["miou"]),
                                str(r.get("group", r.get("kind", ""))))
            except (KeyError, TypeError, ValueError):
                raise RoutespaceError(f"a result needs numeric 'gflops' and 'miou', got {dict(r)!r:.120}") from None
        elif isinstance(r, (tuple, list)) and len(r) in (3, 4):
            p = ResultPoint(str(r[0]), float(r[1]), float(r[2]), str(r[3]) if len(r) == 4 else "")
        else:
            raise RoutespaceError(f"cannot read result {r!r:.80}: use (label, gflops, miou[, group]) or a dict")
        if not (math.isfinite(p.gflops) and math.isfinite(p.miou)):
            raise RoutespaceError(f"result {p.label!r} has a non-finite GFLOPs or mIoU")
        points.append(p)
    return points


def pareto_front(points: Sequence[ResultPoint]) -> list[int]:
    """Indices of the non-dominated points (fewer GFLOPs and higher mIoU are better), by GFLOPs; equal
    points all stay (see :func:`routespace.evaluators.pareto.pareto_indices`)."""
    return pareto_indices([(p.gflops, p.miou) for p in points])


Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    bounds: Box,
    marker_radius: float = 5.0,
    gap: float = 3.0,
) -> list[Box]:
    """Greedy label placement in pixel space: for each anchor (in order), the first candidate box on rings
    of growing radius around it (8 directions) that stays inside ``bounds`` and overlaps no marker and
    no label placed so far; if none is free, the candidate with the least overlap. Returns one box each.
    """
    markers = [(x - marker_radius, y - marker_radius, x + marker_radius, y + marker_radius) for x, y in anchors]
    placed: list[Box] = []
    dirs = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    for (x, y), (w, h) in zip(anchors, sizes):
        best, best_cost = None, math.inf
        for ring in range(12):
            r = marker_radius + gap + ring * max(6.0, h * 0.8)
            for dx, dy in dirs:
                cx = x + dx * (r + w / 2) if dx else x
                cy = y + dy * (r + h / 2) if dy else y
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                outside = (max(0.0, bounds[0] - box[0]) + max(0.0, box[2] - bounds[2])
                           + max(0.0, bounds[1] - box[1]) + max(0.0, box[3] - bounds[3]))
                cost = outside * 1e3 + sum(_overlap(box, b) for b in placed + markers) + ring * 1e-3
                if cost < best_cost:
                    best, best_cost = box, cost
            if best_cost < 1.0:  # a free spot on this ring
                break
        placed.append(best)
    return placed


def boxes_overlap(boxes: Sequence[Box]) -> list[tuple[int, int]]:
    """Pairs of boxes that overlap (a test helper for label placement, also used by the drawing checks)."""
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if _overlap(boxes[i], boxes[j]) > 0]


# --- search history -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryData:
    trials: np.ndarray  # trial numbers, in completion order of trial number
    values: np.ndarray
    best: np.ndarray  # best so far, by trial number
    seconds: np.ndarray  # wall time at completion, sorted
    best_by_time: np.ndarray  # best so far, by completion time
    direction: str


def study_records(study: object) -> tuple[list[tuple[int, float, float]], str]:
    """(trial, value, seconds since the study's first start) of an Optuna study's complete trials, and
    its direction; duck-typed so that this stays free of an optuna import."""
    directions = getattr(study, "directions", None)
    if directions is not None and len(directions) != 1:
        raise RoutespaceError("search history plots one objective: this study has several (use the Pareto plot)")
    d = study.direction
    direction = str(getattr(d, "name", d)).split(".")[-1].lower()
    trials = list(study.trials)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    t0 = min(starts) if starts else None
    records = []
    for t in trials:
        if str(getattr(t.state, "name", t.state)).split(".")[-1] != "COMPLETE" or t.value is None or t.datetime_complete is None:
            continue
        records.append((int(t.number), float(t.value), (t.datetime_complete - t0).total_seconds()))
    return records, direction


def history_data(records: Iterable[tuple[int, float, float]], direction: str = "maximize") -> HistoryData:
    """Best-so-far by trial number and by wall time from (trial, value, seconds) records."""
    if direction not in ("maximize", "minimize"):
        raise RoutespaceError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    rows = []
    for r in records:
        try:
            trial, value, sec = int(r[0]), float(r[1]), float(r[2])
        except (TypeError, ValueError, IndexError):
            raise RoutespaceError(f"a history record is (trial, value, seconds), got {r!r:.80}") from None
        if math.isfinite(value) and math.isfinite(sec):
            rows.append((trial, value, sec))
    if not rows:
        raise RoutespaceError("no completed trials with a finite value to plot")
    acc = np.maximum.accumulate if direction == "maximize" else np.minimum.accumulate
    by_trial = sorted(rows)
    by_time = sorted(rows, key=lambda r: (r[2], r[0]))
    values = np.array([r[1] for r in by_trial])
    time_values = np.array([r[1] for r in by_time])
    return HistoryData(
        trials=np.array([r[0] for r in by_trial]),
        values=values,
        best=acc(values),
        seconds=np.array([r[2] for r in by_time]),
        best_by_time=acc(time_values),
        direction=direction,
    )


def pick_extremes(values: Sequence[float], k: int) -> list[int]:
    """Indices of ``k`` values alternating smallest, largest, 2nd smallest, ... (e.g. images with the
    smallest and largest objects), without repeats, in that order."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    out: list[int] = []
    lo, hi = 0, len(order) - 1
    while len(out) < min(k, len(order)):
        out.append(order[lo])
        lo += 1
        if len(out) < k and lo <= hi:
            out.append(order[hi])
            hi -= 1
    return out


def budget_target_gflops(budget: Mapping | None, fixed_gflops: float, body_all_open_gflops: float) -> float | None:
    """The total-GFLOPs target of a dynamic run's budget: its ``gflops`` if given, else
    ``fixed + mu * body_all_open`` (the inverse of the trainer's conversion)."""
    if not budget:
        return None
    if budget.get("gflops") is not None:
        return float(budget["gflops"])
    if budget.get("mu") is not None:
        return float(fixed_gflops + float(budget["mu"]) * body_all_open_gflops)
    return None
