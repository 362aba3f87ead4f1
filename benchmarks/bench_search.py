"""Strategies at an equal search budget on the embedded data, plus the analytic-filter throughput.

    python benchmarks/bench_search.py                 # ~10-15 min on 2 CPU cores
    python benchmarks/bench_search.py --quick         # a smoke run (synthetic evaluator, seconds)

For every strategy (random included) the same number of completed trials on the tiny preset, path
encoding, one GFLOPs budget, the same proxy evaluation (short training on the embedded synthetic data,
validation mIoU, same seed); the classic nets are proxy-evaluated the same way for reference. Writes
into ``--out`` (default results/search): ``bench.json`` (all numbers), ``bench.md`` (table and the
command that made it), ``bench_best_vs_trials.png`` and ``bench_best_vs_time.png``. The last line
printed is a JSON object with the headline numbers.

Throughput: candidates decoded and checked against the budget per second (pure analytic filter), and
rejected candidates per second through the whole engine (Optuna trial created, constraint recorded,
pruned; SQLite storage).
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

STRATEGY_ORDER = ("random", "tpe", "nsga2", "nni-evolution", "nni-darts")


# --- data step (pure) --------------------------------------------------------------------------------
def curves(trials: list[dict]) -> dict:
    """Best-so-far mIoU over completed trials, by trial count and by elapsed seconds (pure).

    ``trials``: dicts with ``state``, ``miou``, ``t_complete`` (s since the search started), in order.
    """
    best, by_trial, by_time = float("-inf"), [], []
    for r in sorted((r for r in trials if r["state"] == "COMPLETE"), key=lambda r: r["t_complete"]):
        best = max(best, r["miou"])
        by_trial.append(best)
        by_time.append((r["t_complete"], best))
    return {"best_vs_trials": by_trial, "best_vs_time": by_time, "best": by_trial[-1] if by_trial else None}


def markdown_table(results: dict, classics: list[dict], budget: float) -> str:
    lines = [
        "| strategy | best mIoU | trials | trained | duplicates | rejected | wall s | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['best']:.4f} | {r['complete']} | {r['trained']} | {r['duplicates']} | "
                     f"{r['rejected']} | {r['wall_s']:.0f} | {r['train_s']:.0f} |")
    lines += ["", f"Classic nets, same proxy (budget {budget:g} GFLOPs):", "",
              "| classic | mIoU | GFLOPs | within budget |", "|---|---|---|---|"]
    for c in classics:
        lines.append(f"| {c['name']} | {c['miou']:.4f} | {c['gflops']:.5f} | {'yes' if c['in_budget'] else 'no'} |")
    return "\n".join(lines)


# --- drawing -----------------------------------------------------------------------------------------
def draw(results: dict, classics: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, xlabel, fname in (("best_vs_trials", "completed trials", "bench_best_vs_trials.png"),
                               ("best_vs_time", "wall time, s", "bench_best_vs_time.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, r in results.items():
            if key == "best_vs_trials":
                ax.step(range(1, len(r[key]) + 1), r[key], where="post", label=name)
            else:
                ax.step([t for t, _ in r[key]], [b for _, b in r[key]], where="post", label=name)
        for c in classics:
            if c["in_budget"]:
                ax.axhline(c["miou"], ls=":", lw=0.8, color="gray")
                ax.annotate(c["name"], (ax.get_xlim()[1], c["miou"]), fontsize=7, color="gray", ha="right", va="bottom")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("best validation mIoU so far")
        ax.set_title("search strategies at equal budget (tiny, path encoding)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / fname
        from routespace.spaces.fileio import atomic_path

        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        files.append(str(path))
    return files


# --- measurements ------------------------------------------------------------------------------------
def filter_throughput(space, budget: float, n: int = 2000) -> dict:
    from routespace.search.budget import ArchBudget, BudgetChecker
    from routespace.search.encoding import Encoding

    out = {}
    for kind in ("path", "subgraph"):
        enc = Encoding(space, kind)
        checker = BudgetChecker(ArchBudget(max_gflops=budget))
        rng = random.Random(0)
        choices = enc.choices()
        samples = [{k: rng.choice(v) for k, v in choices.items()} for _ in range(n)]
        t0 = time.perf_counter()
        rejected = sum(not checker.check(enc.decode(p)).ok for p in samples)
        dt = time.perf_counter() - t0
        out[kind] = {"candidates_per_s": n / dt, "rejected_fraction": rejected / n}
    return out


def engine_rejection_rate(space, tmp: Path) -> dict:
    """Rejected candidates per second through the engine (random sampler, subgraph, a tight budget)."""
    from routespace.evaluators.cost import architecture_cost
    from routespace.search.budget import ArchBudget, SearchBudget, cheapest_architecture
    from routespace.search.config import SearchConfig
    from routespace.search.run import run_search

    tight = architecture_cost(cheapest_architecture(space)).gflops * 1.05
    config = SearchConfig(space=space, encoding="subgraph", strategy="random", arch_budget=ArchBudget(max_gflops=tight),
                          search_budget=SearchBudget(trials=10_000, max_rejected=300), evaluator={"kind": "synthetic"},
                          storage=f"sqlite:///{tmp / 'reject.db'}")
    t0 = time.perf_counter()
    outcome = run_search(config, tmp / "reject")
    dt = time.perf_counter() - t0
    return {"rejected": outcome.rejected, "completed": outcome.summary["counts"]["complete"], "seconds": dt,
            "rejected_per_s": outcome.rejected / dt}


def run_strategy(name: str, space, budget: float, trials: int, evaluator: dict, tmp: Path, seed: int,
                 darts_steps: int) -> dict:
    import optuna

    from routespace.search.budget import ArchBudget, SearchBudget
    from routespace.search.config import SearchConfig
    from routespace.search.run import run_search

    options = {"search_steps": darts_steps} if name == "nni-darts" else {}
    if name == "nni-evolution":
        options = {"population_size": max(4, trials // 3)}
    if name == "nsga2":
        options = {"population_size": max(4, trials // 3)}
    config = SearchConfig(space=space, encoding="path", strategy=name, strategy_options=options,
                          arch_budget=ArchBudget(max_gflops=budget), search_budget=SearchBudget(trials=trials),
                          evaluator=evaluator, seed=seed, storage=f"sqlite:///{tmp / (name + '.db')}")
    t0 = time.time()
    outcome = run_search(config, tmp / name)
    wall = time.time() - t0
    study = optuna.load_study(study_name=config.study, storage=config.storage)
    records = [{
        "state": t.state.name, "miou": t.user_attrs.get("miou"),
        "t_complete": (t.datetime_complete.timestamp() - t0) if t.datetime_complete else None,
    } for t in study.get_trials(deepcopy=False)]
    c = curves(records)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return {
        **c,
        "complete": len(done),
        "trained": sum(1 for t in done if "duplicate_of" not in t.user_attrs),
        "duplicates": sum(1 for t in done if "duplicate_of" in t.user_attrs),
        "rejected": outcome.summary["counts"]["rejected"],
        "wall_s": wall,
        "train_s": sum(t.user_attrs.get("train_seconds", 0.0) for t in done),
        "best_spec": max(done, key=lambda t: t.user_attrs["miou"]).user_attrs["spec"] if done else None,
        "darts": study.user_attrs.get("darts", {}).get("seconds") if name == "nni-darts" else None,
    }


def main(argv: list[str] | None = None) -> int:
    import optuna
    import torch

    from routespace.evaluators.cost import architecture_cost
    from routespace.evaluators.proxy import make_evaluator
    from routespace.spaces.classics import CLASSICS
    from routespace.spaces.fileio import write_json_atomic, write_text_atomic
    from routespace.spaces.space import preset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--steps", type=int, default=120, help="proxy training steps per trial")
    p.add_argument("--max-gflops", type=float, default=0.0032)
    p.add_argument("--darts-steps", type=int, default=60)
    p.add_argument("--strategies", default=",".join(STRATEGY_ORDER))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/search")
    p.add_argument("--quick", action="store_true", help="synthetic evaluator, few trials (smoke run)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    space = preset("tiny")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = ({"kind": "synthetic"} if args.quick else
                 {"kind": "proxy", "data": "synthetic", "steps": args.steps, "batch_size": 8, "val_images": 48})
    trials = 4 if args.quick else args.trials
    t_all = time.time()
    throughput = filter_throughput(space, args.max_gflops)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        engine_rate = engine_rejection_rate(space, tmp)
        results = {}
        for name in [s for s in args.strategies.split(",") if s]:
            results[name] = run_strategy(name, space, args.max_gflops, trials, evaluator, tmp, args.seed,
                                         2 if args.quick else args.darts_steps)
            print(f"{name}: best {results[name]['best']:.4f} in {results[name]['wall_s']:.0f} s", file=sys.stderr)
    ev = make_evaluator(evaluator)
    classics = []
    for name, fn in CLASSICS.items():
        arch = fn(space)
        gf = architecture_cost(arch).gflops
        r = ev(arch, seed=args.seed)
        classics.append({"name": name, "miou": r.miou, "gflops": gf, "in_budget": gf <= args.max_gflops,
                         "train_s": r.train_seconds})
    # proxy noise: the overall best architecture and deeplabv3 retrained with two more seeds
    from routespace.spaces.architecture import Architecture

    noise = {}
    best_run = max((r for r in results.values() if r.get("best_spec")), key=lambda r: r["best"], default=None)
    if best_run is not None:
        best_arch = Architecture.from_json(best_run["best_spec"])
        for label, arch in (("best found", best_arch), ("deeplabv3", CLASSICS["deeplabv3"](space))):
            if arch is not None:
                noise[label] = [ev(arch, seed=s).miou for s in (args.seed, args.seed + 1, args.seed + 2)]
    rnd = results.get("random", {}).get("best")
    beats = {k: (v["best"] - rnd) for k, v in results.items() if k != "random" and rnd is not None}
    command = shlex.join(["python", "benchmarks/bench_search.py", *(argv if argv is not None else sys.argv[1:])])
    data = {
        "command": command, "space": "tiny", "encoding": "path", "max_gflops": args.max_gflops, "trials": trials,
        "evaluator": evaluator, "seed": args.seed, "torch_threads": 1, "results": results, "classics": classics,
        "proxy_seed_noise": noise, "filter_throughput": throughput, "engine_rejections": engine_rate, "best_minus_random": beats,
        "total_seconds": time.time() - t_all,
    }
    write_json_atomic(out / "bench.json", data)
    figures = draw(results, classics, out)
    md = ["# Search strategies at an equal budget", "", f"Command: `{command}`", "",
          f"Space tiny (L=8, C=16, 64x64), path encoding, max {args.max_gflops:g} GFLOPs, {trials} completed "
          f"trials per strategy, proxy: {json.dumps(evaluator)}, seed {args.seed}, 1 torch thread, shared 2-core CPU.",
          "", markdown_table(results, classics, args.max_gflops), "",
          "Best mIoU minus random search's: " + ", ".join(f"{k} {v:+.4f}" for k, v in beats.items()), "",
          "Proxy noise (the same architecture retrained with seeds " + f"{args.seed}..{args.seed + 2}): "
          + "; ".join(f"{k}: " + ", ".join(f"{m:.4f}" for m in v) for k, v in noise.items()), "",
          "Analytic budget filter: " + ", ".join(f"{k} {v['candidates_per_s']:.0f} candidates/s" for k, v in throughput.items())
          + f"; through the engine (SQLite, trial created and pruned): {engine_rate['rejected_per_s']:.1f} rejections/s.",
          "", *[f"![{Path(f).stem}]({Path(f).name})" for f in figures], ""]
    write_text_atomic(out / "bench.md", "\n".join(md))
    print(json.dumps({"best": {k: v["best"] for k, v in results.items()}, "best_minus_random": beats,
                      "classics": {c["name"]: c["miou"] for c in classics},
                      "filter_candidates_per_s": {k: round(v["candidates_per_s"]) for k, v in throughput.items()},
                      "engine_rejections_per_s": round(engine_rate["rejected_per_s"], 1),
                      "seconds": round(time.time() - t_all)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
