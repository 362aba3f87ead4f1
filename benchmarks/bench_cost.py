"""Analytic cost vs fvcore tracing: architectures per second, as a ratio (not run by CI).

Both sides score the same seeded random architectures of the ``paper`` space (L=16, C=64):

- analytic: ``architecture_cost`` on fresh Architecture objects (the per-part caches are cleared
  first, so filling them is included), at 1024x2048 (the headline) and at the fvcore size;
- fvcore: ``build`` + ``FlopCountAnalysis(...).total()`` at a small input (default 64x128), because
  tracing a paper-size net at 1024x2048 on a CPU takes minutes per architecture. The fvcore figure is
  per-architecture time, so a small input flatters fvcore: the ratio is a lower bound.

Run: ``python benchmarks/bench_cost.py [--n-analytic 3000] [--n-fvcore 8] [--threads 1]``.
The last line printed is one JSON object with the key figures.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time


def _clear_caches() -> None:
    from routespace.evaluators import cost

    for fn in (cost.cell_cost, cost.edge_cost, cost.gate_cost, cost.stem_cost, cost.decoder_cost):
        fn.cache_clear()


def _archs(space, count: int, seed: int) -> list:
    from routespace.spaces.random_arch import random_architecture

    rng = random.Random(seed)
    return [random_architecture(space, rng, kind="mixed", p=rng.uniform(0.1, 0.6)) for _ in range(count)]


def time_analytic(archs: list, size: tuple[int, int]) -> tuple[float, list[int]]:
    """Seconds to cost every architecture (fresh objects, empty caches), and the FLOPs."""
    from routespace.evaluators.cost import architecture_cost
    from routespace.spaces.architecture import Architecture

    fresh = [Architecture(a.space, a.edges, a.cells) for a in archs]  # no cached properties carried over
    _clear_caches()
    start = time.perf_counter()
    flops = [architecture_cost(a, size, "fvcore").flops for a in fresh]
    return time.perf_counter() - start, flops


def time_fvcore(archs: list, size: tuple[int, int]) -> tuple[float, float, list[int]]:
    """(build seconds, trace seconds, FLOPs) of fvcore on built modules in eval mode."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    from routespace.spaces.builder import build

    x = torch.zeros(1, 3, *size)
    build_s = trace_s = 0.0
    flops = []
    for arch in archs:
        t0 = time.perf_counter()
        model = build(arch).eval()
        t1 = time.perf_counter()
        with torch.no_grad():
            fa = FlopCountAnalysis(model, x)
            fa.unsupported_ops_warnings(False)
            fa.uncalled_modules_warnings(False)
            fa.tracer_warnings("none")
            flops.append(int(fa.total()))
        t2 = time.perf_counter()
        build_s += t1 - t0
        trace_s += t2 - t1
    return build_s, trace_s, flops


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-analytic", type=int, default=3000)
    parser.add_argument("--n-fvcore", type=int, default=8)
    parser.add_argument("--fvcore-size", default="64x128")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from routespace.spaces.space import parse_size, preset

    torch.set_num_threads(args.threads)
    space = preset("paper")
    small = parse_size(args.fvcore_size)
    archs = _archs(space, args.n_analytic, args.seed)
    fv_archs = archs[: args.n_fvcore]

    # warm-up outside the timings: imports and torch's first-call costs
    time_analytic(archs[:5], space.input_size)
    time_fvcore(archs[:1], small)

    a_big_s, _ = time_analytic(archs, space.input_size)
    a_small_s, a_small_flops = time_analytic(archs, small)
    f_build_s, f_trace_s, f_flops = time_fvcore(fv_archs, small)
    exact = a_small_flops[: len(fv_archs)] == f_flops

    analytic_big_aps = len(archs) / a_big_s
    analytic_small_aps = len(archs) / a_small_s
    fvcore_trace_aps = len(fv_archs) / f_trace_s
    fvcore_total_aps = len(fv_archs) / (f_build_s + f_trace_s)
    figures = {
        "space": "paper (L=16, C=64, sepconv)",
        "archs_analytic": len(archs),
        "archs_fvcore": len(fv_archs),
        "analytic_size": "x".join(map(str, space.input_size)),
        "fvcore_size": args.fvcore_size,
        "threads": args.threads,
        "analytic_archs_per_s": round(analytic_big_aps, 1),
        "analytic_archs_per_s_at_fvcore_size": round(analytic_small_aps, 1),
        "fvcore_trace_archs_per_s": round(fvcore_trace_aps, 3),
        "fvcore_build_plus_trace_archs_per_s": round(fvcore_total_aps, 3),
        "ratio_vs_trace": round(analytic_big_aps / fvcore_trace_aps, 1),
        "ratio_vs_build_plus_trace": round(analytic_big_aps / fvcore_total_aps, 1),
        "ratio_same_size_vs_trace": round(analytic_small_aps / fvcore_trace_aps, 1),
        "target_ratio": 1000,
        "flops_equal_to_fvcore": exact,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"analytic: {analytic_big_aps:,.0f} archs/s at {figures['analytic_size']}, "
          f"{analytic_small_aps:,.0f} archs/s at {args.fvcore_size} ({len(archs)} fresh archs, caches cleared)")
    print(f"fvcore:   {fvcore_trace_aps:.2f} archs/s tracing, {fvcore_total_aps:.2f} archs/s build+trace "
          f"at {args.fvcore_size} ({len(fv_archs)} archs, {args.threads} thread(s))")
    print(f"ratio:    {figures['ratio_vs_trace']:,.0f}x vs trace, {figures['ratio_vs_build_plus_trace']:,.0f}x "
          f"vs build+trace, {figures['ratio_same_size_vs_trace']:,.0f}x vs trace with both at {args.fvcore_size} "
          f"(target >= 1000x); analytic == fvcore FLOPs on these archs: {exact}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
