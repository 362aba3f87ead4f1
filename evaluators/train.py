"""A plain PyTorch training loop for any segmentation model: static nets, the dynamic supernet, proxies.

``fit(model, train_set, config)`` trains with cross-entropy (ignore index 255) plus an optional
``extra_loss(output, step, total_steps)``; the model may return logits or an object with ``.logits``.

Determinism: the data order is a pure function of ``(seed, step)`` (epoch ``e`` is a permutation
drawn from ``(seed, e)``; step ``k`` takes the ``k``-th global batch of it), so the sampler's position
is the step count, and a resumed run sees exactly the batches an uninterrupted run would. The global
RNG states (torch, CUDA, numpy, Python) go into every checkpoint.

Multi-process: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised (gloo on CPU,
nccl on CUDA), the model is wrapped in DDP (``find_unused_parameters=True``), each global batch is
split between the ranks, and only rank 0 writes files. ``batch_size`` is per process.

Signals: SIGINT/SIGTERM during ``fit`` stop the run at the end of the current step, write a
checkpoint, mark the run ``interrupted`` and raise :class:`RoutespaceError` with the resume command;
a second signal interrupts at once (``KeyboardInterrupt``). The previous handlers come back on exit.
"""
from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from routespace.spaces.errors import RoutespaceError
from routespace.spaces.fileio import write_json_atomic

from . import runfolder
from .checkpoint import capture_rng, load_model_state, load_newest_intact, restore_rng, save_checkpoint
from .schedule import drop_path_rate, lr_factor

IGNORE_INDEX = 255
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Everything that decides a training run's result (plus a few knobs that do not: ``num_workers``,
    ``device``, ``checkpoint_every``, ``keep_checkpoints``)."""

    steps: int = 1000
    batch_size: int = 8  # per process
    lr: float = 0.05
    optimizer: str = "sgd"  # 'sgd' (momentum, paper) or 'adamw'
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_steps: int = 0
    grad_clip: float = 5.0  # max global grad norm; 0 = off
    drop_path: float = 0.0  # final scheduled drop-path rate, for models that support it
    gate_lr_mult: float = 1.0  # lr multiplier for parameters whose name contains 'gate'
    seed: int = 0
    checkpoint_every: int = 0  # steps between periodic checkpoints; 0 = only the final one
    keep_checkpoints: int = 3  # periodic checkpoints kept (oldest deleted); 0 = keep all
    num_workers: int = 0
    device: str = "auto"  # 'auto', 'cpu', 'cuda' or 'cuda:N'

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise RoutespaceError(f"training setting {what}")

        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise RoutespaceError(f"training setting '{f.name}' must be an integer, got {value!r}")
            if f.type in ("float", float) and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise RoutespaceError(f"training setting '{f.name}' must be a finite number, got {value!r}")
        need(self.steps >= 1, f"'steps' must be at least 1, got {self.steps}")
        need(self.batch_size >= 1, f"'batch_size' must be at least 1, got {self.batch_size}")
        need(self.lr > 0, f"'lr' must be positive, got {self.lr}")
        need(self.optimizer in OPTIMIZERS, f"'optimizer' must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(0 <= self.momentum < 1, f"'momentum' must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, f"'weight_decay' must be >= 0, got {self.weight_decay}")
        need(self.poly_power >= 0, f"'poly_power' must be >= 0, got {self.poly_power}")
        need(self.warmup_steps >= 0, f"'warmup_steps' must be >= 0, got {self.warmup_steps}")
        need(self.grad_clip >= 0, f"'grad_clip' must be >= 0 (0 = off), got {self.grad_clip}")
        need(0 <= self.drop_path < 1, f"'drop_path' must be in [0, 1), got {self.drop_path}")
        need(self.gate_lr_mult >= 0, f"'gate_lr_mult' must be >= 0, got {self.gate_lr_mult}")
        need(self.checkpoint_every >= 0, f"'checkpoint_every' must be >= 0 (0 = only the final checkpoint), got {self.checkpoint_every}")
        need(self.keep_checkpoints >= 0, f"'keep_checkpoints' must be >= 0 (0 = keep all), got {self.keep_checkpoints}")
        need(self.num_workers >= 0, f"'num_workers' must be >= 0, got {self.num_workers}")
        need(
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
            f"'device' must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RoutespaceError(f"unknown training setting(s) {sorted(unknown)}: allowed are {sorted(known)}")
        return cls(**data)


# Defaults of `routespace train --preset NAME` (the dynamic supernet). paper: the released configs of Li et al.
# (github.com/yanwei-li/DynamicRouting: SGD lr 0.05, poly 0.9, batch 8, 190K iterations, grad clip 5, 768x768
# crops; warm-up 1000 is detectron2's default). tiny: sized so the default run takes minutes on 2 CPU cores;
# AdamW because SGD at lr 0.05 closed every gate for good within ~100 steps on this preset (relu(tanh) has
# no gradient once closed).
TRAIN_PRESETS: dict[str, dict] = {
    "paper": dict(steps=190_000, batch_size=8, lr=0.05, optimizer="sgd", warmup_steps=1000, grad_clip=5.0),
    # gate_lr_mult 10: Adam moves a gate bias (init 1.5) at most ~lr per step, less under poly decay, so
    # at lr 3e-3 the gates could not travel far enough to close and the budget was missed (measured).
    "tiny": dict(steps=1500, batch_size=8, lr=3e-3, optimizer="adamw", warmup_steps=50, grad_clip=5.0, gate_lr_mult=10.0),
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The training defaults of a space preset, with ``overrides`` (None values ignored)."""
    if name not in TRAIN_PRESETS:
        raise RoutespaceError(f"no training defaults for preset {name!r}: choose one of {', '.join(TRAIN_PRESETS)}")
    settings = dict(TRAIN_PRESETS[name])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(settings)


