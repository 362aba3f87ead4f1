"""`routespace train` / `routespace evaluate`: runs, resumption and bad input (exit 2, one line, nothing touched)."""
from __future__ import annotations

import json
import pytest
import torch

from routespace.cli.evaluate_cmd import format_table
from routespace.cli.main import main
from routespace.evaluators.cost import space_cost
from routespace.spaces.space import preset
from routespace.spaces.supernet import body_flops_all_open
from test_train_support import tree_bytes

STATIC = ["--arch", "fcn32s", "--steps", "3", "--batch-size", "2", "--size", "32x32", "--checkpoint-every", "1"]


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("routespace: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("static") / "run"
    assert main(["train", "--out", str(run), *STATIC]) == 0
    return run


@pytest.mark.parametrize("mu", ["0", "-0.1", "1.5", "nan"])
def test_budget_mu_outside_unit_interval(capsys, tmp_path, mu):
    _fails(capsys, ["train", "--out", str(tmp_path / "r"), "--budget-mu", mu], "mu must be in (0, 1]")
    assert not (tmp_path / "r").exists()


def test_conflicting_budget_flags(capsys, tmp_path):
    _fails(capsys, ["train", "--out", str(tmp_path / "r"), "--no-budget", "--budget-mu", "0.3"], "--no-budget conflicts")
    _fails(capsys, ["train", "--out", str(tmp_path / "r"), "--budget-mu", "0.3", "--budget-gflops", "1"], "either --budget-mu or --budget-gflops")
    _fails(capsys, ["train", "--out", str(tmp_path / "r"), "--budget-gflops", "1000"], "outside what routing can reach")
    _fails(capsys, ["train", "--out", str(tmp_path / "r"), "--arch", "unet", "--budget-mu", "0.3"], "dynamic net only")
    assert not (tmp_path / "r").exists()


def test_data_folder_in_wrong_layout(capsys, tmp_path):
    bad = tmp_path / "cityscapes"
    (bad / "images").mkdir(parents=True)
    _fails(capsys, ["train", "--out", str(tmp_path / "r"), "--data", f"cityscapes:{bad}"], "missing folder", "leftImg8bit")
    _fails(capsys, ["train", "--out", str(tmp_path / "r"), "--data", f"voc:{bad}"], "missing folder")
    assert not (tmp_path / "r").exists()


def test_static_run_manifest_and_checkpoints(static_run):
    manifest = json.loads((static_run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["kind"] == "static"
    assert manifest["command"].startswith("routespace train")
    assert manifest["extra"]["cli"]["size"] == [32, 32] and manifest["extra"]["cli"]["budget"] is None
    names = sorted(p.name for p in (static_run / "checkpoints").iterdir())
    assert names == ["final.pt", "step-00000001.pt", "step-00000002.pt"]
    for name in names:
        torch.load(static_run / "checkpoints" / name, weights_only=True)


def test_bad_resumes_leave_every_file_byte_identical(capsys, tmp_path, static_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(static_run, run)
    final = run / "checkpoints" / "final.pt"
    for step_file in (run / "checkpoints").glob("step-*.pt"):  # final.pt the only checkpoint: a damaged one is
        step_file.unlink()  # refused (with an intact older one, resume would pass over it, see test_checkpoint_faults)
    good = final.read_bytes()
    resume = ["train", "--out", str(run), "--resume"]

    final.write_bytes(good[: len(good) // 2])  # corrupt: truncated
    before = tree_bytes(run)
    _fails(capsys, resume, "corrupt or not a routespace checkpoint", str(final))
    assert tree_bytes(run) == before

    torch.save(torch.nn.Linear(2, 2), final)  # a pickled module: weights_only refuses to load it
    before = tree_bytes(run)
    _fails(capsys, resume, "corrupt or not a routespace checkpoint")
    assert tree_bytes(run) == before

    torch.save({"state_dict": {"w": torch.ones(2)}}, final)  # a foreign but loadable torch file
    before = tree_bytes(run)
    _fails(capsys, resume, "not a routespace checkpoint")
    assert tree_bytes(run) == before

    final.write_text("hello")
    before = tree_bytes(run)
    _fails(capsys, resume, "corrupt or not a routespace checkpoint")
    _fails(capsys, [*resume, "--lr", "0.5"], "cannot resume", "lr=")
    _fails(capsys, ["train", "--out", str(run), *STATIC], "already holds a training run")
    assert tree_bytes(run) == before
    _fails(capsys, ["train", "--out", str(tmp_path / "none"), "--resume"], "nothing to resume")

    final.write_bytes(good)  # repaired: resuming a finished run is a no-op
    assert main(resume) == 0
    assert "already complete" in capsys.readouterr().out


def test_evaluate_static_run(capsys, static_run):
    assert main(["evaluate", str(static_run), "--json", "--latency-repeats", "1", "--latency-images", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["miou"] <= 1 and result["kind"] == "static" and result["step"] == 3
    assert result["gflops"] > 0 and result["latency_ms"] > 0 and result["images"] == 200
    assert json.loads((static_run / "evaluation.json").read_text())["miou"] == result["miou"]


def test_dynamic_run_train_resume_and_evaluate(capsys, tmp_path):
    run = tmp_path / "dyn"
    full = space_cost(preset("tiny"), (32, 32), gates=True, gate_resolution="quarter")  # setting C: small gate
    target = (full.flops - full.body_flops + 0.5 * full.body_flops) / 1e9  # mu 0.5 as total GFLOPs
    args = ["train", "--out", str(run), "--steps", "2", "--batch-size", "2", "--size", "32x32", "--budget-gflops", repr(target),
            "--setting", "C"]
    assert main(args) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    budget = manifest["extra"]["cli"]["budget"]
    assert manifest["kind"] == "dynamic" and budget["mu"] == pytest.approx(0.5) and budget["gflops"] == target
    assert budget["lambda"] == 0.5 and budget["warmup"] == 0.4 and budget["ramp"] == 0.02
    assert budget["mode"] == "realised" and budget["adaptive"] is True and budget["setting"] == "C"
    assert manifest["spec"]["gate_resolution"] == "quarter"
    # resume from step 1 with only --out/--resume: the settings come from the run folder
    final = run / "checkpoints" / "final.pt"
    uninterrupted = torch.load(final, weights_only=True)["model"]
    final.unlink()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "steps 1->2" in capsys.readouterr().out
    resumed = torch.load(final, weights_only=True)["model"]
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert main(["evaluate", str(run), "--json", "--latency-repeats", "1", "--latency-images", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    required = ["miou", "gflops_mean", "gflops_min", "gflops_max", "body_gflops_mean", "body_gflops_all_open",
                "gflops_all_open", "latency_ms", "latency_ms_all_open", "gflops_std", "gate_entropy_mean"]
    assert all(isinstance(r[k], float) for k in required), {k: r.get(k) for k in required}
    space = preset("tiny")
    assert r["gflops_all_open"] == pytest.approx(full.gflops)
    assert r["route_scale_spearman"] is None or -1 <= r["route_scale_spearman"] <= 1
    assert r["body_gflops_all_open"] == pytest.approx(body_flops_all_open(space, (32, 32)) / 1e9)
    assert r["gflops_min"] <= r["gflops_mean"] <= r["gflops_max"] <= r["gflops_all_open"] * (1 + 1e-9)
    assert len(r["per_image_gflops"]) == r["images"] == 200
    # the table form names the key figures
    table = format_table(r, "dynamic", run, 1)
    for label in ("mIoU", "GFLOPs realised, mean (total)", "body GFLOPs all open", "latency all open, ms"):
        assert label in table
    assert f"{r['gflops_max']:.5g}" in table


def test_run_record_is_typed_and_versioned(static_run, tmp_path, capsys):
    """The run record (extra.cli) reads back as RunSettings; a pre-version manifest reads as schema 0, resumes
    with its record unchanged; a newer schema is refused in one line."""
    import shutil

    from routespace.evaluators.runrecord import SCHEMA, RunSettings

    manifest = json.loads((static_run / "manifest.json").read_text())
    record = RunSettings.from_manifest(manifest)
    assert manifest["extra"]["cli"]["schema"] == SCHEMA == record.schema
    assert record.size == (32, 32) and record.val_size == (32, 32) and record.data == "synthetic"
    assert record.arch == manifest["spec"]["architecture"] and not record.dynamic and record.budget is None
    assert record.to_dict() == manifest["extra"]["cli"]  # the writer and the reader agree
    assert RunSettings.from_manifest({"extra": {}}) is None
    # an older run: no schema in its record; unfinished, resumed with the same settings
    old = tmp_path / "old"
    shutil.copytree(static_run, old)
    (old / "checkpoints" / "final.pt").unlink()
    m = json.loads((old / "manifest.json").read_text())
    del m["extra"]["cli"]["schema"]
    m["status"], m["step"] = "interrupted", 2
    (old / "manifest.json").write_text(json.dumps(m))
    assert RunSettings.from_manifest(m).schema == 0
    state = torch.load(old / "checkpoints" / "step-00000002.pt", weights_only=True)
    del state["meta"]["extra"]["cli"]["schema"]  # the checkpoint of that older run carried the same record
    torch.save(state, old / "checkpoints" / "step-00000002.pt")
    assert main(["train", "--out", str(old), "--resume"]) == 0, capsys.readouterr().err
    after = json.loads((old / "manifest.json").read_text())
    assert after["status"] == "done" and "schema" not in after["extra"]["cli"]
    capsys.readouterr()
    # a newer schema is refused by every reader
    m["extra"]["cli"]["schema"] = SCHEMA + 1
    (old / "manifest.json").write_text(json.dumps(m))
    _fails(capsys, ["config", "dump", str(old)], "newer routespace")
    _fails(capsys, ["evaluate", str(old), "--latency-repeats", "0"], "newer routespace")


def test_skip_closed_training_is_recorded_resumed_and_leaves_out_batch_closed_cells(capsys, tmp_path, monkeypatch):
    """--skip-closed: the run record keeps it (resume and config dump carry it on) and the model the run trains
    runs no cell that every image of the batch has closed (hooks count what ran)."""
    from routespace.spaces import supernet

    built = []
    original = supernet.DynamicNet.__init__

    def spy(self, *a, **k):
        original(self, *a, **k)
        built.append(self)

    monkeypatch.setattr(supernet.DynamicNet, "__init__", spy)
    run = tmp_path / "skip"
    args = ["train", "--out", str(run), "--steps", "2", "--batch-size", "2", "--size", "32x32", "--setting", "A",
            "--skip-closed", "--no-tensorboard"]
    assert main(args) == 0
    record = json.loads((run / "manifest.json").read_text())["extra"]["cli"]
    assert record["skip_closed"] is True and built[-1].skip_closed is True
    (run / "checkpoints" / "final.pt").unlink()
    assert main(["train", "--out", str(run), "--resume", "--no-tensorboard"]) == 0
    assert built[-1].skip_closed is True  # from the run folder
    capsys.readouterr()
    assert main(["config", "dump", str(run)]) == 0
    assert "skip_closed: true" in capsys.readouterr().out
    # what the flag does to a forward: a cell closed for the whole batch does not run
    net = built[-1]
    ran = []
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: ran.append(k)) for k, m in net.cells.items()]
    from routespace.spaces.keys import node_key

    # every gate of the first layers open, every later one closed: the later cells are closed for the batch
    override = {n: torch.full((2, net.gates[node_key(n)].fc.out_channels), 1.0 if n[0] < 2 else 0.0) for n in net.nodes_}
    ran.clear()
    net(torch.randn(2, 3, 32, 32), gate_override=override)
    skipped = list(ran)
    ran.clear()
    net(torch.randn(2, 3, 32, 32), gate_override=override, skip_closed=False)
    assert len(skipped) < len(ran)
    for h in hooks:
        h.remove()
    _fails(capsys, ["train", "--out", str(tmp_path / "bad"), "--arch", "unet", "--skip-closed"], "dynamic net only")
