"""Property-based tests: random and mutated spec files never crash the loader or the CLI.

Every outcome is either a valid Architecture (CLI exit 0) or a RoutespaceError whose message is one
line (CLI: exactly one stderr line ``routespace: error: ...`` and exit 2). Inputs: valid specs of random
spaces and architectures, then mutated: a field removed, a value replaced by a wrong type, a huge
number, NaN/inf, unicode, deep nesting or a very long list, unknown fields, and the serialised bytes
truncated, re-encoded or spliced with bytes that are not UTF-8.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from routespace.cli.main import main
from routespace.spaces.architecture import Architecture, load_architecture
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.random_arch import random_architecture
from routespace.spaces.space import CELL_TYPES, RoutingSpace

# ROUTESPACE_FUZZ_SCALE=20 runs 20x the examples (for a long hunt; CI keeps the default, ~20 s).
_SCALE = max(1, int(os.environ.get("ROUTESPACE_FUZZ_SCALE", "1")))
# derandomize=False: Hypothesis' CI profile (chosen when CI is set) derandomizes, and its derandomized stream of
# these strategies is ~40x slower to draw (test_loader_on_arbitrary_bytes: 167 s against 3.9 s, measured); one fixed
# seed per test (_SEED) keeps CI reproducible instead; ROUTESPACE_FUZZ_SEED picks another stream for a hunt.
_SEED = int(os.environ.get("ROUTESPACE_FUZZ_SEED", "20261201"))
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
FUZZ = settings(max_examples=250 * _SCALE, deadline=None, derandomize=False, suppress_health_check=_HEALTH)
FUZZ_CLI = settings(max_examples=120 * _SCALE, deadline=None, derandomize=False, suppress_health_check=_HEALTH)
_counter = itertools.count()


# --- strategies --------------------------------------------------------------------------------------
@st.composite
def spaces(draw) -> RoutingSpace:
    return RoutingSpace(
        layers=draw(st.integers(1, 7)),
        base_channels=draw(st.sampled_from([2, 4, 8, 16, 24])),
        num_classes=draw(st.integers(1, 30)),
        cell=draw(st.sampled_from(CELL_TYPES)),
        input_size=(32 * draw(st.integers(1, 8)), 32 * draw(st.integers(1, 8))),
        name=draw(st.text(max_size=12)),
    )


@st.composite
def valid_specs(draw) -> dict:
    space = draw(spaces())
    cells = draw(st.one_of(st.none(), st.lists(st.sampled_from(CELL_TYPES), min_size=1, max_size=3)))
    arch = random_architecture(space, draw(st.integers(0, 2**32)), kind=draw(st.sampled_from(["path", "subgraph"])),
                               p=draw(st.floats(0, 1)), cell_choices=cells, name=draw(st.text(max_size=20)))
    return arch.to_dict()


def _nested(depth: int, leaf: object, kind: str) -> object:
    out = leaf
    for _ in range(depth):
        out = [out] if kind == "list" else {"a": out}
    return out


HUGE_INTS = st.sampled_from([2**63, -(2**63) - 1, 10**300, 10**4000, 2**31, -1, 0, 10**18])
ODD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 1.5, 16.0, 1e-320])
ODD_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "١,١", "1,\n2", "²", "-0", "1,1,1", "\u2028", "\x00", "🙂" * 50, "sepconv", "basic", "res2net",
                     "routespace.architecture", "3,1", " 1 , 0 "]),
)


@st.composite
def junk_values(draw) -> object:
    """A JSON-ish value of a wrong or extreme kind."""
    kind = draw(st.sampled_from(["int", "float", "text", "bool", "null", "list", "dict", "deep", "long"]))
    if kind == "int":
        return draw(st.one_of(HUGE_INTS, st.integers(-5, 70)))
    if kind == "float":
        return draw(ODD_FLOATS)
    if kind == "text":
        return draw(ODD_TEXT)
    if kind == "bool":
        return draw(st.booleans())
    if kind == "null":
        return None
    if kind == "list":
        return draw(st.lists(st.one_of(st.integers(-3, 20), st.lists(st.integers(-3, 20), max_size=3), ODD_TEXT), max_size=6))
    if kind == "dict":
        return draw(st.dictionaries(ODD_TEXT, st.one_of(st.integers(-3, 20), ODD_TEXT, st.none()), max_size=5))
    if kind == "deep":  # around the interpreter's recursion limit, where json and repr give up
        depth = draw(st.sampled_from([50, 500, 900, 990, 1200, 5000]))
        return _nested(depth, draw(st.sampled_from([0, "x", [], {}])), draw(st.sampled_from(["list", "dict"])))
    return [draw(st.sampled_from([[[0, 0], [1, 0]], 0, "x"]))] * draw(st.sampled_from([100, 5000, 30000]))


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    """The locations (tuples of keys/indices) inside a JSON value down to depth 8, the root included."""
    out = [prefix]
    if len(prefix) >= 8:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:20]):
            out += _paths(v, prefix + (i,))
    return out


def _parent(obj: object, path: tuple):
    for key in path[:-1]:
        obj = obj[key]
    return obj


MAX_WEIGHT = 200_000  # JSON values per generated spec: copies of long lists must not multiply into gigabytes


def _weight(obj: object, cap: int = MAX_WEIGHT) -> int:
    """Number of JSON values in ``obj`` (shared references counted each time), stopping past ``cap``."""
    count, stack = 0, [obj]
    while stack and count <= cap:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


@st.composite
def mutated_specs(draw) -> object:
    spec = draw(valid_specs())
    for _ in range(draw(st.integers(1, 3))):
        if _weight(spec) > MAX_WEIGHT:
            break
        paths = _paths(spec)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["remove", "replace", "replace", "add", "duplicate"]))
        if not path:
            if op == "replace":
                spec = draw(junk_values())
            continue
        parent = _parent(spec, path)
        key = path[-1]
        if op == "remove":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(junk_values())
        elif op == "add" and isinstance(parent, dict):
            parent[draw(ODD_TEXT)] = draw(junk_values())
        elif op == "add" and isinstance(parent, list):
            parent.append(draw(junk_values()))
        elif op == "duplicate" and isinstance(parent, list):
            room = (MAX_WEIGHT - _weight(spec)) // _weight(parent[key])
            parent.extend([parent[key]] * min(room, draw(st.integers(1, 50))))
    return spec


def _dumps(obj: object) -> str | None:
    try:
        return json.dumps(obj, allow_nan=True)
    except (RecursionError, ValueError):  # too deep for the encoder, or an int over 4300 digits
        return None


@st.composite
def spec_bytes(draw) -> bytes:
    """What a user might hand routespace as a spec file."""
    obj = draw(st.one_of(valid_specs(), mutated_specs(), mutated_specs()))
    text = _dumps(obj)
    if text is None:  # hand-written nesting deeper than any encoder goes
        text = "[" * 100_000 + "]" * 100_000
    data = text.encode("utf-8")
    how = draw(st.sampled_from(["as-is", "as-is", "as-is", "truncate", "splice", "utf16", "latin1", "bom", "raw"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xfe\xff", b"\x80abc"])) + data[at:]
    elif how == "utf16":
        data = text.encode("utf-16")
    elif how == "latin1":
        data = text.encode("utf-8").replace(b'"', b'"\xe9', 1)
    elif how == "bom":
        data = b"\xef\xbb\xbf" + data
    elif how == "raw":
        data = draw(st.binary(max_size=200))
    return data


# --- checks --------------------------------------------------------------------------------------------
def _load(data: bytes | str) -> Architecture | RoutespaceError:
    """The loader's outcome; any exception other than RoutespaceError propagates and fails the test."""
    try:
        arch = Architecture.from_json(data)
    except RoutespaceError as exc:
        return exc
    assert isinstance(arch, Architecture)
    return arch


