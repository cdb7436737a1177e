"""bertkit.data.readers on the real GLUE / SMS / WNUT-17 / SQuAD files, and on tiny bad files for every error."""
from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from bertkit.data.readers import (
    Example,
    SquadExample,
    TaggedSentence,
    is_regression,
    label_maps,
    label_set,
    read_columns,
    read_conll,
    read_squad,
    read_table,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLS = DATA / "classification"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


# ---------------------------------------------------------------------------------------------------------------
# real tables
# ---------------------------------------------------------------------------------------------------------------

def test_sst2_dev():
    rows = read_table(need(CLS / "sst2" / "dev.tsv"), text_column="sentence", label_column="label")
    assert len(rows) == 872
    assert label_set(rows) == ["0", "1"]
    assert Counter(r.label for r in rows) == {"1": 444, "0": 428}
    assert rows[0] == Example("it 's a charming and often affecting journey . ", None, "1", 2)  # text kept as is
    assert rows[-1].line == 873
    assert not is_regression(rows)


def test_mrpc_dev_with_bom_and_own_column_names():
    rows = read_table(need(CLS / "mrpc" / "dev.tsv"), text_column="#1 String", text_pair_column="#2 String",
                      label_column="Quality")
    assert len(rows) == 408
    assert Counter(r.label for r in rows) == {"1": 279, "0": 129}
    assert all(r.text and r.text_pair for r in rows)
    id2label, label2id = label_maps(label_set(rows))
    assert id2label == {0: "0", 1: "1"} and label2id == {"0": 0, "1": 1}
    # the source file has no .tsv extension: name the format
    train = read_table(need(CLS / "mrpc" / "msr_paraphrase_train.txt"), format="tsv", text_column=3,
                       text_pair_column=-1, label_column="Quality")
    assert len(train) == 4076
    assert Counter(r.label for r in train) == {"1": 2753, "0": 1323}


def test_rte_dev():
    rows = read_table(need(CLS / "rte" / "dev.tsv"), text_column="sentence1", text_pair_column="sentence2",
                      label_column="label")
    assert len(rows) == 277
    assert label_set(rows) == ["entailment", "not_entailment"]
    assert Counter(r.label for r in rows) == {"entailment": 146, "not_entailment": 131}


def test_sms_spam_without_header():
    rows = read_table(need(CLS / "sms_spam" / "SMSSpamCollection"), format="tsv", header=False,
                      text_column=1, label_column=0)
    assert len(rows) == 5574
    assert Counter(r.label for r in rows) == {"ham": 4827, "spam": 747}
    assert rows[0].line == 1 and rows[0].text.startswith("Go until jurong point")
    with pytest.raises(ValueError, match=r"SMSSpamCollection:1: text_column='text' names a column, but the file "
                                         r"is read without a header \(header=False\)"):
        read_table(CLS / "sms_spam" / "SMSSpamCollection", format="tsv", header=False, text_column="text")


# ---------------------------------------------------------------------------------------------------------------
# tables: formats and errors on tiny files
# ---------------------------------------------------------------------------------------------------------------

def test_tsv_glue_style(tmp_path):
    p = write(tmp_path, "t.tsv", '\ufeffsentence\tlabel\r\nhe said "hi\t1\r\n\r\nit\'s "fine" , ok\t0\r\n')
    rows = read_table(p, text_column="sentence", label_column="label")
    assert rows == [Example('he said "hi', None, "1", 2), Example('it\'s "fine" , ok', None, "0", 4)]
    assert read_table(p, text_column=0)[0].label is None  # no label column
    assert read_table(p, text_column=-2, label_column=-1) == rows


def test_tsv_wrong_field_count(tmp_path):
    p = write(tmp_path, "bad.tsv", "sentence\tlabel\na\t1\nb\tc\t0\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:3: expected 2 tab-separated fields \(like the header\), "
                                         r"found 3"):
        read_table(p, text_column="sentence", label_column="label")
    p = write(tmp_path, "nohead.tsv", "1\ta\n0\n")
    with pytest.raises(ValueError, match=r"nohead\.tsv:2: expected 2 tab-separated fields \(like the first row\), "
                                         r"found 1"):
        read_table(p, header=False, text_column=1, label_column=0)


def test_unknown_column_lists_the_available_ones(tmp_path):
    p = write(tmp_path, "c.tsv", "sentence\tlabel\na\t1\n")
    with pytest.raises(ValueError, match=r"c\.tsv:1: no column 'text' for text_column; available columns: "
                                         r"\['sentence', 'label'\]"):
        read_table(p, text_column="text")
    with pytest.raises(ValueError, match=r"c\.tsv:1: label_column=2 is out of range: rows have 2 fields"):
        read_table(p, text_column=0, label_column=2)
    with pytest.raises(ValueError, match="no column 'x' for label_column"):
        read_table(write(tmp_path, "h.tsv", "sentence\tlabel\n"), text_column=0, label_column="x")
    with pytest.raises(ValueError, match="column name or an integer index"):
        read_table(p, text_column=1.5)


def test_empty_label_and_bad_utf8(tmp_path):
    p = write(tmp_path, "e.tsv", "sentence\tlabel\na\t1\nb\t \n")
    with pytest.raises(ValueError, match=r"e\.tsv:3: the label field \(column 1\) is empty"):
        read_table(p, text_column=0, label_column=1)
    blank = write(tmp_path, "e.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "  "}\n')
    with pytest.raises(ValueError, match=r"e\.jsonl:2: the label field \('label'\) is empty"):
        read_table(blank, text_column="text", label_column="label")
    p = write(tmp_path, "u.tsv", b"sentence\tlabel\na\t1\n\xff\t0\n")
    with pytest.raises(ValueError, match=r"u\.tsv:3: not valid UTF-8"):
        read_table(p, text_column=0, label_column=1)


def test_lone_carriage_returns_rows_of_empty_fields_and_long_fields(tmp_path):
    """Old Mac line ends (\\r) end lines in every format; a row whose fields are all empty is reported, not
    dropped (predict's output would no longer line up with its input); a CSV field may hold a long document."""
    tsv = write(tmp_path, "cr.tsv", b"hello there\tham\rspam it\tspam\rbye\tham\r")
    assert [(e.text, e.label, e.line) for e in read_table(tsv, text_column=0, label_column=1, header=False)] == [
        ("hello there", "ham", 1), ("spam it", "spam", 2), ("bye", "ham", 3)]
    conll = write(tmp_path, "cr.conll", b"John\tB-PER\rlives\tO\r\rParis\tB-LOC\r")
    assert read_conll(conll) == [TaggedSentence(["John", "lives"], ["B-PER", "O"], 1),
                                 TaggedSentence(["Paris"], ["B-LOC"], 4)]
    for name, content in (("e.tsv", "text\tlabel\na\t1\n\t\nb\t0\n"), ("e.csv", "text,label\na,1\n,\nb,0\n")):
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}:3: the label field \(column 1\) is empty"):
            read_table(write(tmp_path, name, content), text_column=0, label_column=1)
    long = "word " * 40_000  # 200,000 characters: over the csv module's default field limit
    p = write(tmp_path, "long.csv", f'text,label\n"{long}",pos\n')
    assert read_table(p, text_column="text", label_column="label")[0].text == long
    import csv
    assert csv.field_size_limit() == 131072  # the module's limit is left as it was


def test_csv_quoting_and_line_numbers(tmp_path):
    p = write(tmp_path, "d.csv", 'text,other,label\n"hello, world",x,pos\n"two\nlines",y,neg\nplain,z,pos\n')
    rows = read_table(p, text_column="text", text_pair_column="other", label_column="label")
    assert rows == [Example("hello, world", "x", "pos", 2), Example("two\nlines", "y", "neg", 3),
                    Example("plain", "z", "pos", 5)]
    bad = write(tmp_path, "bad.csv", 'text,label\nok,1\nshort\n')
    with pytest.raises(ValueError, match=r"bad\.csv:3: expected 2 comma-separated fields \(like the header\), "
                                         r"found 1"):
        read_table(bad, text_column="text", label_column="label")
    broken = write(tmp_path, "broken.csv", 'text,label\nok,1\n"a"b,0\n')
    with pytest.raises(ValueError, match=r"broken\.csv:3: bad CSV record"):
        read_table(broken, text_column="text", label_column="label")


def test_jsonl(tmp_path):
    p = write(tmp_path, "d.jsonl", '{"q": "a", "p": "b", "y": 1}\n\n{"q": "c", "p": "d", "y": 2.5}\n'
                                   '{"q": "e", "p": "f", "y": "neutral", "extra": [1]}\n')
    rows = read_table(p, text_column="q", text_pair_column="p", label_column="y")
    assert rows == [Example("a", "b", "1", 1), Example("c", "d", "2.5", 3), Example("e", "f", "neutral", 4)]

    cases = [
        ('{"q": "a", "y": 1}\n{"q": "b", "y": 1\n', r"bad\.jsonl:2: expected one JSON object per line"),
        ('{"q": "a", "y": 1}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object, got list"),
        ('{"q": "a", "y": 1}\n{"q": "b"}\n', r"bad\.jsonl:2: missing key 'y' \(label_column\); this object has "
                                             r"\['q'\]"),
        ('{"q": 5, "y": 1}\n', r"bad\.jsonl:1: expected a string for 'q', got 5"),
        ('{"q": "a", "y": null}\n', r"bad\.jsonl:1: expected a string or a number for 'y', got null"),
        ('{"text": "a", "y": 1}\n', r"bad\.jsonl:1: no column 'q' for text_column; available columns: "
                                    r"\['text', 'y'\]"),
        ('{"q": "a", "y": "pos"}\n{"q": "b", "y": ""}\n', r"bad\.jsonl:2: the label field \('y'\) is empty"),
    ]
    for content, message in cases:
        with pytest.raises(ValueError, match=message):
            read_table(write(tmp_path, "bad.jsonl", content), text_column="q", label_column="y")
    with pytest.raises(ValueError, match="JSONL rows are objects; choose text_column by key name"):
        read_table(p, text_column=0)


def test_multi_label_fields_may_be_empty_or_a_jsonl_list(tmp_path):
    p = write(tmp_path, "m.tsv", "text\tlabels\na\tx,y\nb\t\n")
    assert read_table(p, text_column=0, label_column=1, multi_label=True) == [Example("a", None, "x,y", 2),
                                                                               Example("b", None, "", 3)]
    j = write(tmp_path, "m.jsonl", '{"t": "a", "l": ["x", 2]}\n{"t": "b", "l": []}\n{"t": "c", "l": "x;y"}\n')
    assert read_table(j, text_column="t", label_column="l", multi_label=True) == [
        Example("a", None, ("x", "2"), 1), Example("b", None, (), 2), Example("c", None, "x;y", 3)]
    with pytest.raises(ValueError, match=r"m\.jsonl:1: expected a string or a number for 'l', got \[\"x\", 2\]; a "
                                         r"list of labels is for multi-label classification \(--multi-label\)$"):
        read_table(j, text_column="t", label_column="l")  # a list is for multi_label only
    bad = write(tmp_path, "bad.jsonl", '{"t": "a", "l": ["x", {"y": 1}]}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected a string or a number for 'l', got \{"):
        read_table(bad, text_column="t", label_column="l", multi_label=True)


def test_format_from_extension(tmp_path):
    p = write(tmp_path, "data.txt", "a\t1\n")
    with pytest.raises(ValueError, match=r"data\.txt: cannot tell the format from the extension '\.txt'; "
                                         r"pass the format \(--format csv, tsv or jsonl, or for predict text: "
                                         r"one text a line; format= in Python\)"):
        read_table(p, text_column=0)
    with pytest.raises(ValueError, match="format must be 'csv', 'tsv', 'jsonl' or 'text', got 'xml'"):
        read_table(p, format="xml", text_column=0)
    assert read_table(p, format="tsv", header=False, text_column=0, label_column=1) == [Example("a", None, "1", 1)]


def test_a_column_name_the_header_holds_twice_is_refused(tmp_path):
    """Choosing a column by a name two header fields share would silently take the first (refused from two such
    fields on, not only from three)."""
    p = write(tmp_path, "dup.tsv", "text\ttext\tlabel\na\tb\t1\n")
    with pytest.raises(ValueError) as e:
        read_table(p, text_column="text", label_column="label")
    assert str(e.value) == f"{p}:1: the header has 2 columns named 'text'; choose text_column by index"
    assert read_table(p, text_column=1, label_column="label") == [Example("b", None, "1", 2)]


def test_csv_rows_and_header_are_numbered_from_line_1(tmp_path):
    """A CSV's header is line 1 in errors, and a headerless CSV's first row is line 1 (not line 0)."""
    p = write(tmp_path, "d.csv", "sentence,label\nhi,1\n")
    with pytest.raises(ValueError) as e:
        read_table(p, text_column="text")
    assert str(e.value) == f"{p}:1: no column 'text' for text_column; available columns: ['sentence', 'label']"
    rows = read_table(write(tmp_path, "n.csv", "hi,1\nyo,0\n"), header=False, text_column=0, label_column=1)
    assert rows == [Example("hi", None, "1", 1), Example("yo", None, "0", 2)]


def test_a_jsonl_boolean_label_keeps_its_json_spelling(tmp_path):
    """true / false labels read as JSON spells them, like 1 and 2.5 (not Python's 'True')."""
    p = write(tmp_path, "b.jsonl", '{"t": "a", "y": true}\n{"t": "b", "y": false}\n{"t": "c", "y": 1.0}\n')
    rows = read_table(p, text_column="t", label_column="y")
    assert [r.label for r in rows] == ["true", "false", "1.0"]


def test_an_empty_table_with_a_header_is_an_error_naming_line_1(tmp_path):
    """A header is expected: an empty file is not an empty data set (an error, not an empty list)."""
    for name in ("empty.tsv", "blank.csv"):
        p = write(tmp_path, name, "" if name == "empty.tsv" else "\n\n")
        with pytest.raises(ValueError) as e:
            read_table(p, text_column=0)
        assert str(e.value) == f"{p}:1: expected a header line, the file is empty"


def test_the_first_data_row_is_checked_against_the_header_width(tmp_path):
    """The header sets the width; a first data row of another width is the error (not the first data row's width)."""
    p = write(tmp_path, "w.tsv", "text\tlabel\na\tb\t1\nc\t0\n")
    with pytest.raises(ValueError) as e:
        read_table(p, text_column=0, label_column=1)
    assert str(e.value) == f"{p}:2: expected 2 tab-separated fields (like the header), found 3"


# ---------------------------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------------------------

def test_label_helpers():
    assert label_set(["10", "2", "1", "2"]) == ["1", "2", "10"]  # numeric order when all are numbers
    assert label_set(["b", "10", "a"]) == ["10", "a", "b"]
    assert label_set(["1", "1.0", "0", " 1 ", "0.0"]) == ["0", "1"]  # one class per number, shortest spelling
    assert label_set(["pos ", "neg", "pos"]) == ["neg", "pos"]  # surrounding spaces are not part of a label
    assert label_set([Example("x", label="neg"), Example("y", label="pos")]) == ["neg", "pos"]
    with pytest.raises(ValueError, match="no label"):
        label_set([Example("x")])
    with pytest.raises(ValueError, match="no examples"):
        label_set([])
    id2label, label2id = label_maps(["neg", "pos", "neutral"])
    assert id2label == {0: "neg", 1: "pos", 2: "neutral"} and label2id == {"neg": 0, "pos": 1, "neutral": 2}
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        label_maps(["a", "b", "a"])
    assert is_regression(["3.800", "0.5", "5.000"])  # STS-B style
    assert not is_regression(["0", "1"])
    assert not is_regression(["1.0", "2.0"])  # integer-valued: class ids
    assert not is_regression(["0.5", "good"])
    assert not is_regression(["nan", "0.5"])


def test_a_label_is_named_by_its_shortest_spelling():
    """"01" and "1" are one class, named "1" (not the first in text order, "01")."""
    assert label_set(["01", "1", "2"]) == ["1", "2"]
    assert label_set(["+3", "3"]) == ["3"]


# ---------------------------------------------------------------------------------------------------------------
# CoNLL
# ---------------------------------------------------------------------------------------------------------------

def test_wnut17_train():
    sents = read_conll(need(DATA / "ner" / "wnut17" / "wnut17train.conll"))
    # The file separates its first 2,394 sentences with lines holding a lone tab, the rest with empty lines.
    assert len(sents) == 3394
    assert sum(len(s.tokens) for s in sents) == 62730
    assert sum(t.startswith("B-") for s in sents for t in s.tags) == 1975
    assert all(len(s.tokens) == len(s.tags) > 0 for s in sents)
    assert sents[0].line == 1 and sents[0].tokens[:3] == ["@paulwalk", "It", "'s"]
    assert sents[1].line == 29
    types = {t[2:] for s in sents for t in s.tags if t != "O"}
    assert types == {"person", "location", "group", "corporation", "product", "creative-work"}


def test_conll_formats_and_errors(tmp_path):
    p = write(tmp_path, "a.conll", "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n \n"
                                   "Peter NNP B-NP B-PER\n\n\n")
    assert read_conll(p) == [TaggedSentence(["EU", "rejects"], ["B-ORG", "O"], 3),
                             TaggedSentence(["Peter"], ["B-PER"], 6)]
    assert read_conll(p, tag_column=1)[0].tags == ["NNP", "VBZ"]
    t = write(tmp_path, "t.conll", "New York\tB-LOC\ncity\tO\n\t\nx\tO")  # tabs keep spaces inside tokens
    assert read_conll(t) == [TaggedSentence(["New York", "city"], ["B-LOC", "O"], 1), TaggedSentence(["x"], ["O"], 4)]

    bad = write(tmp_path, "bad.conll", "a\tO\nb\tB-PER\n\nc\n")
    with pytest.raises(ValueError, match=r"bad\.conll:4: expected a token column and a tag column .* found 1 "
                                         r"column\(s\): 'c'"):
        read_conll(bad)
    with pytest.raises(ValueError, match=r"bad\.conll:1: expected a token column and a tag column"):
        read_conll(write(tmp_path, "bad.conll", "a\tO\n"), tag_column=3)
    with pytest.raises(ValueError, match=r"bad\.conll:2: empty token in column 0"):
        read_conll(write(tmp_path, "bad.conll", "a\tO\n\tO\n"))
    with pytest.raises(ValueError, match=r"bad\.conll:3: 3 column\(s\) where line 1 has 2: 'the\\tO\\tEXTRA'"):
        read_conll(write(tmp_path, "bad.conll", "king\tB-PER\nof\tO\nthe\tO\tEXTRA\n"))  # not EXTRA as a tag
    # -DOCSTART- in the token column when that is not the first
    cols = write(tmp_path, "cols.conll", "1\t-DOCSTART-\tO\n\n1\tParis\tB-LOC\n")
    assert read_conll(cols, token_column=1) == [TaggedSentence(["Paris"], ["B-LOC"], 3)]
    with pytest.raises(ValueError, match=r"squad\.json: a CoNLL file is plain text, one token per line; got a "
                                         r"\.json file$"):   # given to a tagger by mistake: not read as tokens
        read_conll(write(tmp_path, "squad.json", '{"data": [{"title": "x"}]}\tO\n'))


def test_docstart_first_is_skipped_whatever_the_token_column(tmp_path):
    """-DOCSTART- in the first field is a separator even when the tokens are in column 1 (the first field is
    looked at, not only the token column, or "-X-" would be a sentence)."""
    p = write(tmp_path, "d.conll", "-DOCSTART-\t-X-\tO\n\n1\tParis\tB-LOC\n2\tis\tO\n")
    assert read_conll(p, token_column=1) == [TaggedSentence(["Paris", "is"], ["B-LOC", "O"], 3)]


def test_a_tag_column_that_is_the_token_column_is_refused(tmp_path):
    """tag_column=-2 of a two-column file is column 0, the tokens (refused, not tags silently equal to the tokens)."""
    p = write(tmp_path, "t.conll", "John\tB-PER\nlives\tO\n")
    with pytest.raises(ValueError) as e:
        read_conll(p, tag_column=-2)
    assert str(e.value) == (f"{p}:1: expected a token column and a tag column (token_column=0, tag_column=-2), "
                            "found 2 column(s): 'John\\tB-PER'")


def test_tags_lose_surrounding_spaces_and_an_empty_tag_is_refused(tmp_path):
    """A tab-separated tag keeps no trailing spaces ("B-PER " is no label of its own), and a tag of
    spaces is an error naming its line."""
    p = write(tmp_path, "s.conll", "John\tB-PER  \nlives\t O\n")
    assert read_conll(p) == [TaggedSentence(["John", "lives"], ["B-PER", "O"], 1)]
    bad = write(tmp_path, "e.conll", "John\tB-PER\nlives\t  \n")
    with pytest.raises(ValueError) as e:
        read_conll(bad)
    assert str(e.value) == f"{bad}:2: empty tag in column -1: 'lives\\t  '"


def test_a_line_with_fewer_columns_than_the_first_is_refused(tmp_path):
    """A missing column shifts tag_column=-1 onto another column, as a stray one does (so fewer columns are
    refused, as more are)."""
    p = write(tmp_path, "f.conll", "EU\tNNP\tB-ORG\nrejects\tO\n")
    with pytest.raises(ValueError) as e:
        read_conll(p)
    assert str(e.value) == f"{p}:2: 2 column(s) where line 1 has 3: 'rejects\\tO'"


def test_conll_names_any_case_json_lines_and_explicit(tmp_path):
    """A .CONLL name makes a file CoNLL as .conll does (the suffix read in any case), a .jsonl file is refused
    as not CoNLL (not read as tokens), and explicit=True (--format conll) reads a file of equally long
    lines as CoNLL (not refused)."""
    rows = "Bob B-PER\nsaw O\nRome B-LOC\n"
    assert read_conll(write(tmp_path, "UPPER.CONLL", rows)) == [
        TaggedSentence(["Bob", "saw", "Rome"], ["B-PER", "O", "B-LOC"], 1)]
    assert read_conll(write(tmp_path, "rows.txt", rows), explicit=True) == read_conll(tmp_path / "UPPER.CONLL")
    j = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n')
    with pytest.raises(ValueError) as e:
        read_conll(j)
    assert str(e.value) == f"{j}: a CoNLL file is plain text, one token per line; got a .jsonl file"


# ---------------------------------------------------------------------------------------------------------------
# SQuAD
# ---------------------------------------------------------------------------------------------------------------

def test_squad_v11_dev_zip():
    qs = read_squad(need(DATA / "qa" / "squad" / "dev-v1.1.json.zip"))
    assert len(qs) == 10570  # every answer offset matches its context (checked while reading)
    assert len({q.title for q in qs}) == 48 and len({q.context for q in qs}) <= 2067
    assert not any(q.is_impossible for q in qs) and all(q.answers for q in qs)
    q = qs[0]
    assert (q.qid, q.title, q.answers[0]) == ("56be4db0acb8001400a502ec", "Super_Bowl_50", ("Denver Broncos", 177))
    assert q.question == "Which NFL team represented the AFC at Super Bowl 50?"


def test_squad_v2_excerpt():
    qs = read_squad(need(DATA / "qa" / "squad" / "dev-v2.0.excerpt-Normans-Rhine.json"))
    assert len(qs) == 706
    assert sum(q.is_impossible for q in qs) == 320
    assert all((q.answers == []) == q.is_impossible for q in qs)
    assert {q.title for q in qs} == {"Normans", "Rhine"}


def _squad(answer_start: int = 0, text: str = "A cat") -> dict:
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "A cat sat.", "qas": [
        {"id": "q1", "question": "who?", "answers": [{"text": text, "answer_start": answer_start}]}]}]}]}


