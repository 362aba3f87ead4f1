"""Common extraction: known answers on synthetic routes, a tiny trained net, and the CLI's bad input."""
import json
import random

import pytest
import torch

from routespace.cli.main import main
from routespace.search.dynamic.common import (
    EdgeFrequencies, common_architecture, edge_frequencies, frequencies_from_routes, widest_path,
)
from routespace.spaces.architecture import Architecture
from routespace.spaces.builder import build
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import preset
from routespace.spaces.supernet import DynamicNet

SPACE = preset("tiny")
MAIN = [0, 1, 2, 2, 2, 2, 2, 2]  # open on 90 % of images
RARE = [1, 2, 3, 3, 3, 3, 3, 3]  # open on 10 %


def _route(path):
    arch = Architecture.from_path(SPACE, path)
    return set(arch.edges) | {("out", SPACE.layers, path[-1])}


def test_frequent_route_kept_rare_route_dropped():
    routes = [_route(MAIN)] * 9 + [_route(RARE)]
    freqs = frequencies_from_routes(SPACE, routes)
    assert freqs.freq[(2, 0, 1)] == pytest.approx(0.9)
    assert freqs.freq[(1, 0, 1)] == pytest.approx(0.1)
    common = common_architecture(freqs, tau=0.5)
    assert common == Architecture.from_path(SPACE, MAIN)
    # with tau 0.1 both routes are kept: their union
    both = common_architecture(freqs, tau=0.1)
    assert both.edges == Architecture.from_path(SPACE, MAIN).edges | Architecture.from_path(SPACE, RARE).edges


def test_dangling_node_is_repaired_away():
    routes = [_route(MAIN)] * 10
    freqs = frequencies_from_routes(SPACE, routes)
    freq = dict(freqs.freq)
    freq[(4, 2, 3)] = 1.0  # a branch to (4, 3) that goes nowhere
    freq[(6, 3, 3)] = 1.0  # and an edge whose source is never reached
    common = common_architecture(EdgeFrequencies(SPACE, freq, 10), tau=0.5)
    assert common == Architecture.from_path(SPACE, MAIN)
    assert (4, 3) not in common.nodes


def test_last_layer_node_with_rare_decoder_edge_is_dropped():
    routes = [_route(MAIN)] * 10
    freq = dict(frequencies_from_routes(SPACE, routes).freq)
    freq[(8, 2, 1)] = 1.0  # reaches (8, 1) ...
    freq[("out", 8, 1)] = 0.2  # ... whose output is rarely used
    common = common_architecture(EdgeFrequencies(SPACE, freq, 10), tau=0.5)
    assert common.output_scales() == [2]


def test_pass_through_counts_as_use_of_the_keep_edge_and_makes_identity_nodes():
    """Known answer: route MAIN where node (4, 2) was closed on 70 % of the images (its keep edge carried
    its input on) and open, with its keep edge, on 30 %. The keep edge is used on 100 %: it stays, and
    (4, 2) becomes an identity node (closed more often than open); the other nodes keep their cell."""
    routes = [_route(MAIN)] * 10
    freq = dict(frequencies_from_routes(SPACE, routes).freq)
    keep = (5, 2, 2)
    freq[keep] = 0.3
    freq[("pass", 4, 2)], freq[("cell", 4, 2)] = 0.7, 0.3
    freqs = EdgeFrequencies(SPACE, freq, 10)
    assert freqs.used(keep) == pytest.approx(1.0) and freqs.used((5, 2, 1)) == freq.get((5, 2, 1), 0.0)
    common = common_architecture(freqs, tau=0.5)
    assert common.edges == Architecture.from_path(SPACE, MAIN).edges
    assert common.cell_of((4, 2)) == "identity" and common.cell_of((3, 2)) == SPACE.cell
    assert Architecture.from_json(common.to_json()) == common
    # without the pass-through record the keep edge counts as used on 30 % only, and the node keeps its cell
    freq.pop(("pass", 4, 2))
    no_pass = EdgeFrequencies(SPACE, freq, 10)
    assert no_pass.used(keep) == pytest.approx(0.3)
    assert common_architecture(no_pass, tau=0.5).cell_of((4, 2)) == SPACE.cell


