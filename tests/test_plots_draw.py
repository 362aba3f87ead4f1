"""Drawings: pyplot-free Figures, labelled axes, no overlapping text, global matplotlib state untouched."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pytest
import torch

from routespace.evaluators.plots import (
    optuna_figure, plot_architecture, plot_flops_histogram, plot_history, plot_pareto, plot_routes, save_figure, show,
)
from routespace.evaluators.plots.data import boxes_overlap
from routespace.spaces.architecture import Architecture
from routespace.spaces.classics import CLASSICS, classic
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.random_arch import random_architecture
from routespace.spaces.space import preset

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _texts(fig):
    """Window boxes of every drawn, non-empty text of ``fig``: titles, axis labels, legends, annotations and
    the tick labels of ticks inside the view (matplotlib keeps labels of out-of-view ticks, never drawn)."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    tick_labels, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                for label in (tick.label1, tick.label2):
                    tick_labels.add(id(label))
                    if lo - eps <= tick.get_loc() <= hi + eps and label.get_visible():
                        drawn.append(label)
    drawn += [t for t in fig.findobj(matplotlib.text.Text) if id(t) not in tick_labels and t.get_visible()]
    boxes = []
    for t in drawn:
        if t.get_text().strip():
            bb = t.get_window_extent(renderer)
            boxes.append((t.get_text(), (bb.x0 + 0.5, bb.y0 + 0.5, bb.x1 - 0.5, bb.y1 - 0.5)))
    return boxes


def assert_no_overlapping_text(fig):
    boxes = _texts(fig)
    pairs = boxes_overlap([b for _, b in boxes])
    assert not pairs, [(boxes[i][0], boxes[j][0]) for i, j in pairs]


def _results():
    rng = np.random.default_rng(0)
    pts = [("fcn32s", 3.1, 0.41, "classic"), ("deeplabv3", 4.0, 0.45, "classic"), ("unet", 5.2, 0.47, "classic"),
           ("hrnetv2", 6.5, 0.52, "classic"), ("autodeeplab", 4.2, 0.46, "classic"), ("Dynamic-A", 3.0, 0.50, "dynamic"),
           ("Common-A", 2.9, 0.47, "common"), ("random path", 3.5, 0.38, "random")]
    pts += [(f"trial {i}", float(rng.uniform(2.5, 6.5)), float(rng.uniform(0.35, 0.5)), "search") for i in range(20)]
    pts += [(f"near {i}", 3.0 + 0.01 * i, 0.50 - 0.001 * i, "search") for i in range(4)]  # a tight cluster
    return pts


def _study():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -(t.suggest_float("x", -2, 2) - 0.5) ** 2, n_trials=12)
    return study


def _figures():
    space = preset("tiny")
    freqs = {e: ((e[0] * 7 + e[1] * 3 + e[2]) % 10) / 9 for e in space.edges()}
    route = Architecture.from_path(space, [1, 1, 2, 2, 2, 1, 1, 0]).edges | {("out", 8, 0)}
    imgs = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    preds = [torch.randint(0, 5, (32, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    return {
        "grid_paper": plot_architecture(classic("hrnetv2", preset("paper"))),
        "grid_random": plot_architecture(random_architecture(space, 3, cell_choices=["sepconv", "res2net", "basic"])),
        "grid_dynamic": plot_architecture(space=space, frequencies=freqs),
        "routes": plot_routes(imgs, preds, [route, route], space, targets=preds, captions=["a\n1.0 GFLOPs", "b"]),
        "histogram": plot_flops_histogram(np.random.default_rng(0).normal(3, 0.3, 200), target=3.2),
        "pareto": plot_pareto(_results()),
        "history": plot_history(_study(), objective="mIoU"),
    }


def test_figures_leave_global_state_alone():
    before_rc = dict(matplotlib.rcParams)
    user_fig = plt.figure()  # the caller's own pyplot figure stays current and alone
    try:
        nums = plt.get_fignums()
        figs = _figures()
        figs["optuna"] = optuna_figure(_study())
        assert plt.get_fignums() == nums and plt.gcf() is user_fig
        assert dict(matplotlib.rcParams) == before_rc
        for f in figs.values():
            assert isinstance(f, matplotlib.figure.Figure)
            assert type(f.canvas).__name__ == "FigureCanvasAgg"
    finally:
        plt.close(user_fig)


@pytest.fixture(scope="module")
def figures():
    return _figures()


@pytest.mark.parametrize("name", ["grid_paper", "grid_random", "grid_dynamic", "routes", "histogram", "pareto", "history"])
def test_axes_labelled_and_text_does_not_overlap(figures, name):
    fig = figures[name]
    data_axes = [ax for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel() or ax.has_data()]
    assert data_axes
    for ax in data_axes:
        if ax.images:  # image panels carry a title or caption instead of axes
            continue
        if ax.get_label() == "<colorbar>":
            assert ax.get_xlabel() or ax.get_ylabel()
            continue
        if ax.lines or ax.collections or ax.patches:
            assert ax.get_xlabel() and ax.get_ylabel(), (name, ax)
    assert_no_overlapping_text(fig)


def test_grid_axis_orientation(figures):
    ax = figures["grid_paper"].axes[0]
    lo, hi = ax.get_ylim()
    assert lo > hi  # inverted: scale 0 (stride 4, fine) on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["4", "8", "16", "32"]
    assert list(ax.get_yticks()) == [0, 1, 2, 3]
    assert ax.get_legend() is not None
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("down" in s for s in legend) and any("up" in s for s in legend) and any("keep" in s for s in legend)


def test_dynamic_grid_has_a_colour_bar(figures):
    fig = figures["grid_dynamic"]
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert any("frequency" in s for s in labels) and len(fig.axes) == 2


def test_pareto_labels_every_point_once(figures):
    ax = figures["pareto"].axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {p[0] for p in _results()} <= texts


@pytest.mark.parametrize("name", sorted(CLASSICS))
def test_every_classic_draws_without_overlap(name):
    fig = show(name, preset="tiny")
    assert name in fig.axes[0].get_title(loc="left")
    assert_no_overlapping_text(fig)


def test_save_png_svg_atomically(tmp_path, figures):
    png = save_figure(figures["histogram"], tmp_path / "h.png")
    svg = save_figure(figures["grid_random"], tmp_path / "g.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.svg", "h.png"]  # no temp files left
    with pytest.raises(RoutespaceError, match="png, .svg"):
        save_figure(figures["histogram"], tmp_path / "h.jpg")
    with pytest.raises(RoutespaceError, match="does not exist"):
        save_figure(figures["histogram"], tmp_path / "missing" / "h.png")


def test_optuna_figure_rejects_unknown_plot():
    with pytest.raises(RoutespaceError, match="unknown Optuna plot"):
        optuna_figure(_study(), "plot_nothing")
