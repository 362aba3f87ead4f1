"""Two `routespace train` runs started together vs one alone (issue 14: each must take at most 3x its solo
wall time; with every process starting one OpenMP thread per core, two runs on 2 cores took ~30x).

Each repeat runs, in this order, one training alone and then two started at the same moment, all with
the automatic thread choice (no --threads, no OMP_NUM_THREADS): the first line each prints says how many
threads it took and why. Solo and pair alternate, so a change of background load shifts both alike; the
figure is the median over repeats of (slower of the pair) / (solo). Not run by CI.

Run: ``python benchmarks/bench_concurrent.py [--repeats 3] [--steps 80] [--out runs/bench_concurrent]``;
last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path


def _cmd(out: Path, steps: int) -> list[str]:
    return [shutil.which("routespace") or "routespace", "train", "--preset", "tiny", "--setting", "A", "--steps",
            str(steps), "--out", str(out), "--no-tensorboard"]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # the automatic choice is what is measured
    return env


def _run_together(outs: list[Path], steps: int) -> tuple[list[float], list[str]]:
    for o in outs:
        shutil.rmtree(o, ignore_errors=True)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(_cmd(o, steps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
             for o in outs]
    ends, firsts = [], []
    for p in procs:
        _, err = p.communicate()
        ends.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"a training failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")
        firsts.append(next((line for line in err.splitlines() if "torch thread" in line), ""))
    return ends, firsts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=80, help="training steps of each run (tiny dynamic net, setting A)")
    p.add_argument("--out", default="runs/bench_concurrent")
    a = p.parse_args()
    out = Path(a.out)
    solo, pair, lines = [], [], {}
    for r in range(a.repeats):
        (t,), (line,) = _run_together([out / "solo"], a.steps)
        solo.append(t)
        lines["solo"] = line
        ts, ls = _run_together([out / "a", out / "b"], a.steps)
        pair.append(max(ts))
        lines["pair"] = ls
        print(f"repeat {r + 1}: solo {t:.1f} s, pair {ts[0]:.1f} / {ts[1]:.1f} s", flush=True)
    ratios = [p_ / s for p_, s in zip(pair, solo)]
    print(json.dumps({"steps": a.steps, "solo_s": [round(x, 2) for x in solo], "pair_slower_s": [round(x, 2) for x in pair],
                      "pair_over_solo_median": round(statistics.median(ratios), 3), "target_max": 3.0,
                      "thread_lines": lines, "cores": len(os.sched_getaffinity(0))}))


if __name__ == "__main__":
    main()
