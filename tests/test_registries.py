"""Contract tests of the registries: the CLI reads its choices from each table, and every entry passes the
same checks, so a new entry (a strategy, an export format, a cell type) is tested without a new test.

The data-set registry's loop is in tests/test_data.py (beside its fixture folders); the strategies' search
contract in tests/test_search_engine.py (test_contract_every_strategy_gives_valid_architectures_within_budget);
the cells' fvcore cross-check in tests/test_cost.py.
"""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

from routespace.cli.main import main, make_parser
from routespace.evaluators.plots.data import CELL_MARKERS, grid_data
from routespace.search.encoding import Encoding
from routespace.search.strategy import STRATEGIES, Strategy, strategy_class
from routespace.spaces.architecture import Architecture
from routespace.spaces.builder import build
from routespace.spaces.celltypes import CELL_TYPES, CELLS
from routespace.spaces.classics import classic
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.exports.formats import FORMATS, import_architecture
from routespace.spaces.space import RoutingSpace, preset

TINY = preset("tiny")
MICRO = RoutingSpace(layers=2, base_channels=4, num_classes=3, input_size=(64, 64), name="micro")


def _subparser(command: str):
    return make_parser()._subparsers._group_actions[0].choices[command]


def _action(command: str, dest: str):
    (action,) = [a for a in _subparser(command)._actions if a.dest == dest]
    return action


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


# --- strategies -----------------------------------------------------------------------------------------
def test_search_cli_strategies_are_the_registry(tmp_path):
    help_text = _action("search", "strategy").help
    assert all(name in help_text for name in STRATEGIES)
    rc, _, err = _cli(["search", "--out", str(tmp_path / "s"), "--strategy", "no-such-strategy"])
    assert rc == 2 and f"choose one of {', '.join(STRATEGIES)}" in err


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_entry_names_its_class(name):
    cls = strategy_class(name)
    assert issubclass(cls, Strategy) and cls.name == name
    assert set(cls.objectives) <= {"miou", "gflops"} and cls.objectives[0] == "miou"


# --- export formats -------------------------------------------------------------------------------------
def test_export_cli_formats_are_the_registry():
    action = _action("export", "format")
    assert tuple(action.choices) == tuple(FORMATS)
    assert all(f"{name}: " in action.help for name in FORMATS)


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_export_format_writes_through_the_cli(tmp_path, name):
    fmt = FORMATS[name]
    arch = Architecture.from_path(MICRO, [0, 1], name="micro")  # a small net: model formats trace quickly
    spec = tmp_path / "spec.json"
    spec.write_text(arch.to_json())
    path = tmp_path / f"micro{fmt.suffix}"
    rc, out, err = _cli(["export", str(spec), "--format", name, "-o", str(path), "--size", "64x64"])
    assert rc == 0, err
    assert out.startswith(f"wrote {path} ({name}: ") and path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([spec.name, path.name])  # no temp file left
    assert fmt.kind in ("graph", "model") and fmt.help and fmt.suffix.startswith(".")
    try:
        back = import_architecture(path, name)
    except RoutespaceError as exc:  # a model-only format (TorchScript, torch.export, ONNX): read by its runtime
        assert fmt.kind == "model" and "cannot import format" in str(exc)
    else:
        assert back == arch


# --- cells ----------------------------------------------------------------------------------------------
def test_search_cli_cell_choices_are_the_registry():
    help_text = _action("search", "cells").help
    assert all(name in help_text for name in CELL_TYPES)


@pytest.mark.parametrize("name", list(CELLS))
def test_every_cell_type_is_searchable_buildable_and_drawn(name):
    cell = CELLS[name]
    assert cell.description and name in CELL_MARKERS and CELL_MARKERS[name] == (cell.marker, cell.color)
    for kind in ("path", "subgraph"):
        encoding = Encoding(TINY, kind, cells=CELL_TYPES)
        assert all(name in choices for p, choices in encoding.choices().items() if p.startswith("cell_"))
        params = encoding.encode(classic("fcn32s", TINY))
        params = {p: (name if p.startswith("cell_") else v) for p, v in params.items()}
        arch = encoding.decode(params)
        assert {arch.cell_of(n) for n in arch.nodes if n[0] > 0} == {name}
        assert encoding.decode(encoding.encode(arch)) == arch
    assert name in grid_data(arch).cells_used
    net = build(arch).eval()
    # a module per node that runs a cell: every node, or only the stem's node (0, 0) for a cell running nothing
    assert len(net.cells) == (1 if cell.runs_nothing else len(arch.nodes))
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, TINY.num_classes, 64, 64)
