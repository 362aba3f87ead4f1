"""What a search leaves in its output folder: the best specs (or the Pareto front) and a summary.

The data step (:func:`trial_records`, :func:`best_records`, :func:`pareto_front`) is pure and tested;
:func:`export_results` only writes, every file atomically.

Files in ``OUT``:

- ``best/rank-<k>.json``: the ``top_k`` best distinct architectures by mIoU (one-objective searches),
  or ``pareto/front-<k>.json``: the Pareto front of mIoU (max) vs GFLOPs (min), by GFLOPs;
- ``summary.json``: config, counts, the best/front records, the budget used;
- ``trials.csv``: one row per trial (number, state, mIoU, GFLOPs, params, steps, seconds, reason).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..evaluators.pareto import pareto_indices
from ..spaces.architecture import Architecture
from ..spaces.fileio import write_json_atomic, write_text_atomic

CSV_FIELDS = ("number", "state", "miou", "gflops", "params_m", "train_steps", "train_seconds", "duplicate_of",
              "retry_of", "rejected", "worker")


def trial_records(trials) -> list[dict]:
    """One plain dict per trial (pure)."""
    out = []
    for t in trials:
        u = t.user_attrs
        out.append({
            "number": t.number,
            "state": t.state.name,
            "miou": u.get("miou"),
            "gflops": u.get("gflops"),
            "params_m": u.get("params_m"),
            "train_steps": u.get("train_steps"),
            "train_seconds": u.get("train_seconds"),
            "duplicate_of": u.get("duplicate_of"),
            "retry_of": u.get("retry_of"),
            "rejected": u.get("rejected"),
            "worker": u.get("worker"),
            "spec": u.get("spec"),
        })
    return out


def _evaluated(records: list[dict]) -> list[dict]:
    """Completed original evaluations (duplicates refer to these)."""
    return [r for r in records if r["state"] == "COMPLETE" and r["miou"] is not None and r["duplicate_of"] is None]


def best_records(records: list[dict], top_k: int = 5) -> list[dict]:
    """The ``top_k`` best distinct architectures by mIoU (ties: fewer GFLOPs, then earlier trial)."""
    ranked = sorted(_evaluated(records), key=lambda r: (-r["miou"], r["gflops"], r["number"]))
    return ranked[:top_k]


def pareto_front(records: list[dict]) -> list[dict]:
    """Non-dominated evaluations for (mIoU max, GFLOPs min), sorted by GFLOPs (pure); of equal evaluations
    only the earliest trial."""
    evaluated = sorted(_evaluated(records), key=lambda r: r["number"])
    front = pareto_indices([(r["gflops"], r["miou"]) for r in evaluated], keep_ties=False)
    return [evaluated[i] for i in front]


def _spec_file(record: dict, name: str) -> dict:
    arch = Architecture.from_json(record["spec"])
    data = arch.to_dict()
    data["name"] = name
    return data


def export_results(study, out_dir: str | Path, config_dict: dict, pareto: bool, top_k: int = 5,
                   extra: dict | None = None) -> dict:
    """Write the best specs / Pareto front, ``summary.json`` and ``trials.csv`` into ``out_dir``."""
    from .engine import count_trials

    out = Path(out_dir)
    trials = study.get_trials(deepcopy=False)
    records = trial_records(trials)
    counts = count_trials(trials)
    chosen = pareto_front(records) if pareto else best_records(records, top_k)
    sub, stem = ("pareto", "front") if pareto else ("best", "rank")
    folder = out / sub
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, r in enumerate(chosen, start=1):
        path = folder / f"{stem}-{k}.json"
        write_json_atomic(path, _spec_file(r, f"{study.study_name}-trial{r['number']}"))
        files.append(str(path))
    for old in folder.glob(f"{stem}-*.json"):  # a front can shrink: drop files of former members
        if str(old) not in files:
            old.unlink()
    summary = {
        "study": study.study_name,
        "config": config_dict,
        "counts": {"complete": counts.complete, "rejected": counts.rejected, "failed": counts.failed,
                   "running": counts.running, "waiting": counts.waiting,
                   "evaluated": len(_evaluated(records)),
                   "duplicates": sum(1 for r in records if r["duplicate_of"] is not None)},
        "train_steps_total": counts.train_steps,
        "train_seconds_total": sum(r["train_seconds"] or 0.0 for r in records),
        "pareto" if pareto else "best": [{k: v for k, v in r.items() if k != "spec"} | {"file": f}
                                         for r, f in zip(chosen, files)],
        **(extra or {}),
    }
    write_json_atomic(out / "summary.json", summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow(r)
    write_text_atomic(out / "trials.csv", buf.getvalue())
    return summary


def summary_line(summary: dict) -> str:
    c = summary["counts"]
    key = "pareto" if "pareto" in summary else "best"
    top = summary.get(key) or []
    head = f"{c['complete']} completed ({c['evaluated']} trained, {c['duplicates']} duplicates), {c['rejected']} rejected over budget, {c['failed']} failed"
    if not top:
        return head + "; no architecture evaluated"
    if key == "best":
        b = top[0]
        return head + f"; best mIoU {b['miou']:.4f} at {b['gflops']:.4g} GFLOPs (trial {b['number']}) -> {b['file']}"
    return head + f"; Pareto front of {len(top)} architectures -> {Path(top[0]['file']).parent}"


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
