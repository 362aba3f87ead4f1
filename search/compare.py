"""The comparison: Dynamic-X vs Common-X vs the classics vs a random path (and any run added), composed of
the steps a user runs by hand.

Every row is a `routespace train` run folder made through ``search.steps.train_run`` (the function the
`train` command calls), at ``OUT/runs/<row>-s<seed>/``: a dynamic row is ``train --setting X --budget-mode M``,
a Common row ``extract`` on that seed's dynamic run followed by ``train --arch common.json``, a classic or
the random path ``train --arch NAME|spec``. ``add=`` puts any finished run folder in the table as it is
(not retrained). So ``extract``, ``show`` and ``evaluate`` work on a row's folder like on any run, and
each row's manifest holds the `routespace train` command that reproduces it.

Protocols: ``steps`` trains every row for the same number of steps (the paper's); ``time`` gives every
trained static row the dynamic rows' wall time instead: its steps are ``steps x t_dynamic / t_row``, with
the training-step costs measured at the start, in one process, interleaved round-robin (``step-costs.json``).

Resumable: a row's evaluation is written atomically to ``rows/<row>-s<seed>.json`` once its run is done;
a rerun of the same command skips those rows and resumes a half-trained run from its checkpoint, and the
same comparison with more seeds extends the folder (the runs it has are kept). Rows are
trained by ``workers`` processes with one torch thread each (``torch.use_deterministic_algorithms`` on),
so the table is the same for any number of workers. Latency is measured at the end for every row in one
loop, interleaved round-robin (``latency.json``), so load on the machine shifts all rows alike.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..evaluators import runfolder
from ..evaluators.pareto import pareto_indices
from ..evaluators.timing import interleaved_times_ms, spread
from ..spaces.architecture import Architecture
from ..spaces.classics import CLASSICS
from ..spaces.errors import RoutespaceError
from ..spaces.fileio import write_json_atomic, write_text_atomic
from ..spaces.procs import exit_with_parent
from ..spaces.space import RoutingSpace, preset
from .dynamic.settings import BUDGET_MODES, SETTINGS as DYNAMIC_SETTINGS

MANIFEST = "comparison-manifest.json"
PROTOCOLS = ("steps", "time")
KIND_ORDER = {"dynamic": 0, "common": 1, "classic": 2, "random": 3, "added": 4}


@dataclass
class CompareSettings:
    """Everything that decides a comparison's result."""

    preset: str = "tiny"
    data: str = "synthetic"
    steps: int = 600
    seeds: tuple[int, ...] = (0,)
    dynamic: tuple[str, ...] = ("A", "B", "C")
    budget_mode: str = "paper"  # the released loss: the paper's claim is what the comparison tests
    classics: tuple[str, ...] = tuple(CLASSICS)
    random_baseline: bool = True
    protocol: str = "steps"
    add: tuple[str, ...] = ()  # finished run folders added as rows: 'PATH' or 'NAME=PATH'
    tau: float = 0.5
    threshold: float = 1e-4
    batch_size: int = 8
    val_images: int | None = None
    latency_repeats: int = 10
    latency_images: int = 4
    curve_points: int = 6  # checkpoints of the learning-curve rows evaluated (mIoU vs steps)
    headline_seeds_only: tuple[str, ...] = ()  # rows run for every seed; others only for seeds[0] (empty = all)

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        self.dynamic = tuple(self.dynamic)
        self.classics = tuple(self.classics)
        self.add = tuple(str(a) for a in self.add)
        self.headline_seeds_only = tuple(self.headline_seeds_only)
        if not self.seeds:
            raise RoutespaceError("give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise RoutespaceError(f"seeds {list(self.seeds)} repeat a seed: give each seed once")
        if self.steps < 1:
            raise RoutespaceError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise RoutespaceError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 < self.tau <= 1:
            raise RoutespaceError(f"tau must be in (0, 1], got {self.tau}: it is the fraction of images an edge must be open on")
        if self.protocol not in PROTOCOLS:
            raise RoutespaceError(f"unknown protocol {self.protocol!r}: choose 'steps' (equal training steps, the paper's) "
                                  "or 'time' (equal wall time per row)")
        if self.budget_mode not in BUDGET_MODES:
            raise RoutespaceError(f"unknown budget mode {self.budget_mode!r}: choose one of {', '.join(BUDGET_MODES)}")
        if self.protocol == "time" and not self.dynamic:
            raise RoutespaceError("the time protocol gives static rows the dynamic rows' wall time: name at least one dynamic setting")
        if self.val_images is not None and self.val_images < 1:
            raise RoutespaceError(f"val images must be at least 1, got {self.val_images}")
        if self.latency_repeats < 0 or self.latency_images < 1 or self.curve_points < 0:
            raise RoutespaceError("latency repeats and curve points must be >= 0, latency images >= 1")
        for d in self.dynamic:
            if d not in DYNAMIC_SETTINGS:
                raise RoutespaceError(f"unknown dynamic setting {d!r}: choose from {', '.join(DYNAMIC_SETTINGS)}")
        if len(set(self.dynamic)) != len(self.dynamic) or len(set(self.classics)) != len(self.classics):
            raise RoutespaceError("a dynamic setting or classic is named twice: give each once")
        for c in self.classics:
            if c not in CLASSICS:
                raise RoutespaceError(f"unknown classic {c!r}: choose from {', '.join(CLASSICS)}")
        preset(self.preset)
        self.added()  # fail now on a bad --add

    def added(self) -> list[tuple[str, Path]]:
        """(row name, run folder) of each added run, checked: a finished run of the comparison's data."""
        from ..evaluators.runrecord import RunSettings

        out, names = [], set(self.row_names())
        for text in self.add:
            name, _, path = text.rpartition("=") if "=" in text else ("", "", text)
            run = Path(path)
            name = name or run.name
            manifest = runfolder.read_manifest(run) if run.is_dir() else None
            if manifest is None:
                raise RoutespaceError(f"--add {text}: {run} is not a training run folder (give the --out folder of `routespace train`)")
            if not runfolder.final_checkpoint_path(run).is_file():
                raise RoutespaceError(f"--add {text}: run {run} is not finished (no final checkpoint): "
                                      f"finish it with: routespace train --out {run} --resume")
            record = RunSettings.of(manifest, str(run))
            if record.data != self.data:
                raise RoutespaceError(f"--add {text}: run {run} was trained on data {record.data!r}, the comparison uses "
                                      f"{self.data!r}: its mIoU would not be comparable")
            if name in names:
                raise RoutespaceError(f"--add {text}: a row is already called {name!r}: add it as NAME={path}")
            size = tuple(preset(self.preset).input_size)
            if record.eval_size(size) != size:
                h, w = record.eval_size()
                raise RoutespaceError(f"--add {text}: run {run} is evaluated at {h}x{w}, the comparison at "
                                      f"{size[0]}x{size[1]}: its mIoU and GFLOPs would not be comparable")
            names.add(name)
            out.append((name, run.resolve()))
        return out

    def row_names(self) -> list[str]:
        names = [f"Dynamic-{d}" for d in self.dynamic] + [f"Common-{d}" for d in self.dynamic] + list(self.classics)
        return names + (["random-path"] if self.random_baseline else [])

    def seeds_for(self, name: str) -> tuple[int, ...]:
        if not self.headline_seeds_only or name in self.headline_seeds_only:
            return self.seeds
        return self.seeds[:1]

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["add"] = [f"{n}={p}" for n, p in self.added()] if self.add else []
        return d


@dataclass
class Row:
    name: str  # e.g. 'Dynamic-C', 'Common-C', 'unet', 'random-path', or an added run's name
    kind: str  # 'dynamic' | 'common' | 'classic' | 'random' | 'added'
    seed: int
    run: str = ""  # its run folder
    result: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}-s{self.seed}"


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"[compare] {msg}", file=sys.stderr, flush=True)


