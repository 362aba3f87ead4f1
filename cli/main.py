"""Entry point of the ``routespace`` command. Subcommands register themselves from small modules."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..spaces.errors import RoutespaceError

# Each entry: module under routespace.cli that defines ``register(subparsers)``; imported lazily so
# `routespace flops` does not pay for optuna/nni imports.
COMMAND_MODULES = ["space_cmd", "flops_cmd", "export_cmd", "show_cmd", "train_cmd", "evaluate_cmd", "search_cmd", "extract_cmd", "compare_cmd",
                   "config_cmd"]
# Commands that run torch: they take --threads and set torch's threads before they start (cli/threads.py).
TORCH_COMMANDS = ("export", "show", "train", "evaluate", "search", "extract", "compare", "demo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own default prints usage)
        raise RoutespaceError(f"{message} (see `{self.prog} --help`)")


def make_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="routespace", description="Routing-space NAS for semantic segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"routespace.cli.{name}").register(sub)
    for name in TORCH_COMMANDS:
        sub.choices[name].add_argument(
            "--threads", type=_positive_int, default=None, metavar="N",
            help="torch/OpenMP threads of this process (default: the cores available divided among the routespace "
            "processes running, and the processes this command starts)")
    return parser


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user mistakes become one line on stderr and exit code 2."""
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 terminal must not turn a message into a traceback
        getattr(stream, "reconfigure", lambda **kw: None)(errors="backslashreplace")
    try:
        args = make_parser().parse_args(argv)
        if args.command in TORCH_COMMANDS:
            from .threads import apply_threads

            args.thread_choice = apply_threads(args.threads, max(1, int(getattr(args, "workers", 1) or 1)), announce=False)
        func: Callable[[argparse.Namespace], int | None] = args.func
        return int(func(args) or 0)
    except RoutespaceError as exc:
        print(f"routespace: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("routespace: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `routespace flops ... | head`: the reader left; no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
