"""The comparison composes `routespace train` runs: every row kind (dynamic, Common, classic, random path, an
added run) on a tiny setting; rows are run folders that `extract`, `show` and `evaluate` read like any run and
that the row's recorded `train` command reproduces; resumable after a kill; mean ± std and the Pareto verdicts
against hand computations; latency of all rows in one interleaved loop; the time protocol's step counts."""
from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from routespace.cli.main import main
from routespace.search import compare as cmp
from routespace.search.compare import CompareSettings, Row, bands, compare, summarise, verdicts
from routespace.spaces.architecture import Architecture
from routespace.spaces.errors import RoutespaceError

TINY = dict(steps=3, dynamic=("C",), classics=("deeplabv3", "fcn32s"), val_images=6, latency_repeats=2, batch_size=2,
            curve_points=3)
NAMES = ["Dynamic-C", "Common-C", "deeplabv3", "fcn32s", "random-path", "mine"]


def _train_static(out) -> None:
    assert main(["train", "--out", str(out), "--arch", "unet", "--steps", "3", "--batch-size", "2", "--seed", "5",
                 "--no-tensorboard"]) == 0


@pytest.fixture(scope="module")
def added(tmp_path_factory):
    run = tmp_path_factory.mktemp("added") / "unet-run"
    _train_static(run)
    return run


@pytest.fixture(scope="module")
def settings(added):
    return CompareSettings(**TINY, add=(f"mine={added}",))


@pytest.fixture(scope="module")
def run(tmp_path_factory, settings):
    out = tmp_path_factory.mktemp("cmp") / "run"
    result = compare(out, settings, progress=False, command="test", workers=2)
    return out, result


def test_every_row_kind_present(run, added):
    out, result = run
    assert [r["name"] for r in result["rows"]] == NAMES
    assert [r["kind"] for r in result["rows"]] == ["dynamic", "common", "classic", "classic", "random", "added"]
    report = (out / "report.md").read_text()
    for name in NAMES:
        assert f"| {name} |" in report
    data = json.loads((out / "comparison.json").read_text())
    assert data["rows"] == result["rows"]
    for r in data["rows"]:
        assert {"name", "kind", "seeds", "miou", "gflops"} <= set(r) and 0 <= r["miou"] <= 1 and r["params_m"] > 0
    dyn = data["rows"][0]
    per_image = json.loads((out / "rows" / "Dynamic-C-s0.json").read_text())["per_image_gflops"]
    assert len(per_image) == 6 and dyn["gflops"] == pytest.approx(sum(per_image) / 6, rel=1e-12)  # realised mean
    assert dyn["gflops_min"] <= dyn["gflops_p10"] <= dyn["gflops_p90"] <= dyn["gflops_max"] <= dyn["gflops_all_open"] + 1e-12
    assert [r["train_steps"] for r in data["rows"]] == [3] * 6
    # the added run is in the table as it is, scored on the same 6 images
    from routespace.evaluators.datasets import load_dataset
    from routespace.evaluators.evaluate import evaluate, load_run_model

    model, _, _ = load_run_model(added)
    val = torch.utils.data.Subset(load_dataset("synthetic", "val", size=(64, 64)), range(6))
    assert data["rows"][-1]["miou"] == pytest.approx(evaluate(model, val, latency_repeats=0)["miou"], abs=1e-9)
    assert data["rows"][-1]["runs"] == [str(added.resolve())]
    for png in ("pareto.png", "grid-dynamic-C.png", "grid-common-C.png", "routes-Dynamic-C.png", "learning-curve.png"):
        assert (out / png).stat().st_size > 5000, png
    # learning curves: one dynamic and one static row, a point per kept checkpoint and the final step
    assert set(data["curves"]) == {"Dynamic-C", "deeplabv3"}
    assert [p[0] for p in data["curves"]["Dynamic-C"]["points"]] == [1, 2, 3]
    assert data["curves"]["Dynamic-C"]["points"][-1][1] == pytest.approx(dyn["miou"], abs=1e-12)