def test_trained_net_frequencies_record_pass_through_and_cells():
    torch.manual_seed(0)
    net = DynamicNet(SPACE)
    with torch.no_grad():  # close every gate of node (3, 1) for every image: it passes its input on
        net.gates["3_1"].fc.bias.fill_(-50.0)

    class _Images(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i)), torch.zeros(64, 64, dtype=torch.long)

    freqs = edge_frequencies(net, _Images(), batch_size=4)
    assert freqs.freq[("cell", 3, 1)] == 0.0
    alive = freqs.freq[("pass", 3, 1)]  # closed wherever it received input
    assert alive > 0
    assert all(freqs.freq[k] == 0.0 for k in SPACE.out_edges((3, 1)))
    back = EdgeFrequencies.from_dict(json.loads(json.dumps(freqs.to_dict())))
    assert back.freq == pytest.approx(freqs.freq)


def test_nothing_frequent_falls_back_to_widest_path():
    rng = random.Random(0)
    freq = {e: rng.uniform(0.0, 0.3) for e in SPACE.edges()}
    for e in Architecture.from_path(SPACE, RARE).edges:
        freq[e] = 0.4
    freqs = EdgeFrequencies(SPACE, freq, 100)
    common = common_architecture(freqs, tau=0.5)
    assert common == Architecture.from_path(SPACE, RARE)
    assert sorted(common.edges) == widest_path(SPACE, freq)


@pytest.mark.parametrize("tau", [0, -0.1, 1.5, True])
def test_tau_outside_range_is_refused(tau):
    freqs = frequencies_from_routes(SPACE, [_route(MAIN)])
    with pytest.raises(RoutespaceError, match="tau"):
        common_architecture(freqs, tau=tau)


def test_frequencies_round_trip():
    freqs = frequencies_from_routes(SPACE, [_route(MAIN), _route(RARE)])
    back = EdgeFrequencies.from_dict(json.loads(json.dumps(freqs.to_dict())))
    assert back.freq == freqs.freq and back.num_images == 2 and back.space == SPACE


class _Images(torch.utils.data.Dataset):
    def __init__(self, n):
        self.x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], torch.zeros(64, 64, dtype=torch.long)


def test_extraction_from_net_builds_and_runs_and_matches_gates():
    torch.manual_seed(0)
    net = DynamicNet(SPACE)
    with torch.no_grad():  # make routing non-trivial: some gates closed, some open
        for g in net.gates.values():
            g.fc.bias.uniform_(-0.3, 1.0)
    data = _Images(12)
    freqs = edge_frequencies(net, data, batch_size=5)
    assert freqs.num_images == 12
    # independent count from one dense pass over all images
    with torch.no_grad():
        out = net.eval()(data.x)
    for key, g in out.edge_gates.items():
        assert freqs.freq[key] == pytest.approx(float((g > 1e-4).float().mean()))
    arch = common_architecture(freqs, tau=0.5)
    y = build(arch).eval()(torch.randn(2, 3, 64, 96))
    assert y.shape == (2, SPACE.num_classes, 64, 96)


def test_extraction_needs_a_dynamic_net():
    with pytest.raises(RoutespaceError, match="dynamic"):
        edge_frequencies(build(Architecture.from_path(SPACE, MAIN)), _Images(2))


def test_cli_extract_bad_input(tmp_path, capsys):
    assert main(["extract", str(tmp_path), "-o", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a training run folder" in err
    assert main(["extract", str(tmp_path), "-o", str(tmp_path / "c.json"), "--tau", "0"]) == 2
    assert "tau" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
