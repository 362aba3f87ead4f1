"""Wall time of `routespace flops --preset paper --all-open --size 1024x2048` (a pure computation: it must not
import torch), interleaved with `python -c "import torch"` for scale (not run by CI).

Run: ``python benchmarks/bench_cli_startup.py [--repeats 5]``; last line: one JSON object (medians, seconds).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    flops = [shutil.which("routespace") or "routespace", "flops", "--preset", "paper", "--all-open", "--size", "1024x2048"]
    torch_only = [sys.executable, "-c", "import torch"]
    times: dict[str, list[float]] = {"flops": [], "import_torch": []}
    _time(flops), _time(torch_only)  # warm the file cache
    for _ in range(a.repeats):  # interleaved, so load shifts both alike
        times["flops"].append(_time(flops))
        times["import_torch"].append(_time(torch_only))
    print(json.dumps({k + "_median_s": round(statistics.median(v), 3) for k, v in times.items()}
                     | {k + "_all_s": [round(x, 3) for x in v] for k, v in times.items()} | {"repeats": a.repeats}))


if __name__ == "__main__":
    main()
