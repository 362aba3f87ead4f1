"""The budget loss in its two modes: batch mean by hand, paper vs realised FLOPs, the released schedule,
the adaptive dual weight and the exact resume of its state."""
import json
import math
import shutil

import pytest
import torch

from routespace.evaluators.schedule import budget_weight
from routespace.evaluators.train import TrainConfig, fit
from routespace.search.dynamic.budget import LAMBDA_CAP, BudgetLoss, make_budget_loss
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import RoutingSpace, preset
from routespace.spaces.supernet import DynamicNet, RoutingOutput, body_flops_all_open

SMALL = RoutingSpace(layers=3, base_channels=8, num_classes=3, input_size=(32, 32), name="small")


def test_every_mu_is_reachable_no_floor(capsys):
    """With pass-through the cheapest route costs 0 body FLOPs: mu 0.1 is used as given, without a note."""
    loss = make_budget_loss(preset("tiny"), (64, 64), mu=0.1, lam=0.8)
    assert loss.mu == 0.1 and capsys.readouterr().err == ""


def test_batch_mean_loss_by_hand_and_its_gradient_is_equal_per_image():
    """lam * (mean_i(body_i)/all - mu)^2: images of different cost are not penalised for the spread."""
    all_open = 100.0
    body = torch.tensor([10.0, 50.0, 20.0, 40.0], requires_grad=True)  # mean 30 -> ratio 0.3
    out = RoutingOutput(logits=torch.zeros(4, 1, 1, 1), edge_gates={}, expected_body_flops=body * 0 + 30.0,
                        expected_flops=body, realised_body_flops=body.detach(), realised_flops=body.detach(),
                        budget_body_flops=body)
    loss = BudgetLoss(all_open, mu=0.3, lam=0.8, mode="realised", warmup=0.0, ramp=0.0, adaptive=False, penalty="square")(out, 0, 10)
    assert float(loss) == pytest.approx(0.0, abs=1e-12)  # on budget in the mean, however spread
    loss = BudgetLoss(all_open, mu=0.1, lam=0.8, mode="realised", warmup=0.0, ramp=0.0, adaptive=False, penalty="square")(out, 0, 10)
    assert float(loss) == pytest.approx(0.8 * (0.3 - 0.1) ** 2)
    loss.backward()
    expected = 2 * 0.8 * (0.3 - 0.1) / all_open / 4
    assert torch.allclose(body.grad, torch.full((4,), expected))


def test_paper_mode_uses_the_soft_expectation_and_realised_mode_what_runs():
    expected = torch.full((2,), 20.0, requires_grad=True)
    runs = torch.full((2,), 60.0, requires_grad=True)
    out = RoutingOutput(logits=torch.zeros(2, 1, 1, 1), edge_gates={}, expected_body_flops=expected,
                        expected_flops=expected, realised_body_flops=runs.detach(), realised_flops=runs.detach(),
                        budget_body_flops=runs)
    paper = BudgetLoss(100.0, mu=0.2, lam=0.5, mode="paper", warmup=0.0, ramp=0.0)
    realised = BudgetLoss(100.0, mu=0.2, lam=0.5, mode="realised", warmup=0.0, ramp=0.0, adaptive=False, penalty="square")
    assert float(paper(out, 0, 10)) == pytest.approx(0.0)
    assert float(realised(out, 0, 10)) == pytest.approx(0.5 * (0.6 - 0.2) ** 2)
    assert not paper.adaptive and realised.mode == "realised"
    for step in range(20):  # paper mode: lambda stays fixed even far above the target
        paper(out, step, 20)
    assert paper.lam_now == 0.5
    with pytest.raises(RoutespaceError, match="unknown budget mode"):
        BudgetLoss(100.0, mu=0.2, lam=0.5, mode="soft")


def test_released_schedule_off_for_40_percent_then_ramped_over_2_percent():
    assert [budget_weight(s, 1000) for s in (0, 399, 400, 410, 420, 999)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]


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
    # far above the target for long: lambda stops at its cap, LAMBDA_CAP x its initial value
    capped = BudgetLoss(100.0, mu=0.1, lam=0.5, warmup=0.0, ramp=0.0)
    for step in range(2000):
        capped(_fake_output(0.9), step, 2000)
    assert capped.lam_now == pytest.approx(LAMBDA_CAP * 0.5)
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


