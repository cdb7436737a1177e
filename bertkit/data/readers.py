"""Fine-tuning data readers: CSV / TSV / JSONL tables, CoNLL tag columns and SQuAD JSON.

The table and CoNLL readers remember the 1-based line each row or sentence came from (SQuAD examples keep their
question id), and every problem in a file is a ``ValueError`` that starts with the path (``path:LINE:`` where the
file has lines) and says what was expected.

- `read_table` reads sentence (or sentence-pair) classification and regression data. TSV is GLUE style: split on tabs,
  no quoting (GLUE sentences hold unbalanced ``"``), a UTF-8 BOM (MRPC) is dropped. CSV goes through the `csv`
  module. JSONL holds one object per line. Columns are chosen by header name or by 0-based index (negative counts
  from the end). `iter_table` reads the rows a line at a time (what `bertkit predict` streams), `read_table`
  into a list.
- `label_set`, `label_maps` and `is_regression` turn the labels into a model config's ``id2label`` / ``label2id``.
- `read_conll` reads ``token<TAB>tag`` (or whitespace-separated) columns with blank lines between sentences.
- `read_squad` reads SQuAD v1.1 / v2.0 JSON, plain or zipped, or the flat records of transformers' run_qa.py and
  the `datasets` library (JSON Lines, or a JSON "data" list), and checks every answer span against its context.

Every reader takes UTF-8 (a leading BOM dropped) with LF, CRLF or old-Mac lone-CR line ends alike; a byte that is
not UTF-8 is an error naming the file, its line and its column (tables, text, CoNLL, JSON Lines: read a line at a
time) or offset (SQuAD JSON, read whole).
"""
from __future__ import annotations

import csv
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from itertools import chain
from typing import Any, Iterable, Iterator, Sequence

from ..checks import is_int
from ..io import decode_text, read_lines
from ..warn import warn

__all__ = [
    "Example",
    "TaggedSentence",
    "SquadExample",
    "read_table",
    "iter_table",
    "read_columns",
    "iter_columns",
    "table_format",
    "label_set",
    "label_maps",
    "is_regression",
    "read_conll",
    "iter_conll",
    "read_squad",
]

@dataclass(frozen=True)
class Example:
    """One row of a classification / regression table. ``label`` is the label's text (a multi-label row's labels:
    the field, or a tuple from a JSONL list), None without a label column."""
    text: str
    text_pair: str | None = None
    label: str | tuple[str, ...] | None = None
    line: int = 0


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence of a CoNLL file; ``line`` is the line of its first token."""
    tokens: list[str]
    tags: list[str]
    line: int = 0


@dataclass(frozen=True)
class SquadExample:
    """One SQuAD question. ``answers`` is a list of ``(text, start)`` with ``start`` a character offset into
    ``context``; it is empty for an unanswerable (v2.0) question."""
    qid: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)
    is_impossible: bool = False
    title: str = ""


# ----------------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------------

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def table_format(path: str | Path, format: str | None = None) -> str | None:
    """`format` when given, else the one the extension names (.csv, .tsv, .jsonl / .ndjson), else None."""
    return format if format is not None else _FORMATS.get(Path(path).suffix.lower())


_LINE_END = re.compile(r"\r\n|\r|\n")


def _decode(raw: bytes, where: str) -> str:
    """UTF-8 text (`bertkit.io.decode_text`: BOM dropped, a bad byte named) with every line end made \\n, so that a
    CRLF or old-Mac (lone \\r) file reads exactly like its LF version, line numbers and multi-line quoted CSV fields
    included. Lines are then split at \\n only, not by `str.splitlines`, which also breaks at characters text may
    hold (\\x0c, \\u2028...)."""
    return _LINE_END.sub("\n", decode_text(raw, where))


def _lines(path: Path, delimiter: str | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a table or text file, streamed (`bertkit.io.read_lines`), skipping blank
    lines; with a `delimiter` (a table), only empty lines are skipped: a line of spaces, or one holding the
    delimiter, is a row even when its fields are empty (an empty text to predict, or empty fields for the reader
    to report)."""
    for n, line in read_lines(path):
        if line.strip() or (delimiter is not None and line):
            yield n, line


