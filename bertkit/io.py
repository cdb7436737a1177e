"""Atomic file writes (a reader, or a crash, never sees half a file) and reads whose errors name the file."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale(parent: str | os.PathLike, pattern: str) -> None:
    """Remove what a killed job left in `parent`: the entries whose whole name matches `pattern`, whose group
    "pid" names a process that is gone."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(pattern, name)
        if m and not pid_alive(int(m.group("pid"))):
            path = os.path.join(parent, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(*paths: str | os.PathLike):
    """Yield a temporary path beside each of `paths`; rename them all over `paths` only if the block succeeds,
    so that a failure while writing (a full disk) leaves a directory's files as they were, not half new."""
    paths = tuple(os.fspath(p) for p in paths)
    tmps = tuple(f"{p}.tmp{os.getpid()}" for p in paths)
    for p in paths:   # a twin a killed writer left
        remove_stale(os.path.dirname(os.path.abspath(p)), re.escape(os.path.basename(p)) + r"\.tmp(?P<pid>\d+)")
    try:
        yield tmps
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    except OSError as e:
        if e.errno is None or not (e.filename in tmps or e.filename is None):
            raise
        # name the file asked for, not its temporary twin (a full disk's error names none: then the directory)
        name = paths[tmps.index(e.filename)] if e.filename in tmps else (
            paths[0] if len(paths) == 1 else os.path.dirname(paths[0]) or ".")
        raise type(e)(e.errno, e.strerror, name) from None
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def check_writable(path: str | os.PathLike, directory: bool = False) -> None:
    """Checked before long work: `path` (a file, or with `directory` a directory) can be written where it is,
    its missing folders made. An OSError naming `path` otherwise (an existing directory where a file goes,
    a file in the way, no permission)."""
    given = os.fspath(path)
    path = os.path.abspath(given)
    if os.path.exists(path) and os.path.isdir(path) != directory:
        error = IsADirectoryError if not directory else NotADirectoryError
        raise error(errno.EISDIR if not directory else errno.ENOTDIR,
                    "Is a directory" if not directory else "Not a directory", given)
    target = path if directory and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(target):
        target = os.path.dirname(target)
    if not os.path.isdir(target):
        raise NotADirectoryError(errno.ENOTDIR, f"Not a directory: {target}", given)
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "Permission denied", given)


def file_id(path: str | os.PathLike) -> dict:
    """A data file as its name, size and a hash of its first and last MiB: another file (or an edited one) is
    noticed without reading a big corpus whole, and a copy moved elsewhere (new path, new mtime) still matches."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            digest.update(f.read())
    return {"name": os.path.basename(path), "size": size, "sample_sha256": digest.hexdigest()}


def line_of(data: str | bytes, pos: int) -> int:
    """The 1-based line holding offset `pos` of `data`, a line ending at \\n, \\r\\n or a lone \\r (an old Mac
    file) alike: counting \\n alone puts every error of a lone-\\r file on line 1."""
    head = data[:pos]
    cr, lf = ("\r", "\n") if isinstance(data, str) else (b"\r", b"\n")
    return head.count(lf) + head.count(cr) - head.count(cr + lf) + 1


UTF16 = "a UTF-16 file (it starts with a UTF-16 byte-order mark); save it as UTF-8"


def decode_text(raw: bytes, where: str) -> str:
    """UTF-8 bytes as text (a leading BOM dropped); a bad byte is a ValueError naming `where`, its line and offset.
    A UTF-16 file (what Excel's "Unicode text" saves) is named as such: its bytes say nothing useful as UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ValueError(f"{where}: {UTF16}") from None
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        raise ValueError(f"{where}:{line_of(raw, start)}: not valid UTF-8 (byte 0x{raw[start]:02x}) at offset "
                         f"{start}; save it as UTF-8") from None


_UNDECODED = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as errors="surrogateescape" keeps it


def read_lines(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) of a UTF-8 file, streamed: a big file costs one line's memory.
    "\\n", "\\r\\n" and a lone "\\r" (old Mac files) each end a line, as in Python's universal newlines: a CR-only
    file is not one line. A leading BOM is dropped; a byte that is not UTF-8 is a ValueError naming its line and
    column (a UTF-16 file, by name). `progress` gets each line's size in bytes."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:  # newline="": endings kept
        for lineno, line in enumerate(f, 1):
            ascii_only = line.isascii()  # the common case, and no encoding needed to size it
            if not ascii_only and (bad := _UNDECODED.search(line)):
                if lineno == 1 and line.startswith(("\udcff\udcfe", "\udcfe\udcff")):
                    raise ValueError(f"{os.fspath(path)}: {UTF16}")
                column = len(line[:bad.start()].encode("utf-8", "surrogateescape")) + 1
                raise ValueError(f"{os.fspath(path)}:{lineno}: not valid UTF-8 (byte "
                                 f"0x{ord(bad.group()) - 0xDC00:02x} at column {column}); save it as UTF-8")
            if progress is not None:
                progress(len(line) if ascii_only else len(line.encode("utf-8", "surrogateescape")))
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield lineno, line.rstrip("\r\n")


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content (a leading BOM dropped); a bad byte is a ValueError naming the file and line."""
    with open(path, "rb") as f:
        return decode_text(f.read(), os.fspath(path))


def read_json(path: str | os.PathLike, expect: type | None = dict):
    """A JSON file's content, which must be an `expect` (None: anything); errors name the file (and line)."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: line {line_of(text, e.pos)}: not valid JSON ({e.msg})") from None
    except RecursionError:   # json's parser on arrays or objects nested thousands deep (a crafted file)
        raise ValueError(f"{os.fspath(path)}: not valid JSON (nested too deeply)") from None
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{os.fspath(path)}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                         f"got {type(data).__name__}")
    return data


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def check_ours(path: str | os.PathLike, ours, what: str) -> None:
    """Before a run removes the folder `path` that it would have written (`ours(name)`: whether a file name is one
    it writes there): a ValueError naming the first files it did not write, which are the user's."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return
    foreign = sorted(name for name in os.listdir(path) if not ours(name))
    if foreign:
        raise ValueError(f"{path} holds files {what} does not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}), and it would remove them; choose another "
                         "--output")


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
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale(parent, r"\.staging-(?P<pid>\d+)-.*")   # what a killed job left
        staging = tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=parent)
    except OSError as e:  # name the output asked for, not the staging directory
        raise type(e)(e.errno, e.strerror, path) from None
    os.chmod(staging, 0o777 & ~umask())  # mkdtemp's is private (0700); the result is an ordinary directory
    try:
        yield staging
        if os.path.isdir(path):
            os.rmdir(path)  # empty, checked above
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
