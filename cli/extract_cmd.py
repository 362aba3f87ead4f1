"""`routespace extract RUN`: the Common architecture of a trained dynamic net's routes."""
from __future__ import annotations

import argparse

from ..spaces.errors import RoutespaceError


def register(sub) -> None:
    from ..evaluators.data_registry import data_help

    p = sub.add_parser("extract", help="extract the Common (static) architecture from a trained dynamic run")
    p.add_argument("run", help="run folder of `routespace train` (a dynamic net)")
    p.add_argument("-o", "--output", required=True, help="spec JSON to write (frequencies go beside it, *.freq.json)")
    p.add_argument("--tau", type=float, default=0.5, help="keep edges open on at least this fraction of images, in (0, 1] (default 0.5)")
    p.add_argument("--threshold", type=float, default=1e-4, help="a gate above this counts as open (default 1e-4: the edge ran)")
    p.add_argument("--data", default=None,
                   help=f"data set for the frequencies: {data_help(None)} (default: the run's, validation split)")
    p.add_argument("--images", type=int, default=None, help="use only the first N images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if isinstance(args.tau, bool) or not 0 < args.tau <= 1:
        raise RoutespaceError(f"--tau must be in (0, 1], got {args.tau}: it is the fraction of images an edge must be open on")
    if not 0 <= args.threshold < 1:
        raise RoutespaceError(f"--threshold must be in [0, 1), got {args.threshold}")
    from pathlib import Path

    from ..evaluators.datasets import load_dataset
    from ..evaluators.evaluate import load_run_model
    from ..evaluators.runfolder import read_manifest
    from ..search.dynamic.common import common_architecture, edge_frequencies
    from ..spaces.fileio import write_json_atomic, write_text_atomic

    run_dir = Path(args.run)
    manifest = read_manifest(run_dir) if run_dir.is_dir() else None
    if manifest is None:
        raise RoutespaceError(f"{run_dir} is not a training run folder: give the --out folder of `routespace train`")
    if manifest.get("kind") != "dynamic":
        raise RoutespaceError(f"{run_dir} holds a {manifest.get('kind')} net, not a dynamic one: extraction needs a dynamic-routing run")
    out = Path(args.output)
    if not out.parent.exists():
        raise RoutespaceError(f"cannot write {out}: folder {out.parent} does not exist")
    model, manifest, _ = load_run_model(run_dir)
    cli = manifest.get("extra", {}).get("cli", {})
    data = args.data or cli.get("data", "synthetic")
    size = tuple(cli.get("size") or model.space.input_size)
    val = load_dataset(data, "val", size=size)
    freqs = edge_frequencies(model, val, threshold=args.threshold, max_images=args.images)
    arch = common_architecture(freqs, args.tau, name=f"common-{run_dir.name}")
    write_json_atomic(out.with_suffix(".freq.json"), freqs.to_dict())
    write_text_atomic(out, arch.to_json())
    from ..evaluators.cost import architecture_cost

    report = architecture_cost(arch, size)
    print(f"Common architecture of {run_dir} (tau {args.tau}, {freqs.num_images} images): {len(arch.edges)} edges, "
          f"{report.gflops:.4f} GFLOPs at {size[0]}x{size[1]}, {report.params_m:.3f} M params -> {out}")
    return 0
