"""Sweep budget-loss settings for the tiny dynamic net, one process per setting, and report the realised
body-FLOPs ratio on held-out images against mu. A tuning tool (GPU or many cores); prints JSON lines.

    python benchmarks/sweep_budget.py --steps 1500 --device cuda --jobs 12
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time

VARIANTS = {
    # third sweep (revivable gates: closed gates get tanh's gradient)
    "C_rev_l0.5_g10": (0.2, 0.5, "realised", 0.4, 0.2, 3e-3, 10.0),
    "C_rev_dual_g10": (0.2, "dual", "realised", 0.4, 0.2, 3e-3, 10.0),
    "M_rev_dual_g10": (0.4, "dual", "realised", 0.4, 0.2, 3e-3, 10.0),
    "M_rev_l0.5_g10": (0.4, 0.5, "realised", 0.4, 0.2, 3e-3, 10.0),
    # second sweep: higher gate lr (Adam moves a gate bias at most ~lr per step, and poly decay shrinks
    # that further, so with lr 3e-3 the biases (init 1.5) cannot travel far enough to close gates) and a
    # dual-ascent lambda (grows while the realised ratio is above mu, shrinks below).
    "A_g10": (0.1, 0.8, "realised", 0.4, 0.2, 3e-3, 10.0),
    "C_g10": (0.2, 0.5, "realised", 0.4, 0.2, 3e-3, 10.0),
    "A_g10_dual": (0.1, "dual", "realised", 0.4, 0.2, 3e-3, 10.0),
    "C_g10_dual": (0.2, "dual", "realised", 0.4, 0.2, 3e-3, 10.0),
    "A_g30_dual": (0.1, "dual", "realised", 0.4, 0.2, 3e-3, 30.0),
    "C_g30_dual": (0.2, "dual", "realised", 0.4, 0.2, 3e-3, 30.0),
    "A_g10_dual_w2": (0.1, "dual", "realised", 0.2, 0.1, 3e-3, 10.0),
    "C_g10_dual_w2": (0.2, "dual", "realised", 0.2, 0.1, 3e-3, 10.0),
    "A_g10_l4": (0.1, 4.0, "realised", 0.4, 0.2, 3e-3, 10.0),
    "C_g10_l4": (0.2, 4.0, "realised", 0.4, 0.2, 3e-3, 10.0),
    "A_g10_exp_dual": (0.1, "dual", "expected", 0.4, 0.2, 3e-3, 10.0),
    "none_g10": (None, 0.0, "realised", 0.4, 0.2, 3e-3, 10.0),

    # name: (mu, lam, estimator, warmup, ramp, lr, gate_lr_mult)
    "none": (None, 0.0, "realised", 0.4, 0.2, 3e-3, 1.0),
    "A_real_l0.8": (0.1, 0.8, "realised", 0.4, 0.2, 3e-3, 1.0),
    "C_real_l0.5": (0.2, 0.5, "realised", 0.4, 0.2, 3e-3, 1.0),
    "A_exp_l0.8": (0.1, 0.8, "expected", 0.4, 0.2, 3e-3, 1.0),
    "C_exp_l0.5": (0.2, 0.5, "expected", 0.4, 0.2, 3e-3, 1.0),
    "A_real_l4": (0.1, 4.0, "realised", 0.4, 0.2, 3e-3, 1.0),
    "C_real_l4": (0.2, 4.0, "realised", 0.4, 0.2, 3e-3, 1.0),
    "A_real_l0.8_w2": (0.1, 0.8, "realised", 0.2, 0.1, 3e-3, 1.0),
    "C_real_l0.5_w2": (0.2, 0.5, "realised", 0.2, 0.1, 3e-3, 1.0),
    "A_real_l0.8_g3": (0.1, 0.8, "realised", 0.4, 0.2, 3e-3, 3.0),
    "C_real_l0.5_g3": (0.2, 0.5, "realised", 0.4, 0.2, 3e-3, 3.0),
    "C_real_l2_w2": (0.2, 2.0, "realised", 0.2, 0.1, 3e-3, 1.0),
    "A_real_l2_w2": (0.1, 2.0, "realised", 0.2, 0.1, 3e-3, 1.0),
}


def run_one(args) -> dict:
    name, steps, device, seed = args
    import torch

    torch.set_num_threads(1)
    from routespace.evaluators.metrics import ConfusionMatrix
    from routespace.evaluators.synthetic import embedded_default
    from routespace.evaluators.train import TrainConfig, fit
    from routespace.spaces.space import preset
    from routespace.spaces.supernet import DynamicNet, body_flops_all_open, budget_loss
    from routespace.evaluators.schedule import budget_weight

    mu, lam, est, warmup, ramp, lr, gmult = VARIANTS[name]
    space = preset("tiny")
    torch.manual_seed(seed)
    net = DynamicNet(space)
    body_all = body_flops_all_open(space, (64, 64))

    dual = {"lam": 0.5}

    def extra(out, step, total):
        if mu is None:
            return out.logits.new_zeros(())
        w = budget_weight(step, total, warmup, ramp)
        if lam == "dual":
            if w > 0:
                r = float(out.realised_body_flops.mean()) / body_all
                dual["lam"] = min(1000.0, max(0.5, dual["lam"] * math.exp(0.02 * (r - mu) / mu)))
            return budget_loss(out, body_all, mu, dual["lam"] * w, estimator=est)
        return budget_loss(out, body_all, mu, lam * w, estimator=est)

    cfg = TrainConfig(steps=steps, batch_size=8, lr=lr, optimizer="adamw", warmup_steps=50, grad_clip=5.0,
                      gate_lr_mult=gmult, seed=seed, device=device)
    t0 = time.time()
    fit(net, embedded_default("train"), cfg, progress=False, extra_loss=extra)
    train_s = time.time() - t0
    net.eval()
    val = embedded_default("val")
    cm = ConfusionMatrix(space.num_classes)
    ratios, exp_ratios = [], []
    with torch.no_grad():
        for i in range(0, len(val), 25):
            xs, ys = zip(*(val[j] for j in range(i, min(len(val), i + 25))))
            x = torch.stack(xs).to(net.stem.body[0].weight.device)
            out = net(x)
            cm.update(out.logits.argmax(1).cpu(), torch.stack(ys))
            ratios += (out.realised_body_flops / body_all).tolist()
            exp_ratios += (out.expected_body_flops / body_all).tolist()
    r = torch.tensor(ratios)
    return {"name": name, "mu": mu, "lam": lam, "estimator": est, "warmup": warmup, "gate_lr_mult": gmult,
            "realised_ratio_mean": round(float(r.mean()), 4), "realised_ratio_std": round(float(r.std()), 4),
            "expected_ratio_mean": round(sum(exp_ratios) / len(exp_ratios), 4), "miou": round(cm.miou(), 4),
            "train_s": round(train_s, 1), "final_lam": dual["lam"] if lam == "dual" else lam}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=None)
    a = p.parse_args()
    names = a.only or [n for n in VARIANTS if '_rev_' in n]
    ctx = mp.get_context("spawn")
    results = []
    with ctx.Pool(a.jobs) as pool:
        for res in pool.imap_unordered(run_one, [(n, a.steps, a.device, a.seed) for n in names]):
            print(json.dumps(res), flush=True)
            results.append(res)
    print(json.dumps({"sweep": sorted(results, key=lambda r: r["name"])}))


if __name__ == "__main__":
    sys.exit(main())
