"""The adaptive budget loss: reachable floor, dual weight, and exact resume of its state."""
import json
import shutil

import pytest
import torch

from routespace.evaluators.schedule import BudgetLoss, make_budget_loss
from routespace.evaluators.train import TrainConfig, fit
from routespace.spaces.architecture import Architecture
from routespace.evaluators.cost import architecture_cost
from routespace.spaces.space import RoutingSpace, preset
from routespace.spaces.supernet import DynamicNet, RoutingOutput, body_flops_all_open, route_floor

SMALL = RoutingSpace(layers=3, base_channels=8, num_classes=3, input_size=(32, 32), name="small")


def test_route_floor_is_the_cheapest_single_path():
    """Brute force over every single path of the tiny space (3^L moves, clamped ones skipped)."""
    space = preset("tiny")
    size = space.input_size
    all_body = body_flops_all_open(space, size)
    best = None

    def walk(prefix):
        nonlocal best
        layer = len(prefix) + 1
        if layer > space.layers:
            body = architecture_cost(Architecture.from_path(space, prefix), size).body_flops
            best = body if best is None else min(best, body)
            return
        prev = prefix[-1] if prefix else 0
        for s in (prev - 1, prev, prev + 1):
            if s in space.scales_at(layer):
                walk(prefix + [s])

    walk([])
    assert route_floor(space) == pytest.approx(best / all_body, rel=1e-12)


def test_mu_below_floor_targets_floor(capsys):
    loss = make_budget_loss(preset("tiny"), (64, 64), mu=0.1, lam=0.8)
    assert loss.target == pytest.approx(route_floor(preset("tiny")))
    assert "below the cheapest route" in capsys.readouterr().err
    ok = make_budget_loss(preset("tiny"), (64, 64), mu=0.5, lam=0.5)
    assert ok.target == 0.5 and capsys.readouterr().err == ""


def _fake_output(ratio, all_open=100.0, n=4):
    flops = torch.full((n,), ratio * all_open, requires_grad=True)
    return RoutingOutput(logits=torch.zeros(n, 1, 1, 1), edge_gates={}, expected_body_flops=flops, expected_flops=flops,
                         realised_body_flops=flops.detach(), realised_flops=flops.detach(), budget_body_flops=flops)


def test_dual_weight_rises_above_target_and_falls_back_below():
    loss = BudgetLoss(100.0, mu=0.4, lam=0.5, warmup=0.0, ramp=0.0)
    for step in range(50):
        loss(_fake_output(0.8), step, 100)
    high = loss.lam_now
    assert high > 0.5 * 2  # grew while above target
    for step in range(50, 100):
        loss(_fake_output(0.1), step, 100)
    assert loss.lam_now < high and loss.lam_now >= 0.5
    fixed = BudgetLoss(100.0, mu=0.4, lam=0.5, warmup=0.0, ramp=0.0, adaptive=False)
    for step in range(20):
        fixed(_fake_output(0.8), step, 100)
    assert fixed.lam_now == 0.5
    # no change during warm-up
    warm = BudgetLoss(100.0, mu=0.4, lam=0.5, warmup=0.5)
    warm(_fake_output(0.9), 10, 100)
    assert warm.lam_now == 0.5


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 3, (n, 32, 32), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _budget():
    return BudgetLoss(body_flops_all_open(SMALL, (32, 32)), mu=0.3, lam=0.5, warmup=0.0, ramp=0.0, rate=0.2)


def test_resume_restores_the_dual_weight_exactly(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=8, batch_size=4, lr=3e-3, optimizer="adamw", checkpoint_every=4, keep_checkpoints=0, seed=0)
    torch.manual_seed(0)
    ref_loss = _budget()
    fit(DynamicNet(SMALL), _Data(), cfg, out_dir=tmp_path / "ref", extra_loss=ref_loss, progress=False)
    assert ref_loss.lam_now != 0.5
    # a copy of the run as it stood at the step-4 checkpoint, as after a kill
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "ref", cut)
    (cut / "checkpoints" / "final.pt").unlink()
    (cut / "checkpoints" / "step-00000008.pt").unlink(missing_ok=True)
    manifest = json.loads((cut / "manifest.json").read_text())
    manifest.update(status="running", step=4)
    (cut / "manifest.json").write_text(json.dumps(manifest))
    torch.manual_seed(1)
    resumed_loss = _budget()
    fit(DynamicNet(SMALL), _Data(), cfg, out_dir=cut, extra_loss=resumed_loss, resume=True, progress=False)
    assert resumed_loss.lam_now == pytest.approx(ref_loss.lam_now, rel=1e-12)
    a = torch.load(tmp_path / "ref" / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(cut / "checkpoints" / "final.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6), k
