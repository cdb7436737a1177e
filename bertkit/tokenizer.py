"""BERT's WordPiece tokenizer, run by the Rust `tokenizers` engine, behind a HF-familiar API.

The pipeline is the one Hugging Face builds for BERT (BertNormalizer -> BertPreTokenizer -> WordPiece ->
[CLS] A [SEP] B [SEP] template), so ids match `transformers.BertTokenizer` exactly and the files we save
load in transformers. Batches go to Rust in one call, with truncation and padding configured on the Rust
side, so the Python cost per text is a few attribute reads.

On every line of ../shared/data the ids also equal transformers' pure-Python BertTokenizerLegacy. The two
references disagree on rare input, and we follow the Rust one (transformers reads our files with it):
decomposed accents in cased text (Python composes them with NFC first), Greek capital sigma at a word end
when lower-casing (Python's str.lower gives the final form), unassigned code points (Python drops them),
CJK code points U+2B820..U+2B91F (Python splits them off like other CJK), and punctuation newer than the
Rust Unicode tables (e.g. U+2E44).
"""
from __future__ import annotations

import json
import operator
import os
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece

from bertkit.checks import is_int
from bertkit.io import atomic_path, atomic_paths, read_json, read_lines, read_text
from bertkit.warn import warn

__all__ = ["BatchEncoding", "BertTokenizer", "CharSpan", "TokenSpan", "load_vocab"]

# the files `BertTokenizer.save_pretrained` writes
SAVED_FILES = frozenset({"vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})

SPECIAL_TOKEN_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA_SPECIAL_KEYS = ("extra_special_tokens", "additional_special_tokens")  # transformers 5 name, older name
DEFAULT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
# transformers stores "no limit" as model_max_length = int(1e30) and treats anything above 1e20 as unset;
# such a value must never reach Rust (it overflows usize)
NO_MAX_LENGTH_ABOVE = int(1e20)

# User-facing option values -> the strategy name the Rust side uses (None: off).
_PADDING = {False: None, "do_not_pad": None, True: "longest", "longest": "longest", "max_length": "max_length"}
_TRUNCATION = {
    False: None,
    "do_not_truncate": None,
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}
_SIDES = ("right", "left")  # padding_side / truncation_side values, as in transformers
# Tokenizers whose call lock a forked child renews: a fork while another thread is inside a call copies the lock
# held, with no thread left in the child to release it, so the child's first call would wait forever.
_LOCKED: weakref.WeakSet = weakref.WeakSet()


def _renew_locks_in_child() -> None:
    renewed: dict[int, threading.RLock] = {}   # shallow copies share one lock, and keep sharing one
    for tok in list(_LOCKED):
        tok._lock = renewed.setdefault(id(tok._lock), threading.RLock())


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_renew_locks_in_child)

_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))  # in transformers' order


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """Read a vocab.txt: one token per line, id = line number. A token listed twice takes its last line's id,
    as in transformers (some published vocabularies repeat lines), with a warning: its earlier ids are unused."""
    text = read_text(path).replace("\r\n", "\n")  # a vocab.txt saved on Windows, as Python's text mode reads it
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    vocab: dict[str, int] = {}
    repeated = []   # (line, token, its earlier line)
    for index, token in enumerate(lines):
        if token in vocab:
            repeated.append((index + 1, token, vocab[token] + 1))
        vocab[token] = index
    if repeated:
        shown = "; ".join(f"line {n}: {t!r} (also on line {first})" for n, t, first in repeated[:3])
        warn(f"{path}: {len(repeated)} token(s) listed twice, e.g. {shown}; each takes its last line's id, as in "
             f"transformers, and {len(repeated)} id(s) stay unused; the tokenizer cannot add tokens")
    return vocab


class CharSpan(NamedTuple):
    """Characters [start, end) of the original text, as transformers' CharSpan."""

    start: int
    end: int


class TokenSpan(NamedTuple):
    """Tokens [start, end) of an encoded sequence, as transformers' TokenSpan."""

    start: int
    end: int


class BatchEncoding(dict):
    """The model inputs (input_ids, token_type_ids, attention_mask, ...) plus the Rust encodings behind them.

    Row `i` of the lists (or tensors) is `encodings[i]`, which answers `word_ids(i)` etc. The mapping methods
    take `(index)` for row 0 or `(row, index)`, as in transformers.
    """

    is_fast = True  # backed by the Rust tokenizer, as transformers' fast BatchEncoding

    def __init__(self, data: Mapping, encodings: list | None = None):
        super().__init__(data)
        self.encodings = encodings or []

    def __getitem__(self, key):
        """A key's values, or (an int or slice, as in transformers) the Rust encodings of those rows."""
        if isinstance(key, (int, slice)):
            return self.encodings[key]
        return super().__getitem__(key)

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Index of the word each token came from (None for special and padding tokens). The row's argument
        has transformers' name, as its token-classification guide passes it (`word_ids(batch_index=i)`)."""
        return self.encodings[batch_index].word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 for tokens of the first text, 1 for the second, None for special and padding tokens."""
        return self.encodings[batch_index].sequence_ids

    def tokens(self, batch_index: int = 0) -> list[str]:
        return self.encodings[batch_index].tokens

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None,
                      sequence_index: int = 0) -> int | None:
        """Index of the token holding a character of the text (`sequence_index` 1: of the pair's second
        text); None for a character no token covers (whitespace)."""
        row, char_index = self._row_and_index(batch_or_char_index, char_index, "char_to_token")
        return row.char_to_token(char_index, sequence_index)

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        """Characters of its own text a token came from; None for special and padding tokens."""
        row, token_index = self._row_and_index(batch_or_token_index, token_index, "token_to_chars")
        span = row.token_to_chars(token_index)
        return None if span is None else CharSpan(*span)

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None,
                       sequence_index: int = 0) -> TokenSpan | None:
        """Tokens of a word (index as in word_ids()); None when no token holds it (e.g. truncated away)."""
        row, word_index = self._row_and_index(batch_or_word_index, word_index, "word_to_tokens")
        span = row.word_to_tokens(word_index, sequence_index)
        return None if span is None else TokenSpan(*span)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        """The word a token belongs to (as word_ids()); None for special and padding tokens."""
        row, token_index = self._row_and_index(batch_or_token_index, token_index, "token_to_word")
        return row.token_to_word(token_index)

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        """0 or 1: the text of the pair a token came from (as sequence_ids()); None for special tokens."""
        row, token_index = self._row_and_index(batch_or_token_index, token_index, "token_to_sequence")
        return row.token_to_sequence(token_index)

    def char_to_word(self, batch_or_char_index: int, char_index: int | None = None,
                     sequence_index: int = 0) -> int | None:
        """The word holding a character of the text (`sequence_index` 1: of the pair's second text)."""
        row, char_index = self._row_and_index(batch_or_char_index, char_index, "char_to_word")
        return row.char_to_word(char_index, sequence_index)

    def word_to_chars(self, batch_or_word_index: int, word_index: int | None = None,
                      sequence_index: int = 0) -> CharSpan | None:
        """Characters of a word (index as in word_ids()) in its text."""
        row, word_index = self._row_and_index(batch_or_word_index, word_index, "word_to_chars")
        span = row.word_to_chars(word_index, sequence_index)
        return None if span is None else CharSpan(*span)

    @property
    def n_sequences(self) -> int | None:
        """1 for single texts, 2 for pairs (None without encodings), as transformers."""
        return self.encodings[0].n_sequences if self.encodings else None

    def _row_and_index(self, batch_or_index: int, index: int | None, method: str):
        """The Rust encoding and position of a `(index)` or `(row, index)` call."""
        if not self.encodings:
            raise ValueError(f"{method}() needs the encodings of a tokenizer call; this BatchEncoding has none "
                             "(pad() and hand-built ones do not carry them)")
        if index is None:
            return self.encodings[0], batch_or_index
        return self.encodings[batch_or_index], index

    def convert_to_tensors(self, tensor_type: str | None = None) -> BatchEncoding:
        """Make every value a tensor ("pt") or array ("np"), in place, as transformers' method does: the HF course
        pops offset_mapping from a padded call's lists, then converts the rest. None changes nothing."""
        _check_tensor_type(tensor_type, "tensor_type")
        if tensor_type is not None:
            for key, value in self.items():
                if _tensor_kind(value) != tensor_type or isinstance(value, (list, tuple)):
                    self[key] = _pad_tensor(_py(value), tensor_type, key, "convert_to_tensors")
        return self

    def to(self, device: str | torch.device) -> BatchEncoding:
        """Move every tensor to `device` (in place; returns self for chaining)."""
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device)
        return self


