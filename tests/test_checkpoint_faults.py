"""Checkpoint faults of a training run: the disk filling up during a checkpoint write (a write hook, and a
real small tmpfs where this machine lets the test mount one) leaves the checkpoints written before intact
and ends with one line, and the run resumes to the result of an uninterrupted one; a damaged (truncated)
newest checkpoint is passed over with a note for the newest intact one."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from bad_inputs import _pickle_with_code, _truncate
from foundation_helpers import one_thread

from routespace.cli.main import main
from routespace.evaluators import checkpoint
from routespace.evaluators.checkpoint import UnsafeCheckpointError, load_checkpoint, load_newest_intact
from routespace.spaces.errors import RoutespaceError

TRAIN = ["train", "--arch", "fcn32s", "--steps", "4", "--batch-size", "2", "--size", "32x32", "--checkpoint-every", "1",
         "--seed", "0"]


def _train(out: Path, *extra: str) -> tuple[int, str]:
    """``routespace train`` in this process: (exit code, stderr without train's first line, the note of the
    torch threads it uses)."""
    err = io.StringIO()
    with one_thread(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main([*TRAIN, "--out", str(out), *extra])
    lines = err.getvalue().splitlines(keepends=True)
    return rc, "".join(line for line in lines if not re.match(r"routespace: \d+ torch thread", line))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same training, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert _train(out) == (0, "")
    return out


def _steps(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step-*.pt"))


def _assert_same_result(run: Path, reference: Path) -> None:
    a, b = (load_checkpoint(r / "checkpoints" / "final.pt") for r in (reference, run))
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.allclose(a["model"][key].double(), b["model"][key].double(), rtol=0, atol=1e-6), key
    losses = [[h["loss"] for h in json.loads((r / "history.json").read_text())["steps"]] for r in (reference, run)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def _check_disk_full(run: Path, rc: int, err: str, before: dict[str, bytes]) -> None:
    """One line naming the checkpoint that could not be written; the earlier ones byte for byte as they were;
    no temporary file left."""
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("routespace: error: cannot write checkpoint") and "step-00000003.pt" in lines[0]
    assert "No space left on device" in lines[0] and "intact" in lines[0]
    assert {str(p): p.read_bytes() for p in _steps(run)} == before
    assert [load_checkpoint(p)["step"] for p in _steps(run)] == [1, 2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001.pt", "step-00000002.pt"]


def test_disk_full_during_a_checkpoint_write_keeps_the_earlier_ones(tmp_path, reference, monkeypatch):
    """A write hook: the third checkpoint write gets ENOSPC after writing part of the file."""
    run, real_save, before = tmp_path / "run", torch.save, {}

    def save(obj, f, *args, **kwargs):
        if "step-00000003.pt" in os.path.basename(str(getattr(f, "name", f))):
            before.update({str(p): p.read_bytes() for p in _steps(run)})
            f.write(b"PK\x03\x04" + b"\0" * 65536)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    rc, err = _train(run)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert before, "the hook never fired"
    _check_disk_full(run, rc, err, before)
    assert _train(run, "--resume")[0] == 0
    _assert_same_result(run, reference)


def _mount_tmpfs(folder: Path, size: int) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return r.returncode == 0


def test_disk_full_on_a_small_tmpfs(tmp_path, reference):
    """A real full disk: the run folder on a tmpfs with room for two checkpoints but not three."""
    size = _steps(reference)[0].stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, int(2.5 * size) // 4096 * 4096):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        run = disk / "run"
        rc, err = _train(run)
        before = {str(p): p.read_bytes() for p in _steps(run)}
        _check_disk_full(run, rc, err, before)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True, capture_output=True)
        assert _train(run, "--resume")[0] == 0
        _assert_same_result(run, reference)
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)  # even if a file is still open


def test_newest_intact_checkpoint_passes_over_a_truncated_one(tmp_path, reference):
    paths = []
    for p in _steps(reference):
        shutil.copy(p, tmp_path / p.name)
        paths.append(tmp_path / p.name)
    notes: list[str] = []
    assert load_newest_intact(paths, notes.append)[0] == paths[-1] and notes == []  # all whole: the newest
    _truncate(paths[-1])
    path, state = load_newest_intact(paths, notes.append)
    assert path == paths[-2] and state["step"] == 2
    assert len(notes) == 1 and str(paths[-1]) in notes[0] and f"resuming from {paths[-2]} (step 2)" in notes[0]
    _pickle_with_code(paths[-1])  # a file that pickles code is refused, never passed over
    with pytest.raises(UnsafeCheckpointError):
        load_newest_intact(paths, notes.append)
    for p in paths:
        _truncate(p)
    with pytest.raises(RoutespaceError, match=f"checkpoint {paths[-1]} is corrupt"):
        load_newest_intact(paths, notes.append)
    assert load_newest_intact([]) is None


def test_train_resume_passes_over_a_truncated_last_checkpoint(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "checkpoints" / "final.pt").unlink()  # an unfinished run whose newest checkpoint was cut in half
    _truncate(_steps(run)[-1])
    rc, err = _train(run, "--resume")
    assert rc == 0 and "note: checkpoint" in err and "resuming from" in err, err
    _assert_same_result(run, reference)