def _resolve(spec: Any, names: Sequence[str] | None, width: int, where: str, role: str) -> int:
    """The 0-based field index of a column chosen by name (needs a header) or by index."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise ValueError(f"{role} must be a column name or an integer index, got {spec!r}")
    if isinstance(spec, int):
        if not -width <= spec < width:
            raise ValueError(f"{where}: {role}={spec} is out of range: rows have {width} fields"
                             + (f" ({list(names)})" if names else ""))
        return spec % width
    if names is None:
        raise ValueError(f"{where}: {role}={spec!r} names a column, but the file is read without a header "
                         f"(header=False); choose columns by 0-based index")
    if spec not in names:
        raise ValueError(f"{where}: no column {spec!r} for {role}; available columns: {list(names)}")
    if list(names).count(spec) > 1:
        raise ValueError(f"{where}: the header has {list(names).count(spec)} columns named {spec!r}; "
                         f"choose {role} by index")
    return list(names).index(spec)


def _rows_delimited(path: Path, fmt: str) -> Iterator[tuple[int, list[str]]]:
    if fmt == "tsv":
        for n, line in _lines(path, "\t"):
            yield n, line.split("\t")
        return
    # every line end given back as \n: a quoted field over several lines holds \n, whatever the file's line ends
    reader = csv.reader((line + "\n" for _, line in read_lines(path)), strict=True)
    start = 1
    limit = csv.field_size_limit()
    csv.field_size_limit(2 ** 31 - 1)  # a long document is one field: the module's default stops at 131,072 chars
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise ValueError(f"{path}:{start}: bad CSV record ({e})") from None
            if row:  # not a blank line: a row, though its fields be empty or spaces (`""` included)
                yield start, row
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)


def _label_text(value: Any, where: str, key: str, list_hint: str = "") -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # keep the JSON spelling: 1, 2.5, true
    hint = f"; {list_hint}" if list_hint and isinstance(value, list) else ""
    raise ValueError(f"{where}: expected a string or a number for {key!r}, got {json.dumps(value)[:60]}{hint}")


def _read_jsonl(path: Path, keys: dict[str, Any], label_roles: Sequence[str], label_lists: Sequence[str],
                list_hint: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for role, key in keys.items():
        if key is not None and not isinstance(key, str):
            raise ValueError(f"{path}: JSONL rows are objects; choose {role} by key name, got {key!r}")
    first = True
    for n, obj in _json_rows(_lines(path), path):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if first:  # an unknown column is a mistake in the call, not in this row: list what there is
            for role, key in keys.items():
                if key is not None and key not in obj:
                    raise ValueError(f"{where}: no column {key!r} for {role}; available columns: {list(obj)}")
            first = False
        values = {}
        for role, key in keys.items():
            if key is None:
                values[role] = None
                continue
            if key not in obj:
                raise ValueError(f"{where}: missing key {key!r} ({role}); this object has {list(obj)}")
            value = obj[key]
            if role in label_lists:  # labels: a list of them, or one string the caller splits; none is fine
                values[role] = (tuple(_label_text(v, where, key) for v in value) if isinstance(value, list)
                                else _label_text(value, where, key))
            elif role in label_roles:
                values[role] = _label_text(value, where, key, list_hint)
                if not values[role].strip():
                    raise ValueError(f"{where}: the {role.removesuffix('_column')} field ({key!r}) is empty")
            elif not isinstance(value, str):
                raise ValueError(f"{where}: expected a string for {key!r}, got {json.dumps(value)[:60]}")
            else:
                values[role] = value
        yield n, values


def _json_rows(lines: Iterable[tuple[int, str]], where: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of JSON Lines given as (line number, non-blank line); a bad line names itself."""
    for n, line in lines:
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}:{n}: expected one JSON object per line ({e.msg} at column {e.colno})") from None


def read_columns(path: str | Path, columns: dict[str, str | int | None], *, format: str | None = None,
                 header: bool = True, label_roles: Sequence[str] = ("label_column",), label_lists: Sequence[str] = (),
                 list_hint: str = "") -> list[tuple[int, dict[str, Any]]]:
    """`iter_columns`, every row in a list."""
    return list(iter_columns(path, columns, format=format, header=header, label_roles=label_roles,
                             label_lists=label_lists, list_hint=list_hint))