def _check_folder(out: Path, settings: CompareSettings, overwrite: bool) -> None:
    manifest = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise RoutespaceError(f"{out} is a file, not a folder: choose another --out")
    if not out.exists():
        return
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and _without_seeds(old.get("settings")) == _without_seeds(settings.to_dict()):
            return  # same comparison (resumed), or the same one with other seeds: each (row, seed) run is kept
        if not overwrite:
            raise RoutespaceError(
                f"{out} already holds a different comparison (other settings): choose another --out or pass --overwrite"
            )
    elif any(out.iterdir()) and not overwrite:
        raise RoutespaceError(f"{out} is not empty and holds no comparison: choose another --out or pass --overwrite")
    if overwrite:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _without_seeds(settings: object) -> object:
    """A comparison's settings less its seeds: rows are runs per (row, seed), so a comparison rerun with
    more seeds (or ``headline`` rows) extends the same folder and keeps the runs it has."""
    if not isinstance(settings, dict):
        return settings
    return {k: v for k, v in settings.items() if k not in ("seeds", "headline_seeds_only")}


# --- the rows as `routespace train` requests ----------------------------------------------------------------
def row_request(settings: CompareSettings, out: Path, job: dict):
    """The ``TrainRequest`` of a row (what `routespace train` would be given for it)."""
    from .steps import TrainRequest

    steps = int(job.get("steps") or settings.steps)
    train: dict[str, Any] = {"steps": steps, "seed": job["seed"], "batch_size": settings.batch_size}
    if job.get("curve"):  # a learning-curve row keeps its periodic checkpoints
        train.update(checkpoint_every=max(1, steps // max(1, settings.curve_points)), keep_checkpoints=0)
    common = dict(out=str(out / "runs" / f"{job['name']}-s{job['seed']}"), preset=settings.preset, data=settings.data,
                  train=train, tensorboard=False)
    if job["kind"] == "dynamic":
        return TrainRequest(setting=job["setting"], budget_mode=None if job["setting"] == "raw" else settings.budget_mode,
                            **common)
    return TrainRequest(arch=job["arch"], **common)


def request_argv(req) -> list[str]:
    """The `routespace train` command line of a request (flags for the fields it sets)."""
    argv = ["routespace", "train", "--out", req.out, "--preset", req.preset, "--data", req.data]
    if req.arch is not None:
        argv += ["--arch", str(req.arch)]
    if req.setting is not None:
        argv += ["--setting", req.setting]
    if req.budget_mode is not None:
        argv += ["--budget-mode", req.budget_mode]
    for key in ("steps", "batch_size", "seed", "checkpoint_every"):
        if req.train.get(key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(req.train[key])]
    if not req.tensorboard:
        argv.append("--no-tensorboard")
    return argv + ["--threads", "1"]  # rows train on one thread; the same count reproduces them bit for bit


def _row_path(out: Path, key: str) -> Path:
    return out / "rows" / f"{key}.json"


def _run_job(out: str, settings_dict: dict, job: dict, progress: bool) -> dict:
    """Train (or resume) one row through ``train_run`` and evaluate it (mIoU, FLOPs; latency comes later,
    for all rows together). One torch thread, deterministic kernels; runs in a worker process when
    rows are trained in parallel."""
    import shlex

    import torch

    from .steps import evaluate_run, run_state, train_run

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        settings = CompareSettings(**_settings_args(settings_dict))
        req = row_request(settings, Path(out), job)
        key = f"{job['name']}-s{job['seed']}"
        state = run_state(req.out)
        if state != "done":
            _say(f"{key}: {'resuming' if state == 'partial' else 'training'} ({req.train['steps']} steps)", progress)
            from dataclasses import replace

            train_run(replace(req, resume=state == "partial"), command=shlex.join(request_argv(req)), progress=False)
        manifest = runfolder.read_manifest(req.out)
        result = evaluate_run(req.out, latency_repeats=0, max_images=settings.val_images, tensorboard=False).to_dict()
        if job["kind"] != "dynamic":
            result.pop("per_image_gflops", None)
        result.update(name=job["name"], kind=job["kind"], seed=job["seed"], train_steps=int(manifest["step"]),
                      train_seconds=float(manifest.get("seconds") or 0.0), train_threads=1,
                      train_command=shlex.join(request_argv(req)))
        if job["kind"] != "dynamic":
            result["spec"] = manifest["spec"]["architecture"]
        write_json_atomic(_row_path(Path(out), key), result)
        _say(f"{key}: miou {result['miou']:.3f} ({result['train_seconds']:.0f} s training)", progress)
        return result
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _settings_args(d: dict) -> dict:
    d = dict(d)
    d["add"] = tuple(d.get("add") or ())
    return d


def _load_row(out: Path, key: str) -> dict | None:
    path = _row_path(out, key)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        return result if isinstance(result, dict) and "miou" in result else None
    except (OSError, ValueError):
        return None  # a damaged row is recomputed


def _run_jobs(out: Path, settings: CompareSettings, jobs: list[dict], workers: int, progress: bool) -> list[dict]:
    """Every job's result, computing the missing ones (in ``workers`` processes of one thread each)."""
    results: dict[int, dict] = {}
    todo = []
    for i, job in enumerate(jobs):
        done = _load_row(out, f"{job['name']}-s{job['seed']}")
        if done is not None:
            _say(f"{job['name']}-s{job['seed']}: done earlier (miou {done['miou']:.3f})", progress)
            results[i] = done
        else:
            todo.append(i)
    if todo and workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(todo)), initializer=exit_with_parent,
                                          initargs=(os.getpid(),)) as pool:
            pending = {i: pool.apply_async(_run_job, (str(out), settings.to_dict(), jobs[i], progress)) for i in todo}
            for i, res in pending.items():
                results[i] = res.get()
            pool.close()  # let the workers exit on their own (terminate() leaks their semaphores)
            pool.join()
    else:
        for i in todo:
            results[i] = _run_job(str(out), settings.to_dict(), jobs[i], progress)
    return [results[i] for i in range(len(jobs))]