# --- the Lagrangian penalty and the budget gradient kept apart from the cross-entropy's -----------------
def test_lagrangian_penalty_by_hand_and_its_dual_step():
    """penalty 'linear': loss lam * (mean ratio - mu), gradient lam / all_open / N per image, which does not
    vanish at the target; lambda follows the same dual rule as 'square' (x exp(rate * d), d = (r - mu) / mu
    clamped to [-1, 1], kept in [lam_init, cap]); numbers worked by hand."""
    loss = BudgetLoss(100.0, mu=0.2, lam=0.5, warmup=0.0, ramp=0.0, rate=0.1, penalty="linear")
    out = _fake_output(0.6)  # r = 0.6: relative deviation 2, clamped to 1: lambda 0.5 * exp(0.1 * 1)
    value = loss(out, 0, 100)
    lam = 0.5 * math.exp(0.1)
    assert loss.lam_now == pytest.approx(lam)
    assert float(value) == pytest.approx(lam * (0.6 - 0.2))
    value.backward()
    assert torch.allclose(out.budget_body_flops.grad, torch.full((4,), lam / 100.0 / 4))
    near = BudgetLoss(100.0, mu=0.2, lam=0.5, warmup=0.0, ramp=0.0, adaptive=False, penalty="linear")
    out = _fake_output(0.2)  # on target: the value is 0 but the push is still lam per unit ratio
    value = near(out, 0, 100)
    value.backward()
    assert float(value) == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(out.budget_body_flops.grad, torch.full((4,), 0.5 / 100.0 / 4))
    loss(_fake_output(0.3), 1, 100)  # relative deviation 0.5: x exp(0.05)
    loss(_fake_output(0.1), 2, 100)  # -0.5: x exp(-0.05)
    loss(_fake_output(0.15), 3, 100)  # -0.25: x exp(-0.025)
    assert loss.lam_now == pytest.approx(0.5 * math.exp(0.1 + 0.05 - 0.05 - 0.025))
    for step in range(4, 100):  # never below its initial value
        loss(_fake_output(0.0), step, 100)
    assert loss.lam_now == 0.5
    capped = BudgetLoss(100.0, mu=0.1, lam=0.5, warmup=0.0, ramp=0.0, rate=1.0, penalty="linear", lam_max=2.0)
    for step in range(5):
        capped(_fake_output(0.9), step, 100)
    assert capped.lam_now == 2.0
    with pytest.raises(RoutespaceError, match="unknown budget penalty"):
        BudgetLoss(100.0, mu=0.1, lam=0.5, penalty="cubic")
    with pytest.raises(RoutespaceError, match="gradient scope"):
        BudgetLoss(100.0, mu=0.1, lam=0.5, grad_scope="cells")


class _TwoWeights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_w = torch.nn.Parameter(torch.tensor(1.0))
        self.w = torch.nn.Parameter(torch.tensor(1.0))


def test_budget_gradient_apart_scope_and_clip_by_hand():
    """ce = 3a + 4b (gradient norm 5), budget = 6a + 8b; the cross-entropy's gradient is clipped to 2.5 on
    its own -> (1.5, 2.0); the budget's reaches the gate weight a only, 6 clipped to 2 -> a: 3.5, b: 2.0."""
    from routespace.evaluators.train import _backward_apart

    m = _TwoWeights()
    ce = 3 * m.gate_w + 4 * m.w
    budget = 6 * m.gate_w + 8 * m.w
    loss = BudgetLoss(100.0, mu=0.1, lam=0.5, grad_scope="gates", grad_clip=2.0)
    assert loss.separate_gradient
    norms = _backward_apart(m, ce, budget, loss, grad_clip=2.5)
    assert float(m.gate_w.grad) == pytest.approx(3.5, rel=1e-5) and float(m.w.grad) == pytest.approx(2.0, rel=1e-5)
    assert norms == pytest.approx({"grad_norm_ce": 5.0, "grad_norm_extra": 6.0})
    # scope 'all', budget clipped to the training clip (its own None): (6, 8) norm 10 -> (1.5, 2.0)
    m = _TwoWeights()
    both = BudgetLoss(100.0, mu=0.1, lam=0.5, grad_scope="all", grad_clip=None)
    assert not both.separate_gradient  # nothing apart: the loop takes the usual single backward
    _backward_apart(m, 3 * m.gate_w + 4 * m.w, 6 * m.gate_w + 8 * m.w, both, grad_clip=2.5)
    assert float(m.gate_w.grad) == pytest.approx(3.0, rel=1e-5) and float(m.w.grad) == pytest.approx(4.0, rel=1e-5)