def _assert_one_line(exc: RoutespaceError) -> None:
    """``exc`` is a refusal (a RoutespaceError, not an Architecture that was accepted) with a one-line message."""
    assert isinstance(exc, RoutespaceError), f"accepted, not refused: {exc!r:.300}"
    msg = str(exc)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg[:300])
    assert len(msg.splitlines()) == 1, repr(msg[:300])


def _assert_valid(arch: Architecture) -> None:
    """Independent checks that ``arch`` is what the schema promises, and round-trips."""
    space = arch.space
    assert arch.edges and all(space.has_edge(e) for e in arch.edges)
    targets = {(l, d) for (l, _, d) in arch.edges}
    sources = {(l - 1, s) for (l, s, _) in arch.edges}
    for node in arch.nodes:
        assert node[0] == 0 or node in targets
        assert node[0] == space.layers or node in sources
    again = Architecture.from_json(arch.to_json())
    assert again == arch and again.to_json() == arch.to_json()


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    # outside pytest each warning is one more stderr line
    extra = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return rc, out.getvalue(), err.getvalue() + extra


def _assert_cli_outcome(rc: int, stderr: str) -> None:
    if rc == 0:
        assert stderr == "", stderr[:500]
        return
    assert rc == 2, (rc, stderr[:500])
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), repr(stderr[:500])
    assert lines[0].startswith("routespace: error: ") and len(lines[0]) > len("routespace: error: ")


