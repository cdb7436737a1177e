"""Next-sentence-prediction instances as in the original BERT, written to memory-mapped shards.

Instances (as google-research/bert's create_pretraining_data.py)
----------------------------------------------------------------
For each document (and each of `dupe_factor` passes over the corpus), the target length is
`max_seq_length - 3`, or, with probability `short_seq_prob`, a random length in [2, that]. Consecutive
sentences are gathered until they reach the target (or the document ends); the gathered chunk is split at a
random sentence boundary into A and B. With probability 0.5, or always when the chunk is a single sentence,
B is replaced by text from a random *other* document (never the same one), starting at a random sentence and
running to about the rest of the target; the sentences of the chunk that were not used are put back and
start the next chunk. The pair is then cut to `max_seq_length - 3` tokens, one token at a time from the
longer side, from its front or back at random. The output is `[CLS] A [SEP] B [SEP]` with segment ids 0 for
`[CLS] A [SEP]` and 1 for `B [SEP]`, and `is_random_next` (the NSP label: 1 = B is random).

Differences from the original: the random document is drawn among the others directly (the original retries
ten times and can still, rarely, pick the same document); the front/back cuts of a side are drawn as one
binomial count instead of a coin per token (same distribution, other random stream, much faster); the
instances are not shuffled (the batch source permutes them every epoch anyway).

Shards
------
`build_shards` reads the corpus in chunks of about `chunk_chars` characters (so a corpus larger than memory
streams), tokenises each chunk's sentences in batches in Rust, and writes per chunk `shard_NNNNN.tokens.npy`
(every instance's ids, `[CLS]`/`[SEP]` included, back to back: uint16 when the vocabulary has fewer than 65,536
tokens, else int32), `.offsets.npy` (int64, n + 1: instance i is tokens[offsets[i]:offsets[i+1]]),
`.a_lengths.npy` (int32: the tokens of A, to rebuild the segment ids) and `.is_random_next.npy` (uint8),
then `meta.json`. Random-next documents are drawn from the same chunk, so chunks should hold many documents.
The directory is written under a temporary name and renamed when complete. `PretrainingDataset` maps the
shards read-only and indexes across them. With `progress`, the bytes of the corpus files built so far are shown
(`CorpusProgress`): a bar on a terminal, a line every PROGRESS_EVERY_S seconds in a log file.
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertkit.checks import is_int
from bertkit.data.corpus import iter_documents
from bertkit.io import remove_stale

__all__ = ["FORMAT", "MIN_SEQ_LENGTH", "CorpusProgress", "Instance", "PretrainingDataset", "build_shards",
           "create_instances"]

FORMAT = "bertkit-pretraining-shards"
FORMAT_VERSION = 1
_ARRAYS = ("tokens", "offsets", "a_lengths", "is_random_next")


# ------------------------------------------------------------------------------------- the instance rule
@dataclass(frozen=True)
class _Span:
    """One instance before materialising: token ranges inside documents of a chunk."""
    a_doc: int
    a_lo: int
    a_hi: int
    b_doc: int
    b_lo: int
    b_hi: int
    is_random_next: bool
    target_length: int
    forced_random_next: bool


def _truncate_pair(a_lo: int, a_hi: int, b_lo: int, b_hi: int, max_num_tokens: int, rng: random.Random):
    """Cut tokens one at a time from the longer side (B on ties), from its front or back at random, until
    the pair fits. Computed in closed form: the side of each cut is fixed by the lengths, and the number
    of front cuts of a side that loses n tokens is a Binomial(n, 1/2) draw (the popcount of n random bits)."""
    la, lb = a_hi - a_lo, b_hi - b_lo
    excess = la + lb - max_num_tokens
    if excess <= 0:
        return a_lo, a_hi, b_lo, b_hi
    first = min(excess, abs(la - lb))  # the longer side shrinks to the other's length first
    cut_a, cut_b = (first, 0) if la > lb else (0, first)
    rest = excess - first  # then the sides alternate, B first
    cut_a += rest // 2
    cut_b += rest - rest // 2
    front_a = rng.getrandbits(cut_a).bit_count() if cut_a else 0
    front_b = rng.getrandbits(cut_b).bit_count() if cut_b else 0
    return a_lo + front_a, a_hi - (cut_a - front_a), b_lo + front_b, b_hi - (cut_b - front_b)


def _document_spans(
    doc: int, starts: Sequence[Sequence[int]], max_num_tokens: int, short_seq_prob: float, rng: random.Random
) -> list[_Span]:
    """The instances of document `doc`. `starts[d]` holds the token offset of each sentence of document d
    within it, plus its total length (so sentence j is tokens starts[d][j]:starts[d][j+1])."""
    own = starts[doc]
    n = len(own) - 1
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    spans = []
    chunk_start = 0  # first sentence of the chunk being gathered
    i = 0
    while i < n:
        if i == n - 1 or own[i + 1] - own[chunk_start] >= target:
            k = i + 1 - chunk_start  # sentences in the chunk
            a_end = chunk_start + (rng.randint(1, k - 1) if k >= 2 else 1)
            a_lo, a_hi = own[chunk_start], own[a_end]
            forced = k == 1
            if forced or rng.random() < 0.5:
                is_random = True
                b_doc = rng.randrange(len(starts) - 1)
                b_doc += b_doc >= doc  # any document but this one
                other = starts[b_doc]
                first = rng.randint(0, len(other) - 2)
                last = first + 1
                target_b = target - (a_hi - a_lo)
                while last < len(other) - 1 and other[last] - other[first] < target_b:
                    last += 1
                b_lo, b_hi = other[first], other[last]
                i = a_end - 1  # put the unused sentences back
            else:
                is_random = False
                b_doc, b_lo, b_hi = doc, a_hi, own[i + 1]
            a_lo, a_hi, b_lo, b_hi = _truncate_pair(a_lo, a_hi, b_lo, b_hi, max_num_tokens, rng)
            spans.append(_Span(doc, a_lo, a_hi, b_doc, b_lo, b_hi, is_random, target, forced))
            chunk_start = i + 1
        i += 1
    return spans


def _spans(starts: Sequence[Sequence[int]], max_seq_length: int, short_seq_prob: float, dupe_factor: int,
           rng: random.Random) -> list[_Span]:
    if len(starts) < 2:
        raise ValueError(
            f"need at least 2 documents with text for next-sentence pairs, got {len(starts)} "
            "(random next sentences come from another document)"
        )
    spans = []
    for _ in range(dupe_factor):
        for doc in range(len(starts)):
            spans += _document_spans(doc, starts, max_seq_length - 3, short_seq_prob, rng)
    return spans


MIN_SEQ_LENGTH = 5  # [CLS] A [SEP] B [SEP] with a token in A and in B


def _check_options(max_seq_length: int, short_seq_prob: float, dupe_factor: int) -> None:
    if not is_int(max_seq_length) or max_seq_length < MIN_SEQ_LENGTH:
        raise ValueError(f"max_seq_length must be an int >= {MIN_SEQ_LENGTH} ([CLS] A [SEP] B [SEP]), "
                         f"got {max_seq_length!r}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob!r}")
    if not is_int(dupe_factor) or dupe_factor < 1:
        raise ValueError(f"dupe_factor must be an int >= 1, got {dupe_factor!r}")


def _sentence_starts(lengths: Iterable[int]) -> list[int]:
    return [0, *itertools.accumulate(lengths)]


@dataclass(frozen=True)
class Instance:
    """One pre-training pair, with where it came from (for inspection and tests)."""
    input_ids: list[int]        # [CLS] A [SEP] B [SEP]
    a_length: int               # tokens of A
    is_random_next: bool        # the NSP label: B comes from another document
    doc_index: int              # the document A comes from
    b_doc_index: int            # the document B comes from (== doc_index unless is_random_next)
    target_length: int          # the target drawn for the document (< max_seq_length - 3: a short one)
    forced_random_next: bool    # the chunk was one sentence, so B had to come from elsewhere

    @property
    def token_type_ids(self) -> list[int]:
        return [0] * (self.a_length + 2) + [1] * (len(self.input_ids) - self.a_length - 2)


def create_instances(
    documents: Sequence[Sequence[Sequence[int]]],
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    rng: random.Random,
    *,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
) -> list[Instance]:
    """The instances of tokenised documents (documents -> sentences -> token ids), by the rule in the module
    docstring. Empty sentences and documents are skipped; document indices refer to `documents`.
    `build_shards` gives the same instances for the same seed when the corpus fits one chunk."""
    _check_options(max_seq_length, short_seq_prob, dupe_factor)
    kept = []  # (original index, flat tokens, sentence starts)
    for index, doc in enumerate(documents):
        sentences = [list(s) for s in doc if len(s)]
        if sentences:
            kept.append((index, [t for s in sentences for t in s], _sentence_starts(map(len, sentences))))
    spans = _spans([k[2] for k in kept], max_seq_length, short_seq_prob, dupe_factor, rng)
    out = []
    for s in spans:
        a = kept[s.a_doc][1][s.a_lo:s.a_hi]
        b = kept[s.b_doc][1][s.b_lo:s.b_hi]
        out.append(Instance([cls_id, *a, sep_id, *b, sep_id], len(a), s.is_random_next, kept[s.a_doc][0],
                            kept[s.b_doc][0], s.target_length, s.forced_random_next))
    return out


# ------------------------------------------------------------------------------------------- shards
PROGRESS_EVERY_S = 30.0  # without a terminal: a progress line this often (seconds)


class CorpusProgress:
    """How far a build has got through its corpus files, in bytes: a tqdm bar on a terminal ("2.10MB/5.16MB"),
    else `ProgressLines` in a log file. Bytes are counted as they are read (`count`, a `read_lines` callback) but
    shown as they are tokenised (`show`): reading is a twentieth of a build's time, so a bar of the bytes read
    would reach its end long before the build."""

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike], name: str):
        """`name`: the data directory's, as `build_shards`' shard lines begin."""
        desc = f"{name}: tokenising the corpus"
        paths = [paths] if _is_paths(paths) else list(paths)
        # a missing file counts nothing here: iter_documents names it
        self.total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
        self.read = 0
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True,
                            file=sys.stderr, mininterval=0.5,
                            bar_format="{l_bar}{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]")
        else:
            from bertkit.train.tracking import ProgressLines
            self.bar = ProgressLines(self.total, desc, "byte", PROGRESS_EVERY_S)

    def count(self, n: int) -> None:
        self.read += n

    def show(self, position: int) -> None:
        """The bytes up to `position` are built."""
        if position > self.bar.n:
            self.bar.update(position - self.bar.n)

    def between(self, lo: int, hi: int) -> Callable[[float], None]:
        """`_tokenise_chunk`'s `done` for a chunk of the bytes from `lo` to `hi`: its share built moves the bar."""
        return lambda share: self.show(lo + round(share * (hi - lo)))

    def aside(self):
        """A context to print other lines in (a shard's report) without breaking a terminal's bar."""
        return self.bar.external_write_mode() if hasattr(self.bar, "external_write_mode") else contextlib.nullcontext()

    def close(self) -> None:
        self.bar.close()


