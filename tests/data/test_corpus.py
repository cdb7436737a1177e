"""bertkit.data.corpus: sentence splitting, document boundaries, file errors, the real WikiText file, and the
corpus of Python's own documentation."""
from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import pytest

from bertkit.data.corpus import (
    WIKITEXT_SECTION,
    WIKITEXT_TITLE,
    hard_wrap_width,
    iter_documents,
    python_docs_corpus,
    read_documents,
    split_sentences,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WIKITEXT = DATA / "pretrain" / "wikitext-2-raw.test.raw"


@pytest.mark.parametrize("text, expected", [
    ("Mr. Darcy met Dr. Smith at St. Paul's. They talked.", ["Mr. Darcy met Dr. Smith at St. Paul's.", "They talked."]),
    ("J. R. R. Tolkien wrote it c. 1937. It sold well.", ["J. R. R. Tolkien wrote it c. 1937.", "It sold well."]),
    ("It is used e.g. in the U.S. Army and i.e. Navy. Next one.",
     ["It is used e.g. in the U.S. Army and i.e. Navy.", "Next one."]),
    ('"Really?" she asked. "Yes!" He left!', ['"Really?" she asked.', '"Yes!"', "He left!"]),
    ("She said “Go.” “Now!” he cried. (It worked.) Then 1990 came.",
     ["She said “Go.”", "“Now!” he cried.", "(It worked.)", "Then 1990 came."]),
    ("He served in No. 20 Squadron. The answer was no. Then he left.",
     ["He served in No. 20 Squadron.", "The answer was no.", "Then he left."]),
    # WikiText's tokenized style: punctuation and quotes stand apart
    ('He was an actor . He had a role . " It was great , " he said .',
     ["He was an actor .", "He had a role .", '" It was great , " he said .']),
    ("no split before lowercase. or at the end.", ["no split before lowercase. or at the end."]),
    ("  Wait... What?  ", ["Wait...", "What?"]),
    ("", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_split_sentences_reads_long_runs_without_spaces_in_one_pass():
    """A base64 blob, a URL, a CJK paragraph: 100,000 characters without a space took the old pattern minutes
    (its lazy word group rescanned the run from every position). Guarded by an alarm far above the 0.01 s it
    now takes, so a return of the quadratic search fails here instead of hanging a pre-training job."""
    import signal

    def too_slow(*_):
        raise TimeoutError("split_sentences is quadratic again")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    try:
        for run in ("x" * 100_000, "a.b" * 33_000, "\u4e2d" * 100_000):   # no sentence ends before "Next"
            assert split_sentences(f"{run} Next one.") == [f"{run} Next one."]
        assert split_sentences("." * 100_000 + " Next one.") == ["." * 100_000, "Next one."]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("text, expected", [
    ("Is it done? Yes, it is.", ["Is it done?", "Yes, it is."]),
    ("They met in May. 1990 was a good year.", ["They met in May.", "1990 was a good year."]),
    ('He met "Dr. Who" there. Then he left.', ['He met "Dr. Who" there.', "Then he left."]),
    ("She saw (Mr. Smith) leave. It rained.", ["She saw (Mr. Smith) leave.", "It rained."]),
    ("They scored 3. The crowd cheered.", ["They scored 3.", "The crowd cheered."]),
    ("The cost was approx... Then it rose.", ["The cost was approx...", "Then it rose."]),
])
def test_sentence_rule_cases(text, expected):
    """'?' ends a sentence, a digit may start one, the word before '.' is read without its opening quote or
    bracket (so '"Dr.' is an abbreviation), a digit is no initial, and the abbreviation rule leaves '...' alone
    (only a single '.' can end an abbreviation)."""
    assert split_sentences(text) == expected


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_blank_lines_separate_documents_and_crlf(tmp_path):
    p = _write(tmp_path / "a.txt", b"\xef\xbb\xbfFirst doc. Two sentences.\r\nSecond line.\r\n\r\n\r\n"
                                   b"Other doc.\r\n   \r\nThird doc!\r\n")
    q = _write(tmp_path / "b.txt", b"Fourth, no final newline")
    docs = read_documents([p, q])
    assert docs == [["First doc.", "Two sentences.", "Second line."], ["Other doc."], ["Third doc!"],
                    ["Fourth, no final newline"]]
    assert all("\r" not in s and "\ufeff" not in s for d in docs for s in d)
    assert list(iter_documents(str(q))) == [["Fourth, no final newline"]]


def test_heading_boundaries_skip_and_wrapped(tmp_path):
    text = (" = Alpha = \r\n First para . Still alpha .\r\n = = History = = \r\n\r\n Later para .\r\n"
            " = Beta ( film ) = \r\n Beta text .\r\n = = = Deeper = = = \r\n More beta .\r\n")
    p = _write(tmp_path / "wiki.txt", text.encode())
    assert read_documents(p, WIKITEXT_TITLE, skip=WIKITEXT_SECTION) == [
        ["First para .", "Still alpha .", "Later para ."], ["Beta text .", "More beta ."]]
    # without skip the section headings stay as text; they never start a document
    assert len(read_documents(p, WIKITEXT_TITLE)) == 2
    book = _write(tmp_path / "book.txt", b"CHAPTER I.\n\nIt is a truth universally\nacknowledged, that a man.\n"
                                         b"Second line of the same paragraph.\n\nNew paragraph.\n\n"
                                         b"CHAPTER II.\n\nMore.\n")
    assert read_documents(book, r"^CHAPTER", wrapped=True) == [
        ["It is a truth universally acknowledged, that a man.", "Second line of the same paragraph.",
         "New paragraph."], ["More."]]


def _write_text(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_doc_boundary_matches_at_the_start_of_a_line(tmp_path):
    """A heading is a line the regex matches from its start, not anywhere in it, so a line that only mentions the
    word stays text."""
    p = _write_text(tmp_path / "book.txt", "CHAPTER I\nHe read the CHAPTER list aloud.\nCHAPTER II\nMore.\n")
    assert read_documents(p, "CHAPTER") == [["He read the CHAPTER list aloud."], ["More."]]


def test_wrapped_paragraphs_end_at_blank_lines_and_headings_and_lose_indentation(tmp_path):
    """Wrapped lines are joined stripped, a heading ends a paragraph (else the text before a heading would open
    the next document) and so does a blank line (else a title line without a full stop would run into the next
    paragraph)."""
    p = _write_text(tmp_path / "book.txt", "CHAPTER I\nPrologue\n\n   It was a truth\n   universally known.\n"
                                           "The end of it\nCHAPTER II\nMore.\n")
    assert read_documents(p, r"^CHAPTER", wrapped=True) == [
        ["Prologue", "It was a truth universally known.", "The end of it"], ["More."]]


def test_bad_byte_names_file_and_line(tmp_path):
    p = _write(tmp_path / "bad.txt", b"good line\nalso good\nbad \xff byte here\n")
    with pytest.raises(ValueError, match=re.escape(f"{p}:3: not valid UTF-8") + r".*0xff.*column 5"):
        read_documents(p)


def test_empty_corpus_names_files(tmp_path):
    a = _write(tmp_path / "a.txt", b"\n  \r\n\n")
    b = _write(tmp_path / "b.txt", b"")
    with pytest.raises(ValueError, match=f"empty corpus.*{re.escape(str(a))}.*{re.escape(str(b))}"):
        read_documents([a, b])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_documents(tmp_path / "missing.txt")


def test_wikitext_titles_on_the_real_file():
    if not WIKITEXT.is_file():
        pytest.skip(f"{WIKITEXT} not found")
    lines = WIKITEXT.read_bytes().decode("utf-8").split("\r\n")
    titles = [line for line in lines if re.match(WIKITEXT_TITLE, line)]
    assert len(titles) == 62 and titles[0] == " = Robert Boulter = "
    assert not any(line.startswith(" = = ") for line in titles)
    docs = read_documents(WIKITEXT, WIKITEXT_TITLE, skip=WIKITEXT_SECTION)
    assert 58 <= len(docs) <= 62
    assert docs[0][0] == "Robert Boulter is an English film , television and theatre actor ."
    sentences = [s for d in docs for s in d]
    assert len(sentences) > 5000
    assert not any("\r" in s or s.startswith("= =") for s in sentences)  # section headings skipped
    words = sum(len(s.split()) for s in sentences)
    assert 0.9 * 241_211 < words < 241_211  # the headings' tokens are the only ones left out


def test_python_docs_corpus(tmp_path):
    import json
    import inspect

    started = time.perf_counter()
    path = python_docs_corpus(tmp_path / "pydocs.txt")
    seconds = time.perf_counter() - started
    assert seconds < 60
    assert path.stat().st_size > 1_500_000
    assert not list(tmp_path.glob("*.tmp*"))
    docs = read_documents(path)
    assert len(docs) > 500  # one document per module and per help topic
    assert statistics.median(len(d) for d in docs) >= 5  # documents of many sentences, so NSP has real pairs
    texts = ["\n".join(d) for d in docs]
    assert len(set(texts)) == len(texts)
    text = path.read_text(encoding="utf-8")
    assert " ".join(inspect.getdoc(json.dumps).split("\n\n")[0].split()) in text  # a function's docstring
    from pydoc_data.topics import topics
    assert " ".join(topics["assert"].split("\n\n")[0].split()) in text  # a help topic
    assert "Supporting definitions for the Python regression tests" not in text  # test packages skipped


def test_lone_cr_and_crlf_files_read_as_the_lf_file(tmp_path):
    """CR-only files (old Mac) were one line: one document, a heading never matched, a bad byte on "line 1".
    Every ending now ends a line, in every mode; a CRLF split across the reader's 8 KiB chunks stays one ending."""
    from bertkit.io import read_lines
    text = "\ufeff" + ("CHAPTER I.\n\nIt is a truth universally\nacknowledged. A man\nin want.\n\nNew paragraph.\n\n"
                       "CHAPTER II.\n\nMore text, café.\n\n") * 700   # about 70 KB, past several chunks
    files = {name: _write(tmp_path / f"{name}.txt", text.replace("\n", ending).encode())
             for name, ending in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r"))}
    for kwargs in ({}, {"wrapped": True}, {"doc_boundary": r"^CHAPTER"},
                   {"doc_boundary": r"^CHAPTER", "wrapped": True}):
        expected = read_documents(files["lf"], **kwargs)
        for name in ("crlf", "cr"):
            assert read_documents(files[name], **kwargs) == expected, (name, kwargs)
    assert len(read_documents(files["cr"])) == 5 * 700  # blank lines end documents
    assert len(read_documents(files["cr"], r"^CHAPTER", wrapped=True)) == 2 * 700
    for path in files.values():   # the sizes a progress report adds up: the file's bytes, BOM and endings included
        sizes = []
        assert sum(1 for _ in read_lines(path, sizes.append)) == text.count("\n")
        assert sum(sizes) == path.stat().st_size
    bad = _write(tmp_path / "bad.txt", b"good line\rcaf\xc3\xa9\r\rbad \xff byte\r")
    want = f"{bad}:4: not valid UTF-8 (byte 0xff at column 5); save it as UTF-8"
    with pytest.raises(ValueError, match="^" + re.escape(want) + "$"):
        read_documents(bad)


# ------------------------------------------------------------------------------------- hard-wrap width
def _lines(lengths, starts_lower, ends=""):
    """Lines of lowercase words cut to each length (the last character `ends` when given), each starting with a
    lowercase or an uppercase letter."""
    out = []
    for n, lower in zip(lengths, starts_lower):
        body = ("word " * (n // 5 + 2))[:n - len(ends)].rstrip().ljust(n - len(ends), "x") + ends
        out.append(body if lower else body[0].upper() + body[1:])
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name, lengths, lower, ends, expected", [
    # 100 pairs of lines; a line's length counts when another line follows it (the last line does not)
    ("wrapped", [60] * 101, [True] * 101, "", 60),
    ("a few long lines", [60] * 96 + [100] * 4 + [60], [True] * 101, "", 60),              # 95th percentile
    ("55% full", [40] * 45 + [60] * 55 + [60], [True] * 101, "", None),
    ("60% full", [40] * 40 + [60] * 60 + [60], [True] * 101, "", 60),
    ("40% run on", [60] * 101, [False] + [True] * 40 + [False] * 60, "", None),
    ("50% run on", [60] * 101, [True, False] * 50 + [True], "", 60),
    ("full stops", [60] * 101, [True] * 101, ".", None),
    ("semicolons", [60] * 101, [True] * 101, ";", None),
    ("colons", [60] * 101, [True] * 101, ":", None),
])
def test_hard_wrap_width_thresholds(tmp_path, name, lengths, lower, ends, expected):
    """60% of lines full (not 40%), half of them running on (not a fifth), sentence punctuation ending a run, the
    95th percentile (not the longest line), 3/4 of the width counting as full (not 1/2), ':' and ';' ending a run:
    the docstring's thresholds, on each side of them."""
    assert hard_wrap_width(_write_text(tmp_path / "t.txt", _lines(lengths, lower, ends))) == expected
