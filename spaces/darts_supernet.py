"""The DARTS supernet of ``routespace search --strategy nni-darts`` (first-order DARTS with an edge on/off
relaxation; the algorithm and its loop: :mod:`routespace.search.nni_darts`).

Every node and edge of the space; edge ``e`` carries ``w_e = sigmoid(alpha_e)`` and a node sums
``w_e * edge_e(x_src)`` over its incoming edges, then ``x + cell(x)``, the cell being the softmax(beta)-weighted
mixture of the offered cells. ``expected_gflops()`` is differentiable and built from the analytic part costs
of :mod:`routespace.evaluators.cost`: a node's activity ``a(n) = max_e w_e * a(src)`` (the stem is 1), an edge
costs ``w_e * a(src) * edge_flops``, a cell ``a(n) * sum_c softmax(beta)_c * cell_flops_c``; stem and decoder
are constant. Unlike :class:`routespace.spaces.supernet.DynamicNet` (per-image gates, pass-through), the
weights here are global: one relaxed architecture for all images.
"""
from __future__ import annotations

import torch
from torch import nn

from ..evaluators.cost import cell_cost, decoder_cost, edge_cost, stem_cost
from .cells import Decoder, Stem, Transition, make_cell
from .keys import edge_key, node_key
from .ops import feature_sizes
from .space import RoutingSpace


def cell_key(node: tuple[int, int], cell: str) -> str:
    """Module key of one offered cell at a node (the supernet holds every offered cell of every node)."""
    return f"{node_key(node)}_{cell}"


class DartsSupernet(nn.Module):
    """The relaxed supernet over ``space`` with ``cell_types`` offered at every node; costs at ``size``."""

    def __init__(self, space: RoutingSpace, cell_types: tuple[str, ...], size: tuple[int, int]) -> None:
        super().__init__()
        self.space, self.cell_types = space, tuple(cell_types)
        self.edges = list(space.edges())
        self.nodes = [n for n in space.nodes() if n[0] > 0]
        self.stem = Stem(space.base_channels)
        self.transitions = nn.ModuleDict({edge_key(e): Transition(space, e[1], e[2]) for e in self.edges})
        self.cells = nn.ModuleDict({
            cell_key(n, c): make_cell(c, space.channels(n[1])) for n in self.nodes for c in self.cell_types
        })
        self.decoder = Decoder(space, max(space.scales_at(space.layers)))
        self.alpha = nn.Parameter(torch.full((len(self.edges),), 0.5))
        self.beta = nn.Parameter(torch.zeros(len(self.nodes), len(self.cell_types)))
        self._index = {e: i for i, e in enumerate(self.edges)}
        self.register_buffer("edge_gflops", torch.tensor([edge_cost(space, e, size, "paper")[0] / 1e9 for e in self.edges]))
        self.register_buffer("cell_gflops", torch.tensor(
            [[cell_cost(space, n, c, size, "paper")[0] / 1e9 for c in self.cell_types] for n in self.nodes]))
        decoder_inputs = 3 if space.layers >= 3 else space.layers
        self.const_gflops = (stem_cost(space, size, "paper")[0] + decoder_cost(space, decoder_inputs, size, "paper")[0]) / 1e9
        self.all_open_gflops = float(self.edge_gflops.sum() + self.cell_gflops.max(1).values.sum()) + self.const_gflops

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n not in ("alpha", "beta")]

    def expected_gflops(self) -> torch.Tensor:
        w = torch.sigmoid(self.alpha)
        cw = torch.softmax(self.beta, dim=1)
        act = {(0, 0): torch.ones(())}
        total = torch.zeros(()) + self.const_gflops
        for j, (l, s) in enumerate(self.nodes):
            ins = self.space.in_edges((l, s))
            terms = [w[self._index[e]] * act[(l - 1, e[1])] for e in ins]
            act[(l, s)] = torch.stack(terms).max()
            total = total + sum(t * self.edge_gflops[self._index[e]] for t, e in zip(terms, ins))
            total = total + act[(l, s)] * (cw[j] * self.cell_gflops[j]).sum()
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w_ = x.shape[-2:]
        sizes = feature_sizes(h, w_)
        w = torch.sigmoid(self.alpha)
        cw = torch.softmax(self.beta, dim=1)
        feats = {(0, 0): self.stem(x)}
        for j, (l, s) in enumerate(self.nodes):
            total = None
            for e in self.space.in_edges((l, s)):
                y = w[self._index[e]] * self.transitions[edge_key(e)](feats[(l - 1, e[1])], sizes[s])
                total = y if total is None else total + y
            mixed = sum(cw[j, k] * self.cells[cell_key((l, s), c)](total) for k, c in enumerate(self.cell_types))
            feats[(l, s)] = total + mixed
        last = [feats.get((self.space.layers, s)) for s in range(4)]
        return self.decoder(last, sizes, (h, w_))
