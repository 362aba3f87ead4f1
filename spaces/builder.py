"""One builder for every architecture: ``build(arch) -> StaticNet``."""
from __future__ import annotations

import torch
from torch import nn

from .architecture import Architecture
from .cells import Decoder, Stem, Transition, make_cell
from .keys import edge_key, node_key
from .ops import feature_sizes


class StaticNet(nn.Module):
    """A static segmentation net built from an :class:`Architecture`.

    Input (N, 3, H, W) float with H and W multiples of 32; output (N, num_classes, H, W) logits.
    Each active node sums its incoming edges into x and computes ``h = x + cell(x)`` (``h = x`` for an
    ``identity`` node); edges carry ReLU(h) on keep, the transitions on up/down, and an identity node's
    keep edge (and its edge to the decoder) carries x itself, as a closed node of the dynamic net does.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        space = arch.space
        self.stem = Stem(space.base_channels)
        cells = {node_key(n): make_cell(arch.cell_of(n), space.channels(n[1])) for n in arch.nodes}
        self.cells = nn.ModuleDict({k: m for k, m in cells.items() if m is not None})
        passthrough = {n for n in arch.nodes if cells[node_key(n)] is None}
        self.transitions = nn.ModuleDict(
            {edge_key(e): Transition(space, e[1], e[2], passthrough=(e[0] - 1, e[1]) in passthrough) for e in arch.sorted_edges}
        )
        self.out_relu = nn.ReLU()  # a last-layer node's keep edge to the decoder (a module, so hooks see it)
        self.decoder = Decoder(space, max(arch.output_scales()))
        # a static schedule, so forward is a flat loop (and TorchScript-friendly)
        self._plan = [
            (node_key(n), n[1], [(edge_key(e), node_key((e[0] - 1, e[1]))) for e in arch.in_edges(n)],
             node_key(n) in self.cells)
            for n in arch.nodes
        ]
        self._outputs = [(s, node_key((space.layers, s)), (space.layers, s) not in passthrough) for s in arch.output_scales()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        sizes = feature_sizes(h, w)
        feats: dict[str, torch.Tensor] = {}
        stem = self.stem(x)
        for key, scale, inputs, has_cell in self._plan:
            total = stem
            if len(inputs) > 0:
                total = None
                for ekey, src in inputs:
                    y = self.transitions[ekey](feats[src], sizes[scale])
                    total = y if total is None else total + y
            assert total is not None
            feats[key] = total + self.cells[key](total) if has_cell else total
        last: list[torch.Tensor | None] = [None, None, None, None]
        for s, key, relu in self._outputs:
            last[s] = self.out_relu(feats[key]) if relu else feats[key]
        return self.decoder(last, sizes, (h, w))


def build(arch: Architecture) -> StaticNet:
    """Build any Architecture into a runnable ``nn.Module``."""
    return StaticNet(arch)
