"""Graph exports: canonical JSON and node-link round trips, GraphML read back by plain networkx."""
from __future__ import annotations

import json
import random

import networkx as nx
import pytest

from routespace.spaces.architecture import Architecture
from routespace.spaces.classics import CLASSICS, classic
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.exports import (
    architecture_to_graph, export, from_node_link, from_node_link_json, import_architecture, node_link_json,
    read_graphml, to_node_link,
)
from routespace.spaces.random_arch import random_architecture
from routespace.spaces.space import CELL_TYPES, RoutingSpace, preset

SPACES = [preset("tiny"), preset("paper"), RoutingSpace(layers=12, base_channels=32, num_classes=7, name="l12")]


def _all_classics() -> list[Architecture]:
    return [classic(name, space) for space in SPACES for name in CLASSICS]


def _random_archs(n: int = 50) -> list[Architecture]:
    rng = random.Random(1234)
    out = []
    for i in range(n):
        space = SPACES[i % len(SPACES)]
        cells = list(CELL_TYPES) if i % 2 else None
        out.append(random_architecture(space, rng, kind="mixed", p=rng.uniform(0.1, 0.6), cell_choices=cells, name=f"r{i}"))
    return out


CASES = _all_classics() + _random_archs()


def test_cases_are_varied():
    assert len({a for a in CASES}) == len(CASES)  # 15 classics + 50 distinct random architectures
    assert any(a.cells for a in CASES) and any(len(a.output_scales()) > 1 for a in CASES)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_json_and_node_link_round_trip(i):
    arch = CASES[i]
    back = Architecture.from_json(arch.to_json())
    assert back == arch and back.name == arch.name and back.to_json() == arch.to_json()
    text = node_link_json(arch)
    nl = from_node_link_json(text)
    assert nl == arch and nl.name == arch.name and nl.cells == arch.cells and nl.space == arch.space
    # the node-link text is plain JSON that networkx reads without routespace's help
    g = nx.node_link_graph(json.loads(text), directed=True, multigraph=False, edges="edges")
    expected = {(f"{l - 1},{s}", f"{l},{d}") for (l, s, d) in arch.edges}
    assert set(g.edges) == expected


def test_graph_attributes_are_graphml_safe():
    for arch in CASES[:20]:
        g = architecture_to_graph(arch)
        values = list(g.graph.values())
        values += [v for _, d in g.nodes(data=True) for v in d.values()]
        values += [v for _, _, d in g.edges(data=True) for v in d.values()]
        assert all(isinstance(v, (str, int, bool)) for v in values)
        assert all(isinstance(n, str) for n in g.nodes)


def test_graphml_loads_back_with_networkx(tmp_path):
    for arch in _all_classics()[:5] + _random_archs(10):
        path = tmp_path / "a.graphml"
        export(arch, "graphml", path)
        g = nx.read_graphml(path)
        expected = {(f"{l - 1},{s}", f"{l},{d}") for (l, s, d) in arch.edges}
        assert set(g.edges) == expected
        kinds = {(u, v): d["kind"] for u, v, d in g.edges(data=True)}
        for (l, s, d) in arch.edges:
            want = "keep" if s == d else ("down" if d == s + 1 else "up")
            assert kinds[(f"{l - 1},{s}", f"{l},{d}")] == want
        assert g.nodes["0,0"]["cell"] == arch.cell_of((0, 0))
        assert read_graphml(str(path)) == arch


def test_node_link_uses_networkx_layout():
    data = to_node_link(classic("unet", preset("tiny")))
    assert {"nodes", "edges", "graph", "directed"} <= set(data) and data["directed"] is True
    assert data["graph"]["space_layers"] == 8 and data["graph"]["space_input_size"] == "64x64"


@pytest.mark.parametrize(
    "data, words",
    [
        ([], "not node-link"),
        ({"nodes": [], "edges": [], "graph": {"format": "other"}}, "not a routespace graph"),
        ({"nodes": [{"id": "0,0"}, {"id": "x"}], "edges": [{"source": "0,0", "target": "x"}],
          "graph": json.loads(node_link_json(classic("fcn32s", preset("tiny"))))["graph"]}, "bad node id"),
        ({"nodes": [{"id": "0,0"}, {"id": "2,0"}], "edges": [{"source": "0,0", "target": "2,0"}],
          "graph": json.loads(node_link_json(classic("fcn32s", preset("tiny"))))["graph"]}, "skips a layer"),
    ],
)
def test_bad_node_link_is_a_user_error(data, words):
    with pytest.raises(RoutespaceError, match=words):
        from_node_link(data)


def test_import_guesses_the_format(tmp_path):
    arch = random_architecture(preset("tiny"), 7, cell_choices=list(CELL_TYPES), name="guess")
    for fmt in ("json", "nodelink", "graphml"):
        path = tmp_path / f"a.{fmt}"
        export(arch, fmt, path)
        assert import_architecture(path) == arch
