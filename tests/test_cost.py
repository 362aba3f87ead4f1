"""Analytic cost: a hand-derived known answer, exact agreement with fvcore and with the built modules."""
from __future__ import annotations

import pytest
import torch
from foundation_helpers import fvcore_flops, one_thread, param_count, random_archs
from torch import nn

from routespace.evaluators.cost import (
    architecture_cost, cell_cost, decoder_cost, edge_cost, gate_cost, gflops, out_cost, space_cost, stem_cost,
)
from routespace.spaces.architecture import Architecture
from routespace.spaces.builder import build
from routespace.spaces.classics import CLASSICS
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.celltypes import CELL_TYPES, CELLS
from routespace.spaces.space import RoutingSpace, preset

TINY = preset("tiny")
SIZES = [(64, 64), (96, 160)]
L2 = RoutingSpace(layers=2, base_channels=8, num_classes=3, input_size=(32, 32))


# --- known answer ------------------------------------------------------------------------------------------
def test_known_answer_two_layer_space():
    """Hand count on RoutingSpace(layers=2, base_channels=8, num_classes=3, input_size=(32, 32)), paper
    convention (MAC = 1 FLOP, BN 2/element, ReLU 1/element, upsampling 0), the released operators.

    Channels C0=8, C1=16. Feature maps: stride 2 is 16x16 (256 px), scale 0 8x8 (64 px), scale 1 4x4 (16).
    Conv FLOPs = out_pixels * cout * cin/groups * k*k.

    Stem:  conv3x3/2 3->8 @16x16: 256*8*3*9 = 55296; BN 2*8*256 = 4096; ReLU 8*256 = 2048;
           dw3x3 8 @16x16: 256*8*9 = 18432; pw 8->8: 256*8*8 = 16384; BN 4096; ReLU 2048;
           dw3x3/2 @8x8: 64*8*9 = 4608; pw 8->8 @8x8: 64*8*8 = 4096; BN 2*8*64 = 1024; ReLU 512.
           total 112640.
    SepConv cell at scale 0 (C=8, 64 px): dw 4608, pw 4096, BN 1024, ReLU 512, dw 4608, pw 4096, BN 1024
           = 19968. The initial node (0, 0) has one too.
    SepConv cell at scale 1 (C=16, 16 px): dw 16*16*9 = 2304, pw 16*16*16 = 4096, BN 512, ReLU 256,
           dw 2304, pw 4096, BN 512 = 14080.
    Keep edge = ReLU of the source: 512 at scale 0, 256 at scale 1; the same for a last-layer node's edge
           to the decoder.
    Down edge 0->1: ReLU 8*64 = 512; conv1x1/2 8->16 @4x4: 16*16*8 = 2048; BN 2*16*16 = 512; ReLU 256
           = 3328.
    Up edge 1->0: ReLU 16*16 = 256; conv1x1 16->8 @4x4: 16*8*16 = 2048; BN 2*8*16 = 256; ReLU 128 = 2688.
    Decoder: at scale 1 conv1x1 16->8 @4x4 2048 + BN 256 + ReLU 128 = 2432; at stride 4 conv1x1 8->8
           @8x8 4096 + BN 1024 + ReLU 512 = 5632; head conv3x3 8->3 @8x8: 64*3*8*9 = 13824.
           Top scale 1: 21888; top scale 0: 19456.

    Path [0, 1] (keep, down): 112640 + 19968 + 512 + 19968 + 3328 + 14080 + 256 + 21888 = 192640.
    Path [1, 1] (down, keep): 112640 + 19968 + 3328 + 14080 + 256 + 14080 + 256 + 21888 = 186496.
    Path [1, 0] (down, up):   112640 + 19968 + 3328 + 14080 + 2688 + 19968 + 512 + 19456 = 192640.
    Identity nodes run no cell, and their keep edge and decoder edge carry the input unchanged (0):
    [0, 1] with (1, 0) identity: 192640 - 19968 = 172672 (its down edge still runs);
    [1, 1] with (1, 1) and (2, 1) identity: 186496 - 2 * 14080 - 256 - 256 = 157824.

    Params (BN 2 per channel, head has a bias): stem 3*8*9 + 16 + 8*9 + 8*8 + 16 + 8*9 + 8*8 + 16 = 536;
    cell C=8: 2*(72 + 64 + 16) = 304; cell C=16: 2*(144 + 256 + 32) = 864; down edge 8*16 + 32 = 160;
    up edge 16*8 + 16 = 144; decoder top 1: (16*8 + 16) + (8*8 + 16) + 8*3*9 + 3 = 443, top 0: 299.
    [0, 1]: 536 + 304 + 304 + 160 + 864 + 443 = 2611.  [1, 1]: 536 + 304 + 160 + 864 + 864 + 443 = 3171.
    [1, 0]: 536 + 304 + 160 + 864 + 144 + 304 + 299 = 2611.
    """
    stem = (256 * 8 * 3 * 9 + 2 * 8 * 256 + 8 * 256
            + 256 * 8 * 9 + 256 * 8 * 8 + 2 * 8 * 256 + 8 * 256
            + 64 * 8 * 9 + 64 * 8 * 8 + 2 * 8 * 64 + 8 * 64)
    cell0 = 2 * (64 * 8 * 9 + 64 * 8 * 8 + 2 * 8 * 64) + 8 * 64
    cell1 = 2 * (16 * 16 * 9 + 16 * 16 * 16 + 2 * 16 * 16) + 16 * 16
    keep0, keep1 = 8 * 64, 16 * 16
    down01 = 8 * 64 + 16 * 16 * 8 + 2 * 16 * 16 + 16 * 16
    up10 = 16 * 16 + 16 * 8 * 16 + 2 * 8 * 16 + 8 * 16
    head = 64 * 3 * 8 * 9
    lat0 = 64 * 8 * 8 + 2 * 8 * 64 + 8 * 64
    dec_top1 = 16 * 8 * 16 + 2 * 8 * 16 + 8 * 16 + lat0 + head
    dec_top0 = lat0 + head
    assert (stem, cell0, cell1, down01, up10, dec_top1, dec_top0) == (112640, 19968, 14080, 3328, 2688, 21888, 19456)

    p_stem = 3 * 8 * 9 + 16 + 8 * 9 + 8 * 8 + 16 + 8 * 9 + 8 * 8 + 16
    p_cell0, p_cell1 = 2 * (8 * 9 + 8 * 8 + 16), 2 * (16 * 9 + 16 * 16 + 32)
    p_down, p_up = 8 * 16 + 32, 16 * 8 + 16
    p_dec0 = 8 * 8 + 16 + 8 * 3 * 9 + 3
    p_dec1 = 16 * 8 + 16 + p_dec0

    cases = {
        ((0, 1), ()): (stem + cell0 + keep0 + cell0 + down01 + cell1 + keep1 + dec_top1,
                       p_stem + p_cell0 + p_cell0 + p_down + p_cell1 + p_dec1),
        ((1, 1), ()): (stem + cell0 + down01 + cell1 + keep1 + cell1 + keep1 + dec_top1,
                       p_stem + p_cell0 + p_down + p_cell1 + p_cell1 + p_dec1),
        ((1, 0), ()): (stem + cell0 + down01 + cell1 + up10 + cell0 + keep0 + dec_top0,
                       p_stem + p_cell0 + p_down + p_cell1 + p_up + p_cell0 + p_dec0),
        ((0, 1), ((1, 0),)): (stem + cell0 + keep0 + down01 + cell1 + keep1 + dec_top1,
                              p_stem + p_cell0 + p_down + p_cell1 + p_dec1),
        ((1, 1), ((1, 1), (2, 1))): (stem + cell0 + down01 + dec_top1, p_stem + p_cell0 + p_down + p_dec1),
    }
    assert [v[0] for v in cases.values()] == [192640, 186496, 192640, 172672, 157824]
    assert [v[1] for v in cases.values()] == [2611, 3171, 2611, 2307, 1443]
    for (path, identity), (flops, params) in cases.items():
        arch = Architecture.from_path(L2, list(path))
        arch = Architecture(L2, arch.edges, tuple((n, "identity") for n in identity))
        report = architecture_cost(arch)
        assert report.size == (32, 32)
        assert report.flops == flops, (path, identity)
        assert report.params == params, (path, identity)
        assert report.stem_flops == stem
        # the built module has exactly these parameters
        assert param_count(build(arch)) == params