def test_squad_errors(tmp_path):
    ok = write(tmp_path, "ok.json", json.dumps(_squad()))
    assert read_squad(ok) == [SquadExample("q1", "who?", "A cat sat.", [("A cat", 0)], False, "T")]
    off = write(tmp_path, "off.json", json.dumps(_squad(answer_start=1)))
    with pytest.raises(ValueError, match=r"off\.json: 1 answer span\(s\) do not match their context; first: "
                                         r"question q1: answer 'A cat' at 1"):
        read_squad(off)
    with pytest.warns(UserWarning, match="question q1"):
        assert read_squad(off, strict=False)[0].answers == [("A cat", 1)]
    with pytest.raises(ValueError, match=r"bad\.json:1: bad JSON"):
        read_squad(write(tmp_path, "bad.json", '{"data": [}'))
    # a negative start or an empty text would pass the context check (Python slices): refused by name
    for start, text in ((-7, "sat."), (2, ""), (True, "A cat")):
        with pytest.raises(ValueError, match="question q1: an answer needs a non-empty string 'text' and an integer "
                                             "'answer_start' >= 0"):
            read_squad(write(tmp_path, "neg.json", json.dumps(_squad(answer_start=start, text=text))))
    # ("", -1) on an unanswerable question is a placeholder, not an answer
    v2 = _squad(answer_start=-1, text="")
    v2["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"] = True
    assert read_squad(write(tmp_path, "v2.json", json.dumps(v2)))[0].answers == []
    with pytest.raises(ValueError, match=r"nu\.json:2: not valid UTF-8"):
        read_squad(write(tmp_path, "nu.json", b'{"data":\n [\xff]}'))
    for name, text in (("number.json", "5"), ("nodata.json", '{"data": {}}')):
        with pytest.raises(ValueError, match="expected SQuAD JSON"):
            read_squad(write(tmp_path, name, text))
    assert read_squad(write(tmp_path, "list.json", "[]")) == []   # a JSON list of flat records, here none
    zp = tmp_path / "two.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("a.json", "{}")
        zf.writestr("b.json", "{}")
    with pytest.raises(ValueError, match=r"two\.zip: expected a zip holding exactly one \.json file"):
        read_squad(zp)
    zp = tmp_path / "one.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("inner.json", json.dumps(_squad()))
    assert read_squad(zp) == read_squad(ok)
    with pytest.raises(ValueError, match=r"damaged\.zip: not a readable zip file"):
        read_squad(write(tmp_path, "damaged.zip", b"PK\x03\x04 cut short"))