def test_rows_are_the_runs_a_user_makes_by_hand(run, tmp_path):
    """A row's recorded `routespace train` command, run by hand into a new folder, gives the same weights;
    `extract` by hand on the dynamic row gives the Common row's spec."""
    out, _ = run
    row = json.loads((out / "rows" / "Dynamic-C-s0.json").read_text())
    argv = shlex.split(row["train_command"])[1:]
    i = argv.index("--out")
    argv[i + 1] = str(tmp_path / "by-hand")
    assert argv[:1] == ["train"] and "--setting" in argv and "--budget-mode" in argv
    assert main(argv) == 0
    a = torch.load(out / "runs" / "Dynamic-C-s0" / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "by-hand" / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((out / "runs" / "Dynamic-C-s0" / "manifest.json").read_text())
    assert manifest["extra"]["cli"]["setting"] == "C" and manifest["extra"]["cli"]["budget"]["mode"] == "paper"
    assert main(["extract", str(out / "runs" / "Dynamic-C-s0"), "-o", str(tmp_path / "c.json"), "--images", "6"]) == 0
    assert (Architecture.from_json((tmp_path / "c.json").read_text()).edges
            == Architecture.from_json((out / "specs" / "common-C-s0.json").read_text()).edges)
    common = json.loads((out / "runs" / "Common-C-s0" / "manifest.json").read_text())
    assert common["extra"]["cli"]["arch"]["edges"] == json.loads((out / "specs" / "common-C-s0.json").read_text())["edges"]


def test_a_row_folder_works_with_extract_show_evaluate(run, tmp_path, capsys):
    out, _ = run
    row = out / "runs" / "Dynamic-C-s0"
    assert main(["extract", str(row), "-o", str(tmp_path / "common.json")]) == 0
    assert "at 64x64" in capsys.readouterr().out  # the run's size, from its record
    assert main(["show", str(row), "--what", "histogram", "--images", "8", "-o", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").stat().st_size > 5000
    capsys.readouterr()
    assert main(["evaluate", str(row), "--json", "--latency-repeats", "0", "--no-tensorboard"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"] == "synthetic" and result["size"] == [64, 64] and result["images"] == 200
    assert result["budget"]["mode"] == "paper" and result["budget"]["mu"] == 0.2 and result["budget"]["setting"] == "C"


def test_rerun_resumes_without_retraining(run, settings, monkeypatch):
    out, result = run

    def no_training(*args, **kwargs):
        raise AssertionError("the rerun trained a net again")

    monkeypatch.setattr("routespace.evaluators.train.fit", no_training)  # a retrain fails the test
    checkpoints = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")}
    again = compare(out, settings, progress=False, command="test")
    assert again["rows"] == result["rows"]
    assert checkpoints and {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")} == checkpoints


def test_latency_of_all_rows_in_one_interleaved_loop(run, settings, monkeypatch):
    """Every run's net (and each dynamic net's dense pass) is timed in one loop, round-robin: the order of
    calls is the same full cycle over all of them, once per repeat."""
    out, _ = run
    calls: list[list[str]] = []
    log: list[str] = []
    original = cmp.interleaved_times_ms

    def spy(fns, repeats, warmup=1):
        calls.append(list(fns))
        wrapped = {name: (lambda fn=fn, name=name: (log.append(name), fn())) for name, fn in fns.items()}
        return original(wrapped, repeats, warmup)

    monkeypatch.setattr(cmp, "interleaved_times_ms", spy)
    (out / "latency.json").unlink()
    again = compare(out, settings, progress=False, command="test")
    keys = [f"{n}-s{5 if n == 'mine' else 0}" for n in NAMES]
    assert len(calls) == 1 and set(calls[0]) == set(keys) | {"Dynamic-C-s0 (all open)"}
    cycle = calls[0]
    assert log == cycle * (1 + settings.latency_repeats)  # warm-up + repeats, never one net's repeats in a row
    assert all(again["rows"][i]["latency_ms"] > 0 for i in range(len(NAMES)))
    lat = json.loads((out / "latency.json").read_text())
    assert lat["rows"] == keys and all(lat["ms"][k]["n"] == settings.latency_repeats for k in keys)


def test_mean_std_and_verdicts_against_hand_computation():
    def row(name, kind, seed, miou, gflops):
        res = {"miou": miou, "params_m": 0.1, "train_seconds": 1.0, "train_steps": 10}
        if kind == "dynamic":
            res.update(gflops_mean=gflops, gflops_min=gflops - 1, gflops_max=gflops + 1, per_image_gflops=[gflops - 1, gflops + 1],
                       body_gflops_mean=1.0, body_gflops_all_open=4.0, gflops_all_open=20.0)
        else:
            res["gflops"] = gflops
        return Row(name, kind, seed, f"runs/{name}-s{seed}", res)

    rows = [row("D", "dynamic", s, m, g) for s, m, g in ((0, 0.50, 4.0), (1, 0.60, 5.0), (2, 0.70, 6.0))]
    rows += [row("S", "classic", s, m, 3.0) for s, m in ((0, 0.40), (1, 0.44), (2, 0.48))]
    rows += [row("T", "classic", s, m, 5.5) for s, m in ((0, 0.70), (1, 0.70), (2, 0.70))]
    table = {r["name"]: r for r in summarise(rows)}
    d = table["D"]
    assert d["miou"] == pytest.approx(0.6) and d["miou_std"] == pytest.approx(0.1)  # sample std of .5 .6 .7
    assert d["gflops"] == pytest.approx(5.0) and d["n"] == 3 and d["seeds"] == [0, 1, 2]
    # per-image GFLOPs pooled over seeds: 3 5 4 6 5 7, population std sqrt(10/6)
    assert d["gflops_image_std"] == pytest.approx(math.sqrt(10 / 6)) and d["body_ratio"] == pytest.approx(0.25)
    assert table["S"]["miou_std"] == pytest.approx(0.04) and table["T"]["miou_std"] == 0
    (v,) = verdicts(list(table.values()))
    # S (3.0 GFLOPs) is the only row at <= 5.0: D leads it by 0.16 > sqrt(0.1^2 + 0.04^2) = 0.1077
    assert v["on_front"] and [c["name"] for c in v["cheaper"]] == ["S"] and v["best"] == "S"
    assert v["gap"] == pytest.approx(0.16) and v["spread"] == pytest.approx(math.hypot(0.1, 0.04))
    assert v["gap_exceeds_spread"] is True and v["dominated_by"] == []
    b = bands(list(table.values()))
    assert [x["rows"] for x in b] == [["D", "S"], ["T"]] and b[0]["front"] == ["D", "S"] and b[1]["front"] == ["T"]
    # D made cheaper-dominated: a static row with less GFLOPs and more mIoU
    rows += [row("U", "classic", s, 0.65, 4.5) for s in (0, 1)]
    (v,) = verdicts(summarise(rows))
    assert not v["on_front"] and v["dominated_by"] == ["U"] and v["gap"] == pytest.approx(-0.05)
    assert v["gap_exceeds_spread"] is False  # 0.05 < sqrt(0.1^2 + 0^2)


def test_time_protocol_gives_static_rows_the_dynamic_wall_time(tmp_path):
    s = CompareSettings(steps=2, dynamic=("C",), classics=("deeplabv3",), random_baseline=False, val_images=4,
                        latency_repeats=0, batch_size=2, curve_points=0, protocol="time")
    result = compare(tmp_path / "t", s, progress=False, command="test")
    costs = json.loads((tmp_path / "t" / "step-costs.json").read_text())
    assert set(costs) == {"Dynamic-C", "deeplabv3", "Common-C"}
    steps = {r["name"]: r["train_steps"] for r in result["rows"]}
    assert steps["Dynamic-C"] == 2
    for name in ("deeplabv3", "Common-C"):
        assert steps[name] == max(1, round(2 * costs["Dynamic-C"]["median"] / costs[name]["median"]))
    ratio = costs["Dynamic-C"]["median"] / costs["deeplabv3"]["median"]
    assert ratio > 1 and f"deeplabv3 {ratio:.1f}" in (tmp_path / "t" / "report.md").read_text()


def test_killed_compare_skips_the_rows_done_before_the_kill(run, tmp_path):
    """SIGKILL `routespace compare` after its first finished row; the rerun keeps that row (file and
    checkpoint untouched), trains the rest, and every row equals the same row of the uninterrupted fixture."""
    out = tmp_path / "victim"
    flags = ["--steps", "3", "--dynamic", "C", "--classics", "fcn32s", "--no-random", "--val-images", "6",
             "--batch-size", "2", "--latency-repeats", "0", "--workers", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "routespace.cli.main", "compare", "--out", str(out), *flags],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not list((out / "rows").glob("*.json")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = {p.name: p.read_bytes() for p in (out / "rows").glob("*.json")}
    finals = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoints/final.pt")}
    assert done and finals and not (out / "comparison.json").exists()
    assert main(["compare", "--out", str(out), *flags]) == 0
    assert {p.name: p.read_bytes() for p in (out / "rows").glob("*.json") if p.name in done} == done
    assert {p: p.stat().st_mtime_ns for p in finals} == finals
    again = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in again["rows"]] == ["Dynamic-C", "Common-C", "fcn32s"]
    ref = {r["name"]: r["miou"] for r in run[1]["rows"]}
    assert all(r["miou"] == ref[r["name"]] for r in again["rows"])  # the same runs as the fixture's, bit for bit


def test_more_seeds_extend_a_comparison(run, settings, tmp_path):
    """The same comparison with another seed for a headline row keeps every run it has and trains only the
    new one; the row's mean ± std is that of its seeds' rows."""
    import dataclasses
    import shutil
    import statistics

    out = tmp_path / "ext"
    shutil.copytree(run[0], out)
    finals = {p.relative_to(out): p.read_bytes() for p in (out / "runs").glob("*/checkpoints/final.pt")}
    more = dataclasses.replace(settings, seeds=(0, 1), headline_seeds_only=("Dynamic-C",))
    result = compare(out, more, progress=False, command="test")
    assert {p.relative_to(out): p.read_bytes() for p in (out / "runs").glob("*-s0/checkpoints/final.pt")} == finals
    assert sorted(p.name for p in (out / "runs").glob("*-s1")) == ["Dynamic-C-s1"]
    dyn = result["rows"][0]
    per_seed = [json.loads((out / "rows" / f"Dynamic-C-s{s}.json").read_text())["miou"] for s in (0, 1)]
    assert dyn["seeds"] == [0, 1] and dyn["miou"] == pytest.approx(statistics.fmean(per_seed))
    assert dyn["miou_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / math.sqrt(2))
    assert [r["seeds"] for r in result["rows"][1:]] == [[0]] * 4 + [[5]]


def test_bad_settings(added):
    with pytest.raises(RoutespaceError, match="tau"):
        CompareSettings(tau=0)
    with pytest.raises(RoutespaceError, match="unknown dynamic setting"):
        CompareSettings(dynamic=("Z",))
    with pytest.raises(RoutespaceError, match="unknown classic"):
        CompareSettings(classics=("resnet",))
    with pytest.raises(RoutespaceError, match="unknown protocol"):
        CompareSettings(protocol="fast")
    with pytest.raises(RoutespaceError, match="repeat a seed"):
        CompareSettings(seeds=(0, 0))
    with pytest.raises(RoutespaceError, match="already called 'unet'"):
        CompareSettings(classics=("unet",), add=(f"unet={added}",))


def test_folder_with_a_different_run_is_refused(run, capsys):
    out, _ = run
    before = (out / "comparison.json").read_bytes()
    with pytest.raises(RoutespaceError, match="different comparison"):
        compare(out, CompareSettings(steps=4, dynamic=("C",), val_images=6), progress=False)
    assert main(["demo", "--out", str(out), "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert (out / "comparison.json").read_bytes() == before
