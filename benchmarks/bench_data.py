"""Speed of the embedded synthetic data set: CPU time per 64x64 image (target < 2 ms; not run by CI, where
machine speed must not decide pass or fail). Run: ``python benchmarks/bench_data.py``; last line: JSON."""
from __future__ import annotations

import json
import time


def main() -> None:
    from routespace.evaluators.synthetic import SyntheticSegmentation

    ds = SyntheticSegmentation(100, size=(64, 64), seed=0)
    best = float("inf")
    for _ in range(3):  # CPU time of this thread, best of 3: wall time swings with whatever else runs
        start = time.thread_time()
        for i in range(len(ds)):
            ds[i]
        best = min(best, (time.thread_time() - start) / len(ds))
    print(json.dumps({"cpu_ms_per_image_64x64": round(best * 1e3, 3), "target_ms": 2.0, "meets_target": best < 2e-3}))


if __name__ == "__main__":
    main()
