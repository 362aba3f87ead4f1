"""`routespace evaluate RUN`: mIoU, realised GFLOPs and latency of a trained run on its validation split."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    from ..spaces.errors import RoutespaceError

    if args.batch_size < 1 or args.latency_repeats < 0 or args.latency_images < 1:
        raise RoutespaceError("--batch-size and --latency-images must be >= 1, --latency-repeats >= 0")
    import torch

    from ..evaluators.datasets import load_dataset
    from ..evaluators.evaluate import evaluate, load_run_model
    from ..evaluators.tensorboard import open_writer
    from ..spaces.fileio import write_json_atomic
    from ..spaces.space import parse_size

    model, manifest, state = load_run_model(args.run, args.checkpoint)
    cli = manifest.get("extra", {}).get("cli", {})
    data = args.data or cli.get("data") or "synthetic"
    size = parse_size(args.size) if args.size else tuple(cli.get("val_size") or cli.get("size") or ()) or None
    val_set = load_dataset(data, "val", size=size)
    # TensorBoard events mirror evaluation.json: written for the run's final checkpoint only
    writer = open_writer(args.run, enabled=not (args.no_tensorboard or args.checkpoint))
    step = int(state["step"])
    with writer:
        from .threads import announce

        announce(args)
        result = evaluate(model, val_set, batch_size=args.batch_size, device=args.device,
                          latency_repeats=args.latency_repeats, latency_images=args.latency_images,
                          writer=writer, step=step)
        if writer.enabled and manifest.get("kind") == "dynamic":
            from ..evaluators.plots.show import show
            from ..evaluators.tensorboard import figure_to_chw

            writer.image("eval/routes", figure_to_chw(show(args.run, what="routes")), step)
    result.update(run=str(args.run), kind=manifest.get("kind"), data=data, step=step)
    if cli.get("budget"):
        result["budget"] = cli["budget"]
    if not args.checkpoint:
        write_json_atomic(Path(args.run) / "evaluation.json", result)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
        return 0
    print(format_table(result, manifest.get("kind"), args.run, torch.get_num_threads()))
    return 0