def test_known_answer_fvcore_convention():
    """fvcore convention on the same [0, 1] path: ReLUs count 0, bilinear upsampling 4 per output
    element: decoder x2 to 8x8 on 8 channels 4*8*64 = 2048, final x4 to 32x32 on 3 classes 4*3*1024 = 12288.
    ReLUs removed: stem 2048+2048+512, two cells at scale 0 2*512, keep 512, down edge 512+256, cell at
    scale 1 256, decoder edge 256, decoder 128+512 = 8064. 192640 - 8064 + 2048 + 12288 = 198912."""
    paper = 192640
    relus = (2048 + 2048 + 512) + 2 * 512 + 512 + (512 + 256) + 256 + 256 + (128 + 512)
    upsample = 4 * 8 * 64 + 4 * 3 * 1024
    arch = Architecture.from_path(L2, [0, 1])
    expected = paper - relus + upsample
    assert architecture_cost(arch, convention="fvcore").flops == expected == 198912
    assert fvcore_flops(build(arch), (32, 32)) == expected


# --- against fvcore and the built modules -----------------------------------------------------------------
def _check_against_fvcore(arch: Architecture, size: tuple[int, int]) -> None:
    model = build(arch)
    report = architecture_cost(arch, size, convention="fvcore")
    assert report.params == param_count(model)
    traced = fvcore_flops(model, size)
    # exact in practice; the tolerance is 1 %
    assert report.flops == traced, (arch, size, report.flops, traced)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(CLASSICS))
