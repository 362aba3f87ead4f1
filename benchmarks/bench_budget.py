"""Budget adherence, real speed and route adaptivity of dynamic nets on the tiny preset (not run by CI).

Trains with the default `routespace train --preset tiny` length: Dynamic-A (mu 0.1, lambda 0.8),
Dynamic-C (mu 0.2, lambda 0.5), one feasible mid budget (mu 0.4, lambda 0.5) and no budget, two at a
time, one torch thread each; then for each net on the 200 held-out images:

- realised mean body GFLOPs (counted from what the skipping executor ran) against mu x all-open body
  and against the target actually used (mu raised to the reachable floor when below it);
- batch-1 latency of the skipping executor vs the same net with every path executed, and the ratio
  time saving / FLOPs saving (target >= 0.7); batch-8 throughput of gather/scatter skipping vs dense;
- how routes adapt: per-image GFLOPs spread, its rank correlation with the image's mean object size,
  and the edge-frequency difference between the images with the smallest and largest objects.

Run: ``python benchmarks/bench_budget.py --out runs/bench_budget [--steps N]``; last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # name: (mu, lambda) or None for no budget
    "A": (0.1, 0.8),
    "C": (0.2, 0.5),
    "M": (0.4, 0.5),
    "none": None,
}


def _train(out: Path, name: str, steps: int | None) -> subprocess.Popen:
    cmd = ["routespace", "train", "--preset", "tiny", "--out", str(out / name)]
    if (out / name / "manifest.json").exists():
        cmd.append("--resume")
    elif SETTINGS[name] is None:
        cmd.append("--no-budget")
    else:
        mu, lam = SETTINGS[name]
        cmd += ["--budget-mu", str(mu), "--budget-lambda", str(lam)]
    if steps and "--resume" not in cmd:
        cmd += ["--steps", str(steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = open(out / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = [0.0] * len(values)
    for rank, i in enumerate(order):
        r[i] = float(rank)
    return r


def _spearman(a, b) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else 0.0


def analyse(run: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    from routespace.evaluators.evaluate import evaluate, load_run_model
    from routespace.evaluators.synthetic import embedded_default
    from routespace.spaces.supernet import route_floor

    model, manifest, _ = load_run_model(run)
    model.eval()
    val = embedded_default("val")
    res = evaluate(model, val, batch_size=8, latency_repeats=20, latency_images=8)
    budget = manifest.get("extra", {}).get("cli", {}).get("budget")
    floor = route_floor(model.space, (64, 64))
    ratio = res["body_gflops_mean"] / res["body_gflops_all_open"]
    out = {
        "miou": res["miou"], "gflops_mean": res["gflops_mean"], "gflops_min": res["gflops_min"],
        "gflops_max": res["gflops_max"], "gflops_all_open": res["gflops_all_open"],
        "body_ratio": ratio, "floor": floor,
        "latency_ms": res["latency_ms"], "latency_ms_all_open": res["latency_ms_all_open"],
        "gate_entropy_mean": res["gate_entropy_mean"], "edges_varying_fraction": res["edges_varying_fraction"],
    }
    if budget:
        mu = budget["mu"]
        target = max(mu, floor)
        out.update(mu=mu, target=target, within_10pct_of_mu=abs(ratio - mu) <= 0.1 * mu,
                   within_10pct_of_target=abs(ratio - target) <= 0.1 * target, error_vs_target=ratio / target - 1)
    flops_saving = 1 - res["gflops_mean"] / res["gflops_all_open"]
    time_saving = 1 - res["latency_ms"] / res["latency_ms_all_open"]
    out.update(flops_saving=flops_saving, time_saving=time_saving,
               time_over_flops_saving=time_saving / flops_saving if flops_saving > 0.01 else None)
    # batch 8: gather/scatter skipping vs dense
    xs = torch.stack([val[i][0] for i in range(8)])
    with torch.inference_mode():
        for fn in (model.forward_skipping, model.forward):
            fn(xs)
        t = {}
        for name, fn in (("skip", model.forward_skipping), ("dense", model.forward)):
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                fn(xs)
                times.append(time.perf_counter() - t0)
            t[name] = statistics.median(times)
    out.update(batch8_images_per_s_skipping=8 / t["skip"], batch8_images_per_s_dense=8 / t["dense"])
    # route adaptivity vs object size
    per_image = res["per_image_gflops"]
    sizes = [val.mean_object_px(i) for i in range(len(val))]
    out["spearman_gflops_vs_object_px"] = _spearman(per_image, sizes)
    out["gflops_std"] = statistics.pstdev(per_image)
    order = sorted(range(len(val)), key=lambda i: sizes[i])
    k = len(order) // 4
    freqs = {}
    for group, idx in (("small", order[:k]), ("large", order[-k:])):
        with torch.inference_mode():
            o = model(torch.stack([val[i][0] for i in idx]))
        freqs[group] = {key: float((g > 1e-4).float().mean()) for key, g in o.edge_gates.items()}
        out[f"gflops_mean_{group}_objects"] = float(o.realised_flops.mean()) / 1e9
    out["edge_freq_l1_small_vs_large"] = sum(abs(freqs["small"][k_] - freqs["large"][k_]) for k_ in freqs["small"])
    out["edges_differing_by_0.25"] = sum(abs(freqs["small"][k_] - freqs["large"][k_]) >= 0.25 for k_ in freqs["small"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_budget")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the tiny preset's)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--only", nargs="*", default=list(SETTINGS))
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pending = list(a.only)
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < a.parallel:
            name = pending.pop(0)
            if (out / name / "checkpoints" / "final.pt").exists():
                continue
            running.append((name, _train(out, name, a.steps)))
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode != 0:
                    print(f"training {item[0]} failed: see {out / (item[0] + '.log')}", file=sys.stderr)
        time.sleep(1)
    train_wall = time.time() - t0
    results = {name: analyse(out / name) for name in a.only}
    for name, r in results.items():
        print(name, json.dumps(r))
    ratios = {n: results[n]["body_ratio"] for n in results}
    summary = {
        "train_wall_s": round(train_wall, 1),
        "body_ratio": {n: round(v, 4) for n, v in ratios.items()},
        "target": {n: round(results[n].get("target", 1.0), 4) for n in results},
        "within_10pct_of_target": {n: results[n].get("within_10pct_of_target") for n in results},
        "within_10pct_of_mu": {n: results[n].get("within_10pct_of_mu") for n in results},
        "order_A_lt_C_lt_none": all(k in ratios for k in ("A", "C", "none")) and ratios["A"] < ratios["C"] < ratios["none"],
        "miou": {n: round(results[n]["miou"], 4) for n in results},
        "time_over_flops_saving": {n: results[n]["time_over_flops_saving"] for n in results},
        "batch8_speedup": {n: round(results[n]["batch8_images_per_s_skipping"] / results[n]["batch8_images_per_s_dense"], 3) for n in results},
        "spearman_gflops_vs_object_px": {n: round(results[n]["spearman_gflops_vs_object_px"], 3) for n in results},
        "gflops_std": {n: results[n]["gflops_std"] for n in results},
        "threads": 1,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
