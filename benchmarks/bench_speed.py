"""Real speed of trained dynamic nets on a CPU, timed honestly (issue 14; not run by CI).

For each trained dynamic run (``routespace train``), at batch 1, in ONE interleaved loop (round-robin over
the nets, warm-up first, median and interquartile range of the repeats, one torch thread):

- the dynamic net with its skipping executor (its own learned gates),
- the same net with every path executed (dense forward, all gates forced open: the all-open cost),
- its Common net (``common_architecture`` of its routes on 64 validation images), built static,
- the static net (a classic or a random path) whose GFLOPs are closest to the dynamic net's realised mean.

Reported: latency ratios dynamic / Common and dynamic / equal-GFLOPs static (target <= 1.3), time saving /
FLOPs saving of dynamic vs all-open (target >= 0.8), batch-8 throughput of skipping (gathering the images
that decide differently, and with ``group_routes``) vs dense (learned gates),
a training step with the learned gates vs all gates open (target <= 0.6), and a torch.profiler summary of
the skipping executor (top ops, and the share of wall time outside aten ops: Python and dispatch overhead).

The training step (batch 8 at the first size, cross-entropy + budget term, forward + backward) is timed
interleaved in one loop for: every gate open; the learned gates (given as a gate override, so no gate head
runs in any arm) with the dense forward; the same with ``skip_closed`` (work closed for every image of the
batch left out). ``train_step_budget_over_all_open`` is the skip_closed one (dense: ``..._dense``). Two
more arms run the net's own gate heads in training mode (no override, as a real step does; their routes
are the train-mode ones), dense and skip_closed: ``train_step_ms.own_gates_*``.

``--before REV`` also times (in the same interleaved loops) and profiles the skipping executor of
``spaces/supernet.py`` as it was at git revision REV, bound to the same net: before/after under one load.

Run: ``python benchmarks/bench_speed.py RUN [RUN ...] [--sizes 64x64 256x512] [--repeats 30] [--before REV]``.
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def _interleaved_ms(fns: dict, xs: list, repeats: int, warmup: int = 3) -> dict:
    import torch

    with torch.inference_mode():
        for fn in fns.values():
            for x in xs[:warmup]:
                fn(x)
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():  # round-robin: a load spike shifts every net alike
                t0 = time.perf_counter()
                for x in xs:
                    fn(x)
                times[k].append((time.perf_counter() - t0) * 1e3 / len(xs))
    out = {}
    for k, v in times.items():
        q = statistics.quantiles(v, n=4)
        out[k] = {"median_ms": round(statistics.median(v), 3), "iqr_ms": [round(q[0], 3), round(q[2], 3)]}
    return out


def _profile(fn, xs, latency_ms: float) -> dict:
    """Top aten ops of ``fn`` over ``xs`` (self CPU ms per image), and the share of the unprofiled median
    latency spent outside aten ops (Python decisions, dispatch, bookkeeping)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for x in xs[:2]:
            fn(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for x in xs:
                fn(x)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    aten_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / len(xs)
    return {"top_ops_ms_per_image": [[e.key, round(e.self_cpu_time_total / 1e3 / len(xs), 3), e.count // len(xs)] for e in top],
            "aten_self_ms_per_image": round(aten_ms, 3), "latency_ms": latency_ms,
            "outside_aten_share": round(max(0.0, 1 - aten_ms / latency_ms), 3)}


def _train_steps_ms(model, x, y, arms: dict, repeats: int, warmup: int = 2) -> dict:
    """Median ms of one training step (forward + backward) per arm {name: (gate override, skip_closed)},
    the arms interleaved round-robin. The weights are not updated (no optimizer step), so every repeat
    times the same routes; BN running statistics are restored afterwards."""
    import torch.nn.functional as F

    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    times = {k: [] for k in arms}
    for i in range(repeats + warmup):
        for name, (override, skip) in arms.items():
            t0 = time.perf_counter()
            out = model(x, gate_override=override, skip_closed=skip)
            loss = F.cross_entropy(out.logits, y) + out.budget_body_flops.mean() * 1e-9
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    model.eval()
    model.load_state_dict(state)
    return {k: statistics.median(v) for k, v in times.items()}


def _load_before(rev: str):
    """The module ``spaces/supernet.py`` at git revision ``rev``, imported inside the installed package
    (its relative imports resolve), for timing its ``forward_skipping`` on today's net."""
    import importlib.util
    import pathlib
    import subprocess
    import sys
    import tempfile

    import routespace.spaces as pkg

    root = pathlib.Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "show", f"{rev}:spaces/supernet.py"], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    path = pathlib.Path(tempfile.mkdtemp()) / "supernet_before.py"
    path.write_text(text)
    name = f"{pkg.__name__}._supernet_before"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = pkg.__name__
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def analyse(run: str, sizes: list[tuple[int, int]], repeats: int, before=None) -> dict:
    import torch

    from routespace.evaluators.cost import architecture_cost, space_cost
    from routespace.evaluators.evaluate import load_run_model
    from routespace.evaluators.synthetic import embedded_default
    from routespace.search.dynamic.common import common_architecture, edge_frequencies
    from routespace.spaces.architecture import Architecture
    from routespace.spaces.builder import build
    from routespace.spaces.classics import CLASSICS
    from routespace.spaces.random_arch import random_path

    model, manifest, _ = load_run_model(run)
    model.eval()
    val = embedded_default("val")
    common = common_architecture(edge_frequencies(model, val, max_images=64), name="common")
    result = {"run": run, "common_edges": len(common.edges)}
    for size in sizes:
        xs = [torch.nn.functional.interpolate(val[i][0][None], size=size, mode="bilinear", align_corners=False)
              for i in range(8)]
        with torch.inference_mode():
            skip = [model.forward_skipping(x) for x in xs]
        dyn_gflops = statistics.fmean(float(o.realised_flops[0]) for o in skip) / 1e9
        all_open = space_cost(model.space, size, gates=True, gate_resolution=model.gate_resolution).gflops
        candidates = [CLASSICS[c](model.space) for c in CLASSICS] + [
            Architecture.from_path(model.space, random_path(model.space, s), name=f"random-path-{s}") for s in range(40)]
        equal = min(candidates, key=lambda a: abs(architecture_cost(a, size).gflops - dyn_gflops))
        ones = {n: torch.ones(1, len(k)) for n, k in model.out_keys.items()}
        common_net, equal_net = build(common).eval(), build(equal).eval()
        fns = {"dynamic_skipping": model.forward_skipping, "all_open_dense": lambda x: model(x, gate_override=ones),
               "common": common_net, "equal_gflops_static": equal_net}
        old = None
        if before is not None:
            old = torch.no_grad()(lambda x: before.DynamicNet.forward_skipping(model, x))
            with torch.inference_mode():
                for x in xs:  # the same logits and FLOPs as today's executor
                    a, b = old(x), model.forward_skipping(x)
                    assert torch.allclose(a.logits, b.logits, rtol=0, atol=1e-5 * float(a.logits.abs().max()))
                    assert torch.equal(a.realised_flops, b.realised_flops)
            fns["dynamic_skipping_before"] = old
        t = _interleaved_ms(fns, xs, repeats)
        d, o = t["dynamic_skipping"]["median_ms"], t["all_open_dense"]["median_ms"]
        flops_saving, time_saving = 1 - dyn_gflops / all_open, 1 - d / o
        xb = torch.cat(xs)
        batch_fns = {"skipping": model.forward_skipping, "dense": model.forward,
                     "skipping_grouped": lambda x: model.forward_skipping(x, group_routes=True)}
        if old is not None:
            batch_fns["skipping_before"] = old
        tb = _interleaved_ms(batch_fns, [xb], max(5, repeats // 3))
        result["x".join(map(str, size))] = {
            "latency": t, "dynamic_gflops": round(dyn_gflops, 6), "all_open_gflops": round(all_open, 6),
            "common_gflops": round(architecture_cost(common, size).gflops, 6),
            "equal_static": equal.name, "equal_static_gflops": round(architecture_cost(equal, size).gflops, 6),
            "dynamic_over_common": round(d / t["common"]["median_ms"], 3),
            "dynamic_over_equal_static": round(d / t["equal_gflops_static"]["median_ms"], 3),
            "time_saving_over_flops_saving": round(time_saving / flops_saving, 3) if flops_saving > 0.01 else None,
            "batch8_skipping_over_dense_throughput": round(tb["dense"]["median_ms"] / tb["skipping"]["median_ms"], 3),
            "batch8_grouped_skipping_over_dense_throughput": round(tb["dense"]["median_ms"] / tb["skipping_grouped"]["median_ms"], 3),
            "batch8_ms": {k: v["median_ms"] for k, v in tb.items()},
            "profile_skipping": _profile(model.forward_skipping, xs, d),
        }
        if old is not None:
            b = t["dynamic_skipping_before"]["median_ms"]
            entry = result["x".join(map(str, size))]
            entry["before"] = {
                "dynamic_over_common": round(b / t["common"]["median_ms"], 3),
                "dynamic_over_equal_static": round(b / t["equal_gflops_static"]["median_ms"], 3),
                "time_saving_over_flops_saving": round((1 - b / o) / flops_saving, 3) if flops_saving > 0.01 else None,
                "batch8_skipping_over_dense_throughput": round(tb["dense"]["median_ms"] / tb["skipping_before"]["median_ms"], 3),
                "profile_skipping": _profile(old, xs, b),
            }
    size = sizes[0]
    x = torch.cat([torch.nn.functional.interpolate(val[i][0][None], size=size, mode="bilinear", align_corners=False)
                   for i in range(8)])
    y = torch.stack([val[i][1] for i in range(8)])
    y = torch.nn.functional.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long().clamp(max=model.space.num_classes - 1)
    with torch.no_grad():
        learned = _learned_gates(model, x)
    ones = {n: torch.ones(8, len(k)) for n, k in model.out_keys.items()}
    ms = _train_steps_ms(model, x, y, {"all_open": (ones, False), "learned_gates_dense": (learned, False),
                                       "learned_gates_skip_closed": (learned, True),
                                       "own_gates_dense": (None, False), "own_gates_skip_closed": (None, True)},
                         max(3, repeats // 2))
    result["train_step_budget_over_all_open"] = round(ms["learned_gates_skip_closed"] / ms["all_open"], 3)
    result["train_step_budget_over_all_open_dense"] = round(ms["learned_gates_dense"] / ms["all_open"], 3)
    result["train_step_ms"] = {k: round(v, 1) for k, v in ms.items()}
    result["train_batch_union_body_fraction"] = round(_union_fraction(model, learned, size), 3)
    return result


def _union_fraction(model, learned: dict, size) -> float:
    """Body FLOPs of the batch's union of routes (what a skip_closed step computes) / all-open body."""
    import torch

    from routespace.spaces.supernet import cost_table

    with torch.no_grad():
        out = model.eval()(torch.zeros(next(iter(learned.values())).shape[0], 3, *size), gate_override=learned)
    table = cost_table(model.space, tuple(size), model.gate_resolution)
    union = sum(table.cell[n] for n in model.nodes_ if out.cell_ran[n].any())
    union += sum(table.edge_of(k) for k, g in out.edge_gates.items() if (g > 0).any())
    return union / table.body_all_open


def _learned_gates(model, x) -> dict:
    """The net's own gate values on ``x`` per node (N, k), for a training step with the routes it learned."""
    import torch

    out = model.eval()(x)
    return {n: torch.stack([out.edge_gates[k] for k in keys], 1) for n, keys in model.out_keys.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--sizes", nargs="+", default=["64x64", "256x512"])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--before", metavar="REV", help="also time the skipping executor of spaces/supernet.py at this git revision")
    a = p.parse_args()
    import torch

    from routespace.spaces.space import parse_size

    torch.set_num_threads(1)
    sizes = [parse_size(s) for s in a.sizes]
    before = _load_before(a.before) if a.before else None
    results = []
    for run in a.runs:
        results.append(analyse(run, sizes, a.repeats, before))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"runs": results, "threads": 1, "repeats": a.repeats, "before": a.before}))


if __name__ == "__main__":
    main()
