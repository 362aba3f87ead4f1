"""`routespace search`: search the routing space under an architecture budget and a search budget."""
from __future__ import annotations

import argparse
import json

from ..spaces.errors import RoutespaceError

# Settings that define a study; with --resume they default to the stored ones.
IDENTITY_ARGS = ("preset", "space", "strategy", "max_gflops", "max_params_m", "max_latency_ms", "size", "cells",
                 "seed", "evaluator", "data", "proxy_steps", "proxy_batch", "proxy_val_images", "sim_steps",
                 "sim_step_seconds", "strategy_option", "supernet", "calibration_batches")


def register(sub) -> None:
    from ..search.evaluator_registry import EVALUATORS

    from ..evaluators.data_registry import data_help
    from ..search.strategy import STRATEGIES
    from ..spaces.celltypes import CELL_TYPES

    p = sub.add_parser(
        "search",
        help="search for the best architecture under a compute budget (Optuna TPE/NSGA-II/random, NNI evolution, DARTS)",
        description="Search the routing space. Over-budget candidates are rejected analytically, never trained. "
        "Best specs (or the Pareto front for nsga2) go to OUT/best or OUT/pareto, with OUT/summary.json.",
    )
    p.add_argument("--preset", default=None, help="space preset: tiny (CPU) or paper (default tiny)")
    p.add_argument("--space", default=None, choices=("path", "subgraph"),
                   help="encoding: path (a scale per layer) or subgraph (edges on/off, repaired); default path")
    p.add_argument("--cells", default=None,
                   help=f"comma-separated cell types to choose from per node, of {', '.join(CELL_TYPES)} "
                   "(e.g. sepconv,basic); default: the space's cell")
    p.add_argument("--strategy", default=None, metavar="NAME", help=f"one of {', '.join(STRATEGIES)} (default tpe)")
    p.add_argument("--strategy-option", action="append", default=None, metavar="KEY=VALUE",
                   help="strategy setting, e.g. population_size=8 (repeatable)")
    p.add_argument("--max-gflops", type=float, default=None, help="hard limit on GFLOPs at the input size")
    p.add_argument("--max-params-m", type=float, default=None, help="hard limit on parameters, millions")
    p.add_argument("--max-latency-ms", type=float, default=None,
                   help="hard limit on measured CPU latency (batch 1, 1 thread), ms")
    p.add_argument("--size", default=None, help="input HxW for costs and latency (default: the space's)")
    p.add_argument("--trials", type=int, default=None, help="completed trials to reach (default 20)")
    p.add_argument("--timeout", type=float, default=None, help="no new trial starts after this many seconds")
    p.add_argument("--max-train-steps", type=int, default=None, help="total training steps over the study")
    p.add_argument("--storage", default=None,
                   help="sqlite:///PATH (default OUT/study.db), journal:PATH (several local processes) "
                   "or postgresql://USER@HOST:PORT/DB (many machines; the password from PGPASSWORD or ~/.pgpass "
                   "rather than the URL); passwords are masked in everything routespace writes")
    p.add_argument("--storage-env", default=None, metavar="VAR",
                   help="read the storage URL from environment variable VAR (keeps it out of the command line "
                   "and shell history)")
    p.add_argument("--study", default=None, help="study name (default PRESET-SPACE-STRATEGY)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--out", required=True, help="output folder for specs, summary and the default storage")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing study; its stored settings are used for what is not given")
    p.add_argument("--seed", type=int, default=None, help="seed of samplers and proxy training (default 0)")
    p.add_argument("--supernet", default=None, metavar="RUN",
                   help="with --evaluator oneshot: the trained supernet run folder (`routespace train`, dynamic)")
    p.add_argument("--calibration-batches", type=int, default=None, metavar="K",
                   help="with --evaluator oneshot: training batches BN is recalibrated on per candidate (default 4; "
                   "0 keeps the supernet's own running statistics)")
    p.add_argument("--evaluator", default=None, choices=tuple(EVALUATORS),
                   help="proxy: short training + val mIoU (default); synthetic: closed-form stand-in for "
                   "testing the machinery, no training")
    p.add_argument("--data", default=None, help=f"proxy data set: {data_help()}")
    p.add_argument("--proxy-steps", type=int, default=None, help="proxy training steps per trial (default 200)")
    p.add_argument("--proxy-batch", type=int, default=None, help="proxy batch size (default 8)")
    p.add_argument("--proxy-val-images", type=int, default=None, help="validation images for mIoU (default 64)")
    p.add_argument("--device", default=None, help="proxy training device: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--sim-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--sim-step-seconds", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval, s (default 10)")
    p.add_argument("--grace", type=int, default=None, help="a trial without heartbeat this long is retried (default 3x)")
    p.add_argument("--top-k", type=int, default=5, help="best specs to export (default 5)")
    p.add_argument("--retrain-top", type=int, default=0, metavar="K",
                   help="after the search, retrain the K best architectures from scratch with the standard schedule "
                   "(`routespace train --arch`, on the evaluator's data) into OUT/retrain/, and write OUT/retrain.md "
                   "and OUT/retrain.json: search score vs stand-alone mIoU (finished retrainings are reused)")
    p.add_argument("--retrain-steps", type=int, default=None, metavar="N",
                   help="with --retrain-top: training steps (default: the preset's schedule, tiny 1500)")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard events (default: OUT/tb/ gets each trial's score and GFLOPs)")
    p.set_defaults(func=run)


def _option_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _strategy_options(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RoutespaceError(f"--strategy-option {item!r}: write KEY=VALUE, e.g. population_size=8")
        out[key.strip()] = _option_value(value.strip())
    return out


def build_config(args: argparse.Namespace, base=None):
    """The SearchConfig from the flags; with ``base`` (a stored config) unset flags keep its values."""
    from ..search.budget import ArchBudget, SearchBudget
    from ..search.config import SearchConfig
    from ..spaces.space import parse_size, preset

    def pick(value, stored, default):
        if value is not None:
            return value
        return stored if base is not None else default

    b = base
    if args.preset is not None or b is None:
        space = preset(args.preset or "tiny")
    else:
        space = b.space
    ab = b.arch_budget if b else ArchBudget()
    size = parse_size(args.size) if args.size else (ab.size if b else None)
    arch_budget = ArchBudget(
        max_gflops=pick(args.max_gflops, ab.max_gflops, None),
        max_params_m=pick(args.max_params_m, ab.max_params_m, None),
        max_latency_ms=pick(args.max_latency_ms, ab.max_latency_ms, None),
        size=size,
    )
    sb = b.search_budget if b else SearchBudget()
    search_budget = SearchBudget(
        trials=pick(args.trials, sb.trials, 20),
        timeout_s=args.timeout,
        max_train_steps=pick(args.max_train_steps, sb.max_train_steps, None),
    )
    stored_eval = dict(b.evaluator) if b else {}
    kind = pick(args.evaluator, stored_eval.get("kind"), "proxy")
    if kind != "oneshot" and (args.supernet or args.calibration_batches is not None):
        raise RoutespaceError("--supernet and --calibration-batches apply to --evaluator oneshot only")
    if kind == "oneshot":
        if args.calibration_batches is not None and args.calibration_batches < 0:
            raise RoutespaceError(f"--calibration-batches must be >= 0 (0: the supernet's own BN statistics), "
                                  f"got {args.calibration_batches}")
        evaluator = {"kind": "oneshot", "supernet": pick(args.supernet, stored_eval.get("supernet"), None),
                     "calibration_batches": pick(args.calibration_batches, stored_eval.get("calibration_batches", 4), 4),
                     "batch_size": pick(args.proxy_batch, stored_eval.get("batch_size", 8), 8),
                     "val_images": pick(args.proxy_val_images, stored_eval.get("val_images", 64), 64)}
        from ..search.evaluator_registry import check_supernet

        check_supernet(evaluator["supernet"], space)
    elif kind == "synthetic":
        evaluator = {"kind": "synthetic",
                     "steps": pick(args.sim_steps, stored_eval.get("steps", 0), 0),
                     "step_seconds": pick(args.sim_step_seconds, stored_eval.get("step_seconds", 0.0), 0.0)}
    else:
        evaluator = {"kind": "proxy",
                     "data": pick(args.data, stored_eval.get("data", "synthetic"), "synthetic"),
                     "steps": pick(args.proxy_steps, stored_eval.get("steps", 200), 200),
                     "batch_size": pick(args.proxy_batch, stored_eval.get("batch_size", 8), 8),
                     "val_images": pick(args.proxy_val_images, stored_eval.get("val_images", 64), 64)}
        device = args.device or stored_eval.get("device")
        if device:
            evaluator["device"] = device
    cells = tuple(c.strip() for c in args.cells.split(",") if c.strip()) if args.cells else (b.cells if b else ())
    options = _strategy_options(args.strategy_option) if args.strategy_option else (b.strategy_options if b else {})
    return SearchConfig(
        space=space,
        encoding=pick(args.space, b.encoding if b else None, "path"),
        cells=cells,
        strategy=pick(args.strategy, b.strategy if b else None, "tpe"),
        strategy_options=options,
        arch_budget=arch_budget,
        search_budget=search_budget,
        evaluator=evaluator,
        seed=pick(args.seed, b.seed if b else None, 0),
        study=args.study or (b.study if b else ""),
        storage=args.storage or (b.storage if b else ""),
        heartbeat_interval=args.heartbeat,
        grace_period=args.grace,
    )


def run(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    import optuna

    from ..search.engine import stored_config
    from ..search.export import summary_line
    from ..search.run import default_storage, run_search
    from ..search.strategy import STRATEGIES
    from ..search.tb_callback import log_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.strategy is not None and args.strategy not in STRATEGIES:
        raise RoutespaceError(f"unknown strategy {args.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if args.storage_env is not None:
        from ..search.storage import storage_url_from_env

        if args.storage:
            raise RoutespaceError("give the storage either by --storage or by --storage-env, not both")
        args.storage = storage_url_from_env(args.storage_env)
    if args.retrain_top < 0 or (args.retrain_steps is not None and args.retrain_steps < 1):
        raise RoutespaceError("--retrain-top must be >= 0 and --retrain-steps >= 1")
    if args.retrain_steps is not None and not args.retrain_top:
        raise RoutespaceError("--retrain-steps applies to --retrain-top K only")
    base = None
    if args.resume:
        url = args.storage or default_storage(args.out)
        name = args.study
        if name is None:
            fresh = build_config(args)
            name = fresh.study
        base = stored_config(url, name, args.heartbeat).with_(storage=url, study=name)
    config = build_config(args, base)
    if config.evaluator["kind"] == "proxy":
        from ..evaluators.memory import check_training_memory

        check_training_memory(config.space, config.evaluator["batch_size"], config.space.input_size,
                              dynamic=config.strategy == "nni-darts", what="routespace search (proxy training)",
                              processes=args.workers, advice="lower --proxy-batch or --workers, or use --preset tiny")
    if args.worker_index:
        from ..search.run import run_worker

        session = run_worker(config.with_(storage=config.storage or default_storage(args.out)),
                             worker_index=args.worker_index)
        print(f"worker {args.worker_index}: {session.evaluated} evaluated, {session.rejected} rejected; {session.stop_message}")
        return 0
    outcome = run_search(config, args.out, resume=args.resume, workers=args.workers,
                         progress=not args.no_progress, top_k=args.top_k)
    log_search(config.storage or default_storage(args.out), outcome.summary["study"], args.out, not args.no_tensorboard)
    print(f"routespace search: {outcome.stop_reason}")
    print(summary_line(outcome.summary))
    print(f"summary: {Path(args.out) / 'summary.json'}")
    if args.retrain_top:
        table = retrain_top(config.with_(storage=config.storage or default_storage(args.out)), outcome.summary["study"],
                            args.out, args.retrain_top, args.retrain_steps, threads=args.threads)
        print(render_retrain(table["rows"], config.evaluator["kind"], table["kendall_tau"]), end="")
        print(f"retrain table: {Path(args.out) / 'retrain.md'}")
    return 0


def retrain_top(config, study_name: str, out_dir, k: int, steps: int | None = None, threads: int | None = None) -> dict:
    """Retrain the ``k`` best distinct architectures of the study from scratch, each with `routespace train
    --arch` (the preset's schedule unless ``steps``) on the evaluator's data, into OUT/retrain/KEY; evaluate
    each on the validation split; write OUT/retrain.json and OUT/retrain.md. A finished run is reused."""
    from pathlib import Path

    import optuna

    from ..evaluators.datasets import load_dataset
    from ..evaluators.evaluate import evaluate, load_run_model
    from ..evaluators.runfolder import final_checkpoint_path, read_manifest
    from ..search.dynamic.oneshot import kendall_tau
    from ..search.engine import spec_key
    from ..search.evaluator_registry import evaluator_data
    from ..search.export import best_records, trial_records
    from ..search.storage import open_storage
    from ..spaces.architecture import Architecture
    from ..spaces.fileio import write_json_atomic, write_text_atomic
    from .main import main

    out = Path(out_dir)
    study = optuna.load_study(study_name=study_name, storage=open_storage(config.storage, config.heartbeat_interval))
    chosen = best_records(trial_records(study.get_trials(deepcopy=False)), k)
    data, size = evaluator_data(config.evaluator)
    size_arg = ["--size", f"{size[0]}x{size[1]}"] if size else []
    rows = []
    for rank, record in enumerate(chosen, start=1):
        arch = Architecture.from_json(record["spec"])
        key = spec_key(record["spec"])
        run = out / "retrain" / key
        spec_file = out / "retrain" / f"{key}.json"
        run.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(spec_file, arch.to_json())
        if not final_checkpoint_path(run).exists():
            argv = ["train", "--out", str(run), "--no-tensorboard"] + (["--threads", str(threads)] if threads else [])
            if read_manifest(run) is not None:
                argv.append("--resume")
            else:
                argv += ["--preset", "paper" if config.space.name == "paper" else "tiny", "--arch", str(spec_file),
                         "--data", data, "--seed", str(config.seed), *size_arg]
                argv += ["--steps", str(steps)] if steps else []
            print(f"retrain {rank}/{len(chosen)}: {key} (search score {record['miou']:.4f}, {record['gflops']:.4g} GFLOPs)")
            if main(argv) != 0:
                raise RoutespaceError(f"retraining {key} failed; rerun the same command to resume it")
        model, manifest, _ = load_run_model(run)
        val = load_dataset(data, "val", size=size)
        res = evaluate(model, val, batch_size=8, latency_repeats=0)
        rows.append({"rank": rank, "trial": record["number"], "spec_key": key, "gflops": record["gflops"],
                     "params_m": record["params_m"], "search_score": record["miou"], "standalone_miou": res.miou,
                     "train_steps": manifest.get("step"), "val_images": res.images, "run": str(run)})
    tau = kendall_tau([r["search_score"] for r in rows], [r["standalone_miou"] for r in rows]) if len(rows) > 1 else None
    table = {"evaluator": config.evaluator, "data": data, "size": list(size) if size else None, "rows": rows,
             "kendall_tau": tau if tau == tau else None}
    write_json_atomic(out / "retrain.json", table)
    write_text_atomic(out / "retrain.md", render_retrain(rows, config.evaluator["kind"], table["kendall_tau"]))
    return table


def render_retrain(rows: list[dict], kind: str, tau: float | None = None) -> str:
    """The Markdown table of ``retrain_top``'s rows."""
    lines = [f"| rank | trial | spec | GFLOPs | params (M) | {kind} score | stand-alone mIoU | steps |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['trial']} | {r['spec_key']} | {r['gflops']:.4g} | {r['params_m']:.4g} | "
                     f"{r['search_score']:.4f} | {r['standalone_miou']:.4f} | {r['train_steps']} |")
    if tau is not None:
        lines.append(f"\nKendall tau ({kind} score vs stand-alone mIoU, n={len(rows)}): {tau:.3f}")
    return "\n".join(lines) + "\n"
