"""`routespace export SPEC|CLASSIC|STATE_DICT --format FMT -o PATH`: take an architecture or net away."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..spaces.errors import RoutespaceError

FORMATS = ("json", "nodelink", "graphml", "torchscript", "onnx", "state_dict")


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a spec, classic or state-dict export as json, nodelink, graphml, torchscript, onnx or state_dict",
    )
    p.add_argument("target", metavar="SPEC|CLASSIC", help="spec file (json/nodelink/graphml), state-dict export, or classic name")
    p.add_argument("--preset", default=None, help="space preset for a classic (default paper) or to override a spec's space")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("-o", "--output", required=True, help="output file (written atomically)")
    p.add_argument("--size", default=None, help="example input HxW used for tracing (default 64x64; models accept any multiple of 32)")
    p.add_argument("--seed", type=int, default=0, help="weight init seed when exporting a model from a spec (default 0)")
    p.set_defaults(func=run)


def load_target(target: str, preset_name: str | None):
    """An Architecture (spec file or classic) or a StaticNet (state-dict export) for ``target``."""
    from ..spaces.classics import CLASSICS, classic
    from ..spaces.space import preset

    path = Path(target)
    if path.is_dir():
        raise RoutespaceError(f"{target} is a folder: give a spec file or a classic name")
    if path.is_file():
        from ..spaces.architecture import load_architecture
        from ..spaces.exports.formats import import_architecture
        from ..spaces.exports.model import is_state_dict_file, load_state_dict

        if is_state_dict_file(path):
            return load_state_dict(path)
        if preset_name and path.suffix.lower() == ".json" and b"routespace.architecture.graph" not in path.read_bytes()[:1_000_000]:
            return load_architecture(str(path), preset(preset_name))
        return import_architecture(path)
    key = target.lower().replace("-", "").replace("_", "")
    if key in CLASSICS:
        return classic(key, preset(preset_name or "paper"))
    if "/" in target or "." in target:
        raise RoutespaceError(f"spec file {target} does not exist")
    raise RoutespaceError(f"{target!r} is neither a spec file nor a classic: classics are {', '.join(CLASSICS)}")


def run(args: argparse.Namespace) -> int:
    from ..spaces.exports.formats import check_output_path, export
    from ..spaces.space import parse_size

    size = parse_size(args.size) if args.size else None
    check_output_path(args.output)  # fail before building or tracing anything
    model = load_target(args.target, args.preset)
    path = export(model, args.format, args.output, size=size, seed=args.seed)
    print(f"wrote {path} ({args.format})")
    return 0
