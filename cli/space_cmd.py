"""`routespace space --preset NAME`: describe a preset."""
from __future__ import annotations

import argparse
import json

from ..spaces.space import PRESETS, preset


def register(sub) -> None:
    p = sub.add_parser("space", help="describe a routing-space preset")
    p.add_argument("--preset", default="paper", help=f"one of {', '.join(PRESETS)} (default paper)")
    p.add_argument("--json", action="store_true", help="print the space as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    space = preset(args.preset)
    if args.json:
        print(json.dumps(space.to_dict(), indent=2, sort_keys=True))
    else:
        print(space.describe())
    return 0
