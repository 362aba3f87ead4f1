"""The layer contract (DESIGN §1, README "Architecture"): routespace's modules form layers that import
downward only, and the core is torch-free.

Every import statement of every module is checked, including the lazy ones inside functions (a lazy
import is still a dependency; it only hides it from import time). A new module must be given a layer here.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"spaces": "spaces", "evaluators": "evaluators", "search": "search", "cli": "cli"}

# Lowest first. A module may import modules of its own layer and of the layers before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", (  # torch-free: errors, files, the space, Architecture, paths, classics, op records, cost rules
        "spaces", "spaces.errors", "spaces.fileio", "spaces.procs", "spaces.ops", "spaces.celltypes", "spaces.space",
        "spaces.architecture", "spaces.paths", "spaces.classics", "spaces.random_arch", "spaces.layout", "spaces.keys",
        "spaces.exports.graph", "evaluators", "evaluators.cost", "evaluators.schedule", "evaluators.pareto",
        "evaluators.routes", "search.dynamic.settings",
    )),
    ("networks", ("spaces.cells", "spaces.builder", "spaces.supernet", "spaces.darts_supernet")),  # one cell registry, builder, supernet
    # data, metrics, training, evaluation, plots; exports (they read trained runs and state dicts)
    ("evaluation", ("evaluators.*", "spaces.exports", "spaces.exports.*")),
    ("dynamic routing", ("search.dynamic", "search.dynamic.*")),  # settings, budget modes, frequencies, Common
    ("searches and pipelines", ("search", "search.*")),  # strategies, engine, storage, comparison
    ("cli", ("cli", "cli.*")),
]
TORCH_FREE = LAYERS[0][1]


def _modules() -> dict[str, Path]:
    found = {}
    for top, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [top, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int:
    """Index of the layer of ``module`` (exact names win over patterns)."""
    for i, (_, names) in enumerate(LAYERS):
        if module in names:
            return i
    for i, (_, names) in enumerate(LAYERS):
        if any(n.endswith(".*") and module.startswith(n[:-1]) for n in names):
            return i
    raise KeyError(module)


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, routespace module) of every import in ``path`` (relative and absolute, at any depth)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("routespace."):
                mod = node.module[len("routespace."):]
            else:
                continue
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name[len("routespace."):] for a in node.names if a.name.startswith("routespace.")]
        out += [(node.lineno, t) for t in targets if t in known]
    return out


MODULES = _modules()


def test_every_module_has_a_layer():
    missing = []
    for m in MODULES:
        try:
            layer_of(m)
        except KeyError:
            missing.append(m)
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downward_only(module):
    known = set(MODULES)
    mine = layer_of(module)
    upward = [(line, t, LAYERS[layer_of(t)][0]) for line, t in _imports(module, MODULES[module], known)
              if layer_of(t) > mine]
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports upward: {upward}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The contract would pass vacuously if the import scan missed imports: check it on a known file."""
    sample = tmp_path / "sample.py"
    sample.write_text("from ..spaces.space import RoutingSpace\n"
                      "def f():\n    from ..search.dynamic import budget\n    import routespace.cli.main\n")
    found = {t for _, t in _imports("evaluators.sample", sample, set(MODULES))}
    assert found == {"spaces.space", "search.dynamic.budget", "cli.main"}


def test_core_and_the_flops_command_do_not_import_torch():
    """Importing every core module, and building the CLI parser and running `routespace flops`, loads
    neither torch nor optuna nor nni (a fresh interpreter each)."""
    core = [f"routespace.{m}" for m in TORCH_FREE if m in MODULES]
    code = ("import sys, importlib\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            "from routespace.cli.main import main\n"
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    rc = main(['flops', '--preset', 'paper', '--all-open', '--size', '1024x2048'])\n"
            "heavy = sorted(m for m in ('torch', 'optuna', 'nni', 'matplotlib') if m in sys.modules)\n"
            "print(rc, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0 []", out.stdout
