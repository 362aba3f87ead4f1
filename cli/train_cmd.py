"""`routespace train`: train the dynamic-routing supernet (or, with --arch, a static net) into a run folder."""
from __future__ import annotations

import argparse
import os
import dataclasses
import shlex
from pathlib import Path

from ..search.dynamic.settings import (
    BUDGET_MODES, DEFAULT_BUDGET_MODE, DEFAULT_RAMP, DEFAULT_WARMUP, SETTINGS, setting,
)
from ..spaces.errors import RoutespaceError
from ..spaces.layout import GATE_RESOLUTIONS

DEFAULT_SETTING = "C"  # budgeted runs without --setting; --no-budget alone means 'raw'
# Training crop per preset when --size is not given (else the space's input size): the paper's 768x768.
TRAIN_SIZES = {"paper": (768, 768)}


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
                   help="paper: the released soft loss on expected FLOPs, fixed lambda; realised: the same on the FLOPs "
                   f"that really run, adaptive lambda, so mu holds on what runs (default {DEFAULT_BUDGET_MODE})")
    b.add_argument("--gate-resolution", default=None, metavar="RES",
                   help="full, or quarter (the small gate: input bilinearly scaled by 0.25); default from the setting")
    b.add_argument("--budget-mu", type=float, default=None, metavar="MU", help="target body FLOPs as a fraction of the all-open body, in (0, 1] (default from the setting)")
    b.add_argument("--budget-gflops", type=float, default=None, metavar="G",
                   help="target total GFLOPs at the validation size (--val-size), converted to mu (stem, decoder and gates "
                   "counted at their all-open cost)")
    b.add_argument("--budget-lambda", type=float, default=None, metavar="LAMBDA", help="weight of the budget loss (default from the setting)")
    b.add_argument("--budget-warmup", type=float, default=None, metavar="FRAC", help=f"fraction of training before the budget loss starts (default {DEFAULT_WARMUP})")
    b.add_argument("--budget-ramp", type=float, default=None, metavar="FRAC", help=f"fraction of training over which it ramps to full lambda (default {DEFAULT_RAMP})")
    b.add_argument("--no-budget", action="store_true", help="train without the budget loss")
    b.add_argument("--sampling", default=None, choices=("gates", "uniform"),
                   help="gates: the dynamic net's own soft gates (default); uniform: a uniformly drawn single path "
                   "per image and step (SPOS), a supernet for one-shot search scoring (no budget)")
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


_BUDGET_FLAGS = ("budget_mu", "budget_gflops", "budget_lambda", "budget_warmup", "budget_ramp", "budget_mode")


def _check_flags(args: argparse.Namespace) -> None:
    """Flag combinations and ranges, checked before anything is read or written."""
    from ..search.dynamic.budget import check_mu
    from ..search.dynamic.settings import check_budget_mode

    if args.setting is not None:
        setting(args.setting)
    if args.budget_mode is not None:
        check_budget_mode(args.budget_mode)
    if args.gate_resolution is not None and args.gate_resolution not in GATE_RESOLUTIONS:
        raise RoutespaceError(f"unknown gate resolution {args.gate_resolution!r}: choose one of {', '.join(GATE_RESOLUTIONS)}")
    budget_given = [f for f in _BUDGET_FLAGS if getattr(args, f) is not None]
    if args.no_budget and budget_given:
        raise RoutespaceError(f"--no-budget conflicts with --{budget_given[0].replace('_', '-')}: give one or the other")
    if args.setting is not None and args.no_budget:
        raise RoutespaceError(f"--no-budget conflicts with --setting {args.setting}: use --setting raw for a net without budget")
    if args.setting == "raw" and budget_given:
        raise RoutespaceError(f"--setting raw has no budget, so --{budget_given[0].replace('_', '-')} is ambiguous: "
                              "use --setting A, B or C (or no setting) with budget flags")
    if args.sampling == "uniform" and (budget_given or (args.setting and args.setting != "raw")):
        raise RoutespaceError("--sampling uniform trains without a budget: leave out the budget flags and --setting")
    if args.arch and (budget_given or args.no_budget or args.setting or args.gate_resolution or args.sampling):
        raise RoutespaceError("budget, setting and gate flags apply to the dynamic net only: leave them out with --arch")
    if args.budget_mu is not None and args.budget_gflops is not None:
        raise RoutespaceError("give either --budget-mu or --budget-gflops, not both")
    if args.budget_mu is not None:
        check_mu(args.budget_mu)
    if args.budget_gflops is not None and not args.budget_gflops > 0:
        raise RoutespaceError(f"--budget-gflops must be positive, got {args.budget_gflops}")
    if args.budget_lambda is not None and not args.budget_lambda >= 0:
        raise RoutespaceError(f"--budget-lambda must be >= 0, got {args.budget_lambda}")
    for flag in ("budget_warmup", "budget_ramp"):
        v = getattr(args, flag)
        if v is not None and not 0 <= v <= 1:
            raise RoutespaceError(f"--{flag.replace('_', '-')} is a fraction of training in [0, 1], got {v}")