class BertTokenizer:
    """BERT WordPiece tokenizer.

    `vocab_file` is a vocab.txt path or a {token: id} dict with ids 0..n-1. For an uncased vocabulary
    (`do_lower_case=True`) accents are stripped too unless `strip_accents=False` (HF semantics: None
    follows `do_lower_case`). `added_tokens_decoder` ({id: AddedToken}) restores tokens added after the
    vocabulary, as saved; their ids are checked. `extra_special_tokens` (or transformers 4's name,
    `additional_special_tokens`) are special tokens beyond the five roles: never split, listed in all_special_tokens.
    A role or extra token may be an `AddedToken`, added as transformers' constructor adds it: a role's marked
    special (its `normalized`, unless set, False), an extra one with its flags as given (AddedToken("<e1>",
    lstrip=True) is not special and normalized, so the Rust decoder keeps it and "<E1>" matches uncased); they
    read back as str. A token already restored from `added_tokens_decoder` keeps its saved flags.
    `padding_side` / `truncation_side` ("right" or "left", settable later) say where padding goes and which
    end truncation cuts, as in transformers. `model_max_length` above 1e20 (transformers' int(1e30) "no
    limit") means no default maximum. `clean_up_tokenization_spaces` is decode's default (tokenizer_config.json's
    key, False when absent, as in transformers 5). `name_or_path` is what from_pretrained loaded.

    Threads may share a tokenizer, each call with its own options: a call's truncation, padding and
    split_special_tokens are set on the one Rust tokenizer and read by its encode, so a lock keeps each call's
    setting and encoding together (transformers' fast tokenizer has no lock: 8 threads with different options
    got about 1 result in 9 wrong). Changing `backend_tokenizer` directly is outside that lock.
    """

    # Class-level defaults, so tokenizers pickled before these attributes existed still load.
    _padding_side = "right"
    _truncation_side = "right"
    _extra_special: tuple[str, ...] | list[str] = ()
    clean_up_tokenization_spaces = False
    name_or_path = ""
    is_fast = True  # always the Rust tokenizer; for code that checks transformers' attribute

    def __init__(
        self,
        vocab_file: str | os.PathLike | Mapping[str, int],
        do_lower_case: bool = True,
        *,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        unk_token: str | AddedToken = "[UNK]",
        sep_token: str | AddedToken = "[SEP]",
        pad_token: str | AddedToken = "[PAD]",
        cls_token: str | AddedToken = "[CLS]",
        mask_token: str | AddedToken = "[MASK]",
        model_max_length: int = 512,
        max_input_chars_per_word: int = 100,
        added_tokens_decoder: Mapping[int, AddedToken] | None = None,
        extra_special_tokens: Sequence[str | AddedToken] | None = None,
        additional_special_tokens: Sequence[str | AddedToken] | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        name_or_path: str | os.PathLike = "",
    ):
        if isinstance(vocab_file, Mapping):
            vocab, source = dict(vocab_file), "vocabulary"
        else:
            vocab, source = load_vocab(vocab_file), os.fspath(vocab_file)
        roles = _role_tokens(unk_token=unk_token, sep_token=sep_token, pad_token=pad_token, cls_token=cls_token,
                             mask_token=mask_token)
        extra = _extra_tokens(extra_special_tokens, additional_special_tokens)
        unk_token = _content(unk_token)
        ids = sorted(vocab.values())
        if any(not is_int(i) for i in ids) or (ids and ids[0] < 0) \
                or len(set(ids)) != len(ids):
            raise ValueError(f"{source}: token ids must be distinct ints >= 0")
        # ids no token holds (a vocab.txt listing a token twice, or transformers' tokenizer.json of one): a new
        # token would get one of the vocabulary's ids (the Rust library numbers it by the count of tokens)
        self._unused_ids = (ids[-1] + 1 - len(ids)) if ids else 0
        self._vocab_source = source
        if unk_token not in vocab:
            raise ValueError(
                f"{source}: lacks the unknown token {unk_token!r} "
                "(WordPiece maps words it cannot split to it)"
            )
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.model_max_length = int(model_max_length)
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.name_or_path = os.fspath(name_or_path)

        tok = Tokenizer(WordPiece(vocab, unk_token=unk_token, max_input_chars_per_word=max_input_chars_per_word))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=self.tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=self.do_lower_case,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        self._tok = tok
        self._lock = threading.RLock()  # a call's Rust settings and its encoding, together (see the class doc)
        _LOCKED.add(self)
        self._rust_settings = None  # (truncation, padding) last sent to Rust, sides included; see _configure
        self._warned_too_long = False

        # Restore saved added tokens first, in id order, so they get back their ids; then make sure the
        # role tokens exist (a vocabulary without [CLS] gets it as a new token, as in HF).
        self._restore_added(tok, added_tokens_decoder, source)
        self._special = {key: _content(t) for key, t in roles.items()}
        # a token restored above keeps its saved flags (lstrip, rstrip: offsets depend on them), as in transformers
        restored = {t.content for t in tok.get_added_tokens_decoder().values()}
        self._no_new_ids(tok, [_content(t) for t in (*roles.values(), *extra)])
        tok.add_special_tokens([t if isinstance(t, AddedToken) else _special(t) for t in roles.values()
                                if _content(t) not in restored])  # marks a role's AddedToken special
        tok.add_tokens([t if isinstance(t, AddedToken) else _special(t) for t in extra if _content(t) not in restored])
        self._extra_special = list(dict.fromkeys(_content(t) for t in extra))
        self._update_post_processor()

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, use_fast: bool = True, subfolder: str = "",
                        **overrides) -> BertTokenizer:
        """Load from a directory (tokenizer.json, else vocab.txt, plus tokenizer_config.json), a vocab.txt
        or tokenizer.json file, or a model name, found by `tokenizer_dir` as for `AutoTokenizer` (`revision`: a
        branch, tag or commit of the hub cache, ignored for a local file or directory as in transformers;
        `cache_dir`: another hub cache; `subfolder`: a folder of the directory, where the tokenizer files are).
        `overrides` are constructor arguments that win over the saved settings. Accepted for code written for
        transformers, though they change nothing offline: its loading options in `bertkit.hub.NO_EFFECT_OPTIONS`
        (local_files_only, token, force_download, ...) and `use_fast` (the Rust tokenizer is used either way;
        its ids equal the Python one's)."""
        from bertkit.hub import NO_EFFECT_OPTIONS

        if not use_fast:
            warn("use_fast=False: bertkit always uses the Rust tokenizer (its ids equal those of "
                 "transformers' Python BertTokenizer)")
        for name in NO_EFFECT_OPTIONS & set(overrides):
            overrides.pop(name)
        overrides.setdefault("name_or_path", os.fspath(name_or_path))
        if "additional_special_tokens" in overrides and "extra_special_tokens" not in overrides:
            overrides["extra_special_tokens"] = overrides.pop("additional_special_tokens")  # wins over the saved list
        path = Path(name_or_path)
        if path.is_file():
            if path.suffix == ".json":
                return cls._from_tokenizer_json(path, overrides)
            return cls(path, **overrides)
        path = Path(tokenizer_dir(name_or_path, revision=revision, cache_dir=cache_dir, subfolder=subfolder))
        saved = _SavedJson(path)  # each file read once, though several helpers consult it
        rebuilt = _rebuilt_by_bert_class(saved)
        settings = _read_settings(saved)
        settings.update(overrides)
        if (path / "tokenizer.json").is_file():
            if rebuilt:  # the normalizer is the settings' (or their defaults), not tokenizer.json's
                settings = {**BERT_NORMALIZER_DEFAULTS, **settings}
            return cls._from_tokenizer_json(path / "tokenizer.json", settings)
        if (path / "vocab.txt").is_file():
            settings.setdefault("added_tokens_decoder", _read_added_tokens(saved))
            return cls(path / "vocab.txt", **settings)
        raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt in this directory")

    @classmethod
    def _from_tokenizer_json(cls, path: Path, settings: dict) -> BertTokenizer:
        """Rebuild from the WordPiece vocab and settings in a tokenizer.json (settings given win)."""
        data = read_json(path)
        try:
            model = data.get("model") or {}
            if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##":
                raise ValueError(
                    f"{path}: model must be a WordPiece model with '##' continuation, got {model.get('type')!r}"
                )
            normalizer = data.get("normalizer") or {}
            if normalizer.get("type") == "BertNormalizer":
                settings.setdefault("do_lower_case", normalizer["lowercase"])
                settings.setdefault("strip_accents", normalizer["strip_accents"])
                settings.setdefault("tokenize_chinese_chars", normalizer["handle_chinese_chars"])
            settings.setdefault("unk_token", model["unk_token"])
            # transformers takes the sides from tokenizer.json's padding/truncation when the config lacks them
            for key, section in (("padding_side", "padding"), ("truncation_side", "truncation")):
                direction = (data.get(section) or {}).get("direction")
                if isinstance(direction, str):
                    settings.setdefault(key, direction.lower())
            settings.setdefault("max_input_chars_per_word", model.get("max_input_chars_per_word", 100))
            settings.setdefault(
                "added_tokens_decoder",
                {entry["id"]: _added_token(entry) for entry in data.get("added_tokens") or []},
            )
            vocab = model["vocab"]
            if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
                raise TypeError("model.vocab must be an object of token -> integer id")
        except (KeyError, AttributeError, TypeError) as e:  # a required part missing or of the wrong kind
            raise ValueError(f"{path}: not a WordPiece tokenizer.json as the tokenizers library writes it "
                             f"({type(e).__name__}: {e})") from None
        try:
            return cls(vocab, **settings)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # ---------------------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        files: str | os.PathLike | Iterable[str | os.PathLike],
        vocab_size: int = 30522,
        *,
        lowercase: bool = True,
        min_frequency: int = 2,
        strip_accents: bool | None = None,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        limit_alphabet: int = 1000,
        show_progress: bool = False,
        **init_kwargs,
    ) -> BertTokenizer:
        """Train a WordPiece vocabulary on text files (one or many paths); the same files and settings give the
        same vocabulary, ids included, in every run. The files are read line by line as `iter_documents` reads
        them (LF, CRLF or lone CR endings; a bad byte is an error naming its line, raised before any vocabulary
        is made). `init_kwargs` go to the constructor (e.g. unk_token if `special_tokens` uses other names).
        `show_progress`: the `tokenizers` bars on a terminal; without one (a log file) a line on stderr every
        PROGRESS_EVERY_S seconds (the first after a few seconds when a pass looks long, as `ProgressLines`
        says): the bytes each pass has read, then the merges."""
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: training file not found" + (" (a directory: pass its files)"
                                                                           if os.path.isdir(p) else ""))
        return cls._train(
            [os.fspath(p) for p in paths],
            vocab_size, lowercase, min_frequency, strip_accents, special_tokens, limit_alphabet, show_progress,
            init_kwargs, ", ".join(map(os.fspath, paths)) or "(no files given)",
        )

    @classmethod
    def train_from_iterator(
        cls,
        iterator: Iterable[str] | Iterator[str],
        vocab_size: int = 30522,
        *,
        lowercase: bool = True,
        min_frequency: int = 2,
        strip_accents: bool | None = None,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        limit_alphabet: int = 1000,
        show_progress: bool = False,
        **init_kwargs,
    ) -> BertTokenizer:
        """Like `train`, from an iterable of texts (or of lists of texts). Training reads the texts twice, so
        they are copied to a temporary file first (one pass over the iterable, no copy held in memory), whose lines
        are counted as they are written, so that the first pass's progress bar has a total too."""
        with tempfile.TemporaryDirectory(prefix="bertkit-vocab-") as tmp:
            copy, n_lines = Path(tmp) / "texts.txt", 0
            with copy.open("w", encoding="utf-8", newline="\n") as f:
                for item in iterator:
                    for text in [item] if isinstance(item, str) else item:
                        f.write(text + "\n")  # a newline inside a text splits words, as any whitespace does
                        n_lines += _line_count(text)
            return cls._train(
                [str(copy)],
                vocab_size, lowercase, min_frequency, strip_accents, special_tokens, limit_alphabet, show_progress,
                init_kwargs, "the texts given", n_lines,
            )

    def train_new_from_iterator(self, text_iterator: Iterable[str] | Iterable[Sequence[str]], vocab_size: int,
                                length: int | None = None, new_special_tokens: Sequence[str] | None = None, *,
                                min_frequency: int = 0, limit_alphabet: int | None = None,
                                show_progress: bool = False) -> BertTokenizer:
        """A new vocabulary learnt from texts with this tokenizer's settings (casing, accents, special tokens,
        model_max_length, sides), as transformers' method of this name gives it (the HF course trains one so);
        added tokens that are not special are left out there too. Its defaults are the `tokenizers` trainer's
        (every pair counts, the whole alphabet is kept), not `train_from_iterator`'s. `length` only sizes
        transformers' progress bar. Ids are numbered as `train` numbers them, so that one corpus gives one
        vocabulary; transformers' trainer breaks ties in hash order, so a few pieces may differ from its."""
        specials = [t.content for _, t in sorted(self._tok.get_added_tokens_decoder().items()) if t.special]
        specials += [_content(t) for t in new_special_tokens or ()]
        settings = {"tokenize_chinese_chars": self.tokenize_chinese_chars, "model_max_length": self.model_max_length,
                    "max_input_chars_per_word": self.max_input_chars_per_word, "padding_side": self.padding_side,
                    "truncation_side": self.truncation_side, **self._special,
                    "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces}
        return type(self).train_from_iterator(
            text_iterator, vocab_size, lowercase=self.do_lower_case, min_frequency=min_frequency,
            strip_accents=self.strip_accents, special_tokens=list(dict.fromkeys(specials)),
            limit_alphabet=limit_alphabet, show_progress=show_progress, **settings)

    @classmethod
    def _train(cls, paths: list[str], vocab_size, lowercase, min_frequency, strip_accents, special_tokens,
               limit_alphabet, show_progress, init_kwargs, source: str, n_lines: int | None = None) -> BertTokenizer:
        """Train with the same normalizer/pre-tokenizer the result will use, so pieces match at run time.
        Special tokens beyond the five roles stay whole and special, as transformers' trained tokenizers keep
        them; `source` names the corpus in the error for one without text. `n_lines`, the files' lines when known
        beforehand, is the total of the first pass's bar; for the caller's files, the bars count them on the
        bytes first (0.84 s for 516 MB, against many minutes of training).

        Two passes make the result reproducible. The `tokenizers` trainer numbers the "##" pieces (a character
        inside a word) in hash-map order, which changes from process to process, and it breaks ties between
        equally frequent merges by those numbers: the same corpus gave other ids, and now and then other
        pieces (huggingface/tokenizers#1794). The first pass only collects the alphabet and the "##" pieces;
        the second is given them in sorted order ahead of everything it learns, as the trainer orders the
        alphabet itself, so the result is one of the vocabularies the trainer can give, always the same one.

        Python feeds the trainer the lines (`read_lines`), so both passes read the files as the pre-training data
        is read, and their progress can be told in a log file, where the Rust bars stay silent."""
        bars = show_progress and sys.stderr.isatty()
        lines = _TrainingLines(paths) if show_progress and not bars else None
        if bars and n_lines is None:
            n_lines = sum(map(_file_lines, paths))  # a count on the bytes, so that the first bar has a total too
        counted = []  # the first pass's number of lines: the second pass's bar has a total

        def run(vocab_size: int, initial: Sequence[str]) -> dict[str, int]:
            tok = Tokenizer(WordPiece(unk_token=init_kwargs.get("unk_token", "[UNK]")))
            tok.normalizer = normalizers.BertNormalizer(
                clean_text=True,
                handle_chinese_chars=init_kwargs.get("tokenize_chinese_chars", True),
                strip_accents=strip_accents,
                lowercase=lowercase,
            )
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            trainer = trainers.WordPieceTrainer(
                vocab_size=vocab_size,
                min_frequency=min_frequency,
                special_tokens=[*special_tokens, *initial],  # their ids come first, in this order
                **({} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}),  # None: no limit
                continuing_subword_prefix="##",
                show_progress=bars,
            )
            merges = vocab_size if initial else None  # the second pass learns the merges; the first only reads
            what = "counting words (pass 2 of 2)" if initial else "collecting the alphabet (pass 1 of 2)"
            batches = _line_batches(paths, counted) if lines is None else lines.feed(paths, counted, what, merges)
            try:
                tok.train_from_iterator(batches, trainer, length=counted[0] if counted else n_lines)
            finally:
                if lines is not None:
                    lines.merged()
            return tok.get_vocab(with_added_tokens=False)

        seen = set(run(0, ())) - set(special_tokens)  # with no merges: the alphabet and its "##" pieces
        if not seen:  # nothing but the special tokens: every word would be unknown
            raise ValueError(f"empty corpus: no text in {source}")
        pieces = sorted(t for t in seen if t.startswith("##"))
        vocab = run(vocab_size, [*sorted(seen.difference(pieces)), *pieces])
        if len(vocab) > vocab_size:
            warn(f"vocabulary of {len(vocab)} tokens for vocab_size {vocab_size}: the special tokens, the alphabet "
                 f"and its ## pieces alone are {len(vocab)}")
        result = cls(vocab, do_lower_case=lowercase, strip_accents=strip_accents, **init_kwargs)
        extras = [t for t in special_tokens if t not in result._special.values()]
        if extras:
            result.add_special_tokens({"additional_special_tokens": extras})
        return result

    # ------------------------------------------------------------------------------------------ saving
    def _vocab_text(self) -> str:
        """vocab.txt's text: the base vocabulary (no added tokens), one token a line in id order. An unused id
        (see `load_vocab`) gets the line of the next token, which that token's own later line then overrides,
        as in the vocabularies that have them: every token reads back with its id."""
        base = self._tok.get_vocab(with_added_tokens=False)
        tokens = sorted(base, key=base.get)
        lines, i = [], 0
        for t in tokens:
            lines += [t] * (base[t] - i + 1)    # the token's line, after one copy per unused id before it
            i = base[t] + 1
        return "".join(t + "\n" for t in lines)

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str]:
        """Write the base vocabulary alone (atomically): `<save_directory>/[<prefix>-]vocab.txt`, or, when
        `save_directory` is not a directory, that file path with the prefix before its name, as transformers 4
        does. Returns the path written, in a tuple. (transformers 5 writes the same text but names the file
        tokenizer.model.)"""
        target = Path(save_directory)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        path = target / f"{prefix}vocab.txt" if target.is_dir() else target.with_name(prefix + target.name)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(self._vocab_text(), encoding="utf-8")
        return (str(path),)

    def save_pretrained(self, directory: str | os.PathLike) -> tuple[str, ...]:
        """Write vocab.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json (each
        atomically), readable by bertkit and by transformers' BertTokenizer / BertTokenizerLegacy."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        added = self.added_tokens_decoder
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "do_basic_tokenize": True,
            "never_split": None,
            "model_max_length": self.model_max_length,
            "max_input_chars_per_word": self.max_input_chars_per_word,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            **self._special,
            # only when there are some, as transformers 5 writes it (4.x reads this key as a dict)
            **({"extra_special_tokens": list(self._extra_special)} if self._extra_special else {}),
            "added_tokens_decoder": {str(i): _added_token_dict(t) for i, t in added.items()},
        }
        names = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
        paths = tuple(directory / name for name in names)
        with atomic_paths(*paths) as (vocab, tokenizer_json, config_json, specials_json):  # all four, or none
            Path(vocab).write_text(self._vocab_text(), encoding="utf-8")
            with self._lock:  # tokenizer.json must not carry a call's truncation/padding (this thread's or another's)
                self._configure(None, None)
                try:
                    self._tok.save(tokenizer_json, pretty=True)
                except Exception as e:  # the Rust library's error (a full disk) is a bare Exception
                    raise OSError(f"{paths[1]}: not written: {e}") from None
            Path(config_json).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            Path(specials_json).write_text(json.dumps(self._special, indent=2) + "\n", encoding="utf-8")
        return tuple(os.fspath(p) for p in paths)

    # --------------------------------------------------------------------------------- special tokens
    def add_special_tokens(self, special_tokens: Mapping[str, str | AddedToken | Sequence[str | AddedToken]],
                           replace_extra_special_tokens: bool = True) -> int:
        """Add or replace role tokens, e.g. {"cls_token": "<s>"}, and extra special tokens, e.g.
        {"additional_special_tokens": ["<e1>", "</e1>"]} (or transformers 5's "extra_special_tokens");
        returns how many were not special tokens already, counted as `add_tokens(..., special_tokens=True)` does.

        Special tokens are matched on the raw text and never split. A role's token, or one of the extra list, may
        be an `AddedToken`, as in transformers, added with its own flags (e.g. roberta's mask, lstrip=True: it
        takes the space before it; its `normalized`, unless set, is False, as for any special token); roles and
        extra_special_tokens read back as str, as there. A new unk_token must already be in
        the WordPiece vocabulary (the model maps unknown words to it by its vocabulary id). As in
        transformers, a non-empty extra list replaces extra_special_tokens unless
        replace_extra_special_tokens=False (then it extends it); replaced tokens stay in the vocabulary."""
        roles, extra = {}, None
        if all(k in special_tokens for k in EXTRA_SPECIAL_KEYS):
            raise ValueError("give extra_special_tokens or additional_special_tokens, not both")
        for key, value in special_tokens.items():
            if key in EXTRA_SPECIAL_KEYS:
                extra = _token_list(value, key, added=True)
                continue
            if key not in SPECIAL_TOKEN_KEYS:
                raise ValueError(f"special token key {key!r} is not one of "
                                 f"{', '.join(SPECIAL_TOKEN_KEYS + EXTRA_SPECIAL_KEYS)}")
            roles[key] = value
        _role_tokens(**roles)
        tokens = [t if isinstance(t, AddedToken) else _special(t) for t in (*roles.values(), *(extra or ()))]
        roles = {key: _content(value) for key, value in roles.items()}
        extra = extra and [_content(t) for t in extra]
        new_unk = roles.get("unk_token")
        if new_unk is not None and self._tok.model.token_to_id(new_unk) is None:
            raise ValueError(f"unk_token {new_unk!r} is not in the WordPiece vocabulary")
        self._no_new_ids(self._tok, [t.content for t in tokens])
        count = self._tok.add_special_tokens(tokens)
        self._special.update(roles)
        if extra and replace_extra_special_tokens:
            self._extra_special = list(dict.fromkeys(extra))
        elif extra:
            self._extra_special = list(dict.fromkeys([*self._extra_special, *extra]))
        if new_unk is not None:
            self._tok.model.unk_token = new_unk
        self._update_post_processor()
        self._rust_settings = None  # the padding set on the Rust side may name the old pad token
        return count

    def add_tokens(self, tokens: str | AddedToken | Sequence[str | AddedToken], special_tokens: bool = False) -> int:
        """Add whole tokens that are never split; returns a count as transformers', but resize embeddings to
        len(self), not by it (transformers' advice too). Special tokens count as there: each not already a special
        token with the same flags, so one of the WordPiece vocabulary counts though it gets no new id. Non-special
        tokens: how many got new ids (transformers also counts a vocabulary word, which it then registers as an
        added token; bertkit leaves it alone, see below).

        For an uncased tokenizer, non-special tokens are lowercased first, so they match the lowercased
        text ("QzXv" is added as "qzxv", the form every tokenizer, transformers' Python one included, finds
        in the lowercased text; `convert_tokens_to_ids("QzXv")` finds it too). Tokens already in the
        vocabulary are left alone, so adding a known word does not change how other words split. Special
        tokens match the raw text, case-sensitively. An `AddedToken` (as transformers takes) is added as it
        is, with its own matching flags."""
        tokens = [tokens] if isinstance(tokens, (str, AddedToken)) else list(tokens)
        for t in tokens:
            if not _is_token(t):
                raise TypeError(f"tokens to add must be non-empty str or AddedToken, got {t!r}")
        self._no_new_ids(self._tok, [t.content if isinstance(t, AddedToken) else t if special_tokens
                                     or not self.do_lower_case else _lower(t) for t in tokens])
        if special_tokens:  # new ids in the order given, as transformers numbers them; its count, as there
            return self._tok.add_special_tokens([t if isinstance(t, AddedToken) else _special(t) for t in tokens])
        fresh = {}  # tokens looked up one by one: a copy of the whole vocabulary (13 ms) per call made a loop slow
        for t in tokens:
            if isinstance(t, str):
                t = AddedToken(_lower(t) if self.do_lower_case else t, special=False, normalized=True)
            if self._tok.token_to_id(t.content) is None:
                fresh.setdefault(t.content, t)
        return self._tok.add_tokens(list(fresh.values()))

    def _restore_added(self, tok: Tokenizer, added_tokens_decoder: Mapping[int, AddedToken] | None,
                       source: str) -> None:
        """Add saved tokens in id order, checking that each gets its saved id. One Rust call per run of special
        (or non-special) tokens, not per token: each call rebuilds the matcher of every added token, so loading
        8,000 added tokens a call each took 22 s. A vocabulary that leaves ids unused refuses new tokens, which
        are then looked for one token at a time, so the first error in id order is the one raised."""
        saved = sorted((added_tokens_decoder or {}).items())
        runs: list[list[tuple[int, AddedToken]]] = []
        for item in saved:
            if runs and not self._unused_ids and runs[-1][-1][1].special == item[1].special:
                runs[-1].append(item)
            else:
                runs.append([item])
        for run in runs:
            self._no_new_ids(tok, [token.content for _, token in run])
            (tok.add_special_tokens if run[0][1].special else tok.add_tokens)([token for _, token in run])
            for token_id, token in run:
                if tok.token_to_id(token.content) != token_id:
                    raise ValueError(
                        f"{source}: added token {token.content!r} is saved with id {token_id} but would get id "
                        f"{tok.token_to_id(token.content)}; added-token ids must follow the vocabulary without gaps"
                    )

    def _no_new_ids(self, tok: Tokenizer, contents: Sequence[str]) -> None:
        """Refuse tokens that would need new ids when the vocabulary leaves ids unused: the Rust library would
        number them by its count of tokens, i.e. give them ids the vocabulary already holds (transformers does)."""
        if not self._unused_ids:
            return
        new = [c for c in contents if tok.token_to_id(c) is None]
        if new:
            raise ValueError(f"{self._vocab_source}: {self._unused_ids} id(s) of this vocabulary hold no token "
                             f"(a token listed twice), so new tokens ({', '.join(map(repr, new[:3]))}) would take "
                             "ids its tokens hold; list each token once in vocab.txt to add tokens")

    def _update_post_processor(self) -> None:
        cls, sep = self._special["cls_token"], self._special["sep_token"]
        self._tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, self._tok.token_to_id(cls)), (sep, self._tok.token_to_id(sep))],
        )

    # ------------------------------------------------------------------------------------ sides
    @property
    def padding_side(self) -> str:
        """Where padding goes: "right" (default) or "left" (e.g. for generation-style batching)."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        self._padding_side = _side(value, "padding_side")

    @property
    def truncation_side(self) -> str:
        """Which end truncation cuts: "right" (default) or "left" (keeps the end of a long text)."""
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        self._truncation_side = _side(value, "truncation_side")

    # --------------------------------------------------------------------------------------- encoding
    def __call__(
        self,
        text: str | Sequence[str] | Sequence[Sequence[str]],
        text_pair: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        is_split_into_words: bool = False,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_length: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        split_special_tokens: bool = False,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Encode a text, a pair, or a batch (list) of them.

        A str gives flat lists (one sequence), a list gives lists of lists, and return_tensors="pt" ("np")
        gives (batch, length) torch tensors (numpy arrays). A batch of pairs is either `text` and `text_pair`
        lists or one list of (text, text_pair) tuples. With truncation and return_overflowing_tokens, a long
        input yields several windows of at most max_length tokens, overlapping by `stride` tokens, and
        `overflow_to_sample_mapping` tells which input each row came from. max_length defaults to
        model_max_length when truncating or padding to "max_length" (no default when that is transformers'
        "no limit" 1e30). As in transformers, `truncation=None` (the default) truncates with 'longest_first'
        when max_length is given without padding; `return_token_type_ids` / `return_attention_mask` (None:
        on) can drop those keys, and return_length adds "length", each row's token count (padding included).

        With is_split_into_words=True the input is already split into words (e.g. NER data): a list of str
        is one sequence and a list of lists a batch, as in transformers; word_ids() then index those words.
        padding_side overrides self.padding_side for this call. An empty text_pair for one sequence means no
        pair (as in transformers). split_special_tokens=True reads special tokens in the text as plain text
        ("[MASK]" becomes "[", "mask", "]"); `verbose` is accepted for transformers' code and changes nothing."""
        inputs, batched, is_pair = _call_inputs(text, text_pair, is_split_into_words)
        if truncation is None:  # transformers: max_length alone (no padding) asks for truncation
            truncation = "longest_first" if max_length is not None and padding is False else False
        pad = _option(padding, _PADDING, "padding")
        trunc = _option(truncation, _TRUNCATION, "truncation")
        if padding is True and max_length is not None and not trunc:
            warn("max_length is ignored when padding=True and there is no truncation (as in "
                 "transformers); to pad to max_length, use padding='max_length'")
        pad_side = self.padding_side if padding_side is None else _side(padding_side, "padding_side")
        _check_tensor_type(return_tensors)
        pad, trunc, max_length = self._default_max_length(pad, trunc, max_length)
        if trunc and pad and pad_to_multiple_of and max_length % pad_to_multiple_of:
            raise ValueError(
                f"max_length={max_length} is not a multiple of pad_to_multiple_of={pad_to_multiple_of}: "
                "padding would make truncated sequences longer than max_length"
            )
        # stride shapes only the overflowing windows: without them Rust gets 0, since it panics when a pair's
        # longest_first share is no longer than the stride (transformers 5.24 does), and the ids are the same
        window_stride = stride if return_overflowing_tokens else 0
        with self._lock:  # another thread's settings must not reach this call's encoding
            if trunc:
                self._check_truncation(trunc, max_length, stride, inputs, is_pair, add_special_tokens,
                                       return_overflowing_tokens, is_split_into_words)
            self._configure(
                (max_length, window_stride, trunc, self.truncation_side) if trunc else None,
                (max_length if pad == "max_length" else None, pad_to_multiple_of, pad_side) if pad else None,
            )
            self._tok.encode_special_tokens = split_special_tokens
            try:
                encodings = self._tok.encode_batch(inputs, is_pretokenized=is_split_into_words,
                                                   add_special_tokens=add_special_tokens)
            finally:
                self._tok.encode_special_tokens = False
        if not trunc and add_special_tokens:
            self._warn_if_too_long(encodings)

        data, encodings = _features(encodings, return_overflowing_tokens, return_token_type_ids is not False,
                                    return_attention_mask is not False, return_special_tokens_mask,
                                    return_offsets_mapping, return_length)
        if return_tensors is not None:
            data = _stacked(data, return_tensors)
        elif not batched and not return_overflowing_tokens:
            # one sequence: its rows unwrapped; "length" stays a one-item list, as in transformers
            data = {k: v[0] if isinstance(v[0], list) else v for k, v in data.items()}
        return BatchEncoding(data, encodings)

    def _warn_if_too_long(self, encodings) -> None:
        """Model inputs longer than the model takes are warned of, once per tokenizer, as transformers does."""
        if self._warned_too_long:
            return
        longest = max((len(e.ids) for e in encodings), default=0)
        if self.model_max_length <= NO_MAX_LENGTH_ABOVE and longest > self.model_max_length:
            self._warned_too_long = True
            warn(f"a sequence of {longest} tokens is longer than model_max_length "
                 f"({self.model_max_length}), which a model cannot take; truncation=True cuts it "
                 "(said once per tokenizer)")

    def _default_max_length(self, pad, trunc, max_length):
        """(pad, trunc, max_length) with max_length taken from model_max_length when needed; with
        transformers' "no limit" (over 1e20) there is none, so, as there, nothing is cut or padded to it."""
        if max_length is not None or not (trunc or pad == "max_length"):
            return pad, trunc, max_length
        if self.model_max_length <= NO_MAX_LENGTH_ABOVE:
            return pad, trunc, self.model_max_length
        asked = " and ".join(w for w, on in (("truncation", trunc), ("padding='max_length'", pad == "max_length"))
                             if on)
        warn(f"{asked} without max_length: model_max_length is {self.model_max_length} (no limit), "
             "so nothing is truncated or padded to it; pass max_length")
        return (None if pad == "max_length" else pad), None, None

    def _check_truncation(self, trunc, max_length, stride, inputs, is_pair, add_special_tokens, overflow,
                          pretokenized) -> None:
        """Refuse settings the Rust truncation would mishandle (ignore silently, misfire or panic)."""
        if not is_int(max_length) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if not is_int(stride) or stride < 0:
            raise ValueError(f"stride must be an int >= 0, got {stride!r}")
        n_special = self.num_special_tokens_to_add(is_pair) if add_special_tokens else 0
        room = max_length - n_special
        if room < 1:
            raise ValueError(
                f"max_length={max_length} is too small: the special tokens alone take {n_special}, "
                "so no text would fit"
            )
        if stride >= room:
            raise ValueError(
                f"stride={stride} must be smaller than max_length minus the special tokens ({room})"
            )
        if trunc == "only_second" and not is_pair:
            raise ValueError("truncation='only_second' needs a text_pair to truncate")
        if not is_pair:
            return
        if trunc == "longest_first" and overflow:
            raise ValueError(
                "return_overflowing_tokens with truncation='longest_first' is not supported for text pairs "
                "(the windows would pair every part of one text with every part of the other); "
                "use 'only_second' or 'only_first'"
            )
        if trunc in ("only_first", "only_second"):
            self._check_kept_side(trunc, room, stride if overflow else 0, inputs, pretokenized)

    def _check_kept_side(self, trunc, room, stride, pairs, pretokenized) -> None:
        """With only_first/only_second, the text kept whole must leave the other more than `stride` tokens
        (when that one needs cutting at all); Rust would otherwise fail mid-batch, or panic. `pretokenized`:
        the texts are word lists, to be counted as the call will encode them."""
        keep, cut = (1, 0) if trunc == "only_first" else (0, 1)
        which = ("first", "second")
        self._configure(None, None)
        kept = self._tok.encode_batch_fast([p[keep] for p in pairs], is_pretokenized=pretokenized,
                                           add_special_tokens=False)
        for i, enc in enumerate(kept):
            left = room - len(enc.ids)
            if left > stride:
                continue
            cut_ids = self._tok.encode(pairs[i][cut], is_pretokenized=pretokenized, add_special_tokens=False).ids
            if len(cut_ids) > left:
                raise ValueError(
                    f"text pair {i}: truncation={trunc!r} keeps the {which[keep]} text whole ({len(enc.ids)} "
                    f"tokens), leaving {max(left, 0)} for the {which[cut]} text, which needs more than "
                    f"stride={stride}; raise max_length or shorten the {which[keep]} text"
                )

    def _configure(self, truncation, padding) -> None:
        """Set truncation/padding on the Rust tokenizer, only when they differ from the last call's and the Rust
        side still has what that call set (`backend_tokenizer` may have been changed in between). The caller holds
        `self._lock` until its encoding is done."""
        if (truncation, padding) == self._rust_settings and \
                (self._tok.truncation, self._tok.padding) == self._rust_state:
            return
        if truncation is None:
            self._tok.no_truncation()
        else:
            max_length, stride, strategy, direction = truncation
            self._tok.enable_truncation(max_length, stride=stride, strategy=strategy, direction=direction)
        if padding is None:
            self._tok.no_padding()
        else:
            length, multiple, direction = padding
            self._tok.enable_padding(
                direction=direction,
                pad_id=self.pad_token_id,
                pad_type_id=0,
                pad_token=self.pad_token,
                length=length,
                pad_to_multiple_of=multiple,
            )
        self._rust_settings = (truncation, padding)
        self._rust_state = (self._tok.truncation, self._tok.padding)

    def encode(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None,
               **kwargs) -> list[int]:
        """Token ids of one text (or pair), with [CLS]/[SEP] unless add_special_tokens=False; the keyword
        arguments are those of __call__ (e.g. is_split_into_words=True for a list of words)."""
        return self(text, text_pair, **kwargs)["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """WordPiece tokens of `text` (and `pair`), without special tokens unless add_special_tokens=True;
        an empty pair is no pair, as in transformers."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if pair is not None and not isinstance(pair, str):
            raise TypeError(f"pair must be a str or None, got {type(pair).__name__}")
        with self._lock:
            self._configure(None, None)
            return self._tok.encode(text, pair or None, add_special_tokens=add_special_tokens).tokens

    def pad(
        self,
        encoded_inputs: Mapping | Sequence[Mapping],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> BatchEncoding:
        """Pad encoded inputs, as transformers' `tokenizer.pad` does, e.g. in a collate function.

        `encoded_inputs` is one encoding or a batch: a BatchEncoding, a dict of lists, or a list of dicts
        (one per example). input_ids, token_type_ids, attention_mask and special_tokens_mask are padded
        (attention_mask is made when missing, unless return_attention_mask=False, which drops it); other
        keys (labels, ...) are kept as they are. Tensors or arrays given come back as such unless
        return_tensors says otherwise."""
        if isinstance(encoded_inputs, (list, tuple)):
            encoded_inputs = _examples_to_columns(encoded_inputs)
        if not isinstance(encoded_inputs, Mapping):
            raise TypeError("encoded_inputs must be a BatchEncoding, a dict of lists or a list of dicts, "
                            f"got {type(encoded_inputs).__name__}")
        if "input_ids" not in encoded_inputs:
            raise ValueError(f"encoded_inputs must have input_ids, got keys {list(encoded_inputs)}")
        pad = _option(padding, _PADDING, "padding")
        side = self.padding_side if padding_side is None else _side(padding_side, "padding_side")
        if padding is True and max_length is not None:
            warn("max_length is ignored when padding=True (as in transformers); to pad to max_length, "
                 "use padding='max_length'")
        given_type = _tensor_kind(encoded_inputs["input_ids"])
        return_tensors = given_type if return_tensors is None else return_tensors
        _check_tensor_type(return_tensors)
        data = {key: _py(value) for key, value in encoded_inputs.items()}
        pad, _, max_length = self._default_max_length(pad, None, max_length)
        with_mask = return_attention_mask is not False
        if not with_mask:
            data.pop("attention_mask", None)

        ids = data["input_ids"]
        if not ids:
            return BatchEncoding({**data, "attention_mask": []} if return_attention_mask else data)
        batched = isinstance(ids[0], (list, tuple))
        rows = ids if batched else [ids]
        if batched:
            _check_rows(data, len(ids))
        length = max(len(r) for r in rows) if pad == "longest" else max_length if pad else None
        if length is not None and pad_to_multiple_of and length % pad_to_multiple_of:
            length += pad_to_multiple_of - length % pad_to_multiple_of
        fills = {"input_ids": self.pad_token_id, "token_type_ids": 0, "special_tokens_mask": 1, "attention_mask": 0}
        out: dict[str, list] = {key: [] for key in data}
        if with_mask:
            out.setdefault("attention_mask", [])
        for i, row_ids in enumerate(rows):
            row = {key: value[i] if batched else value for key, value in data.items()}
            for key, value in _padded_row(row, len(row_ids), length, side, fills, with_mask).items():
                out[key].append(value)
        result = out if batched else {key: value[0] for key, value in out.items()}
        if return_tensors is not None:
            result = {key: _pad_tensor(value, return_tensors, key) for key, value in result.items()}
        return BatchEncoding(result)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tok.post_processor.num_special_tokens_to_add(pair)

    def get_special_tokens_mask(self, token_ids_0: Sequence[int], token_ids_1: Sequence[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 for each special token, 0 for the others, as transformers: of ids that already hold them (the
        role and extra special tokens), or of the [CLS] a [SEP] (b [SEP]) that encoding would build."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("token_ids_1 must be None when the ids already hold the special tokens")
            special = set(self.convert_tokens_to_ids(self.all_special_tokens))
            return [int(i in special) for i in _id_list(token_ids_0)]
        mask = [1] + [0] * len(token_ids_0) + [1]
        return mask if token_ids_1 is None else mask + [0] * len(token_ids_1) + [1]

    # --------------------------------------------------------------------------------------- decoding
    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Tokens joined back into text as decode does ("##" pieces glued, spaces before punctuation removed)."""
        return self._tok.decoder.decode(list(tokens))

    def decode(self, ids, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str | list[str]:
        """Text of `ids` (list, 1-D tensor or array, or int), as transformers decodes: "##" pieces glued back and
        the space before each punctuation token removed (" ." -> "."); with clean-up (None: the tokenizer's
        `clean_up_tokenization_spaces`), also the spaces around apostrophes of contractions ("can ' t" -> "can't").
        A batch (a list of sequences, a 2-D tensor or array) gives a list of texts, as transformers 5's decode."""
        if _is_id_batch(ids):
            return self.batch_decode(ids, skip_special_tokens, clean_up_tokenization_spaces)
        return self.batch_decode([_id_list(ids)], skip_special_tokens, clean_up_tokenization_spaces)[0]

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        if isinstance(sequences, torch.Tensor) and sequences.dim() == 2:
            sequences = sequences.tolist()
        else:  # rows of a list, an array or a tensor of other shape (a one-line error names it)
            sequences = [_id_list(s) for s in sequences]
        texts = self._tok.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            return [self.clean_up_tokenization(t) for t in texts]
        return texts

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """transformers' clean-up of decoded text: no space before . ? ! , nor around the apostrophe of a
        contraction."""
        for spaced, joined in _CLEAN_UP:
            text = text.replace(spaced, joined)
        return text

    # ------------------------------------------------------------------------------------- vocabulary
    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id of each token; tokens outside the vocabulary map to unk_token_id. On an uncased tokenizer a
        token added as written ("[ENT]", stored as "[ent]" by `add_tokens`) is found too, as in transformers."""
        if isinstance(tokens, str):
            return self._token_ids([tokens])[0]
        if not isinstance(tokens, (list, tuple)):
            _texts(tokens, "tokens")  # raises: names what was expected
        try:
            return self._token_ids(tokens)
        except TypeError:  # Rust's message for a token that is not a str; ours names its index
            _texts(tokens, "tokens")
            raise

    def _token_ids(self, tokens: Sequence[str]) -> list[int]:
        """One Rust lookup per token, as transformers does; only a token not found on an uncased tokenizer is
        looked up again, lower-cased, among the non-special added tokens (a dict, not a second Rust call: the
        second call made 5,000 capitalised added tokens take 1.8x transformers' time)."""
        to_id = self._tok.token_to_id
        ids = [to_id(t) for t in tokens]
        if None not in ids:
            return ids
        unk = self.unk_token_id
        if not self.do_lower_case:
            return [unk if i is None else i for i in ids]
        added = None  # the non-special added tokens by content, read from Rust once, when first needed
        for n, found in enumerate(ids):
            if found is not None:
                continue
            if added is None:
                added = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if not t.special}
            token = tokens[n]
            lowered = token.lower() if token.isascii() else _lower(token)  # the same for ASCII, without Rust
            ids[n] = added.get(lowered, unk)
        return ids

    def convert_ids_to_tokens(self, ids: int | Sequence[int],
                              skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self._tok.id_to_token(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._tok.id_to_token(i) for i in _id_list(ids) if i not in skip]

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of every special token: those of `all_special_tokens` in its order, as transformers', then the
        other special added tokens (added with special_tokens=True, or a replaced role's old token)."""
        listed = [self._tok.token_to_id(t) for t in self.all_special_tokens]
        rest = sorted(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special and i not in listed)
        return list(dict.fromkeys(listed)) + rest

    @property
    def all_special_tokens(self) -> list[str]:
        """The role tokens (unk, sep, pad, cls, mask) then the extra special tokens, each once, as in
        transformers (tokens added with add_tokens(..., special_tokens=True) are not listed there either)."""
        return list(dict.fromkeys([*self._special.values(), *self._extra_special]))

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Role -> token, e.g. {"unk_token": "[UNK]", ...} (a copy; change roles with add_special_tokens)."""
        return dict(self._special)

    @property
    def extra_special_tokens(self) -> list[str]:
        """Special tokens beyond the roles, as given to add_special_tokens or saved in tokenizer_config."""
        return list(self._extra_special)

    @property
    def model_input_names(self) -> list[str]:
        """The inputs a BERT model takes, in transformers' order (a fresh list)."""
        return list(MODEL_INPUT_NAMES)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self._tok.get_added_tokens_decoder().items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        """Added token (special ones included) -> id, by id, as transformers'."""
        return {t.content: i for i, t in self.added_tokens_decoder.items()}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def get_vocab(self) -> dict[str, int]:
        """Token -> id, added tokens included."""
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def vocab_size(self) -> int:
        """Size of the WordPiece vocabulary alone (len(self) counts added tokens too)."""
        return self._tok.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def num_ids(self) -> int:
        """The embedding rows a model needs for this tokenizer's ids: its highest id + 1. That is len(self),
        unless the vocabulary leaves ids unused (a token listed twice in vocab.txt; see `load_vocab`)."""
        return len(self) + self._unused_ids

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (shared: changes to it change this tokenizer)."""
        return self._tok

    def __getstate__(self) -> dict:
        """The state without the lock, which cannot be pickled (DataLoader workers, multiprocessing)."""
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        """A copy has its own Rust tokenizer, so its own lock (also for tokenizers pickled before the lock)."""
        self.__dict__.update(state)
        self._lock = threading.RLock()
        _LOCKED.add(self)

    def __copy__(self) -> BertTokenizer:
        """A shallow copy shares the Rust tokenizer, so it shares the lock too (as deepcopy and pickle do not)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        _LOCKED.add(new)
        return new

    def __repr__(self) -> str:
        return (f"BertTokenizer(vocab_size={self.vocab_size}, added={len(self) - self.vocab_size}, "
                f"do_lower_case={self.do_lower_case}, model_max_length={self.model_max_length})")

    unk_token = property(lambda self: self._special["unk_token"])
    sep_token = property(lambda self: self._special["sep_token"])
    pad_token = property(lambda self: self._special["pad_token"])
    cls_token = property(lambda self: self._special["cls_token"])
    mask_token = property(lambda self: self._special["mask_token"])
    unk_token_id = property(lambda self: self._tok.token_to_id(self._special["unk_token"]))
    sep_token_id = property(lambda self: self._tok.token_to_id(self._special["sep_token"]))
    pad_token_id = property(lambda self: self._tok.token_to_id(self._special["pad_token"]))
    cls_token_id = property(lambda self: self._tok.token_to_id(self._special["cls_token"]))
    mask_token_id = property(lambda self: self._tok.token_to_id(self._special["mask_token"]))


# ------------------------------------------------------------------------------------------- helpers
def tokenizer_dir(name_or_path: str | os.PathLike, *, revision: str | None = None,
                  cache_dir: str | os.PathLike | None = None, subfolder: str = "") -> str:
    """A tokenizer's directory: a local one, or a model name's in $BERTKIT_HOME or the hub cache (`cache_dir`
    replacing its location); see `bertkit.hub.resolve_model_dir`. The one lookup of `BertTokenizer.from_pretrained`
    and `AutoTokenizer`, so that both take the same options and fail the same way."""
    from bertkit.hub import TOKENIZER_FILES, resolve_model_dir

    return resolve_model_dir(os.fspath(name_or_path), required=TOKENIZER_FILES, revision=revision,
                             cache_dir=cache_dir, subfolder=subfolder)


PROGRESS_EVERY_S = 30.0  # without a terminal: a line this often while a vocabulary is trained (seconds)
_BATCH_LINES = 1000      # lines handed to the Rust trainer at a time


def _line_batches(paths: Sequence[str], counted: list[int], progress=None) -> Iterator[list[str]]:
    """The files' lines in batches; the number of lines is appended to `counted` at the end (once)."""
    n = 0
    for path in paths:
        batch = []
        for _, line in read_lines(Path(path), progress):
            batch.append(line)
            if len(batch) == _BATCH_LINES:
                n += len(batch)
                yield batch
                batch = []
        n += len(batch)
        if batch:
            yield batch
    if not counted:
        counted.append(n)


class _TrainingLines:
    """A vocabulary's training told in a log file, in the style of `ProgressLines` (a short training says
    nothing; a long pass says so after a few seconds, then every PROGRESS_EVERY_S): the bytes each pass has read,
    then, while the Rust side chooses the merges (no callback tells how far it got, but it frees the GIL), the
    seconds spent."""

    def __init__(self, paths: Sequence[str]):
        self.total = sum(map(os.path.getsize, paths))
        self.every_s = PROGRESS_EVERY_S
        self.started = time.monotonic()
        self._beating: threading.Thread | None = None  # prints while the merges run
        self._stop = threading.Event()
        self._merges_started = 0.0
        self._said = False

    def _say(self, text: str) -> None:
        print(f"vocabulary: {text}", file=sys.stderr, flush=True)
        self._said = True

    def feed(self, paths, counted: list[int], what: str, vocab_size: int | None) -> Iterator[list[str]]:
        """One pass's batches of lines, its bytes counted; once they are read, the merges' lines start."""
        from .train.tracking import ProgressLines
        bar = ProgressLines(self.total, f"vocabulary: {what}", "byte", self.every_s)
        yield from _line_batches(paths, counted, bar.update)
        bar.close()
        if vocab_size is not None:
            self._merges_started = time.monotonic()
            if self._merges_started - self.started >= self.every_s:  # a long training: say what it does now
                self._say(f"choosing the merges of a vocabulary of {vocab_size:,}")
            self._beating = threading.Thread(target=self._beat, daemon=True)
            self._beating.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(self.every_s, 1.0)):  # at most a line a second
            self._say(f"choosing merges, {time.monotonic() - self._merges_started:.0f} s so far")

    def merged(self) -> None:
        """The trainer returned (or failed): the merge lines stop, with a closing one if any was printed."""
        if self._beating is None:
            return
        self._stop.set()
        self._beating.join()
        self._beating = None
        if self._said:
            self._say(f"merges chosen in {time.monotonic() - self._merges_started:.0f} s")


_COUNT_CHUNK = 1 << 24  # bytes read at a time by `_file_lines`


def _file_lines(path: str) -> int:
    """The number of lines `read_lines` reads from a file, counted on its bytes at memory speed: "\n", "\r\n"
    and a lone "\r" each end one, and a last line needs no ending."""
    n, last, after_cr = 0, b"", False
    with open(path, "rb") as f:
        while chunk := f.read(_COUNT_CHUNK):
            n += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            n -= after_cr and chunk.startswith(b"\n")  # a "\r\n" split between two chunks
            after_cr, last = chunk.endswith(b"\r"), chunk[-1:]
    return n + (last not in (b"", b"\n", b"\r"))


def _line_count(text: str) -> int:
    """The lines `read_lines` reads back from `text` written with a "\\n" after it: "\\n", "\\r\\n" and a lone
    "\\r" each end one."""
    if "\r" not in text:
        return text.count("\n") + 1
    return text.count("\n") + text.count("\r") - text.count("\r\n") + (not text.endswith("\r"))


_LOWERCASE = normalizers.Lowercase()


def _lower(text: str) -> str:
    """`text` lower-cased as the normalizer does it, one character at a time: a word-final capital sigma becomes
    "σ", not str.lower's "ς", so an added token matches the normalized text that holds it."""
    return _LOWERCASE.normalize_str(text)


def _special(content: str) -> AddedToken:
    """Special tokens match the raw text (before lower-casing), so "[CLS]" stays whole in any tokenizer."""
    return AddedToken(content, special=True, normalized=False)


def _added_token(entry: Mapping) -> AddedToken:
    return AddedToken(
        entry["content"],
        single_word=entry.get("single_word", False),
        lstrip=entry.get("lstrip", False),
        rstrip=entry.get("rstrip", False),
        normalized=entry.get("normalized", not entry.get("special", False)),
        special=entry.get("special", False),
    )


def _added_token_dict(token: AddedToken) -> dict:
    return {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
        "special": token.special,
    }


def _token_str(value, path: Path, key: str) -> str:
    """Special tokens are saved as a str or, by older transformers, as an AddedToken dict."""
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, str):
        return value
    raise ValueError(f"{path}: {key} must be a str or an object with 'content', got {value!r}")


def _saved_token_list(value, path: Path, key: str) -> list[str]:
    """A saved list of extra special tokens (str or AddedToken dicts); transformers 5 also allows a dict of
    named model-specific tokens, whose tokens we keep in order."""
    if isinstance(value, Mapping):
        value = list(value.values())
    if not isinstance(value, list):
        raise ValueError(f"{path}: {key} must be a list of tokens, got {value!r}")
    return [_token_str(t, path, key) for t in value]


# transformers' BertTokenizer (and DistilBertTokenizer): the tokenizer classes that rebuild the normalizer from
# tokenizer_config.json's settings, with these defaults, whatever tokenizer.json's normalizer says
BERT_TOKENIZER_CLASSES = ("BertTokenizer", "BertTokenizerFast", "DistilBertTokenizer", "DistilBertTokenizerFast")
BERT_NORMALIZER_DEFAULTS = {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True}


class _SavedJson:
    """The JSON files of one tokenizer directory, each read when first asked for and then kept: the loading helpers
    all consult tokenizer_config.json, which was parsed three times (four for a vocab.txt directory) per load."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._read: dict[str, dict | None] = {}

    def get(self, name: str) -> dict | None:
        """The file's object, or None when the directory has no file of this name."""
        if name not in self._read:
            path = self.directory / name
            self._read[name] = read_json(path) if path.is_file() else None
        return self._read[name]


def _rebuilt_by_bert_class(saved: _SavedJson) -> bool:
    """Whether transformers' AutoTokenizer loads `saved.directory` with its BertTokenizer class: tokenizer_config.json's
    tokenizer_class (else config.json's) names it, or names none beside a BERT config.json. That class builds its
    normalizer from the settings, so a tokenizer.json's (a cased one, say, beside a config without do_lower_case) is
    not used; without a class to pick (a tokenizer.json alone) transformers loads tokenizer.json as written.
    A class bertkit cannot stand in for (BertJapaneseTokenizer's MeCab word splitting) is a ValueError."""
    read = [(saved.directory / name, saved.get(name)) for name in ("tokenizer_config.json", "config.json")]
    read = [(p, d) for p, d in read if isinstance(d, dict)]
    named = next(((p, d["tokenizer_class"]) for p, d in read if d.get("tokenizer_class")), None)
    if named is not None and str(named[1]).startswith("BertJapaneseTokenizer"):
        words = next((d.get("word_tokenizer_type") for p, d in read if p.name == "tokenizer_config.json"), None)
        raise ValueError(f"{named[0]}: tokenizer_class is {named[1]!r} (Japanese word splitting, "
                         f"word_tokenizer_type {words or 'basic'!r}, before WordPiece): bertkit reads BERT WordPiece "
                         "tokenizers only, whose ids would differ")
    if named is not None:
        return named[1] in BERT_TOKENIZER_CLASSES
    model = next((d for p, d in read if p.name == "config.json"), None)
    return model is not None and model.get("model_type", "bert") == "bert"


def _read_settings(saved: _SavedJson) -> dict:
    """Constructor arguments from tokenizer_config.json / special_tokens_map.json (HF key names)."""
    settings: dict = {}
    config_path = saved.directory / "tokenizer_config.json"
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
        path, data = saved.directory / name, saved.get(name)
        if data is None:
            continue
        for key in SPECIAL_TOKEN_KEYS:
            if data.get(key) is not None:
                settings[key] = _token_str(data[key], path, key)
        extra_key = next((k for k in EXTRA_SPECIAL_KEYS if data.get(k)), None)
        if extra_key is not None:
            settings["extra_special_tokens"] = _saved_token_list(data[extra_key], path, extra_key)
    config = saved.get("tokenizer_config.json")
    if config is not None:
        for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "model_max_length",
                    "max_input_chars_per_word", "padding_side", "truncation_side", "clean_up_tokenization_spaces"):
            if key in config and (config[key] is not None or key == "strip_accents"):
                settings[key] = _saved_setting(config[key], config_path, key)
    return settings


def _saved_setting(value, path: Path, key: str):
    """A setting of tokenizer_config.json, checked here so that an error names that file."""
    if key in ("do_lower_case", "tokenize_chinese_chars", "clean_up_tokenization_spaces") or (
            key == "strip_accents" and value is not None):
        ok = isinstance(value, bool)
        expected = "true or false" + (" (or null)" if key == "strip_accents" else "")
    elif key in ("model_max_length", "max_input_chars_per_word"):
        ok = (is_int(value) and value > 0) or (
            key == "model_max_length" and isinstance(value, float) and value >= 1e29)  # transformers' "no limit"
        expected = "a positive integer"
    else:
        ok = value in _SIDES
        expected = " or ".join(map(repr, _SIDES))
    if not ok and value is not None:
        raise ValueError(f"{path}: {key} must be {expected}, got {value!r}")
    return value


def _read_added_tokens(saved: _SavedJson) -> dict[int, AddedToken]:
    """Added tokens of a vocab.txt directory: tokenizer_config.json's added_tokens_decoder, else the
    older added_tokens.json ({token: id})."""
    config_path = saved.directory / "tokenizer_config.json"
    config = saved.get("tokenizer_config.json")
    if config is not None:
        decoder = config.get("added_tokens_decoder")
        if decoder:
            try:
                return {int(i): _added_token(entry) for i, entry in decoder.items()}
            except (KeyError, AttributeError, TypeError, ValueError):
                raise ValueError(f"{config_path}: added_tokens_decoder must map ids to token objects, "
                                 f"got {decoder!r:.80}") from None
    added_path = saved.directory / "added_tokens.json"
    if added_path.is_file():
        try:
            return {int(i): AddedToken(t, special=False, normalized=True) for t, i in read_json(added_path).items()}
        except (TypeError, ValueError):
            raise ValueError(f"{added_path}: expected an object of token -> integer id") from None
    return {}


def _token_list(value, name: str, added: bool = False) -> list:
    """`value` (a list of tokens, or None) as a list of non-empty str, or a TypeError naming `name`; with `added`,
    AddedTokens too (add_special_tokens takes them, as transformers does, to keep their flags)."""
    kinds = "str or AddedToken" if added else "str"
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of {kinds}, got {type(value).__name__}")
    for t in value:
        if not (_is_token(t) if added else isinstance(t, str) and t):
            raise TypeError(f"{name} must hold non-empty {kinds}, got {t!r}")
    return list(value)


def _role_tokens(**roles) -> dict:
    """Role tokens (the constructor's, add_special_tokens'), checked: each a non-empty str or AddedToken."""
    for key, value in roles.items():
        if not _is_token(value):
            raise TypeError(f"{key} must be a non-empty str or AddedToken, got {value!r}")
    return roles


def _extra_tokens(extra, additional) -> list:
    """The constructor's extra special tokens, given under transformers 5's name or 4's (not both)."""
    if extra is not None and additional is not None:
        raise ValueError("give extra_special_tokens or additional_special_tokens, not both")
    if additional is not None:
        return _token_list(additional, "additional_special_tokens", added=True)
    return _token_list(extra, "extra_special_tokens", added=True)


def _is_token(value) -> bool:
    """A token as add_tokens / add_special_tokens take it: a non-empty str or an AddedToken with content."""
    return bool(isinstance(value, str) and value or isinstance(value, AddedToken) and value.content)


def _content(token: str | AddedToken) -> str:
    """The text of a token given as a str or an AddedToken (roles and extra lists keep the text)."""
    return token.content if isinstance(token, AddedToken) else token


def _call_inputs(text, text_pair, is_split_into_words: bool) -> tuple[list, bool, bool]:
    """`__call__`'s text arguments as (inputs for Rust's encode_batch, batched, is_pair), type-checked."""
    given_pairs = False
    if is_split_into_words:
        batched, inputs = _word_input(text, "text")
    else:
        batched = not isinstance(text, str)
        inputs, given_pairs = _text_batch(text, "text")
    if given_pairs and text_pair is not None:
        raise TypeError("text_pair must be None when text is a list of (text, text_pair) pairs")
    # one sequence with an empty pair ("" or []) is no pair, as in transformers; in a batch it stays one
    is_pair = text_pair is not None and (batched or not isinstance(text_pair, (str, list, tuple))
                                         or len(text_pair) > 0)
    if not is_pair:
        return inputs, batched, given_pairs
    if is_split_into_words:
        pairs = _word_batch(text_pair, "text_pair") if batched else [_words(text_pair, "text_pair")]
    elif batched == isinstance(text_pair, str):
        raise TypeError("text_pair must be a str when text is a str, and a list of str when text is a list")
    else:
        pairs = _texts(text_pair, "text_pair")
    if len(pairs) != len(inputs):
        raise ValueError(f"text has {len(inputs)} items but text_pair has {len(pairs)}")
    return list(zip(inputs, pairs)), batched, True


def _features(encodings, overflow: bool, type_ids: bool, attention_mask: bool, special_tokens_mask: bool,
              offsets: bool, length: bool) -> tuple[dict[str, list], list]:
    """The asked-for rows of each encoding, in transformers' key order, and the encodings they came from (with
    return_overflowing_tokens, each input's windows follow it, and overflow_to_sample_mapping says whose)."""
    if overflow:
        sample = [i for i, e in enumerate(encodings) for _ in range(1 + len(e.overflowing))]
        encodings = [w for e in encodings for w in (e, *e.overflowing)]
    data = {"input_ids": [e.ids for e in encodings]}
    if type_ids:
        data["token_type_ids"] = [e.type_ids for e in encodings]
    if attention_mask:
        data["attention_mask"] = [e.attention_mask for e in encodings]
    if special_tokens_mask:
        data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
    if offsets:
        data["offset_mapping"] = [e.offsets for e in encodings]
    if length:
        data["length"] = [len(e.ids) for e in encodings]
    if overflow:
        data["overflow_to_sample_mapping"] = sample
    return data, encodings


def _check_rows(data: Mapping, n: int) -> None:
    """Every column of a batch given to `pad` must hold one row per input_ids row."""
    for key, value in data.items():
        if not isinstance(value, (list, tuple)) or len(value) != n:
            size = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
            raise ValueError(f"encoded_inputs[{key!r}] has {size} rows but input_ids has {n}")


def _padded_row(row: dict, n: int, length: int | None, side: str, fills: dict[str, int], with_mask: bool) -> dict:
    """One example of `n` tokens padded to `length` on `side`: the keys in `fills` as new lists (an attention
    mask of ones made first when asked for and missing), the other keys (labels, ...) as they are."""
    row = {**row, **{key: list(row[key]) for key in fills if key in row}}
    if with_mask and "attention_mask" not in row:
        row["attention_mask"] = [1] * n
    missing = 0 if length is None else length - n
    if missing > 0:
        for key, fill in fills.items():
            if key in row:
                row[key] = row[key] + [fill] * missing if side == "right" else [fill] * missing + row[key]
    return row


def _stacked(data: dict[str, list], kind: str) -> dict:
    """Rows of one length as (batch, length) tensors or arrays of int64; ragged rows are a one-line error."""
    lengths = {len(ids) for ids in data["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(
            f"return_tensors={kind!r} needs sequences of one length, got lengths {min(lengths)}..{max(lengths)}; "
            "pass padding=True (and truncation=True for texts longer than max_length)"
        )
    return {k: _tensor(v, kind, "int64") for k, v in data.items()}


def _texts(value, name: str) -> list[str]:
    """`value` as a list of str, or a TypeError saying what was expected."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a str or a list of str, got {type(value).__name__}")
    if not all(isinstance(t, str) for t in value):
        i, bad = next((i, t) for i, t in enumerate(value) if not isinstance(t, str))
        if _is_text_pair(bad):
            hint = f" (a batch of pairs gives every item as a (text, text_pair) pair, unlike {name}[0])"
        elif isinstance(bad, (list, tuple)):
            hint = " (for words already split, pass is_split_into_words=True)"
        else:
            hint = ""
        raise TypeError(f"{name}[{i}] must be a str, got {type(bad).__name__}{hint}")
    return value if isinstance(value, list) else list(value)


def _is_text_pair(item) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(t, str) for t in item)


def _text_batch(value, name: str) -> tuple[list, bool]:
    """(items, pairs): `value` as a list of str, or, when its first item is a 2-item tuple/list of str, as
    a list of (text, text_pair) tuples, which transformers encodes as pairs."""
    if not (isinstance(value, (list, tuple)) and value and _is_text_pair(value[0])):
        return _texts(value, name), False
    for i, item in enumerate(value):
        if not _is_text_pair(item):
            raise TypeError(f"{name}[{i}] must be a (text, text_pair) pair of str like {name}[0], "
                            f"got {type(item).__name__}")
    return [tuple(item) for item in value], True


def _words(value, name: str) -> list[str]:
    """One pre-split sequence (a list of words) as a list of str, or an error naming the bad item."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{name} must be a list of words (str) with is_split_into_words=True, got {type(value).__name__}"
        )
    for i, word in enumerate(value):
        if not isinstance(word, str):
            raise TypeError(f"{name}[{i}] must be a str (a word) with is_split_into_words=True, "
                            f"got {type(word).__name__}")
    return list(value)


def _word_batch(value, name: str) -> list[list[str]]:
    """A batch of pre-split sequences: a list of lists of words."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of lists of words with is_split_into_words=True, "
                        f"got {type(value).__name__}")
    return [_words(seq, f"{name}[{i}]") for i, seq in enumerate(value)]


def _word_input(value, name: str) -> tuple[bool, list]:
    """(batched, sequences) of pre-split input. As in transformers, a list whose first item is a list (or
    tuple) is a batch; any other list is one sequence of words."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of words (str) or a list of such lists with "
                        f"is_split_into_words=True, got {type(value).__name__}")
    if value and isinstance(value[0], (list, tuple)):
        return True, _word_batch(value, name)
    return False, [_words(value, name)]


def _check_tensor_type(value, name: str = "return_tensors") -> None:
    if value not in (None, "pt", "np"):
        raise ValueError(f"{name} must be None, 'pt' or 'np', got {value!r}")


def _tensor(value, kind: str, dtype: str | None = None):
    """`value` as a torch tensor ("pt") or numpy array ("np"); `dtype` None infers it, as transformers does
    (so float labels stay float), an empty list being int64."""
    if dtype is None and isinstance(value, (list, tuple)) and not value:
        dtype = "int64"
    if kind == "pt":
        return torch.tensor(value, dtype=None if dtype is None else getattr(torch, dtype))
    return np.asarray(value, dtype=dtype)


def _tensor_kind(value) -> str | None:
    """The tensor type ("pt" or "np") of `value` (input_ids given to pad), or None for Python lists."""
    first = value
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, torch.Tensor):
        return "pt"
    if isinstance(first, (np.ndarray, np.generic)):
        return "np"
    return None


def _py(value):
    """Tensors and arrays (or lists of them) as Python lists and numbers; other values as they are."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (torch.Tensor, np.ndarray)):
        return [v.tolist() for v in value]
    return value


def _examples_to_columns(examples: Sequence) -> dict[str, list]:
    """A list of per-example dicts (what a DataLoader hands a collate function) as a dict of lists."""
    if not examples:
        raise ValueError("encoded_inputs must have input_ids, got an empty list")
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping):
            raise TypeError(f"encoded_inputs[{i}] must be a dict (one example), got {type(example).__name__}")
    keys = list(examples[0].keys())
    for i, example in enumerate(examples):
        missing = [k for k in keys if k not in example]
        if missing:
            raise ValueError(f"encoded_inputs[{i}] lacks {missing[0]!r}, which encoded_inputs[0] has")
    return {key: [example[key] for example in examples] for key in keys}


def _pad_tensor(value, kind: str, key: str, caller: str = "pad"):
    """One padded column as a tensor; ragged rows (e.g. labels of token classification) are an error, which
    names the `caller` (pad's return_tensors, or BatchEncoding.convert_to_tensors)."""
    asked = f"return_tensors={kind!r}" if caller == "pad" else f"{caller}({kind!r})"
    if isinstance(value, list) and value and all(isinstance(v, (list, tuple)) for v in value):
        lengths = {len(v) for v in value}
        if len(lengths) > 1:
            raise ValueError(f"{asked} needs rows of one length, but {key!r} has lengths "
                             f"{min(lengths)}..{max(lengths)}")
    try:
        return _tensor(value, kind)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{asked}: {key!r} cannot be made a tensor ({e})") from None


def _side(value, name: str) -> str:
    if isinstance(value, str) and value in _SIDES:
        return value
    raise ValueError(f"{name} must be 'right' or 'left', got {value!r}")


def _option(value, allowed: dict, name: str):
    if isinstance(value, (bool, str)) and value in allowed:
        return allowed[value]
    choices = ", ".join(repr(k) for k in allowed)
    raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _is_id_batch(ids) -> bool:
    """True for sequences of ids: a 2-D tensor or array, or a non-empty list whose first item is a sequence."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        return ids.ndim == 2
    return isinstance(ids, (list, tuple)) and len(ids) > 0 and (
        isinstance(ids[0], (list, tuple)) or getattr(ids[0], "ndim", 0) == 1)


def _id_list(ids) -> list[int]:
    """One sequence of ids as a list, from a list, a 0-/1-D tensor or an int."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() > 1:
            raise ValueError(f"expected one sequence of ids, got a tensor of shape {tuple(ids.shape)}")
        return ids.reshape(-1).tolist()  # () or (n,) -> (n,)
    if isinstance(ids, int):
        return [ids]
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"expected token ids (an int, a list of int or a tensor), got {type(ids).__name__}")
    out = []
    for i in ids:
        try:
            out.append(operator.index(i))  # an int, a numpy integer, a 0-d integer tensor
        except TypeError:
            raise TypeError(f"expected token ids (int), got {i!r} ({type(i).__name__})") from None
    return out