def _squad_with(change) -> str:
    data = _squad()
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["data"].__setitem__(0, "x"), r"article 0: expected an object, got \"x\""),
    (lambda d: d["data"][0].__setitem__("paragraphs", "abc"), r"article 0: 'paragraphs' must be a list"),
    (lambda d: d["data"][0]["paragraphs"].__setitem__(0, [1]), r"article 0 \('T'\) paragraph 0: expected an object"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"].__setitem__(0, "q"),
     r"paragraph 0 question 0: expected an object, got \"q\""),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].__setitem__("id", ["a"]),
     r"a question without a string 'id' and 'question' \(id \['a'\]\)"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].__setitem__("is_impossible", "false"),
     r"question q1: 'is_impossible' must be true or false, got 'false'"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].__setitem__("text", 5),
     r"question q1: an answer needs a non-empty string 'text' and an integer 'answer_start'"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"].append(d["data"][0]["paragraphs"][0]["qas"][0]),
     r"question id 'q1' appears twice; ids must be unique"),
])
def test_squad_structure_errors_name_the_place(tmp_path, change, message):
    with pytest.raises(ValueError, match=r"bad\.json: .*" + message):
        read_squad(write(tmp_path, "bad.json", _squad_with(change)))


def _squad_question(**qa) -> str:
    question = {"id": "q1", "question": "who?", "answers": [{"text": "A cat", "answer_start": 0}], **qa}
    return json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "A cat sat.", "qas": [question]}]}]})