def _random_path_near(space: RoutingSpace, target_gflops: float, size, seed: int, tries: int = 400) -> Architecture:
    """A seeded random single path whose GFLOPs is closest to ``target_gflops`` (first within 5 % wins)."""
    from ..evaluators.cost import gflops
    from ..spaces.random_arch import random_path

    rng = random.Random(seed)
    best = None
    for _ in range(tries):
        arch = Architecture.from_path(space, random_path(space, rng), name="random-path")
        gap = abs(gflops(arch, size) - target_gflops)
        if best is None or gap < best[0]:
            best = (gap, arch)
        if gap <= 0.05 * target_gflops:
            break
    assert best is not None
    return best[1]


# --- measurements in one process, interleaved (evaluators.timing) -------------------------------------------
def measure_latency(rows: list[Row], images: list, repeats: int) -> dict[str, dict]:
    """Batch-1 latency of every row's net in one loop: per repeat, each net runs each image once (dynamic
    nets with the skipping executor, and also dense with every path as '<key> (all open)')."""
    import torch

    from ..evaluators.evaluate import load_run_model

    fns: dict[str, Callable[[], Any]] = {}
    for row in rows:
        model, _, _ = load_run_model(row.run)
        model.eval()
        run = model.forward_skipping if row.kind == "dynamic" or hasattr(model, "forward_skipping") else model

        def one_pass(run=run) -> None:
            for x in images:
                run(x)

        fns[row.key] = one_pass
        if hasattr(model, "forward_skipping"):
            def dense_pass(model=model) -> None:
                for x in images:
                    model(x)

            fns[f"{row.key} (all open)"] = dense_pass
    with torch.inference_mode():
        times = interleaved_times_ms(fns, repeats)
    return {name: {**spread([t / len(images) for t in ts]), "images": len(images)} for name, ts in times.items()}