def _is_paths(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _file_names(source) -> str | None:
    """The corpus files of a `build_shards` source, comma-separated; None for documents given in memory."""
    files = _corpus_files(source)
    return None if files is None else ", ".join(map(str, files))


def _corpus_files(source) -> list | None:
    """The corpus files of a `build_shards` source given as a path or a list of them; None otherwise."""
    if _is_paths(source):
        return [source]
    if isinstance(source, (list, tuple)) and source and all(_is_paths(p) for p in source):
        return list(source)
    return None


def _documents(source, doc_boundary, wrapped, skip, progress=None) -> Iterator[Sequence[str]]:
    """Paths (one or a list) are streamed through `iter_documents` (`progress` counting their bytes); anything
    else is taken as documents."""
    if _is_paths(source):
        return iter_documents(source, doc_boundary, wrapped=wrapped, skip=skip, progress=progress)
    it = iter(source)
    first = next(it, None)
    if first is None:
        raise ValueError("empty corpus: no documents given")
    if _is_paths(first):
        return iter_documents([first, *it], doc_boundary, wrapped=wrapped, skip=skip, progress=progress)
    if isinstance(first, str) or not isinstance(first, Sequence):
        raise TypeError("documents must be lists of sentences (str), or pass file paths")
    return itertools.chain([first], it)


def _chunks(documents: Iterable[Sequence[str]], chunk_chars: int,
            position: Callable[[], int] = lambda: 0) -> Iterator[tuple[list[Sequence[str]], int]]:
    """Groups of documents of about `chunk_chars` characters. A group is held back until the next one is
    full, so a last group of a single document (which could not draw random next sentences) joins it. Each
    comes with `position()` as it was once its last document was read (the bytes read up to its end)."""
    pending = None
    current: list[Sequence[str]] = []
    size = 0
    for doc in documents:
        if not doc:
            continue
        current.append(doc)
        size += sum(map(len, doc))
        if size >= chunk_chars and len(current) >= 2:
            if pending is not None:
                yield pending
            pending, current, size = (current, position()), [], 0
    end = position()
    if pending is not None:
        if len(current) < 2:
            pending = (pending[0] + current, end)
            current = []
        yield pending
    if current:
        yield current, end


def _tokenise_chunk(backend, documents: list[Sequence[str]], batch_size: int = 4096,
                    done: Callable[[float], None] = lambda share: None):
    """Flat token ids (int32) of the chunk's non-empty sentences, each kept document's start in them, and
    its sentence starts. Python lists live for one batch of sentences only. After each batch, `done` gets the
    share of the chunk's characters tokenised so far (tokenising is most of a build's time)."""
    sentences = [s for doc in documents for s in doc]
    total, tokenised = max(sum(map(len, sentences)), 1), 0
    pieces, lengths = [], []
    for lo in range(0, len(sentences), batch_size):
        batch = sentences[lo:lo + batch_size]
        ids = [e.ids for e in backend.encode_batch_fast(batch, add_special_tokens=False)]
        lengths += map(len, ids)
        pieces.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=sum(map(len, ids))))
        tokenised += sum(map(len, batch))
        done(tokenised / total)
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    doc_offsets, starts = [], []
    position = 0
    k = 0
    for doc in documents:
        kept = [n for n in lengths[k:k + len(doc)] if n]
        k += len(doc)
        if kept:
            doc_offsets.append(position)
            starts.append(_sentence_starts(kept))
            position += starts[-1][-1]
    return flat, doc_offsets, starts


