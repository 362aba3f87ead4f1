"""Side-by-side comparison: Dynamic-A/B/C, their Common nets retrained from scratch, the classics and a
random-path baseline, trained on the same data with the same schedule and seeds (equal steps, the
paper's protocol; wall time is reported beside it).

The run folder is resumable: each row trains in its own sub-run (``runs/<row>-s<seed>/``, resumed from
its checkpoint after a crash) and its evaluation is written atomically to ``rows/<row>-s<seed>.json``;
a rerun of the same command skips what is done. A folder holding a different comparison is refused
unless ``overwrite=True``.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..spaces.architecture import Architecture
from ..spaces.classics import CLASSICS
from ..spaces.errors import RoutespaceError
from ..spaces.fileio import write_json_atomic, write_text_atomic
from ..spaces.procs import exit_with_parent
from ..spaces.space import RoutingSpace, preset
from ..evaluators import runfolder

from .dynamic.settings import SETTINGS as DYNAMIC_SETTINGS
MANIFEST = "comparison-manifest.json"


@dataclass
class CompareSettings:
    """Everything that decides a comparison's result."""

    preset: str = "tiny"
    data: str = "synthetic"
    steps: int = 600
    seeds: tuple[int, ...] = (0,)
    dynamic: tuple[str, ...] = ("A", "B", "C")
    classics: tuple[str, ...] = tuple(CLASSICS)
    random_baseline: bool = True
    tau: float = 0.5
    threshold: float = 1e-4
    batch_size: int = 8
    val_images: int | None = None
    latency_repeats: int = 10
    headline_seeds_only: tuple[str, ...] = ()  # rows run for every seed; others only for seeds[0] (empty = all rows all seeds)

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        self.dynamic = tuple(self.dynamic)
        self.classics = tuple(self.classics)
        self.headline_seeds_only = tuple(self.headline_seeds_only)
        if not self.seeds:
            raise RoutespaceError("give at least one seed")
        if self.steps < 1:
            raise RoutespaceError(f"steps must be at least 1, got {self.steps}")
        if not 0 < self.tau <= 1:
            raise RoutespaceError(f"tau must be in (0, 1], got {self.tau}: it is the fraction of images an edge must be open on")
        for d in self.dynamic:
            if d not in DYNAMIC_SETTINGS:
                raise RoutespaceError(f"unknown dynamic setting {d!r}: choose from {', '.join(DYNAMIC_SETTINGS)}")
        for c in self.classics:
            if c not in CLASSICS:
                raise RoutespaceError(f"unknown classic {c!r}: choose from {', '.join(CLASSICS)}")
        preset(self.preset)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


