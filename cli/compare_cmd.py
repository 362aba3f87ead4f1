"""`routespace compare` and `routespace demo`: Dynamic-A/B/C vs Common-A/B/C vs the classics vs a random path
(and any run added), each row a `routespace train` run folder."""
from __future__ import annotations

import argparse
import shlex
import sys
import time

from ..spaces.classics import CLASSICS
from ..spaces.errors import RoutespaceError

# The demo: the main job on the embedded default data, sized (from its learning curves) to finish within
# 20 minutes on 2 CPU cores from a fresh clone, install included.
DEMO_STEPS = 600


def _common_flags(p: argparse.ArgumentParser, steps_default: int, out_default: str | None) -> None:
    p.add_argument("--out", required=out_default is None, default=out_default,
                   help="run folder" + (f" (default {out_default})" if out_default else ""))
    p.add_argument("--preset", default="tiny", help="space preset (default tiny)")
    from ..evaluators.data_registry import data_help

    p.add_argument("--data", default="synthetic", help=data_help())
    p.add_argument("--steps", type=int, default=steps_default,
                   help=f"training steps per net (default {steps_default}; under --protocol time, the dynamic nets')")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0); several give mean ± std")
    p.add_argument("--budget-mode", default="paper", metavar="MODE",
                   help="the dynamic rows' budget mode: paper (the released loss, default) or realised")
    p.add_argument("--protocol", default="steps", metavar="steps|time",
                   help="steps: every row trains the same steps (the paper's, default); time: each static row trains for "
                   "the dynamic rows' wall time (its steps from step costs measured interleaved before training)")
    p.add_argument("--tau", type=float, default=0.5, help="Common keeps edges open on at least this fraction of images (default 0.5)")
    p.add_argument("--val-images", type=int, default=None, help="use only the first N validation images")
    p.add_argument("--batch-size", type=int, default=8, help="images per training step (default 8)")
    p.add_argument("--latency-repeats", type=int, default=10,
                   help="interleaved latency repeats over every row (default 10; 0 = no latency)")
    p.add_argument("--add", action="append", default=[], metavar="[NAME=]RUN",
                   help="a finished `routespace train` run folder added as a row, as it is (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a different run already in --out")
    p.add_argument("--workers", type=int, default=2,
                   help="nets trained at a time, each a process with one torch thread (default 2, for 2 cores)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def register(sub) -> None:
    c = sub.add_parser("compare", help="train and compare dynamic, Common, classic and random-path nets side by side")
    _common_flags(c, DEMO_STEPS, None)
    c.add_argument("--dynamic", nargs="*", default=["A", "B", "C"], help="dynamic settings: A B C raw (default A B C)")
    c.add_argument("--classics", nargs="*", default=list(CLASSICS), help="classic nets (default all five)")
    c.add_argument("--no-random", action="store_true", help="leave out the random-path baseline")
    c.add_argument("--headline", nargs="*", default=[],
                   help="rows run for every seed (others only for the first seed); default: all rows, all seeds")
    c.set_defaults(func=run_compare)
    d = sub.add_parser("demo", help="the main job on the embedded data: train Dynamic-A/B/C, extract their Common nets, "
                       f"compare with the classics and a random path, write report.md and plots ({DEMO_STEPS} steps a net)")
    _common_flags(d, DEMO_STEPS, "runs/demo")
    d.set_defaults(func=run_compare, dynamic=["A", "B", "C"], classics=list(CLASSICS), no_random=False, headline=[])


def _settings(args: argparse.Namespace):
    from ..search.compare import CompareSettings

    return CompareSettings(
        preset=args.preset, data=args.data, steps=args.steps, seeds=tuple(args.seeds), dynamic=tuple(args.dynamic),
        budget_mode=args.budget_mode, classics=tuple(args.classics), random_baseline=not args.no_random,
        protocol=args.protocol, add=tuple(args.add), tau=args.tau, batch_size=args.batch_size, val_images=args.val_images,
        latency_repeats=args.latency_repeats, headline_seeds_only=tuple(args.headline),
    )


def run_compare(args: argparse.Namespace) -> int:
    from ..search.compare import compare

    if args.workers < 1:
        raise RoutespaceError(f"--workers must be at least 1, got {args.workers}")
    settings = _settings(args)
    t0 = time.time()
    compare(args.out, settings, overwrite=args.overwrite, progress=not args.quiet,
            command=shlex.join(["routespace", *sys.argv[1:]]) if sys.argv[1:2] in (["compare"], ["demo"]) else
            shlex.join(["routespace", args.command, "--out", str(args.out)]), workers=args.workers)
    with open(f"{args.out}/report.md") as f:
        print(f.read())
    print(f"wrote {args.out}/report.md, comparison.json and plots in {time.time() - t0:.0f} s")
    return 0