def test_classics_match_fvcore(name, size):
    _check_against_fvcore(CLASSICS[name](TINY), size)


RANDOM = random_archs(TINY, 20, seed=2024)


@pytest.mark.parametrize("index", range(20))
def test_random_architectures_match_fvcore(index):
    arch = RANDOM[index]
    for size in SIZES:
        _check_against_fvcore(arch, size)


# every registered cell that computes something, as the cell of a whole space (the presets' own cell,
# sepconv, is checked above; identity runs nothing and is checked as a per-node override below)
OTHER_CELLS = [name for name, c in CELLS.items() if not c.runs_nothing and name != TINY.cell]


@pytest.mark.parametrize("cell", OTHER_CELLS)
def test_other_cell_types_match_fvcore(cell):
    space = RoutingSpace(layers=6, base_channels=16, num_classes=4, cell=cell, input_size=(64, 64), name=cell)
    for arch in [CLASSICS["hrnetv2"](space)] + random_archs(space, 2, seed=9):
        for size in SIZES:
            _check_against_fvcore(arch, size)


def test_per_node_cell_overrides_match_fvcore():
    archs = random_archs(TINY, 3, seed=31, cell_choices=CELL_TYPES)  # every registered cell
    assert all(a.cells for a in archs)
    for arch in archs:
        for size in SIZES:
            _check_against_fvcore(arch, size)


