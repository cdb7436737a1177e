"""Work that must not grow with the product of two sizes, asserted by counting the inner operations (never by timing:
bench/scaling_probe.py measures the times). Each case once cost a call per item of something proportional to
another size: a Rust rebuild of every added token per restored token, a vocabulary copy per add_tokens call, a
copy of the added tokens per converted token, a pass over every entity per entity type."""
from __future__ import annotations

import random
from collections import Counter

import pytest
from tokenizers import AddedToken
from tokenizers import Tokenizer as RustTokenizer

import bertkit.tokenizer as tokenizer_module
from bertkit import metrics as M
from bertkit.tokenizer import BertTokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "hello", "world", "##s", "##ed", "run"]
VOCAB = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
COUNTED = ("add_tokens", "add_special_tokens", "get_vocab", "get_added_tokens_decoder")


class CountingTokenizer:
    """A `tokenizers.Tokenizer` that counts the calls of the methods in COUNTED (shared `calls`)."""

    calls: Counter = Counter()

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_real", RustTokenizer(*args, **kwargs))

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if name not in COUNTED:
            return attr

        def counted(*args, **kwargs):
            CountingTokenizer.calls[name] += 1
            return attr(*args, **kwargs)
        return counted

    def __setattr__(self, name, value):
        setattr(self._real, name, value)


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """BertTokenizer builds its Rust tokenizer as a CountingTokenizer; returns the (cleared) counts."""
    monkeypatch.setattr(tokenizer_module, "Tokenizer", CountingTokenizer)
    CountingTokenizer.calls = Counter()
    return CountingTokenizer.calls


def _flags(tok: BertTokenizer) -> dict:
    return {i: (t.content, t.special, t.normalized, t.lstrip, t.rstrip, t.single_word)
            for i, t in tok.added_tokens_decoder.items()}


def test_loading_many_added_tokens_adds_them_in_runs(tmp_path, calls):
    """Restoring 3,000 saved tokens (runs of plain, special, plain ones) takes a Rust call per run, not per token
    (each call rebuilds the matcher of every added token: 8,000 tokens took 22 s), and gives them back as saved."""
    saved = BertTokenizer(VOCAB)
    saved.add_tokens([f"Plain{i}" for i in range(1000)])
    saved.add_tokens([f"<s{i}>" for i in range(1000)], special_tokens=True)
    saved.add_tokens([AddedToken(f"late{i}", lstrip=True) for i in range(1000)])
    saved.save_pretrained(tmp_path)
    calls.clear()
    loaded = BertTokenizer.from_pretrained(tmp_path)
    # four runs (the roles' saved entries, plain, special, plain), then the roles and the extras
    assert calls["add_tokens"] + calls["add_special_tokens"] <= 6
    assert _flags(loaded) == _flags(saved) and len(loaded) == len(VOCAB) + 3000
    text = " ".join(f"the Plain{i} <s{i}> late{i}" for i in range(0, 1000, 11))
    assert loaded(text, return_offsets_mapping=True) == saved(text, return_offsets_mapping=True)


def test_loading_alternating_added_tokens_keeps_ids(calls):
    """Special and plain tokens interleaved in id order (a run each) come back with their saved ids and flags."""
    rng = random.Random(0)
    decoder = {len(VOCAB) + i: AddedToken(f"<t{i}>", special=rng.random() < 0.5, normalized=rng.random() < 0.5,
                                          rstrip=rng.random() < 0.3) for i in range(300)}
    tok = BertTokenizer(VOCAB, added_tokens_decoder=decoder)
    assert {i: tok.added_tokens_decoder[i] for i in decoder} == decoder
    assert tok.convert_tokens_to_ids([t.content for t in decoder.values()]) == list(decoder)


