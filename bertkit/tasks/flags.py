"""Checks of a job's flags, run when its argument dataclass is built: a bad value fails before the job trains a
vocabulary, builds data or touches its output directory. Errors name the flag as typed (`--max-steps`)."""
from __future__ import annotations

import math

from ..checks import is_int


class FlagError(ValueError):
    """A bad flag. It follows from the command line alone, which every torchrun rank parses alike, so rank 0
    says it and the other ranks stop silently."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ints(args, names: tuple[str, ...], least: int = 1, optional: bool = False) -> None:
    """Each of `names` an int >= `least` (None allowed when `optional`)."""
    for name in names:
        v = getattr(args, name)
        if optional and v is None:
            continue
        if not is_int(v) or v < least:
            what = "a positive integer" if least == 1 else f"an integer >= {least}"
            raise ValueError(f"{_flag(name)} must be {what}, got {v!r}")


def check_numbers(args, names: tuple[str, ...], positive: bool) -> None:
    """Each of `names` a finite number, > 0 (`positive`) or >= 0."""
    for name in names:
        v = getattr(args, name)
        if not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
            raise ValueError(f"{_flag(name)} must be a finite number {'>' if positive else '>='} 0, got {v!r}")
