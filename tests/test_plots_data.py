"""Data steps of the plots, on inputs whose answers are known independently."""
from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from routespace.evaluators.plots.data import (
    CELL_MARKERS, EDGE_STYLES, ResultPoint, as_points, boxes_overlap, budget_target_gflops, edge_frequencies,
    flops_histogram, frequencies_from_json, frequencies_to_json, grid_data, history_data, labels_to_rgb, pareto_front,
    pick_extremes, place_labels, route_rows, routes_from_gates, study_records,
)
from routespace.spaces.architecture import Architecture
from routespace.spaces.classics import classic
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import RoutingSpace, preset

HRNET_BRANCHES_L16 = [1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4]  # DESIGN §3


def _hrnet_expected_edges(layer: int) -> dict[str, int]:
    """Edges into ``layer`` from the branch counts alone: keep per continuing branch, a down edge per new
    branch, and a down+up pair per adjacent continuing branch pair at even layers."""
    prev = 1 if layer == 1 else HRNET_BRANCHES_L16[layer - 2]
    now = HRNET_BRANCHES_L16[layer - 1]
    cont = min(prev, now)
    exchange = cont - 1 if layer % 2 == 0 else 0
    return {"keep": cont, "down": (now - prev) + exchange, "up": exchange}


def test_hrnet_grid_counts_per_layer():
    arch = classic("hrnetv2", preset("paper"))
    data = grid_data(arch)
    assert data.layers == 16 and not data.dynamic
    assert len(data.active_nodes(0)) == 1 and data.active_nodes(0)[0].cell == "sepconv"  # the initial node's cell
    for layer in range(1, 17):
        assert len(data.active_nodes(layer)) == HRNET_BRANCHES_L16[layer - 1], layer
        want = _hrnet_expected_edges(layer)
        got = {k: len(data.active_edges(layer, k)) for k in ("keep", "down", "up")}
        assert got == want, (layer, got, want)
    # the last layer's four branches each feed the decoder
    assert len(data.active_edges(16, "out")) == 4
    # the whole space is drawn: every node and edge of the space appears once
    space = arch.space
    assert len(data.nodes) == len(list(space.nodes()))
    assert len([e for e in data.edges if e.kind != "out"]) == len(list(space.edges()))


def test_edge_marks_geometry_and_styles():
    arch = classic("unet", preset("tiny"))
    data = grid_data(arch)
    for e in data.edges:
        if e.kind == "out":
            continue
        layer, s, d = e.key
        assert (e.x0, e.y0, e.x1, e.y1) == (layer - 1, s, layer, d)
        assert e.kind == {1: "down", 0: "keep", -1: "up"}[d - s]
        assert e.active == (e.key in arch.edges)
        assert (e.width > 1.5) == e.active and e.frequency is None
    assert data.kinds_used == ("keep", "down", "up", "out")
    styles = [(EDGE_STYLES[k].color, EDGE_STYLES[k].linestyle) for k in ("keep", "down", "up", "out")]
    assert len({s[0] for s in styles}) == 4 and len({s[1] for s in styles}) == 4  # colour AND line style differ


def test_cells_are_marked_per_node():
    space = preset("tiny")
    arch = Architecture.from_path(space, [0, 1, 1, 2, 2, 3, 3, 3])
    arch = Architecture(space, arch.edges, cells={(2, 1): "basic", (5, 2): "res2net"})
    data = grid_data(arch)
    cells = {n.node: n.cell for n in data.nodes if n.active}
    assert cells[(0, 0)] == "sepconv" and cells[(2, 1)] == "basic" and cells[(5, 2)] == "res2net"
    assert cells[(1, 0)] == "sepconv"
    assert data.cells_used == ("sepconv", "res2net", "basic")
    assert len({CELL_MARKERS[c][0] for c in data.cells_used}) == 3
    assert len({m for m, _ in CELL_MARKERS.values()}) == len(CELL_MARKERS)  # every registered cell looks different