def test_add_tokens_one_at_a_time_copies_no_vocabulary(calls):
    """add_tokens in a loop (as tutorials do) looks each token up, without a copy of the whole vocabulary per call
    (13 ms each for BERT's 30,522 tokens: 1,000 calls took 16 s, transformers 0.3 s); counts and ids as before."""
    tok = BertTokenizer(VOCAB)
    calls.clear()
    added = [tok.add_tokens(t) for t in ["Hello", "qzx", "QZX", "cat", "newword", "qzx", "<e1>"] * 30]
    assert calls["get_vocab"] == 0
    assert added[:7] == [0, 1, 0, 0, 1, 0, 1] and sum(added) == 3
    assert tok.tokenize("Hello QZX newword <E1>") == ["hello", "qzx", "newword", "<e1>"]


def test_convert_tokens_to_ids_reads_added_tokens_once(calls):
    """Capitalised forms of 500 added tokens on an uncased tokenizer: the added tokens are read from Rust once for
    the list, not once per token (2,500 tokens with 5,000 added took 23 s)."""
    tok = BertTokenizer(VOCAB)
    tok.add_tokens([f"Ent{i}" for i in range(500)])
    tok.add_tokens(["[Special]"], special_tokens=True)
    calls.clear()
    ids = tok.convert_tokens_to_ids([f"ENT{i}" for i in range(500)] + ["Hello", "[SPECIAL]", "Nothing"])
    assert calls["get_added_tokens_decoder"] <= 1
    assert ids == [tok.convert_tokens_to_ids(f"ent{i}") for i in range(500)] + [1, 1, 1]  # only added ones


class CountedType(str):
    """An entity type that counts its comparisons (`CountedType.compared`)."""

    compared = 0

    def __eq__(self, other):
        CountedType.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_entity_f1_counts_types_in_one_pass(monkeypatch):
    """Per-type scores of 60 entity types cost comparisons in proportion to the tags, not tags x types (a pass
    over every entity per type: 80 types of 200k tags took 3.5 s, seqeval 3 s); scores as seqeval's."""
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    types = [f"T{k}" for k in range(60)]
    true = [rng.choice(["O", "O", f"B-{rng.choice(types)}", f"I-{rng.choice(types)}"]) for _ in range(6000)]
    pred = [t if rng.random() < 0.7 else rng.choice(["O", f"B-{rng.choice(types)}"]) for t in true]
    split = M._split_tag
    monkeypatch.setattr(M, "_split_tag", lambda tag: (lambda p, t: (p, CountedType(t)))(*split(tag)))
    CountedType.compared = 0
    scores = M.entity_f1(pred, true)
    assert CountedType.compared <= 4 * (len(true) + len(pred))
    report = seqeval.classification_report([true], [pred], output_dict=True, zero_division=0)
    for typ, got in scores["per_type"].items():
        want = report[typ]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (want["precision"], want["recall"], want["f1-score"], want["support"]))


def test_a_row_s_class_id_is_looked_up_not_searched_for(monkeypatch):
    """Labels over many classes: each row's label is found in a table built once per LabelInfo, not by a pass over
    the classes (100k rows over 2,000 labels took seconds; "3.0" for "3", a `label_key` per class and row, ten
    times that). The ids are the search's: the exact spelling first, else the first class of the same key."""
    from bertkit.tasks import classify
    from bertkit.tasks.classify import Example, LabelInfo, example_labels
    info = LabelInfo(False, tuple(str(i) for i in range(500)) + ("x", " x"))
    keys, real = [], classify.label_key
    monkeypatch.setattr(classify, "label_key", lambda v: keys.append(v) or real(v))
    rows = [Example("t", None, f"{i % 500}.0" if i % 2 else str(i % 500), i) for i in range(2000)]
    rows += [Example("t", None, label, 0) for label in ("x", " x", "x ")]
    assert example_labels(rows, info) == [i % 500 for i in range(2000)] + [500, 501, 500]
    assert len(keys) <= len(info.labels) + len(rows), len(keys)   # 1,005,004 when every row searched
    with pytest.raises(ValueError, match=r"^d\.tsv:7: label 'y' is not one of the model's labels"):
        example_labels([Example("t", None, "y", 7)], info, "d.tsv")