def test_a_zip_made_on_a_mac_reads_its_one_json(tmp_path):
    """macOS' zip adds __MACOSX/._name.json, resource forks that are not JSON (not counted, so one file)."""
    zp = tmp_path / "dev.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("dev.json", _squad_question())
        zf.writestr("__MACOSX/._dev.json", b"\x00\x05\x16\x07 not json")
    assert [(q.qid, q.answers) for q in read_squad(zp)] == [("q1", [("A cat", 0)])]


def test_squad_answers_and_is_impossible_must_agree(tmp_path):
    """An unanswerable question with an answer, or a labelled answerable one without, is refused (both
    are checked); labelled=False takes questions without answers (not refused)."""
    both = write(tmp_path, "both.json", _squad_question(is_impossible=True))
    with pytest.raises(ValueError) as e:
        read_squad(both)
    assert str(e.value) == f"{both}: question q1 is marked is_impossible but has answers"
    none = write(tmp_path, "none.json", _squad_question(answers=[]))
    with pytest.raises(ValueError) as e:
        read_squad(none)
    assert str(e.value) == f"{none}: question q1 has no answers and is not marked is_impossible"
    q = read_squad(none, labelled=False)[0]
    assert (q.qid, q.answers, q.is_impossible) == ("q1", [], False)


