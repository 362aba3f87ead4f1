"""Thread choice: --threads and OMP_NUM_THREADS win; otherwise the cores are shared among the routespace
processes running (counted from /proc command lines) and the processes a command starts."""
from __future__ import annotations

import os

import pytest

from routespace.cli import threads


def _fake_proc(tmp_path, cmdlines):
    for pid, words in cmdlines.items():
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(w.encode() for w in words) + b"\0")
    (tmp_path / "self").mkdir()  # not a pid: ignored
    return tmp_path


def test_counts_other_routespace_processes_only(tmp_path):
    proc = _fake_proc(tmp_path, {
        101: ["/usr/bin/python", "/usr/local/bin/routespace", "train", "--out", "a"],
        102: ["python", "-m", "routespace.cli.main", "train"],
        103: ["routespace", "evaluate", "runs/a"],
        104: ["python", "benchmarks/bench_budget.py"],  # launches routespace, is not one
        105: ["vim", "routespace/README.md"],
        os.getpid(): ["python", "-m", "routespace.cli.main", "search"],  # this process itself
    })
    assert threads.other_routespace_processes(proc) == 3


def test_choice_order(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(threads, "other_routespace_processes", lambda proc=None: 1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads(None).threads == 4  # 8 cores, this and one other process
    assert threads.choose_threads(None, processes=4).threads == 1
    assert threads.choose_threads(3).threads == 3 and threads.choose_threads(3).source == "--threads"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    choice = threads.choose_threads(None)
    assert (choice.threads, choice.source) == (2, "OMP_NUM_THREADS") and "OMP_NUM_THREADS" in choice.line()
    monkeypatch.setattr(threads, "other_routespace_processes", lambda proc=None: 20)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.choose_threads(None).threads == 1  # never below one


def test_cli_sets_threads_and_says_so_first(tmp_path, capsys):
    import torch

    from routespace.cli.main import main

    before = torch.get_num_threads()
    try:
        rc = main(["train", "--out", str(tmp_path / "r"), "--arch", "fcn32s", "--steps", "1", "--batch-size", "2",
                   "--size", "32x32", "--threads", "1"])
        assert rc == 0 and torch.get_num_threads() == 1
        err = capsys.readouterr().err
        first = [l for l in err.splitlines() if l.strip()][0]
        assert first == "routespace: 1 torch thread(s) (set by --threads)"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_thread_count_is_one_line(bad, capsys):
    from routespace.cli.main import main

    assert main(["evaluate", "runs/none", "--threads", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads" in err[0] and "positive integer" in err[0]
