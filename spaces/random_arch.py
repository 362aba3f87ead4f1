"""Seeded random architectures: random single paths and random subgraphs repaired to validity.

Used by tests (fvcore cross-checks on many shapes), benchmarks and the random-path baseline.
(``search.encoding.repair_edges`` is the search's repair; it also completes an empty edge set.)
"""
from __future__ import annotations

import random
from typing import Sequence

from .architecture import Architecture
from .errors import RoutespaceError
from .paths import prune_edges
from .space import Edge, Node, RoutingSpace

Rng = random.Random | int


def _rng(rng: Rng) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def random_path(space: RoutingSpace, rng: Rng) -> list[int]:
    """A random single path: one scale per layer 1..L, each move -1/0/+1 chosen uniformly among the
    moves that stay inside the space."""
    r = _rng(rng)
    prev, scales = 0, []
    for layer in range(1, space.layers + 1):
        allowed = [s for s in (prev - 1, prev, prev + 1) if s in space.scales_at(layer)]
        prev = r.choice(allowed)
        scales.append(prev)
    return scales


def random_subgraph(space: RoutingSpace, rng: Rng, p: float = 0.3) -> frozenset[Edge]:
    """A random path plus each other space edge switched on with probability ``p``, repaired to a
    valid subgraph (the path always survives, so the result is never empty)."""
    r = _rng(rng)
    path = Architecture.from_path(space, random_path(space, r)).edges
    extra = {e for e in space.edges() if r.random() < p}
    return prune_edges(space, path | extra)


def random_architecture(
    space: RoutingSpace,
    rng: Rng,
    kind: str = "subgraph",
    p: float = 0.3,
    cell_choices: Sequence[str] | None = None,
    name: str = "",
) -> Architecture:
    """A seeded random valid Architecture.

    ``kind``: 'path' (one scale per layer), 'subgraph' (a path plus random edges with probability
    ``p``, repaired) or 'mixed' (either, half the time each). ``cell_choices``: if given, each active
    cell node gets a cell type drawn from it (per-node overrides of the space's cell)."""
    r = _rng(rng)
    if kind == "mixed":
        kind = r.choice(("path", "subgraph"))
    if kind == "path":
        edges = Architecture.from_path(space, random_path(space, r)).edges
    elif kind == "subgraph":
        edges = random_subgraph(space, r, p)
    else:
        raise RoutespaceError(f"unknown random architecture kind {kind!r}: choose path, subgraph or mixed")
    cells: dict[Node, str] = {}
    if cell_choices:
        for node in sorted({(l, d) for (l, _, d) in edges}):
            cells[node] = r.choice(list(cell_choices))
    return Architecture(space, edges, tuple(cells.items()), name=name)
