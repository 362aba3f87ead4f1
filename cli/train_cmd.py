"""`routespace train`: train the dynamic-routing supernet (or, with --arch, a static net) into a run folder."""
from __future__ import annotations

import argparse
import shlex

from ..search.dynamic.settings import DEFAULT_ANNEAL, DEFAULT_BUDGET_MODE, DEFAULT_RAMP, DEFAULT_WARMUP, SETTINGS
from ..search.steps import DEFAULT_SETTING


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a dynamic-routing net under a FLOPs budget (or a static net with --arch)",
        description="Train the dynamic-routing supernet of a space preset under a body-FLOPs budget "
        "(budget loss lambda*(mean over the batch of body FLOPs/all-open body FLOPs - mu)^2, off for the first "
        "warm-up fraction of training, then ramped up). --setting A|B|C|raw takes lambda, mu and the gate "
        "resolution of the released configs (default C; explicit flags override them). Settings not given "
        "when resuming are taken from the run folder.",
    )
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (created; holds manifest, history, checkpoints)")
    p.add_argument("--config", default=None, metavar="FILE|NAME",
                   help="settings from a YAML file (`routespace config dump RUN` writes one) or a bundled config "
                   "(`routespace config list`); explicit flags override it")
    p.add_argument("--preset", choices=("tiny", "paper"), default=None, help="space preset and its training defaults (default tiny)")
    p.add_argument("--arch", default=None, metavar="SPEC",
                   help="train a static net instead: an architecture spec JSON file or a classic name (e.g. unet)")
    b = p.add_argument_group("budget (dynamic net)")
    b.add_argument("--setting", default=None, metavar="NAME",
                   help="released setting: " + "; ".join(s.description for s in SETTINGS.values()) + f" (default {DEFAULT_SETTING})")
    b.add_argument("--budget-mode", default=None, metavar="MODE",
                   help="paper: the released soft loss on expected FLOPs, fixed lambda; realised: a Lagrangian term "
                   "lambda*(r-mu) on the FLOPs that really run, dual lambda, its gradient on the gate heads only "
                   f"and clipped apart from the cross-entropy's (default {DEFAULT_BUDGET_MODE})")
    b.add_argument("--gate-resolution", default=None, metavar="RES",
                   help="full, or quarter (the small gate: input bilinearly scaled by 0.25); default from the setting")
    b.add_argument("--budget-mu", type=float, default=None, metavar="MU", help="target body FLOPs as a fraction of the all-open body, in (0, 1] (default from the setting)")
    b.add_argument("--budget-gflops", type=float, default=None, metavar="G",
                   help="target total GFLOPs at the validation size (--val-size), converted to mu (stem, decoder and gates "
                   "counted at their all-open cost)")
    b.add_argument("--budget-lambda", type=float, default=None, metavar="LAMBDA", help="weight of the budget loss (default from the setting)")
    b.add_argument("--budget-warmup", type=float, default=None, metavar="FRAC", help=f"fraction of training before the budget loss starts (default {DEFAULT_WARMUP})")
    b.add_argument("--budget-ramp", type=float, default=None, metavar="FRAC", help=f"fraction of training over which it ramps to full lambda (default {DEFAULT_RAMP})")
    b.add_argument("--budget-anneal", type=float, default=None, metavar="FRAC",
                   help="realised mode: the target falls linearly from the ratio at switch-on to mu over this fraction of "
                   f"training, lambda rising from 0 by dual ascent (default {DEFAULT_ANNEAL}; 0: the target is mu at once)")
    b.add_argument("--no-budget", action="store_true", help="train without the budget loss")
    b.add_argument("--sampling", default=None, choices=("gates", "uniform"),
                   help="gates: the dynamic net's own soft gates (default); uniform: a uniformly drawn single path "
                   "per image and step (SPOS), a supernet for one-shot search scoring (no budget)")
    b.add_argument("--skip-closed", action="store_true",
                   help="training leaves out cells, edges and gate heads closed for every image of the batch (faster under "
                   "a budget; exact forward values, but a gate closed for the whole batch then gets no cross-entropy "
                   "gradient that step, only the budget's: see DynamicNet.forward); kept on resume")
    b.add_argument("--fixed-lambda", action="store_true",
                   help="keep lambda fixed in realised mode (default there: adaptive, raised while the realised FLOPs are "
                   "above the target; paper mode always keeps it fixed)")
    d = p.add_argument_group("data")
    from ..evaluators.data_registry import data_help

    d.add_argument("--data", default=None, help=data_help())
    d.add_argument("--val-size", default=None, metavar="HxW",
                   help="validation size used by `routespace evaluate` (default: synthetic data at the training size, "
                   "real data at the preset's input size, e.g. 1024x2048)")
    d.add_argument("--size", default=None, metavar="HxW", help="training crop HxW, multiples of 32 (default: paper 768x768, tiny 64x64)")
    t = p.add_argument_group("optimisation (defaults from the preset)")
    t.add_argument("--steps", type=int, default=None, metavar="N", help="optimisation steps (tiny 1500, paper 190000)")
    t.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per step and process (8)")
    t.add_argument("--lr", type=float, default=None, help="base learning rate, poly-decayed (tiny 3e-3 AdamW, paper 0.05 SGD)")
    t.add_argument("--optimizer", choices=("sgd", "adamw"), default=None)
    t.add_argument("--weight-decay", type=float, default=None, metavar="WD", help="(1e-4)")
    t.add_argument("--warmup-steps", type=int, default=None, metavar="N", help="linear lr warm-up steps")
    t.add_argument("--grad-clip", type=float, default=None, metavar="NORM", help="max gradient norm, 0 = off")
    t.add_argument("--gate-lr-mult", type=float, default=None, metavar="X", help="lr multiplier for the gate heads")
    t.add_argument("--drop-path", type=float, default=None, metavar="P", help="final scheduled drop-path rate on the cell branch")
    t.add_argument("--seed", type=int, default=None, help="seeds init, data order and every RNG (0)")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="steps between checkpoints (default: about 20 per run)")
    t.add_argument("--num-workers", type=int, default=None, metavar="N", help="data loader worker processes (default 0)")
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events (default: RUN/tb/ when "
                   "tensorboard is installed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config is not None:  # the file's settings become the defaults of the flags not given
        from .config_cmd import apply_config

        apply_config(args)
    from ..search.steps import TrainRequest, train_run
    from .threads import announce

    request = TrainRequest.from_args(args)
    request.check()
    outcome = train_run(request, command=shlex.join(["routespace", "train", *_argv(args)]),
                        on_start=lambda: announce(args))
    print(outcome.summary(args.out))
    print(f"run folder: {args.out}  (final checkpoint {outcome.result.checkpoint})")
    print(f"next: routespace evaluate {shlex.quote(str(args.out))}")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    import sys

    try:
        i = sys.argv.index("train")
        return sys.argv[i + 1:]
    except ValueError:
        return ["--out", str(args.out)]