@dataclass
class TrainResult:
    """What :func:`fit` did. ``history`` holds one record per step (of this and earlier sessions)."""

    steps: int  # steps completed in total (== config.steps unless interrupted)
    start_step: int  # step this call started from (> 0 when resumed)
    seconds: float  # wall time of this call's training loop
    seconds_per_step: float  # mean over this call's steps (nan when none ran)
    final_loss: float
    device: str
    world_size: int
    out_dir: Path | None = None
    checkpoint: Path | None = None  # the final checkpoint
    history: list[dict] = field(default_factory=list)


# --- data order ------------------------------------------------------------------------------------
class SeededOrder:
    """The global batch order: epoch ``e`` is ``randperm(n)`` from a generator seeded by
    ``(seed, e)``; step ``k`` is global batch ``k mod steps_per_epoch`` of epoch
    ``k // steps_per_epoch`` (the incomplete tail of each epoch is dropped); rank ``r`` of ``w`` takes
    the ``r``-th of ``w`` equal slices of it (DistributedSampler-style sharding of one seeded order)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, world_size: int = 1, rank: int = 0) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.world_size, self.rank = world_size, rank
        self.global_batch = batch_size * world_size
        if num_items < self.global_batch:
            raise RoutespaceError(
                f"the training set has {num_items} images, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes): lower the batch size"
            )
        self.steps_per_epoch = num_items // self.global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=gen)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batches(self, step: int) -> Iterator[list[int]]:
        """This rank's index lists from ``step`` to the end of ``step``'s epoch."""
        epoch, first = divmod(step, self.steps_per_epoch)
        perm = self.permutation(epoch)
        for b in range(first, self.steps_per_epoch):
            start = b * self.global_batch + self.rank * self.batch_size
            yield perm[start:start + self.batch_size].tolist()

    def state(self, step: int) -> dict:
        return {
            "seed": self.seed, "position": step, "epoch": self.epoch_of(step),
            "batch_size": self.batch_size, "world_size": self.world_size, "num_items": self.num_items,
        }


class _Batches:
    """A batch sampler over one epoch's remainder (DataLoader needs an object with ``__iter__``/``__len__``)."""

    def __init__(self, order: SeededOrder, step: int) -> None:
        self.order, self.step = order, step

    def __iter__(self) -> Iterator[list[int]]:
        return self.order.batches(self.step)

    def __len__(self) -> int:
        return self.order.steps_per_epoch - self.step % self.order.steps_per_epoch