def measure_step_costs(models: dict[str, Any], batch, repeats: int = 5) -> dict[str, dict]:
    """Milliseconds of one training step (forward, backward, optimizer step) of each model on ``batch``,
    interleaved round-robin in this process."""
    import torch

    from ..evaluators.train import logits_of

    images, labels = batch
    fns = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(logits_of(model(images)), labels, ignore_index=255)
            loss.backward()
            opt.step()

        fns[name] = step
    return {name: spread(ts) for name, ts in interleaved_times_ms(fns, repeats).items()}


def _step_costs(out: Path, settings: CompareSettings, archs: dict[str, Architecture], space, train_set,
                progress: bool) -> dict[str, dict]:
    """The measured step cost of each dynamic setting and each static architecture (cached in
    ``step-costs.json``; measured once, so a resumed comparison keeps its step counts)."""
    import torch

    from ..spaces.builder import build
    from ..spaces.supernet import DynamicNet

    path = out / "step-costs.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    want = [f"Dynamic-{d}" for d in settings.dynamic] + list(archs)
    missing = [n for n in want if n not in cached]
    if missing:
        _say(f"measuring training-step costs of {len(missing)} nets (interleaved, one thread)", progress)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(0)
            idx = list(range(min(len(train_set), settings.batch_size)))
            batch = (torch.stack([train_set[i][0] for i in idx]), torch.stack([train_set[i][1] for i in idx]))
            models = {}
            for name in missing:
                if name.startswith("Dynamic-"):
                    models[name] = DynamicNet(space, gate_resolution=DYNAMIC_SETTINGS[name[len("Dynamic-"):]].gate_resolution)
                else:
                    models[name] = build(archs[name])
            cached.update(measure_step_costs(models, batch))
        finally:
            torch.set_num_threads(threads)
        write_json_atomic(path, cached)
    return cached


def _time_steps(settings: CompareSettings, costs: dict[str, dict], name: str) -> int:
    """Steps of a static row under the time protocol: the dynamic rows' wall time at its own step cost."""
    t_dyn = statistics.fmean(costs[f"Dynamic-{d}"]["median"] for d in settings.dynamic)
    return max(1, round(settings.steps * t_dyn / costs[name]["median"]))


