"""Torch/OpenMP threads for a command: from the cores this process may use and the other routespace
processes running on the machine, so that two runs started together share the cores instead of
oversubscribing them (two processes with one OpenMP thread per core each run ~30x slower on 2 cores).

``--threads N`` (every torch command) or ``OMP_NUM_THREADS`` override the choice."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    others: int  # other routespace processes seen running
    source: str  # 'auto', '--threads' or 'OMP_NUM_THREADS'

    def line(self) -> str:
        why = {"auto": f"{self.cores} core(s) available, {self.others} other routespace process(es) running",
               "--threads": "set by --threads", "OMP_NUM_THREADS": "set by OMP_NUM_THREADS"}[self.source]
        return f"routespace: {self.threads} torch thread(s) ({why})"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def other_routespace_processes(proc: Path = Path("/proc")) -> int:
    """Processes other than this one (and its parent) whose command line runs routespace."""
    me, parent = os.getpid(), os.getppid()
    count = 0
    try:
        entries = list(proc.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) in (me, parent):
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in cmd if w]
        if any(w.endswith("/routespace") or w == "routespace" or w == "routespace.cli.main" for w in words[:3]):
            count += 1
    return count


def choose_threads(requested: int | None, processes: int = 1) -> ThreadChoice:
    """``requested`` (from --threads) wins, then OMP_NUM_THREADS, else cores // (1 + others), divided among
    the ``processes`` this command starts itself."""
    cores = available_cores()
    if requested is not None:
        return ThreadChoice(max(1, requested), cores, 0, "--threads")
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), cores, 0, "OMP_NUM_THREADS")
    others = other_routespace_processes()
    return ThreadChoice(max(1, cores // ((1 + others) * max(1, processes))), cores, others, "auto")


def apply_threads(requested: int | None, processes: int = 1, announce: bool = True) -> ThreadChoice:
    """Set torch's intra-op threads for this process (and OMP_NUM_THREADS for children) and say so."""
    import sys

    import torch

    choice = choose_threads(requested, processes)
    torch.set_num_threads(choice.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(choice.threads))
    if announce:
        print(choice.line(), file=sys.stderr, flush=True)
    return choice


def announce(args) -> None:
    """Print the thread choice made for this command (its first line once the real work starts)."""
    import sys

    choice = getattr(args, "thread_choice", None)
    if choice is not None:
        print(choice.line(), file=sys.stderr, flush=True)
