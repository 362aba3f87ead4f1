"""`routespace config dump RUN`: every setting of a training run as one YAML file, which
`routespace train --config FILE` reads back (explicit flags override it); `config show NAME|FILE` and
`config list` for the bundled configs (``routespace.configs``: the paper's Dynamic-A/B/C and Raw).

The file, every key optional (a missing key takes the default `routespace train` would)::

    preset: tiny                 # tiny | paper
    data: synthetic              # synthetic[:small|:large], cityscapes:PATH, voc:PATH
    size: 64x64                  # training crop HxW
    val_size: 64x64              # validation size of `routespace evaluate`
    arch: null                   # a static net: classic name, spec file (relative to this file) or spec mapping
    setting: A                   # A | B | C | raw (dynamic net)
    gate_resolution: quarter     # full | quarter
    sampling: gates              # gates | uniform (one-shot supernet; no budget)
    budget:                      # null: the setting's (none for raw)
      mode: realised             # realised | paper
      mu: 0.1                    # body target, fraction of the all-open body; or
      gflops: null               # a total GFLOPs target at val_size (give mu or gflops)
      lambda: 0.8
      warmup: 0.4
      ramp: 0.02
      adaptive: true             # realised mode only
    train: {steps: 1500, batch_size: 8, ...}   # the TrainConfig fields (evaluators/train.py)

Which value wins: an explicit command-line flag, then the file, then the defaults. A flag replaces the
one value it names, except that ``--setting`` or ``--no-budget`` replaces the file's setting, gate
resolution, sampling and budget together, ``--arch`` its dynamic settings, a dynamic flag its ``arch``, and
``--budget-mu``/``--budget-gflops`` either target. Only ``yaml.safe_load`` reads the file.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from ..spaces.errors import RoutespaceError

BUNDLED_PACKAGE = "routespace.configs"
MAX_BYTES = 1_000_000
TOP_KEYS = ("preset", "data", "size", "val_size", "arch", "setting", "gate_resolution", "sampling", "skip_closed", "budget",
            "train")
SAMPLINGS = ("gates", "uniform")  # `routespace train --sampling`
BUDGET_KEYS = ("mode", "mu", "gflops", "lambda", "warmup", "ramp", "anneal", "adaptive")
# budget key -> the `routespace train` flag (attribute) it stands for
BUDGET_FLAG = {"mode": "budget_mode", "mu": "budget_mu", "gflops": "budget_gflops", "lambda": "budget_lambda",
               "warmup": "budget_warmup", "ramp": "budget_ramp", "anneal": "budget_anneal"}
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")  # YAML 1.1 reads 5e-2 as a string


def register(sub) -> None:
    p = sub.add_parser("config", help="a training run's settings as YAML (dump), and the bundled configs (show, list)",
                       description="Every setting of a training run as one YAML file, for `routespace train --config "
                       "FILE --out NEWRUN` (explicit flags override the file). Bundled: " + ", ".join(bundled_names()))
    actions = p.add_subparsers(dest="config_action", metavar="ACTION")  # parser class: the CLI's one-line errors
    actions.required = True
    dump = actions.add_parser("dump", help="print a run's settings as YAML (routespace config dump RUN > run.yaml)")
    dump.add_argument("run", metavar="RUN", help="the --out folder of `routespace train`")
    dump.set_defaults(func=run_dump)
    show = actions.add_parser("show", help="print a bundled config (or check and print a config file)")
    show.add_argument("config", metavar="NAME|FILE", help="a bundled config name (see `routespace config list`) or a file")
    show.set_defaults(func=run_show)
    lst = actions.add_parser("list", help="the bundled configs")
    lst.set_defaults(func=run_list)


# --- reading and checking ------------------------------------------------------------------------------
def bundled_names() -> list[str]:
    """Names of the bundled configs (``routespace train --config NAME``)."""
    root = _bundled_root()
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml")) if root is not None else []


def _bundled_root():
    from importlib import resources

    try:
        return resources.files(BUNDLED_PACKAGE)
    except (ModuleNotFoundError, TypeError):  # not installed with its package data
        return None


def locate(text: str) -> tuple[str, str]:
    """(YAML text, a name for messages) of a config file path or a bundled config name."""
    path = Path(text)
    if path.is_dir():
        raise RoutespaceError(f"config {text} is a folder: give a YAML file or a bundled config name")
    if path.is_file():
        if path.stat().st_size > MAX_BYTES:
            raise RoutespaceError(f"config {text} is larger than {MAX_BYTES // 1_000_000} MB: not a routespace config")
        try:
            return path.read_bytes().decode("utf-8"), str(path)
        except UnicodeDecodeError:
            raise RoutespaceError(f"config {text} is not UTF-8 text") from None
        except OSError as exc:
            raise RoutespaceError(f"cannot read config {text}: {exc.strerror or exc}") from None
    name = text[:-5] if text.endswith(".yaml") else text
    root = _bundled_root()
    if "/" not in name and root is not None and (root / f"{name}.yaml").is_file():
        return (root / f"{name}.yaml").read_text(encoding="utf-8"), f"{name} (bundled)"
    raise RoutespaceError(f"config file {text} does not exist, and no bundled config is called so "
                          f"(bundled: {', '.join(bundled_names()) or 'none installed'})")


def _loader():
    import yaml

    class _UniqueKeys(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last silently)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str) and key in seen:
                    raise RoutespaceError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return _UniqueKeys


def parse_yaml(text: str, source: str) -> dict:
    """The YAML mapping in ``text``; anything else (bad YAML, a list, a scalar, nothing) is a RoutespaceError."""
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())  # a SafeLoader subclass: safe_load plus unique keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1}: {getattr(exc, 'problem', '')})" if mark else ""
        raise RoutespaceError(f"config {source} is not valid YAML{where}") from None
    except RoutespaceError as exc:
        raise RoutespaceError(f"config {source}: {exc}") from None
    if data is None:
        raise RoutespaceError(f"config {source} is empty: expected a mapping of settings (see `routespace config dump`)")
    if not isinstance(data, dict):
        raise RoutespaceError(f"config {source} is not a mapping of settings but a {type(data).__name__} "
                              "(see `routespace config dump`)")
    return data


def _unknown(data: dict, allowed: tuple[str, ...], where: str) -> None:
    extra = [str(k) for k in data if k not in allowed]
    if extra:
        raise RoutespaceError(f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(repr(k) for k in extra)}{where}: "
                              f"allowed are {', '.join(allowed)}")


def _typed(value: Any, kind: type, key: str) -> Any:
    """``value`` checked to be of ``kind`` (int, float, str, bool); a float may be written as an integer or,
    as YAML 1.1 reads 5e-2, a string of a number."""
    if kind is float:
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise RoutespaceError(f"{key} must be a number, got {value!r}")
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    names = {int: "an integer", bool: "true or false", str: "a string"}
    raise RoutespaceError(f"{key} must be {names[kind]}, got {value!r}")


def _train_fields() -> dict[str, type]:
    from dataclasses import fields

    from ..evaluators.train import TrainConfig

    types = {"int": int, "float": float, "str": str, int: int, float: float, str: str}
    return {f.name: types[f.type] for f in fields(TrainConfig)}


def check_config(data: dict, source: str, base: Path | None = None) -> dict:
    """The settings of a config mapping, checked (names, types, ranges, combinations) without reading any
    data or building a net; returns them with floats as floats and a relative ``arch`` path resolved
    against ``base`` (the config file's folder). Errors are one line naming the config and the key."""
    try:
        return _check(data, base)
    except RoutespaceError as exc:
        raise RoutespaceError(f"config {source}: {exc}") from None


def _check(data: dict, base: Path | None) -> dict:
    from ..evaluators.data_registry import data_set_kind
    from ..evaluators.train import preset_config
    from ..search.dynamic.budget import check_mu
    from ..search.dynamic.settings import check_budget_mode, setting
    from ..spaces.layout import GATE_RESOLUTIONS
    from ..spaces.space import PRESETS, parse_size

    _unknown(data, TOP_KEYS, "")
    out: dict[str, Any] = {k: data[k] for k in TOP_KEYS if data.get(k) is not None}
    if "preset" in out:
        out["preset"] = _typed(out["preset"], str, "preset")
        if out["preset"] not in PRESETS:
            raise RoutespaceError(f"preset: unknown preset {out['preset']!r}: choose one of {', '.join(PRESETS)}")
    if "data" in out:  # its kind here; its folder when the training starts, before anything is written
        data_set_kind(_typed(out["data"], str, "data"))
    for key in ("size", "val_size"):
        if key in out:
            if not isinstance(out[key], str):
                raise RoutespaceError(f"{key} must be HxW, e.g. 768x768, got {out[key]!r}")
            h, w = parse_size(out[key])
            out[key] = f"{h}x{w}"
    if "setting" in out:
        setting(_typed(out["setting"], str, "setting"))
    if "gate_resolution" in out and _typed(out["gate_resolution"], str, "gate_resolution") not in GATE_RESOLUTIONS:
        raise RoutespaceError(f"gate_resolution: unknown gate resolution {out['gate_resolution']!r}: choose one of "
                              f"{', '.join(GATE_RESOLUTIONS)}")
    if "skip_closed" in out:
        _typed(out["skip_closed"], bool, "skip_closed")
    if "sampling" in out and _typed(out["sampling"], str, "sampling") not in SAMPLINGS:
        raise RoutespaceError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {out['sampling']!r}")
    if "arch" in out:
        out["arch"] = _check_arch(out["arch"], base)
        dynamic = [k for k in ("setting", "gate_resolution", "sampling", "skip_closed", "budget") if k in out]
        if dynamic:
            raise RoutespaceError(f"arch (a static net) and {dynamic[0]} (the dynamic net's) exclude each other: "
                                  "set one of them to null")
    if "budget" in out:
        out["budget"] = _check_budget(out["budget"], check_mu, check_budget_mode)
        if out.get("setting") == "raw":
            raise RoutespaceError("setting raw has no budget: set budget to null, or choose setting A, B or C")
    if "train" in out:
        train = out["train"]
        if not isinstance(train, dict):
            raise RoutespaceError(f"train must be a mapping of training settings, got {train!r}")
        fields = _train_fields()
        _unknown(train, tuple(fields), " in train")
        out["train"] = {k: _typed(v, fields[k], f"train.{k}") for k, v in train.items() if v is not None}
        try:
            preset_config(out.get("preset", "tiny"), **out["train"])  # the ranges TrainConfig checks
        except RoutespaceError as exc:
            raise RoutespaceError(f"train: {exc}") from None
    return out


def _check_arch(value: Any, base: Path | None) -> str | dict:
    from ..spaces.architecture import Architecture
    from ..spaces.classics import CLASSICS

    if isinstance(value, dict):
        Architecture.from_dict(value)  # validates the spec
        return value
    text = _typed(value, str, "arch")
    if text in CLASSICS:
        return text
    path = Path(text) if base is None or Path(text).is_absolute() else base / text
    if not path.is_file():
        raise RoutespaceError(f"arch {text!r} is neither a spec file nor a classic ({', '.join(CLASSICS)})")
    return str(path)


def _check_budget(value: Any, check_mu, check_budget_mode) -> dict:
    if not isinstance(value, dict):
        raise RoutespaceError(f"budget must be a mapping ({', '.join(BUDGET_KEYS)}) or null, got {value!r}")
    _unknown(value, BUDGET_KEYS, " in budget")
    b = {k: v for k, v in value.items() if v is not None}
    if "mode" in b:
        check_budget_mode(_typed(b["mode"], str, "budget.mode"))
    for key in ("mu", "gflops", "lambda", "warmup", "ramp", "anneal"):
        if key in b:
            b[key] = _typed(b[key], float, f"budget.{key}")
    if "adaptive" in b:
        _typed(b["adaptive"], bool, "budget.adaptive")
    if "mu" in b and "gflops" in b:
        raise RoutespaceError("budget: give mu or gflops, not both (set the other to null)")
    if "mu" in b:
        check_mu(b["mu"])
    if "gflops" in b and not b["gflops"] > 0:
        raise RoutespaceError(f"budget.gflops must be positive, got {b['gflops']}")
    if "lambda" in b and not b["lambda"] >= 0:
        raise RoutespaceError(f"budget.lambda must be >= 0, got {b['lambda']}")
    for key in ("warmup", "ramp", "anneal"):
        if key in b and not 0 <= b[key] <= 1:
            raise RoutespaceError(f"budget.{key} is a fraction of training in [0, 1], got {b[key]}")
    if b.get("adaptive") and b.get("mode") == "paper":
        raise RoutespaceError("budget.adaptive applies to the realised mode only (paper mode keeps lambda fixed)")
    return b


def read_config(text: str) -> tuple[dict, str]:
    """The checked settings of a config file or bundled config name, and its name for messages."""
    yaml_text, source = locate(text)
    path = Path(text)
    base = path.resolve().parent if path.is_file() else None
    return check_config(parse_yaml(yaml_text, source), source, base), source


# --- `routespace train --config` --------------------------------------------------------------------------
def apply_config(args: argparse.Namespace) -> None:
    """Fill the `routespace train` options not given on the command line from ``args.config`` (module
    docstring: which value wins). Sets attributes for TrainConfig fields that have no flag as well."""
    cfg, source = read_config(args.config)

    def given(name: str) -> bool:
        return getattr(args, name, None) is not None

    def fill(name: str, value: Any) -> None:
        if value is not None and not given(name):
            setattr(args, name, value)

    for key in ("preset", "data", "size", "val_size"):
        fill(key, cfg.get(key))
    for key, value in cfg.get("train", {}).items():
        fill(key, value)
    budget_flags = [f for f in BUDGET_FLAG.values() if given(f)]
    dynamic_flags = (budget_flags or args.no_budget or args.fixed_lambda or given("setting") or given("gate_resolution")
                     or given("sampling"))
    if given("arch"):
        return  # a static net: the file's dynamic settings do not apply
    if "arch" in cfg:
        if not dynamic_flags:
            args.arch = cfg["arch"]
        return
    if given("setting") or args.no_budget:
        return  # the command line chose the setting: the file's setting, gate and budget go with it
    if cfg.get("setting") == "raw" and budget_flags:
        raise RoutespaceError(f"config {source} has setting raw (no budget), so --{budget_flags[0].replace('_', '-')} "
                              "is ambiguous: add --setting A, B or C")
    fill("setting", cfg.get("setting"))
    fill("gate_resolution", cfg.get("gate_resolution"))
    if "sampling" in cfg and not hasattr(args, "sampling"):
        raise RoutespaceError(f"config {source} sets sampling, which this `routespace train` has no option for")
    fill("sampling", cfg.get("sampling"))
    if cfg.get("skip_closed") and hasattr(args, "skip_closed"):
        args.skip_closed = True
    budget = cfg.get("budget") or {}
    targets_given = given("budget_mu") or given("budget_gflops")
    for key, flag in BUDGET_FLAG.items():
        if key not in ("mu", "gflops") or not targets_given:
            fill(flag, budget.get(key))
    if budget.get("mode", "realised") == "realised" and budget.get("adaptive") is False:
        args.fixed_lambda = True


# --- `routespace config dump` -----------------------------------------------------------------------------
def config_of_manifest(manifest: dict, source: str) -> dict:
    """The config mapping of a `routespace train` run's manifest (its config and extra.cli settings)."""
    from ..evaluators.runrecord import RunSettings

    record = RunSettings.from_manifest(manifest, source)
    cli = record.to_dict() if record is not None else None
    if cli is None:
        raise RoutespaceError(f"{source} was not made by `routespace train` (its manifest has no train settings), "
                              "so it has no config to dump")
    budget = cli.get("budget")
    if isinstance(budget, dict):
        budget = {k: budget.get(k) for k in BUDGET_KEYS if k != "anneal" or k in budget}  # anneal: only when recorded
        if budget.get("gflops") is not None:
            budget["mu"] = None  # mu was converted from the GFLOPs target: the target is the setting
    size = cli.get("size")
    val = cli.get("val_size")
    train = dict(manifest.get("config") or {})
    return {
        "preset": cli.get("preset"),
        "data": cli.get("data"),
        "size": f"{size[0]}x{size[1]}" if size else None,
        "val_size": f"{val[0]}x{val[1]}" if val else None,
        "arch": cli.get("arch"),
        "setting": cli.get("setting"),
        "gate_resolution": cli.get("gate_resolution"),
        **({"sampling": cli["sampling"]} if cli.get("sampling") is not None else {}),
        **({"skip_closed": True} if cli.get("skip_closed") else {}),
        "budget": budget,
        "train": {**{k: train[k] for k in _train_fields() if k in train}, **train},  # TrainConfig's order
    }


def render(cfg: dict, header: list[str]) -> str:
    """YAML text: comment lines, then the mapping in key order (mappings as blocks, lists inline)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(list, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))
    body = yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    return "".join(f"# {line}\n" for line in header) + body


def run_dump(args: argparse.Namespace) -> int:
    from ..evaluators.runfolder import read_manifest

    run = Path(args.run)
    manifest = read_manifest(run) if run.is_dir() else None
    if manifest is None:
        raise RoutespaceError(f"{run} is not a training run folder (no manifest.json): give the --out folder of "
                              "`routespace train`")
    cfg = config_of_manifest(manifest, str(run))
    check_config(cfg, str(run))  # what `train --config` will accept
    header = [f"routespace train settings of {run} (routespace config dump); explicit flags override them:",
              "  routespace train --config THIS_FILE --out NEWRUN"]
    sys.stdout.write(render(cfg, header))
    return 0


def run_show(args: argparse.Namespace) -> int:
    yaml_text, source = locate(args.config)
    path = Path(args.config)
    check_config(parse_yaml(yaml_text, source), source, path.resolve().parent if path.is_file() else None)
    sys.stdout.write(yaml_text)
    return 0


def run_list(args: argparse.Namespace) -> int:
    for name in bundled_names():
        cfg, _ = read_config(name)
        budget = cfg.get("budget") or {}
        what = f"setting {cfg.get('setting')}" + (f", {budget['mode']} budget mu {budget.get('mu')}" if budget else ", no budget")
        print(f"{name}: preset {cfg.get('preset')}, {cfg.get('data')}, {what}")
    return 0
