"""The progress of building pre-training shards, in bytes of the corpus: a bar with its total on a terminal, lines
in a log file; and `ProgressLines`' first line, which a long loop prints at once rather than after `every_s`."""
from __future__ import annotations

import functools
import random
import re
import sys

import pytest
from tqdm import tqdm

import bertkit.data.pretraining as shards
from bertkit.cli import main
from bertkit.data.pretraining import build_shards
from bertkit.tokenizer import BertTokenizer
from bertkit.train import tracking

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "river stone cloud garden lamp window forest bridge engine letter market violin harbor candle".split()


def _write_corpus(path, documents: int, seed: int):
    """`documents` documents of 6 sentences, blank lines between them."""
    rng = random.Random(seed)
    docs = ["\n".join(f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."
                      for _ in range(6)) for _ in range(documents)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", 60, 0)


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    BertTokenizer.train([corpus], 80).save_pretrained(out)
    return out


def _figures(err: str, desc: str, total: int) -> list[int]:
    """The bytes of each progress line of `desc`, each checked to show `total` and a rate."""
    found = []
    for line in err.splitlines():
        if line.startswith(f"{desc}: "):
            m = re.fullmatch(re.escape(desc) + r": ([\d,]+)/" + re.escape(f"{total:,}")
                             + r" bytes \((\d+)%\), [\d,.]+ bytes/s", line)
            assert m, line
            found.append(int(m.group(1).replace(",", "")))
    return found


def test_a_log_shows_the_bytes_built_of_the_corpus_size(corpus, tokenizer_dir, tmp_path, monkeypatch, capsys):
    """No terminal: lines of the bytes built out of the file's size, rising to it once. The bytes are shown as
    they are tokenised, not as read: when shard 1 of 4 is written, the next chunk has been read but not built."""
    monkeypatch.setattr(shards, "PROGRESS_EVERY_S", 0.0)
    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    size = corpus.stat().st_size
    build_shards(corpus, tok, tmp_path / "train", max_seq_length=32, chunk_chars=size // 4, progress=True,
                 report=lambda line: print(line, file=sys.stderr))
    err = capsys.readouterr().err
    figures = _figures(err, "train: tokenising the corpus", size)
    assert figures == sorted(figures) and figures[-1] == size and figures.count(size) == 1, figures
    before_shard_1 = _figures(err[:err.index("train: shard 1: ")], "train: tokenising the corpus", size)
    assert 0 < before_shard_1[-1] < size / 2, (before_shard_1, size)
    assert len(figures) >= 4


def test_a_short_build_prints_nothing_in_a_log(corpus, tokenizer_dir, tmp_path, capsys):
    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    build_shards(corpus, tok, tmp_path / "train", max_seq_length=32, progress=True)
    assert capsys.readouterr().err == ""


def test_a_terminal_shows_a_bar_of_bytes_with_the_total(corpus, tokenizer_dir, tmp_path, monkeypatch, capsys):
    """On a terminal: a tqdm bar ending at "<size>B/<size>B", the size in kB / MB; a shard's line does not land in
    the middle of the bar."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    size = corpus.stat().st_size
    build_shards(corpus, tok, tmp_path / "train", max_seq_length=32, progress=True,
                 report=lambda line: print(line, file=sys.stderr))
    err = capsys.readouterr().err
    scaled = tqdm.format_sizeof(size)   # "18.9k"
    assert "train: tokenising the corpus: 100%" in err and f"| {scaled}B/{scaled}B [" in err, err
    assert re.search(r"\r +\rtrain: shard 1: [^\r]*\n\rtrain: tokenising", err), err   # cleared, then redrawn
    assert "bytes/s" not in err


def test_pretrain_shows_the_bytes_of_the_corpus_and_of_the_eval_corpus(corpus, tokenizer_dir, tmp_path, monkeypatch,
                                                                       capsys):
    """`bertkit pretrain` in a log: the training corpus's bytes, held-out twentieth included (the corpus is read
    once, by the job itself), and with --eval-corpus each file's own."""
    monkeypatch.setattr(shards, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(shards, "_tokenise_chunk", functools.partial(shards._tokenise_chunk, batch_size=50))
    size = corpus.stat().st_size
    args = ["pretrain", "--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--model-size", "tiny",
            "--max-steps", "1", "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1"]
    assert main([*args, "--output", str(tmp_path / "run")]) == 0
    figures = _figures(capsys.readouterr().err, "train: tokenising the corpus", size)
    assert len(figures) >= 4 and figures == sorted(figures) and figures[-1] == size, figures
    held = _write_corpus(tmp_path / "heldout.txt", 12, 1)
    assert main([*args, "--output", str(tmp_path / "eval"), "--eval-corpus", str(held)]) == 0
    err = capsys.readouterr().err
    assert _figures(err, "train: tokenising the corpus", size)[-1] == size
    assert _figures(err, "heldout: tokenising the corpus", held.stat().st_size)[-1] == held.stat().st_size


def _clocked(monkeypatch, *times: float):
    clock = iter(times)
    monkeypatch.setattr(tracking.time, "monotonic", lambda: next(clock))


def test_a_long_loop_prints_its_first_line_after_a_few_seconds(monkeypatch, capsys):
    """A log shows at once that a long loop started and its size: 200 of 10,000 bytes in 6 s makes 300 s, so a
    line at 6 s (not at 30), then every 30 s from it, and a closing one."""
    _clocked(monkeypatch, 0.0, 1.0, 6.0, 20.0, 36.0, 50.0)
    lines = tracking.ProgressLines(10_000, "building", "byte", every_s=30.0)   # starts at 0 s
    for n in (100, 100, 1000, 1000):   # at 1 s (too soon to judge), 6 s (a line), 20 s, 36 s (a line)
        lines.update(n)
    lines.close()                      # at 50 s
    assert capsys.readouterr().err.splitlines() == [
        "building: 200/10,000 bytes (2%), 33.3 bytes/s",
        "building: 2,200/10,000 bytes (22%), 61.1 bytes/s",
        "building: 2,200/10,000 bytes (22%), 44.0 bytes/s"]


def test_a_loop_done_within_two_intervals_prints_no_early_line(monkeypatch, capsys):
    """A short loop (12 s at the pace of its first 6 s) prints nothing; one of 45 s prints no early line either,
    only its line at 30 s and a closing one, as before."""
    _clocked(monkeypatch, 0.0, 6.0, 12.0, 13.0)
    short = tracking.ProgressLines(1000, "building", "byte", every_s=30.0)
    short.update(500)    # 6 s: 500 of 1,000 makes 12 s
    short.update(500)    # 12 s: done
    short.close()
    assert capsys.readouterr().err == ""
    _clocked(monkeypatch, 0.0, 6.0, 31.0, 45.0, 46.0)
    medium = tracking.ProgressLines(1500, "building", "byte", every_s=30.0)
    medium.update(200)   # 6 s: 200 of 1,500 makes 45 s
    medium.update(800)   # 31 s: the regular line
    medium.update(500)   # 45 s: done
    medium.close()       # 46 s
    assert capsys.readouterr().err.splitlines() == [
        "building: 1,000/1,500 bytes (67%), 32.3 bytes/s",
        "building: 1,500/1,500 bytes (100%), 32.6 bytes/s"]
