"""Exploration for issue 11: the realised mode with a slower dual step (lambda's per-step factor exp(rate * d),
default rate 0.02). Trains one `routespace train --preset tiny --setting S --budget-mode realised --seed K` run with
``BudgetLoss``'s default rate replaced, then prints bench_budget's analysis as a final JSON line. Not run by CI.

Run: ``python benchmarks/explore_dual_rate.py --setting A --seed 1 --rate 0.005 --out runs/dual-rate/A-s1``
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="A")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=0.005)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from routespace.search.dynamic import budget
    from routespace.search.steps import TrainRequest, train_run

    original = budget.BudgetLoss.__init__

    def patched(self, *args, **kwargs):
        kwargs["rate"] = a.rate
        original(self, *args, **kwargs)

    budget.BudgetLoss.__init__ = patched
    train_run(TrainRequest(out=a.out, preset="tiny", setting=a.setting, budget_mode="realised", train={"seed": a.seed}),
              command=f"benchmarks/explore_dual_rate.py --setting {a.setting} --seed {a.seed} --rate {a.rate}", progress=False)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_budget import analyse

    print(json.dumps({"setting": a.setting, "seed": a.seed, "rate": a.rate, **analyse(Path(a.out))}))


if __name__ == "__main__":
    main()
