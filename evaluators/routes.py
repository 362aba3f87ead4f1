"""Open gates of a dynamic net's batches, counted once for every caller (pure: numpy, no torch import).

A gate key is a space edge ``(layer, src, dst)`` or ``('out', layer, scale)`` for a last-layer node's edge
to the decoder; a RoutingOutput's ``edge_gates`` maps each key to its gate values, one per image. An edge is
*open* on an image when its gate is above ``threshold``. The plots (``evaluators.plots``, threshold 0) and
the dynamic-routing frequencies (``search.dynamic.common``, threshold ``GATE_EPS``) both count here.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ..spaces.errors import RoutespaceError

EdgeKey = tuple  # (layer, src, dst) for a space edge, ("out", layer, scale) for a last-layer node -> decoder


def parse_edge_key(key: object) -> EdgeKey:
    """Accept (l, s, d), ('out', l, s), or their string forms 'l,s,d' / 'out,l,s'."""
    if isinstance(key, str):
        parts = [p.strip() for p in key.split(",")]
    elif isinstance(key, (tuple, list)):
        parts = list(key)
    else:
        raise RoutespaceError(f"bad edge key {key!r}: use (layer, src_scale, dst_scale) or ('out', layer, scale)")
    try:
        if len(parts) == 3 and str(parts[0]) == "out":
            return ("out", int(parts[1]), int(parts[2]))
        if len(parts) == 3:
            return tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        pass
    raise RoutespaceError(f"bad edge key {key!r}: use (layer, src_scale, dst_scale) or ('out', layer, scale)")


def as_1d(values: object) -> np.ndarray:
    """A tensor (any device), array or sequence as a flat float64 array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=float).reshape(-1)


def merge_gates(edge_gates: Mapping | Iterable[Mapping]) -> dict[EdgeKey, np.ndarray]:
    """{key: gate values of every image}: one batch's ``edge_gates`` or a list of batches, concatenated.
    Every key must cover the same images."""
    batches = [edge_gates] if isinstance(edge_gates, Mapping) else list(edge_gates)
    merged: dict[EdgeKey, list[np.ndarray]] = {}
    for batch in batches:
        for k, v in batch.items():
            merged.setdefault(parse_edge_key(k), []).append(as_1d(v))
    sizes = {sum(len(a) for a in parts) for parts in merged.values()}
    if len(sizes) > 1:
        raise RoutespaceError("edge gates cover different numbers of images: pass every edge's gates for every batch")
    return {k: np.concatenate(parts) for k, parts in merged.items()}


def open_gate_counts(edge_gates: Mapping | Iterable[Mapping], threshold: float = 0.0) -> tuple[dict[EdgeKey, int], int]:
    """({key: on how many images its gate is > ``threshold``}, number of images)."""
    merged = merge_gates(edge_gates)
    images = len(next(iter(merged.values()))) if merged else 0
    return {k: int((v > threshold).sum()) for k, v in merged.items()}, images


def edge_frequencies(edge_gates: Mapping | Iterable[Mapping], threshold: float = 0.0) -> dict[EdgeKey, float]:
    """Fraction of images on which each edge is open (gate > threshold).

    ``edge_gates``: a RoutingOutput's ``edge_gates`` ({edge: values per image}) or a list of them (batches).
    """
    counts, images = open_gate_counts(edge_gates, threshold)
    return {k: c / images if images else 0.0 for k, c in counts.items()}


def routes_from_gates(edge_gates: Mapping | Iterable[Mapping], threshold: float = 0.0) -> list[frozenset]:
    """Per image, the set of open edges (gate > threshold)."""
    merged = merge_gates(edge_gates)
    n = len(next(iter(merged.values()))) if merged else 0
    return [frozenset(k for k, v in merged.items() if v[i] > threshold) for i in range(n)]
