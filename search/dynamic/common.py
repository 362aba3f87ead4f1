"""Common-A/B/C: static Architectures extracted from the routes a trained dynamic net takes.

The rule (DESIGN §6):

1. Over a data set, an edge counts as *open* for an image when its gate value is above ``threshold``
   (default ``GATE_EPS`` = 1e-4: the edge really executed in the skipping executor; gates of a node
   without input are 0, so an edge is only open where its source node ran). Its *frequency* is the
   fraction of images on which it is open. Last-layer nodes have a decoder edge with its own frequency.
   A closed node that received input passed it on along its keep edge: ``('pass', l, s)`` records how
   often, ``('cell', l, s)`` how often the node's cell ran.
2. An edge is *used* on an image when it is open or, for a keep edge (and a decoder edge), when its
   source passed its input through it. Common keeps the edges used on at least a fraction ``tau`` of
   images (default 0.5: most images); an edge into a last-layer node is kept only if that node's decoder
   edge is used that often too.
3. Repair: only edges on some stem -> last-layer path survive (dangling edges are dropped). If nothing
   survives, the *widest path* is used instead: the stem-to-decoder single path whose least used edge is
   most used (ties: higher summed use, then finer scales), so a Common net always exists.
4. A node of the Common net whose cell was closed on more of the images than it ran on becomes an
   ``identity`` node (it forwards its input, as the dynamic net's pass-through did).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from ...evaluators.routes import open_gate_counts
from ...spaces.architecture import Architecture
from ...spaces.errors import RoutespaceError
from ...spaces.paths import best_path, prune_edges
from ...spaces.space import Edge, Node, RoutingSpace
from ...spaces.supernet import GATE_EPS, DynamicNet

DEFAULT_TAU = 0.5
DEFAULT_THRESHOLD = GATE_EPS
NODE_RECORDS = ("out", "pass", "cell")  # key kinds besides space edges


def _key_str(key: tuple) -> str:
    return "_".join(str(v) for v in key)


def _key_parse(text: str) -> tuple:
    parts = text.split("_")
    if parts[0] in NODE_RECORDS:
        return (parts[0], int(parts[1]), int(parts[2]))
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class EdgeFrequencies:
    """How often each gate key (space edge, or ('out', layer, scale) for the decoder) was open."""

    space: RoutingSpace
    freq: Mapping[tuple, float]
    num_images: int
    threshold: float = DEFAULT_THRESHOLD

    def edge_freq(self) -> dict[Edge, float]:
        return {k: v for k, v in self.freq.items() if k[0] not in NODE_RECORDS}

    def used(self, key: tuple) -> float:
        """How often an edge (or ('out', l, s)) carried something: open, or the pass-through of its source
        along a keep edge / to the decoder."""
        f = self.freq.get(key, 0.0)
        if key[0] == "out":
            return f + self.freq.get(("pass", key[1], key[2]), 0.0)
        if key[1] == key[2]:
            return f + self.freq.get(("pass", key[0] - 1, key[1]), 0.0)
        return f

    def usage(self) -> dict[tuple, float]:
        """:meth:`used` of every space edge and decoder edge."""
        space = self.space
        keys = list(space.edges()) + [("out", space.layers, s) for s in space.scales_at(space.layers)]
        return {k: self.used(k) for k in keys}

    def to_dict(self) -> dict:
        return {
            "space": self.space.to_dict(),
            "num_images": self.num_images,
            "threshold": self.threshold,
            "freq": {_key_str(k): float(v) for k, v in sorted(self.freq.items(), key=lambda kv: str(kv[0]))},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "EdgeFrequencies":
        try:
            return cls(
                RoutingSpace.from_dict(data["space"]),
                {_key_parse(k): float(v) for k, v in data["freq"].items()},
                int(data["num_images"]),
                float(data["threshold"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RoutespaceError(f"not an edge-frequency record ({exc}): expected space, freq, num_images, threshold") from None


@torch.no_grad()
def edge_frequencies(
    model: DynamicNet,
    dataset,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 16,
    max_images: int | None = None,
) -> EdgeFrequencies:
    """Run the dynamic net (eval mode, the skipping executor) over ``dataset`` and count how often each
    gate is open, each node passed its input on, and each cell ran."""
    if not isinstance(model, DynamicNet):
        raise RoutespaceError("edge frequencies need a dynamic net (a DynamicNet), not a static one")
    was_training = model.training
    model.eval()
    counts: dict[tuple, float] = {}
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    seen = 0
    try:
        for start in range(0, n, batch_size):
            images = torch.stack([dataset[i][0] for i in range(start, min(n, start + batch_size))])
            out = model.forward_skipping(images)
            opened, _ = open_gate_counts(out.edge_gates, threshold)
            for key, c in opened.items():
                counts[key] = counts.get(key, 0.0) + float(c)
            for node in out.alive:
                counts[("pass", *node)] = counts.get(("pass", *node), 0.0) + float(out.passed(node).sum())
                counts[("cell", *node)] = counts.get(("cell", *node), 0.0) + float(out.cell_ran[node].sum())
            seen += images.shape[0]
    finally:
        model.train(was_training)
    if seen == 0:
        raise RoutespaceError("the data set is empty: edge frequencies need at least one image")
    return EdgeFrequencies(model.space, {k: v / seen for k, v in counts.items()}, seen, threshold)


def widest_path(space: RoutingSpace, freq: Mapping[tuple, float]) -> list[Edge]:
    """The stem-to-decoder single path maximising its least frequent edge (then the summed frequency)."""

    def finish(node: Node, value: tuple[float, float]) -> tuple[float, float]:
        f = freq.get(("out", node[0], node[1]), 1.0)
        return (min(value[0], f), value[1] + f)

    _, path = best_path(space, lambda e: freq.get(e, 0.0), lambda v, f: (min(v[0], f), v[1] + f),
                        (math.inf, 0.0), finish=finish)
    return path


def common_architecture(
    freqs: EdgeFrequencies, tau: float = DEFAULT_TAU, name: str = "common"
) -> Architecture:
    """The Common Architecture of the edges used on at least a fraction ``tau`` of images, repaired, with
    ``identity`` cells where the dynamic net mostly passed through."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1:
        raise RoutespaceError(f"tau must be in (0, 1], got {tau!r}: it is the fraction of images an edge must be open on")
    space = freqs.space
    last = space.layers
    usage = freqs.usage()
    kept = []
    for e in space.edges():
        if usage[e] < tau:
            continue
        if e[0] == last and usage[("out", last, e[2])] < tau:
            continue
        kept.append(e)
    edges = prune_edges(space, kept)
    if not edges:
        edges = frozenset(widest_path(space, usage))
    nodes = {(0, 0)} | {(l, d) for (l, _, d) in edges}
    cells = {n: "identity" for n in nodes
             if ("pass", *n) in freqs.freq and freqs.freq[("pass", *n)] > freqs.freq.get(("cell", *n), 0.0)}
    return Architecture(space, frozenset(edges), tuple(cells.items()), name=name)


def frequencies_from_routes(space: RoutingSpace, routes: Iterable[set[tuple]], threshold: float = DEFAULT_THRESHOLD) -> EdgeFrequencies:
    """Edge frequencies from per-image routes (sets of open gate keys)."""
    routes = list(routes)
    if not routes:
        raise RoutespaceError("no routes given")
    keys = list(space.edges()) + [("out", space.layers, s) for s in space.scales_at(space.layers)]
    freq = {k: sum(k in r for r in routes) / len(routes) for k in keys}
    return EdgeFrequencies(space, freq, len(routes), threshold)
