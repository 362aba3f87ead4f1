"""The run-folder steps a user runs by hand, as functions: ``train_run`` (`routespace train`),
``extract_common`` (`routespace extract`) and ``evaluate_run`` (`routespace evaluate`).

The CLI commands are thin layers over these, and ``search.compare`` composes them, so a comparison's row
is the same run folder a user would get from the same `train` command (same manifest, run record and
weights), and ``extract``, ``show`` and ``evaluate`` work on it as on any other run.

``TrainRequest`` is the typed form of `routespace train`'s options: ``None`` means "not given" (the
preset's default, or the run folder's value when resuming); ``train`` holds ``TrainConfig`` overrides.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..evaluators.runrecord import SCHEMA, BudgetRecord, RunSettings
from ..evaluators.evalrecord import Evaluation
from ..spaces.errors import RoutespaceError
from ..spaces.layout import GATE_RESOLUTIONS
from .dynamic.settings import DEFAULT_ANNEAL, DEFAULT_BUDGET_MODE, DEFAULT_RAMP, DEFAULT_WARMUP, SETTINGS, setting

DEFAULT_SETTING = "C"  # budgeted runs without --setting; --no-budget alone means 'raw'
# Training crop per preset when no size is given (else the space's input size): the paper's 768x768.
TRAIN_SIZES = {"paper": (768, 768)}
_BUDGET_FIELDS = ("budget_mu", "budget_gflops", "budget_lambda", "budget_warmup", "budget_ramp", "budget_mode",
                  "budget_anneal")


@dataclass(frozen=True)
class TrainRequest:
    """One `routespace train` invocation (the flag of each field is ``--field-name``)."""

    out: str
    preset: str | None = None
    arch: str | dict | None = None  # classic name, spec file, or a spec mapping (a config file's)
    setting: str | None = None
    budget_mode: str | None = None
    gate_resolution: str | None = None
    budget_mu: float | None = None
    budget_gflops: float | None = None
    budget_lambda: float | None = None
    budget_warmup: float | None = None
    budget_ramp: float | None = None
    budget_anneal: float | None = None
    no_budget: bool = False
    fixed_lambda: bool = False
    sampling: str | None = None
    skip_closed: bool = False
    data: str | None = None
    size: str | tuple[int, int] | None = None
    val_size: str | tuple[int, int] | None = None
    train: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig overrides (steps, seed, lr, ...)
    resume: bool = False
    tensorboard: bool = True

    @classmethod
    def from_args(cls, args: Any) -> "TrainRequest":
        """The request of parsed `routespace train` arguments (after ``--config`` filled them in)."""
        from ..evaluators.train import TrainConfig

        names = {f.name for f in dataclasses.fields(cls)} - {"train", "tensorboard"}
        values = {n: getattr(args, n, None) for n in names}
        values["no_budget"] = bool(values["no_budget"])
        values["fixed_lambda"] = bool(values["fixed_lambda"])
        values["resume"] = bool(values["resume"])
        values["skip_closed"] = bool(values["skip_closed"])
        train = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None}
        return cls(**values, train=train, tensorboard=not getattr(args, "no_tensorboard", False))

    def budget_given(self) -> list[str]:
        return [f for f in _BUDGET_FIELDS if getattr(self, f) is not None]

    def check(self) -> None:
        """Flag combinations and ranges, checked before anything is read or written."""
        from .dynamic.budget import check_mu
        from .dynamic.settings import check_budget_mode

        if self.setting is not None:
            setting(self.setting)
        if self.budget_mode is not None:
            check_budget_mode(self.budget_mode)
        if self.gate_resolution is not None and self.gate_resolution not in GATE_RESOLUTIONS:
            raise RoutespaceError(f"unknown gate resolution {self.gate_resolution!r}: choose one of {', '.join(GATE_RESOLUTIONS)}")
        given = self.budget_given()
        if self.no_budget and given:
            raise RoutespaceError(f"--no-budget conflicts with --{given[0].replace('_', '-')}: give one or the other")
        if self.setting is not None and self.no_budget:
            raise RoutespaceError(f"--no-budget conflicts with --setting {self.setting}: use --setting raw for a net without budget")
        if self.setting == "raw" and given:
            raise RoutespaceError(f"--setting raw has no budget, so --{given[0].replace('_', '-')} is ambiguous: "
                                  "use --setting A, B or C (or no setting) with budget flags")
        if self.sampling == "uniform" and (given or (self.setting and self.setting != "raw")):
            raise RoutespaceError("--sampling uniform trains without a budget: leave out the budget flags and --setting")
        if self.arch and (given or self.no_budget or self.setting or self.gate_resolution or self.sampling or self.skip_closed):
            raise RoutespaceError("budget, setting and gate flags apply to the dynamic net only: leave them out with --arch")
        if self.skip_closed and self.sampling == "uniform":
            raise RoutespaceError("--skip-closed applies to the gated dynamic net: leave it out with --sampling uniform")
        if self.budget_mu is not None and self.budget_gflops is not None:
            raise RoutespaceError("give either --budget-mu or --budget-gflops, not both")
        if self.budget_mu is not None:
            check_mu(self.budget_mu)
        if self.budget_gflops is not None and not self.budget_gflops > 0:
            raise RoutespaceError(f"--budget-gflops must be positive, got {self.budget_gflops}")
        if self.budget_lambda is not None and not self.budget_lambda >= 0:
            raise RoutespaceError(f"--budget-lambda must be >= 0, got {self.budget_lambda}")
        for flag in ("budget_warmup", "budget_ramp", "budget_anneal"):
            v = getattr(self, flag)
            if v is not None and not 0 <= v <= 1:
                raise RoutespaceError(f"--{flag.replace('_', '-')} is a fraction of training in [0, 1], got {v}")


@dataclass(frozen=True)
class TrainOutcome:
    """What ``train_run`` did: the training result and the run's record."""

    result: Any  # evaluators.train.TrainResult
    settings: RunSettings
    arch: Any  # the static Architecture, or None for the dynamic net

    def summary(self, out: str) -> str:
        s, r = self.settings, self.result
        if self.arch is not None:
            what, btxt = f"static net {self.arch.name or 'spec'}", "static"
        else:
            b = s.budget
            what = f"dynamic net ({s.preset})"
            btxt = ("no budget" if b is None else f"setting {b.setting}, {b.mode} budget mu {b.mu:.3g} lambda {b.lam:g}")
            btxt += f", {s.gate_resolution} gate"
        if r.steps - r.start_step:
            return (f"trained {what}, {btxt}: steps {r.start_step}->{r.steps} in {r.seconds:.1f} s "
                    f"({r.seconds_per_step:.3f} s/step, {r.device}, {r.world_size} process(es)); final loss {r.final_loss:.4f}")
        return f"run {out} was already complete ({r.steps} steps)"


