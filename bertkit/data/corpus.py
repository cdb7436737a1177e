"""Documents and sentences from UTF-8 text files, for BERT pre-training.

File layout
-----------
One paragraph (or sentence) per line. Documents are separated by blank lines, or, when `doc_boundary` is
given, start at each heading line that matches that regex (the heading itself is not part of the text, and
blank lines then only separate paragraphs). With `wrapped=True` (hard-wrapped books), a run of non-blank
lines is one paragraph, joined with spaces; blank lines then separate paragraphs, and documents come from
`doc_boundary` and file ends only. Every file ends a document. Lines matching `skip` are dropped. LF, CRLF
and lone CR endings and a UTF-8 byte-order mark are accepted; a byte that is not UTF-8 is a ValueError naming
`path:LINE`.

Sentence rule
-------------
Each paragraph is split into sentences after a run of `.`, `!` or `?`, optionally followed by closing quotes
or brackets (``" ' ” ’ ) ]``), when what follows is whitespace and then an uppercase letter or a digit,
optionally behind an opening quote or bracket (``" ' “ ‘ ( [``; a space may follow it, as in tokenized
text). A `.` does not end a sentence when the word it ends is a common abbreviation (Mr., Mrs., Ms., Dr.,
St., Prof., Jr., Sr., Gen., Capt., Gov., Rev., Mt., vs., cf., ...: `ABBREVIATIONS`), a single letter (an
initial: "J. R. R. Tolkien", "c. 1500") or dotted letters ("e.g.", "i.e.", "U.S.", "A.H."), nor when the word
is No., Vol., Fig., pp., ... (`NUMBER_ABBREVIATIONS`) and a digit follows ("No. 20 Squadron"). The rule errs
towards fewer, longer sentences ("in the U.S. The next" stays one), which next-sentence pairs tolerate.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "ABBREVIATIONS",
    "NUMBER_ABBREVIATIONS",
    "WIKITEXT_SECTION",
    "WIKITEXT_TITLE",
    "iter_documents",
    "python_docs_corpus",
    "read_documents",
    "split_sentences",
]

# WikiText article titles: " = Title = " (one "=" each side). Section headings " = = Section = = " do not
# match: the title text may not start or end with "=".
WIKITEXT_TITLE = r"^ ?= (?!=)(?:.*[^=])? = ?$"
# WikiText section headings (" = = Section = = ", " = = = Sub = = = "): pass as `skip` to drop them.
WIKITEXT_SECTION = r"^ ?(?:= ){2,}.*?(?: =){2,} ?$"

ABBREVIATIONS = frozenset(
    "mr mrs ms messrs mme mlle dr prof st sr jr rev gen col capt cpt lt sgt maj cmdr adm gov sen rep hon "
    "pres supt mt ft cf vs viz approx ca est dept univ jan feb mar apr jun jul aug sept oct nov dec".split()
)
# Abbreviations only before a number ("No. 20"; "the answer was no. Then" does split).
NUMBER_ABBREVIATIONS = frozenset("no nos vol vols fig figs eq eqs pp ch chap sec op art".split())

# (end punctuation)(closing quotes/brackets)(whitespace); the word before the marks is read back from the text.
# A run of sentence-ending marks (from its first mark: no match starts inside a run, and neither run backtracks,
# so the search is linear even in a line of 100,000 characters without a space), closers, then whitespace
_CANDIDATE = re.compile(r"(?<![.!?])([.!?]++)([\"'”’)\]]*+)\s+")
_OPENERS = "\"'“‘(["
_DOTTED = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")  # "J", "e.g", "U.S", "A.H"


def _starts_sentence(text: str, i: int) -> bool:
    """Does text[i:] start with an uppercase letter or digit, possibly behind an opening quote/bracket
    (and a space, as in tokenized text: `. " It was`)?"""
    if i < len(text) and text[i] in _OPENERS:
        i += 1
        while i < len(text) and text[i] == " ":
            i += 1
    return i < len(text) and (text[i].isupper() or text[i].isdigit())


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences by the rule in the module docstring (whitespace-stripped,
    empty pieces dropped)."""
    sentences = []
    start = 0
    for m in _CANDIDATE.finditer(paragraph):
        if not _starts_sentence(paragraph, m.end()):
            continue
        w = m.start()
        while w > start and not paragraph[w - 1].isspace():   # the word the marks end
            w -= 1
        word, punct = paragraph[w:m.start()].lstrip(_OPENERS), m.group(1)
        if punct == "." and word:
            lower = word.lower()
            if lower in ABBREVIATIONS or _DOTTED.fullmatch(word):
                continue
            if lower in NUMBER_ABBREVIATIONS and paragraph[m.end()].isdigit():
                continue
        sentence = paragraph[start:m.end(2)].strip()
        if sentence:
            sentences.append(sentence)
        start = m.end()
    rest = paragraph[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _as_paths(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def iter_documents(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    doc_boundary: str | re.Pattern | None = None,
    *,
    wrapped: bool = False,
    skip: str | re.Pattern | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[list[str]]:
    """Yield documents, each a list of sentences, streaming the files in order (see the module docstring
    for the layout and the sentence rule). Raises ValueError if no file holds any text. `progress` gets the
    size in bytes of each line read (`read_lines`'), so a caller can tell how far through the files it is."""
    from ..io import read_lines   # here, not at the top: this file also runs alone (`python_docs_corpus`)
    paths = _as_paths(paths)
    boundary = re.compile(doc_boundary) if isinstance(doc_boundary, str) else doc_boundary
    skip_re = re.compile(skip) if isinstance(skip, str) else skip
    blank_ends_document = boundary is None and not wrapped
    found = False
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: corpus file not found")
        document: list[str] = []
        paragraph: list[str] = []  # wrapped lines of the current paragraph

        def end_paragraph():
            if paragraph:
                document.extend(split_sentences(" ".join(paragraph)))
                paragraph.clear()

        for _, line in read_lines(path, progress):
            if boundary is not None and boundary.match(line):
                end_paragraph()
                if document:
                    yield document
                    found = True
                    document = []
                continue
            if skip_re is not None and skip_re.match(line):
                continue
            if not line.strip():
                end_paragraph()
                if blank_ends_document and document:
                    yield document
                    found = True
                    document = []
                continue
            if wrapped:
                paragraph.append(line.strip())
            else:
                document.extend(split_sentences(line))
        end_paragraph()
        if document:
            yield document
            found = True
    if not found:
        raise ValueError(f"empty corpus: no text in {', '.join(map(str, paths)) or '(no files given)'}")


def read_documents(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    doc_boundary: str | re.Pattern | None = None,
    *,
    wrapped: bool = False,
    skip: str | re.Pattern | None = None,
) -> list[list[str]]:
    """All documents of the files (documents -> sentences); see `iter_documents`."""
    return list(iter_documents(paths, doc_boundary, wrapped=wrapped, skip=skip))


_SENTENCE_END = re.compile(r"[.!?:;][\"'”’)\]]*$")  # a line that ends a sentence (or a clause)


def hard_wrap_width(path: str | os.PathLike, sample: int = 2000) -> int | None:
    """The width a file's lines look hard-wrapped at (a book's layout: `wrapped=True` reads it), else None. Read a
    line at a time, such text falls into sentence fragments without any error, so a caller can warn.

    Judged on the first `sample` non-blank lines, by the lines that another non-blank line follows: the width is
    their 95th-percentile length (at least 30: not a word a line), and the text looks wrapped when 60% of them
    reach 3/4 of it and half run on, ending without sentence punctuation before a line that starts lowercase.
    Measured: Pride and Prejudice 99% and 89%; a paragraph a line (WikiText-2) and a sentence a line (MRPC)
    at most 43% and 0%; lowercase one-liners (SST-2) at most 25% and 96%; Tiny Shakespeare, mostly verse whose
    lines start uppercase, 54% and 17% (at most 59% and 28% in any 2000 of its lines)."""
    from ..io import read_lines
    lines: list[str] = []
    nonblank = 0
    for _, line in read_lines(Path(path)):
        lines.append(line)
        nonblank += bool(line.strip())
        if nonblank >= sample:
            break
    inner = [(a.rstrip(), b.lstrip()) for a, b in zip(lines, lines[1:]) if a.strip() and b.strip()]
    if len(inner) < 20:  # too little to judge
        return None
    lengths = sorted(len(a) for a, _ in inner)
    width = lengths[int(0.95 * (len(lengths) - 1))]
    full = sum(n >= 0.75 * width for n in lengths)
    running_on = sum(not _SENTENCE_END.search(a) and b[:1].islower() for a, b in inner)
    return width if width >= 30 and full >= 0.6 * len(inner) and running_on >= 0.5 * len(inner) else None


# ------------------------------------------------------------------------------------ Python's own docs
# Not imported: side effects (a browser, printing, GUI), test suites, lib2to3 (may write grammar pickles).
_SKIP_MODULES = ("antigravity", "this", "idlelib", "tkinter", "turtledemo", "test", "lib2to3", "__hello__",
                 "__phello__")
_SKIP_PARTS = {"test", "tests", "idle_test", "__main__"}


def _skipped(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in _SKIP_MODULES or parts[0].startswith("turtle") or any(p in _SKIP_PARTS for p in parts[1:])


def _doc_paragraphs(doc: str) -> list[str]:
    """A docstring as paragraphs, one line each (its lines joined, whitespace collapsed)."""
    return [text for text in (" ".join(block.split()) for block in re.split(r"\n\s*\n", doc)) if text]


def _collect_python_docs(out: str) -> None:
    """Run in a child process (`python -I corpus.py --collect OUT`): imports have side effects."""
    import importlib
    import inspect
    import io
    import pkgutil
    import warnings

    warnings.simplefilter("ignore")
    sys.stdout = io.StringIO()  # modules that print on import

    def modules(name: str) -> Iterator[tuple[str, object]]:
        if _skipped(name):
            return
        try:
            module = importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - whatever does not import cleanly is left out
            return
        yield name, module
        for info in sorted(pkgutil.iter_modules(getattr(module, "__path__", None) or []), key=lambda i: i.name):
            yield from modules(f"{name}.{info.name}")

    seen: set[str] = set()      # each docstring once, however many names it is reachable by
    documents: list[list[str]] = []

    def add(doc, into: list[str]) -> None:
        if isinstance(doc, str):
            text = "\n".join(_doc_paragraphs(doc))
            if text and text not in seen:
                seen.add(text)
                into.append(text)

    stdlib = sys.stdlib_module_names | {"builtins"}
    for top in sorted(sys.stdlib_module_names):
        for name, module in modules(top):
            document: list[str] = []  # a module's docstrings, in order, make one document
            add(inspect.getdoc(module), document)
            for _, obj in sorted(vars(module).items()):
                if not str(getattr(obj, "__module__", None) or "").split(".")[0] in stdlib:
                    continue  # third-party objects imported by a standard module (none expected)
                if inspect.isclass(obj):
                    add(inspect.getdoc(obj), document)
                    for _, member in sorted(vars(obj).items()):
                        member = getattr(member, "__func__", member)  # classmethod / staticmethod
                        if inspect.isroutine(member):
                            add(inspect.getdoc(member), document)
                        elif inspect.isdatadescriptor(member):  # property, getset/member descriptor
                            add(member.__doc__, document)
                elif inspect.isroutine(obj):
                    add(inspect.getdoc(obj), document)
            if document:
                documents.append(document)
    from pydoc_data.topics import topics

    for key in sorted(topics):
        document = []
        add(topics[key], document)
        if document:
            documents.append(document)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(d) for d in documents) + "\n")


def python_docs_corpus(path: str | os.PathLike, *, timeout: float = 300) -> Path:
    """Write a corpus of the English documentation that ships inside Python to `path`; return the path.

    The documents are the docstrings of the standard library's modules, classes, functions, methods and
    properties (each module of `sys.stdlib_module_names` and its submodules that imports cleanly, except GUI,
    test and side-effect modules: `antigravity`, `this`, `idlelib`, `tkinter`, `turtle*`, `test`, `lib2to3`,
    `__main__` modules), one document per module (its docstrings in order, each docstring once), then the
    help topics of `pydoc_data.topics`, one document each; one paragraph per line, blank lines between
    documents (the default layout of `read_documents`), in a
    deterministic order (module names sorted, then attribute names). The imports run in an isolated child
    interpreter (`python -I`), so their side effects stay there. Written atomically. CPython 3.11 gives
    about 2.1 MB in a few seconds.
    """
    from bertkit.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        proc = subprocess.run(
            [sys.executable, "-I", os.path.abspath(__file__), "--collect", tmp],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0 or not os.path.exists(tmp):
            raise RuntimeError(
                f"collecting Python's documentation failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        if os.path.getsize(tmp) < 10_000:
            raise RuntimeError(f"Python's documentation came out nearly empty ({os.path.getsize(tmp)} bytes)")
    return path


if __name__ == "__main__" and sys.argv[1:2] == ["--collect"]:
    _collect_python_docs(sys.argv[2])
