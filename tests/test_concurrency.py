"""Threads and processes: a tokenizer shared by threads with per-call options, a model shared by threads, copies
and pickles of tokenizers and datasets (DataLoader workers), and DataLoader workers started by spawn.

The race test is structural, not timing-dependent: a stand-in for the Rust tokenizer holds the first call inside
its encoding until another thread changes a setting (or 0.5 s pass), so without the lock that change lands in the
call every time."""
from __future__ import annotations

import concurrent.futures as cf
import copy
import json
import os
import pickle
import threading
import time

import numpy as np
import pytest
import torch

from bertkit import BertConfig, BertModel
from bertkit.data.pretraining import PretrainingDataset, build_shards
from bertkit.tokenizer import BertTokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "##s", "##ed", ".", ",", "[", "]", "mask"]
TEXTS = ["the cat sat on the mat .", "a dog ran far away , the cats sat .", "the mat .",
         "dogs ran on a mat , far away ."]
PAIRS = ["a cat sat .", "the dog ran far , far away on the mat .", "cats .", "the mat sat on a dog ."]


def _tok() -> BertTokenizer:
    return BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])})


def _plain(enc) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in enc.items()}


class _Gate:
    """Stands in for the Rust tokenizer: the first encode_batch waits (up to `wait` seconds) until another thread
    changes a setting, then encodes with whatever settings the Rust side holds by then."""

    SETTERS = ("enable_truncation", "no_truncation", "enable_padding", "no_padding")

    def __init__(self, real, wait: float = 0.5):
        vars(self).update(real=real, wait=wait, first=None, encoding=threading.Event(), changed=threading.Event())

    def _note_change(self) -> None:
        if self.first is not None and threading.current_thread() is not self.first:
            self.changed.set()

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if name in self.SETTERS:
            def setter(*args, **kwargs):
                self._note_change()
                return attr(*args, **kwargs)
            return setter
        if name == "encode_batch":
            def encode_batch(*args, **kwargs):
                if self.first is None:
                    vars(self)["first"] = threading.current_thread()
                    self.encoding.set()
                    self.changed.wait(self.wait)
                return attr(*args, **kwargs)
            return encode_batch
        return attr

    def __setattr__(self, name, value):
        if name == "encode_special_tokens" and bool(value) != bool(self.real.encode_special_tokens):
            self._note_change()
        setattr(self.real, name, value)


def _first(tok):
    return tok(TEXTS, truncation=True, max_length=6)


def _split_first(tok):
    return tok(["the [MASK] sat ."], split_special_tokens=True)


SECOND = {
    "padding": lambda t: t(TEXTS, padding="max_length", max_length=16),
    "pairs": lambda t: t(TEXTS, PAIRS, truncation="only_second", max_length=20, return_offsets_mapping=True),
    "tokenize": lambda t: t.tokenize(" ".join(TEXTS)),
    "plain call": lambda t: t(["the [MASK] sat ."]),
}


@pytest.mark.parametrize("first, second, shallow_copy", [
    (_first, "padding", False),
    (_first, "pairs", False),
    (_first, "tokenize", False),
    (_first, "padding", True),     # copy.copy shares the Rust tokenizer: it must share the lock too
    (_split_first, "plain call", False),
])
def test_a_call_keeps_its_options_while_another_thread_calls_with_others(first, second, shallow_copy):
    tok = _tok()
    expected_first, expected_second = _plain(first(_tok())), SECOND[second](_tok())
    gate = _Gate(tok._tok)
    tok._tok = gate
    other = copy.copy(tok) if shallow_copy else tok
    with cf.ThreadPoolExecutor(1) as pool:
        running = pool.submit(first, tok)
        assert gate.encoding.wait(5), "the first call never reached its encoding"
        got_second = SECOND[second](other)   # while the first call is inside encode_batch (or waiting for it)
        got_first = running.result(timeout=10)
    assert _plain(got_first) == expected_first
    assert (got_second if second == "tokenize" else _plain(got_second)) == \
        (expected_second if second == "tokenize" else _plain(expected_second))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_while_another_thread_is_inside_a_call_can_still_tokenize():
    """The fork copies the lock held by a thread the child does not have; the child must not wait for it."""
    tok = _tok()
    twin = copy.copy(tok)
    expected = tok("the cat sat")["input_ids"]
    held, release = threading.Event(), threading.Event()

    def inside_a_call():
        with tok._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=inside_a_call)
    holder.start()
    assert held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: exit with the verdict, never return into pytest
        code = 1
        try:
            code = 0 if tok("the cat sat")["input_ids"] == expected and twin._lock is tok._lock else 2
        finally:
            os._exit(code)
    release.set()
    holder.join()
    for _ in range(100):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child waited 5 s for the tokenizer's lock")
    assert os.waitstatus_to_exitcode(status) == 0