# --- properties ----------------------------------------------------------------------------------------
@FUZZ
@seed(_SEED)
@given(spec=st.one_of(valid_specs(), mutated_specs()))
def test_loader_gives_a_valid_architecture_or_one_line_error(spec):
    text = _dumps(spec)
    if text is None:
        return
    outcome = _load(text)
    if isinstance(outcome, RoutespaceError):
        _assert_one_line(outcome)
    else:
        _assert_valid(outcome)


@FUZZ
@seed(_SEED)
@given(spec=valid_specs())
def test_valid_specs_load_to_the_same_architecture(spec):
    arch = Architecture.from_dict(spec)
    _assert_valid(arch)
    assert arch.to_dict() == spec
    assert Architecture.from_json(json.dumps(spec).encode("utf-8")) == arch


@FUZZ
@seed(_SEED)
@given(data=spec_bytes())
def test_loader_on_arbitrary_bytes(data):
    outcome = _load(data)
    if isinstance(outcome, RoutespaceError):
        _assert_one_line(outcome)
    else:
        _assert_valid(outcome)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ_CLI
@seed(_SEED)
@given(data=spec_bytes())
def test_cli_flops_and_export_exit_0_or_one_line_exit_2(fuzz_dir, data):
    n = next(_counter)
    path = fuzz_dir / f"spec-{n}.json"
    path.write_bytes(data)
    try:
        loaded: Architecture | None = load_architecture(str(path))
    except RoutespaceError as exc:
        _assert_one_line(exc)
        loaded = None

    rc, out, err = _run_cli(["flops", str(path)])
    _assert_cli_outcome(rc, err)
    if loaded is None:
        assert rc == 2
    elif rc == 0:
        assert "GFLOPs" in out

    target = fuzz_dir / f"export-{n}.json"
    rc, out, err = _run_cli(["export", str(path), "--format", "json", "-o", str(target)])
    _assert_cli_outcome(rc, err)
    if loaded is None:
        # the exporter also reads node-link files and state dicts; a spec the loader refuses is only
        # exported when it is one of those
        assert rc == 2 or b"routespace.architecture.graph" in data or data[:4] == b"PK\x03\x04"
    else:
        assert rc == 0, err
    assert target.exists() == (rc == 0)
    if rc == 0 and loaded is not None:
        assert target.read_text() == loaded.to_json()
    leftovers = [p.name for p in fuzz_dir.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_cli_refuses_an_endless_or_huge_spec_in_one_line(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"[" * 2_000_000)
    rc, _, err = _run_cli(["flops", str(big)])
    _assert_cli_outcome(rc, err)
    assert rc == 2 and "too large" in err
    rc, _, err = _run_cli(["flops", "/dev/zero"])
    _assert_cli_outcome(rc, err)
    assert rc == 2


def _fcn() -> dict:
    from routespace.spaces.classics import classic
    from routespace.spaces.space import preset

    return classic("fcn32s", preset("tiny")).to_dict()


def test_bugs_the_fuzzer_found_stay_fixed():
    # 1. a cells key with a line break and a non-string cell type gave a two-line message
    spec = _fcn()
    spec["cells"] = {"1,\n1": 5}
    _assert_one_line(_load(json.dumps(spec)))  # refused (an accepted spec fails _assert_one_line), in one line
    # 2. true and 1.0 were accepted as format version 1
    for version in (True, 1.0):
        spec = dict(_fcn(), version=version)
        err = _load(json.dumps(spec))
        assert isinstance(err, RoutespaceError) and "version" in str(err)
    # 3. thousands of unknown fields made a message of megabytes (still one line, but unreadable)
    for where in ("top", "space"):
        spec = _fcn()
        target = spec if where == "top" else spec["space"]
        target.update({f"junk{i}": i for i in range(20000)})
        err = _load(json.dumps(spec))
        assert isinstance(err, RoutespaceError) and len(str(err)) < 400 and "more" in str(err)
    # 4. the fix suggested for a size both too large and not divisible by 32 was itself too large
    from routespace.spaces.space import parse_size

    with pytest.raises(RoutespaceError) as info:
        parse_size("99999x33")
    suggestion = str(info.value).rsplit("use e.g. ", 1)[1]
    assert parse_size(suggestion) == (8192, 32)
