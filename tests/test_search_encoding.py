"""Search encodings, the subgraph repair, the cheapest architecture and the budget checks (pure, fast)."""
from __future__ import annotations

import itertools
import random

import networkx as nx
import pytest

from routespace.evaluators.cost import architecture_cost
from routespace.search.budget import ArchBudget, BudgetChecker, SearchBudget, cheapest_architecture, check_feasible
from routespace.search.encoding import (
    Encoding, completion_path, edge_param, on_stem_to_decoder_paths, repair_edges,
)
from routespace.spaces.architecture import Architecture
from routespace.spaces.classics import CLASSICS
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import RoutingSpace, preset

TINY = preset("tiny")
SMALL = RoutingSpace(layers=5, base_channels=8, num_classes=3, input_size=(64, 64), name="small")


def _nx_on_paths(space, edges):
    """Independent: edges on some stem -> last-layer path, via networkx reachability."""
    g = nx.DiGraph()
    g.add_node((0, 0))
    for l, s, d in edges:
        g.add_edge((l - 1, s), (l, d))
    ends = [n for n in g.nodes if n[0] == space.layers]
    reach = nx.descendants(g, (0, 0)) | {(0, 0)}
    co = set(ends).union(*(nx.ancestors(g, n) for n in ends)) if ends else set()
    return frozenset(e for e in edges if (e[0] - 1, e[1]) in reach and (e[0], e[2]) in co)


def test_prune_matches_networkx_on_random_edge_sets():
    rng = random.Random(0)
    all_edges = list(TINY.edges())
    for _ in range(300):
        p = rng.random()
        chosen = [e for e in all_edges if rng.random() < p]
        assert on_stem_to_decoder_paths(TINY, chosen) == _nx_on_paths(TINY, chosen)


def test_repair_always_valid_deterministic_and_order_free():
    rng = random.Random(1)
    all_edges = list(TINY.edges())
    for _ in range(200):
        chosen = [e for e in all_edges if rng.random() < rng.random()]
        fixed = repair_edges(TINY, chosen)
        Architecture(TINY, fixed)  # validates
        shuffled = chosen[:]
        rng.shuffle(shuffled)
        assert repair_edges(TINY, shuffled) == fixed
        # nothing is invented beyond the switched-on edges and the completion path
        assert fixed <= set(chosen) | set(completion_path(TINY, chosen))


def test_repair_known_answers():
    # nothing switched on -> the completion path prefers keep edges and the smallest scale: all stride 4
    assert repair_edges(TINY, []) == Architecture.from_path(TINY, [0] * TINY.layers).edges
    # a valid subgraph is left alone
    for name, fn in CLASSICS.items():
        arch = fn(TINY)
        assert repair_edges(TINY, arch.edges) == arch.edges, name
    # a dangling edge (its source is never reached) is dropped
    path = Architecture.from_path(TINY, [1, 1, 1, 1, 1, 1, 1, 1]).edges
    assert repair_edges(TINY, set(path) | {(5, 3, 3)}) == path
    # a lone edge in the middle is connected by the path that adds fewest edges (it is kept)
    fixed = repair_edges(TINY, {(4, 3, 3)})
    assert (4, 3, 3) in fixed and len(fixed) == TINY.layers


def test_path_encoding_round_trip_and_clamping():
    enc = Encoding(TINY, "path")
    for name in ("fcn32s", "deeplabv3", "autodeeplab"):
        arch = CLASSICS[name](TINY)
        assert enc.decode(enc.encode(arch)).edges == arch.edges
    up = enc.decode({f"move_{l}": -1 for l in range(1, 9)})  # every move clamped at scale 0
    assert up.edges == Architecture.from_path(TINY, [0] * 8).edges
    down = enc.decode({f"move_{l}": 1 for l in range(1, 9)})  # clamped at scale 3
    assert [d for _, _, d in down.sorted_edges] == [1, 2, 3, 3, 3, 3, 3, 3]
    with pytest.raises(RoutespaceError, match="single paths"):
        enc.encode(CLASSICS["unet"](TINY))


