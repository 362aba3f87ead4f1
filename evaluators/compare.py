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
import random
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..spaces.architecture import Architecture
from ..spaces.classics import CLASSICS
from ..spaces.errors import RoutespaceError
from ..spaces.fileio import write_json_atomic, write_text_atomic
from ..spaces.space import RoutingSpace, preset
from . import runfolder

# The paper's three budget settings: name -> (lambda, mu).
DYNAMIC_SETTINGS: dict[str, tuple[float, float]] = {"A": (0.8, 0.1), "B": (0.5, 0.1), "C": (0.5, 0.2)}
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
    from .train import preset_config

    cfg = preset_config(settings.preset, steps=settings.steps, seed=seed, batch_size=settings.batch_size)
    return replace(cfg, checkpoint_every=max(1, settings.steps // 5))


def train_or_load(run: Path, model: torch.nn.Module, train_set, config, extra_loss=None, meta=None, progress=True) -> float:
    """Train ``model`` into ``run`` (resuming a half-finished run) or load it if done; returns the
    training seconds measured in this call (0.0 when loaded)."""
    from .checkpoint import load_checkpoint, load_model_state
    from .train import fit

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
    from .cost import gflops

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


def compare(
    out: str | Path,
    settings: CompareSettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Run (or resume) the comparison into ``out``; writes report.md, comparison.json and plots."""
    from ..search.common import common_architecture, edge_frequencies
    from ..spaces.builder import build
    from ..spaces.supernet import DynamicNet
    from .cost import architecture_cost
    from .datasets import load_dataset
    from .evaluate import evaluate
    from .schedule import make_budget_loss

    settings = settings or CompareSettings()
    out = Path(out)
    _check_folder(out, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(exist_ok=True)
    command = command or shlex.join(["routespace", *sys.argv[1:]])
    manifest = {"command": command, "settings": settings.to_dict(), "versions": runfolder.versions(), "status": "running"}
    write_json_atomic(out / MANIFEST, manifest)

    space = preset(settings.preset)
    size = tuple(space.input_size)
    train_set = load_dataset(settings.data, "train", size=size)
    val_set = load_dataset(settings.data, "val", size=size)
    if settings.val_images is not None:
        val_set = torch.utils.data.Subset(val_set, range(min(len(val_set), settings.val_images)))
        val_set.num_classes = space.num_classes  # type: ignore[attr-defined]
    rows: list[Row] = []
    t_start = time.time()

    def seeds_for(row_name: str) -> tuple[int, ...]:
        if not settings.headline_seeds_only or row_name in settings.headline_seeds_only:
            return settings.seeds
        return settings.seeds[:1]

    def run_row(name: str, kind: str, seed: int, make: Callable[[], tuple[torch.nn.Module, Any, dict]]) -> dict:
        key = f"{name}-s{seed}"
        path = out / "rows" / f"{key}.json"
        if path.is_file():
            try:
                result = json.loads(path.read_text())
                rows.append(Row(name, kind, seed, result))
                _say(f"{key}: done earlier (miou {result['miou']:.3f})", progress)
                return result
            except (OSError, ValueError, KeyError):
                pass  # a damaged row is recomputed
        _say(f"{key}: training {settings.steps} steps", progress)
        torch.manual_seed(seed)
        model, extra, meta = make()
        config = _train_config(settings, seed)
        seconds = train_or_load(out / "runs" / key, model, train_set, config, extra, meta, progress)
        result = evaluate(model, val_set, batch_size=16, latency_repeats=settings.latency_repeats)
        result.pop("per_image_gflops", None) if kind != "dynamic" else None
        result.update(name=name, kind=kind, seed=seed, train_steps=settings.steps, train_seconds=seconds)
        if hasattr(model, "arch"):
            result["spec"] = model.arch.to_dict()
        write_json_atomic(path, result)
        rows.append(Row(name, kind, seed, result))
        _say(f"{key}: miou {result['miou']:.3f}", progress)
        return result

    # 1. dynamic nets, their frequencies and Common nets
    commons: dict[str, Architecture] = {}
    for setting in settings.dynamic:
        lam, mu = DYNAMIC_SETTINGS[setting]
        name = f"Dynamic-{setting}"
        for seed in seeds_for(name):
            holder: dict = {}

            def make_dynamic(lam=lam, mu=mu, holder=holder):
                net = DynamicNet(space)
                holder["net"] = net
                meta = {"kind": "dynamic", "spec": {"space": space.to_dict()},
                        "extra": {"budget": {"lambda": lam, "mu": mu}}}
                return net, make_budget_loss(space, size, mu, lam, quiet=not progress), meta

            run_row(name, "dynamic", seed, make_dynamic)
            if seed != settings.seeds[0]:
                continue
            freq_path = out / f"frequencies-{setting}.json"
            spec_path = out / f"common-{setting}.json"
            if spec_path.is_file():
                commons[setting] = Architecture.from_json(spec_path.read_text())
                continue
            net = holder.get("net")
            if net is None:  # row was done earlier: reload the trained net
                from .evaluate import load_run_model

                net, _, _ = load_run_model(out / "runs" / f"{name}-s{seed}")
            freqs = edge_frequencies(net, val_set, threshold=settings.threshold)
            write_json_atomic(freq_path, freqs.to_dict())
            arch = common_architecture(freqs, settings.tau, name=f"common-{setting}")
            write_text_atomic(spec_path, arch.to_json())
            commons[setting] = arch

    def make_static(arch: Architecture):
        def make():
            return build(arch), None, {"kind": "static", "spec": {"architecture": arch.to_dict()}}
        return make

    for setting, arch in commons.items():
        name = f"Common-{setting}"
        for seed in seeds_for(name):
            run_row(name, "common", seed, make_static(arch))
    for cname in settings.classics:
        arch = CLASSICS[cname](space)
        for seed in seeds_for(cname):
            run_row(cname, "classic", seed, make_static(arch))
    if settings.random_baseline:
        dyn = [r.result for r in rows if r.kind == "dynamic"]
        target = (sum(d["gflops_mean"] for d in dyn) / len(dyn)) if dyn else architecture_cost(CLASSICS["deeplabv3"](space)).gflops
        arch = _random_path_near(space, target, size, seed=settings.seeds[0])
        write_text_atomic(out / "random-path.json", arch.to_json())
        for seed in seeds_for("random-path"):
            run_row("random-path", "random", seed, make_static(arch))

    table = summarise(rows)
    comparison = {"settings": settings.to_dict(), "command": command, "versions": runfolder.versions(),
                  "size": list(size), "rows": table, "per_seed": [asdict(r) for r in rows],
                  "wall_seconds_this_call": time.time() - t_start}
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
    from .plots import plot_architecture, plot_pareto, save_figure
    from ..search.common import EdgeFrequencies

    points = [(r["name"], r["gflops"], r["miou"], r["kind"]) for r in table]
    save_figure(plot_pareto(points, title="mIoU vs GFLOPs (per image)"), out / "pareto.png")
    for setting, arch in commons.items():
        path = out / f"frequencies-{setting}.json"
        freq = EdgeFrequencies.from_dict(json.loads(path.read_text())).freq if path.is_file() else None
        if freq is not None:
            fig = plot_architecture(space=space, frequencies=freq, title=f"Dynamic-{setting}: how often each edge is open")
            save_figure(fig, out / f"grid-dynamic-{setting}.png")
        fig = plot_architecture(arch, title=f"Common-{setting}: edges open on >= {settings.tau:.0%} of images")
        save_figure(fig, out / f"grid-common-{setting}.png")
