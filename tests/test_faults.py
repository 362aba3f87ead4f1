"""SIGKILL at a random point, then resume: every long-running command ends as if never interrupted, and
no file in its folder is ever truncated or half-written.

For `routespace train`, `routespace search` and `routespace compare` (small settings, one thread per
process): an uninterrupted reference run and a victim run start side by side; the victim is killed with
SIGKILL at a seeded random moment after its first checkpoint / completed trial / finished row, then the
same command is run again (with ``--resume`` where the command takes it). While the victim runs, a watcher
thread re-reads every file in its folder whenever it changes; after the kill and after the rerun every
file is read again: JSON parses, checkpoints load with ``torch.load(weights_only=True)``, PNGs decode,
CSVs parse, the SQLite study passes ``PRAGMA integrity_check``. Temporary files of the atomic writes
(``.NAME.XXXX.tmp``) are skipped: they are never read by routespace.

``ROUTESPACE_FAULT_SEED=N`` changes the kill moments.
"""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

SEED = int(os.environ.get("ROUTESPACE_FAULT_SEED", "0"))
CLI = [sys.executable, "-m", "routespace.cli.main"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-3000:]}"
    return out


def _run(args: list[str], timeout: float = 240) -> str:
    return _finish(_start(args), timeout)


# --- file integrity -----------------------------------------------------------------------------------------
def _is_temp(path: Path) -> bool:
    return path.name.endswith(".tmp") or path.name.endswith(("-journal", "-wal", "-shm"))


def check_file(path: Path) -> str | None:
    """None if ``path`` is complete and readable for its kind, else what is wrong with it."""
    try:
        suffix = path.suffix
        if suffix == ".json":
            json.loads(path.read_bytes())
        elif suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as img:
                img.load()
        elif suffix == ".csv":
            rows = list(csv.reader(path.read_text().splitlines()))
            assert rows and all(len(r) == len(rows[0]) for r in rows), "ragged rows"
        elif suffix == ".db":
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                con.close()
        elif suffix in (".md", ".txt"):
            text = path.read_text()
            assert text.endswith("\n"), "no final newline"
        else:
            assert path.stat().st_size > 0, "empty"
    except FileNotFoundError:  # replaced or pruned between listing and reading: nothing was half-written
        return None
    except Exception as exc:  # noqa: BLE001 - every failure to read is the finding
        return f"{path}: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def check_tree(folder: Path) -> list[str]:
    problems = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not _is_temp(path):
            problem = check_file(path)
            if problem:
                problems.append(problem)
    return problems


class Watcher(threading.Thread):
    """Re-checks every file of ``folder`` each time it changes (by inode, size, mtime), until stopped."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.stop, self.problems, self.checked = folder, threading.Event(), [], 0
        self._seen: dict[Path, tuple] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            for path in list(self.folder.rglob("*")) if self.folder.exists() else []:
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                if not path.is_file() or _is_temp(path) or self._seen.get(path) == key:
                    continue
                self._seen[path] = key
                problem = check_file(path)
                self.checked += 1
                if problem:
                    self.problems.append(problem)
            time.sleep(0.05)

    def __enter__(self) -> "Watcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(timeout=30)


def descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_at_random_point(proc: subprocess.Popen, ready: Callable[[], bool], rng: random.Random, max_delay: float,
                         what: str, grace: float = 10.0) -> float:
    """Wait for ``ready()``, then a seeded random delay, then SIGKILL; returns the delay used. Processes the
    command started (e.g. worker pools) must end within seconds too: left running, they would go on
    writing into the folder that the rerun resumes."""
    t0 = time.monotonic()
    while True:
        try:
            if ready():
                break
        except (OSError, ValueError, sqlite3.Error):
            pass  # not there yet
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() - t0 < 180, f"timed out waiting for {what}"
        time.sleep(0.02)
    delay = rng.uniform(0.0, max_delay)
    time.sleep(delay)
    assert proc.poll() is None, f"the run finished within {delay:.2f} s of {what}: nothing was interrupted"
    helpers = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # not communicate(): helpers holding its stdout would keep that waiting
    t0 = time.monotonic()
    while [p for p in helpers if _alive(p)] and time.monotonic() - t0 < grace:
        time.sleep(0.1)
    left = [p for p in helpers if _alive(p)]
    for pid in left:  # do not leave them running after a failure
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} process(es) started by the killed run kept running for {grace:g} s"
    proc.communicate()
    return delay


def kill_and_rerun(tmp_path: Path, command: list[str], ready: Callable[[Path], bool], what: str, max_delay: float,
                   salt: int, rerun_flags: tuple[str, ...] = (), after_kill: Callable[[Path], None] | None = None,
                   reference_flags: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Run ``command --out reference`` (plus ``reference_flags``) uninterrupted beside ``command --out victim``;
    SIGKILL the victim at a random point after ``ready(victim)``, check its files, rerun it (plus
    ``rerun_flags``) to the end. Files are watched throughout. Returns (reference folder, victim folder)."""
    rng = random.Random(SEED * 3 + salt)
    ref_out, out = tmp_path / "reference", tmp_path / "victim"
    ref = _start([*command, "--out", ref_out, *reference_flags])
    with Watcher(out) as watcher:
        victim = _start([*command, "--out", out])
        kill_at_random_point(victim, lambda: ready(out), rng, max_delay, what)
        if after_kill is not None:
            after_kill(out)
        assert check_tree(out) == []
        _run([*command, "--out", out, *rerun_flags])
    _finish(ref)
    assert watcher.problems == [] and watcher.checked > 0
    assert check_tree(out) == []
    return ref_out, out