def _previous(args: argparse.Namespace) -> dict:
    """The settings of the run being resumed (empty for a new run)."""
    from ..evaluators.runfolder import read_manifest

    if not args.resume:
        return {}
    out = Path(args.out)
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None:
        raise RoutespaceError(f"nothing to resume in {out}: no run manifest there (start the run without --resume)")
    cli = dict(manifest.get("extra", {}).get("cli", {}))
    cli["config"] = manifest.get("config", {})
    return cli


def _pick(explicit, previous, default):
    return explicit if explicit is not None else (previous if previous is not None else default)


def _setting_name(args: argparse.Namespace, prev: dict) -> str:
    if args.setting is not None:
        return args.setting
    if (args.sampling or prev.get("sampling")) == "uniform":
        return "raw"
    if prev.get("setting"):
        return prev["setting"]
    if args.no_budget or (prev and prev.get("budget", "unset") is None):
        return "raw"
    return DEFAULT_SETTING


def _budget(args: argparse.Namespace, prev: dict, space, size, gate_resolution: str) -> dict | None:
    """The budget of a dynamic run: its setting's values, explicit flags on top, the run folder's when resuming."""
    from ..search.dynamic.budget import mu_for_gflops

    if args.arch or prev.get("arch"):
        return None
    named = setting(_setting_name(args, prev))
    explicit = any(getattr(args, f) is not None for f in _BUDGET_FLAGS)
    old = prev.get("budget")
    if not named.budgeted and not explicit:
        return None
    old = old if isinstance(old, dict) else {}
    gflops = args.budget_gflops if args.budget_mu is None else None
    if args.budget_mu is None and args.budget_gflops is None:
        gflops = old.get("gflops")
    default_mu = named.mu if named.mu is not None else SETTINGS[DEFAULT_SETTING].mu
    default_lam = named.lam if named.lam is not None else SETTINGS[DEFAULT_SETTING].lam
    mode = _pick(args.budget_mode, old.get("mode"), DEFAULT_BUDGET_MODE)
    mu = mu_for_gflops(space, size, gflops, gate_resolution) if gflops is not None else _pick(args.budget_mu, old.get("mu"), default_mu)
    adaptive = old.get("adaptive") if old else (mode == "realised" and not args.fixed_lambda)
    return {
        "setting": named.name,
        "mode": mode,
        "mu": mu,
        "gflops": gflops,
        "lambda": _pick(args.budget_lambda, old.get("lambda"), default_lam),
        "warmup": _pick(args.budget_warmup, old.get("warmup"), DEFAULT_WARMUP),
        "ramp": _pick(args.budget_ramp, old.get("ramp"), DEFAULT_RAMP),
        "adaptive": adaptive,
    }


def _load_arch(text: str | dict, space):
    from ..spaces.architecture import Architecture, load_architecture
    from ..spaces.classics import CLASSICS, classic

    if isinstance(text, dict):  # a spec mapping from a config file
        arch = Architecture.from_dict(text)
    elif text in CLASSICS:
        return classic(text, space)
    elif not Path(text).is_file():
        raise RoutespaceError(f"--arch {text!r} is neither a spec file nor a classic ({', '.join(CLASSICS)})")
    else:
        arch = load_architecture(text)
    if arch.space.num_classes != space.num_classes:
        raise RoutespaceError(
            f"spec {'of the config' if isinstance(text, dict) else text} predicts {arch.space.num_classes} classes but the data set has {space.num_classes}"
        )
    return arch


