"""The evaluators a search can score candidates with, as one table (``--evaluator``): ``proxy`` (a short
training, the default), ``synthetic`` (a closed-form stand-in for tests) and ``oneshot`` (a trained supernet's
inherited weights, ``routespace.search.dynamic.oneshot``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..spaces.errors import RoutespaceError
from ..spaces.space import RoutingSpace

EVALUATORS = {
    "proxy": "short training on the chosen data, validation mIoU (default)",
    "synthetic": "closed-form stand-in for tests (no training)",
    "oneshot": "a trained supernet (--supernet RUN) with the candidate's edges forced open, BN recalibrated",
}


def check_supernet(run: str | None, space: RoutingSpace) -> None:
    """A one-shot supernet run exists, is dynamic and belongs to ``space`` (checked before any storage opens)."""
    from ..evaluators.runfolder import read_manifest

    if not run:
        raise RoutespaceError("--evaluator oneshot needs --supernet RUN: a run folder of `routespace train` (dynamic)")
    folder = Path(run)
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        raise RoutespaceError(f"--supernet {run} is not a training run folder (no manifest.json): give the --out of `routespace train`")
    if manifest.get("kind") != "dynamic":
        raise RoutespaceError(f"--supernet {run} holds a {manifest.get('kind')} net, not a dynamic supernet: "
                              "train one with `routespace train` (no --arch), e.g. --sampling uniform")
    theirs = RoutingSpace.from_dict((manifest.get("spec") or {}).get("space"))
    mine = (space.layers, space.base_channels, space.num_classes, space.cell)
    if (theirs.layers, theirs.base_channels, theirs.num_classes, theirs.cell) != mine:
        raise RoutespaceError(
            f"--supernet {run} is a supernet of another space ({theirs.layers} layers, C={theirs.base_channels}, "
            f"{theirs.num_classes} classes, {theirs.cell} cells; the search's: {space.layers}, C={space.base_channels}, "
            f"{space.num_classes}, {space.cell}): use a supernet of the searched space")


def evaluator_data(spec: dict) -> tuple[str, tuple[int, int] | None]:
    """The data set and training size an evaluator scores on (what ``--retrain-top`` retrains on): the proxy's
    ``data`` at the space's size, or the data and size the one-shot supernet was trained on."""
    if spec.get("kind") == "oneshot":
        from ..evaluators.runfolder import read_manifest

        cli = (read_manifest(Path(spec["supernet"])) or {}).get("extra", {}).get("cli", {})
        return cli.get("data") or "synthetic", tuple(cli["size"]) if cli.get("size") else None
    return spec.get("data") or "synthetic", None


def make_search_evaluator(spec: dict) -> Callable:
    """An evaluator from its spec ``{"kind": ..., <settings>}``."""
    kind = spec.get("kind", "proxy")
    if kind == "oneshot":
        from .dynamic.oneshot import DEFAULT_CALIBRATION_BATCHES, OneShotEvaluator

        return OneShotEvaluator.from_run(spec["supernet"], calibration_batches=spec.get("calibration_batches", DEFAULT_CALIBRATION_BATCHES),
                                         batch_size=spec.get("batch_size", 8), val_images=spec.get("val_images", 64))
    if kind not in EVALUATORS:
        raise RoutespaceError(f"unknown evaluator {kind!r}: choose one of {', '.join(EVALUATORS)}")
    from ..evaluators.proxy import make_evaluator

    return make_evaluator(spec)
