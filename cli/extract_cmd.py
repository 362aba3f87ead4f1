"""`routespace extract RUN`: the Common architecture of a trained dynamic net's routes."""
from __future__ import annotations

import argparse



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
    from ..evaluators.cost import architecture_cost
    from ..search.steps import extract_common

    arch, freqs, size = extract_common(args.run, args.output, tau=args.tau, threshold=args.threshold, data=args.data,
                                       images=args.images)
    report = architecture_cost(arch, size)
    print(f"Common architecture of {args.run} (tau {args.tau}, {freqs.num_images} images): {len(arch.edges)} edges, "
          f"{report.gflops:.4f} GFLOPs at {size[0]}x{size[1]}, {report.params_m:.3f} M params -> {args.output}")
    return 0