def _write_shard(directory: Path, name: str, flat, doc_offsets, spans: list[_Span], cls_id: int, sep_id: int,
                 token_dtype) -> dict:
    n = len(spans)
    a_len = np.fromiter((s.a_hi - s.a_lo for s in spans), dtype=np.int64, count=n)
    b_len = np.fromiter((s.b_hi - s.b_lo for s in spans), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(a_len + b_len + 3, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=token_dtype)
    for i, s in enumerate(spans):
        o, la = int(offsets[i]), s.a_hi - s.a_lo
        a0, b0 = doc_offsets[s.a_doc], doc_offsets[s.b_doc]
        tokens[o] = cls_id
        tokens[o + 1:o + 1 + la] = flat[a0 + s.a_lo:a0 + s.a_hi]
        tokens[o + 1 + la] = sep_id
        tokens[o + 2 + la:offsets[i + 1] - 1] = flat[b0 + s.b_lo:b0 + s.b_hi]
        tokens[offsets[i + 1] - 1] = sep_id
    arrays = {
        "tokens": tokens,
        "offsets": offsets,
        "a_lengths": a_len.astype(np.int32),
        "is_random_next": np.fromiter((s.is_random_next for s in spans), dtype=np.uint8, count=n),
    }
    for key, array in arrays.items():
        np.save(directory / f"{name}.{key}.npy", array)
    return {"name": name, "num_instances": n, "num_tokens": int(offsets[-1]),
            "num_random_next": int(arrays["is_random_next"].sum())}


def _corpus_progress(progress, source, out_dir: Path) -> tuple[CorpusProgress | None, bool]:
    """`build_shards`' progress, and whether it is its own (True: it reads the files, counts their bytes and
    closes it)."""
    if isinstance(progress, CorpusProgress):
        return progress, False
    files = _corpus_files(source) if progress else None
    if files is None:   # documents in memory: no bytes to count
        return None, False
    return CorpusProgress(files, out_dir.name), True


def build_shards(
    documents_or_paths,
    tokenizer,
    out_dir: str | os.PathLike,
    max_seq_length: int = 128,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int = 0,
    *,
    doc_boundary=None,
    wrapped: bool = False,
    skip=None,
    chunk_chars: int = 50_000_000,
    overwrite: bool = False,
    report: Callable[[str], None] | None = None,
    progress: bool | CorpusProgress = False,
) -> dict:
    """Build NSP instances from a corpus and write them as memory-mapped shards in `out_dir`.

    `documents_or_paths`: a text file path or a list of them (read with `iter_documents`, with
    `doc_boundary`, `wrapped` and `skip`), or an iterable of documents, each a list of sentences. `tokenizer`
    is a `BertTokenizer` (its Rust backend tokenises; its vocabulary size and special ids go to meta.json).
    One `random.Random(seed)` drives every choice, so a seed gives the same shards. Returns the meta dict.
    Raises FileExistsError if `out_dir` exists, unless `overwrite`. `report` (e.g. `print`) gets a line per
    shard written (a chunk of `chunk_chars` characters of text), so a big corpus shows how far it got.
    `progress=True` shows the bytes of the corpus files built so far (files only: documents given in memory have
    no size); a `CorpusProgress` is shown instead when the caller reads the files itself and counts their bytes
    (`iter_documents(..., progress=p.count)`), and closes it.
    """
    _check_options(max_seq_length, short_seq_prob, dupe_factor)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True to replace it)")
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a private copy, no padding/truncation
    backend.no_padding()
    backend.no_truncation()
    vocab_size = tokenizer.num_ids   # len(tokenizer), or more when the vocabulary leaves ids unused
    token_dtype = np.uint16 if vocab_size < 65536 else np.int32
    special = {
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "mask_token_id": tokenizer.mask_token_id,
        "unk_token_id": tokenizer.unk_token_id,
    }
    rng = random.Random(seed)
    tmp = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    remove_stale(out_dir.parent, re.escape(f".{out_dir.name}.tmp") + r"(?P<pid>\d+)")  # a killed build's
    tmp.mkdir(parents=True)
    bar, own = _corpus_progress(progress, documents_or_paths, out_dir)
    try:
        shards = []
        num_documents = 0
        started = time.monotonic()
        documents = _documents(documents_or_paths, doc_boundary, wrapped, skip, bar.count if own else None)
        shown = 0   # the bytes the bar has reached: the end of the chunk before
        for chunk, end in _chunks(documents, chunk_chars, (lambda: bar.read) if bar is not None else (lambda: 0)):
            done = bar.between(shown, end) if bar is not None else (lambda share: None)
            flat, doc_offsets, starts = _tokenise_chunk(backend, chunk, done=done)
            shown = end
            num_documents += len(starts)
            try:
                spans = _spans(starts, max_seq_length, short_seq_prob, dupe_factor, rng)
            except ValueError as e:  # name the corpus files, when given files (one can be a --eval-corpus)
                files = _file_names(documents_or_paths)
                raise ValueError(f"{files}: {e}" if files else str(e)) from None
            shards.append(_write_shard(tmp, f"shard_{len(shards):05d}", flat, doc_offsets, spans,
                                       special["cls_token_id"], special["sep_token_id"], token_dtype))
            if report is not None:
                written = shards[-1]
                with bar.aside() if bar is not None else contextlib.nullcontext():
                    report(f"{out_dir.name}: shard {len(shards)}: {len(starts):,} documents, "
                           f"{written['num_instances']:,} instances, {written['num_tokens']:,} tokens "
                           f"({time.monotonic() - started:.0f} s)")
        if bar is not None:
            bar.show(bar.read)   # what followed the last document (blank lines)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "vocab_size": vocab_size,
            **special,
            "special_ids": sorted(tokenizer.all_special_ids),
            "token_dtype": np.dtype(token_dtype).name,
            "max_seq_length": max_seq_length,
            "short_seq_prob": short_seq_prob,
            "dupe_factor": dupe_factor,
            "seed": seed,
            "num_documents": num_documents,
            "num_instances": sum(s["num_instances"] for s in shards),
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "shards": shards,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if own:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