def run(args: argparse.Namespace) -> int:
    if args.config is not None:  # the file's settings become the defaults of the flags not given
        from .config_cmd import apply_config

        apply_config(args)
    _check_flags(args)
    import torch

    from ..evaluators.datasets import load_dataset
    from ..evaluators.train import TrainConfig, fit, preset_config
    from ..search.dynamic.budget import make_budget_loss
    from ..spaces.architecture import Architecture
    from ..spaces.space import parse_size, preset

    prev = _previous(args)
    preset_name = _pick(args.preset, prev.get("preset"), "tiny")
    space = preset(preset_name)
    data = _pick(args.data, prev.get("data"), "synthetic")
    size = parse_size(args.size) if args.size else tuple(prev.get("size") or TRAIN_SIZES.get(preset_name, space.input_size))
    default_val = size if data.startswith("synthetic") else space.input_size
    val_size = parse_size(args.val_size) if args.val_size else tuple(prev.get("val_size") or default_val)
    train_set = load_dataset(data, "train", size=size)
    load_dataset(data, "val", size=val_size)  # a missing val split should fail now, not after training
    classes = getattr(train_set, "num_classes", space.num_classes)
    if classes != space.num_classes:
        space = dataclasses.replace(space, num_classes=classes)
    arch_text = args.arch
    arch = None
    if arch_text is None and prev.get("arch"):
        arch = Architecture.from_dict(prev["arch"])
    elif arch_text is not None:
        arch = _load_arch(arch_text, space)
    setting_name = None if arch is not None else _setting_name(args, prev)
    gate_resolution = None
    if arch is None:
        gate_resolution = _pick(args.gate_resolution, prev.get("gate_resolution"), setting(setting_name).gate_resolution)
    budget = _budget(args, prev, space, val_size, gate_resolution)  # GFLOPs as `routespace evaluate` reports them

    prev_cfg = prev.get("config", {})
    # every TrainConfig field: the flags, and those only a config file sets (momentum, poly_power, keep_checkpoints)
    overrides = {f.name: _pick(getattr(args, f.name, None), prev_cfg.get(f.name), None)
                 for f in dataclasses.fields(TrainConfig)}
    config = preset_config(preset_name, **overrides)
    if args.checkpoint_every is None and "checkpoint_every" not in prev_cfg:
        config = dataclasses.replace(config, checkpoint_every=max(1, config.steps // 20))

    from ..evaluators.memory import check_training_memory

    check_training_memory(arch if arch is not None else space, config.batch_size, size, dynamic=arch is None,
                          optimizer=config.optimizer, device="cuda" if config.device.startswith("cuda") else "cpu",
                          what=f"training the {'static' if arch is not None else 'dynamic'} net at batch {config.batch_size}, {size[0]}x{size[1]}",
                          processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                          advice="lower --batch-size or --size, or use --preset tiny")
    torch.manual_seed(config.seed)
    if arch is not None:
        from ..spaces.builder import build

        model = build(arch)
        kind, spec = "static", {"architecture": arch.to_dict()}
    else:
        from ..spaces.supernet import DynamicNet

        sampling = _pick(args.sampling, prev.get("sampling"), "gates")
        if sampling == "uniform":
            from ..search.dynamic.sampling import UniformPathNet

            model = UniformPathNet(space, gate_resolution=gate_resolution)
        else:
            model = DynamicNet(space, gate_resolution=gate_resolution)
        kind, spec = "dynamic", model.spec()
    extra_loss = None
    if budget is not None:
        extra_loss = make_budget_loss(space, size, budget["mu"], budget["lambda"], budget["mode"], budget["warmup"],
                                      budget["ramp"], adaptive=budget["adaptive"])
    cli = {"preset": preset_name, "data": data, "size": list(size), "val_size": list(val_size), "budget": budget,
           "arch": arch.to_dict() if arch is not None else None, "setting": setting_name,
           "gate_resolution": gate_resolution, "sampling": None if arch is not None else sampling}
    meta = {
        "kind": kind, "spec": spec, "extra": {"cli": cli},
        "command": shlex.join(["routespace", "train", *_argv(args)]),
        "resume_command": shlex.join(["routespace", "train", "--out", str(args.out), "--resume"]),
    }
    from .threads import announce

    result = fit(model, train_set, config, out_dir=args.out, extra_loss=extra_loss, resume=args.resume, meta=meta,
                 on_start=lambda: announce(args), tensorboard=not args.no_tensorboard)
    what = f"static net {arch.name or 'spec'}" if arch is not None else f"dynamic net ({preset_name})"
    btxt = ("no budget" if budget is None else
            f"setting {budget['setting']}, {budget['mode']} budget mu {budget['mu']:.3g} lambda {budget['lambda']:g}")
    if arch is None:
        btxt += f", {gate_resolution} gate"
    if arch is not None:
        btxt = "static"
    ran = result.steps - result.start_step
    print(f"trained {what}, {btxt}: steps {result.start_step}->{result.steps} in {result.seconds:.1f} s "
          f"({result.seconds_per_step:.3f} s/step, {result.device}, {result.world_size} process(es)); final loss {result.final_loss:.4f}"
          if ran else f"run {args.out} was already complete ({result.steps} steps)")
    print(f"run folder: {args.out}  (final checkpoint {result.checkpoint})")
    print(f"next: routespace evaluate {shlex.quote(str(args.out))}")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    import sys

    try:
        i = sys.argv.index("train")
        return sys.argv[i + 1:]
    except ValueError:
        return ["--out", str(args.out)]
