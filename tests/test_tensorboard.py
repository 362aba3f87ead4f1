"""TensorBoard events: the writer, evaluation and search logs, each read back with TensorBoard's own
EventAccumulator and compared with values computed here (or stored by Optuna); without tensorboard, one
note and nothing written."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from routespace.cli.main import main  # noqa: E402
from routespace.evaluators import tensorboard as tb  # noqa: E402
from routespace.evaluators.cost import architecture_cost  # noqa: E402
from routespace.evaluators.evaluate import evaluate  # noqa: E402
from routespace.search.budget import cheapest_architecture  # noqa: E402
from routespace.spaces.space import preset  # noqa: E402


def _events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_writer_round_trip(tmp_path):
    values = np.random.default_rng(0).normal(size=500)
    image = np.linspace(0, 1, 3 * 8 * 12).reshape(3, 8, 12)
    with tb.open_writer(tmp_path) as w:
        assert w.enabled and not (tmp_path / "tb").exists()  # nothing made before the first value
        for step in range(3):
            w.scalar("loss/total", 1.0 / (step + 1), step)
        w.scalar("lambda", torch.tensor(0.25), np.int64(7))  # one-element tensor, numpy step
        w.scalars({"a": 1.5, "b": None}, 2, prefix="train/")
        w.histogram("gates", np.append(values, [np.nan, np.inf]), 4)  # non-finite values left out
        w.histogram("empty", [], 4)  # nothing to write: no error
        w.image("routes", image, 5)
        w.image("gray", torch.zeros(1, 4, 6, dtype=torch.uint8), 6)
    acc = _events(tmp_path / "tb")
    assert _scalars(acc, "loss/total") == pytest.approx({0: 1.0, 1: 0.5, 2: 1 / 3})
    assert _scalars(acc, "lambda") == {7: 0.25}
    assert _scalars(acc, "train/a") == {2: 1.5} and "train/b" not in acc.Tags()["scalars"]
    (h,) = acc.Histograms("gates")
    assert h.step == 4 and h.histogram_value.num == 500
    assert h.histogram_value.sum == pytest.approx(values.sum())
    assert (h.histogram_value.min, h.histogram_value.max) == pytest.approx((values.min(), values.max()))
    assert "empty" not in acc.Tags()["histograms"]
    (img,) = acc.Images("routes")
    assert (img.step, img.width, img.height) == (5, 12, 8)
    assert acc.Images("gray")[0].width == 6


def test_bad_values_are_refused(tmp_path):
    w = tb.open_writer(tmp_path)
    for call in (lambda: w.image("x", np.zeros((2, 4, 4)), 0), lambda: w.image("x", np.zeros((4, 4)), 0),
                 lambda: w.scalar("x", "high", 0), lambda: w.scalar("x", 1.0, -1), lambda: w.scalar("x", 1.0, 1.5)):
        with pytest.raises(ValueError):
            call()
    w.close()


def test_without_tensorboard_one_note_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    monkeypatch.setattr(tb, "_noted", set())
    for _ in range(2):
        w = tb.open_writer(tmp_path)
        assert not w.enabled
        w.scalar("x", 1.0, 0)
        w.histogram("h", [1.0, 2.0], 0)
        w.image("i", np.zeros((3, 2, 2)), 0)
        w.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("routespace: note: tensorboard is not installed"), err
    assert "pip install -e '.[tensorboard]'" in err
    assert list(tmp_path.iterdir()) == []
    assert not tb.open_writer(tmp_path, enabled=False).enabled  # --no-tensorboard: no note at all
    assert capsys.readouterr().err == ""


def _val_set(n: int = 6):
    from routespace.evaluators.datasets import load_dataset

    data = load_dataset("synthetic", "val", size=(64, 64))
    return torch.utils.data.Subset(data, range(n))


def test_evaluate_logs_miou_and_per_image_gflops(tmp_path):
    from routespace.spaces.builder import build
    from routespace.spaces.classics import classic
    from routespace.spaces.supernet import DynamicNet

    torch.manual_seed(0)
    val = _val_set()
    with tb.open_writer(tmp_path / "static") as w:
        static = evaluate(build(classic("unet", preset("tiny"))), val, batch_size=3, device="cpu",
                          latency_repeats=0, writer=w, step=11)
    without = evaluate(build(classic("unet", preset("tiny"))), val, batch_size=3, device="cpu", latency_repeats=0)
    assert set(static) == set(without)  # the writer does not change what evaluate returns
    acc = _events(tmp_path / "static" / "tb")
    assert _scalars(acc, "eval/miou") == {11: pytest.approx(static["miou"], rel=1e-6)}
    assert _scalars(acc, "eval/gflops") == {11: pytest.approx(static["gflops"], rel=1e-6)}
    finite = {f"eval/iou/{name}" for name, v in static["iou"].items() if v is not None}  # None: class absent
    assert finite and {t for t in acc.Tags()["scalars"] if t.startswith("eval/iou/")} == finite
    assert acc.Tags()["histograms"] == []  # a static net has one cost: no histogram

    with tb.open_writer(tmp_path / "dynamic") as w:
        dyn = evaluate(DynamicNet(preset("tiny")), val, batch_size=3, device="cpu", latency_repeats=0, writer=w, step=3)
    acc = _events(tmp_path / "dynamic" / "tb")
    per_image = np.array(dyn["per_image_gflops"])
    (h,) = acc.Histograms("eval/per_image_gflops")
    assert h.step == 3 and h.histogram_value.num == len(val) == len(per_image)
    assert h.histogram_value.sum == pytest.approx(per_image.sum(), rel=1e-9)
    assert _scalars(acc, "eval/gflops_mean") == {3: pytest.approx(per_image.mean(), rel=1e-6)}


def test_evaluate_cli_writes_run_events_with_route_images(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--budget-mu", "0.4", "--steps", "2", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--latency-repeats", "0"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    acc = _events(run / "tb")
    step = result["step"]
    assert _scalars(acc, "eval/miou") == {step: pytest.approx(result["miou"], rel=1e-6)}
    assert acc.Histograms("eval/per_image_gflops")[0].histogram_value.num == result["images"]
    (img,) = acc.Images("eval/routes")
    assert img.step == step and img.width > 100 and img.height > 100


BUDGET = round(architecture_cost(cheapest_architecture(preset("tiny"))).gflops * 1.1, 6)


def _search(out, *extra, trials: int = 2) -> list[str]:
    return ["search", "--preset", "tiny", "--space", "path", "--strategy", "random", "--max-gflops", str(BUDGET),
            "--trials", str(trials), "--evaluator", "synthetic", "--study", "tb", "--seed", "1", "--out", str(out),
            "--no-progress", *extra]


def test_search_logs_each_trial_and_a_rerun_replaces_its_events(tmp_path):
    out = tmp_path / "out"
    assert main(_search(out)) == 0
    assert main(_search(out, trials=3)) == 0  # continues the study: 3 completed trials in all
    files = list((out / "tb").glob("events.out.tfevents.*.search"))
    assert len(files) == 1 and not list(out.glob(".tb-search-*"))  # replaced, not added to; no staging left
    trials = optuna.load_study(study_name="tb", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert len(complete) == 3 and pruned  # the tight budget rejects some candidates
    acc = _events(out / "tb")
    assert _scalars(acc, "search/miou") == pytest.approx({t.number: t.user_attrs["miou"] for t in complete}, rel=1e-6)
    assert _scalars(acc, "search/gflops") == pytest.approx(
        {t.number: t.user_attrs["gflops"] for t in complete + pruned}, rel=1e-6)
    assert _scalars(acc, "search/constraint/gflops") == pytest.approx(
        {t.number: t.user_attrs["gflops"] - BUDGET for t in complete + pruned}, rel=1e-5, abs=1e-9)
    assert _scalars(acc, "search/rejected") == {t.number: float(t in pruned) for t in complete + pruned}
    best, running = {}, -1.0
    for t in sorted(complete, key=lambda t: t.number):
        running = max(running, t.user_attrs["miou"])
        best[t.number] = running
    assert _scalars(acc, "search/best_miou") == pytest.approx(best, rel=1e-6)


def test_search_no_tensorboard_writes_no_events(tmp_path):
    out = tmp_path / "out"
    assert main(_search(out, "--no-tensorboard", trials=1)) == 0
    assert not (out / "tb").exists()


def test_train_step_records_and_gate_rates(tmp_path):
    """The calls the training loop makes: a step record and per-scale gate open rates of a real net."""
    from routespace.spaces.supernet import DynamicNet

    torch.manual_seed(0)
    net = DynamicNet(preset("tiny")).eval()
    with torch.no_grad():
        out = net.forward_skipping(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    rates = tb.gate_open_rates(out.edge_gates)
    for s in range(4):  # independent count over the edges leaving scale s (decoder edges included)
        rows = [g for k, g in out.edge_gates.items() if (k[2] if k[0] == "out" else k[1]) == s]
        expected = float(sum(int((g > 0).sum()) for g in rows)) / sum(g.numel() for g in rows)
        assert rates[f"gate_open/stride{4 * 2 ** s}"] == pytest.approx(expected)
    with tb.open_writer(tmp_path) as w:
        for step in (1, 2):
            record = {"loss": 2.0 / step, "ce": 1.5 / step, "lr": 1e-3 * step, "body_ratio": 0.3 + 0.1 * step,
                      "lambda": 0.5, "budget_loss": 0.01, "step": step, "note": "text", "new_term": 7.0, **rates}
            tb.log_train_step(w, record, step, budget_target=0.4)
    acc = _events(tmp_path / "tb")
    assert _scalars(acc, "train/loss") == pytest.approx({1: 2.0, 2: 1.0})
    assert _scalars(acc, "train/lr") == pytest.approx({1: 1e-3, 2: 2e-3})
    assert _scalars(acc, "budget/realised_ratio") == pytest.approx({1: 0.4, 2: 0.5})
    assert _scalars(acc, "budget/target") == pytest.approx({1: 0.4, 2: 0.4})
    assert _scalars(acc, "train/new_term") == {1: 7.0, 2: 7.0}
    assert _scalars(acc, "gate_open/stride8") == pytest.approx({1: rates["gate_open/stride8"], 2: rates["gate_open/stride8"]})
    assert not {"train/step", "train/note"} & set(acc.Tags()["scalars"])


def test_resumed_writer_purges_steps_logged_past_the_checkpoint(tmp_path):
    """A run killed at step 6 after a checkpoint at 4 resumes from 4: TensorBoard keeps 0-3 of the first
    file and 4-5 of the resumed one, each step once."""
    with tb.open_writer(tmp_path) as w:
        for step in range(6):
            w.scalar("train/loss", 100.0 + step, step)
    import time

    time.sleep(1.1)  # event files are ordered by their creation second
    with tb.open_writer(tmp_path, purge_step=4) as w:
        for step in (4, 5):
            w.scalar("train/loss", 200.0 + step, step)
    assert [e.step for e in _events(tmp_path / "tb").Scalars("train/loss")] == [0, 1, 2, 3, 4, 5]
    assert _scalars(_events(tmp_path / "tb"), "train/loss") == {0: 100, 1: 101, 2: 102, 3: 103, 4: 204, 5: 205}


def test_budgeted_training_run_writes_its_scalars(tmp_path, capsys):
    """`routespace train` on a tiny budgeted run: the loss terms, lr, budget ratio and target, lambda and the
    per-scale gate rates of every step are in RUN/tb, equal to the step records of history.json."""
    import json

    from routespace.cli.main import main

    run = tmp_path / "dyn"
    before = torch.get_num_threads()
    try:
        assert main(["train", "--out", str(run), "--steps", "4", "--batch-size", "2", "--size", "32x32", "--setting", "A",
                     "--budget-warmup", "0", "--budget-ramp", "0", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    history = json.loads((run / "history.json").read_text())["steps"]
    acc = _events(run / "tb")
    assert _scalars(acc, "train/loss") == pytest.approx({r["step"]: r["loss"] for r in history}, rel=1e-6)
    assert _scalars(acc, "budget/realised_ratio") == pytest.approx({r["step"]: r["body_ratio"] for r in history}, rel=1e-6)
    assert _scalars(acc, "budget/lambda") == pytest.approx({r["step"]: r["lambda"] for r in history}, rel=1e-6)
    assert list(_scalars(acc, "budget/target").values()) == pytest.approx([0.1] * len(history))
    assert {f"gate_open/stride{s}" for s in (4, 8, 16, 32)} <= set(acc.Tags()["scalars"])
    assert sorted(_scalars(acc, "train/lr")) == [1, 2, 3, 4]
