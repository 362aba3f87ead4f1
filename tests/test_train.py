"""The training loop in-process: schedules, data order, config checks, resume, signals, run folder."""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

import pytest
import torch

from routespace.evaluators import runfolder
from routespace.evaluators.checkpoint import load_checkpoint
from routespace.evaluators.schedule import budget_weight, drop_path_rate, lr_factor
from routespace.search.dynamic.budget import mu_for_gflops
from routespace.evaluators.train import SeededOrder, TrainConfig, fit, param_groups, preset_config
from routespace.evaluators.cost import space_cost
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import preset
from test_train_support import NoiseSegmentation, micro_net, param_digest, tree_bytes


def test_lr_factor_known_values():
    assert lr_factor(0, 100) == 1.0
    assert lr_factor(50, 100, power=1.0) == pytest.approx(0.5)
    assert lr_factor(50, 100, power=0.9) == pytest.approx(0.5**0.9)
    assert lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(4, 100, warmup_steps=10) == pytest.approx(0.5 * 0.96**0.9)
    assert all(lr_factor(k, 100, 10) > 0 for k in range(100))


def test_budget_weight_off_then_ramped():
    assert [budget_weight(k, 100) for k in (0, 39)] == [0.0, 0.0]
    assert budget_weight(40, 100) == 0.0
    assert budget_weight(41, 100) == pytest.approx(0.5)  # default ramp: 2 % of training
    assert budget_weight(42, 100) == 1.0 and budget_weight(99, 100) == 1.0
    assert budget_weight(50, 100, ramp=0.2) == pytest.approx(0.5)
    assert budget_weight(10, 100, warmup=0.0, ramp=0.0) == 1.0
    assert drop_path_rate(50, 100, 0.2) == pytest.approx(0.1)


def test_mu_for_gflops_inverts_the_cost_split():
    space = preset("tiny")
    rep = space_cost(space, (64, 64), gates=True)
    fixed = rep.flops - rep.body_flops
    target = (fixed + 0.3 * rep.body_flops) / 1e9
    assert mu_for_gflops(space, (64, 64), target) == pytest.approx(0.3)
    with pytest.raises(RoutespaceError, match="outside what routing can reach"):
        mu_for_gflops(space, (64, 64), fixed / 1e9 * 0.5)


def test_seeded_order_shards_one_global_order_and_resumes_mid_epoch():
    full = SeededOrder(20, 4, seed=5)
    assert full.steps_per_epoch == 5
    epoch0 = list(full.batches(0))
    assert sorted(i for b in epoch0 for i in b) == sorted(full.permutation(0)[:20].tolist())
    assert list(full.batches(2)) == epoch0[2:]
    assert list(full.batches(7)) == list(full.batches(5))[2:]
    assert full.permutation(0).tolist() != full.permutation(1).tolist()
    ranks = [SeededOrder(20, 2, seed=5, world_size=2, rank=r) for r in (0, 1)]
    for step, whole in enumerate(epoch0):
        parts = [list(r.batches(step))[0] for r in ranks]
        assert parts[0] + parts[1] == whole
    with pytest.raises(RoutespaceError, match="fewer than one global batch"):
        SeededOrder(3, 4, seed=0)


@pytest.mark.parametrize(
    "bad", [dict(steps=0), dict(lr=0), dict(optimizer="rmsprop"), dict(momentum=1.0), dict(device="tpu"),
            dict(batch_size=2.5), dict(drop_path=1.0), dict(lr=float("nan"))],
)
def test_config_rejects_bad_settings(bad):
    with pytest.raises(RoutespaceError, match="training setting"):
        TrainConfig(**bad)


