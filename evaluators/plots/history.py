"""Search history: best-so-far vs trials and vs wall time; Optuna's own plots, isolated from pyplot state."""
from __future__ import annotations

import warnings

from ...spaces.errors import RoutespaceError
from .canvas import FONT, SMALL, new_figure
from .data import history_data, study_records


def plot_history(study_or_records: object, direction: str | None = None, objective: str = "mIoU", title: str | None = None):
    """Two panels: every trial's value and the best so far by trial number; the best so far by wall time.

    ``study_or_records``: an Optuna study (single objective) or (trial, value, seconds) records, where
    seconds is the wall time since the search started at which the trial completed."""
    if hasattr(study_or_records, "trials"):
        records, study_dir = study_records(study_or_records)
        direction = direction or study_dir
    else:
        records = list(study_or_records)
    h = history_data(records, direction or "maximize")
    fig = new_figure(9.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.scatter(h.trials, h.values, s=16, color="#9AA7B8", label="trial", zorder=2)
    ax1.step(h.trials, h.best, where="post", color="#D55E00", linewidth=2, label="best so far", zorder=3)
    ax1.set_xlabel("trial", fontsize=FONT)
    scale, unit = time_unit(float(h.seconds.max()))
    ax2.step(h.seconds / scale, h.best_by_time, where="post", color="#D55E00", linewidth=2, label="best so far")
    ax2.scatter(h.seconds / scale, h.best_by_time, s=10, color="#D55E00", zorder=3)
    ax2.set_xlabel(f"wall time ({unit})", fontsize=FONT)
    from matplotlib.ticker import MaxNLocator

    ax1.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax2.xaxis.set_major_locator(MaxNLocator(nbins=5))
    for ax in (ax1, ax2):
        ax.set_ylabel(f"{objective} ({'higher' if h.direction == 'maximize' else 'lower'} is better)", fontsize=FONT)
        ax.tick_params(labelsize=SMALL)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=SMALL, frameon=False, loc="lower right" if h.direction == "maximize" else "upper right")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    ax1.set_title("by trial", fontsize=FONT, loc="left")
    ax2.set_title("by wall time", fontsize=FONT, loc="left")
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return fig


def time_unit(max_seconds: float) -> tuple[float, str]:
    """(divisor, unit) so that wall times read as small numbers: ms, s, min or h."""
    if max_seconds < 1.0:
        return 1e-3, "ms"
    if max_seconds < 180.0:
        return 1.0, "s"
    if max_seconds < 3 * 3600.0:
        return 60.0, "min"
    return 3600.0, "h"


OPTUNA_PLOTS = (
    "plot_optimization_history", "plot_param_importances", "plot_slice", "plot_parallel_coordinate",
    "plot_contour", "plot_edf", "plot_pareto_front", "plot_timeline", "plot_rank", "plot_intermediate_values",
)


def optuna_figure(study: object, name: str = "plot_optimization_history", **kwargs):
    """One of ``optuna.visualization.matplotlib``'s plots as a Figure, leaving global matplotlib state as it
    was: rcParams restored (Optuna applies a style), the figure removed from pyplot's figure list and put
    on its own Agg canvas."""
    if name not in OPTUNA_PLOTS:
        raise RoutespaceError(f"unknown Optuna plot {name!r}: choose one of {', '.join(OPTUNA_PLOTS)}")
    import matplotlib
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    before = set(plt.get_fignums())
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for its matplotlib backend
        try:
            result = getattr(ovm, name)(study, **kwargs)
        finally:
            new = [n for n in plt.get_fignums() if n not in before]
    target = getattr(result, "figure", None)
    if target is None and hasattr(result, "flat"):  # an array of Axes
        target = result.flat[0].figure
    for n in new:
        plt.close(n)  # by number: closing never makes another figure current
    if target is None:
        raise RoutespaceError(f"Optuna's {name} returned no figure")
    FigureCanvasAgg(target)
    return target