def iter_columns(path: str | Path, columns: dict[str, str | int | None], *, format: str | None = None,
                 header: bool = True, label_roles: Sequence[str] = ("label_column",), label_lists: Sequence[str] = (),
                 list_hint: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """The chosen columns of every row of a CSV, TSV or JSONL table, read a line at a time (a file of any size
    costs one row's memory): ``(line, {role: value})``, None for a role
    whose column is None. `columns` maps a role (the name errors use, e.g. "text_column") to a header name or a
    0-based index (JSONL: a key). The roles in `label_roles` must not be empty and, in JSONL, may be numbers (kept
    in their JSON spelling); the others are text. A role in `label_lists` holds a row's labels, of which there may
    be none: a field that may be empty, in JSONL also a list of labels (a tuple of their texts); `list_hint` says
    what a list refused in another label role is for. `read_table` is this with the classification roles."""
    path = Path(path)
    fmt = _checked_format(path, format)
    if fmt == "jsonl":
        yield from _read_jsonl(path, columns, label_roles, label_lists, list_hint)
    elif fmt == "text":
        yield from _read_plain(path, columns)
    else:
        yield from _read_delimited(path, fmt, columns, header, label_roles, label_lists)


def _checked_format(path: Path, format: str | None) -> str:
    """The table's format: given, or told by the extension."""
    fmt = table_format(path, format)
    if fmt not in ("csv", "tsv", "jsonl", "text"):
        if format is None:
            raise ValueError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                             f"pass the format (--format csv, tsv or jsonl, or for predict text: one text a line; "
                             f"format= in Python)")
        raise ValueError(f"format must be 'csv', 'tsv', 'jsonl' or 'text', got {format!r}")
    return fmt