def test_frequencies_drive_width_and_alpha():
    space = preset("tiny")
    freqs = {e: (i % 5) / 4 for i, e in enumerate(space.edges())}
    freqs[("out", 8, 1)] = 0.5
    data = grid_data(space=space, frequencies=freqs)
    assert data.dynamic
    marks = {e.key: e for e in data.edges}
    for key, f in freqs.items():
        m = marks[key]
        assert m.frequency == f and m.active == (f > 0)
        if f > 0:
            assert m.width == pytest.approx(0.5 + 4.0 * f) and m.alpha == pytest.approx(0.15 + 0.85 * f)
    open_ = sorted((m for m in data.edges if m.active), key=lambda m: m.frequency)
    assert all(a.width <= b.width and a.alpha <= b.alpha for a, b in zip(open_, open_[1:]))
    # string keys (the JSON form) give the same data
    again = grid_data(space=space, frequencies=frequencies_from_json(frequencies_to_json(freqs), space))
    assert again == data


@pytest.mark.parametrize("bad", [{(9, 0, 0): 0.5}, {(1, 0, 0): 1.5}, {"1,x,0": 0.2}, {(3, 0, 2): 0.1}])
def test_bad_frequencies_are_user_errors(bad):
    with pytest.raises(RoutespaceError):
        grid_data(space=preset("tiny"), frequencies=bad)


def test_frequencies_and_routes_from_gates():
    gates = [
        {(1, 0, 0): torch.tensor([0.0, 0.5, 0.9]), (1, 0, 1): torch.tensor([0.2, 0.0, 0.0]), ("out", 8, 0): torch.tensor([1.0, 1.0, 0.0])},
        {(1, 0, 0): np.array([0.3]), (1, 0, 1): np.array([0.0]), ("out", 8, 0): [0.0]},
    ]
    f = edge_frequencies(gates)
    assert f == {(1, 0, 0): 0.75, (1, 0, 1): 0.25, ("out", 8, 0): 0.5}
    assert edge_frequencies(gates, threshold=0.4) == {(1, 0, 0): 0.5, (1, 0, 1): 0.0, ("out", 8, 0): 0.5}
    routes = routes_from_gates(gates)
    assert routes == [
        frozenset({(1, 0, 1), ("out", 8, 0)}), frozenset({(1, 0, 0), ("out", 8, 0)}),
        frozenset({(1, 0, 0)}), frozenset({(1, 0, 0)}),
    ]
    with pytest.raises(RoutespaceError, match="different numbers"):
        edge_frequencies({(1, 0, 0): [1.0, 0.0], (1, 0, 1): [1.0]})


def test_route_rows():
    space = preset("tiny")
    route = Architecture.from_path(space, [1, 2, 3, 3, 3, 3, 3, 3]).edges | {("out", 8, 3)}
    img = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(3, 4, 4)
    pred = np.array([[0, 1], [4, 255]])
    rows = route_rows([img], [pred], [route], space, captions=["small"])
    r = rows[0]
    assert r.image.shape == (4, 4, 3) and r.image.min() == 0.0 and r.image.max() == 1.0
    assert r.prediction.shape == (2, 2, 3) and (r.prediction[1, 1] == 0).all()  # ignore label is black
    assert not np.allclose(r.prediction[0, 0], r.prediction[0, 1])
    assert {e.key for e in r.grid.edges if e.active} == set(route) and r.caption == "small"
    logits = torch.zeros(5, 2, 2)
    logits[3] = 1.0
    assert np.allclose(labels_to_rgb(logits, 5), labels_to_rgb(np.full((2, 2), 3), 5))
    with pytest.raises(RoutespaceError):
        route_rows([img], [pred, pred], [route], space)


def test_flops_histogram():
    values = [1.0, 1.1, 1.2, 2.0, 2.1, 3.0]
    h = flops_histogram(values, target=1.5, bins=4)
    assert h.counts.sum() == 6 and len(h.bin_edges) == 5
    assert h.bin_edges[0] == 1.0 and h.bin_edges[-1] == 3.0
    assert h.mean == pytest.approx(np.mean(values)) and h.fraction_over_target == pytest.approx(0.5)
    flat = flops_histogram([2.0] * 10)
    assert flat.counts.sum() == 10 and flat.bin_edges[0] < 2.0 < flat.bin_edges[-1] and flat.target is None
    with pytest.raises(RoutespaceError):
        flops_histogram([])