# --- train --------------------------------------------------------------------------------------------------
def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_killed_then_resumed_equals_uninterrupted(tmp_path):
    def unfinished(run: Path) -> None:
        assert json.loads((run / "manifest.json").read_text())["status"] == "running"
        assert not (run / "checkpoints" / "final.pt").exists()

    command = ["train", "--steps", "12", "--batch-size", "2", "--size", "32x32", "--checkpoint-every", "2", "--seed", "0"]
    ref_dir, run = kill_and_rerun(tmp_path, command, lambda run: (run / "checkpoints" / "step-00000002.pt").exists(),
                                  "the first checkpoint", 1.0, salt=1, rerun_flags=("--resume",), after_kill=unfinished)
    a, b = _state(ref_dir / "checkpoints" / "final.pt"), _state(run / "checkpoints" / "final.pt")
    assert a["step"] == b["step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.allclose(a["model"][key].double(), b["model"][key].double(), rtol=0, atol=1e-6), key
    losses = [[h["loss"] for h in json.loads((d / "history.json").read_text())["steps"]] for d in (ref_dir, run)]
    assert losses[0] == losses[1] and len(losses[0]) == 12
    assert json.loads((run / "manifest.json").read_text())["status"] == "done"


# --- search -------------------------------------------------------------------------------------------------
SEARCH = ["search", "--preset", "tiny", "--space", "path", "--strategy", "random", "--trials", "6", "--evaluator",
          "synthetic", "--sim-steps", "6", "--sim-step-seconds", "0.1", "--heartbeat", "1", "--grace", "2", "--seed", "0",
          "--study", "faults", "--no-progress"]


def _complete_count(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    finally:
        con.close()


def _trials(out: Path) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials(deepcopy=False)


def test_search_killed_then_resumed_completes_the_same_trials_without_duplicates(tmp_path):
    ref_out, out = kill_and_rerun(tmp_path, SEARCH, lambda out: _complete_count(out / "study.db") >= 1,
                                  "the first completed trial", 1.5, salt=2, rerun_flags=("--resume",))
    done = {name: [t for t in _trials(o) if t.state.name == "COMPLETE"] for name, o in (("ref", ref_out), ("run", out))}
    assert len(done["run"]) == len(done["ref"]) == 6
    for trials in done.values():  # no architecture evaluated twice (a repeat reuses the earlier result)
        keys = [t.user_attrs["spec_key"] for t in trials if "duplicate_of" not in t.user_attrs]
        assert len(keys) == len(set(keys))
    # a trial the kill cut short is failed, not counted, and not left running
    assert not [t for t in _trials(out) if t.state.name == "RUNNING"]
    # the same architecture gets the same value, interrupted or not
    ref_values = {t.user_attrs["spec_key"]: t.values for t in done["ref"]}
    for t in done["run"]:
        if t.user_attrs["spec_key"] in ref_values:
            assert t.values == ref_values[t.user_attrs["spec_key"]]
    summaries = [json.loads((o / "summary.json").read_text()) for o in (ref_out, out)]
    assert summaries[0]["counts"]["complete"] == summaries[1]["counts"]["complete"] == 6
    assert summaries[1]["counts"]["running"] == 0


# --- compare ------------------------------------------------------------------------------------------------
# batch 2 and no latency loop: the rows' training and files are what the kill interrupts (latency is timed once,
# after every row, and is not compared); the victim trains its rows in 2 worker processes (the default), which
# the kill must end too
COMPARE = ["compare", "--steps", "4", "--dynamic", "C", "--classics", "fcn32s", "--val-images", "8", "--batch-size", "2",
           "--latency-repeats", "0", "--quiet"]


def test_compare_killed_then_rerun_gives_the_same_rows(tmp_path):
    def unfinished(out: Path) -> None:
        assert not (out / "comparison.json").exists()

    ref_out, out = kill_and_rerun(tmp_path, COMPARE, lambda out: any((out / "rows").glob("*.json")),
                                  "the first finished row", 1.5, salt=3, after_kill=unfinished,
                                  # the table is the same for any number of workers: the uninterrupted reference
                                  # trains its rows in-process, leaving the CPUs to the victim's workers
                                  reference_flags=("--workers", "1"))
    a, b = (json.loads((o / "comparison.json").read_text()) for o in (ref_out, out))
    assert [r["name"] for r in a["rows"]] == [r["name"] for r in b["rows"]] == ["Dynamic-C", "Common-C", "fcn32s", "random-path"]
    for ra, rb in zip(a["per_seed"], b["per_seed"]):
        assert (ra["name"], ra["seed"]) == (rb["name"], rb["seed"])
        assert abs(ra["result"]["miou"] - rb["result"]["miou"]) <= 1e-6, ra["name"]
        gf = "gflops_mean" if ra["kind"] == "dynamic" else "gflops"
        assert abs(ra["result"][gf] - rb["result"][gf]) <= 1e-9, ra["name"]
    assert (ref_out / "specs" / "common-C-s0.json").read_text() == (out / "specs" / "common-C-s0.json").read_text()
    assert json.loads((out / "comparison-manifest.json").read_text())["status"] == "done"


def test_the_integrity_check_catches_half_written_files(tmp_path):
    """The checks above can fail: each kind of file, cut in half, is reported (and whole, is not)."""
    import sqlite3 as sq

    from PIL import Image

    torch.save({"w": torch.randn(64, 64)}, tmp_path / "a.pt")
    (tmp_path / "b.json").write_text(json.dumps({"rows": list(range(100))}))
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "c.png")
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4\n")
    con = sq.connect(tmp_path / "e.db")
    con.execute("CREATE TABLE t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5000)])
    con.commit()
    con.close()
    (tmp_path / ".b.json.1234.tmp").write_text("{")  # an atomic write's temp file: skipped
    assert check_tree(tmp_path) == []
    for name in ("a.pt", "b.json", "c.png", "d.csv", "e.db"):
        path = tmp_path / name
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2] if name != "d.csv" else b"a,b\n1,2\n3")
        assert check_file(path) is not None, name
        path.write_bytes(whole)


def test_compare_workers_end_with_the_killed_command(tmp_path):
    """Row workers stop within seconds of a SIGKILL of `routespace compare` (they used to train on for the
    rest of their row, ~1 min here, and write into the folder the user was about to resume)."""
    out = tmp_path / "out"
    proc = _start(["compare", "--steps", "400", "--dynamic", "C", "--classics", "fcn32s", "--val-images", "8", "--quiet",
                   "--workers", "2", "--out", out])
    kill_at_random_point(proc, lambda: any((out / "runs").glob("*/checkpoints")), random.Random(SEED), 0.0,
                         "a row in training", grace=3.0)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    time.sleep(2.0)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before, "files changed after the kill"
    assert not list((out / "rows").glob("*.json"))
    assert check_tree(out) == []
