"""Atomic file writes: a reader (or a crash) never sees half a file."""
from __future__ import annotations

import os
import shutil
import tempfile
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


def check_new_directory(path: str | os.PathLike) -> None:
    """A ValueError unless `path` does not exist or is an empty directory (checked before long work)."""
    path = os.fspath(path)
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"{path}: already exists and is not an empty directory")


@contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a new directory beside `path` (which must not exist, or be empty) that becomes `path` only if the
    block succeeds: the directory appears whole or not at all."""
    path = os.fspath(path)
    check_new_directory(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's is private (0700); the result is an ordinary directory
    try:
        yield staging
        if os.path.isdir(path):
            os.rmdir(path)  # empty, checked above
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
