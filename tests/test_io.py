"""bertkit.io: what a killed job leaves beside its outputs is removed by the next write there, a live job's is
kept; errors name the output asked for; saved weights get the ordinary file mode."""
import os
import subprocess
import sys

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