def _flat(e: SquadExample, answers: bool = True) -> dict:
    """`e` as a record of run_qa.py's and the `datasets` library's flat layout."""
    record = {"id": e.qid, "title": e.title, "context": e.context, "question": e.question}
    if answers:
        record["answers"] = {"text": [t for t, _ in e.answers], "answer_start": [a for _, a in e.answers]}
    return record


def test_flat_records_read_as_the_nested_file(tmp_path):
    """run_qa.py's and `datasets`' layout, as JSON Lines (.jsonl, or a .json of lines as Dataset.to_json writes),
    a JSON list or a JSON object's "data" list, gives the examples of the nested SQuAD file it was made from;
    an empty answers list is an unanswerable question."""
    nested = read_squad(need(DATA / "qa" / "squad" / "dev-v2.0.excerpt-Normans-Rhine.json"))
    records = [_flat(e) for e in nested]
    lines = "\n".join(json.dumps(r) for r in records)
    files = [write(tmp_path, "dev.jsonl", lines + "\n"), write(tmp_path, "dev.ndjson", "\n\n" + lines),
             write(tmp_path, "lines.json", lines.replace("\n", "\r\n")),
             write(tmp_path, "list.json", json.dumps(records)),
             write(tmp_path, "run_qa.json", json.dumps({"version": "v2.0", "data": records}))]
    for path in files:
        assert read_squad(path) == nested, path
    assert sum(e.is_impossible for e in nested) == 320 and records[0]["answers"] != {"text": [], "answer_start": []}
    assert {"text": [], "answer_start": []} in [r["answers"] for r in records]


