"""One builder for every architecture: ``build(arch) -> StaticNet``."""
from __future__ import annotations

import torch
from torch import nn

from .architecture import Architecture
from .cells import Decoder, Stem, Transition, make_cell


def _key(node: tuple[int, int]) -> str:
    return f"{node[0]}_{node[1]}"


def _edge_key(edge: tuple[int, int, int]) -> str:
    return f"{edge[0]}_{edge[1]}_{edge[2]}"


class StaticNet(nn.Module):
    """A static segmentation net built from an :class:`Architecture`.

    Input (N, 3, H, W) float with H and W multiples of 32; output (N, num_classes, H, W) logits.
    Each active node sums its incoming edges and applies ``x + cell(x)``.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        space = arch.space
        self.stem = Stem(space.base_channels)
        self.cells = nn.ModuleDict(
            {_key(n): make_cell(arch.cell_of(n), space.channels(n[1])) for n in arch.nodes if n[0] > 0}
        )
        self.transitions = nn.ModuleDict(
            {_edge_key(e): Transition(space, e[1], e[2]) for e in arch.sorted_edges}
        )
        self.decoder = Decoder(space, max(arch.output_scales()))
        # a static schedule, so forward is a flat loop (and TorchScript-friendly)
        self._plan = [
            (_key(n), n[1], [(_edge_key(e), _key((e[0] - 1, e[1]))) for e in arch.in_edges(n)])
            for n in arch.nodes
            if n[0] > 0
        ]
        self._outputs = [(s, _key((space.layers, s))) for s in arch.output_scales()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        sizes = [(h // 2 ** (s + 2), w // 2 ** (s + 2)) for s in range(4)]
        feats = {"0_0": self.stem(x)}
        for key, scale, inputs in self._plan:
            total = None
            for ekey, src in inputs:
                y = self.transitions[ekey](feats[src], sizes[scale])
                total = y if total is None else total + y
            feats[key] = total + self.cells[key](total)
        last = [None, None, None, None]
        for s, key in self._outputs:
            last[s] = feats[key]
        return self.decoder(last, sizes, (h, w))


def build(arch: Architecture) -> StaticNet:
    """Build any Architecture into a runnable ``nn.Module``."""
    return StaticNet(arch)