def test_subgraph_encoding_round_trip_with_cells():
    enc = Encoding(TINY, "subgraph", ("sepconv", "basic"))
    names = enc.choices()
    assert sum(1 for n in names if n.startswith("edge_")) == sum(1 for _ in TINY.edges())
    for name, fn in CLASSICS.items():
        arch = fn(TINY)
        params = enc.encode(arch)
        assert enc.decode(params) == arch, name
        params = dict(params)
        node = arch.nodes[-1]
        params[f"cell_{node[0]}_{node[1]}"] = "basic"
        assert enc.decode(params).cell_of(node) == "basic"
    with pytest.raises(RoutespaceError, match="missing"):
        enc.decode({edge_param((1, 0, 0)): 1})
    with pytest.raises(RoutespaceError, match="unknown space encoding"):
        Encoding(TINY, "graph")


def _all_paths(space):
    out, seen = [], set()
    for moves in itertools.product((-1, 0, 1), repeat=space.layers):
        arch = Encoding(space, "path").decode({f"move_{l}": m for l, m in enumerate(moves, 1)})
        if arch not in seen:
            seen.add(arch)
            out.append(arch)
    return out


@pytest.mark.parametrize("key", ["flops", "params"])
def test_cheapest_architecture_is_the_brute_force_minimum(key):
    paths = _all_paths(SMALL)
    attr = "flops" if key == "flops" else "params"
    brute = min(getattr(architecture_cost(a), attr) for a in paths)
    found = cheapest_architecture(SMALL, key=key)
    assert getattr(architecture_cost(found), attr) == brute
    # no subgraph is cheaper than the cheapest path
    rng = random.Random(2)
    for _ in range(100):
        arch = Architecture(SMALL, repair_edges(SMALL, [e for e in SMALL.edges() if rng.random() < 0.5]))
        assert getattr(architecture_cost(arch), attr) >= brute


def test_cheapest_with_cell_choice_uses_cheapest_cells():
    one = architecture_cost(cheapest_architecture(SMALL, ("sepconv",))).flops
    two = architecture_cost(cheapest_architecture(SMALL, ("sepconv", "basic", "res2net"))).flops
    assert two <= one


def test_budget_below_cheapest_names_it():
    cheapest = architecture_cost(cheapest_architecture(TINY)).gflops
    check_feasible(TINY, ArchBudget(max_gflops=cheapest * 1.0001))
    with pytest.raises(RoutespaceError) as err:
        check_feasible(TINY, ArchBudget(max_gflops=cheapest * 0.9))
    msg = str(err.value)
    assert "cheapest" in msg and f"{cheapest:.4g}" in msg and "path of strides" in msg and "\n" not in msg
    with pytest.raises(RoutespaceError, match="smallest"):
        check_feasible(TINY, ArchBudget(max_params_m=1e-6))


def test_checker_constraints_and_latency_only_after_analytic_pass():
    calls = []
    checker = BudgetChecker(ArchBudget(max_gflops=0.003, max_latency_ms=5.0), latency_fn=lambda a: calls.append(a) or 1.0)
    cheap = cheapest_architecture(TINY)
    big = Architecture.all_open(TINY)
    v = checker.check(cheap)
    assert v.ok and v.constraints["gflops"] <= 0 and v.constraints["latency_ms"] == 1.0 - 5.0
    v = checker.check(big)
    assert not v.ok and v.constraints["gflops"] > 0 and "GFLOPs" in v.reason
    assert calls == [cheap]  # the over-budget one was never built or timed
    checker.check(cheap)
    assert calls == [cheap]  # cached


def test_search_budget_validation():
    with pytest.raises(RoutespaceError):
        SearchBudget(trials=0)
    with pytest.raises(RoutespaceError):
        ArchBudget(max_gflops=-1)
    assert SearchBudget(trials=3).rejected_cap >= 2000
