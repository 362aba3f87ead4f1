"""`routespace evaluate RUN`: mIoU, realised GFLOPs and latency of a trained run on its validation split."""
from __future__ import annotations

import argparse
import json

# Printed in this order (when present), with labels; everything else is in --json.
_ROWS = [
    ("miou", "mIoU", "{:.4f}"),
    ("pixel_accuracy", "pixel accuracy", "{:.4f}"),
    ("gflops", "GFLOPs (total)", "{:.5g}"),
    ("gflops_mean", "GFLOPs realised, mean (total)", "{:.5g}"),
    ("gflops_min", "GFLOPs realised, min (total)", "{:.5g}"),
    ("gflops_max", "GFLOPs realised, max (total)", "{:.5g}"),
    ("gflops_std", "GFLOPs realised, std (total)", "{:.5g}"),
    ("gflops_all_open", "GFLOPs all open + gates (total)", "{:.5g}"),
    ("body_gflops_mean", "body GFLOPs realised, mean", "{:.5g}"),
    ("body_gflops_all_open", "body GFLOPs all open", "{:.5g}"),
    ("gate_entropy_mean", "gate entropy, mean (bits)", "{:.4f}"),
    ("edges_varying_fraction", "gates varying across images", "{:.3f}"),
    ("params_m", "params (M)", "{:.4f}"),
    ("latency_ms", "latency, ms (batch 1, median)", "{:.2f}"),
    ("latency_ms_all_open", "latency all open, ms (dense forward)", "{:.2f}"),
]


def format_table(result: dict, kind: str | None, run, threads: int) -> str:
    """The human-readable form of an evaluation result (pure; ``--json`` prints everything)."""
    h, w = result["size"]
    lines = [f"{kind} net from {run} (step {result.get('step')}), {result.get('data')} val: {result['images']} images "
             f"at {h}x{w}, {result['device']}, {threads} torch threads"]
    for key, label, fmt in _ROWS:
        if result.get(key) is not None:
            lines.append(f"  {label:40s} {fmt.format(result[key])}")
    return "\n".join(lines)


def register(sub) -> None:
    from ..evaluators.data_registry import data_help

    p = sub.add_parser("evaluate", help="evaluate a trained run on its validation split (mIoU, GFLOPs, latency)")
    p.add_argument("run", metavar="RUN", help="run folder written by `routespace train`")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--data", default=None, help=f"data set to validate on: {data_help(None)} (default: the run's, val split)")
    p.add_argument("--size", default=None, metavar="HxW", help="validation size (default: the run's --val-size)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file to load (default: RUN/checkpoints/final.pt)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--latency-repeats", type=int, default=10, help="timed passes over the latency images (0 = skip latency)")
    p.add_argument("--latency-images", type=int, default=4, help="validation images timed at batch 1")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard events (default: RUN/tb/ gets them when tensorboard is installed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..search.steps import evaluate_run
    from ..spaces.space import parse_size
    from .threads import announce

    size = parse_size(args.size) if args.size else None
    result = evaluate_run(args.run, data=args.data, size=size, checkpoint=args.checkpoint, batch_size=args.batch_size,
                          device=args.device, latency_repeats=args.latency_repeats, latency_images=args.latency_images,
                          tensorboard=not args.no_tensorboard, on_start=lambda: announce(args)).to_dict()
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
        return 0
    print(format_table(result, result.get("kind"), args.run, torch.get_num_threads()))
    return 0