def test_preset_config_and_gate_param_group():
    cfg = preset_config("tiny", lr=1e-2, steps=None)
    assert cfg.lr == 1e-2 and cfg.steps == preset_config("tiny").steps
    with pytest.raises(RoutespaceError):
        preset_config("huge")

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(2, 2)
            self.norm = torch.nn.BatchNorm2d(2)
            self.gates = torch.nn.Linear(2, 1)

    m = Gated()
    groups = param_groups(m, 0.1, 0.25, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert {n: (g["lr"], g["weight_decay"]) for n, g in by_name.items()} == {
        "main": (0.1, 1e-4), "main-no-decay": (0.1, 0.0), "gate": (0.025, 1e-4), "gate-no-decay": (0.025, 0.0)}
    ids = lambda name: [id(p) for p in by_name[name]["params"]]  # noqa: E731
    assert ids("main") == [id(m.body.weight)]
    # biases and norm parameters take no weight decay (the released configs: none on BN and the gate biases)
    assert ids("main-no-decay") == [id(m.body.bias), id(m.norm.weight), id(m.norm.bias)]
    assert ids("gate") == [id(m.gates.weight)] and ids("gate-no-decay") == [id(m.gates.bias)]


def test_fit_trains_writes_run_folder_and_loss_falls(tmp_path):
    out = tmp_path / "run"
    net = micro_net()
    before = param_digest(net)
    res = fit(net, NoiseSegmentation(32), TrainConfig(steps=12, batch_size=4, lr=0.05, checkpoint_every=5, keep_checkpoints=1),
              out_dir=out, progress=False)
    assert res.steps == 12 and len(res.history) == 12 and param_digest(net) != before
    first, last = sum(h["ce"] for h in res.history[:3]), sum(h["ce"] for h in res.history[-3:])
    assert last < first
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["kind"] == "static" and manifest["config"]["steps"] == 12
    assert set(manifest["versions"]) == {"torch", "routespace", "python"}
    assert [s for s, _ in runfolder.step_checkpoints(out)] == [10]  # keep_checkpoints=1 dropped step 5
    state = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    assert state["step"] == 12 and state["sampler"]["position"] == 12
    assert all(torch.equal(state["model"][k], v) for k, v in net.state_dict().items())
    assert isinstance(state["rng"]["torch"], torch.Tensor) and isinstance(state["rng"]["python"]["internal"], torch.Tensor)
    assert [h["step"] for h in json.loads((out / "history.json").read_text())["steps"]] == list(range(1, 13))
    # the lr followed the poly schedule
    assert res.history[6]["lr"] == pytest.approx(0.05 * lr_factor(6, 12))


def test_resume_continues_exactly(tmp_path):
    cfg = TrainConfig(steps=8, batch_size=4, lr=0.05, checkpoint_every=3, keep_checkpoints=0, seed=1)
    ref = micro_net()
    fit(ref, NoiseSegmentation(20), cfg, out_dir=tmp_path / "a", progress=False)
    part = micro_net()
    fit(part, NoiseSegmentation(20), cfg, out_dir=tmp_path / "b", progress=False)
    # roll "b" back to its step-3 checkpoint, as if it had died there
    for name in ("final.pt", "step-00000006.pt"):
        (tmp_path / "b" / "checkpoints" / name).unlink()
    torch.manual_seed(999)  # the global RNG must come from the checkpoint, not from here
    resumed = micro_net(seed=7)
    res = fit(resumed, NoiseSegmentation(20), cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    assert res.start_step == 3 and res.steps == 8
    assert param_digest(resumed) == param_digest(ref)
    hist_a = json.loads((tmp_path / "a" / "history.json").read_text())["steps"]
    hist_b = json.loads((tmp_path / "b" / "history.json").read_text())["steps"]
    assert hist_a == hist_b
    # resuming a finished run is a no-op
    again = fit(micro_net(), NoiseSegmentation(20), cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    assert again.steps == 8 and again.start_step == 8


def test_resume_with_other_settings_or_foreign_checkpoint_fails_and_touches_nothing(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_every=2)
    fit(micro_net(), NoiseSegmentation(16), cfg, out_dir=out, progress=False)
    before = tree_bytes(out)
    with pytest.raises(RoutespaceError, match=r"cannot resume .*lr=0.05 \(now 0.01\)"):
        fit(micro_net(), NoiseSegmentation(16), TrainConfig(steps=4, batch_size=4, lr=0.01), out_dir=out, resume=True)
    with pytest.raises(RoutespaceError, match="already holds a training run"):
        fit(micro_net(), NoiseSegmentation(16), cfg, out_dir=out)
    final = out / "checkpoints" / "final.pt"
    damaged = sorted(p for p in before if p.startswith("checkpoints/"))
    for rel in damaged:  # every checkpoint truncated: nothing to resume from (one damaged one is passed over)
        (out / rel).write_bytes(before[rel][:1000])
    with pytest.raises(RoutespaceError, match="corrupt or not a routespace checkpoint") as err:
        fit(micro_net(), NoiseSegmentation(16), cfg, out_dir=out, resume=True)
    assert "\n" not in str(err.value)
    torch.save({"weights": torch.ones(3)}, final)
    with pytest.raises(RoutespaceError, match="not a routespace checkpoint"):
        fit(micro_net(), NoiseSegmentation(16), cfg, out_dir=out, resume=True)
    after = tree_bytes(out)
    for rel in damaged:
        after.pop(rel), before.pop(rel)
    assert after == before
    with pytest.raises(RoutespaceError, match="nothing to resume"):
        fit(micro_net(), NoiseSegmentation(16), cfg, out_dir=tmp_path / "empty", resume=True)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(steps=2, batch_size=4, checkpoint_every=1)
    fit(micro_net(), NoiseSegmentation(16), cfg, out_dir=out, progress=False)
    (out / "checkpoints" / "final.pt").unlink()
    other = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(RoutespaceError, match="different model|belongs to another run"):
        fit(other, NoiseSegmentation(16), cfg, out_dir=out, resume=True, meta={"kind": "static", "spec": json.loads((out / "manifest.json").read_text())["spec"]})


@dataclass
class _Out:
    logits: torch.Tensor
    realised_flops: torch.Tensor


class _FakeDynamic(torch.nn.Module):
    """Returns an object with .logits (like the supernet's RoutingOutput); one 'gate' parameter."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.gate_scale = torch.nn.Parameter(torch.ones(()))
        self.drop_path_prob = 0.0
        self.seen_drop = []

    def forward(self, x):
        self.seen_drop.append(self.drop_path_prob)
        return _Out(self.conv(x) * self.gate_scale, torch.full((x.shape[0],), 2e9) * self.gate_scale)


def test_extra_loss_object_output_drop_path_and_gate_lr(tmp_path):
    calls = []

    def extra(out, step, total):
        calls.append((step, total))
        return 0.1 * out.realised_flops.mean() / 1e9

    model = _FakeDynamic()
    cfg = TrainConfig(steps=5, batch_size=4, lr=0.1, gate_lr_mult=0.0, drop_path=0.5, optimizer="adamw")
    res = fit(model, NoiseSegmentation(8), cfg, extra_loss=extra, progress=False)
    assert calls == [(k, 5) for k in range(5)]
    assert model.gate_scale.item() == 1.0  # gate lr x 0: untouched although the extra loss pulls on it
    assert model.seen_drop == pytest.approx([0.5 * k / 5 for k in range(5)])
    assert res.history[0]["extra"] == pytest.approx(0.2) and res.history[0]["realised_gflops"] == pytest.approx(2.0)
    assert res.history[0]["loss"] == pytest.approx(res.history[0]["ce"] + 0.2, rel=1e-5)


def test_sigint_stops_at_step_end_with_checkpoint_and_restores_handlers(tmp_path):
    def previous(signum, frame):
        raise AssertionError("the old handler must not run during fit")

    old = signal.signal(signal.SIGINT, previous)
    try:
        def extra(out, step, total):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return out.sum() * 0.0

        out = tmp_path / "run"
        with pytest.raises(RoutespaceError, match=r"^interrupted at step 3; resume with: fit\(") as err:
            fit(micro_net(), NoiseSegmentation(16), TrainConfig(steps=6, batch_size=4), out_dir=out, extra_loss=extra, progress=False)
        assert signal.getsignal(signal.SIGINT) is previous
        assert "\n" not in str(err.value)
        assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
        assert load_checkpoint(runfolder.latest_checkpoint(out))["step"] == 3
        res = fit(micro_net(), NoiseSegmentation(16), TrainConfig(steps=6, batch_size=4), out_dir=out, resume=True, progress=False)
        assert res.start_step == 3 and res.steps == 6
    finally:
        signal.signal(signal.SIGINT, old)


def test_nan_loss_is_a_user_error_and_marks_run_failed(tmp_path):
    out = tmp_path / "run"

    def extra(out_, step, total):
        return out_.sum() * float("nan")

    with pytest.raises(RoutespaceError, match="loss became nan at step 1"):
        fit(micro_net(), NoiseSegmentation(8), TrainConfig(steps=3, batch_size=4), out_dir=out, extra_loss=extra, progress=False)
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_labels_beyond_the_model_classes_are_a_user_error():
    class Wrong(NoiseSegmentation):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x, y + 5 * (y != 255)

    with pytest.raises(RoutespaceError, match="the data has label [5-7] but the model predicts 3 classes"):
        fit(micro_net(), Wrong(8), TrainConfig(steps=1, batch_size=4), progress=False)