def test_threads_with_different_options_get_what_sequential_calls_get():
    """8 threads, each with its own options, 150 calls each, on one tokenizer: no result differs."""
    tok = _tok()
    options = [dict(truncation=True, max_length=5), dict(padding="max_length", max_length=20),
               dict(pair=True, truncation="only_second", max_length=22), dict(return_offsets_mapping=True),
               dict(padding=True), dict(truncation=True, max_length=8, padding="max_length", padding_side="left"),
               dict(pair=True), dict(split_special_tokens=True)]

    def call(k: int, i: int) -> dict:
        opts = dict(options[k])
        texts = [TEXTS[i % 4], TEXTS[(i + 1) % 4] + " the [MASK]"]
        enc = tok(texts, [PAIRS[i % 4], PAIRS[(i + 2) % 4]], **opts) if opts.pop("pair", False) else tok(texts, **opts)
        return dict(enc)

    expected = {(k, i): call(k, i) for k in range(8) for i in range(4)}

    def work(k: int) -> int:
        return sum(call(k, i) != expected[k, i % 4] for i in range(150))

    with cf.ThreadPoolExecutor(8) as pool:
        wrong = list(pool.map(work, range(8)))
    assert wrong == [0] * 8


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
def test_copies_and_pickles_of_a_tokenizer_encode_alike(how):
    tok = _tok()
    tok.add_tokens(["zebra"])
    tok.add_special_tokens({"additional_special_tokens": ["<e1>"]})
    tok.padding_side, tok.truncation_side = "left", "left"
    tok(TEXTS, truncation=True, max_length=4, padding="max_length")   # leaves settings on the Rust side
    twin = {"pickle": lambda t: pickle.loads(pickle.dumps(t)), "deepcopy": copy.deepcopy, "copy": copy.copy}[how](tok)
    calls = [dict(), dict(padding=True, return_offsets_mapping=True), dict(truncation=True, max_length=7),
             dict(text_pair=PAIRS, truncation="only_second", max_length=20, padding="max_length")]
    texts = [t + " <e1> zebra" for t in TEXTS]
    assert [_plain(twin(texts, **c)) for c in calls] == [_plain(tok(texts, **c)) for c in calls]
    assert twin.get_vocab() == tok.get_vocab() and twin.padding_side == tok.padding_side == "left"
    assert (twin._lock is tok._lock) == (how == "copy")   # a shallow copy shares the Rust tokenizer and its lock


def test_a_pretraining_dataset_pickles_without_its_shards(tmp_path):
    """A DataLoader worker started by spawn gets the dataset pickled: the shards must be mapped again there, not
    copied through the pipe and held in each worker's memory."""
    docs = [[" ".join(WORDS[j % 10] for j in range(i, i + 5 + i % 7)) for i in range(k, k + 6)] for k in range(60)]
    build_shards(docs, _tok(), tmp_path / "shards", max_seq_length=24, seed=1)
    ds = PretrainingDataset(tmp_path / "shards")
    tokens = sum(a["tokens"].nbytes for a in ds._shards)
    blob = pickle.dumps(ds)
    assert tokens > 4000 and len(blob) < 1500, (tokens, len(blob))
    for twin in (pickle.loads(blob), copy.deepcopy(ds)):
        assert all(a["tokens"].filename is not None for a in twin._shards)   # mapped from the files again
        assert len(twin) == len(ds)
        for i in range(0, len(ds), 7):
            assert [np.asarray(x).tolist() for x in twin[i]] == [np.asarray(x).tolist() for x in ds[i]]
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    meta["seed"] = 2
    (tmp_path / "shards" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta\.json: the shards changed since this dataset was pickled"):
        pickle.loads(blob)


def test_a_model_shared_by_threads_gives_the_sequential_outputs():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(_tok()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64)).eval()
    tok = _tok()
    batches = [tok(TEXTS[i:] + PAIRS[:i], padding=True, return_tensors="pt") for i in range(4)]
    with torch.inference_mode():
        expected = [model(**b).last_hidden_state for b in batches]

    def work(k: int) -> int:
        with torch.inference_mode():
            return sum(not torch.equal(model(**batches[i % 4]).last_hidden_state, expected[i % 4]) for i in range(20))

    with cf.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [0] * 4


class TextDataset(torch.utils.data.Dataset):
    """The HF-course pattern: a user's Dataset that tokenizes in __getitem__."""

    def __init__(self, tok):
        self.tok = tok

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {**self.tok(TEXTS[i % 4], PAIRS[i // 4], truncation=True, max_length=10), "labels": i % 2}


class PadCollate:
    def __init__(self, tok):
        self.tok = tok

    def __call__(self, rows):
        return dict(self.tok.pad(rows, return_tensors="pt"))


def test_spawned_dataloader_workers_tokenize_as_the_main_process():
    tok = _tok()
    tok(TEXTS * 20, padding=True)   # the main process has used the Rust tokenizer's batch encoding first
    data = TextDataset(tok)
    batches = {n: list(torch.utils.data.DataLoader(data, batch_size=4, collate_fn=PadCollate(tok), **kw))
               for n, kw in (("main", {}), ("spawn", dict(num_workers=2, multiprocessing_context="spawn", timeout=60)))}
    assert len(batches["spawn"]) == len(batches["main"]) == 4
    for a, b in zip(batches["spawn"], batches["main"]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