def _read_delimited(path: Path, fmt: str, columns: dict[str, str | int | None], header: bool,
                    label_roles: Sequence[str], label_lists: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """`iter_columns` for CSV and TSV: every row as wide as the header (or, without one, the first row)."""
    rows = _rows_delimited(path, fmt)
    header_line, names = _read_header(rows, path) if header else (None, None)
    required = [role for role in label_roles if role not in label_lists]  # label fields that must not be empty
    idx: dict[str, int | None] = {}
    width = 0
    for n, row in rows:
        where = f"{path}:{n}"
        if not idx:  # the first row: the columns are resolved against the header, else against this row
            width = len(names) if names is not None else len(row)
            idx = _column_indices(columns, names, width, f"{path}:{header_line}" if names is not None else where)
        if len(row) != width:
            raise _width_error(where, fmt, width, len(row), names is not None)
        values = {role: None if i is None else row[i] for role, i in idx.items()}
        for role in required:
            if values.get(role) is not None and not values[role].strip():
                label = "label" if role == "label_column" else role
                raise ValueError(f"{where}: the {label} field (column {idx[role]}) is empty")
        yield n, values
    if not idx and names is not None:  # no data rows: still report a bad column choice
        _column_indices(columns, names, len(names), f"{path}:{header_line}")


def _read_header(rows: Iterator[tuple[int, list[str]]], path: Path) -> tuple[int, list[str]]:
    """The header row: its line and its column names."""
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{path}:1: expected a header line, the file is empty")
    return first


def _column_indices(columns: dict[str, str | int | None], names: list[str] | None, width: int,
                    where: str) -> dict[str, int | None]:
    """Each role's 0-based field index (None for a role without a column)."""
    return {role: None if spec is None else _resolve(spec, names, width, where, role) for role, spec in columns.items()}


def _width_error(where: str, fmt: str, width: int, found: int, header: bool) -> ValueError:
    kind = "tab-separated" if fmt == "tsv" else "comma-separated"
    like = "the header" if header else "the first row"
    return ValueError(f"{where}: expected {width} {kind} fields (like {like}), found {found}")


def _read_plain(path: Path, columns: dict[str, str | int | None]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Format "text": every non-blank line is one text, as it stands; the file has no other column (the columns
    a model was fine-tuned with do not apply, but a second text or a label cannot come from it)."""
    extra = [role for role, spec in columns.items() if role != "text_column" and spec is not None]
    if extra:
        raise ValueError(f"{path}: a text file (format text) holds one text a line and no other column, but "
                         f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'} asked for; give a table")
    for n, line in _lines(path):
        yield n, {role: line if role == "text_column" else None for role in columns}


def read_table(path: str | Path, *, format: str | None = None, text_column: str | int,
               text_pair_column: str | int | None = None, label_column: str | int | None = None,
               header: bool = True, multi_label: bool = False) -> list[Example]:
    """Read a CSV, TSV or JSONL table into `Example` rows (`iter_table`, in a list)."""
    return list(iter_table(path, format=format, text_column=text_column, text_pair_column=text_pair_column,
                           label_column=label_column, header=header, multi_label=multi_label))


def iter_table(path: str | Path, *, format: str | None = None, text_column: str | int,
               text_pair_column: str | int | None = None, label_column: str | int | None = None,
               header: bool = True, multi_label: bool = False) -> Iterator[Example]:
    """The `Example` rows of a CSV, TSV or JSONL table, read a line at a time.

    ``format`` is "csv", "tsv" or "jsonl"; None takes it from the extension (.csv, .tsv, .jsonl / .ndjson).
    "text" (for prediction) reads every non-blank line as one text, with no label.
    Columns are header names or 0-based indices (TSV / CSV); JSONL columns are keys, and ``header`` does not apply.
    With ``header=False`` every line is data and columns must be indices. Every row must have as many fields as the
    header (or, without a header, as the first row). Empty lines are skipped; a line of spaces is a row. Text
    is kept exactly as in the file; labels are kept as text (`label_set` sorts them). With ``multi_label`` a
    label field holds a row's labels (the caller splits them) and may be empty; in JSONL it may be a list of labels,
    kept as a tuple.
    """
    rows = iter_columns(path, {"text_column": text_column, "text_pair_column": text_pair_column,
                               "label_column": label_column}, format=format, header=header,
                        label_lists=("label_column",) if multi_label else (),
                        list_hint="a list of labels is for multi-label classification (--multi-label)")
    for n, v in rows:
        yield Example(v["text_column"], v["text_pair_column"], v["label_column"], n)


# ----------------------------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------------------------

def _number(s: str) -> float | None:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _labels(examples_or_labels: Iterable[Any]) -> list[str]:
    labels = [getattr(e, "label", e) for e in examples_or_labels]
    if not labels:
        raise ValueError("no examples")
    if any(v is None for v in labels):
        raise ValueError("some examples have no label (label=None): read the table with a label_column")
    return [str(v) for v in labels]


def label_key(label: Any) -> float | str:
    """What makes two labels one class: their number for numeric labels ("1", "1.0", " 1 "), else their text
    without surrounding spaces."""
    v = _number(label)
    return v if v is not None else str(label).strip()


def label_set(examples: Iterable[Any]) -> list[str]:
    """The distinct labels of `Example` rows (or of plain label strings), one per `label_key` (named by its
    shortest spelling, without surrounding spaces), sorted: numerically when every label is a number ("2"
    before "10"), else as text."""
    names: dict[float | str, str] = {}
    for v in sorted(set(_labels(examples)), key=lambda v: (len(v.strip()), v)):
        names.setdefault(label_key(v), v.strip())
    distinct = set(names.values())
    if all(_number(v) is not None for v in distinct):
        return sorted(distinct, key=lambda v: (_number(v), v))
    return sorted(distinct)


def label_maps(labels: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """``(id2label, label2id)`` for a model config, ids in the order given (use `label_set` for a sorted order)."""
    labels = [str(v) for v in labels]
    if not labels:
        raise ValueError("no labels")
    if len(set(labels)) != len(labels):
        dup = sorted({v for v in labels if labels.count(v) > 1})
        raise ValueError(f"labels must be distinct, repeated: {dup}")
    return dict(enumerate(labels)), {v: i for i, v in enumerate(labels)}


def is_regression(labels: Iterable[Any]) -> bool:
    """True only when the labels are clearly real-valued targets: every label is a finite number and at least one of
    them has a fractional part (STS-B's "3.800"). Integer-valued labels ("0", "1", or "1.0", "2.0") are taken as
    class ids, and any non-numeric label means classification. Accepts `Example` rows or label strings."""
    values = [_number(v) for v in _labels(labels)]
    if any(v is None for v in values):
        return False
    return any(v != int(v) for v in values)


# ----------------------------------------------------------------------------------------------------------------
# CoNLL
# ----------------------------------------------------------------------------------------------------------------

def is_docstart(fields: Sequence[str], token_column: int) -> bool:
    """A CoNLL document separator: `-DOCSTART-` first, or in the token column."""
    in_range = -len(fields) <= token_column < len(fields)
    return fields[0] == "-DOCSTART-" or (in_range and fields[token_column] == "-DOCSTART-")


def read_conll(path: str | Path, token_column: int = 0, tag_column: int = -1, *,
               explicit: bool = False) -> list[TaggedSentence]:
    """Read a CoNLL-style file: one token per line with its columns separated by tabs (or, on a line without a
    tab, by whitespace); blank or whitespace-only lines separate sentences; ``-DOCSTART-`` lines are skipped.
    Column indices are 0-based; negative ones count from the end of each line. `explicit`: the caller was told
    the file is CoNLL (--format conll), so one that might be a text file is read, not refused (`conll_blocks`)."""
    return list(iter_conll(path, token_column, tag_column, explicit=explicit))


def iter_conll(path: str | Path, token_column: int = 0, tag_column: int = -1, *,
               explicit: bool = False) -> Iterator[TaggedSentence]:
    """`read_conll`'s sentences one at a time, the file read a line at a time (a big file's evaluation)."""
    for role, col in (("token_column", token_column), ("tag_column", tag_column)):
        if not is_int(col):
            raise ValueError(f"{role} must be an integer column index, got {col!r}")
    path = Path(path)
    columns = columns_line = None
    for block in conll_blocks(path, token_column, explicit):
        tokens, tags = [], []
        for n, line, fields in block:
            width = len(fields)
            if width < 2 or not (-width <= token_column < width and -width <= tag_column < width) \
                    or token_column % width == tag_column % width:
                raise ValueError(f"{path}:{n}: expected a token column and a tag column (token_column="
                                 f"{token_column}, tag_column={tag_column}), found {width} column(s): {line[:80]!r}")
            if columns is None:
                columns, columns_line = width, n
            elif width != columns:  # a stray column would shift a column counted from the end (tag_column=-1)
                raise ValueError(f"{path}:{n}: {width} column(s) where line {columns_line} has {columns}: "
                                 f"{line[:80]!r}")
            token, tag = fields[token_column], fields[tag_column].strip()
            if not token:
                raise ValueError(f"{path}:{n}: empty token in column {token_column}: {line[:80]!r}")
            if not tag:
                raise ValueError(f"{path}:{n}: empty tag in column {tag_column}: {line[:80]!r}")
            tokens.append(token)
            tags.append(tag)
        yield TaggedSentence(tokens, tags, block[0][0])


def conll_blocks(path: Path, token_column: int,
                 explicit: bool = False) -> Iterator[list[tuple[int, str, list[str]]]]:
    """The sentences of a CoNLL-style file, each as its lines' (line number, line, fields): fields split at
    tabs (or, on a line without a tab, at whitespace); blank or whitespace-only lines end a sentence, and
    ``-DOCSTART-`` lines are dropped. A sentence most of whose tokens hold a space is refused: that is a table of
    sentences (a GLUE style TSV, "text<TAB>label"), which would otherwise be read as one sentence whose "words" are
    its rows. A token here and there may hold one ("New York" in a tab-separated file). A text file, one sentence
    a line, whose lines hold equally many words is refused too (`_refuse_sentences_a_line`), unless `explicit`
    (the user said --format conll)."""
    if Path(path).suffix.lower() in (".json", ".jsonl", ".zip"):
        raise ValueError(f"{path}: a CoNLL file is plain text, one token per line; got a {Path(path).suffix} file")
    if not explicit:
        _refuse_sentences_a_line(path)
    block: list[tuple[int, str, list[str]]] = []
    for n, line in chain(read_lines(path), [(0, "")]):  # a blank line ends the last sentence
        fields = line.split("\t") if "\t" in line else line.split()
        if line.strip() and not is_docstart(fields, token_column):
            block.append((n, line, fields))
            continue
        spaced = [(m, f[token_column]) for m, _, f in block
                  if -len(f) <= token_column < len(f) and " " in f[token_column].strip()]
        if 2 * len(spaced) > len(block):
            raise ValueError(f"{path}:{spaced[0][0]}: most tokens (column {token_column}) of this sentence hold "
                             f"spaces, like {spaced[0][1][:60]!r}: a table of sentences? Expected a CoNLL file, one "
                             f"token a line (then its tags, tab-separated), blank lines between sentences")
        if block:
            yield block
        block = []


CONLL_SUFFIXES = frozenset({".conll", ".conllu", ".conllx", ".iob", ".bio"})


def _refuse_sentences_a_line(path: Path) -> None:
    """A file without a tab, without a blank line between its lines, whose every line holds the same number (2 or
    more) of space-separated words would read as one CoNLL sentence of the lines' first words; but a text file,
    one sentence a line, whose lines happen to hold as many words looks just the same. Refused, since either
    reading may be wrong: tabs between the columns, blank lines between sentences, a -DOCSTART- line, a CoNLL
    name (.conll) or --format conll make it CoNLL, and predict reads a text file with --format text. Read a line
    at a time, up to the first line that settles it (in a CoNLL file, its first blank line after a sentence)."""
    if path.suffix.lower() in CONLL_SUFFIXES:
        return
    first = width = None   # the first non-blank line, as (n, line), and the word count of every one so far
    gap = False            # a blank line after a non-blank one: fine unless a non-blank line follows
    for n, line in read_lines(path):
        if not line.strip():
            gap = first is not None
            continue
        words = line.split()
        if gap or "\t" in line or words[0] == "-DOCSTART-" or width not in (None, len(words)):
            return  # blank lines between sentences, CoNLL columns, or lines of different widths
        first, width = first or (n, line), len(words)
    if first is not None and width >= 2:
        n, line = first
        raise ValueError(f"{path}:{n}: {width} space-separated words on every line and no blank line between "
                         f"sentences: a text file, one sentence a line? predict reads one with --format text; a "
                         f"CoNLL file (one token a line, then its tags) is read with --format conll, or needs tabs "
                         f"between its columns, blank lines between its sentences or a .conll name: {line[:80]!r}")


# ----------------------------------------------------------------------------------------------------------------
# SQuAD
# ----------------------------------------------------------------------------------------------------------------

# A zipped SQuAD file's JSON, uncompressed, at most: SQuAD v2.0's training set is 42 MB. A zip of a megabyte can
# say gigabytes (a zip bomb), which would be read into memory before any check.
MAX_ZIPPED_JSON = 1 << 30


def _squad_source(path: Path) -> tuple[Iterator[tuple[str, str, Sequence[Any], str]], str]:
    """The file's questions as (title, context, questions in SQuAD's layout, where they are), and the file's name
    for errors: JSON Lines a line at a time; JSON (or JSON Lines in a .json file) read whole."""
    if table_format(path) == "jsonl":
        return _flat_questions(_json_lines(_lines(path), str(path))), str(path)
    raw, where = _squad_bytes(path)
    text = _decode(raw, where)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # JSON Lines in a .json file, as `Dataset.to_json` writes them: the first line is a question record
        if e.msg == "Extra data" and _is_flat_record(text.lstrip().split("\n", 1)[0]):
            lines = ((n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip())
            return _flat_questions(_json_lines(lines, where)), where
        raise ValueError(f"{where}:{e.lineno}: bad JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:   # json's parser on arrays or objects nested thousands deep
        raise ValueError(f"{where}: bad JSON (nested too deeply)") from None
    return _json_questions(data, where), where


def _is_flat_record(line: str) -> bool:
    """Whether a line is one JSON object with a question or a context: the first of JSON Lines records."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(record, dict) and ("question" in record or "context" in record)


def _squad_bytes(path: Path) -> tuple[bytes, str]:
    """A .json file's bytes, or those of the one .json in a .zip, and the name errors give them."""
    if path.suffix.lower() != ".zip":
        return path.read_bytes(), str(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable zip file")
    with zipfile.ZipFile(path) as zf:
        members = [m for m in zf.infolist()
                   if m.filename.lower().endswith(".json") and not m.filename.startswith("__MACOSX/")]
        if len(members) != 1:
            raise ValueError(f"{path}: expected a zip holding exactly one .json file, found "
                             f"{[m.filename for m in members]}")
        where = f"{path}!{members[0].filename}"
        if members[0].file_size > MAX_ZIPPED_JSON:   # zipfile reads no more than the size it declares
            raise ValueError(f"{where}: {members[0].file_size:,} bytes uncompressed, more than a SQuAD file "
                             f"holds (at most {MAX_ZIPPED_JSON:,} read from a zip)")
        return zf.read(members[0]), where


def _squad_object(value: Any, where: str, list_key: str) -> None:
    """A SQuAD article, paragraph or question must be an object, and its `list_key` (when present) a list."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {json.dumps(value)[:60]}")
    if not isinstance(value.get(list_key, []), list):
        raise ValueError(f"{where}: {list_key!r} must be a list, got {json.dumps(value[list_key])[:60]}")


def read_squad(path: str | Path, *, strict: bool = True, labelled: bool = True) -> list[SquadExample]:
    """Read SQuAD v1.1 / v2.0 JSON (a .json file, or a .zip holding one) into one `SquadExample` per question.

    The flat layout of transformers' run_qa.py and the `datasets` library is read too: one record per question,
    ``{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}`` (and a "title" if any), as
    JSON Lines (a .jsonl or .ndjson file, read a line at a time; or a .json file of such lines, as
    `Dataset.to_json` writes them), as a JSON list, or as the "data" list of a JSON object (run_qa.py's JSON).
    There an empty answers list marks an unanswerable question; a record without "answers" is a question to answer.

    Every answer must satisfy ``context[start:start + len(text)] == text`` (it holds for every answer of the official
    v1.1 dev and v2.0 files): a mismatch is a ``ValueError`` naming the question id and counting the mismatches, or,
    with ``strict=False``, a warning (the examples keep the offsets as given).
    Unanswerable v2.0 questions (``is_impossible``) get ``answers == []``; their ``plausible_answers`` are not kept.
    With ``labelled=False`` (questions to answer, not to score) a question may have neither answers nor
    ``is_impossible``.
    """
    questions, where = _squad_source(Path(path))
    examples: list[SquadExample] = []
    bad: list[str] = []   # answer spans that do not match their context, reported together at the end
    seen: set[str] = set()
    for title, context, qas, at in questions:
        for q, qa in enumerate(qas):
            qid = _squad_qid(qa, f"{at} question {q}", at, where, seen)
            impossible, answers = _squad_answers(qa, qid, context, where, labelled, bad)
            examples.append(SquadExample(qid, qa["question"], context, answers, impossible, title))
    _report_mismatches(bad, where, strict)
    return examples


def _json_questions(data: Any, where: str) -> Iterator[tuple[str, str, Sequence[Any], str]]:
    """The questions of nested SQuAD JSON, or of flat records in a JSON list or a JSON object's "data" list."""
    records = data if isinstance(data, list) else data.get("data") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ValueError(f"{where}: expected SQuAD JSON, an object with a 'data' list of articles (or of run_qa.py's "
                         f"records), or a list or JSON Lines of such records")
    first = records[0] if records else None
    if isinstance(data, list) or isinstance(first, dict) and "paragraphs" not in first and "question" in first:
        return _flat_questions((f"{where}: record {i}", r) for i, r in enumerate(records))
    return _squad_paragraphs(records, where)


def _json_lines(lines: Iterable[tuple[int, str]], where: str) -> Iterator[tuple[str, Any]]:
    """(where, record) of JSON Lines given as (line number, non-blank line)."""
    return ((f"{where}:{n}", record) for n, record in _json_rows(lines, where))


def _flat_questions(records: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, str, Sequence[Any], str]]:
    """Each flat record as a paragraph of one question in SQuAD's layout: its answers {"text": [...],
    "answer_start": [...]} become SQuAD's list of answers, and an empty list marks it unanswerable."""
    for at, record in records:
        _squad_object(record, at, "")
        context = record.get("context")
        if not isinstance(context, str):
            raise ValueError(f"{at} has no 'context' string")
        title = record.get("title")
        qa = {key: record[key] for key in ("id", "question", "is_impossible") if key in record}
        if "answers" in record:
            texts, starts = _flat_answers(record["answers"], at)
            qa["answers"] = [{"text": t, "answer_start": a} for t, a in zip(texts, starts)]
            qa.setdefault("is_impossible", not texts)
        yield title if isinstance(title, str) else "", context, [qa], at


def _flat_answers(answers: Any, at: str) -> tuple[list, list]:
    """The "text" and "answer_start" lists of a flat record's answers, of the same length."""
    texts = answers.get("text") if isinstance(answers, dict) else None
    starts = answers.get("answer_start") if isinstance(answers, dict) else None
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise ValueError(f"{at}: 'answers' must be an object with 'text' and 'answer_start' lists of the same "
                         f"length, got {json.dumps(answers)[:80]}")
    return texts, starts


def _squad_paragraphs(articles: list[Any], where: str) -> Iterator[tuple[str, str, Sequence[Any], str]]:
    """Every paragraph as (its article's title, context, questions, where it is), each checked as it is reached."""
    for a, article in enumerate(articles):
        _squad_object(article, f"{where}: article {a}", "paragraphs")
        title = article.get("title", "")
        for p, para in enumerate(article.get("paragraphs", ())):
            at = f"{where}: article {a} ({title!r}) paragraph {p}"
            _squad_object(para, at, "qas")
            context = para.get("context")
            if not isinstance(context, str):
                raise ValueError(f"{at} has no 'context' string")
            yield title, context, para.get("qas", ()), at


def _squad_qid(qa: Any, at_question: str, at_paragraph: str, where: str, seen: set[str]) -> str:
    """The question's id, once `seen`; the question must be an object with a string id and question text."""
    _squad_object(qa, at_question, "answers")
    qid = qa.get("id")
    if not isinstance(qid, str) or not isinstance(qa.get("question"), str):
        raise ValueError(f"{at_paragraph}: a question without a string 'id' and 'question' (id {qid!r})")
    if qid in seen:  # predictions and scores are keyed by id
        raise ValueError(f"{where}: question id {qid!r} appears twice; ids must be unique")
    seen.add(qid)
    return qid


def _squad_answers(qa: dict[str, Any], qid: str, context: str, where: str, labelled: bool,
                   bad: list[str]) -> tuple[bool, list[tuple[str, int]]]:
    """(is_impossible, answers) of a question; an answer that does not match the context is added to `bad`."""
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise ValueError(f"{where}: question {qid}: 'is_impossible' must be true or false, got {impossible!r}")
    answers = []
    for ans in qa.get("answers", ()):
        if impossible and isinstance(ans, dict) and ans.get("text") == "":
            continue  # ("", -1): a placeholder some files give unanswerable questions
        text, start = _squad_answer(ans, qid, where)
        if context[start:start + len(text)] != text:
            bad.append(f"question {qid}: answer {text!r} at {start} does not match the context there "
                       f"({context[start:start + len(text)]!r})")
        answers.append((text, start))
    if impossible and answers:
        raise ValueError(f"{where}: question {qid} is marked is_impossible but has answers")
    if labelled and not impossible and not answers:
        raise ValueError(f"{where}: question {qid} has no answers and is not marked is_impossible")
    return impossible, answers


def _squad_answer(ans: Any, qid: str, where: str) -> tuple[str, int]:
    """An answer's (text, start): a non-empty string and an integer offset >= 0."""
    try:
        text, start = ans["text"], ans["answer_start"]
        if not isinstance(text, str) or not text or isinstance(start, bool) or int(start) < 0:
            raise ValueError
        return text, int(start)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: question {qid}: an answer needs a non-empty string 'text' and an "
                         f"integer 'answer_start' >= 0, got {ans!r:.120}") from None


def _report_mismatches(bad: list[str], where: str, strict: bool) -> None:
    """All mismatched answer spans in one error (or, not `strict`, one warning): counted, the first shown."""
    if bad:
        msg = f"{where}: {len(bad)} answer span(s) do not match their context; first: {bad[0]}"
        if strict:
            raise ValueError(msg)
        warn(msg)
