"""The routing space: nodes, edges, kinds, channels, the networkx graph, presets and validation."""
from __future__ import annotations

import networkx as nx
import pytest

from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import (
    PRESETS, STRIDES, RoutingSpace, check_input_size, edge_kind, parse_size, preset,
)


def _edge_count(layers: int) -> int:
    """Hand count: layer 1 has 2 edges (keep, down), layer 2 has 5, layer 3 has 8, later layers 10
    (to scale 0: 2 sources, scale 1: 3, scale 2: 3, scale 3: 2)."""
    return 2 + 5 + 8 + 10 * (layers - 3)


@pytest.mark.parametrize("name", ["paper", "tiny"])
def test_cells_per_layer_is_2_3_4_4(name):
    space = preset(name)
    counts = [len(space.scales_at(l)) for l in range(1, space.layers + 1)]
    assert counts == [2, 3] + [4] * (space.layers - 2)
    assert list(space.scales_at(0)) == [0]
    assert "cells per layer: " + ",".join(map(str, counts)) in space.describe()


@pytest.mark.parametrize("name", ["paper", "tiny"])
def test_node_and_edge_counts(name):
    space = preset(name)
    nodes = list(space.nodes())
    assert len(nodes) == len(set(nodes)) == 1 + 2 + 3 + 4 * (space.layers - 2)
    edges = list(space.edges())
    assert len(edges) == len(set(edges)) == _edge_count(space.layers)
    assert (0, 0) in nodes and (1, 2) not in nodes and (2, 3) not in nodes and (3, 3) in nodes


def test_paper_preset_fields():
    space = preset("paper")
    assert (space.layers, space.base_channels, space.num_classes, space.cell) == (16, 64, 19, "sepconv")
    assert space.input_size == (1024, 2048)
    assert [space.channels(s) for s in range(4)] == [64, 128, 256, 512]
    assert _edge_count(16) == 145


def test_edge_kinds_paper_counts():
    """keep: 1+2+3 in layers 1-3, then 4 per layer; down: 1+2+3, then 3; up: 0+1+2, then 3."""
    space = preset("paper")
    kinds = [edge_kind(s, d) for _, s, d in space.edges()]
    assert kinds.count("keep") == 6 + 4 * 13
    assert kinds.count("down") == 6 + 3 * 13
    assert kinds.count("up") == 3 + 3 * 13


def test_edge_kind_values_and_jump():
    assert edge_kind(0, 1) == "down"
    assert edge_kind(2, 2) == "keep"
    assert edge_kind(3, 2) == "up"
    with pytest.raises(RoutespaceError, match="at most one scale"):
        edge_kind(0, 2)


@pytest.mark.parametrize("name", ["paper", "tiny"])
def test_graph_attributes(name):
    space = preset(name)
    g = space.graph
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    assert g.number_of_nodes() == len(list(space.nodes()))
    assert g.number_of_edges() == _edge_count(space.layers)
    for node, data in g.nodes(data=True):
        layer, scale = node
        assert data["layer"] == layer and data["scale"] == scale
        assert data["stride"] == STRIDES[scale] == 4 * 2**scale
        assert data["channels"] == space.base_channels * 2**scale
    for (u, v), kind in nx.get_edge_attributes(g, "kind").items():
        assert v[0] == u[0] + 1
        expected = {1: "down", 0: "keep", -1: "up"}[v[1] - u[1]]
        assert kind == expected
    last = [(space.layers, s) for s in range(4)]
    for node in g.nodes:
        assert node == (0, 0) or nx.has_path(g, (0, 0), node)
        assert any(nx.has_path(g, node, t) for t in last)


def test_in_out_edges_consistent_with_edges():
    space = preset("tiny")
    edges = set(space.edges())
    for node in space.nodes():
        for e in space.out_edges(node):
            assert e in edges and (e[0] - 1, e[1]) == node
        for e in space.in_edges(node):
            assert e in edges and (e[0], e[2]) == node
    assert sum(len(space.out_edges(n)) for n in space.nodes()) == len(edges)
    assert sum(len(space.in_edges(n)) for n in space.nodes()) == len(edges)
    assert space.out_edges((space.layers, 0)) == []
    assert space.in_edges((0, 0)) == []
    # interior node at layer >= 3, middle scale: up, keep and down in and out
    assert len(space.in_edges((4, 1))) == 3 and len(space.out_edges((4, 1))) == 3
    assert len(space.out_edges((4, 0))) == 2 and len(space.out_edges((4, 3))) == 2


def test_has_edge_rejects_jumps_and_skips():
    space = preset("tiny")
    assert space.has_edge((1, 0, 1)) and space.has_edge((4, 3, 2))
    assert not space.has_edge((4, 1, 3))  # jumps two scales
    assert not space.has_edge((1, 0, 2))  # layer 1 only reaches scales 0..1
    assert not space.has_edge((2, 2, 2))  # layer 1 has no scale 2
    assert not space.has_edge((0, 0, 0)) and not space.has_edge((space.layers + 1, 0, 0))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"layers": 0}, "layers"),
        ({"layers": 65}, "layers"),
        ({"layers": True}, "layers"),
        ({"base_channels": 7}, "even"),
        ({"num_classes": 0}, "num_classes"),
        ({"cell": "mbconv"}, "unknown cell type"),
        ({"scales": 3}, "scales"),
        ({"input_size": (100, 64)}, "divisible by 32"),
    ],
)
def test_space_validation(kwargs, needle):
    with pytest.raises(RoutespaceError, match=needle):
        RoutingSpace(**kwargs)


def test_space_dict_round_trip_and_unknown_field():
    space = RoutingSpace(layers=5, base_channels=24, num_classes=7, cell="basic", input_size=(96, 160), name="x")
    back = RoutingSpace.from_dict(space.to_dict())
    assert back == space and hash(back) == hash(space)
    with pytest.raises(RoutespaceError, match="unknown space field"):
        RoutingSpace.from_dict({**space.to_dict(), "depth": 3})
    with pytest.raises(RoutespaceError, match="JSON object"):
        RoutingSpace.from_dict([1, 2])


def test_sizes():
    assert parse_size("1024x2048") == (1024, 2048)
    assert parse_size("96X160") == (96, 160)
    assert check_input_size([64, 64]) == (64, 64)
    for bad, needle in [("100x100", "divisible by 32"), ("64", "HxW"), ("axb", "HxW"), ("0x64", "divisible"),
                        ("16384x64", "too large"), ("\u00b2x64", "HxW"), ("9" * 5000 + "x64", "HxW")]:
        with pytest.raises(RoutespaceError, match=needle):
            parse_size(bad)


def test_presets():
    assert set(PRESETS) >= {"paper", "tiny"}
    tiny = preset("tiny")
    assert (tiny.layers, tiny.base_channels, tiny.input_size) == (8, 16, (64, 64))
    with pytest.raises(RoutespaceError, match="unknown preset 'nope'"):
        preset("nope")
