"""A supernet trained for searching (SPOS-style uniform path sampling, ``routespace train --sampling uniform``):
every training step draws one uniform random single path through the space for the whole batch (its edges
forced open, every other gate closed), so every path's weights are trained about equally often and the supernet
can score any path one-shot (``routespace.search.dynamic.oneshot``). One path per batch, as in SPOS: an earlier
version drew a path per image (so every BN layer normalised batches in which most images were off its path),
and the tiny-preset supernet it trained never left the majority-class prediction (loss at the class prior from
step 150 to 1500; every path scored the same one-shot mIoU; benchmarks/bench_oneshot.py). Inference and evaluation use the gates as usual; one-shot scoring forces them."""
from __future__ import annotations

import torch

from ...spaces.architecture import Architecture
from ...spaces.supernet import DynamicNet, RoutingOutput

SAMPLINGS = ("gates", "uniform")


class UniformPathNet(DynamicNet):
    """A :class:`DynamicNet` whose training forward draws one uniform random path per step for the batch (seeded
    by the global torch RNG, which the training loop seeds and checkpoints)."""

    sampling = "uniform"

    def spec(self) -> dict:
        return {**super().spec(), "sampling": self.sampling}

    def sample_gates(self, n: int) -> dict:
        """Forced gates (n, k) per node: one path drawn uniformly move by move, the same for all ``n`` images."""
        from .oneshot import forced_gates

        scales, prev = [], 0
        for layer in range(1, self.space.layers + 1):
            allowed = [s for s in (prev - 1, prev, prev + 1) if s in self.space.scales_at(layer)]
            prev = allowed[int(torch.randint(len(allowed), (1,)))]
            scales.append(prev)
        return forced_gates(self, Architecture.from_path(self.space, scales), n)

    def forward(self, x: torch.Tensor, gate_override: dict | None = None) -> RoutingOutput:
        if self.training and gate_override is None:
            gate_override = {k: v.to(x.device) for k, v in self.sample_gates(x.shape[0]).items()}
        return super().forward(x, gate_override)
