"""evaluate(): mIoU against hand counts; realised FLOPs of a dynamic net with every gate shut / open."""
from __future__ import annotations

import math

import pytest
import torch

from routespace.evaluators.cost import decoder_cost, gate_cost, space_cost, stem_cost
from routespace.evaluators.evaluate import binary_entropy_bits, evaluate
from routespace.spaces.space import RoutingSpace
from routespace.spaces.supernet import DynamicNet

SPACE = RoutingSpace(layers=3, base_channels=4, num_classes=3, input_size=(32, 32), name="eval")


class _Labels(torch.utils.data.Dataset):
    num_classes = 3

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.zeros(3, *self.labels.shape[1:]), self.labels[i]


class _Constant(torch.nn.Module):
    """Predicts class ``c`` everywhere (as one-hot logits)."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        logits[:, self.c] = 1.0
        return logits


def test_miou_known_answer():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2] = 1  # 8 pixels of class 1, 24 of class 0
    labels[1, 0, 0] = 255  # ignored
    r = evaluate(_Constant(0), _Labels(labels), batch_size=1, device="cpu", latency_repeats=0)
    # class 0: intersection 23 (31 counted pixels, 23 of class 0), union 31; class 1: 0 / 8; class 2 absent
    assert r["miou"] == pytest.approx((23 / 31 + 0.0) / 2)
    assert r["pixel_accuracy"] == pytest.approx(23 / 31)
    assert "latency_ms" not in r and r["images"] == 2


def _gated_net(bias: float) -> DynamicNet:
    torch.manual_seed(0)
    net = DynamicNet(SPACE)
    with torch.no_grad():
        for gate in net.gates.values():
            gate.fc.weight.zero_()
            gate.fc.bias.fill_(bias)
    return net


class _Noise(_Labels):
    def __getitem__(self, i):
        return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), self.labels[i]


def test_dynamic_all_gates_shut_runs_only_stem_decoder_and_the_stride4_gates():
    """Every gate shut: each node (l, 0) passes the stem's features on (paying its gate head), and the
    decoder starts at stride 4."""
    data = _Noise(torch.randint(0, 3, (3, 32, 32), generator=torch.Generator().manual_seed(0)))
    r = evaluate(_gated_net(-10.0), data, batch_size=2, device="cpu", latency_repeats=1, latency_images=1)
    size = (32, 32)
    gates = sum(gate_cost(SPACE, (l, 0), size, "paper")[0] for l in range(SPACE.layers + 1))
    expected = stem_cost(SPACE, size, "paper")[0] + decoder_cost(SPACE, 0, size, "paper")[0] + gates
    assert r["body_gflops_mean"] == 0.0 and r["body_gflops_max"] == 0.0
    assert r["gflops_mean"] == pytest.approx(expected / 1e9) and r["gflops_std"] == 0.0
    assert r["gate_entropy_mean"] == 0.0 and r["edges_varying_fraction"] == 0.0
    assert r["latency_ms"] > 0 and r["latency_ms_all_open"] > 0


def test_dynamic_all_gates_open_costs_the_whole_space():
    data = _Noise(torch.randint(0, 3, (3, 32, 32), generator=torch.Generator().manual_seed(0)))
    r = evaluate(_gated_net(10.0), data, batch_size=3, device="cpu", latency_repeats=0)
    full = space_cost(SPACE, (32, 32), gates=True)
    assert r["gflops_min"] == pytest.approx(full.gflops) and r["gflops_max"] == pytest.approx(full.gflops)
    assert r["gflops_all_open"] == pytest.approx(full.gflops)
    assert r["body_gflops_mean"] == pytest.approx(full.body_flops / 1e9) == pytest.approx(r["body_gflops_all_open"])
    # tanh(10) rounds to 1.0 in float32: decisive gates, entropy 0
    assert r["gate_entropy_mean"] < 1e-6


def test_binary_entropy():
    h = binary_entropy_bits(torch.tensor([0.0, 0.5, 1.0, 0.25]))
    assert h[:3].tolist() == [0.0, 1.0, 0.0]
    assert h[3].item() == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))