def test_pareto_front_of_known_points():
    pts = as_points([
        ("a", 1.0, 0.30), ("b", 2.0, 0.50), ("c", 2.0, 0.40),  # c dominated by b (same cost, worse)
        ("d", 3.0, 0.45),  # dominated by b
        ("e", 4.0, 0.60), ("f", 0.5, 0.10), ("g", 4.0, 0.60),  # g ties e: neither dominates
    ])
    assert [pts[i].label for i in pareto_front(pts)] == ["f", "a", "b", "e", "g"]
    assert pareto_front([]) == []
    assert as_points([{"name": "x", "gflops": "2", "miou": 0.1, "kind": "classic"}]) == [ResultPoint("x", 2.0, 0.1, "classic")]
    with pytest.raises(RoutespaceError):
        as_points([{"label": "x", "gflops": 1.0}])


def test_place_labels_never_overlap():
    anchors = [(100.0, 100.0)] * 6 + [(104.0, 98.0), (300.0, 50.0), (302.0, 52.0)]
    sizes = [(50.0, 12.0)] * len(anchors)
    boxes = place_labels(anchors, sizes, (0.0, 0.0, 400.0, 300.0))
    assert boxes_overlap(boxes) == []
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        assert x1 - x0 == pytest.approx(w) and y1 - y0 == pytest.approx(h)
        assert 0 <= x0 and x1 <= 400 and 0 <= y0 and y1 <= 300
    for (x, y), b in zip(anchors, boxes):  # no label covers a marker
        assert not (b[0] - 5 < x < b[2] + 5 and b[1] - 5 < y < b[3] + 5)


def test_history_best_so_far():
    records = [(2, 0.3, 30.0), (0, 0.1, 12.0), (1, 0.5, 20.0), (3, 0.2, 15.0)]
    h = history_data(records, "maximize")
    assert h.trials.tolist() == [0, 1, 2, 3] and h.best.tolist() == [0.1, 0.5, 0.5, 0.5]
    assert h.seconds.tolist() == [12.0, 15.0, 20.0, 30.0] and h.best_by_time.tolist() == [0.1, 0.2, 0.5, 0.5]
    assert history_data(records, "minimize").best.tolist() == [0.1, 0.1, 0.1, 0.1]
    with pytest.raises(RoutespaceError):
        history_data([], "maximize")


def test_study_records_duck_typed():
    t0 = dt.datetime(2026, 1, 1)
    state = SimpleNamespace(name="COMPLETE")
    trials = [
        SimpleNamespace(number=0, value=0.2, state=state, datetime_start=t0, datetime_complete=t0 + dt.timedelta(seconds=5)),
        SimpleNamespace(number=1, value=None, state=SimpleNamespace(name="FAIL"), datetime_start=t0, datetime_complete=None),
        SimpleNamespace(number=2, value=0.4, state=state, datetime_start=t0 + dt.timedelta(seconds=1),
                        datetime_complete=t0 + dt.timedelta(seconds=9)),
    ]
    study = SimpleNamespace(directions=[1], direction=SimpleNamespace(name="MAXIMIZE"), trials=trials)
    assert study_records(study) == ([(0, 0.2, 5.0), (2, 0.4, 9.0)], "maximize")


def test_pick_extremes_and_budget_target():
    assert pick_extremes([5.0, 1.0, 9.0, 3.0, 7.0], 4) == [1, 2, 3, 4]
    assert pick_extremes([2.0, 1.0], 5) == [1, 0]
    assert budget_target_gflops({"gflops": 1.25, "mu": 0.3}, 0.5, 2.0) == 1.25
    assert budget_target_gflops({"mu": 0.25, "gflops": None}, 0.5, 2.0) == pytest.approx(1.0)
    assert budget_target_gflops(None, 0.5, 2.0) is None


def test_small_space_grid_node_counts():
    space = RoutingSpace(layers=2, base_channels=8, num_classes=2, input_size=(32, 32))
    data = grid_data(Architecture.all_open(space))
    assert [len(data.active_nodes(l)) for l in range(3)] == [1, 2, 3]  # layer l reaches scales 0..min(l,3)
    assert len(data.active_edges(1)) == 2
    inner = [e for e in data.active_edges(2) if e.kind != "out"]
    assert len(inner) == 2 + 2 + 1  # into s0 from s0,s1; into s1 from s0,s1; into s2 from s1
    assert len(data.active_edges(2, "out")) == 3
