"""`routespace flops`: analytic FLOPs and params of a spec, a classic or the whole space."""
from __future__ import annotations

import argparse
import json

from ..evaluators.cost import CONVENTIONS, CostReport, architecture_cost, space_cost
from ..spaces.architecture import load_architecture
from ..spaces.classics import CLASSICS, classic
from ..spaces.errors import RoutespaceError
from ..spaces.layout import GATE_RESOLUTIONS
from ..spaces.space import STRIDES, parse_size, preset


def register(sub) -> None:
    p = sub.add_parser("flops", help="analytic GFLOPs/params of a spec file, a classic net or the all-open space")
    p.add_argument("spec", nargs="?", help="architecture spec JSON file")
    p.add_argument("--preset", default=None, help="space preset (paper, tiny); default paper, or the spec's own space")
    p.add_argument("--classic", choices=None, metavar="NAME", help=f"one of {', '.join(CLASSICS)}")
    p.add_argument("--all-open", action="store_true", help="the whole space, every edge open")
    p.add_argument("--no-gates", action="store_true", help="with --all-open: leave out the gate heads")
    p.add_argument("--gate-resolution", default=None, metavar="RES",
                   help=f"with --all-open: gate heads at {' or '.join(GATE_RESOLUTIONS)} resolution (default full; "
                   "quarter is the small gate of the released Dynamic-A/B/C)")
    p.add_argument("--size", default=None, help="input HxW, multiples of 32 (default: the space's, paper 1024x2048)")
    p.add_argument("--convention", default="paper", help=f"one of {', '.join(CONVENTIONS)} (default paper)")
    p.add_argument("--json", action="store_true", help="print a JSON object (gflops, params_m, per-node breakdown)")
    p.set_defaults(func=run)


def compute(args: argparse.Namespace) -> CostReport:
    chosen = [bool(args.spec), bool(args.classic), bool(args.all_open)]
    if sum(chosen) != 1:
        raise RoutespaceError("give exactly one of: a SPEC file, --classic NAME, or --all-open")
    if args.no_gates and not args.all_open:
        raise RoutespaceError("--no-gates only applies with --all-open")
    if args.gate_resolution is not None and (not args.all_open or args.no_gates):
        raise RoutespaceError("--gate-resolution only applies with --all-open and its gate heads")
    resolution = args.gate_resolution or "full"
    if resolution not in GATE_RESOLUTIONS:
        raise RoutespaceError(f"unknown gate resolution {resolution!r}: choose one of {', '.join(GATE_RESOLUTIONS)}")
    size = parse_size(args.size) if args.size else None
    if args.spec:
        space = preset(args.preset) if args.preset else None
        arch = load_architecture(args.spec, space)
        return architecture_cost(arch, size, args.convention)
    space = preset(args.preset or "paper")
    if args.classic:
        return architecture_cost(classic(args.classic, space), size, args.convention)
    return space_cost(space, size, args.convention, gates=not args.no_gates, gate_resolution=resolution)


def _g(value: float) -> str:
    """Two decimals where that shows the figure (paper sizes), four significant digits where it would not."""
    return f"{value:.2f}" if value >= 1 or value == 0 else f"{value:.4g}"


def format_report(report: CostReport) -> str:
    h, w = report.size
    lines = [
        f"{report.name} at {h}x{w} ({report.convention} convention)",
        f"  total {_g(report.gflops)} GFLOPs, params {report.params_m:.3f} M",
        f"  stem {_g(report.stem_flops / 1e9)}  body {_g(report.body_flops / 1e9)}  "
        f"decoder {_g(report.decoder_flops / 1e9)}  gates {_g(report.gate_flops / 1e9)}  (GFLOPs)",
        "  per node (layer, stride): cell + outgoing edges [+ gate] GFLOPs",
    ]
    for n in report.nodes:
        layer, scale = n.node
        lines.append(
            f"    L{layer:<2d} s{STRIDES[scale]:<2d} {n.cell:8s} {n.cell_flops / 1e9:9.4g} + "
            f"{(sum(n.edge_flops.values()) + n.out_flops) / 1e9:9.4g}" + (f" + {n.gate_flops / 1e9:9.4g}" if n.gate_flops else "")
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = compute(args)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return 0