# --- environment -----------------------------------------------------------------------------------
@dataclass
class _Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _dist_env() -> tuple[int, int, int]:
    try:
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise RoutespaceError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' under torchrun -> this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RoutespaceError(f"device {name!r} requested but CUDA is not available: use --device cpu or auto")
        if name == "cuda":
            name = f"cuda:{local_rank % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def _setup_dist(device: torch.device) -> _Dist:
    world, rank, local = _dist_env()
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return _Dist(dist.get_world_size(), dist.get_rank(), local, owns)


class _StopRequest:
    """Set by SIGINT/SIGTERM; a second signal raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


@contextmanager
def _signals_caught(stop: _StopRequest) -> Iterator[None]:
    """Install ``stop`` for SIGINT/SIGTERM while inside; restore the previous handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- model helpers ---------------------------------------------------------------------------------
def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output: the tensor itself, or its ``.logits``."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise RoutespaceError(f"model output {type(output).__name__} is neither a tensor nor has a '.logits' tensor")
    return logits


def param_groups(model: nn.Module, lr: float, gate_lr_mult: float, weight_decay: float = 0.0) -> list[dict]:
    """Parameter groups: 'main' and 'gate' (names containing 'gate', lr x ``gate_lr_mult``), each split
    into decayed weights and undecayed norm parameters and biases (as the released configs: no weight
    decay on BN, and none on the gate biases that set the initial opening)."""
    buckets: dict[tuple[str, bool], list] = {}
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) for p in m.parameters()}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.ndim > 1 and id(p) not in norm_params
            buckets.setdefault(("gate" if "gate" in name else "main", decay), []).append(p)
    groups = []
    for (kind, decay) in (("main", True), ("main", False), ("gate", True), ("gate", False)):
        if (kind, decay) in buckets:
            groups.append({"params": buckets[(kind, decay)], "lr": lr * (gate_lr_mult if kind == "gate" else 1.0),
                           "weight_decay": weight_decay if decay else 0.0, "name": kind + ("" if decay else "-no-decay")})
    return groups


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.lr, config.gate_lr_mult, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _set_drop_path(model: nn.Module, rate: float) -> bool:
    """Pass the scheduled drop-path rate to a model that has ``set_drop_path`` or ``drop_path_prob``."""
    if hasattr(model, "set_drop_path"):
        model.set_drop_path(rate)
        return True
    if hasattr(model, "drop_path_prob"):
        model.drop_path_prob = rate
        return True
    return False