# --- the pipeline --------------------------------------------------------------------------------------
def compare(
    out: str | Path,
    settings: CompareSettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    workers: int = 1,
) -> dict:
    """Run (or resume) the comparison into ``out``; writes report.md, comparison.json and plots.

    ``workers`` > 1 trains that many rows at a time, each in its own process with one torch thread; the
    result does not depend on ``workers``."""
    from ..evaluators.datasets import load_dataset
    from .steps import extract_common

    settings = settings or CompareSettings()
    out = Path(out)
    _check_folder(out, settings, overwrite)
    added = settings.added()
    space = preset(settings.preset)
    size = tuple(space.input_size)
    train_set = load_dataset(settings.data, "train", size=size)
    val_set = load_dataset(settings.data, "val", size=size)
    if settings.dynamic:  # the dynamic supernet is the largest net trained; `workers` of them may run at once
        from ..evaluators.memory import check_training_memory

        check_training_memory(space, settings.batch_size, size, dynamic=True, what="the comparison's dynamic nets",
                              processes=max(1, workers), advice="lower --workers, or use --preset tiny")
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(exist_ok=True)
    (out / "specs").mkdir(exist_ok=True)
    command = command or "routespace.search.compare.compare(...)"  # the CLI passes its command line
    manifest = {"command": command, "settings": settings.to_dict(), "versions": runfolder.versions(), "status": "running"}
    write_json_atomic(out / MANIFEST, manifest)
    t_start = time.time()
    curve_dynamic = f"Dynamic-{settings.dynamic[0]}" if settings.dynamic else None
    statics = [c for c in ("deeplabv3",) if c in settings.classics] or list(settings.classics[:1])
    curve_static = statics[0] if statics else (f"Common-{settings.dynamic[0]}" if settings.dynamic else None)
    curves_for = {curve_dynamic, curve_static} - {None}

    def job(name: str, kind: str, seed: int, **extra) -> dict:
        return {"name": name, "kind": kind, "seed": seed, "curve": name in curves_for and seed == settings.seeds[0], **extra}

    costs: dict[str, dict] = {}
    classic_archs = {c: CLASSICS[c](space) for c in settings.classics}
    if settings.protocol == "time":
        costs = _step_costs(out, settings, classic_archs, space, train_set, progress)

    def static_job(name: str, kind: str, seed: int, spec: str) -> dict:
        steps = _time_steps(settings, costs, name) if settings.protocol == "time" else settings.steps
        return job(name, kind, seed, arch=spec, steps=steps)

    # 1. the dynamic nets and the classics (independent of each other; dynamic first: they take longest)
    jobs = [job(f"Dynamic-{d}", "dynamic", s, setting=d) for d in settings.dynamic for s in settings.seeds_for(f"Dynamic-{d}")]
    jobs += [static_job(c, "classic", s, c) for c in settings.classics for s in settings.seeds_for(c)]
    _say(f"{len(jobs)} runs: dynamic nets and classics ({settings.protocol} protocol)", progress)
    results = _run_jobs(out, settings, jobs, workers, progress)

    # 2. `extract` on each seed's dynamic run, then its Common net and a random path retrained from scratch
    commons: dict[str, Architecture] = {}
    spec_paths: dict[str, str] = {}
    for d in settings.dynamic:
        for seed in settings.seeds_for(f"Common-{d}"):
            if seed not in settings.seeds_for(f"Dynamic-{d}"):
                continue
            spec = out / "specs" / f"common-{d}-s{seed}.json"
            if not spec.is_file():
                extract_common(out / "runs" / f"Dynamic-{d}-s{seed}", spec, tau=settings.tau, threshold=settings.threshold,
                               images=settings.val_images, name=f"common-{d}")
            spec_paths[f"Common-{d}-s{seed}"] = str(spec)
            commons.setdefault(d, Architecture.from_json(spec.read_text()))
    if settings.random_baseline:
        spec = out / "specs" / "random-path.json"
        if not spec.is_file():
            from ..evaluators.cost import architecture_cost

            dyn = [r for r in results if r["kind"] == "dynamic"]
            target = (statistics.fmean(d["gflops_mean"] for d in dyn) if dyn
                      else architecture_cost(CLASSICS["deeplabv3"](space), size).gflops)
            write_text_atomic(spec, _random_path_near(space, target, size, seed=settings.seeds[0]).to_json())
        spec_paths["random-path"] = str(spec)
    if settings.protocol == "time":
        archs = {f"Common-{d}": commons[d] for d in commons}  # the first seed's spec stands for the row's step cost
        if settings.random_baseline:
            archs["random-path"] = Architecture.from_json(Path(spec_paths["random-path"]).read_text())
        costs = _step_costs(out, settings, archs, space, train_set, progress)
    jobs2 = [static_job(f"Common-{d}", "common", s, spec_paths[f"Common-{d}-s{s}"])
             for d in settings.dynamic for s in settings.seeds_for(f"Common-{d}") if f"Common-{d}-s{s}" in spec_paths]
    if settings.random_baseline:
        jobs2 += [static_job("random-path", "random", s, spec_paths["random-path"]) for s in settings.seeds_for("random-path")]
    if jobs2:
        _say(f"{len(jobs2)} runs: Common nets and the random path", progress)
    results += _run_jobs(out, settings, jobs2, workers, progress)

    rows = [Row(r["name"], r["kind"], r["seed"], str(out / "runs" / f"{r['name']}-s{r['seed']}"), r) for r in results]
    # 3. runs added as they are
    for name, run in added:
        key = f"{name}-s{runfolder.read_manifest(run).get('seed', 0)}"
        done = _load_row(out, key)
        if done is None:
            from .steps import evaluate_run

            done = evaluate_run(run, latency_repeats=0, max_images=settings.val_images, tensorboard=False, write=False).to_dict()
            manifest_add = runfolder.read_manifest(run)
            done.update(name=name, kind="added", seed=int(manifest_add.get("seed", 0)), train_steps=int(manifest_add["step"]),
                        train_seconds=float(manifest_add.get("seconds") or 0.0), train_command=manifest_add.get("command"))
            write_json_atomic(_row_path(out, key), done)
        rows.append(Row(name, "added", int(done["seed"]), str(run), done))
    rank = {c: i for i, c in enumerate(settings.classics)}
    rows.sort(key=lambda r: (KIND_ORDER[r.kind], rank.get(r.name, 0), r.name, r.seed))

    # 4. latency of every row in one interleaved loop, 5. learning curves, 6. the report
    latency = _latency(out, settings, rows, val_set, progress)
    curves = _curves(out, settings, rows, {curve_dynamic, curve_static} - {None}, progress)
    table = summarise(rows, latency)
    comparison = {
        "settings": settings.to_dict(), "command": command, "versions": runfolder.versions(), "size": list(size),
        "protocol": protocol_figures(settings, rows, costs), "rows": table, "verdicts": verdicts(table),
        "bands": bands(table), "latency": latency, "curves": curves, "convergence": convergence(curves),
        "per_seed": [asdict(r) for r in rows], "wall_seconds_this_call": time.time() - t_start, "workers": workers,
    }
    write_json_atomic(out / "comparison.json", comparison)
    write_text_atomic(out / "report.md", render_report(comparison))
    _write_plots(out, space, comparison, commons, settings, rows)
    manifest["status"] = "done"
    write_json_atomic(out / MANIFEST, manifest)
    return comparison