def _hooked_paper_flops(model: nn.Module, size: tuple[int, int]) -> int:
    """Paper-convention count from forward hooks on the built module (independent of the layout records)."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += output.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.BatchNorm2d):
            total[0] += 2 * output.numel()
        elif isinstance(module, nn.ReLU):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with one_thread(), torch.no_grad():
        model.eval()(torch.zeros(1, 3, *size))
    for h in handles:
        h.remove()
    return total[0]


@pytest.mark.parametrize("name", list(CLASSICS))
def test_paper_convention_matches_forward_hooks(name):
    arch = CLASSICS[name](TINY)
    for size in SIZES:
        assert architecture_cost(arch, size).flops == _hooked_paper_flops(build(arch), size)


def test_paper_convention_hooks_on_mixed_cells():
    for arch in random_archs(TINY, 4, seed=77, cell_choices=CELL_TYPES):
        assert architecture_cost(arch, (96, 160)).flops == _hooked_paper_flops(build(arch), (96, 160))


# --- report structure and properties ----------------------------------------------------------------------
def test_report_breakdown_adds_up():
    arch = CLASSICS["hrnetv2"](TINY)
    report = architecture_cost(arch, (64, 64), gates=True)
    assert report.flops == report.stem_flops + report.decoder_flops + report.body_flops + report.gate_flops
    assert report.body_flops == sum(n.cell_flops + sum(n.edge_flops.values()) + n.out_flops for n in report.nodes)
    assert [n.node for n in report.nodes] == list(arch.nodes)
    assert {e for n in report.nodes for e in n.edge_flops} == set(arch.edges)
    d = report.to_dict()
    assert d["gflops"] == pytest.approx(report.flops / 1e9)
    assert d["params_m"] == pytest.approx(report.params / 1e6)
    assert sum(n["gflops"] for n in d["nodes"]) == pytest.approx(
        (report.body_flops + report.gate_flops) / 1e9, rel=1e-12)
    assert len(d["nodes"]) == len(arch.nodes)


def test_gates_add_exactly_the_gate_heads():
    arch = Architecture.all_open(TINY)
    size = (64, 64)
    with_g = space_cost(TINY, size, gates=True)
    without = space_cost(TINY, size, gates=False)
    assert without.flops == architecture_cost(arch, size).flops
    gates = sum(gate_cost(TINY, n, size, "paper")[0] for n in TINY.nodes())
    assert with_g.flops - without.flops == with_g.gate_flops == gates > 0
    assert with_g.body_flops == without.body_flops
    # one gate by hand: node (4, 1), C=32 at 8x8, 3 outgoing edges: conv1x1 32->16 + BN + ReLU at 64 px,
    # pooling not counted, conv1x1 16->3 at 1x1
    assert gate_cost(TINY, (4, 1), size, "paper") == (64 * 16 * 32 + 2 * 16 * 64 + 16 * 64 + 16 * 3,
                                                      32 * 16 + 2 * 16 + 16 * 3 + 3)
    # the small gate reads x bilinearly scaled to 2x2: 4 px instead of 64
    assert gate_cost(TINY, (4, 1), size, "paper", "quarter") == (4 * 16 * 32 + 2 * 16 * 4 + 16 * 4 + 16 * 3,
                                                                 32 * 16 + 2 * 16 + 16 * 3 + 3)
    # on the paper preset at 1024x2048 the small gate is ~1/16 of the full one
    paper = preset("paper")
    full, small = space_cost(paper, gates=True).gate_flops, space_cost(paper, gates=True, gate_resolution="quarter").gate_flops
    assert 15 < full / small < 16.5


@pytest.mark.parametrize("resolution", ["full", "quarter"])
@pytest.mark.parametrize("node", [(0, 0), (3, 2), (8, 3)])
def test_gate_head_cost_matches_fvcore(node, resolution):
    """The gate head's analytic cost (fvcore convention) equals fvcore's count of the SoftGate module."""
    from fvcore.nn import FlopCountAnalysis

    from routespace.spaces.layout import feature_size, gate_outputs
    from routespace.spaces.supernet import SoftGate

    size = (96, 160)
    h, w = feature_size(size, node[1])
    gate = SoftGate(TINY.channels(node[1]), gate_outputs(TINY, node), resolution).eval()
    with one_thread(), torch.no_grad():
        fa = FlopCountAnalysis(gate, torch.zeros(1, TINY.channels(node[1]), h, w))
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        counted = int(fa.total())
    flops, params = gate_cost(TINY, node, size, "fvcore", resolution)
    assert flops == counted
    assert params == param_count(gate)


def test_cost_scales_with_area():
    """Without gates every op is per pixel, so 4x the area is exactly 4x the FLOPs; params do not change."""
    for arch in [CLASSICS["unet"](TINY)] + random_archs(TINY, 3, seed=4):
        small, big = architecture_cost(arch, (64, 96)), architecture_cost(arch, (128, 192))
        assert big.flops == 4 * small.flops and big.params == small.params


def test_part_costs_sum_to_total():
    arch = CLASSICS["unet"](TINY)
    size, conv = (96, 160), "fvcore"
    total = stem_cost(TINY, size, conv)[0] + decoder_cost(TINY, max(arch.output_scales()), size, conv)[0]
    total += sum(cell_cost(TINY, n, arch.cell_of(n), size, conv)[0] for n in arch.nodes)
    total += sum(edge_cost(TINY, e, size, conv)[0] for e in arch.edges)
    total += sum(out_cost(TINY, s, size, conv)[0] for s in arch.output_scales())
    assert architecture_cost(arch, size, conv).flops == total


def test_paper_preset_defaults_and_ordering():
    paper = preset("paper")
    fcn = architecture_cost(CLASSICS["fcn32s"](paper))
    assert fcn.size == (1024, 2048) and fcn.convention == "paper"
    assert gflops(CLASSICS["fcn32s"](paper)) == fcn.gflops
    all_open = space_cost(paper, gates=False).gflops
    for fn in CLASSICS.values():
        assert 0 < architecture_cost(fn(paper)).gflops < all_open
    # a stride-4 chain of sepconv cells costs more than a stride-32 one
    assert architecture_cost(CLASSICS["autodeeplab"](paper)).gflops > fcn.gflops


def test_paper_preset_all_open_matches_the_papers_dynamic_raw():
    """Dynamic-Raw (L=16, all gates open, full gate) is 119.5 GFLOPs at 1024x2048 in the paper and the released
    README. Counted as the released code counts (no initial cell or gate, no decoder-edge ReLUs) routespace
    is within 1 % of it; its own count, which includes what the released code runs but does not count, is 1.2 %
    above."""
    from routespace.evaluators.cost import released_code_flops

    report = space_cost(preset("paper"), (1024, 2048), gates=True)
    assert abs(released_code_flops(report) / 1e9 / 119.5 - 1) < 0.01
    assert 1.01 < report.gflops / 119.5 < 1.015
    first = next(n for n in report.nodes if n.node == (0, 0))
    assert released_code_flops(report) == report.flops - first.cell_flops - first.gate_flops - sum(n.out_flops for n in report.nodes)


def test_cost_errors():
    arch = CLASSICS["fcn32s"](TINY)
    with pytest.raises(RoutespaceError, match="unknown FLOPs convention"):
        architecture_cost(arch, convention="torch")
    with pytest.raises(RoutespaceError, match="divisible by 32"):
        architecture_cost(arch, (100, 64))