def test_gate_scoped_budget_leaves_every_other_weight_on_the_cross_entropy_alone():
    """One SGD step of the supernet with the budget's gradient on the gates only: every non-gate weight moves
    exactly as without a budget loss, and gate weights differ (the budget does act on them)."""
    cfg = TrainConfig(steps=1, batch_size=4, lr=0.05, optimizer="sgd", grad_clip=5.0, seed=0)
    nets = []
    for extra in (None, "gates"):
        torch.manual_seed(0)
        net = DynamicNet(SMALL)
        loss = None if extra is None else BudgetLoss(body_flops_all_open(SMALL, (32, 32)), mu=0.05, lam=50.0,
                                                     warmup=0.0, ramp=0.0, grad_scope="gates")
        fit(net, _Data(), cfg, extra_loss=loss, progress=False, tensorboard=False)
        nets.append(dict(net.named_parameters()))
    plain, gated = nets
    others = [n for n in plain if "gate" not in n]
    gates = [n for n in plain if "gate" in n]
    assert others and gates
    for n in others:
        assert torch.equal(plain[n], gated[n]), n
    assert any(not torch.equal(plain[n], gated[n]) for n in gates)


def test_a_checkpoint_of_another_penalty_or_scope_is_refused_on_resume():
    """A run trained with one penalty/scope cannot silently continue with another; checkpoints written before
    the two existed ({'lam_now'} only) were 'square' on every weight."""
    new = BudgetLoss(100.0, mu=0.1, lam=0.5, penalty="linear", grad_scope="gates")
    new.load_state_dict({"lam_now": 3.0, "penalty": "linear", "grad_scope": "gates"})
    assert new.lam_now == 3.0
    with pytest.raises(RoutespaceError, match="'square' on 'all' weights"):
        new.load_state_dict({"lam_now": 3.0})
    old = BudgetLoss(100.0, mu=0.1, lam=0.5, penalty="square", grad_scope="all")
    old.load_state_dict({"lam_now": 2.0})
    assert old.lam_now == 2.0 and old.state_dict() == {"lam_now": 2.0, "penalty": "square", "grad_scope": "all"}


def test_mode_defaults_paper_is_the_released_loss_realised_the_lagrangian_on_gates():
    paper = make_budget_loss(preset("tiny"), (64, 64), mu=0.1, lam=0.8, mode="paper")
    realised = make_budget_loss(preset("tiny"), (64, 64), mu=0.1, lam=0.8, mode="realised")
    assert (paper.penalty, paper.grad_scope, paper.adaptive, paper.separate_gradient) == ("square", "all", False, False)
    assert (realised.penalty, realised.grad_scope, realised.adaptive, realised.separate_gradient) == ("linear", "gates", True, True)
    # the warm-up (weight 0) takes the usual single backward
    realised(_fake_output(0.5, all_open=realised.all_open_body), 0, 100)
    assert realised.last["budget_weight"] == 0 and not realised.separate_gradient


_DDP_WORKER = r'''
import os, sys, torch
torch.set_num_threads(1)
from test_train_support import NoiseSegmentation, param_digest
from routespace.evaluators.train import TrainConfig, fit
from routespace.search.dynamic.budget import BudgetLoss
from routespace.spaces.space import RoutingSpace
from routespace.spaces.supernet import DynamicNet, body_flops_all_open
space = RoutingSpace(layers=3, base_channels=8, num_classes=3, input_size=(32, 32), name="small")
torch.manual_seed(0)
net = DynamicNet(space)
loss = BudgetLoss(body_flops_all_open(space, (32, 32)), mu=0.05, lam=5.0, warmup=0.0, ramp=0.0)
fit(net, NoiseSegmentation(16), TrainConfig(steps=3, batch_size=2, lr=3e-3, optimizer="adamw", seed=0),
    extra_loss=loss, progress=False, tensorboard=False)
with open(sys.argv[1] + "." + os.environ["RANK"], "w") as fh:
    fh.write(param_digest(net, buffers=False) + " %r" % loss.lam_now)
'''