@dataclass
class Row:
    name: str  # e.g. 'Dynamic-C', 'Common-C', 'unet', 'random-path'
    kind: str  # 'dynamic' | 'common' | 'classic' | 'random'
    seed: int
    result: dict = field(default_factory=dict)


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
        if isinstance(old, dict) and old.get("settings") == settings.to_dict():
            return  # same comparison: resume
        if not overwrite:
            raise RoutespaceError(
                f"{out} already holds a different comparison (other settings): choose another --out or pass --overwrite"
            )
    elif any(out.iterdir()) and not overwrite:
        raise RoutespaceError(f"{out} is not empty and holds no comparison: choose another --out or pass --overwrite")
    if overwrite:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _train_config(settings: CompareSettings, seed: int):
    """The same schedule for every row: the preset's training defaults at the comparison's length."""
    from ..evaluators.train import preset_config

    cfg = preset_config(settings.preset, steps=settings.steps, seed=seed, batch_size=settings.batch_size)
    return replace(cfg, checkpoint_every=max(1, settings.steps // 5))


def train_or_load(run: Path, model: torch.nn.Module, train_set, config, extra_loss=None, meta=None, progress=True) -> float:
    """Train ``model`` into ``run`` (resuming a half-finished run) or load it if done; returns the
    training seconds measured in this call (0.0 when loaded)."""
    from ..evaluators.checkpoint import load_checkpoint, load_model_state
    from ..evaluators.train import fit

    manifest = runfolder.read_manifest(run) if run.is_dir() else None
    final = runfolder.final_checkpoint_path(run)
    if manifest is not None and manifest.get("status") == "done" and final.is_file():
        load_model_state(model, load_checkpoint(final)["model"], final)
        return 0.0
    result = fit(model, train_set, config, out_dir=run, extra_loss=extra_loss, resume=manifest is not None,
                 progress=progress, meta=meta)
    return result.seconds


def _random_path_near(space: RoutingSpace, target_gflops: float, size, seed: int, tries: int = 400) -> Architecture:
    """A seeded random single path whose GFLOPs is closest to ``target_gflops`` (first within 5 % wins)."""
    from ..spaces.random_arch import random_path
    from ..evaluators.cost import gflops

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


def _datasets(settings: CompareSettings):
    from ..evaluators.datasets import load_dataset

    space = preset(settings.preset)
    size = tuple(space.input_size)
    train_set = load_dataset(settings.data, "train", size=size)
    val_set = load_dataset(settings.data, "val", size=size)
    if settings.val_images is not None:
        val_set = torch.utils.data.Subset(val_set, range(min(len(val_set), settings.val_images)))
        val_set.num_classes = space.num_classes  # type: ignore[attr-defined]
    return space, size, train_set, val_set


def _build_row_model(job: dict, space: RoutingSpace, size, progress: bool):
    """(model, extra loss, run meta) of a row: a budgeted dynamic net or a static architecture."""
    from ..spaces.builder import build
    from .dynamic.budget import make_budget_loss
    from ..spaces.supernet import DynamicNet

    if job["kind"] == "dynamic":
        lam, mu, mode = job["lam"], job["mu"], job.get("mode", "realised")
        net = DynamicNet(space, gate_resolution=job.get("gate_resolution", "full"))
        budget = None if mu is None else make_budget_loss(space, size, mu, lam, mode)
        meta = {"kind": "dynamic", "spec": net.spec(), "extra": {"budget": {"lambda": lam, "mu": mu, "mode": mode}}}
        return net, budget, meta
    arch = Architecture.from_dict(job["arch"])
    return build(arch), None, {"kind": "static", "spec": {"architecture": arch.to_dict()}}


def _row_path(out: Path, job: dict) -> Path:
    return out / "rows" / f"{job['name']}-s{job['seed']}.json"


def _run_job(out: str, settings_dict: dict, job: dict, threads: int, progress: bool) -> dict:
    """Train (or resume, or load) one row and evaluate its mIoU and FLOPs; latency comes later, measured
    on its own. Runs in a worker process when rows are trained in parallel."""
    from ..evaluators.evaluate import evaluate

    torch.set_num_threads(threads)
    settings = CompareSettings(**settings_dict)
    space, size, train_set, val_set = _datasets(settings)
    key = f"{job['name']}-s{job['seed']}"
    _say(f"{key}: training {settings.steps} steps", progress)
    torch.manual_seed(job["seed"])
    model, extra, meta = _build_row_model(job, space, size, progress)
    meta["resume_command"] = job.get("command", "the same command again")
    seconds = train_or_load(Path(out) / "runs" / key, model, train_set, _train_config(settings, job["seed"]),
                            extra, meta, progress=False)
    result = evaluate(model, val_set, batch_size=16, latency_repeats=0)
    if job["kind"] != "dynamic":
        result.pop("per_image_gflops", None)
    result.update(name=job["name"], kind=job["kind"], seed=job["seed"], train_steps=settings.steps,
                  train_seconds=seconds, train_threads=threads)
    if hasattr(model, "arch"):
        result["spec"] = model.arch.to_dict()
    write_json_atomic(_row_path(Path(out), job), result)
    _say(f"{key}: miou {result['miou']:.3f} ({seconds:.0f} s training)", progress)
    return result


def _load_row(out: Path, job: dict) -> dict | None:
    path = _row_path(out, job)
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
        done = _load_row(out, job)
        if done is not None:
            _say(f"{job['name']}-s{job['seed']}: done earlier (miou {done['miou']:.3f})", progress)
            results[i] = done
        else:
            todo.append(i)
    if todo and workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(todo)), initializer=exit_with_parent,
                                          initargs=(os.getpid(),)) as pool:
            pending = {i: pool.apply_async(_run_job, (str(out), settings.to_dict(), jobs[i], 1, progress)) for i in todo}
            for i, res in pending.items():
                results[i] = res.get()
            pool.close()  # let the workers exit on their own (terminate() leaks their semaphores)
            pool.join()
    else:
        for i in todo:
            results[i] = _run_job(str(out), settings.to_dict(), jobs[i], torch.get_num_threads(), progress)
    return [results[i] for i in range(len(jobs))]


def _measure_latency(out: Path, settings: CompareSettings, rows: list[Row], val_set, progress: bool) -> None:
    """Batch-1 latency of every row, measured one net at a time after training (so parallel training
    does not disturb it), median of ``latency_repeats`` runs over 4 validation images."""
    from ..evaluators.evaluate import load_run_model, median_latency_ms

    if settings.latency_repeats <= 0:
        return
    images = [val_set[i][0][None] for i in range(min(4, len(val_set)))]
    for row in rows:
        if "latency_ms" in row.result:
            continue
        model, _, _ = load_run_model(out / "runs" / f"{row.name}-s{row.seed}")
        model.eval()
        dev = torch.device("cpu")
        fn = model.forward_skipping if row.kind == "dynamic" else model
        row.result["latency_ms"] = median_latency_ms(fn, images, settings.latency_repeats, dev)
        if row.kind == "dynamic":
            row.result["latency_ms_all_open"] = median_latency_ms(model, images, settings.latency_repeats, dev)
        row.result["latency_threads"] = torch.get_num_threads()
        write_json_atomic(out / "rows" / f"{row.name}-s{row.seed}.json", row.result)
    _say("latency measured", progress)


