"""bertkit.io: what a killed job leaves beside its outputs is removed by the next write there, a live job's is
kept; errors name the output asked for; saved weights get the ordinary file mode."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertkit.io import atomic_directory, atomic_path, umask


@pytest.fixture(scope="module")
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_leftovers_go_a_live_ones_stay(tmp_path, dead_pid):
    alive = os.getppid()
    for pid in (dead_pid, alive):
        (tmp_path / f".staging-{pid}-abc").mkdir()
        (tmp_path / f".staging-{pid}-abc" / "weights.tmp").write_bytes(b"half")
        (tmp_path / f"pred.jsonl.tmp{pid}").write_text("half")
    with atomic_directory(tmp_path / "out") as staging:
        assert os.path.basename(staging).startswith(f".staging-{os.getpid()}-")
        open(os.path.join(staging, "f"), "w").close()
    with atomic_path(tmp_path / "pred.jsonl") as tmp:
        with open(tmp, "w") as f:
            f.write("whole\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", "pred.jsonl", f".staging-{alive}-abc", f"pred.jsonl.tmp{alive}"])
    assert (tmp_path / "pred.jsonl").read_text() == "whole\n"


def test_an_output_that_cannot_be_made_is_named_as_asked(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError) as e:
        with atomic_directory(tmp_path / "afile" / "out"):
            pass
    assert e.value.filename == str(tmp_path / "afile" / "out")   # not a staging directory's name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_saved_weights_are_an_ordinary_file(tmp_path):
    from bertkit.config import BertConfig
    from bertkit.modeling import BertModel
    BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"config.json": 0o666 & ~umask(), "model.safetensors": 0o666 & ~umask()}


def test_outputs_are_checked_before_the_work(tmp_path):
    from bertkit.io import check_writable
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    check_writable(tmp_path / "new" / "deeper" / "out.json")   # folders to be made: fine, none made yet
    check_writable(tmp_path / "adir", directory=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
    with pytest.raises(IsADirectoryError) as e:
        check_writable(tmp_path / "adir")
    assert e.value.filename == str(tmp_path / "adir")
    with pytest.raises(NotADirectoryError):
        check_writable(tmp_path / "afile", directory=True)
    with pytest.raises(NotADirectoryError, match="Not a directory"):
        check_writable(tmp_path / "afile" / "out.json")


def test_a_failed_atomic_write_names_the_file_asked_for(tmp_path):
    """An error while writing the temporary twin (here: its folder is missing) names the file asked for, not
    `<name>.tmp<pid>`, and leaves nothing behind."""
    from bertkit.io import atomic_path
    target = tmp_path / "missing" / "out.json"
    with pytest.raises(FileNotFoundError) as e:
        with atomic_path(target) as tmp:
            open(tmp, "w").close()
    assert e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_process_we_may_not_signal_are_kept(tmp_path, monkeypatch):
    """A pid that kill(pid, 0) answers with EPERM is a live process of another user (a shared machine): its
    temporary files are not removed as a dead job's."""
    from bertkit import io
    other = 4_000_000  # no such pid here; os.kill is made to answer as for another user's process

    def kill(pid, signal):
        if pid == other:
            raise PermissionError(1, "Operation not permitted")
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(io.os, "kill", kill)
    assert io.pid_alive(other)
    (tmp_path / f"out.json.tmp{other}").write_text("half")
    (tmp_path / f"out.json.tmp{other + 1}").write_text("half")   # a dead job's
    io.write_text_atomic(tmp_path / "out.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", f"out.json.tmp{other}"]


def test_a_folder_that_cannot_be_entered_is_not_writable(tmp_path, monkeypatch):
    """Writing into a folder needs search (x) as well as write permission: a folder granting write only is a
    PermissionError naming the output, before the work. (os.access is made to answer so: the tests run as root,
    which any mode lets in.)"""
    from bertkit import io
    monkeypatch.setattr(io.os, "access", lambda path, mode: mode == os.W_OK)
    with pytest.raises(PermissionError) as e:
        io.check_writable(tmp_path / "out.json")
    assert e.value.filename == str(tmp_path / "out.json")