def _pick(explicit, previous, default):
    return explicit if explicit is not None else (previous if previous is not None else default)


def _previous(req: TrainRequest) -> tuple[RunSettings | None, dict]:
    """The record and TrainConfig of the run being resumed (None, {} for a new run)."""
    from ..evaluators.runfolder import read_manifest

    if not req.resume:
        return None, {}
    out = Path(req.out)
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None:
        raise RoutespaceError(f"nothing to resume in {out}: no run manifest there (start the run without --resume)")
    return RunSettings.of(manifest, str(out)), dict(manifest.get("config") or {})


def _setting_name(req: TrainRequest, prev: RunSettings | None) -> str:
    if req.setting is not None:
        return req.setting
    if (req.sampling or (prev and prev.sampling)) == "uniform":
        return "raw"
    if prev is not None and prev.setting:
        return prev.setting
    if req.no_budget or (prev is not None and prev.budget is None):
        return "raw"
    return DEFAULT_SETTING


def _budget(req: TrainRequest, prev: RunSettings | None, space, size, gate_resolution: str) -> BudgetRecord | None:
    """The budget of a dynamic run: its setting's values, explicit flags on top, the run folder's when resuming."""
    from .dynamic.budget import mu_for_gflops

    named = setting(_setting_name(req, prev))
    if not named.budgeted and not req.budget_given():
        return None
    old = prev.budget if prev is not None else None
    gflops = req.budget_gflops if req.budget_mu is None else None
    if req.budget_mu is None and req.budget_gflops is None and old is not None:
        gflops = old.gflops
    default_mu = named.mu if named.mu is not None else SETTINGS[DEFAULT_SETTING].mu
    default_lam = named.lam if named.lam is not None else SETTINGS[DEFAULT_SETTING].lam
    mode = _pick(req.budget_mode, old and old.mode, DEFAULT_BUDGET_MODE)
    mu = (mu_for_gflops(space, size, gflops, gate_resolution) if gflops is not None
          else _pick(req.budget_mu, old and old.mu, default_mu))
    adaptive = old.adaptive if old is not None else (mode == "realised" and not req.fixed_lambda)
    default_anneal = DEFAULT_ANNEAL if mode == "realised" and adaptive else 0.0
    anneal = _pick(req.budget_anneal, old.anneal if old is not None else None, default_anneal)
    if anneal and not (mode == "realised" and adaptive):
        raise RoutespaceError("--budget-anneal applies to the realised mode with its adaptive lambda only: "
                              "leave it out with --budget-mode paper or --fixed-lambda")
    return BudgetRecord(setting=named.name, mode=mode, mu=mu, gflops=gflops,
                        lam=_pick(req.budget_lambda, old and old.lam, default_lam),
                        warmup=_pick(req.budget_warmup, old and old.warmup, DEFAULT_WARMUP),
                        ramp=_pick(req.budget_ramp, old and old.ramp, DEFAULT_RAMP), adaptive=adaptive, anneal=anneal)


