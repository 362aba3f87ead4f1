"""Honest timing: the things being compared run round-robin in one process (every repeat runs each of
them once, in the same order), after a warm-up, so a change of load on the machine shifts all of them
alike; results are medians with their spread."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def _sync(device: Any) -> None:
    if device is not None and getattr(device, "type", device) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def interleaved_times_ms(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                         device: Any = None) -> dict[str, list[float]]:
    """Wall-clock milliseconds of each ``fns[name]()``, measured round-robin: every repeat runs every
    function once, in the same order (``device``: a CUDA device is synchronised around each call)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved_latency_ms(fns: dict[str, Callable[[Any], Any]], images: list, repeats: int, device: Any = None,
                           warmup: int = 2) -> dict[str, list[float]]:
    """Per-image milliseconds of each ``fns[name](image)`` (batch 1), interleaved: for every repeat and
    every image, each function runs once on it before the next image."""
    calls = {}
    for i, x in enumerate(images):
        for name, fn in fns.items():
            calls[(name, i)] = (lambda f=fn, im=x: f(im))
    raw = interleaved_times_ms(calls, repeats, warmup, device)
    out: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):  # back into per-name lists, in the order measured
        for (name, _), ts in raw.items():
            out[name].append(ts[r])
    return out


def spread(samples: list[float]) -> dict:
    """Median, quartiles, min and max of timing samples."""
    q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    return {"median": statistics.median(samples), "q1": q[0], "q3": q[2], "min": min(samples), "max": max(samples),
            "n": len(samples)}