def default_meta(model: nn.Module) -> dict:
    """``kind`` and ``spec`` for the manifest: 'dynamic' (has forward_skipping: its space), 'static'
    (has an ``arch``: its Architecture), else 'custom'."""
    if hasattr(model, "forward_skipping") and hasattr(model, "space"):
        spec = model.spec() if hasattr(model, "spec") else {"space": model.space.to_dict()}
        return {"kind": "dynamic", "spec": spec}
    if hasattr(model, "arch") and hasattr(model.arch, "to_dict"):
        return {"kind": "static", "spec": {"architecture": model.arch.to_dict()}}
    return {"kind": "custom", "spec": {"class": type(model).__name__}}


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --- the loop --------------------------------------------------------------------------------------
class _Run:
    """Run-folder bookkeeping for one fit call (rank 0 writes; other ranks only read)."""

    def __init__(self, out_dir: Path | None, manifest: dict, writer: bool, keep: int) -> None:
        self.out_dir, self.manifest, self.writer, self.keep = out_dir, manifest, writer, keep
        if out_dir is not None and writer:
            try:
                runfolder.checkpoint_dir(out_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RoutespaceError(f"cannot create the run folder {out_dir}: {exc.strerror}") from None

    def write_manifest(self, **changes: Any) -> None:
        self.manifest.update(changes)
        if self.out_dir is not None and self.writer:
            runfolder.write_manifest(self.out_dir, self.manifest)

    def write_history(self, history: list[dict]) -> None:
        if self.out_dir is not None and self.writer:
            write_json_atomic(self.out_dir / runfolder.HISTORY, {"steps": history})

    def save(self, state: dict, step: int, final: bool) -> Path | None:
        if self.out_dir is None or not self.writer:
            return None
        path = runfolder.final_checkpoint_path(self.out_dir) if final else runfolder.step_checkpoint_path(self.out_dir, step)
        save_checkpoint(path, state)
        if not final and self.keep:
            for _, old in runfolder.step_checkpoints(self.out_dir)[: -self.keep]:
                old.unlink(missing_ok=True)
        return path


def _prepare_folder(out_dir: Path, manifest: dict, resume: bool) -> tuple[dict, Path | None]:
    """Check the folder for a new run or a resumption; return (manifest to use, checkpoint to resume)."""
    existing = runfolder.read_manifest(out_dir) if out_dir.is_dir() else None
    if not resume:
        if existing is not None or runfolder.checkpoint_dir(out_dir).exists():
            raise RoutespaceError(f"{out_dir} already holds a training run: resume it (--resume) or choose a new output folder")
        return manifest, None
    if existing is None:
        raise RoutespaceError(f"nothing to resume in {out_dir}: it has no {runfolder.MANIFEST} (start the run without --resume)")
    runfolder.check_same_run(existing, manifest, out_dir)
    resumed = dict(existing, config=manifest["config"], versions=manifest["versions"])
    return resumed, runfolder.latest_checkpoint(out_dir)


def _check_checkpoint_matches(state: dict, manifest: dict, path: Path) -> None:
    meta = state.get("meta") or {}
    saved = {"config": state.get("config"), "kind": meta.get("kind"), "spec": meta.get("spec"),
             "extra": meta.get("extra"), "world_size": (state.get("sampler") or {}).get("world_size")}
    diffs = runfolder.run_differences(saved, manifest)
    if diffs:
        raise RoutespaceError(
            f"checkpoint {path} belongs to another run ({runfolder.describe_differences(diffs)}): "
            "delete it to resume from an earlier checkpoint, or start a new run folder"
        )


def fit(
    model: nn.Module,
    train_set: torch.utils.data.Dataset,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    extra_loss: Callable[[Any, int, int], torch.Tensor] | None = None,
    resume: bool = False,
    progress: bool = True,
    meta: dict | None = None,
    on_start: Callable[[], None] | None = None,
    tensorboard: bool = True,
) -> TrainResult:
    """Train ``model`` on ``train_set`` (items ``(image, label)``) for ``config.steps`` steps.

    ``on_start()`` is called once the run folder, device and checkpoint have been checked, right before
    training begins (the CLI prints its thread choice there, so a refused run prints only its error).
    ``tensorboard``: also write each step's record (losses, lr, budget ratio and lambda, per-scale gate
    open rates) as TensorBoard events into ``out_dir/tb`` (when tensorboard is installed; rank 0 only).

    ``out_dir`` is the run folder (manifest, history, checkpoints); None trains without files.
    ``extra_loss(output, step, total_steps)`` is added to the cross-entropy; one whose ``separate_gradient``
    is true gets its own gradient (on the parameters its ``gradient_applies_to(name)`` picks, clipped to its
    ``grad_clip``), added after the cross-entropy's was clipped (the realised budget mode). ``resume=True`` continues
    the run in ``out_dir`` from its latest checkpoint (same settings required). ``meta`` may give
    ``kind``, ``spec``, ``extra`` (recorded in the manifest and compared on resume), ``command`` and
    ``resume_command`` (shown when interrupted); defaults come from the model.
    """
    if not isinstance(config, TrainConfig):
        raise RoutespaceError(f"config must be a TrainConfig, got {type(config).__name__}")
    if resume and out_dir is None:
        raise RoutespaceError("resume=True needs the run folder (out_dir) to resume from")
    meta = {**default_meta(model), **(meta or {})}
    out = Path(out_dir) if out_dir is not None else None
    world, rank, local = _dist_env()
    device = resolve_device(config.device, local)
    # the library never reads sys.argv: the CLI passes its command line in meta
    command = meta.get("command") or f"routespace.evaluators.train.fit({type(model).__name__}, ...)"
    manifest = runfolder.new_manifest(
        command=command, seed=config.seed, config=config.to_dict(), kind=meta["kind"], spec=meta.get("spec"),
        extra=meta.get("extra") or {}, world_size=world,
    )
    resume_from = None
    if out is not None:
        manifest, resume_from = _prepare_folder(out, manifest, resume)
    order = SeededOrder(len(train_set), config.batch_size, config.seed, world, rank)

    state = None
    if resume_from is not None:  # the newest checkpoint that loads: a damaged newest one is passed over, with a note
        candidates = [p for _, p in runfolder.step_checkpoints(out)]
        if resume_from not in candidates:
            candidates.append(resume_from)
        resume_from, state = load_newest_intact(candidates)
    if state is not None:
        _check_checkpoint_matches(state, manifest, resume_from)
        load_model_state(model, state["model"], resume_from)

    if on_start is not None:
        on_start()
    dist_info = _setup_dist(device)
    try:
        return _train(_TrainJob(model=model, train_set=train_set, config=config, out=out, extra_loss=extra_loss,
                                progress=progress, meta=meta, manifest=manifest, state=state, resume_from=resume_from,
                                order=order, device=device, dist=dist_info, tensorboard=tensorboard))
    finally:
        if dist_info.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass(frozen=True)
class _TrainJob:
    """Everything :func:`fit` has checked and prepared before the loop: the model and data, the run folder
    (``out``, its ``manifest``, the checkpoint ``state`` loaded from ``resume_from``), the sample order,
    the device and the distributed set-up."""

    model: nn.Module
    train_set: Any
    config: TrainConfig
    out: Path | None
    extra_loss: Callable[[Any, int, int], torch.Tensor] | None
    progress: bool
    meta: dict
    manifest: dict
    state: dict | None
    resume_from: Path | None
    order: Any  # SeededOrder
    device: torch.device
    dist: Any  # _DistInfo
    tensorboard: bool = True


def _train(job: _TrainJob) -> TrainResult:
    model, train_set, config, out, extra_loss = job.model, job.train_set, job.config, job.out, job.extra_loss
    progress, meta, manifest, state, resume_from = job.progress, job.meta, job.manifest, job.state, job.resume_from
    order, device, dinfo, tensorboard = job.order, job.device, job.dist, job.tensorboard
    model.to(device)
    _seed_everything(config.seed + dinfo.rank)
    optimizer = make_optimizer(model, config)
    total = config.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, config.warmup_steps, config.poly_power)
    )
    history: list[dict] = []
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        if state.get("extra_loss") is not None and hasattr(extra_loss, "load_state_dict"):
            extra_loss.load_state_dict(state["extra_loss"])
        ranks = state.get("rng_ranks") or [state["rng"]]
        restore_rng(ranks[dinfo.rank] if dinfo.rank < len(ranks) else state["rng"])
        history = [h for h in _read_history(out) if h.get("step", 0) <= start]

    net = model
    if dinfo.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    run = _Run(out, manifest, writer=dinfo.rank == 0, keep=config.keep_checkpoints)
    resume_hint = meta.get("resume_command") or (f"fit(..., out_dir={str(out)!r}, resume=True)" if out else None)
    if config.drop_path > 0 and not _set_drop_path(model, 0.0):
        warnings.warn(f"{type(model).__name__} has no drop-path support (set_drop_path / drop_path_prob): drop_path ignored")

    def checkpoint_state(step: int) -> dict:
        rng = capture_rng()
        rng_ranks = [rng]
        if dinfo.active:
            import torch.distributed as dist

            rng_ranks = [None] * dinfo.world_size
            dist.all_gather_object(rng_ranks, rng)
        return {
            "step": step, "total_steps": total, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng, "rng_ranks": rng_ranks, "sampler": order.state(step),
            "config": config.to_dict(),
            "meta": {"kind": meta["kind"], "spec": meta.get("spec"), "extra": meta.get("extra") or {}},
            # a stateful extra loss (e.g. the adaptive budget weight) continues exactly on resume
            "extra_loss": extra_loss.state_dict() if hasattr(extra_loss, "state_dict") else None,
        }

    if start >= total:  # the run was already complete
        final = runfolder.final_checkpoint_path(out) if out is not None else None
        run.write_manifest(status="done", step=start)
        return TrainResult(start, start, 0.0, math.nan, history[-1]["loss"] if history else math.nan,
                           str(device), dinfo.world_size, out, final, history)

    if dinfo.active:  # every rank has checked the folder before rank 0 writes to it
        import torch.distributed as dist

        dist.barrier()
    stop = _StopRequest()
    model.train()
    bar = _progress_bar(total, start, progress and dinfo.rank == 0)
    from .tensorboard import log_train_step, open_writer

    tb = open_writer(out, enabled=tensorboard and out is not None and dinfo.rank == 0, purge_step=start or None)
    budget_target = getattr(extra_loss, "mu", None)
    step, t0, loss_value, path = start, time.perf_counter(), math.nan, None
    try:
        with _signals_caught(stop):
            run.write_manifest(status="running", step=start)  # after the handlers: a signal now is caught
            while step < total:
                if hasattr(train_set, "set_epoch"):
                    train_set.set_epoch(order.epoch_of(step))
                loader = torch.utils.data.DataLoader(
                    train_set, batch_sampler=_Batches(order, step), num_workers=config.num_workers,
                    generator=torch.Generator().manual_seed(config.seed), pin_memory=device.type == "cuda",
                )
                for images, labels in loader:
                    record = _step(net, model, optimizer, scheduler, images, labels, device, config, extra_loss, step, total)
                    step += 1
                    record["step"] = step
                    history.append(record)
                    log_train_step(tb, record, step, budget_target=budget_target)
                    loss_value = record["loss"]
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
                    stopping = _agree_stop(stop.signum is not None, dinfo)
                    if stopping or step == total or (config.checkpoint_every and step % config.checkpoint_every == 0):
                        # history first: a kill between the two leaves history ahead of the checkpoint,
                        # which resuming trims (behind it, steps would be missing)
                        run.write_history(history)
                        tb.flush()
                        path = run.save(checkpoint_state(step), step, final=step == total)
                        run.write_manifest(step=step)
                    if stopping and step < total:  # (a signal after the last step changes nothing)
                        bar.close()
                        run.write_manifest(status="interrupted", step=step)
                        hint = f"; resume with: {resume_hint}" if resume_hint and out is not None else " (no run folder: nothing to resume)"
                        raise RoutespaceError(f"interrupted at step {step}{hint}")
                    if step >= total:
                        break
    except BaseException as exc:
        if run.manifest.get("status") == "running":
            run.write_manifest(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", step=step)
        raise
    finally:
        bar.close()
        tb.close()
    seconds = time.perf_counter() - t0
    run.write_manifest(status="done", step=step, seconds=manifest.get("seconds", 0.0) + seconds)
    if dinfo.active:
        import torch.distributed as dist

        dist.barrier()
    return TrainResult(step, start, seconds, seconds / max(1, step - start), loss_value, str(device),
                       dinfo.world_size, out, path, history)


def _step(net, model, optimizer, scheduler, images, labels, device, config, extra_loss, step, total) -> dict:
    if config.drop_path > 0:
        _set_drop_path(model, drop_path_rate(step, total, config.drop_path))
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    output = net(images)
    logits = logits_of(output)
    _check_labels(labels, logits)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    loss = ce
    extra = None
    if extra_loss is not None:
        extra = extra_loss(output, step, total)
        loss = loss + extra
    if not torch.isfinite(loss):
        raise RoutespaceError(f"the loss became {float(loss.detach())} at step {step + 1}: lower the learning rate (--lr) or enable gradient clipping")
    optimizer.zero_grad(set_to_none=True)
    norms = {}
    if extra is not None and getattr(extra_loss, "separate_gradient", False):
        norms = _backward_apart(model, ce, extra, extra_loss, config.grad_clip)
    else:
        loss.backward()
        if config.grad_clip > 0:
            norms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    record = {"loss": float(loss.detach()), "ce": float(ce.detach()), "lr": lr, **norms}
    if extra is not None:
        record["extra"] = float(extra.detach())
        record.update(getattr(extra_loss, "last", None) or {})
    flops = getattr(output, "realised_flops", None)
    if isinstance(flops, torch.Tensor):
        record["realised_gflops"] = float(flops.detach().float().mean()) / 1e9
    if getattr(output, "edge_gates", None):
        from .tensorboard import gate_open_rates

        record.update(gate_open_rates({k: g.detach() for k, g in output.edge_gates.items()}))
    return record


def _backward_apart(model: nn.Module, ce: torch.Tensor, extra: torch.Tensor, extra_loss: Any, grad_clip: float) -> dict:
    """The gradients of the cross-entropy and of an extra loss that asks for it (``separate_gradient``),
    each clipped on its own: the cross-entropy's to ``grad_clip`` (0: off), the extra loss's to its
    ``grad_clip`` (None: ``grad_clip``), on the parameters ``extra_loss.gradient_applies_to(name)`` picks;
    their sum goes into ``.grad``. So a large budget gradient cannot shrink the cross-entropy's under one
    global clip. Under DDP the extra gradient (computed with ``autograd.grad``, which bypasses DDP's
    hooks) is averaged over the processes here. Returns the norms before clipping."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    picked = [p for n, p in named if extra_loss.gradient_applies_to(n)]
    extra_grads = []
    if picked and extra.requires_grad:
        extra_grads = list(torch.autograd.grad(extra, picked, retain_graph=True, allow_unused=True))
    ce.backward()
    ce_norm = _clip_grads([p.grad for _, p in named if p.grad is not None], grad_clip)
    pairs = [(p, g) for p, g in zip(picked, extra_grads) if g is not None]
    if pairs and torch.distributed.is_available() and torch.distributed.is_initialized():
        flat = torch.cat([g.reshape(-1) for _, g in pairs])
        torch.distributed.all_reduce(flat)
        flat /= torch.distributed.get_world_size()
        pairs, at = [], pairs
        offset = 0
        for p, g in at:
            pairs.append((p, flat[offset:offset + g.numel()].view_as(g)))
            offset += g.numel()
    own = getattr(extra_loss, "grad_clip", None)
    extra_norm = _clip_grads([g for _, g in pairs], grad_clip if own is None else own)
    for p, g in pairs:
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad.add_(g)
    return {"grad_norm_ce": ce_norm, "grad_norm_extra": extra_norm}


def _clip_grads(grads: list[torch.Tensor], max_norm: float) -> float:
    """Scale ``grads`` in place so that their joint norm is at most ``max_norm`` (0: no clip); the norm before."""
    if not grads:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads])))
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            g.mul_(scale)
    return norm


def _check_labels(labels: torch.Tensor, logits: torch.Tensor) -> None:
    """Labels must be class indices below the model's class count, or the ignore index."""
    if logits.shape[-2:] != labels.shape[-2:] or logits.shape[0] != labels.shape[0]:
        raise RoutespaceError(
            f"model output {tuple(logits.shape)} does not match labels {tuple(labels.shape)}: "
            "the model must return (N, classes, H, W) logits at the label size"
        )
    valid = labels[labels != IGNORE_INDEX]
    if valid.numel() and (int(valid.max()) >= logits.shape[1] or int(valid.min()) < 0):
        bad = int(valid.max()) if int(valid.max()) >= logits.shape[1] else int(valid.min())
        raise RoutespaceError(
            f"the data has label {bad} but the model predicts {logits.shape[1]} classes: "
            f"build the model for the data set's number of classes"
        )


def _agree_stop(local: bool, dinfo: _Dist) -> bool:
    """All ranks stop at the same step when any one of them got a signal."""
    if not dinfo.active:
        return local
    import torch.distributed as dist

    flag = torch.tensor([1.0 if local else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _read_history(out: Path | None) -> list[dict]:
    if out is None:
        return []
    path = out / runfolder.HISTORY
    try:
        import json

        data = json.loads(path.read_text())
        return list(data.get("steps", []))
    except (OSError, ValueError, AttributeError):
        return []


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))
