"""`show`: one Figure for a spec, classic, Architecture, training run, search folder or results file."""
from __future__ import annotations

import json
from pathlib import Path

from ...spaces.errors import RoutespaceError

VIEWS = ("grid", "routes", "histogram", "pareto", "history")


def show(target, *, preset: str | None = None, what: str | None = None, images: int = 64, title: str | None = None):
    """Return the Figure for ``target``:

    - an Architecture / StaticNet, a spec file (json, node-link, GraphML, state dict) or a classic name
      (``preset`` picks the space, default paper): the grid with the architecture;
    - a training run folder (``routespace train --out``): static -> its grid; dynamic -> ``what`` =
      ``grid`` (edge open frequencies over the first ``images`` validation images), ``routes`` (four images
      with the smallest and largest objects) or ``histogram`` (realised GFLOPs, budget target marked);
    - a search folder (with ``study.db``): ``history`` (default) or ``pareto`` (trials' mIoU vs GFLOPs);
    - a JSON results file (a list, or {"results": [...]}, of {label, gflops, miou, group}): ``pareto``.
    """
    from ...spaces.architecture import Architecture
    from ...spaces.builder import StaticNet

    if what is not None and what not in VIEWS:
        raise RoutespaceError(f"unknown view {what!r}: choose one of {', '.join(VIEWS)}")
    if isinstance(target, StaticNet):
        target = target.arch
    if isinstance(target, Architecture):
        return _grid(target, what, title)
    path = Path(str(target))
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return _run(path, what, images, title)
        if (path / "study.db").is_file():
            return _search(path, what, title)
        raise RoutespaceError(f"{path} is neither a training run (manifest.json) nor a search folder (study.db)")
    if path.is_file() and path.suffix.lower() == ".json":
        results = _results_list(path)
        if results is not None:
            _only(what, "pareto", path)
            from .pareto import plot_pareto

            return plot_pareto(results, title=title)
    from ...spaces.exports.formats import resolve_target

    model = resolve_target(str(target), preset)
    return _grid(model.arch if isinstance(model, StaticNet) else model, what, title)


def _only(what: str | None, allowed: str, source) -> None:
    if what not in (None, allowed):
        raise RoutespaceError(f"{source} can be shown as '{allowed}' only, not '{what}'")


def _grid(arch, what, title):
    from .grid import plot_architecture

    _only(what, "grid", "an architecture")
    return plot_architecture(arch, title=title)


def _results_list(path: Path):
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        data = data["results"]
    if isinstance(data, list) and data and all(isinstance(r, dict) and "gflops" in r and "miou" in r for r in data):
        return data
    return None


def _search(path: Path, what, title):
    import optuna

    from .history import plot_history

    if what not in (None, "history", "pareto"):
        raise RoutespaceError(f"a search folder can be shown as history or pareto, not {what!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path / 'study.db'}"
    names = optuna.get_all_study_names(storage)
    if not names:
        raise RoutespaceError(f"{path / 'study.db'} holds no study")
    study = optuna.load_study(study_name=names[0], storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    evaluator = next((t.user_attrs.get("evaluator") for t in done if t.user_attrs.get("evaluator")), None)
    if isinstance(evaluator, dict):
        evaluator = evaluator.get("evaluator") or evaluator.get("name")
    source = f" ({evaluator} evaluator)" if evaluator else ""
    if what == "pareto":
        from .pareto import plot_pareto

        points = [(f"trial {t.number}", t.user_attrs["gflops"], t.user_attrs["miou"], "search")
                  for t in done if "gflops" in t.user_attrs and "miou" in t.user_attrs]
        if not points:
            raise RoutespaceError(f"study {names[0]!r} has no trials with 'gflops' and 'miou' to plot")
        return plot_pareto(points, title=title or f"study '{names[0]}'{source}: mIoU vs GFLOPs", max_labels=12)
    if len(study.directions) != 1:
        raise RoutespaceError(f"study {names[0]!r} has several objectives: show it with --what pareto")
    objective = "mIoU" if any("miou" in t.user_attrs for t in done) else "objective"
    return plot_history(study, objective=objective, title=title or f"search history of study '{names[0]}'{source}")


def _run(path: Path, what, images: int, title):
    from ..evaluate import load_run_model
    from ..runfolder import read_manifest

    manifest = read_manifest(path)
    if manifest.get("kind") == "static":
        from ...spaces.architecture import Architecture

        return _grid(Architecture.from_dict((manifest.get("spec") or {}).get("architecture")), what, title)
    if manifest.get("kind") != "dynamic":
        raise RoutespaceError(f"run {path} is of kind {manifest.get('kind')!r}: only static and dynamic runs can be shown")
    if images < 1:
        raise RoutespaceError("--images must be at least 1")
    model, manifest, _ = load_run_model(path)
    from ..datasets import load_dataset
    from ..runrecord import RunSettings

    record = RunSettings.of(manifest, str(path))
    data = load_dataset(record.data, "val", size=record.size)
    what = what or "grid"
    label = title or f"dynamic net {path.name}"
    if what == "grid":
        from .dynamic import collect_dynamic
        from .grid import plot_architecture

        rec = collect_dynamic(model, data, range(min(images, len(data))))
        return plot_architecture(space=model.space, frequencies=rec.frequencies,
                                 title=f"{label}: edge open frequency over {len(rec.indices)} val images")
    if what == "routes":
        return _routes(model, data, label)
    if what == "histogram":
        return _histogram(model, data, images, record.budget.to_dict() if record.budget else None, label)
    raise RoutespaceError(f"a dynamic run can be shown as grid, routes or histogram, not {what!r}")


def _routes(model, data, label):
    from .data import pick_extremes
    from .dynamic import predict
    from .routes import plot_routes

    pool = range(min(len(data), 64))
    if hasattr(data, "mean_object_px"):
        sizes = [data.mean_object_px(i) for i in pool]
        chosen = pick_extremes(sizes, 4)
        chosen.sort(key=lambda i: sizes[i])
        captions = [f"#{i}: objects ~{sizes[i]:.0f} px" for i in chosen]
    else:
        chosen = list(pool)[:4]
        captions = [f"#{i}" for i in chosen]
    images, labels, preds, routes, gflops = predict(model, data, chosen)
    captions = [f"{c}\n{g:.3g} GFLOPs" for c, g in zip(captions, gflops)]
    return plot_routes(list(images), list(preds), routes, model.space, targets=labels, captions=captions,
                       title=f"{label}: per-image routes")


def _histogram(model, data, images: int, budget, label):
    from ..cost import space_cost
    from .data import budget_target_gflops
    from .dynamic import collect_dynamic
    from .histogram import plot_flops_histogram

    rec = collect_dynamic(model, data, range(min(images, len(data))))
    h, w = data[0][0].shape[-2:]
    report = space_cost(model.space, (int(h), int(w)), "paper", gates=True)
    target = budget_target_gflops(budget, (report.flops - report.body_flops) / 1e9, report.body_flops / 1e9)
    return plot_flops_histogram(rec.gflops, target=target,
                                title=f"{label}: realised GFLOPs over {len(rec.indices)} val images at {h}x{w}")
