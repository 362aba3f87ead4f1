"""Classic nets: exact layouts for L=16 (and L=12 for Auto-DeepLab), validity, and a forward pass."""
from __future__ import annotations

import pytest
import torch
from foundation_helpers import assert_valid_subgraph, one_thread

from routespace.spaces.architecture import Architecture
from routespace.spaces.builder import build
from routespace.spaces.classics import CLASSICS, classic
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import RoutingSpace, edge_kind, preset

TINY = preset("tiny")
PAPER = preset("paper")


def _scales_by_layer(arch: Architecture) -> list[list[int]]:
    return [sorted(s for l, s in arch.nodes if l == layer) for layer in range(1, arch.space.layers + 1)]


def _path(arch: Architecture) -> list[int]:
    per_layer = _scales_by_layer(arch)
    assert all(len(s) == 1 for s in per_layer), "not a single path"
    return [s[0] for s in per_layer]


@pytest.mark.parametrize("layers", [8, 12, 16, 20])
@pytest.mark.parametrize("name", list(CLASSICS))
def test_every_classic_is_a_valid_subgraph(name, layers):
    space = RoutingSpace(layers=layers, base_channels=16, num_classes=5, input_size=(64, 64))
    arch = classic(name, space)
    assert arch.name == name
    assert arch.edges <= set(space.edges())
    assert_valid_subgraph(arch)


@pytest.mark.parametrize("name", list(CLASSICS))
def test_every_classic_builds_and_runs(name):
    arch = CLASSICS[name](TINY)
    torch.manual_seed(0)
    model = build(arch).eval()
    with one_thread(), torch.no_grad():
        for h, w in [(64, 64), (96, 160)]:
            out = model(torch.randn(2, 3, h, w))
            assert out.shape == (2, TINY.num_classes, h, w)
            assert torch.isfinite(out).all()


def test_fcn32s_and_deeplabv3_paths():
    assert _path(classic("fcn32s", PAPER)) == [1, 2] + [3] * 14
    assert _path(classic("deeplabv3", PAPER)) == [1] + [2] * 15
    assert _path(classic("fcn32s", TINY)) == [1, 2, 3, 3, 3, 3, 3, 3]


def test_unet_layout_l16():
    arch = classic("unet", PAPER)
    main = [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 2, 2, 1, 1, 0, 0]
    per_layer = _scales_by_layer(arch)
    skips = {0: range(3, 16), 1: range(5, 14), 2: range(7, 12)}  # layers whose input keep edge is a skip chain
    for layer, scales in enumerate(per_layer, start=1):
        expected = {main[layer - 1]} | {s for s, span in skips.items() if layer in span}
        assert scales == sorted(expected), layer
    path_edges = set(Architecture.from_path(PAPER, main).edges)
    chain_edges = {(l, s, s) for s, span in skips.items() for l in span}
    assert arch.edges == path_edges | chain_edges
    assert arch.output_scales() == [0]


def test_hrnetv2_layout_l16():
    arch = classic("hrnetv2", PAPER)
    counts = [1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4]
    per_layer = _scales_by_layer(arch)
    assert per_layer == [list(range(c)) for c in counts]
    prev = 1
    for layer, count in enumerate(counts, start=1):
        ins = {e for e in arch.edges if e[0] == layer}
        for s in range(min(prev, count)):
            assert (layer, s, s) in ins, "keep edge along every branch"
        for s in range(prev, count):
            assert (layer, s - 1, s) in ins, "a new branch starts with a down edge"
        exchange = {e for e in ins if edge_kind(e[1], e[2]) != "keep" and e[2] < prev}
        if layer % 2 == 0 and min(prev, count) > 1:
            assert {(layer, s, s + 1) for s in range(min(prev, count) - 1)} <= exchange
            assert {(layer, s + 1, s) for s in range(min(prev, count) - 1)} <= exchange
        else:
            assert not exchange
        prev = count
    assert arch.output_scales() == [0, 1, 2, 3]


def test_autodeeplab_paths():
    l12 = RoutingSpace(layers=12, base_channels=16, num_classes=5, input_size=(64, 64))
    assert _path(classic("autodeeplab", l12)) == [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]
    assert _path(classic("autodeeplab", PAPER)) == [0, 0, 0, 0, 1, 1, 2, 1, 2, 2, 2, 3, 3, 3, 2, 1]
    assert _path(classic("autodeeplab", TINY)) == [0, 0, 1, 2, 2, 2, 3, 2]


def test_classic_lookup_and_errors():
    assert classic("FCN-32s", TINY) == classic("fcn32s", TINY)
    assert classic("auto_deeplab", TINY) == classic("autodeeplab", TINY)
    with pytest.raises(RoutespaceError, match="unknown classic 'segformer': choose one of fcn32s"):
        classic("segformer", TINY)
    with pytest.raises(RoutespaceError, match="unet needs a space with at least 8 layers"):
        classic("unet", RoutingSpace(layers=4, base_channels=8, input_size=(32, 32)))


def test_classics_differ():
    archs = [fn(PAPER) for fn in CLASSICS.values()]
    assert len(set(archs)) == len(archs)