def load_arch(text: str | dict, space):
    """A static architecture from a classic name, a spec file or a spec mapping, for ``space``'s classes."""
    from ..spaces.architecture import Architecture, load_architecture
    from ..spaces.classics import CLASSICS, classic

    if isinstance(text, Mapping):  # a spec mapping from a config file
        arch = Architecture.from_dict(dict(text))
    elif text in CLASSICS:
        return classic(text, space)
    elif not Path(text).is_file():
        raise RoutespaceError(f"--arch {text!r} is neither a spec file nor a classic ({', '.join(CLASSICS)})")
    else:
        arch = load_architecture(text)
    if arch.space.num_classes != space.num_classes:
        raise RoutespaceError(
            f"spec {'of the config' if isinstance(text, Mapping) else text} predicts {arch.space.num_classes} classes but the data set has {space.num_classes}"
        )
    return arch


def _as_size(value) -> tuple[int, int] | None:
    from ..spaces.space import parse_size

    if value is None:
        return None
    return parse_size(value) if isinstance(value, str) else (int(value[0]), int(value[1]))


def train_run(request: TrainRequest, *, command: str | None = None, progress: bool = True,
              on_start: Callable[[], None] | None = None) -> TrainOutcome:
    """Train (or resume) the run ``request.out`` exactly as `routespace train` with those options does.

    ``command`` is recorded in the manifest (the CLI passes its command line; the library never reads
    ``sys.argv``)."""
    import shlex

    request.check()
    import torch

    from ..evaluators.datasets import load_dataset
    from ..evaluators.memory import check_training_memory
    from ..evaluators.train import TrainConfig, fit, preset_config
    from ..spaces.architecture import Architecture
    from ..spaces.space import preset
    from .dynamic.budget import make_budget_loss

    req = request
    prev, prev_cfg = _previous(req)
    preset_name = _pick(req.preset, prev and prev.preset, "tiny")
    space = preset(preset_name)
    data = _pick(req.data, prev and prev.data, "synthetic")
    size = _as_size(req.size) or (prev and prev.size) or tuple(TRAIN_SIZES.get(preset_name, space.input_size))
    default_val = size if data.startswith("synthetic") else tuple(space.input_size)
    val_size = _as_size(req.val_size) or (prev and prev.val_size) or default_val
    train_set = load_dataset(data, "train", size=size)
    load_dataset(data, "val", size=val_size)  # a missing val split should fail now, not after training
    classes = getattr(train_set, "num_classes", space.num_classes)
    if classes != space.num_classes:
        space = dataclasses.replace(space, num_classes=classes)
    arch = None
    if req.arch is None and prev is not None and prev.arch:
        arch = Architecture.from_dict(prev.arch)
    elif req.arch is not None:
        arch = load_arch(req.arch, space)
    setting_name = gate_resolution = sampling = budget = None
    skip_closed = False
    if arch is None:
        setting_name = _setting_name(req, prev)
        gate_resolution = _pick(req.gate_resolution, prev and prev.gate_resolution, setting(setting_name).gate_resolution)
        sampling = _pick(req.sampling, prev and prev.sampling, "gates")
        budget = _budget(req, prev, space, val_size, gate_resolution)  # GFLOPs as `routespace evaluate` reports them
        skip_closed = req.skip_closed or bool(prev and prev.skip_closed)

    # every TrainConfig field: the request's, and those only a config file sets (momentum, poly_power, keep_checkpoints)
    overrides = {f.name: _pick(req.train.get(f.name), prev_cfg.get(f.name), None) for f in dataclasses.fields(TrainConfig)}
    config = preset_config(preset_name, **overrides)
    if req.train.get("checkpoint_every") is None and "checkpoint_every" not in prev_cfg:
        config = dataclasses.replace(config, checkpoint_every=max(1, config.steps // 20))

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

        if sampling == "uniform":
            from .dynamic.sampling import UniformPathNet

            model = UniformPathNet(space, gate_resolution=gate_resolution)
        else:
            model = DynamicNet(space, gate_resolution=gate_resolution, skip_closed=skip_closed)
        kind, spec = "dynamic", model.spec()
    extra_loss = None
    if budget is not None:
        extra_loss = make_budget_loss(space, size, budget.mu, budget.lam, budget.mode, budget.warmup, budget.ramp,
                                      adaptive=budget.adaptive, anneal=budget.anneal)
    record = RunSettings(preset=preset_name, data=data, size=tuple(size), val_size=tuple(val_size), budget=budget,
                         arch=arch.to_dict() if arch is not None else None, setting=setting_name,
                         gate_resolution=gate_resolution, sampling=sampling, skip_closed=skip_closed,
                         schema=prev.schema if prev is not None else SCHEMA)
    meta = {
        "kind": kind, "spec": spec, "extra": record.extra(),
        "command": command or f"routespace.search.steps.train_run(out={str(req.out)!r}, ...)",
        "resume_command": shlex.join(["routespace", "train", "--out", str(req.out), "--resume"]),
    }
    result = fit(model, train_set, config, out_dir=req.out, extra_loss=extra_loss, resume=req.resume, meta=meta,
                 on_start=on_start, tensorboard=req.tensorboard, progress=progress)
    return TrainOutcome(result, record, arch)


def run_state(run: str | Path) -> str:
    """'absent' (no run there), 'done' (finished, final checkpoint present) or 'partial' (resumable)."""
    from ..evaluators import runfolder

    run = Path(run)
    manifest = runfolder.read_manifest(run) if run.is_dir() else None
    if manifest is None:
        return "absent"
    if manifest.get("status") == "done" and runfolder.final_checkpoint_path(run).is_file():
        return "done"
    return "partial"


def _run_record(run: Path) -> tuple[Any, dict, RunSettings]:
    from ..evaluators.evaluate import load_run_model

    model, manifest, state = load_run_model(run)
    return model, manifest, RunSettings.of(manifest, str(run))


def extract_common(run: str | Path, output: str | Path, tau: float = 0.5, threshold: float = 1e-4,
                   data: str | None = None, images: int | None = None, name: str | None = None):
    """`routespace extract`: the Common architecture of a dynamic run's routes over its validation split
    (the run's data and size unless ``data`` is given), written to ``output`` with its edge frequencies
    beside it (``*.freq.json``). Returns (architecture, frequencies, size)."""
    from ..evaluators import runfolder
    from ..evaluators.datasets import load_dataset
    from ..spaces.fileio import write_json_atomic, write_text_atomic
    from .dynamic.common import common_architecture, edge_frequencies

    if isinstance(tau, bool) or not 0 < tau <= 1:
        raise RoutespaceError(f"--tau must be in (0, 1], got {tau}: it is the fraction of images an edge must be open on")
    if not 0 <= threshold < 1:
        raise RoutespaceError(f"--threshold must be in [0, 1), got {threshold}")
    run_dir = Path(run)
    manifest = runfolder.read_manifest(run_dir) if run_dir.is_dir() else None
    if manifest is None:
        raise RoutespaceError(f"{run_dir} is not a training run folder: give the --out folder of `routespace train`")
    if manifest.get("kind") != "dynamic":
        raise RoutespaceError(f"{run_dir} holds a {manifest.get('kind')} net, not a dynamic one: extraction needs a dynamic-routing run")
    out = Path(output)
    if not out.parent.exists():
        raise RoutespaceError(f"cannot write {out}: folder {out.parent} does not exist")
    model, manifest, record = _run_record(run_dir)
    size = record.size or tuple(model.space.input_size)
    val = load_dataset(data or record.data, "val", size=size)
    freqs = edge_frequencies(model, val, threshold=threshold, max_images=images)
    arch = common_architecture(freqs, tau, name=name or f"common-{run_dir.name}")
    write_json_atomic(out.with_suffix(".freq.json"), freqs.to_dict())
    write_text_atomic(out, arch.to_json())
    return arch, freqs, size


def evaluate_run(run: str | Path, *, data: str | None = None, size: tuple[int, int] | None = None,
                 checkpoint: str | None = None, batch_size: int = 8, device: str = "auto", latency_repeats: int = 10,
                 latency_images: int = 4, max_images: int | None = None, tensorboard: bool = True,
                 write: bool = True, on_start: Callable[[], None] | None = None) -> Evaluation:
    """`routespace evaluate`: mIoU, GFLOPs (realised per image for dynamic nets) and latency of a run on
    its validation split (the run's data and validation size unless given). ``write``: keep the result
    as ``RUN/evaluation.json`` (final checkpoint only, like the TensorBoard events)."""
    import torch

    from ..evaluators.datasets import load_dataset
    from ..evaluators.evaluate import evaluate, load_run_model
    from ..evaluators.tensorboard import open_writer
    from ..spaces.fileio import write_json_atomic

    if batch_size < 1 or latency_repeats < 0 or latency_images < 1:
        raise RoutespaceError("--batch-size and --latency-images must be >= 1, --latency-repeats >= 0")
    model, manifest, state = load_run_model(run, checkpoint)
    record = RunSettings.of(manifest, str(run))
    data = data or record.data
    val_set = load_dataset(data, "val", size=size or record.eval_size())
    if max_images is not None:
        n = min(len(val_set), max_images)
        val_set = torch.utils.data.Subset(val_set, range(n))
        val_set.num_classes = getattr(val_set.dataset, "num_classes", None)  # type: ignore[attr-defined]
    writer = open_writer(run, enabled=tensorboard and write and not checkpoint)
    step = int(state["step"])
    with writer:
        if on_start is not None:
            on_start()
        result = evaluate(model, val_set, batch_size=batch_size, device=device, latency_repeats=latency_repeats,
                          latency_images=latency_images, writer=writer, step=step)
        if writer.enabled and manifest.get("kind") == "dynamic":
            from ..evaluators.plots.show import show
            from ..evaluators.tensorboard import figure_to_chw

            writer.image("eval/routes", figure_to_chw(show(run, what="routes")), step)
    result = result.with_run(str(run), manifest.get("kind"), data, step,
                             record.budget.to_dict() if record.budget is not None else None)
    if write and not checkpoint:
        write_json_atomic(Path(run) / "evaluation.json", result.to_dict())
    return result
