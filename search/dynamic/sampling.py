"""A supernet trained for searching (SPOS-style uniform path sampling, ``routespace train --sampling uniform``):
in every training step each image takes a uniformly drawn single path through the space (its edges forced
open, every other gate closed), so every path's weights are trained about equally often and the supernet
can score any path one-shot (``routespace.search.dynamic.oneshot``). Inference and evaluation use the gates
as usual; one-shot scoring forces them."""
from __future__ import annotations

import torch

from ...spaces.architecture import Architecture
from ...spaces.supernet import DynamicNet, RoutingOutput

SAMPLINGS = ("gates", "uniform")


class UniformPathNet(DynamicNet):
    """A :class:`DynamicNet` whose training forward draws one uniform random path per image (seeded by the
    global torch RNG, which the training loop seeds and checkpoints)."""

    sampling = "uniform"

    def spec(self) -> dict:
        return {**super().spec(), "sampling": self.sampling}

    def sample_gates(self, n: int) -> dict:
        from .oneshot import forced_gates

        rows: dict = {}
        for i in range(n):
            scales, prev = [], 0
            for layer in range(1, self.space.layers + 1):
                allowed = [s for s in (prev - 1, prev, prev + 1) if s in self.space.scales_at(layer)]
                prev = allowed[int(torch.randint(len(allowed), (1,)))]
                scales.append(prev)
            gates = forced_gates(self, Architecture.from_path(self.space, scales), 1)
            for node, g in gates.items():
                rows.setdefault(node, []).append(g)
        return {node: torch.cat(gs) for node, gs in rows.items()}

    def forward(self, x: torch.Tensor, gate_override: dict | None = None) -> RoutingOutput:
        if self.training and gate_override is None:
            gate_override = {k: v.to(x.device) for k, v in self.sample_gates(x.shape[0]).items()}
        return super().forward(x, gate_override)
