"""Dynamic routing on a CPU: does skipping turn FLOPs saved into time saved? (Ratios; not run by CI.)

For a dynamic supernet, batch 1, the median wall-clock of ``forward_skipping`` (runs only open cells and
edges) is set against the dense ``forward`` of the same net with every gate open (the all-open cost),
next to the realised-FLOPs ratio. Two sources of gates:

- ``--run RUN``: a trained run (``routespace train``); its own gates on validation images;
- otherwise a sweep over the fraction ``p`` of gates forced shut (seeded random ``gate_override``,
  open gates drawn in (0, 1)) on an untrained supernet of ``--preset``.

It also times training steps of the supernet (dense forward + backward + AdamW, with the budget loss)
at ``--train-batch``, which sizes the default ``routespace train --preset tiny`` run.

Run: ``python benchmarks/bench_dynamic.py [--preset tiny] [--size 64x64] [--threads 1] [--repeats 20]``.
The last line printed is one JSON object with the key figures.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def _median_ms(fn, xs, repeats: int, warmup: int = 2) -> float:
    import torch

    from routespace.evaluators.evaluate import median_latency_ms

    return median_latency_ms(fn, list(xs), repeats, torch.device("cpu"), warmup)


def _forced_gates(net, p_closed: float, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    gates = {}
    for node, keys in net.out_keys.items():
        g = torch.rand(1, len(keys), generator=gen) * 0.9 + 0.05
        if node != (0, 0):  # keep the stem's gates open, or nothing past it runs at all
            g[torch.rand(1, len(keys), generator=gen) < p_closed] = 0.0
        gates[node] = g
    return gates


def sweep(net, size, fractions, repeats: int, images: int, seed: int) -> list[dict]:
    """Latency and FLOPs of skipping vs all-open for random gate patterns with a fraction shut."""
    import torch

    from routespace.spaces.supernet import body_flops_all_open

    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(1, 3, *size, generator=gen) for _ in range(images)]
    ones = {n: torch.ones(1, len(k)) for n, k in net.out_keys.items()}
    dense_ms = _median_ms(lambda x: net(x, gate_override=ones), xs, repeats)
    all_open = net(xs[0], gate_override=ones)
    body_all = body_flops_all_open(net.space, size)
    rows = []
    for p in fractions:
        patterns = [_forced_gates(net, p, seed + 1000 * i) for i in range(images)]
        pairs = list(zip(xs, patterns))
        with torch.inference_mode():
            outs = [net.forward_skipping(x, gate_override=g) for x, g in pairs]
        def run_one(pair):
            x, g = pair
            return net.forward_skipping(x, gate_override=g)

        skip_ms = _median_ms(run_one, pairs, repeats)
        flops = statistics.mean(float(o.realised_flops[0]) for o in outs)
        body = statistics.mean(float(o.realised_body_flops[0]) for o in outs)
        rows.append({
            "p_shut": p,
            "body_flops_ratio": round(body / body_all, 4),
            "flops_ratio": round(flops / float(all_open.realised_flops[0]), 4),
            "skip_ms": round(skip_ms, 3),
            "dense_all_open_ms": round(dense_ms, 3),
            "latency_ratio": round(skip_ms / dense_ms, 4),
        })
    return rows


def time_training(space, size, batch: int, steps: int, threads: int) -> dict:
    """Seconds per training step of the supernet (wall and process CPU), budget loss on."""
    import torch

    from routespace.search.dynamic.budget import BudgetLoss
    from routespace.evaluators.synthetic import embedded_default
    from routespace.evaluators.train import TrainConfig, fit
    from routespace.spaces.supernet import DynamicNet, body_flops_all_open

    torch.manual_seed(0)
    net = DynamicNet(space)
    data = embedded_default("train", size=size, num_images=max(batch * (steps + 2), 16))
    loss = BudgetLoss(body_flops_all_open(space, size), 0.2, 0.5, warmup=0.0, ramp=0.0)
    fit(net, data, TrainConfig(steps=2, batch_size=batch, optimizer="adamw", lr=3e-3, device="cpu"), extra_loss=loss, progress=False)
    c0, w0 = time.process_time(), time.perf_counter()
    fit(net, data, TrainConfig(steps=steps, batch_size=batch, optimizer="adamw", lr=3e-3, device="cpu", seed=1),
        extra_loss=loss, progress=False)
    c1, w1 = time.process_time(), time.perf_counter()
    return {"train_batch": batch, "train_steps_timed": steps, "train_s_per_step": round((w1 - w0) / steps, 4),
            "train_cpu_s_per_step": round((c1 - c0) / steps, 4), "threads": threads}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a trained run folder (else: forced gate patterns)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", default=None, help="HxW (default: the preset's input size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3,0.5")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=20, help="training steps timed (0 = skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from routespace.spaces.space import parse_size, preset

    torch.set_num_threads(args.threads)
    figures: dict = {"threads": args.threads, "machine": platform.machine(), "torch": torch.__version__}
    if args.run:
        from routespace.evaluators.datasets import load_dataset
        from routespace.evaluators.evaluate import evaluate, load_run_model
        from routespace.evaluators.runrecord import RunSettings

        model, manifest, _ = load_run_model(args.run)
        cli = RunSettings.of(manifest, str(args.run)).to_dict()
        val = load_dataset(cli.get("data", "synthetic"), "val", size=tuple(cli["size"]) if cli.get("size") else None)
        r = evaluate(model, val, device="cpu", latency_repeats=args.repeats, latency_images=args.images)
        figures.update({k: r[k] for k in ("miou", "gflops_mean", "gflops_std", "gflops_all_open", "body_gflops_mean",
                                          "body_gflops_all_open", "latency_ms", "latency_ms_all_open")})
        figures["flops_ratio"] = round(r["gflops_mean"] / r["gflops_all_open"], 4)
        figures["latency_ratio"] = round(r["latency_ms"] / r["latency_ms_all_open"], 4)
        space, size = model.space, tuple(r["size"])
    else:
        from routespace.spaces.supernet import DynamicNet

        space = preset(args.preset)
        size = parse_size(args.size) if args.size else space.input_size
        torch.manual_seed(args.seed)
        net = DynamicNet(space).eval()
        fractions = [float(f) for f in args.fractions.split(",")]
        rows = sweep(net, size, fractions, args.repeats, args.images, args.seed)
        for row in rows:
            print(json.dumps(row))
        figures["sweep"] = rows
    figures.update(space=space.name, size="x".join(map(str, size)))
    if args.train_steps > 0:
        figures.update(time_training(space, size, args.train_batch, args.train_steps, args.threads))
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