def test_an_output_directory_must_be_new_or_empty(tmp_path):
    """check_new_directory (and atomic_directory) refuse a directory holding files: the run would replace them."""
    from bertkit.io import atomic_directory, check_new_directory
    (tmp_path / "empty").mkdir()
    check_new_directory(tmp_path / "empty")
    check_new_directory(tmp_path / "new")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for check in (check_new_directory, lambda p: atomic_directory(p).__enter__()):
        with pytest.raises(ValueError) as e:
            check(tmp_path / "full")
        assert str(e.value) == f"{tmp_path / 'full'}: already exists and is not an empty directory"
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_atomic_directory_makes_an_ordinary_directory_or_none(tmp_path):
    """The directory made has the mode of any new directory (not mkdtemp's private 0700); a failure inside the
    block leaves no staging directory behind."""
    from bertkit.io import atomic_directory, umask
    with atomic_directory(tmp_path / "out") as staging:
        (Path(staging) / "f.txt").write_text("x")
    assert (tmp_path / "out" / "f.txt").read_text() == "x"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask()
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(tmp_path / "failed"):
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_read_errors_name_the_line_whatever_the_line_ends(tmp_path):
    """Lines end at \\n, \\r\\n or a lone \\r (an old Mac file) alike: counting \\n alone put every error of a
    lone-\\r file on line 1."""
    from bertkit.io import line_of, read_json, read_text
    assert [line_of("a\nb\r\nc\rd", i) for i in (0, 2, 5, 7)] == [1, 2, 3, 4]
    assert line_of(b"a\r\rb", 3) == 3
    for end in ("\n", "\r\n", "\r"):
        bad = tmp_path / "bad.txt"
        bad.write_bytes(end.join(["{", '"a": 1,', "\xff"]).encode("latin-1"))
        offset = bad.read_bytes().index(b"\xff")
        with pytest.raises(ValueError) as e:
            read_text(bad)
        assert str(e.value) == f"{bad}:3: not valid UTF-8 (byte 0xff) at offset {offset}; save it as UTF-8"
        bad.write_text(end.join(["{", '"a": 1,', "}"]), encoding="utf-8", newline="")
        with pytest.raises(ValueError, match=r"bad\.txt: line 3: not valid JSON"):
            read_json(bad)


def test_a_byte_order_mark_is_dropped_from_text_and_json(tmp_path):
    """A UTF-8 BOM (Notepad's) is not content: read_text drops it as Python's "utf-8-sig" does, and a JSON file
    that starts with one parses."""
    from bertkit.io import read_json, read_text
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\n')
    assert read_text(path) == path.read_text(encoding="utf-8-sig") == '{"a": 1}\n'
    assert read_json(path) == {"a": 1}


def test_a_bad_byte_after_a_bom_is_named_at_its_offset_in_the_file(tmp_path):
    """The offset an error names is the bad byte's in the file, the BOM's three bytes counted, and the byte named
    is that one."""
    from bertkit.io import read_text
    raw = b"\xef\xbb\xbfab\ncd\xffe\n"
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(ValueError) as e:
        read_text(path)
    offset = raw.index(b"\xff")
    assert str(e.value) == f"{path}:2: not valid UTF-8 (byte 0xff) at offset {offset}; save it as UTF-8"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_files_of_either_byte_order_are_named_as_such(tmp_path, encoding):
    """A UTF-16 file, little- or big-endian (its BOM FF FE or FE FF), is named as UTF-16 by both readers, not
    reported as a bad byte."""
    from bertkit.io import UTF16, read_lines, read_text
    bom = b"\xff\xfe" if encoding == "utf-16-le" else b"\xfe\xff"
    path = tmp_path / "excel.txt"
    path.write_bytes(bom + "label\tcafé\n".encode(encoding))
    with pytest.raises(ValueError) as e:
        read_text(path)
    assert str(e.value) == f"{path}: {UTF16}"
    with pytest.raises(ValueError) as e:
        list(read_lines(path))
    assert str(e.value) == f"{path}: {UTF16}"


def test_read_lines_names_a_bad_bytes_column_in_bytes(tmp_path):
    """The column of a bad byte counts bytes (an editor's byte column, and what `cut -b` takes): "café " is 6 bytes,
    so the byte after it is at column 7, not 6."""
    from bertkit.io import read_lines
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\ncaf\xc3\xa9 \xff!\n")
    with pytest.raises(ValueError) as e:
        list(read_lines(path))
    assert str(e.value) == f"{path}:2: not valid UTF-8 (byte 0xff at column 7); save it as UTF-8"


def test_read_lines_yields_lines_as_python_splits_them(tmp_path):
    """Lines without their endings (\\n, \\r\\n, lone \\r), the BOM dropped from the first line only: a U+FEFF
    starting a later line is content (a zero-width no-break space), kept as Python's "utf-8-sig" keeps it."""
    from bertkit.io import read_lines
    raw = b"\xef\xbb\xbfa\r\n\xef\xbb\xbfb\rc\n\r\nd"
    path = tmp_path / "mixed.txt"
    path.write_bytes(raw)
    expected = raw.decode("utf-8-sig").splitlines()
    assert expected == ["a", "\ufeffb", "c", "", "d"]
    assert list(read_lines(path)) == list(enumerate(expected, 1))


def test_read_json_refuses_another_top_level_type(tmp_path):
    """A config file that is a JSON list (or a number) where an object is expected: a ValueError naming the file
    and both types; expect=None takes anything."""
    from bertkit.io import read_json
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError) as e:
        read_json(path)
    assert str(e.value) == f"{path}: expected a JSON object, got list"
    with pytest.raises(ValueError) as e:
        read_json(path, expect=str)
    assert str(e.value) == f"{path}: expected a JSON str, got list"
    assert read_json(path, expect=None) == [1, 2]
