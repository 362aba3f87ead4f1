"""`routespace export SPEC|CLASSIC|STATE_DICT|RUN --format FMT -o PATH`: take an architecture or net away."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    from ..spaces.exports.formats import FORMATS

    p = sub.add_parser("export", help=f"export a spec, classic, state-dict export or trained run as {', '.join(FORMATS)}")
    p.add_argument("target", metavar="SPEC|CLASSIC|RUN",
                   help="spec file (json/nodelink/graphml), state-dict export, classic name, or a `routespace train` run "
                   "folder (its final checkpoint; a dynamic net goes to export, onnx and state_dict as its dense masked "
                   "forward with the gates, logits only: the skipping is data-dependent and is not exported)")
    p.add_argument("--preset", default=None, help="space preset for a classic (default paper) or to override a spec's space")
    p.add_argument("--format", required=True, choices=tuple(FORMATS), metavar="FORMAT",
                   help="; ".join(f"{f.name}: {f.help} ({f.suffix})" for f in FORMATS.values()))
    p.add_argument("-o", "--output", required=True, help="output file (written atomically)")
    p.add_argument("--size", default=None, help="example input HxW used for tracing (default 64x64; models accept any multiple of 32)")
    p.add_argument("--seed", type=int, default=0, help="weight init seed when exporting a model from a spec (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..spaces.exports.formats import check_output_path, resolve_target, write_export
    from ..spaces.space import parse_size

    size = parse_size(args.size) if args.size else None
    check_output_path(args.output)  # fail before building or tracing anything
    model = resolve_target(args.target, args.preset, dynamic=True)
    path, detail = write_export(model, args.format, args.output, size=size, seed=args.seed)
    print(f"wrote {path} ({args.format}: {detail})")
    return 0