# ------------------------------------------------------------------------------------------ dataset
def _shard_name(name) -> str:
    """A shard's name in meta.json, as `build_shards` writes it: a file name prefix inside the data directory. A
    path (`../x`, `/abs/x`) would make a data directory from elsewhere map another directory's files."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ValueError(f"shard name {name!r} is not a file name inside the data directory")
    return name


class PretrainingDataset(torch.utils.data.Dataset):
    """The instances of a `build_shards` directory, memory-mapped read-only.

    `ds[i]` is `(input_ids, token_type_ids, next_sentence_label)`: two int64 arrays and an int (1 = B is a
    random next sentence). `ds.meta` is meta.json (vocab_size, special ids, max_seq_length, counts, seed).
    A missing or inconsistent file is an error naming it.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: no such pre-training data directory")
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: missing; {self.directory} is not a complete build_shards output")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
            if meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {meta.get('version')!r} is not supported (expected {FORMAT_VERSION})")
            shards = [(_shard_name(s["name"]), int(s["num_instances"]), int(s["num_tokens"])) for s in meta["shards"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{meta_path}: not a valid pre-training meta.json ({e})") from None
        except RecursionError:  # json's parser on arrays nested thousands deep
            raise ValueError(f"{meta_path}: not a valid pre-training meta.json (JSON nested too deeply)") from None
        self.meta = meta
        self._shards = []
        self._starts = [0]
        for name, n, n_tokens in shards:
            arrays = {key: self._load(self.directory / f"{name}.{key}.npy") for key in _ARRAYS}
            expected = {"tokens": n_tokens, "offsets": n + 1, "a_lengths": n, "is_random_next": n}
            for key, size in expected.items():
                if arrays[key].ndim != 1 or arrays[key].shape[0] != size:
                    raise ValueError(f"{self.directory / f'{name}.{key}.npy'}: shape {arrays[key].shape}, "
                                     f"expected ({size},) from meta.json")
            if n and (arrays["offsets"][0] != 0 or arrays["offsets"][-1] != n_tokens):
                raise ValueError(f"{self.directory / f'{name}.offsets.npy'}: offsets do not span the tokens")
            self._shards.append(arrays)
            self._starts.append(self._starts[-1] + n)

    def __getstate__(self) -> dict:
        """Pickled without the shard arrays: a memory map pickles as a copy of its whole file, so each DataLoader
        worker started by spawn or forkserver (and each deepcopy) would hold the corpus in memory."""
        state = self.__dict__.copy()
        del state["_shards"]
        return state

    def __setstate__(self, state: dict) -> None:
        """Map the shard files again; they must still be the ones pickled (the same meta.json)."""
        fresh = PretrainingDataset(state["directory"])
        if fresh.meta != state["meta"]:
            raise ValueError(f"{Path(state['directory']) / 'meta.json'}: the shards changed since this dataset was "
                             "pickled (meta.json differs); make a new PretrainingDataset")
        self.__dict__.update(state)
        self._shards = fresh._shards

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing shard file")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: unreadable shard file ({e})") from None

    @property
    def max_seq_length(self) -> int:
        return self.meta["max_seq_length"]

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} instances")
        shard = bisect.bisect_right(self._starts, i) - 1
        arrays = self._shards[shard]
        j = i - self._starts[shard]
        lo, hi = int(arrays["offsets"][j]), int(arrays["offsets"][j + 1])
        input_ids = np.array(arrays["tokens"][lo:hi], dtype=np.int64)
        token_type_ids = np.zeros(hi - lo, dtype=np.int64)
        token_type_ids[int(arrays["a_lengths"][j]) + 2:] = 1
        return input_ids, token_type_ids, int(arrays["is_random_next"][j])

    def __repr__(self) -> str:
        return f"PretrainingDataset({str(self.directory)!r}, {len(self)} instances)"