def compare(
    out: str | Path,
    settings: CompareSettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    workers: int = 1,
) -> dict:
    """Run (or resume) the comparison into ``out``; writes report.md, comparison.json and plots.

    ``workers`` > 1 trains that many rows at a time, each in its own process with one torch thread
    (faster on a CPU than one process with several threads); results are the same either way up to
    floating-point order."""
    from .dynamic.common import common_architecture, edge_frequencies
    from ..evaluators.cost import architecture_cost
    from ..evaluators.evaluate import load_run_model

    settings = settings or CompareSettings()
    out = Path(out)
    _check_folder(out, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(exist_ok=True)
    command = command or "routespace.search.compare.compare(...)"  # the CLI passes its command line
    manifest = {"command": command, "settings": settings.to_dict(), "versions": runfolder.versions(), "status": "running"}
    write_json_atomic(out / MANIFEST, manifest)
    space, size, _, val_set = _datasets(settings)
    if settings.dynamic:  # the dynamic supernet is the largest net trained; `workers` of them may run at once
        from ..evaluators.memory import check_training_memory

        check_training_memory(space, settings.batch_size, size, dynamic=True, what="the comparison's dynamic nets",
                              processes=max(1, workers), advice="lower --workers, or use --preset tiny")
    t_start = time.time()

    def seeds_for(row_name: str) -> tuple[int, ...]:
        if not settings.headline_seeds_only or row_name in settings.headline_seeds_only:
            return settings.seeds
        return settings.seeds[:1]

    def static_jobs(name: str, kind: str, arch: Architecture) -> list[dict]:
        return [{"name": name, "kind": kind, "seed": seed, "arch": arch.to_dict()} for seed in seeds_for(name)]

    # 1. dynamic nets and the classics (independent of each other)
    jobs: list[dict] = []
    for setting in settings.dynamic:
        named = DYNAMIC_SETTINGS[setting]
        name = f"Dynamic-{setting}"
        jobs += [{"name": name, "kind": "dynamic", "seed": seed, "lam": named.lam, "mu": named.mu,
                  "gate_resolution": named.gate_resolution} for seed in seeds_for(name)]
    for cname in settings.classics:
        jobs += static_jobs(cname, "classic", CLASSICS[cname](space))
    for job in jobs:
        job["command"] = command
    results = _run_jobs(out, settings, jobs, workers, progress)

    # 2. the Common net of each dynamic net (first seed), from its routes over the validation images
    commons: dict[str, Architecture] = {}
    for setting in settings.dynamic:
        spec_path = out / f"common-{setting}.json"
        if not spec_path.is_file():
            net, _, _ = load_run_model(out / "runs" / f"Dynamic-{setting}-s{settings.seeds[0]}")
            freqs = edge_frequencies(net, val_set, threshold=settings.threshold)
            write_json_atomic(out / f"frequencies-{setting}.json", freqs.to_dict())
            write_text_atomic(spec_path, common_architecture(freqs, settings.tau, name=f"common-{setting}").to_json())
        commons[setting] = Architecture.from_json(spec_path.read_text())

    # 3. the Common nets retrained from scratch, and a random path of the dynamic nets' mean GFLOPs
    jobs2: list[dict] = []
    for setting, arch in commons.items():
        jobs2 += static_jobs(f"Common-{setting}", "common", arch)
    if settings.random_baseline:
        dyn = [r for r in results if r["kind"] == "dynamic"]
        target = (sum(d["gflops_mean"] for d in dyn) / len(dyn)) if dyn else architecture_cost(CLASSICS["deeplabv3"](space)).gflops
        arch = _random_path_near(space, target, size, seed=settings.seeds[0])
        write_text_atomic(out / "random-path.json", arch.to_json())
        jobs2 += static_jobs("random-path", "random", arch)
    for job in jobs2:
        job["command"] = command
    results += _run_jobs(out, settings, jobs2, workers, progress)

    order = {"dynamic": 0, "common": 1, "classic": 2, "random": 3}
    rows = [Row(r["name"], r["kind"], r["seed"], r) for r in results]
    rank = {c: i for i, c in enumerate(settings.classics)}  # classics in the order given
    rows.sort(key=lambda r: (order[r.kind], rank.get(r.name, 0), r.name, r.seed))
    _measure_latency(out, settings, rows, val_set, progress)

    table = summarise(rows)
    comparison = {"settings": settings.to_dict(), "command": command, "versions": runfolder.versions(),
                  "size": list(size), "rows": table, "per_seed": [asdict(r) for r in rows],
                  "wall_seconds_this_call": time.time() - t_start, "workers": workers}
    write_json_atomic(out / "comparison.json", comparison)
    write_text_atomic(out / "report.md", render_report(comparison))
    _write_plots(out, space, table, commons, settings)
    manifest["status"] = "done"
    write_json_atomic(out / MANIFEST, manifest)
    return comparison


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def summarise(rows: list[Row]) -> list[dict]:
    """One entry per row name: mean (and std over seeds) of each figure."""
    by_name: dict[str, list[Row]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append(r)
    table = []
    for name, group in by_name.items():
        res = [g.result for g in group]
        dynamic = group[0].kind == "dynamic"
        miou, miou_std = _mean_std([r["miou"] for r in res])
        entry = {
            "name": name, "kind": group[0].kind, "seeds": [g.seed for g in group],
            "miou": miou, "miou_std": miou_std,
            "gflops": _mean_std([r["gflops_mean"] if dynamic else r["gflops"] for r in res])[0],
            "params_m": res[0]["params_m"],
            "latency_ms": _mean_std([r["latency_ms"] for r in res])[0] if all("latency_ms" in r for r in res) else None,
            "train_seconds": _mean_std([r["train_seconds"] for r in res])[0],
            "train_steps": res[0]["train_steps"],
        }
        if dynamic:
            entry.update(
                gflops_min=min(r["gflops_min"] for r in res), gflops_max=max(r["gflops_max"] for r in res),
                body_gflops_mean=_mean_std([r["body_gflops_mean"] for r in res])[0],
                body_gflops_all_open=res[0]["body_gflops_all_open"], gflops_all_open=res[0]["gflops_all_open"],
                latency_ms_all_open=_mean_std([r["latency_ms_all_open"] for r in res])[0] if all("latency_ms_all_open" in r for r in res) else None,
            )
        table.append(entry)
    return table


def render_report(comparison: dict) -> str:
    s = comparison["settings"]
    h, w = comparison["size"]
    lines = [
        "# routespace comparison",
        "",
        f"Preset `{s['preset']}`, data `{s['data']}`, input {h}x{w}, {s['steps']} training steps per net "
        f"(batch {s['batch_size']}), seeds {s['seeds']}. GFLOPs are per image, paper convention; for dynamic nets "
        "the realised mean (min-max) over the validation images, counted from what the skipping executor ran. "
        "Latency: batch 1, median, this machine's CPU. mIoU ± std over seeds where more than one seed ran.",
        "",
        "| net | kind | mIoU | GFLOPs mean (min-max) | params (M) | latency (ms) | train s | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison["rows"]:
        miou = f"{r['miou']:.3f}" + (f" ± {r['miou_std']:.3f}" if len(r["seeds"]) > 1 else "")
        gf = f"{r['gflops']:.4f}"
        if r["kind"] == "dynamic":
            gf += f" ({r['gflops_min']:.4f}-{r['gflops_max']:.4f})"
        lat = "" if r.get("latency_ms") is None else f"{r['latency_ms']:.1f}"
        if r.get("latency_ms_all_open") is not None:
            lat += f" (all open {r['latency_ms_all_open']:.1f})"
        lines.append(
            f"| {r['name']} | {r['kind']} | {miou} | {gf} | {r['params_m']:.3f} | {lat} | {r['train_seconds']:.0f} | "
            f"{','.join(map(str, r['seeds']))} |"
        )
    lines += ["", f"Command: `{comparison['command']}`", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(comparison["versions"].items())), ""]
    return "\n".join(lines)


def _write_plots(out: Path, space: RoutingSpace, table: list[dict], commons: dict, settings: CompareSettings) -> None:
    from ..evaluators.plots import plot_architecture, plot_pareto, save_figure
    from .dynamic.common import EdgeFrequencies

    points = [(r["name"], r["gflops"], r["miou"], r["kind"]) for r in table]
    save_figure(plot_pareto(points, title="mIoU vs GFLOPs (per image)"), out / "pareto.png")
    for setting, arch in commons.items():
        path = out / f"frequencies-{setting}.json"
        freq = EdgeFrequencies.from_dict(json.loads(path.read_text())).usage() if path.is_file() else None
        if freq is not None:
            fig = plot_architecture(space=space, frequencies=freq,
                                    title=f"Dynamic-{setting}: how often each edge carries something (open or pass-through)")
            save_figure(fig, out / f"grid-dynamic-{setting}.png")
        fig = plot_architecture(arch, title=f"Common-{setting}: edges open on >= {settings.tau:.0%} of images")
        save_figure(fig, out / f"grid-common-{setting}.png")
