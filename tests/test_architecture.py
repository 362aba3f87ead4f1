"""Architecture: validation with useful messages, canonical JSON round trips, random architectures."""
from __future__ import annotations

import json
import random

import pytest
from foundation_helpers import assert_valid_subgraph, random_archs

from routespace.spaces.architecture import FORMAT_NAME, FORMAT_VERSION, Architecture, load_architecture
from routespace.spaces.classics import CLASSICS
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.random_arch import prune_edges, random_architecture, random_path
from routespace.spaces.space import CELL_TYPES, RoutingSpace, preset

TINY = preset("tiny")
PAPER = preset("paper")


def _all_archs() -> list[Architecture]:
    out = []
    for space in (TINY, PAPER):
        out += [fn(space) for fn in CLASSICS.values()]
    out += random_archs(TINY, 10, seed=1) + random_archs(PAPER, 10, seed=2)
    out += random_archs(TINY, 4, seed=3, cell_choices=CELL_TYPES)
    return out


ARCHS = _all_archs()


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a.space.name}-{a.name}")
def test_json_round_trip(arch):
    text = arch.to_json()
    back = Architecture.from_json(text)
    assert back == arch and hash(back) == hash(arch)
    assert back.to_json() == text
    assert back.name == arch.name and back.cells == arch.cells
    data = json.loads(text)
    assert data["format"] == FORMAT_NAME and data["version"] == FORMAT_VERSION
    # canonical: a shuffled edge list and reordered keys give identical text
    random.Random(0).shuffle(data["edges"])
    shuffled = json.dumps(dict(reversed(list(data.items()))))
    assert Architecture.from_json(shuffled).to_json() == text


def test_dict_round_trip_with_explicit_space():
    arch = CLASSICS["unet"](TINY)
    back = Architecture.from_dict(arch.to_dict(), space=TINY)
    assert back == arch


def test_equality_ignores_name_and_default_cells():
    a = Architecture.from_path(TINY, [1, 1, 2, 2, 1, 1, 0, 0], name="a")
    b = Architecture(TINY, a.edges, cells=(((3, 2), TINY.cell),), name="b")
    assert a == b and hash(a) == hash(b) and a.cells == b.cells == ()
    c = Architecture(TINY, a.edges, cells=(((3, 2), "basic"),))
    assert c != a and c.cell_of((3, 2)) == "basic" and c.cell_of((4, 2)) == TINY.cell


def test_structure_of_a_path():
    scales = [1, 1, 2, 2, 1, 1, 0, 0]
    arch = Architecture.from_path(TINY, scales)
    assert arch.nodes == ((0, 0),) + tuple((l, s) for l, s in enumerate(scales, start=1))
    assert arch.output_scales() == [0]
    assert arch.in_edges((3, 2)) == [(3, 1, 2)] and arch.out_edges((3, 2)) == [(4, 2, 2)]
    g = arch.graph
    assert g.number_of_nodes() == 9 and g.number_of_edges() == 8
    assert g.nodes[(0, 0)]["cell"] == "sepconv" and g.nodes[(3, 2)]["cell"] == "sepconv"  # the initial node has a cell too
    assert g.edges[(2, 1), (3, 2)]["kind"] == "down"


def test_all_open_is_the_space():
    arch = Architecture.all_open(TINY)
    assert arch.edges == frozenset(TINY.edges())
    assert set(arch.nodes) == set(TINY.nodes())
    assert arch.output_scales() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "edges, needle",
    [
        ({(1, 0, 0), (2, 0, 2)}, "jumps 2 scales"),
        ({(1, 0, 1), (2, 1, 1), (2, 3, 3)}, "not in the space"),
        ({(1, 0, 0), (2, 0, 0), (2, 1, 1)}, r"node \(layer 1, scale 1\) is not reachable from the stem"),
        ({(1, 0, 0), (1, 0, 1), (2, 0, 0)}, r"node \(layer 1, scale 1\) does not reach the decoder"),
        (set(), "at least one edge"),
    ],
)
def test_invalid_edge_sets_name_the_problem(edges, needle):
    space = RoutingSpace(layers=2, base_channels=8, num_classes=3, input_size=(32, 32))
    with pytest.raises(RoutespaceError, match=needle):
        Architecture(space, frozenset(edges))


def test_path_errors():
    with pytest.raises(RoutespaceError, match="one scale per layer"):
        Architecture.from_path(TINY, [0, 0])
    with pytest.raises(RoutespaceError, match="jumps 2 scales"):
        Architecture.from_path(TINY, [0, 2, 2, 2, 2, 2, 2, 2])
    with pytest.raises(RoutespaceError, match="not in the space"):
        Architecture.from_path(TINY, [1, 2, 3, 4, 4, 4, 4, 4])


def test_cell_override_errors():
    arch = Architecture.from_path(TINY, [0] * 8)
    with pytest.raises(RoutespaceError, match="unknown cell type 'mbconv'"):
        Architecture(TINY, arch.edges, cells=(((1, 0), "mbconv"),))
    with pytest.raises(RoutespaceError, match=r"node \(layer 1, scale 1\), which is not an active"):
        Architecture(TINY, arch.edges, cells=(((1, 1), "basic"),))
    # the initial node (0, 0) has a cell like every node, so it may take another type or identity
    first = Architecture(TINY, arch.edges, cells=(((0, 0), "identity"),))
    assert first.cell_of((0, 0)) == "identity" and Architecture.from_json(first.to_json()) == first


