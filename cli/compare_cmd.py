"""`routespace compare` and `routespace demo`: Dynamic-A/B/C vs Common-A/B/C vs the classics vs a random path."""
from __future__ import annotations

import argparse
import shlex
import sys
import time

from ..spaces.classics import CLASSICS
from ..spaces.errors import RoutespaceError

# The demo: the main job on the embedded default data, sized to finish within ~20 min on 2 CPU cores.
DEMO_STEPS = 600


def _common_flags(p: argparse.ArgumentParser, steps_default: int, out_default: str | None) -> None:
    p.add_argument("--out", required=out_default is None, default=out_default,
                   help="run folder" + (f" (default {out_default})" if out_default else ""))
    p.add_argument("--preset", default="tiny", help="space preset (default tiny)")
    from ..evaluators.data_registry import data_help

    p.add_argument("--data", default="synthetic", help=data_help())
    p.add_argument("--steps", type=int, default=steps_default, help=f"training steps per net (default {steps_default})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0); several give mean ± std")
    p.add_argument("--tau", type=float, default=0.5, help="Common keeps edges open on at least this fraction of images (default 0.5)")
    p.add_argument("--val-images", type=int, default=None, help="use only the first N validation images")
    p.add_argument("--overwrite", action="store_true", help="replace a different run already in --out")
    p.add_argument("--workers", type=int, default=2,
                   help="nets trained at a time, each a process with one torch thread (default 2, for 2 cores)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def register(sub) -> None:
    c = sub.add_parser("compare", help="train and compare dynamic, Common, classic and random-path nets side by side")
    _common_flags(c, DEMO_STEPS, None)
    c.add_argument("--dynamic", nargs="*", default=["A", "B", "C"], help="budget settings (default A B C)")
    c.add_argument("--classics", nargs="*", default=list(CLASSICS), help="classic nets (default all five)")
    c.add_argument("--no-random", action="store_true", help="leave out the random-path baseline")
    c.add_argument("--headline", nargs="*", default=[],
                   help="rows run for every seed (others only for the first seed); default: all rows, all seeds")
    c.set_defaults(func=run_compare)
    d = sub.add_parser("demo", help="the main job on the embedded data: train dynamic nets, extract Common nets, "
                       "compare with the classics, write report.md and plots (about 9 min on 2 CPU cores)")
    _common_flags(d, DEMO_STEPS, "runs/demo")
    d.set_defaults(func=run_demo, dynamic=["A", "B", "C"], classics=list(CLASSICS), no_random=False, headline=[])


def _settings(args: argparse.Namespace):
    from ..search.compare import CompareSettings

    return CompareSettings(
        preset=args.preset, data=args.data, steps=args.steps, seeds=tuple(args.seeds), dynamic=tuple(args.dynamic),
        classics=tuple(args.classics), random_baseline=not args.no_random, tau=args.tau, val_images=args.val_images,
        headline_seeds_only=tuple(args.headline),
    )


def run_compare(args: argparse.Namespace) -> int:

    from ..search.compare import compare

    settings = _settings(args)
    t0 = time.time()
    if args.workers < 1:
        raise RoutespaceError(f"--workers must be at least 1, got {args.workers}")
    compare(args.out, settings, overwrite=args.overwrite, progress=not args.quiet,
            command=shlex.join(["routespace", *sys.argv[1:]]), workers=args.workers)
    print(open(f"{args.out}/report.md").read())
    print(f"wrote {args.out}/report.md, comparison.json and plots in {time.time() - t0:.0f} s")
    return 0


run_demo = run_compare
