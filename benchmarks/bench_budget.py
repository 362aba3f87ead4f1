"""Dynamic-A/B/C in both budget modes and Dynamic-Raw on the tiny preset, seeds 0-2 (not run by CI).

Each row is a plain `routespace train --preset tiny --setting S --budget-mode M --seed K` run (default
1500 steps), trained two at a time with one torch thread each, then evaluated on the 200 held-out
images of the embedded default data (`routespace evaluate`'s function, the skipping executor). Per
setting and mode, over seeds (mean ± std): realised body ratio (mean over images of the body FLOPs
that ran / all-open body), realised total GFLOPs, mIoU, per-image GFLOPs std, `route_scale_spearman`.

Targets (issue 11): realised mode within ±10 % of mu; paper mode A <= B < C < raw in realised body;
no row below 0.45 mIoU; spearman >= 0.3.

Run: ``python benchmarks/bench_budget.py --out runs/bench_budget [--steps N] [--seeds 0 1 2] [--rows ...]``.
Finished runs are reused, so an interrupted benchmark continues. Last line: one JSON object.
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

ROWS = ("A-realised", "B-realised", "C-realised", "A-paper", "B-paper", "C-paper", "raw")


def _cmd(out: Path, row: str, seed: int, steps: int | None) -> list[str]:
    run = out / f"{row}-s{seed}"
    cmd = ["routespace", "train", "--preset", "tiny", "--out", str(run)]
    if (run / "manifest.json").exists():
        return cmd + ["--resume"]
    setting, _, mode = row.partition("-")
    cmd += ["--setting", setting, "--seed", str(seed)]
    if mode:
        cmd += ["--budget-mode", mode]
    if steps:
        cmd += ["--steps", str(steps)]
    return cmd


def _mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def analyse(run: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    from routespace.evaluators.evaluate import evaluate, load_run_model
    from routespace.evaluators.runrecord import RunSettings
    from routespace.evaluators.synthetic import embedded_default

    model, manifest, _ = load_run_model(run)
    res = evaluate(model, embedded_default("val"), batch_size=8, latency_repeats=0)
    record = RunSettings.of(manifest, str(run))
    budget = record.budget.to_dict() if record.budget is not None else {}
    per_image = res.per_image_gflops
    return {
        "miou": res.miou,
        "body_ratio": res.body_gflops_mean / res.body_gflops_all_open,
        "gflops_mean": res.gflops_mean,
        "gflops_all_open": res.gflops_all_open,
        "per_image_gflops_std": statistics.pstdev(per_image),
        "route_scale_spearman": res.route_scale_spearman,
        "gate_saturated_fraction": gate_saturation(model, embedded_default("val")),
        "mu": budget.get("mu"),
    }


def gate_saturation(model, val, images: int = 32, limit: float = 3.0) -> float:
    """Fraction of gate-head pre-activations x with |x| > ``limit`` (tanh'(x) < 0.01: the gate, open or closed,
    barely moves any more, revivable or not), over every gate head of the dense forward on the first
    ``images`` validation images."""
    import torch

    from routespace.spaces.supernet import SoftGate

    pre: list = []
    heads = [m for m in model.modules() if isinstance(m, SoftGate)]
    hooks = [h.fc.register_forward_hook(lambda _m, _i, out: pre.append(out.detach().flatten())) for h in heads]
    try:
        x = torch.stack([val[i][0] for i in range(min(images, len(val)))])
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    values = torch.cat(pre)
    return float((values.abs() > limit).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_budget")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the tiny preset's 1500)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--analyse-only", action="store_true", help="train nothing: report the runs already finished")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # seed-major order: every row gets seed 0 first, so a cut-short benchmark still covers all rows
    jobs = [(row, seed) for seed in a.seeds for row in a.rows]
    pending = [j for j in jobs if not (out / f"{j[0]}-s{j[1]}" / "checkpoints" / "final.pt").exists()]
    if a.analyse_only:
        pending = []
    running: list[tuple[tuple[str, int], subprocess.Popen, float]] = []
    wall: dict[str, float] = {}
    t0 = time.time()
    while pending or running:
        while pending and len(running) < a.parallel:
            job = pending.pop(0)
            log = open(out / f"{job[0]}-s{job[1]}.log", "w")
            running.append((job, subprocess.Popen(_cmd(out, *job, a.steps), stdout=log, stderr=subprocess.STDOUT, env=env), time.time()))
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                wall[f"{item[0][0]}-s{item[0][1]}"] = round(time.time() - item[2], 1)
                if item[1].returncode != 0:
                    print(f"training {item[0]} failed: see {out / (item[0][0] + '-s' + str(item[0][1]) + '.log')}", file=sys.stderr)
        time.sleep(2)
    per_run = {}
    for row, seed in jobs:
        run = out / f"{row}-s{seed}"
        if (run / "checkpoints" / "final.pt").exists():
            per_run[f"{row}-s{seed}"] = analyse(run)
            print(f"{row}-s{seed}", json.dumps(per_run[f"{row}-s{seed}"]), flush=True)
    table = {}
    for row in a.rows:
        runs = [per_run[k] for k in per_run if k.rsplit("-s", 1)[0] == row]
        if runs:
            table[row] = {key: _mean_std([r[key] for r in runs]) for key in
                          ("body_ratio", "gflops_mean", "miou", "per_image_gflops_std", "route_scale_spearman")}
            table[row]["mu"] = runs[0]["mu"]
    body = {r: table[r]["body_ratio"]["mean"] for r in table}
    checks = {
        "realised_within_10pct_of_mu": {r: abs(body[r] / table[r]["mu"] - 1) <= 0.1 for r in table if r.endswith("realised")},
        "paper_order_A_le_B_lt_C_lt_raw": (all(k in body for k in ("A-paper", "B-paper", "C-paper", "raw"))
                                           and body["A-paper"] <= body["B-paper"] < body["C-paper"] < body["raw"]),
        "min_miou": min((table[r]["miou"]["mean"] for r in table), default=None),
        "min_spearman_budgeted": min((table[r]["route_scale_spearman"]["mean"] for r in table
                                      if r != "raw" and table[r]["route_scale_spearman"]["mean"] is not None), default=None),
    }
    for row, t in table.items():
        print(f"{row:>11}: body {t['body_ratio']['mean']:.3f}±{t['body_ratio']['std']:.3f}  "
              f"GFLOPs {t['gflops_mean']['mean'] * 1e3:.3f}e-3  mIoU {t['miou']['mean']:.3f}±{t['miou']['std']:.3f}  "
              f"per-image std {t['per_image_gflops_std']['mean'] * 1e6:.1f}e-6  "
              f"spearman {t['route_scale_spearman']['mean'] if t['route_scale_spearman']['mean'] is None else round(t['route_scale_spearman']['mean'], 3)}"
              f"  (n={t['miou']['n']})")
    print(json.dumps({"table": table, "checks": checks, "wall_s": wall, "total_wall_s": round(time.time() - t0, 1),
                      "threads_per_run": 1, "parallel": a.parallel}))


if __name__ == "__main__":
    main()
