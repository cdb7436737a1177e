"""One rule for integer arguments. Python's bool is an int (`True == 1`): a True given where a count, size or
index was meant is a mistake to refuse, not a 1 to use."""
from __future__ import annotations


def is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
