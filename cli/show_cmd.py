"""`routespace show SPEC|CLASSIC|RUN -o FILE.png|.svg`: draw an architecture, a dynamic run, a search or results."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "show",
        help="draw a spec, classic or run on the layer x scale grid (or routes, FLOPs histogram, Pareto, search history)",
    )
    p.add_argument("target", metavar="SPEC|CLASSIC|RUN",
                   help="spec file, classic name, training run folder, search folder, or JSON list of results")
    p.add_argument("--preset", default=None, help="space preset for a classic (default paper) or to override a spec's space")
    p.add_argument("--what", default=None, choices=("grid", "routes", "histogram", "pareto", "history"),
                   help="view (default: grid; history for a search folder; pareto for a results file)")
    p.add_argument("--images", type=int, default=64, help="validation images for a dynamic run's frequencies/histogram")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("-o", "--output", required=True, help="output image, .png, .svg or .pdf (written atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluators.plots.canvas import figure_format, save_figure
    from ..evaluators.plots.show import show
    from ..spaces.exports.formats import check_output_path

    figure_format(args.output)
    check_output_path(args.output)  # fail before any work
    fig = show(args.target, preset=args.preset, what=args.what, images=args.images, title=args.title)
    path = save_figure(fig, args.output)
    print(f"wrote {path}")
    return 0