def test_flat_records_without_answers_are_questions_to_answer(tmp_path):
    v1 = [SquadExample("q1", "who?", "A cat sat.", [("A cat", 0)], False, "T")]
    path = write(tmp_path, "ask.jsonl", json.dumps(_flat(v1[0], answers=False)))
    assert read_squad(path, labelled=False) == [SquadExample("q1", "who?", "A cat sat.", [], False, "T")]
    with pytest.raises(ValueError) as e:
        read_squad(path)
    assert str(e.value) == f"{path}: question q1 has no answers and is not marked is_impossible"


@pytest.mark.parametrize("line, message", [
    ('{"id": "q1", "question": "who?", "context": "A cat sat.", "answers": {"text": ["A cat"]}}',
     "{path}:2: 'answers' must be an object with 'text' and 'answer_start' lists of the same length, "
     'got {{"text": ["A cat"]}}'),
    ('{"id": "q1", "question": "who?", "context": "A cat sat.", "answers": [{"text": "A cat", "answer_start": 0}]}',
     "{path}:2: 'answers' must be an object with 'text' and 'answer_start' lists of the same length, "
     'got [{{"text": "A cat", "answer_start": 0}}]'),
    ('{"id": "q1", "question": "who?", "answers": {"text": [], "answer_start": []}}',
     "{path}:2 has no 'context' string"),
    ('{"id": 7, "question": "who?", "context": "A cat sat."}',
     "{path}:2: a question without a string 'id' and 'question' (id 7)"),
    ('["q1"]', '{path}:2: expected an object, got ["q1"]'),
    ('{"id": "q1", "question": "who?"',
     "{path}:2: expected one JSON object per line (Expecting ',' delimiter at column 32)"),
    ('{"id": "q2", "question": "who?", "context": "A cat sat.", "answers": {"text": ["A dog"], "answer_start": [0]}}',
     "{path}: 1 answer span(s) do not match their context; first: question q2: answer 'A dog' at 0 does not match "
     "the context there ('A cat')"),
    ('{"id": "q2", "question": "who?", "context": "A cat sat.", "answers": {"text": [""], "answer_start": [0]}}',
     "{path}: question q2: an answer needs a non-empty string 'text' and an integer 'answer_start' >= 0, "
     "got {{'text': '', 'answer_start': 0}}"),
])
def test_flat_record_errors_name_the_line(tmp_path, line, message):
    first = ('{"id": "q0", "question": "who?", "context": "A cat sat.", '
             '"answers": {"text": ["A cat"], "answer_start": [0]}}')
    path = write(tmp_path, "bad.jsonl", first + "\n" + line + "\n")
    with pytest.raises(ValueError) as e:
        read_squad(path)
    assert str(e.value) == message.format(path=path)


