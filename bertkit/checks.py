"""Rules for arguments that several modules check alike.

Integers: Python's bool is an int (`True == 1`); a True given where a count, size or index was meant is a mistake
to refuse, not a 1 to use. Defaults: a dataclass field's own default, a `default_factory` one included (a list
flag's empty list), is what a saved settings file that predates the field stands for."""
from __future__ import annotations

import dataclasses
from typing import Any


def is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def field_defaults(cls) -> dict[str, Any]:
    """Each field's own default (not a value `__post_init__` derived from others), of fields that have one; a
    `default_factory` is called for a fresh value."""
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