def test_gate_scoped_budget_under_two_processes_keeps_every_rank_equal(tmp_path):
    """torchrun, 2 processes (gloo): the budget's gradient, computed apart from DDP's hooks, is averaged over
    the ranks, so gate weights (and lambda) stay equal although each rank sees other images."""
    import subprocess

    from test_train_support import PYTHON, subprocess_env

    worker = tmp_path / "ddp_budget_worker.py"
    worker.write_text(_DDP_WORKER)
    digest = tmp_path / "digest"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(digest)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (tmp_path / "digest.0").read_text(), (tmp_path / "digest.1").read_text()
    assert a == b


# --- the annealed target (realised mode) -------------------------------------------------------------------
def test_annealed_target_and_additive_dual_by_hand():
    """anneal 0.5 of 100 steps, warm-up 0.2: the target runs from the ratio at switch-on (0.8, step 20) to
    mu 0.2 by step 70, then stays; lambda starts at 0 and moves by rate * lam0 * d, d = (r - target) / mu
    clamped to [-1, 1], never below 0; numbers worked by hand."""
    loss = BudgetLoss(100.0, mu=0.2, lam=0.5, warmup=0.2, ramp=0.0, anneal=0.5, rate=0.1)
    assert loss.lam_now == 0.0
    loss(_fake_output(0.9), 10, 100)  # warm-up: no update, no start ratio
    assert loss.start_ratio is None and loss.lam_now == 0.0
    loss(_fake_output(0.8), 20, 100)  # switch-on: target = start ratio 0.8, d = 0
    assert loss.start_ratio == pytest.approx(0.8) and loss.lam_now == 0.0
    assert loss.target(45, 100) == pytest.approx(0.2 + 0.6 * 0.5)  # half-way down the line
    assert loss.target(70, 100) == pytest.approx(0.2) and loss.target(95, 100) == pytest.approx(0.2)
    loss(_fake_output(0.55), 45, 100)  # r - target = 0.05: d = 0.25, lambda += 0.1 * 0.5 * 0.25
    assert loss.lam_now == pytest.approx(0.0125)
    assert loss.last["budget_target"] == pytest.approx(0.5)
    loss(_fake_output(0.6), 80, 100)  # d = (0.6 - 0.2) / 0.2 = 2, clamped to 1: += 0.05
    assert loss.lam_now == pytest.approx(0.0625)
    for step in range(81, 90):  # far below the target: lambda falls to 0 and stays there (no push to close)
        loss(_fake_output(0.0), step, 100)
    assert loss.lam_now == 0.0
    value = loss(_fake_output(0.0), 90, 100)
    value.backward()
    assert float(value) == 0.0


def test_annealed_state_resumes_and_a_mismatch_is_refused():
    loss = BudgetLoss(100.0, mu=0.2, lam=0.5, warmup=0.0, ramp=0.0, anneal=0.3)
    loss(_fake_output(0.7), 0, 100)
    loss(_fake_output(0.9), 1, 100)
    again = BudgetLoss(100.0, mu=0.2, lam=0.5, warmup=0.0, ramp=0.0, anneal=0.3)
    again.load_state_dict(loss.state_dict())
    assert (again.start_ratio, again.lam_now) == (loss.start_ratio, loss.lam_now) and again.lam_now > 0
    plain = BudgetLoss(100.0, mu=0.2, lam=0.5, warmup=0.0, ramp=0.0)
    with pytest.raises(RoutespaceError, match="annealed over 0.3"):
        plain.load_state_dict(loss.state_dict())
    with pytest.raises(RoutespaceError, match="realised mode only"):
        BudgetLoss(100.0, mu=0.2, lam=0.5, mode="paper", anneal=0.3)
