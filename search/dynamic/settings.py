"""The named settings of the released Dynamic-A/B/C/Raw configs, as data (torch-free).

``routespace train --setting A`` takes lambda, mu and the gate resolution from here; explicit flags
override them. Released configs (github Megvii-BaseDetection/DynamicRouting, playground/Dynamic/Seg.Layer16*):
Dynamic-A lambda 0.8 mu 0.1, B 0.5/0.1, C 0.5/0.2, all with the small gate; Raw no budget, full gate.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...spaces.errors import RoutespaceError

BUDGET_MODES = ("realised", "paper")
DEFAULT_BUDGET_MODE = "realised"
DEFAULT_WARMUP = 0.4  # fraction of training before the budget loss starts (released UNUPDATE_RATE)
DEFAULT_RAMP = 0.02  # fraction over which it then ramps to full weight (the released 0.02)
DEFAULT_ANNEAL = 0.0  # realised mode: fraction over which the target falls from the switch-on ratio to mu


@dataclass(frozen=True)
class DynamicSetting:
    """A named dynamic-routing setting; ``mu`` None means no budget loss."""

    name: str
    lam: float | None
    mu: float | None
    gate_resolution: str
    description: str

    @property
    def budgeted(self) -> bool:
        return self.mu is not None


SETTINGS: dict[str, DynamicSetting] = {
    s.name: s
    for s in (
        DynamicSetting("A", 0.8, 0.1, "quarter", "Dynamic-A: lambda 0.8, mu 0.1, small gate"),
        DynamicSetting("B", 0.5, 0.1, "quarter", "Dynamic-B: lambda 0.5, mu 0.1, small gate"),
        DynamicSetting("C", 0.5, 0.2, "quarter", "Dynamic-C: lambda 0.5, mu 0.2, small gate"),
        DynamicSetting("raw", None, None, "full", "Dynamic-Raw: no budget loss, full gate"),
    )
}


def setting(name: str) -> DynamicSetting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise RoutespaceError(f"unknown dynamic setting {name!r}: choose one of {', '.join(SETTINGS)}") from None


def check_budget_mode(mode: str) -> str:
    if mode not in BUDGET_MODES:
        raise RoutespaceError(f"unknown budget mode {mode!r}: choose 'paper' (the released soft loss) or 'realised'")
    return mode
