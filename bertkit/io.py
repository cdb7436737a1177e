"""Atomic file writes: a reader (or a crash) never sees half a file."""
from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename != tmp:
            raise
        raise type(e)(e.errno, e.strerror, path) from None  # name the file asked for, not its temporary twin
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