def test_identity_architecture_builds_runs_round_trips_and_forwards_its_input():
    """An identity node runs no cell: with every node identity on a path that stays at stride 4, the net
    is the stem feeding the decoder (keep edges of identity nodes carry x unchanged)."""
    import torch

    from routespace.spaces.builder import build

    arch = Architecture.from_path(TINY, [0] * 8)
    ident = Architecture(TINY, arch.edges, cells=tuple((n, "identity") for n in arch.nodes), name="all-identity")
    assert Architecture.from_json(ident.to_json()) == ident
    net = build(ident).eval()
    assert len(net.cells) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = net.decoder([net.stem(x), None, None, None], [(16, 16), (8, 8), (4, 4), (2, 2)], (64, 64))
        assert torch.equal(net(x), expected)


def _spec(**changes) -> str:
    data = Architecture.from_path(TINY, [0, 1, 1, 1, 1, 1, 1, 0]).to_dict()
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (_spec(version=2), "unknown spec format version 2"),
        (_spec(format="other"), "not a routespace spec"),
        (_spec(extra=1), "unknown spec field"),
        (_spec(edges=[]), "non-empty list"),
        (_spec(edges=[[[0, 0], [2, 0]]]), "skips a layer"),
        (_spec(edges=[[[0, 0], [1, 0]], [[1, 0], [2, 2]]]), "jumps 2 scales"),
        (_spec(edges=[[[0, 0], [1, "x"]]]), "bad edge"),
        (_spec(cells={"a,b": "basic"}), "bad cells key"),
        (_spec(cells={"1,0": 3}), "must be a string"),
        (_spec(cells={"\u00b2,0": "basic"}), "bad cells key"),  # isdigit() is true for a superscript
        (_spec(version=int("9" * 20)).replace("9" * 20, "9" * 5000), "not valid JSON"),  # over int()'s limit
        (_spec(name=5), "'name' must be a string"),
        (json.dumps({k: v for k, v in json.loads(_spec()).items() if k != "space"}), "no 'space' field"),
    ],
)
def test_bad_specs(text, needle):
    with pytest.raises(RoutespaceError, match=needle):
        Architecture.from_json(text)


def test_load_architecture(tmp_path):
    arch = CLASSICS["hrnetv2"](TINY)
    path = tmp_path / "a.json"
    path.write_text(arch.to_json())
    assert load_architecture(str(path)) == arch
    with pytest.raises(RoutespaceError, match="does not exist"):
        load_architecture(str(tmp_path / "missing.json"))
    with pytest.raises(RoutespaceError, match="is a folder"):
        load_architecture(str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(RoutespaceError, match=r"bad\.json: spec is not valid JSON"):
        load_architecture(str(bad))


# --- random architectures -------------------------------------------------------------------------------
@pytest.mark.parametrize("space", [TINY, PAPER, RoutingSpace(layers=2, base_channels=8, input_size=(32, 32))],
                         ids=["tiny", "paper", "l2"])
def test_random_architectures_are_valid(space):
    archs = random_archs(space, 40, seed=11)
    for arch in archs:
        assert_valid_subgraph(arch)
    if space.layers > 2:
        assert len(set(archs)) > 30  # diverse
    # half are single paths: exactly one node per layer
    for arch in archs[::2]:
        assert sorted(l for l, _ in arch.nodes) == list(range(space.layers + 1))


def test_random_architectures_are_seeded():
    assert random_archs(TINY, 5, seed=7) == random_archs(TINY, 5, seed=7)
    assert random_archs(TINY, 5, seed=7) != random_archs(TINY, 5, seed=8)
    assert random_architecture(TINY, 3) == random_architecture(TINY, random.Random(3))


def test_random_path_moves():
    for seed in range(20):
        scales = random_path(PAPER, seed)
        prev = 0
        for layer, s in enumerate(scales, start=1):
            assert abs(s - prev) <= 1 and 0 <= s <= min(layer, 3)
            prev = s


def test_random_cells():
    archs = random_archs(TINY, 6, seed=5, cell_choices=("res2net", "basic"))
    for arch in archs:
        assert {arch.cell_of(n) for n in arch.nodes if n[0] > 0} <= {"res2net", "basic"}
    assert {c for a in archs for _, c in a.cells} == {"res2net", "basic"}
    with pytest.raises(RoutespaceError, match="unknown random architecture kind"):
        random_architecture(TINY, 0, kind="tree")


def test_prune_edges_drops_dangling_edges():
    space = RoutingSpace(layers=4, base_channels=8, input_size=(32, 32))
    path = {(1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0)}
    side = {(1, 0, 1), (2, 1, 1), (3, 1, 1), (4, 1, 0)}  # a second full path: kept
    dead_end = {(2, 1, 2)}  # (2, 2) is reached but has no way on to the last layer
    orphan = {(4, 3, 3)}  # (3, 3) is never reached from the stem
    not_in_space = {(1, 0, 2)}
    kept = prune_edges(space, path | dead_end | orphan | side | not_in_space)
    assert kept == frozenset(path | side)
    assert_valid_subgraph(Architecture(space, kept))
    assert prune_edges(space, dead_end | orphan) == frozenset()