def test_a_json_file_with_text_after_it_is_bad_json_not_json_lines(tmp_path):
    """Only a first line that is a question record makes a .json file JSON Lines: SQuAD JSON (pretty-printed or
    on one line) followed by more text is the JSON error at the line where the extra text starts."""
    nested = json.dumps(_squad())
    pretty = json.dumps(_squad(), indent=1)
    for name, text, line in (("one.json", nested + "\n{}", 2), ("pretty.json", pretty + " x", pretty.count("\n") + 1)):
        path = write(tmp_path, name, text)
        with pytest.raises(ValueError) as e:
            read_squad(path)
        assert str(e.value).startswith(f"{path}:{line}: bad JSON (Extra data at column "), str(e.value)


def test_flat_records_of_a_json_list_are_named_by_index(tmp_path):
    path = write(tmp_path, "bad.json", json.dumps([{"id": "q1", "question": "who?", "context": 5}]))
    with pytest.raises(ValueError) as e:
        read_squad(path)
    assert str(e.value) == f"{path}: record 0 has no 'context' string"


# ---------------------------------------------------------------------------------------------------------------
# line ends, BOM, encodings: every reader
# ---------------------------------------------------------------------------------------------------------------

def _read_choices(p):
    from bertkit.tasks.choice import read_choices
    return read_choices(p, context_column="q", choice_columns="a,b", label_column="label")


def _read_tokens(p):
    from bertkit.tasks.tag import read_tokens
    return read_tokens(p)


SQUAD_LF = json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "A cat sat.", "qas": [
    {"id": "q1", "question": "who?", "answers": [{"text": "A cat", "answer_start": 0}]}]}]}]}, indent=1) + "\n"

# (file name, LF content, reader): each reads the same rows from every line-end and BOM variant of its file
READERS = [
    ("t.csv", 'text,label\n"a, b",1\n"two\nlines",0\nx\ty,1\n', lambda p: read_table(p, text_column=0, label_column=1)),
    ("t.tsv", 'text\tlabel\nhe said "hi\t1\n\nok\t0\n', lambda p: read_table(p, text_column=0, label_column=1)),
    ("t.jsonl", '{"text": "a\\r\\nb", "label": 1}\n\n{"text": "c", "label": "x"}\n',
     lambda p: read_table(p, text_column="text", label_column="label")),
    ("t.conll", "-DOCSTART-\tO\n\nJohn\tB-PER\nlives\tO\n\t\nParis\tB-LOC\n", read_conll),
    ("p.conll", "John\tB-PER\nlives\tO\n\nParis\tB-LOC\n", _read_tokens),
    ("s.json", SQUAD_LF, read_squad),
    ("mc.csv", 'q,a,b,label\n"which\none",x,y,0\nwho,z,w,1\n', _read_choices),
]


@pytest.mark.parametrize("name,text,read", READERS, ids=[r[0] for r in READERS])
def test_crlf_lone_cr_bom_and_final_lines_read_like_the_lf_file(tmp_path, name, text, read):
    """A CRLF file reads exactly like its LF version, quoted multi-line CSV fields included (they held "\\r\\n");
    so do an old-Mac (lone \\r) file, a leading BOM, a last line without its newline and trailing blank lines."""
    expected = read(write(tmp_path, "lf_" + name, text))
    assert expected  # each file holds something to read
    variants = {"crlf": text.replace("\n", "\r\n"), "cr": text.replace("\n", "\r"), "bom": "\ufeff" + text,
                "bom_crlf": "\ufeff" + text.replace("\n", "\r\n"), "no_final_newline": text.rstrip("\n"),
                "trailing_blank_lines": text + "\n\r\n\n"}
    for variant, content in variants.items():
        assert read(write(tmp_path, f"{variant}_{name}", content)) == expected, variant


def test_a_streamed_table_reads_like_its_lf_file_whatever_its_read_buffers_cut(tmp_path):
    """Tables are read a line at a time through buffers of a few KiB: a CRLF whose \\r and \\n fall in two
    buffers, a quoted CSV field of several lines across buffers, or a character of several bytes cut by one,
    reads as in the LF file. In the CRLF file of these 2,000 rows (67 kB), io's 8 KiB reads cut a CRLF (the fifth)
    and a UTF-8 character (the fourth and seventh)."""
    import random
    rng = random.Random(0)
    rows = [(" ".join(rng.choice(["a", "bb", "é", "数据", '"q"']) for _ in range(rng.randint(1, 9))),
             "\n".join("x" * rng.randint(0, 5) for _ in range(rng.randint(1, 3)))) for _ in range(2000)]
    lf = "text,note\n" + "".join(f'"{t.replace(chr(34), chr(34) * 2)}","{n}"\n' for t, n in rows)
    expected = read_columns(write(tmp_path, "lf.csv", lf), {"t": "text", "n": "note"})
    assert [(v["t"], v["n"]) for _, v in expected] == rows
    for name, content in (("crlf", lf.replace("\n", "\r\n")), ("cr", lf.replace("\n", "\r"))):
        assert read_columns(write(tmp_path, f"{name}.csv", content), {"t": "text", "n": "note"}) == expected, name
    tsv = "text\n" + "".join(t + "\n" for t, _ in rows)
    want = read_columns(write(tmp_path, "lf.tsv", tsv), {"t": 0})
    assert [v["t"] for _, v in want] == [t for t, _ in rows]
    assert read_columns(write(tmp_path, "crlf.tsv", tsv.replace("\n", "\r\n")), {"t": 0}) == want


