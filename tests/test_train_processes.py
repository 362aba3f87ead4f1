"""Training across processes: SIGKILL + resume == uninterrupted, SIGTERM -> checkpoint + hint, torchrun."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import torch

from routespace.evaluators.checkpoint import load_checkpoint
from routespace.evaluators.train import fit
from test_train_support import PYTHON, NoiseSegmentation, micro_net, subprocess_env, worker_config, write_worker

_worker_config = worker_config


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 90.0, what: str = "") -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _run_worker(worker: Path, args: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, str(worker), json.dumps(args)], env=subprocess_env(), cwd=worker.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_between_checkpoints_then_resume_equals_uninterrupted(tmp_path):
    worker = write_worker(tmp_path)
    common = dict(steps=12, checkpoint_every=3, images=24)
    # slowed down (sleep in the data set, which does not change what is computed) so the kill lands mid-run
    victim_dir = tmp_path / "victim"
    victim = _run_worker(worker, dict(common, out=str(victim_dir), delay=0.03))
    # meanwhile, the uninterrupted reference in this process (same settings and thread count as the worker:
    # one, set for every test by conftest.py)
    ref_dir = tmp_path / "ref"
    fit(micro_net(0), NoiseSegmentation(24), _worker_config(common), out_dir=ref_dir, progress=False)
    ckpt = victim_dir / "checkpoints" / "step-00000006.pt"
    _wait_for(ckpt.exists, victim, what="the step-6 checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (victim_dir / "checkpoints" / "final.pt").exists(), "the run finished before the kill"
    assert json.loads((victim_dir / "manifest.json").read_text())["status"] == "running"
    resumed = fit(micro_net(5), NoiseSegmentation(24), _worker_config(common), out_dir=victim_dir, resume=True, progress=False)
    assert resumed.start_step >= 6
    a = torch.load(ref_dir / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(victim_dir / "checkpoints" / "final.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.allclose(a["model"][k].double(), b["model"][k].double(), rtol=0, atol=1e-6), k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    ha = json.loads((ref_dir / "history.json").read_text())["steps"]
    hb = json.loads((victim_dir / "history.json").read_text())["steps"]
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]  # the same batches, in the same order
    assert json.loads((victim_dir / "manifest.json").read_text())["status"] == "done"


def test_sigterm_writes_checkpoint_exits_nonzero_with_resume_hint(tmp_path):
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "routespace.cli.main", "train", "--out", str(run), "--arch", "fcn32s", "--steps", "400",
           "--batch-size", "2", "--size", "32x32", "--checkpoint-every", "1000", "--seed", "4"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running() -> bool:
        try:
            return json.loads((run / "manifest.json").read_text())["status"] == "running"
        except (OSError, ValueError):
            return False

    _wait_for(running, proc, what="the run to start")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    # past train's first line, the note of the torch threads it uses
    lines = [line for line in err.strip().splitlines() if not re.match(r"routespace: \d+ torch thread", line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("routespace: error: interrupted at step ")
    assert lines[0].endswith(f"resume with: routespace train --out {run} --resume")
    step = int(lines[0].split("interrupted at step ")[1].split(";")[0])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["step"] == step and step < 400
    state = load_checkpoint(run / "checkpoints" / f"step-{step:08d}.pt")
    assert state["step"] == step and state["sampler"]["position"] == step


def test_torchrun_two_processes_keep_parameters_equal(tmp_path):
    worker = write_worker(tmp_path)
    digest = tmp_path / "digest"
    args = dict(steps=3, batch_size=2, images=16, out=str(tmp_path / "ddp"), digest=str(digest), checkpoint_every=2)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), json.dumps(args)]
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d0, d1 = (Path(f"{digest}.{r}").read_text() for r in (0, 1))
    assert d0 == d1
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "done"
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "final.pt", weights_only=True)
    assert state["sampler"]["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["final.pt", "step-00000002.pt"]
