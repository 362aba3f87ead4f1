"""One-shot search through trained supernets: ranking quality, BN calibration and speed (issue 15; not run by CI).

1. The uniform-sampling supernet (SPOS-style): ``routespace train --preset tiny --sampling uniform --seed 0``
   (1500 steps) into OUT/uniform-s0, unless it is there already.
2. ``--archs`` single paths (default 15) spanning the GFLOPs range of the tiny space: 4000 seeded random paths,
   distinct, sorted by analytic GFLOPs, picked at evenly spaced ranks (cheapest and dearest included).
3. Each trained stand-alone for 1500 steps (``routespace train --preset tiny --arch SPEC --seed 0``, the tiny
   preset's standard schedule) into OUT/standalone/KEY, two at a time with one torch thread each, and its mIoU
   measured on the 200 held-out images of the embedded default data (``routespace evaluate``'s function).
   Finished runs are skipped, so an interrupted benchmark continues where it stopped; they are trained ends
   first, then midpoints, so a cut-short benchmark still spans the range.
4. Each architecture scored one-shot (``OneShotEvaluator``: the supernet's weights copied into the candidate,
   BN recalibrated on K fixed training batches of 8, mIoU on the first 64 validation images, the defaults of
   ``routespace search --evaluator oneshot``) with the uniform supernet and the others given by
   ``--supernets`` (gated runs of benchmarks/bench_budget.py), for K in ``--calibration`` (default 0 2 4 8; 0 = the
   supernet's own running statistics). Kendall tau-b between one-shot score and stand-alone mIoU.
5. Speed: ``--speed-trials`` (default 200) trials of ``routespace search --evaluator oneshot`` (random
   strategy, uniform supernet, K=4, SQLite storage, everything a search does, loading the supernet included)
   timed end to end, against ``--proxy-trials`` (default 3) trials of the default proxy evaluator (200
   training steps each). Wall and CPU seconds of this process are both given: on a shared machine the wall
   time says more about the other processes than about routespace (the 1-minute load average is recorded).

Run: ``python benchmarks/bench_oneshot.py --out runs/oneshot``; ``--train-only`` stops after step 3.
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def pick_archs(n: int, seed: int = 0, pool: int = 4000) -> list:
    """``n`` distinct random single paths of the tiny space at evenly spaced GFLOPs ranks."""
    from routespace.evaluators.cost import architecture_cost
    from routespace.spaces.architecture import Architecture
    from routespace.spaces.random_arch import random_path
    from routespace.spaces.space import preset

    space = preset("tiny")
    rng = random.Random(seed)
    found = {}
    for _ in range(pool):
        path = tuple(random_path(space, rng))
        if path not in found:
            found[path] = architecture_cost(Architecture.from_path(space, list(path))).gflops
    ranked = sorted(found, key=lambda p: (found[p], p))
    picks = [ranked[round(i * (len(ranked) - 1) / (n - 1))] for i in range(n)]
    return [Architecture.from_path(space, list(p)) for p in picks]


def spread_order(items: list) -> list:
    """``items`` (sorted by GFLOPs) in an order whose every prefix spans the range: ends first, then midpoints."""
    n, order, seen = len(items), [], set()
    if n:
        order, seen = [0, n - 1], {0, n - 1}
    parts = 2
    while len(order) < n:
        for i in range(1, parts, 2):
            j = round(i * (n - 1) / parts)
            if j not in seen:
                seen.add(j)
                order.append(j)
        parts *= 2
        if parts > 4 * n:
            order += [j for j in range(n) if j not in seen]
            break
    return [items[j] for j in order[:n]]


def _done(run: Path) -> bool:
    return (run / "checkpoints" / "final.pt").exists()


def _busy(run: Path, quiet_s: float = 180.0) -> bool:
    """Unfinished and written recently: another process (an earlier, interrupted benchmark) still trains it."""
    manifest = run / "manifest.json"
    return not _done(run) and manifest.exists() and time.time() - manifest.stat().st_mtime < quiet_s


def _train_jobs(out: Path, archs: list, steps: int | None) -> list[tuple[str, Path, list[str]]]:
    """(name, run folder, the `routespace train` arguments of a new run) for the supernet and each stand-alone net."""
    from routespace.search.engine import spec_key, spec_text
    from routespace.spaces.fileio import write_text_atomic

    extra = ["--steps", str(steps)] if steps else []
    jobs = [("uniform-s0", out / "uniform-s0", ["--preset", "tiny", "--sampling", "uniform", "--seed", "0", *extra])]
    (out / "archs").mkdir(parents=True, exist_ok=True)
    for arch in spread_order(archs):
        key = spec_key(spec_text(arch))
        spec = out / "archs" / f"{key}.json"
        if not spec.exists():
            write_text_atomic(spec, arch.to_json())
        jobs.append((key, out / "standalone" / key, ["--preset", "tiny", "--arch", str(spec), "--seed", "0", *extra]))
    return jobs


def run_jobs(out: Path, jobs: list[tuple[str, Path, list[str]]], parallel: int) -> dict[str, float]:
    """Train what is not finished, ``parallel`` at a time; runs another process is training count towards
    ``parallel`` and are left to it (so a restarted benchmark never trains one folder twice at once)."""
    from tqdm import tqdm

    pending = [j for j in jobs if not _done(j[1])]
    running: list = []
    wall: dict[str, float] = {}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(pending), unit="run", desc="trainings", dynamic_ncols=True)
    while pending or running:
        mine = {item[0] for item in running}
        foreign = [j for j in pending if j[0] not in mine and _busy(j[1])]
        launchable = [j for j in pending if not _busy(j[1])]
        while launchable and len(running) + len(foreign) < parallel:
            job = launchable.pop(0)
            pending.remove(job)
            name, run, args = job
            if _done(run):
                bar.update(1)
                continue
            cmd = ["routespace", "train", "--out", str(run), "--threads", "1", "--no-tensorboard"]
            cmd += ["--resume"] if (run / "manifest.json").exists() else args
            log = open(out / "logs" / f"{name}.log", "a")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV), time.time()))
        for job in [j for j in pending if _done(j[1])]:  # finished by another process
            pending.remove(job)
            bar.update(1)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                wall[item[0]] = round(time.time() - item[2], 1)
                bar.update(1)
                if item[1].returncode != 0:
                    print(f"training {item[0]} failed: see {out / 'logs' / (item[0] + '.log')}", file=sys.stderr)
        time.sleep(5)
    bar.close()
    return wall


def standalone_miou(out: Path, keys: list[str]) -> dict[str, float]:
    """mIoU of each finished stand-alone run on the 200 held-out images (cached in OUT/standalone.json)."""
    from routespace.evaluators.evaluate import evaluate, load_run_model
    from routespace.evaluators.synthetic import embedded_default
    from routespace.spaces.fileio import write_json_atomic

    cache_file = out / "standalone.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    for key in keys:
        if key not in cache and _done(out / "standalone" / key):
            model, _, _ = load_run_model(out / "standalone" / key)
            cache[key] = evaluate(model, embedded_default("val"), batch_size=8, latency_repeats=0)["miou"]
            write_json_atomic(cache_file, cache)
    return {k: cache[k] for k in keys if k in cache}


def oneshot_scores(out: Path, name: str, run: Path, archs: list, keys: list[str], ks: list[int]) -> dict[int, list[float]]:
    """One-shot mIoU of every architecture for each K (cached in OUT/oneshot_scores.json by supernet, K, key)."""
    from routespace.search.dynamic.oneshot import OneShotEvaluator
    from routespace.spaces.fileio import write_json_atomic

    cache_file = out / "oneshot_scores.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    scores, loaded = {}, None
    for k in ks:
        entry = cache.setdefault(f"{name}|K={k}", {})
        missing = [i for i, key in enumerate(keys) if key not in entry]
        if missing:
            # the run is loaded once: K batches are the first K of the same seeded draw (what from_run(K) takes)
            loaded = loaded or OneShotEvaluator.from_run(run, calibration_batches=max(ks))
            ev = OneShotEvaluator(loaded.net, loaded.calibration[:k], loaded.validation)
            for i in missing:
                entry[keys[i]] = ev(archs[i]).miou
            write_json_atomic(cache_file, cache)
        scores[k] = [entry[key] for key in keys]
    return scores


def _plain(tau: float) -> float | None:
    """Rounded; None for NaN (a constant score list), so the final line stays JSON."""
    return None if tau != tau else round(tau, 4)


def time_search(out: Path, evaluator: dict, trials: int, name: str) -> dict:
    """Wall time of a real `routespace search` (random strategy) of ``trials`` trials, in this process."""
    import shutil

    from routespace.search.budget import ArchBudget, SearchBudget
    from routespace.search.config import SearchConfig
    from routespace.search.run import run_search
    from routespace.spaces.space import preset

    folder = out / "speed" / name
    shutil.rmtree(folder, ignore_errors=True)
    config = SearchConfig(space=preset("tiny"), encoding="path", strategy="random", arch_budget=ArchBudget(),
                          search_budget=SearchBudget(trials=trials), evaluator=evaluator, study=name)
    t0, c0 = time.perf_counter(), time.process_time()
    outcome = run_search(config, folder, progress=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = outcome.evaluated + outcome.duplicates
    load = os.getloadavg()[0]
    return {"trials": n, "evaluated": outcome.evaluated, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "trials_per_s": round(n / seconds, 3), "trials_per_cpu_s": round(n / cpu, 3),
            "seconds_for_200_at_one_free_core": round(200 * cpu / n, 1), "load_average_1min_at_end": load}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/oneshot")
    p.add_argument("--archs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0, help="seed of the architecture pick")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the tiny preset's 1500)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--supernets", nargs="*", default=["runs/bench_budget/raw-s0", "runs/bench_budget/C-paper-s0",
                                                      "runs/bench_budget/A-paper-s0", "runs/oneshot/uniform-perimage-s0"],
                   help="other supernet runs to score with besides OUT/uniform-s0 (default: gated runs of "
                   "benchmarks/bench_budget.py, and the per-image uniform supernet of the first version, where present)")
    p.add_argument("--calibration", type=int, nargs="+", default=[0, 2, 4, 8])
    p.add_argument("--speed-trials", type=int, default=200)
    p.add_argument("--proxy-trials", type=int, default=3, help="0: no proxy timing")
    p.add_argument("--rerun-speed", action="store_true", help="time the searches again (default: reuse OUT/speed.json)")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--no-train", action="store_true", help="train nothing: report what is finished")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    archs = pick_archs(a.archs, a.seed)
    wall = {} if a.no_train else run_jobs(out, _train_jobs(out, archs, a.steps), a.parallel)
    if a.train_only:
        return
    import torch

    torch.set_num_threads(1)
    from routespace.evaluators.cost import architecture_cost
    from routespace.search.dynamic.oneshot import kendall_tau
    from routespace.search.engine import spec_key, spec_text

    keys = [spec_key(spec_text(arch)) for arch in archs]
    stand = standalone_miou(out, keys)
    have = [i for i, k in enumerate(keys) if k in stand]
    truth = [stand[keys[i]] for i in have]
    rows = [{"key": keys[i], "path": [s for _, s in sorted(archs[i].nodes)][1:], "gflops": architecture_cost(archs[i]).gflops,
             "standalone_miou": stand[keys[i]]} for i in have]
    supernets = {"uniform-s0": out / "uniform-s0"} if _done(out / "uniform-s0") else {}
    supernets.update({Path(g).name: Path(g) for g in a.supernets if _done(Path(g))})
    tau: dict[str, dict[int, float]] = {}
    for name, run in supernets.items():
        every = oneshot_scores(out, name, run, archs, keys, a.calibration)  # all picked, trained or not yet
        scores = {k: [v[i] for i in have] for k, v in every.items()}
        tau[name] = {k: _plain(kendall_tau(s, truth)) for k, s in scores.items()}
        for row, j in zip(rows, range(len(have))):
            row[name] = {k: round(scores[k][j], 4) for k in a.calibration}
        print(f"{name}: Kendall tau vs stand-alone mIoU (n={len(have)}) by BN calibration batches: "
              + ", ".join(f"K={k}: {t}" for k, t in tau[name].items()), flush=True)
    for row in rows:
        print(json.dumps(row), flush=True)
    from routespace.spaces.fileio import write_json_atomic

    speed_file = out / "speed.json"
    speed = json.loads(speed_file.read_text()) if speed_file.exists() else {}
    if "uniform-s0" in supernets and a.speed_trials and ("oneshot" not in speed or a.rerun_speed):
        speed["oneshot"] = time_search(out, {"kind": "oneshot", "supernet": str(out / "uniform-s0"), "calibration_batches": 4},
                                       a.speed_trials, "speed-oneshot")
        write_json_atomic(speed_file, speed)
    if a.proxy_trials and ("proxy" not in speed or a.rerun_speed):
        speed["proxy"] = time_search(out, {"kind": "proxy", "data": "synthetic", "steps": 200, "batch_size": 8, "val_images": 64},
                                     a.proxy_trials, "speed-proxy")
        write_json_atomic(speed_file, speed)
    for kind, figures in speed.items():
        print(f"{kind} search: {figures}", flush=True)
    gf = [r["gflops"] for r in rows]
    print(json.dumps({"n": len(have), "archs_picked": len(archs), "gflops_range": [min(gf), max(gf)] if gf else None,
                      "kendall_tau": tau, "standalone_miou_range": [min(truth), max(truth)] if truth else None,
                      "speed": speed, "train_wall_s": wall, "threads": 1, "parallel": a.parallel}))


if __name__ == "__main__":
    main()