@pytest.mark.parametrize("name,text,read", READERS, ids=[r[0] for r in READERS])
def test_a_byte_that_is_not_utf8_is_named_by_line_and_place_whatever_the_line_ends(tmp_path, name, text, read):
    """The bad byte sits on line 3 of every variant (lone \\r files were all reported on line 1), named by its
    column in the files read a line at a time and by its offset in SQuAD's JSON, read whole; a UTF-16 file
    (Excel's "Unicode text") is named as such."""
    lines = text.split("\n")
    lines[2] = "\xe9" + lines[2]  # é, then written as Latin-1
    for end in ("\n", "\r\n", "\r"):
        raw = end.join(lines).encode("latin-1")
        p = write(tmp_path, name, raw)
        with pytest.raises(ValueError) as e:
            read(p)
        offset, streamed = raw.index(b"\xe9"), not name.endswith(".json")   # SQuAD's JSON is read whole
        place = "(byte 0xe9 at column 1)" if streamed else f"(byte 0xe9) at offset {offset}"
        assert str(e.value) == f"{p}:3: not valid UTF-8 {place}; save it as UTF-8", end
    p = write(tmp_path, name, text.encode("utf-16"))
    with pytest.raises(ValueError) as e:
        read(p)
    assert str(e.value) == f"{p}: a UTF-16 file (it starts with a UTF-16 byte-order mark); save it as UTF-8"


def test_a_json_error_in_a_lone_cr_squad_file_names_its_line(tmp_path):
    for end in ("\n", "\r\n", "\r"):
        p = write(tmp_path, "bad.json", end.join(['{"data": [', '{"title": "x",', ' "paragraphs": [}', "]}"]))
        with pytest.raises(ValueError, match=r"bad\.json:3: bad JSON \(Expecting value at column 17\)"):
            read_squad(p)


def test_a_table_of_sentences_is_not_read_as_one_conll_sentence(tmp_path):
    """A GLUE style TSV given as CoNLL: each row's text would be one "token" of a single sentence (and its labels
    the tags). Refused where most tokens of a sentence hold spaces; a multi-word token here and there is kept."""
    message = (": most tokens (column 0) of this sentence hold spaces, like 'Bob saw Rome': a table of sentences? "
               "Expected a CoNLL file, one token a line (then its tags, tab-separated), blank lines between sentences")
    for name, text, line in (("table.tsv", "text\tlabel\nBob saw Rome\t1\nEmma went to Los Angeles\t0\n", 2),
                             ("noheader.tsv", "Bob saw Rome\t1\n", 1)):
        p = write(tmp_path, name, text)
        with pytest.raises(ValueError) as e:
            read_conll(p)
        assert str(e.value) == f"{p}:{line}{message}"
    ok = write(tmp_path, "ok.conll", "New York\tB-LOC\nis\tO\nbig\tO\n\nLos Angeles\tB-LOC\ntoo\tO\n")
    assert [s.tokens for s in read_conll(ok)] == [["New York", "is", "big"], ["Los Angeles", "too"]]


def test_a_text_file_whose_lines_hold_equally_many_words_is_not_read_as_conll(tmp_path):
    """Sentences one a line, each of 3 words (or a single sentence), read as CoNLL would be one sentence of the
    lines' first words, the others taken for tags: refused by name for predict and training alike, while tabs,
    blank lines between sentences, -DOCSTART- or a .conll name keep a file CoNLL, and the real WNUT-17 files
    (and a copy with spaces for tabs) read as before."""
    text = write(tmp_path, "sentences.txt", "Bob saw Rome\nEmma met Carol\nAlice flew home\n")
    one = write(tmp_path, "one.txt", "Emma went to Paris\n")
    for p, words, line in ((text, 3, "Bob saw Rome"), (one, 4, "Emma went to Paris")):
        for read in (read_conll, _read_tokens):
            with pytest.raises(ValueError) as e:
                read(p)
            assert str(e.value) == (f"{p}:1: {words} space-separated words on every line and no blank line between "
                                    "sentences: a text file, one sentence a line? predict reads one with --format "
                                    "text; a CoNLL file (one token a line, then its tags) is read with --format "
                                    "conll, or needs tabs between its columns, blank lines between its sentences or "
                                    f"a .conll name: {line!r}")
    for name, content, first in (("tabs.txt", "Bob\tB-PER\nsaw\tO\nRome\tB-LOC\n", 1),
                                 ("blank.txt", "Bob B-PER\nsaw O\nRome B-LOC\n\nEmma B-PER\n", 1),
                                 ("docstart.txt", "-DOCSTART- O\nBob B-PER\nsaw O\nRome B-LOC\n", 2),
                                 ("named.conll", "Bob B-PER\nsaw O\nRome B-LOC\n", 1)):
        sentence = read_conll(write(tmp_path, name, content))[0]
        assert sentence == TaggedSentence(["Bob", "saw", "Rome"], ["B-PER", "O", "B-LOC"], first), name
    for name, sentences, tokens in (("wnut17train.conll", 3394, 62730), ("emerging.dev.conll", 1009, 15733),
                                    ("emerging.test.annotated", 1287, 23394)):
        path = need(DATA / "ner" / "wnut17" / name)
        read = read_conll(path)
        assert (len(read), sum(len(s.tokens) for s in read)) == (sentences, tokens)
        assert [(s.line, s.tokens) for s in read] == _read_tokens(path)
        spaced = write(tmp_path, "spaced_" + name, path.read_text(encoding="utf-8").replace("\t", " "))
        assert [s.tokens for s in read_conll(spaced)] == [s.tokens for s in read]  # CoNLL-2003 style: spaces


def test_a_file_of_one_token_a_line_is_read_for_prediction(tmp_path):
    """One word a line (no tags) is a CoNLL file to predict, not a text file of one-word sentences (the
    "equally many words" refusal does not apply to one word a line)."""
    from bertkit.tasks.tag import read_tokens
    p = write(tmp_path, "tokens.txt", "Bob\nsaw\nRome\n")
    assert read_tokens(p) == [(1, ["Bob", "saw", "Rome"])]
