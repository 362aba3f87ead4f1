"""A checkpoint (or state-dict export) carrying code is refused, never executed.

Each hostile file pickles an object whose ``__reduce__`` would write a marker file when unpickled (via
``os.system``, ``builtins.exec`` or ``subprocess``). routespace loads every checkpoint with
``torch.load(weights_only=True)``, so it must refuse each one with a one-line error (CLI: exit 2) and
the marker must not appear.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from routespace.cli.main import main
from routespace.evaluators.checkpoint import FORMAT, VERSION, load_checkpoint
from routespace.spaces.errors import RoutespaceError


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _Popen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


PAYLOADS = {"os.system": _SystemCall, "exec": _Exec, "subprocess": _Popen}


def _checkpoint_like(payload: object) -> dict:
    """Everything a routespace checkpoint has, with the payload hidden where the weights go."""
    return {"format": FORMAT, "version": VERSION, "step": 2, "total_steps": 2, "model": {"stem.0.weight": payload},
            "optimizer": {}, "scheduler": {}, "rng": {}, "sampler": {}, "config": {}, "meta": {}}


def _write_hostile(path: Path, marker: Path, kind: str, container: str) -> None:
    obj = _checkpoint_like(PAYLOADS[kind](marker))
    if container == "zip":
        torch.save(obj, path)
    elif container == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, as a hand-made file would be
        path.write_bytes(pickle.dumps(obj, protocol=2))


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    # outside pytest each warning is one more stderr line
    return rc, err.getvalue() + "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)


def _assert_refused(rc: int, err: str) -> None:
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("routespace: error: "), err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished static run (2 steps at 32x32): manifest, history, checkpoints."""
    run = tmp_path_factory.mktemp("safety") / "run"
    rc, err = _cli(["train", "--out", str(run), "--arch", "fcn32s", "--steps", "2", "--batch-size", "2",
                    "--size", "32x32", "--checkpoint-every", "1", "--seed", "0"])
    assert rc == 0, err
    return run


@pytest.mark.parametrize("container", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_load_checkpoint_refuses_code(tmp_path, kind, container):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    _write_hostile(path, marker, kind, container)
    with pytest.raises(RoutespaceError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and "was refused" in msg and "could run code" in msg and "e.g. " in msg, msg
    blocked = {"os.system": "system", "exec": "exec", "subprocess": "Popen"}[kind]
    assert blocked in msg, msg
    assert not marker.exists()
    # the control: plain unpickling really would run the payload (so the test above can fail)
    if kind == "exec" and container == "pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_evaluate_refuses_a_hostile_final_checkpoint(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rc, err = _cli(["evaluate", str(run), "--latency-repeats", "0"])
    assert rc == 0, err  # the genuine checkpoint loads
    for kind in PAYLOADS:
        marker = tmp_path / f"marker-{kind}"
        _write_hostile(run / "checkpoints" / "final.pt", marker, kind, "zip")
        rc, err = _cli(["evaluate", str(run), "--latency-repeats", "0"])
        _assert_refused(rc, err)
        assert "final.pt" in err and not marker.exists()
        other = tmp_path / f"other-{kind}.pt"
        _write_hostile(other, marker, kind, "legacy")
        rc, err = _cli(["evaluate", str(run), "--checkpoint", str(other), "--latency-repeats", "0"])
        _assert_refused(rc, err)
        assert not marker.exists()


def test_train_resume_refuses_a_hostile_checkpoint(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "final.pt").unlink()  # so --resume picks the latest periodic checkpoint
    latest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    marker = tmp_path / "marker"
    _write_hostile(latest, marker, "os.system", "zip")
    rc, err = _cli(["train", "--out", str(run), "--resume"])
    _assert_refused(rc, err)
    assert latest.name in err and "was refused" in err
    assert not marker.exists()
    assert not (run / "checkpoints" / "final.pt").exists()


def test_cli_in_a_fresh_process_refuses_and_runs_nothing(trained_run, tmp_path):
    """The real entry point, as a user runs it: one stderr line, exit 2, no traceback, no marker."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "marker"
    _write_hostile(run / "checkpoints" / "final.pt", marker, "subprocess", "zip")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "routespace.cli.main", "evaluate", str(run)], capture_output=True,
                          text=True, env=env, timeout=120)
    _assert_refused(proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_export_refuses_a_hostile_state_dict(tmp_path):
    """``routespace export FILE`` reads state-dict exports (torch zip files) the same safe way."""
    marker = tmp_path / "marker"
    path = tmp_path / "net.pt"
    torch.save({"format": "routespace.state_dict", "version": 1, "spec": "{}", "state_dict": {"w": _Exec(marker)}}, path)
    rc, err = _cli(["export", str(path), "--format", "json", "-o", str(tmp_path / "out.json")])
    _assert_refused(rc, err)
    assert not marker.exists() and not (tmp_path / "out.json").exists()
