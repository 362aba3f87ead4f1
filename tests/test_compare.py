"""The comparison run on a tiny setting: every row present, resumable, refuses a different run."""
import json

import pytest

from routespace.cli.main import main
from routespace.search.compare import CompareSettings, compare
from routespace.spaces.architecture import Architecture
from routespace.spaces.classics import CLASSICS
from routespace.spaces.errors import RoutespaceError

SETTINGS = CompareSettings(steps=2, dynamic=("C",), val_images=6, latency_repeats=1, batch_size=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "run"
    result = compare(out, SETTINGS, progress=False, command="test", workers=2)
    return out, result


def test_every_row_present(run):
    out, result = run
    names = [r["name"] for r in result["rows"]]
    assert names == ["Dynamic-C", "Common-C", *CLASSICS, "random-path"]
    report = (out / "report.md").read_text()
    for name in names:
        assert f"| {name} |" in report
    data = json.loads((out / "comparison.json").read_text())
    assert data["rows"] == result["rows"]
    dyn = data["rows"][0]
    assert dyn["gflops_min"] <= dyn["gflops"] <= dyn["gflops_max"] <= dyn["gflops_all_open"] + 1e-12
    for r in data["rows"]:
        assert 0 <= r["miou"] <= 1 and r["params_m"] > 0 and r["train_steps"] == 2
    common = Architecture.from_json((out / "common-C.json").read_text())
    assert common.space.name == "tiny"
    for png in ("pareto.png", "grid-dynamic-C.png", "grid-common-C.png"):
        assert (out / png).stat().st_size > 1000


def test_rerun_resumes_without_retraining(run, monkeypatch):
    out, result = run

    def no_training(*args, **kwargs):
        raise AssertionError("the rerun trained a net again")

    monkeypatch.setattr("routespace.evaluators.train.fit", no_training)  # a retrain fails the test
    checkpoints = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")}
    again = compare(out, SETTINGS, progress=False, command="test")
    assert [r["miou"] for r in again["rows"]] == [r["miou"] for r in result["rows"]]
    assert all(r["train_seconds"] >= 0 for r in again["rows"])
    # the rows are read back, not recomputed: their recorded training time is the first run's
    assert [r["train_seconds"] for r in again["rows"]] == [r["train_seconds"] for r in result["rows"]]
    assert checkpoints and {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")} == checkpoints


def test_folder_with_a_different_run_is_refused(run, capsys):
    out, _ = run
    before = (out / "comparison.json").read_bytes()
    with pytest.raises(RoutespaceError, match="different comparison"):
        compare(out, CompareSettings(steps=3, dynamic=("C",), val_images=6), progress=False)
    assert main(["demo", "--out", str(out), "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert (out / "comparison.json").read_bytes() == before


def test_bad_settings():
    with pytest.raises(RoutespaceError, match="tau"):
        CompareSettings(tau=0)
    with pytest.raises(RoutespaceError, match="unknown dynamic setting"):
        CompareSettings(dynamic=("Z",))
    with pytest.raises(RoutespaceError, match="unknown classic"):
        CompareSettings(classics=("resnet",))