def _latency(out: Path, settings: CompareSettings, rows: list[Row], val_set, progress: bool) -> dict:
    import torch

    path = out / "latency.json"
    if settings.latency_repeats <= 0:
        return {}
    if path.is_file():
        cached = json.loads(path.read_text())
        if set(cached.get("rows", [])) == {r.key for r in rows}:
            return cached
    _say(f"latency: {len(rows)} runs, {settings.latency_repeats} interleaved repeats", progress)
    images = [val_set[i][0][None] for i in range(min(settings.latency_images, len(val_set)))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        figures = measure_latency(rows, images, settings.latency_repeats)
    finally:
        torch.set_num_threads(threads)
    result = {"rows": [r.key for r in rows], "threads": 1, "batch": 1, "repeats": settings.latency_repeats,
              "ms": figures}
    write_json_atomic(path, result)
    return result


def _curves(out: Path, settings: CompareSettings, rows: list[Row], names: set, progress: bool) -> dict:
    """mIoU vs steps of the learning-curve rows (first seed), from their periodic checkpoints."""
    import torch

    from .steps import evaluate_run

    path = out / "curves.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    for row in rows:
        if row.name not in names or row.seed != settings.seeds[0] or row.name in cached or settings.curve_points == 0:
            continue
        points = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for step, ckpt in runfolder.step_checkpoints(row.run):
                r = evaluate_run(row.run, checkpoint=str(ckpt), latency_repeats=0, max_images=settings.val_images,
                                 tensorboard=False, write=False)
                points.append([step, r.miou])
        finally:
            torch.set_num_threads(threads)
        if not points or points[-1][0] != row.result["train_steps"]:
            points.append([row.result["train_steps"], row.result["miou"]])
        cached[row.name] = {"kind": row.kind, "points": points}
        _say(f"learning curve of {row.name}: {len(points)} points", progress)
        write_json_atomic(path, cached)
    return cached


# --- figures of the table (pure) ----------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(rows: list[Row], latency: dict | None = None) -> list[dict]:
    """One entry per row name: mean ± std over seeds of each figure; per-image GFLOPs spread of dynamic
    nets pooled over seeds; latency median and quartiles pooled over the seeds' runs."""
    by_name: dict[str, list[Row]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append(r)
    ms = (latency or {}).get("ms", {})
    table = []
    for name, group in by_name.items():
        res = [g.result for g in group]
        dynamic = "gflops_mean" in res[0]
        miou, miou_std = mean_std([r["miou"] for r in res])
        gf, gf_std = mean_std([r["gflops_mean"] if dynamic else r["gflops"] for r in res])
        entry = {
            "name": name, "kind": group[0].kind, "seeds": [g.seed for g in group], "n": len(group),
            "miou": miou, "miou_std": miou_std, "gflops": gf, "gflops_seed_std": gf_std,
            "params_m": res[0]["params_m"], "train_seconds": mean_std([r["train_seconds"] for r in res])[0],
            "train_steps": mean_std([r["train_steps"] for r in res])[0], "runs": [g.run for g in group],
            "dynamic": dynamic,
        }
        if all(g.key in ms for g in group):
            entry["latency_ms"] = statistics.median([ms[g.key]["median"] for g in group])
            entry["latency_q1"] = min(ms[g.key]["q1"] for g in group)
            entry["latency_q3"] = max(ms[g.key]["q3"] for g in group)
        if all(f"{g.key} (all open)" in ms for g in group):
            entry["latency_ms_all_open"] = statistics.median([ms[f"{g.key} (all open)"]["median"] for g in group])
        if dynamic:
            per_image = [v for r in res for v in r.get("per_image_gflops", [])]
            entry.update(
                gflops_min=min(r["gflops_min"] for r in res), gflops_max=max(r["gflops_max"] for r in res),
                gflops_image_std=statistics.pstdev(per_image) if per_image else 0.0,
                gflops_p10=_quantile(per_image, 0.1), gflops_p90=_quantile(per_image, 0.9),
                body_ratio=statistics.fmean(r["body_gflops_mean"] / r["body_gflops_all_open"] for r in res),
                gflops_all_open=res[0]["gflops_all_open"],
                route_scale_spearman=_mean_or_none([r.get("route_scale_spearman") for r in res]),
            )
        table.append(entry)
    return table


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(vals) if vals else None


def _spread_of(a: dict, b: dict) -> float | None:
    """The seed spread a gap between two rows is measured against: sqrt(std_a^2 + std_b^2), None unless
    both rows have at least two seeds."""
    if a["n"] < 2 or b["n"] < 2:
        return None
    return math.hypot(a["miou_std"], b["miou_std"])


def _gap_words(gap: float, sp: float | None) -> str:
    if sp is None:
        return "seed spread unknown (fewer than 2 seeds)"
    return f"{'exceeds' if abs(gap) > sp else 'within'} the seed spread ({sp:.3f})"


def verdicts(table: list[dict]) -> list[dict]:
    """For each dynamic row: the other rows with at most its realised GFLOPs, the best of them, and
    whether the dynamic net is on the Pareto front of the whole table (by mean mIoU and GFLOPs)."""
    front = set(pareto_indices([(r["gflops"], r["miou"]) for r in table]))
    out = []
    for i, d in enumerate(table):
        if d["kind"] != "dynamic":
            continue
        cheaper = [r for r in table if r is not d and r["gflops"] <= d["gflops"]]
        best = max(cheaper, key=lambda r: r["miou"], default=None)
        entry = {"name": d["name"], "gflops": d["gflops"], "miou": d["miou"], "miou_std": d["miou_std"], "n": d["n"],
                 "on_front": i in front,
                 "cheaper": [{"name": r["name"], "gflops": r["gflops"], "miou": r["miou"], "miou_std": r["miou_std"], "n": r["n"]}
                             for r in sorted(cheaper, key=lambda r: r["gflops"])]}
        if best is not None:
            gap = d["miou"] - best["miou"]
            sp = _spread_of(d, best)
            entry.update(best=best["name"], gap=gap, spread=sp, gap_exceeds_spread=None if sp is None else abs(gap) > sp)
        dominating = [r["name"] for r in table if r is not d and r["gflops"] <= d["gflops"] and r["miou"] >= d["miou"]
                      and (r["gflops"], r["miou"]) != (d["gflops"], d["miou"])]
        entry["dominated_by"] = dominating
        out.append(entry)
    return out


def bands(table: list[dict]) -> list[dict]:
    """The GFLOPs axis cut at the dynamic rows' realised GFLOPs: per band, its rows, those on the Pareto
    front of the whole table, and the gap between its best and second-best row against their seed spread."""
    front = {table[i]["name"] for i in pareto_indices([(r["gflops"], r["miou"]) for r in table])}
    cuts = sorted({r["gflops"] for r in table if r["kind"] == "dynamic"})
    edges = [0.0, *cuts, math.inf]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        members = sorted([r for r in table if lo < r["gflops"] <= hi], key=lambda r: -r["miou"])
        if not members:
            continue
        band = {"low": lo, "high": None if math.isinf(hi) else hi, "rows": [r["name"] for r in members],
                "front": [r["name"] for r in members if r["name"] in front]}
        if len(members) > 1:
            a, b = members[0], members[1]
            gap = a["miou"] - b["miou"]
            sp = _spread_of(a, b)
            band.update(best=a["name"], second=b["name"], gap=gap, spread=sp,
                        gap_exceeds_spread=None if sp is None else abs(gap) > sp)
        out.append(band)
    return out


def convergence(curves: dict, tolerance: float = 0.01) -> dict:
    """Per learning curve: the mIoU change over its last third of training; 'converged' when it is
    below ``tolerance``."""
    out = {}
    for name, c in curves.items():
        pts = c["points"]
        if len(pts) < 2:
            continue
        last_step = pts[-1][0]
        ref = min(pts, key=lambda p: abs(p[0] - 2 * last_step / 3))
        change = pts[-1][1] - ref[1]
        out[name] = {"from_step": ref[0], "to_step": last_step, "miou_change": change, "converged": abs(change) < tolerance,
                     "tolerance": tolerance}
    return out


def protocol_figures(settings: CompareSettings, rows: list[Row], costs: dict) -> dict:
    """The protocol and the measured cost of a dynamic step in static steps: from the step-cost probe
    (time protocol) and from the rows' own training seconds per step (both protocols)."""
    per_step = {}
    for r in rows:
        if r.kind != "added" and r.result.get("train_steps"):
            per_step.setdefault(r.name, []).append(r.result["train_seconds"] / r.result["train_steps"])
    sps = {k: statistics.fmean(v) for k, v in per_step.items()}
    dyn = [v for k, v in sps.items() if k.startswith("Dynamic-")]
    measured = {}
    if dyn:
        t_dyn = statistics.fmean(dyn)
        measured = {k: t_dyn / v for k, v in sps.items() if not k.startswith("Dynamic-") and v > 0}
    out = {"protocol": settings.protocol, "steps": settings.steps, "seconds_per_step": sps,
           "dynamic_step_in_static_steps_from_training": measured}
    if costs:
        t = statistics.fmean(costs[f"Dynamic-{d}"]["median"] for d in settings.dynamic)
        out["step_costs_ms"] = costs
        out["dynamic_step_in_static_steps_probe"] = {k: t / v["median"] for k, v in costs.items() if not k.startswith("Dynamic-")}
    return out


def _pm(mean: float, std: float, n: int, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def render_report(comparison: dict) -> str:
    s = comparison["settings"]
    h, w = comparison["size"]
    proto = comparison["protocol"]
    lines = [
        "# routespace comparison",
        "",
        f"Preset `{s['preset']}`, data `{s['data']}`, input {h}x{w}, batch {s['batch_size']}, seeds {s['seeds']}, "
        f"dynamic budget mode `{s['budget_mode']}`, protocol `{s['protocol']}` "
        + ("(every row trained for the same number of steps, the paper's protocol). " if s["protocol"] == "steps" else
           "(each static row trained for the dynamic rows' wall time: its steps = steps x dynamic step cost / its step cost, "
           "costs measured interleaved in one process). ")
        + "Each row is a `routespace train` run folder (its command is in `rows/<row>-s<seed>.json` and the run's "
        "manifest). GFLOPs per image, paper convention; dynamic nets: the realised mean over the validation images "
        "(p10-p90, min-max of the per-image values). mIoU mean ± std over seeds (sample std) where a row has several. "
        "Latency: batch 1, one thread, every run in one interleaved loop, median [quartiles].",
        "",
        "| net | kind | mIoU | GFLOPs | per-image GFLOPs p10-p90 (min-max) | params (M) | latency ms | steps | train s | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison["rows"]:
        spread_txt = ""
        if r["dynamic"]:
            spread_txt = f"{r['gflops_p10']:.5f}-{r['gflops_p90']:.5f} ({r['gflops_min']:.5f}-{r['gflops_max']:.5f})"
        lat = ""
        if r.get("latency_ms") is not None:
            lat = f"{r['latency_ms']:.1f} [{r['latency_q1']:.1f}-{r['latency_q3']:.1f}]"
            if r.get("latency_ms_all_open") is not None:
                lat += f" (all open {r['latency_ms_all_open']:.1f})"
        lines.append(
            f"| {r['name']} | {r['kind']} | {_pm(r['miou'], r['miou_std'], r['n'])} | {r['gflops']:.5f} | {spread_txt} | "
            f"{r['params_m']:.3f} | {lat} | {r['train_steps']:.0f} | {r['train_seconds']:.0f} | {','.join(map(str, r['seeds']))} |"
        )
    lines += ["", "## Is each dynamic net on the Pareto front?", ""]
    for v in comparison["verdicts"]:
        cheaper = ", ".join(f"{c['name']} {_pm(c['miou'], c['miou_std'], c['n'])} ({c['gflops']:.5f})" for c in v["cheaper"]) or "none"
        verdict = ("on the Pareto front" if v["on_front"] else f"not on the Pareto front (dominated by {', '.join(v['dominated_by'])})")
        gap = ""
        if v.get("best"):
            gap = (f"; against the best of them, {v['best']}, the gap is {v['gap']:+.3f} mIoU, "
                   f"{_gap_words(v['gap'], v['spread'])}")
        lines.append(f"- **{v['name']}** ({_pm(v['miou'], v['miou_std'], v['n'])} "
                     f"at {v['gflops']:.5f} GFLOPs): {verdict}. Rows with at most its GFLOPs: {cheaper}{gap}.")
    lines += ["", "## Per GFLOPs band (cut at the dynamic nets' realised GFLOPs)", ""]
    for b in comparison["bands"]:
        hi = "inf" if b["high"] is None else f"{b['high']:.5f}"
        txt = f"- ({b['low']:.5f}, {hi}]: {', '.join(b['rows'])}; on the front: {', '.join(b['front']) or 'none'}"
        if b.get("best"):
            txt += f"; best {b['best']} leads {b['second']} by {b['gap']:.3f}, {_gap_words(b['gap'], b['spread'])}"
        lines.append(txt + ".")
    lines += ["", "## Protocol and training cost", ""]
    sps = proto["seconds_per_step"]
    if sps:
        lines.append("Seconds per training step, measured from each row's run (rows trained " +
                     f"{comparison['workers']} at a time): " + ", ".join(f"{k} {v:.3f}" for k, v in sps.items()) + ".")
    if proto["dynamic_step_in_static_steps_from_training"]:
        lines.append("A dynamic step cost this many steps of each static row (from those times): " + ", ".join(
            f"{k} {v:.1f}" for k, v in proto["dynamic_step_in_static_steps_from_training"].items()) + ".")
    if proto.get("dynamic_step_in_static_steps_probe"):
        lines.append("Measured before training, interleaved in one process (median of 5 steps, untrained nets with every "
                     "gate open), a dynamic step cost this many static steps, which set the static rows' steps: " +
                     ", ".join(f"{k} {v:.1f}" for k, v in proto["dynamic_step_in_static_steps_probe"].items()) + ".")
    lines += ["", "## Convergence (learning curves, `learning-curve.png`)", ""]
    for name, c in comparison["convergence"].items():
        lines.append(f"- {name}: mIoU changed by {c['miou_change']:+.3f} from step {c['from_step']} to {c['to_step']} "
                     f"(the last third): {'converged' if c['converged'] else 'not converged'} "
                     f"(tolerance {c['tolerance']}).")
    if not comparison["convergence"]:
        lines.append("- no learning curve was recorded")
    lines += ["", "## Reproducibility", "",
              "Every run trains with one torch thread and `torch.use_deterministic_algorithms(True)`, seeded "
              "initialisation and data order, so the same command and seed give the same weights and table on the same "
              "machine and versions (tested in `tests/test_compare.py`); latency and training seconds are measurements "
              "and vary with the machine's load.", "",
              f"Command: `{comparison['command']}`", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(comparison["versions"].items())), ""]
    return "\n".join(lines)


def _write_plots(out: Path, space: RoutingSpace, comparison: dict, commons: dict, settings: CompareSettings,
                 rows: list[Row]) -> None:
    from ..evaluators.plots import plot_architecture, save_figure
    from ..evaluators.plots.comparison import plot_comparison, plot_learning_curves
    from ..evaluators.plots.show import show
    from .dynamic.common import EdgeFrequencies

    save_figure(plot_comparison(comparison["rows"], title="mIoU (± std over seeds) vs GFLOPs per image"), out / "pareto.png")
    if comparison["curves"]:
        save_figure(plot_learning_curves(comparison["curves"], title="mIoU on the validation images vs training steps"),
                    out / "learning-curve.png")
    for d, arch in commons.items():
        freq_path = out / "specs" / f"common-{d}-s{settings.seeds[0]}.freq.json"
        if freq_path.is_file():
            freq = EdgeFrequencies.from_dict(json.loads(freq_path.read_text())).usage()
            fig = plot_architecture(space=space, frequencies=freq,
                                    title=f"Dynamic-{d}: how often each edge carries something (open or pass-through)")
            save_figure(fig, out / f"grid-dynamic-{d}.png")
        save_figure(plot_architecture(arch, title=f"Common-{d}: edges open on >= {settings.tau:.0%} of images"),
                    out / f"grid-common-{d}.png")
    for row in rows:
        if row.kind == "dynamic" and row.seed == settings.seeds[0]:
            save_figure(show(row.run, what="routes", title=row.name), out / f"routes-{row.name}.png")
