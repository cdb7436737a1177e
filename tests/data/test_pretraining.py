"""bertkit.data.pretraining on real WikiText with a WordPiece vocabulary trained here: the shape and the
sources of NSP instances, their statistics, determinism, and the memory-mapped shards."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.data.corpus import WIKITEXT_SECTION, WIKITEXT_TITLE, read_documents
from bertkit.data.masking import MaskingCollator, PretrainingBatches
from bertkit.data.pretraining import PretrainingDataset, build_shards, create_instances
from bertkit.tokenizer import BertTokenizer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WIKITEXT = DATA / "pretrain" / "wikitext-2-raw.test.raw"
MAX_LEN = 64
SMALL = 15  # documents for the tests that build shards (tokenising is the slow part)
CLS, SEP = 2, 3  # the [CLS] and [SEP] ids given to create_instances with hand-made token documents


@pytest.fixture(scope="module")
def corpus():
    """(documents as sentences, tokenizer, documents as token ids) for the real WikiText test split."""
    if not WIKITEXT.is_file():
        pytest.skip(f"{WIKITEXT} not found")
    docs = read_documents(WIKITEXT, WIKITEXT_TITLE, skip=WIKITEXT_SECTION)
    tok = BertTokenizer.train_from_iterator([s for d in docs for s in d], vocab_size=1000)
    sentences = [s for d in docs for s in d]
    ids = iter(e.ids for e in tok.backend_tokenizer.encode_batch_fast(sentences, add_special_tokens=False))
    token_docs = [[next(ids) for _ in d] for d in docs]
    return docs, tok, token_docs


def _find(haystack: np.ndarray, needle: list[int], start: int = 0) -> int:
    """Index of `needle` as a contiguous run in `haystack` (int32) at or after `start`, or -1."""
    h, n = haystack.tobytes(), np.asarray(needle, dtype=np.int32).tobytes()
    at = h.find(n, 4 * start)
    while at != -1 and at % 4:
        at = h.find(n, at + 1)
    return at // 4 if at != -1 else -1


def _check_shape(ids, a_len, tok, max_len=MAX_LEN):
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert len(ids) <= max_len
    assert ids[0] == cls and ids[a_len + 1] == sep and ids[-1] == sep
    assert a_len >= 1 and len(ids) - a_len - 3 >= 1
    inner = list(ids[1:a_len + 1]) + list(ids[a_len + 2:-1])
    assert cls not in inner and sep not in inner


def test_instances_shape_and_sources(corpus):
    docs, tok, token_docs = corpus
    instances = create_instances(token_docs, MAX_LEN, tok.cls_token_id, tok.sep_token_id, random.Random(0))
    assert len(instances) > 3000
    flat = [np.array([t for s in d for t in s], dtype=np.int32) for d in token_docs]
    for inst in instances:
        _check_shape(inst.input_ids, inst.a_length, tok)
        assert inst.token_type_ids == [0] * (inst.a_length + 2) + [1] * (len(inst.input_ids) - inst.a_length - 2)
        a = inst.input_ids[1:inst.a_length + 1]
        b = inst.input_ids[inst.a_length + 2:-1]
        a_at = _find(flat[inst.doc_index], a)
        b_at = _find(flat[inst.b_doc_index], b)
        assert a_at >= 0 and b_at >= 0  # A and B are runs of their documents' text
        if inst.is_random_next:
            assert inst.b_doc_index != inst.doc_index
        else:
            assert inst.b_doc_index == inst.doc_index
            assert _find(flat[inst.doc_index], b, a_at + len(a)) >= 0  # B follows A
    # the pairs use the whole budget most of the time
    full = sum(len(i.input_ids) == MAX_LEN for i in instances) / len(instances)
    assert full > 0.6


def test_random_next_fraction(corpus):
    _, tok, token_docs = corpus
    instances = create_instances(token_docs, MAX_LEN, tok.cls_token_id, tok.sep_token_id, random.Random(1))
    free = [i.is_random_next for i in instances if not i.forced_random_next]
    forced = [i.is_random_next for i in instances if i.forced_random_next]
    assert all(forced) and len(free) > 3000
    bound = 4.5 * math.sqrt(0.25 / len(free))
    assert abs(sum(free) / len(free) - 0.5) < bound
    assert sum(i.is_random_next for i in instances) / len(instances) > 0.5  # single-sentence chunks add more


def test_short_targets(corpus):
    _, tok, token_docs = corpus
    dupe, max_len = 20, 128
    instances = create_instances(token_docs, max_len, tok.cls_token_id, tok.sep_token_id, random.Random(2),
                                 dupe_factor=dupe)
    groups = []  # one target per (pass, document): consecutive instances of a document
    for inst in instances:
        if not groups or groups[-1][0] != inst.doc_index:
            groups.append((inst.doc_index, inst.target_length, []))
        groups[-1][2].append(len(inst.input_ids))
    assert len(groups) == dupe * len(token_docs)
    short = [g for g in groups if g[1] < max_len - 3]
    assert all(2 <= g[1] for g in short)
    bound = 4.5 * math.sqrt(0.09 / len(groups))
    assert abs(len(short) / len(groups) - 0.1) < bound
    assert min(g[1] for g in short) < 40 and max(g[1] for g in short) > 80
    mean = lambda gs: np.mean([n for g in gs for n in g[2]])  # noqa: E731
    assert mean(short) < mean([g for g in groups if g[1] == max_len - 3])


def _token_documents(n_docs: int = 4, n_sentences: int = 12):
    """Documents of one-token sentences (ids 10..), so no pair is ever cut."""
    return [[[10 + (d * n_sentences + s) % 50] for s in range(n_sentences)] for d in range(n_docs)]


def test_short_targets_are_drawn_from_2_to_max_num_tokens():
    """Not `randint(1, ...)`: a short target is uniform on [2, max_seq_length - 3], as
    create_pretraining_data.py's `rng.randint(2, max_num_tokens)`; never 1."""
    instances = create_instances(_token_documents(), 8, CLS, SEP, random.Random(0), short_seq_prob=1.0,
                                 dupe_factor=250)
    firsts, last = [], None  # one target per (pass, document): the first of a run of its instances
    for inst in instances:
        if inst.doc_index != last:
            firsts.append(inst.target_length)
            last = inst.doc_index
    assert len(firsts) == 250 * 4
    counts = {t: firsts.count(t) for t in set(firsts)}
    assert sorted(counts) == [2, 3, 4, 5], counts
    assert min(counts.values()) > 200, counts  # about 250 each


def test_create_instances_deterministic(corpus):
    _, tok, token_docs = corpus
    run = lambda seed: create_instances(token_docs[:10], MAX_LEN, 2, 3, random.Random(seed))  # noqa: E731
    assert run(5) == run(5)
    assert [i.input_ids for i in run(5)] != [i.input_ids for i in run(6)]
    with pytest.raises(ValueError, match="at least 2 documents"):
        create_instances(token_docs[:1], MAX_LEN, 2, 3, random.Random(0))
    # empty sentences (and an empty document) are skipped: the same instances, A and B never empty
    holes = [[[]] + [s for sent in doc for s in ([], sent)] for doc in token_docs[:10]]
    holed = create_instances(holes[:5] + [[[]]] + holes[5:], MAX_LEN, 2, 3, random.Random(5))
    plain = run(5)
    assert [i.input_ids for i in holed] == [i.input_ids for i in plain]
    assert all(0 < i.a_length < len(i.input_ids) - 3 for i in holed)


def test_create_instances_refuses_a_dupe_factor_of_0():
    """`dupe_factor < 1` is refused: no pass over the corpus is an error, not an empty set of instances."""
    with pytest.raises(ValueError) as e:
        create_instances(_token_documents(), 16, CLS, SEP, random.Random(0), dupe_factor=0)
    assert str(e.value) == "dupe_factor must be an int >= 1, got 0"


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_shards_round_trip(corpus, tmp_path):
    docs, tok, token_docs = corpus
    meta = build_shards(docs[:SMALL], tok, tmp_path / "shards", max_seq_length=MAX_LEN, seed=3)
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]  # no temporary directory left
    ds = PretrainingDataset(tmp_path / "shards")
    expected = create_instances(token_docs[:SMALL], MAX_LEN, tok.cls_token_id, tok.sep_token_id, random.Random(3))
    assert len(ds) == len(expected) == meta["num_instances"]
    for i, inst in enumerate(expected):
        ids, types, label = ds[i]
        assert ids.dtype == np.int64 and ids.tolist() == inst.input_ids
        assert types.tolist() == inst.token_type_ids
        assert label == int(inst.is_random_next)
    assert ds[-1][0].tolist() == expected[-1].input_ids
    with pytest.raises(IndexError):
        ds[len(ds)]
    on_disk = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["vocab_size"] == len(tok) and meta["token_dtype"] == "uint16"
    assert meta["mask_token_id"] == tok.mask_token_id and meta["num_documents"] == SMALL
    assert np.load(tmp_path / "shards" / "shard_00000.tokens.npy").dtype == np.uint16
    assert ds.max_seq_length == MAX_LEN

    # same seed: the same bytes; another seed: other instances
    build_shards(docs[:SMALL], tok, tmp_path / "again", max_seq_length=MAX_LEN, seed=3)
    assert _files(tmp_path / "again") == _files(tmp_path / "shards")
    build_shards(docs[:SMALL], tok, tmp_path / "other", max_seq_length=MAX_LEN, seed=4)
    other = _files(tmp_path / "other")
    assert other["shard_00000.tokens.npy"] != _files(tmp_path / "shards")["shard_00000.tokens.npy"]

    # existing output: refused unless overwrite
    with pytest.raises(FileExistsError, match="overwrite"):
        build_shards(docs[:SMALL], tok, tmp_path / "shards", max_seq_length=MAX_LEN, seed=4)
    build_shards(docs[:SMALL], tok, tmp_path / "shards", max_seq_length=MAX_LEN, seed=4, overwrite=True)
    assert _files(tmp_path / "shards") == other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other", "shards"]


def test_shards_from_files_and_streaming_chunks(corpus, tmp_path):
    docs, tok, _ = corpus
    text = "\n\n".join("\n".join(d) for d in docs[:SMALL]) + "\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    whole = build_shards(docs[:SMALL], tok, tmp_path / "whole", max_seq_length=MAX_LEN, seed=7)
    from_file = build_shards(path, tok, tmp_path / "file", max_seq_length=MAX_LEN, seed=7)
    assert _files(tmp_path / "file") == _files(tmp_path / "whole")

    said = []
    streamed = build_shards([str(path)], tok, tmp_path / "streamed", max_seq_length=MAX_LEN, seed=7,
                            chunk_chars=len(text) // 5, report=said.append)
    assert 4 <= len(streamed["shards"]) <= 6
    assert len(said) == len(streamed["shards"])  # a line per shard, as it is written
    first = streamed["shards"][0]
    assert said[0].startswith("streamed: shard 1: ") and f"{first['num_instances']:,} instances, " in said[0]
    assert f"{first['num_tokens']:,} tokens (" in said[0] and said[-1].startswith(f"streamed: shard {len(said)}: ")
    assert all(s["num_instances"] > 0 for s in streamed["shards"])
    assert streamed["num_documents"] == whole["num_documents"] == from_file["num_documents"] == SMALL
    assert abs(streamed["num_instances"] - whole["num_instances"]) < 0.1 * whole["num_instances"]
    ds = PretrainingDataset(tmp_path / "streamed")
    assert len(ds) == streamed["num_instances"]
    labels = []
    for i in range(len(ds)):
        ids, types, label = ds[i]
        a_len = int((types == 0).sum()) - 2
        _check_shape(ids.tolist(), a_len, tok)
        assert types[a_len + 2:].all()
        labels.append(label)
    assert 0.5 < np.mean(labels) < 0.9  # a coin, plus the single-sentence chunks that must take a random B


WORDS = "river stone cloud garden lamp window forest bridge engine letter market violin harbor candle".split()


def _text_documents(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."
             for _ in range(5)] for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer.train_from_iterator([s for d in _text_documents(30, 0) for s in d], vocab_size=80)


def test_empty_documents_between_chunks_change_nothing(tok, tmp_path):
    """Empty documents are not counted into a chunk: an empty document given in memory is skipped, so a chunk
    still holds two documents with text (a chunk of one cannot draw random next sentences, and is an error)."""
    docs = _text_documents(4, 1)
    holed = [docs[0], [], docs[1], [], docs[2], [], docs[3]]
    build_shards(docs, tok, tmp_path / "plain", max_seq_length=24, seed=0, chunk_chars=1)
    build_shards(holed, tok, tmp_path / "holed", max_seq_length=24, seed=0, chunk_chars=1)
    assert _files(tmp_path / "holed") == _files(tmp_path / "plain")
    assert len(json.loads((tmp_path / "plain" / "meta.json").read_text())["shards"]) == 2


def test_meta_counts_the_random_next_instances_of_each_shard(tok, tmp_path):
    """num_random_next is counted, not written as 0: each shard's count of random next sentences in meta.json is the
    number of its instances labelled 1."""
    meta = build_shards(_text_documents(8, 2), tok, tmp_path / "shards", max_seq_length=24, seed=0,
                        chunk_chars=300)
    ds = PretrainingDataset(tmp_path / "shards")
    assert len(meta["shards"]) >= 2
    start = 0
    for shard in meta["shards"]:
        labels = [ds[i][2] for i in range(start, start + shard["num_instances"])]
        assert shard["num_random_next"] == sum(labels) > 0
        start += shard["num_instances"]


def test_dataset_errors(corpus, tmp_path):
    docs, tok, _ = corpus
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PretrainingDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty[/\\]meta\.json"):
        PretrainingDataset(tmp_path / "empty")
    out = tmp_path / "shards"
    build_shards(docs[:4], tok, out, max_seq_length=MAX_LEN, seed=0, chunk_chars=1)
    assert len(PretrainingDataset(out)) > 0
    tokens = out / "shard_00001.tokens.npy"
    data = tokens.read_bytes()
    tokens.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"shard_00001\.tokens\.npy"):
        PretrainingDataset(out)
    tokens.unlink()
    with pytest.raises(FileNotFoundError, match=r"shard_00001\.tokens\.npy"):
        PretrainingDataset(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"meta\.json"):
        PretrainingDataset(out)
    with pytest.raises(ValueError, match="at least 2 documents"):
        build_shards(docs[:1], tok, tmp_path / "one", max_seq_length=MAX_LEN)
    assert not (tmp_path / "one").exists()


@pytest.mark.parametrize("where", [0, -1])
def test_offsets_that_do_not_span_the_tokens_are_refused(tok, tmp_path, where):
    """The offsets check: offsets of the right shape that do not start at 0 or end at the
    token count are an error naming the file, not instances read from the wrong place."""
    build_shards(_text_documents(3, 4), tok, tmp_path / "shards", max_seq_length=24)
    path = tmp_path / "shards" / "shard_00000.offsets.npy"
    offsets = np.load(path)
    offsets[where] += 1 if where == 0 else -1
    np.save(path, offsets)
    with pytest.raises(ValueError) as e:
        PretrainingDataset(tmp_path / "shards")
    assert str(e.value) == f"{path}: offsets do not span the tokens"


class _BigVocab:
    """A tokenizer that claims 70,000 tokens: the shards must store int32."""

    def __init__(self, tok):
        self._tok = tok

    num_ids = 70_000   # the ids it can give

    def __len__(self):
        return 70_000

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_large_vocab_uses_int32(corpus, tmp_path):
    docs, tok, _ = corpus
    meta = build_shards(docs[:3], _BigVocab(tok), tmp_path / "big", max_seq_length=MAX_LEN)
    assert meta["token_dtype"] == "int32" and meta["vocab_size"] == 70_000
    assert np.load(tmp_path / "big" / "shard_00000.tokens.npy").dtype == np.int32
    small = build_shards(docs[:3], tok, tmp_path / "small", max_seq_length=MAX_LEN)
    a, b = PretrainingDataset(tmp_path / "big"), PretrainingDataset(tmp_path / "small")
    assert len(a) == len(b) == small["num_instances"]
    assert all(np.array_equal(a[i][0], b[i][0]) for i in range(len(a)))


class _Claims:
    """A tokenizer that claims `num_ids` ids (the shards' token dtype follows it)."""

    def __init__(self, tok, num_ids: int):
        self._tok, self.num_ids = tok, num_ids

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_token_dtype_is_uint16_below_65536_ids(tok, tmp_path):
    """The boundary is 65,536 ids, not 65,537: as the module docstring says, uint16 when the vocabulary has fewer than
    65,536 ids, else int32 (the boundary of the format; any larger one would let an id wrap round)."""
    docs = _text_documents(3, 3)
    assert build_shards(docs, _Claims(tok, 65535), tmp_path / "a", max_seq_length=24)["token_dtype"] == "uint16"
    assert build_shards(docs, _Claims(tok, 65536), tmp_path / "b", max_seq_length=24)["token_dtype"] == "int32"
    assert np.load(tmp_path / "b" / "shard_00000.tokens.npy").dtype == np.int32


def test_batches_from_shards(corpus, tmp_path):
    docs, tok, _ = corpus
    build_shards(docs[:SMALL], tok, tmp_path / "shards", max_seq_length=MAX_LEN, seed=0)
    ds = PretrainingDataset(tmp_path / "shards")
    collator = MaskingCollator.from_tokenizer(tok, whole_word=True)
    batches = PretrainingBatches(ds, 16, collator, seed=0)
    batch = next(iter(batches))
    assert batch["input_ids"].shape == batch["labels"].shape and batch["input_ids"].shape[0] == 16
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:16]
    for row, index in enumerate(order.tolist()):
        ids, types, label = ds[index]
        n = len(ids)
        chosen = batch["labels"][row, :n] != -100
        assert 1 <= int(chosen.sum()) <= 20
        assert torch.equal(batch["labels"][row, :n][chosen], torch.from_numpy(ids)[chosen])
        assert torch.equal(batch["token_type_ids"][row, :n], torch.from_numpy(types))
        assert int(batch["next_sentence_label"][row]) == label
        assert int(batch["attention_mask"][row].sum()) == n


# ------------------------------------------------------------------------ the instance rule, piece by piece
def _google_truncated_lengths(la: int, lb: int, max_num_tokens: int) -> tuple[int, int]:
    """google-research/bert's truncate_seq_pair, lengths only: cut the longer side (B on ties) until it fits."""
    while la + lb > max_num_tokens:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def test_truncate_pair_cuts_as_google_research_bert():
    from bertkit.data.pretraining import _truncate_pair
    rng = random.Random(0)
    for la in range(1, 12):
        for lb in range(1, 12):
            for max_num_tokens in range(2, 24):
                a_lo, a_hi, b_lo, b_hi = _truncate_pair(100, 100 + la, 500, 500 + lb, max_num_tokens, rng)
                assert (a_hi - a_lo, b_hi - b_lo) == _google_truncated_lengths(la, lb, max_num_tokens)
                assert 100 <= a_lo <= a_hi <= 100 + la and 500 <= b_lo <= b_hi <= 500 + lb
    fronts = [_truncate_pair(0, 30, 100, 101, 11, rng)[0] for _ in range(4000)]  # 20 cuts of A: ~10 at its front
    assert abs(np.mean(fronts) - 10) < 0.2 and min(fronts) < 7 and max(fronts) > 13


def test_document_spans_chunks_whole_sentences_and_draws_any_other_document():
    """Sentences of 2 tokens and room for 4: a chunk closes as soon as it reaches the target (>=), so an
    actual-next pair is two whole sentences, untruncated. A random B comes from any other document, starting
    at any of its sentences."""
    from bertkit.data.pretraining import _document_spans
    starts = [[0, 2, 4, 6, 8, 10, 12], [0, 2, 4], [0, 2, 4]]  # 6, 2 and 2 sentences of 2 tokens
    rng = random.Random(3)
    spans = [s for _ in range(300) for s in _document_spans(0, starts, 4, 0.0, rng)]
    actual = [s for s in spans if not s.is_random_next]
    assert actual and all((s.a_hi - s.a_lo, s.b_hi - s.b_lo, s.b_lo) == (2, 2, s.a_hi) for s in actual)
    assert all(s.a_lo % 2 == 0 and s.a_hi % 2 == 0 for s in spans)
    random_b = [s for s in spans if s.is_random_next]
    assert {s.b_doc for s in random_b} == {1, 2}
    firsts = [s.b_lo for s in random_b]
    assert 0.4 < firsts.count(2) / len(firsts) < 0.6  # B starts at the second (last) sentence half the time


def test_random_b_runs_to_the_short_target_left_by_a():
    """A random B gathers whole sentences of the other document until it reaches the instance's target (a
    short one here) less A's length, or that document ends: 3-token sentences, so its length is the first
    multiple of 3 at or past the target left, at least one sentence."""
    from bertkit.data.pretraining import _document_spans
    starts = [list(range(0, 31, 3)) for _ in range(4)]  # 4 documents of 10 sentences of 3 tokens
    rng = random.Random(7)
    spans = [s for d in range(4) for _ in range(50) for s in _document_spans(d, starts, 100, 1.0, rng)]
    random_b = [s for s in spans if s.is_random_next]
    assert len(random_b) > 100 and len({s.target_length for s in random_b}) > 20
    for s in random_b:
        left = s.target_length - (s.a_hi - s.a_lo)
        sentences = min(max(1, -(-left // 3)), (30 - s.b_lo) // 3)
        assert s.b_hi - s.b_lo == 3 * sentences, s


def test_a_sentence_that_tokenises_to_nothing_changes_no_shard(corpus, tmp_path):
    """A sentence of a zero-width space (text, but no token) is dropped as an empty one: the same shards."""
    docs, tok, _ = corpus
    assert tok.tokenize("\u200b") == []
    holed = [[*doc[:1], "\u200b", *doc[1:]] for doc in docs[:SMALL]]
    build_shards(docs[:SMALL], tok, tmp_path / "plain", max_seq_length=MAX_LEN, seed=3)
    build_shards(holed, tok, tmp_path / "holed", max_seq_length=MAX_LEN, seed=3)
    plain, with_holes = _files(tmp_path / "plain"), _files(tmp_path / "holed")
    assert plain.keys() == with_holes.keys()
    assert all(plain[name] == with_holes[name] for name in plain if name != "meta.json")


def test_unused_sentences_are_put_back():
    """One-token sentences and a target of 7, so nothing is truncated: each instance's A starts where the
    previous one's text ended (after A when B was random: the chunk's unused sentences start the next
    chunk; after B otherwise), and the instances of a document cover it to its end."""
    from bertkit.data.pretraining import _document_spans
    starts = [list(range(41)) for _ in range(5)]  # 5 documents of 40 one-token sentences
    rng = random.Random(0)
    for _ in range(300):
        position = 0
        for s in _document_spans(0, starts, 7, 0.0, rng):
            assert s.a_lo == position, s
            position = s.a_hi if s.is_random_next else s.b_hi
        assert position == 40


def _published_rule(documents, max_seq_length: int, short_seq_prob: float, dupe_factor: int, rng):
    """(len(A) + len(B) + 3, is_random_next) of each instance, by the rule create_pretraining_data.py
    publishes (restated from its description, one coin per cut, ten tries for another document)."""
    max_num = max_seq_length - 3
    out = []
    for _ in range(dupe_factor):
        for index, doc in enumerate(documents):
            target = rng.randint(2, max_num) if rng.random() < short_seq_prob else max_num
            chunk, i = [], 0
            while i < len(doc):
                chunk.append(doc[i])
                if i == len(doc) - 1 or sum(map(len, chunk)) >= target:
                    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) > 1 else 1
                    la = sum(map(len, chunk[:a_end]))
                    is_random = len(chunk) == 1 or rng.random() < 0.5
                    if is_random:
                        for _ in range(10):
                            other = rng.randint(0, len(documents) - 1)
                            if other != index:
                                break
                        lb = 0
                        for sentence in documents[other][rng.randint(0, len(documents[other]) - 1):]:
                            lb += len(sentence)
                            if lb >= target - la:
                                break
                        i -= len(chunk) - a_end
                    else:
                        lb = sum(map(len, chunk[a_end:]))
                    while la + lb > max_num:
                        la, lb = (la - 1, lb) if la > lb else (la, lb - 1)
                        rng.random()  # front or back
                    out.append((la + lb + 3, is_random))
                    chunk = []
                i += 1
    return out


def test_statistics_match_the_published_rule(corpus):
    """On real WikiText, pooled over seeds, with a short target for every document (so the targets, the random
    B's length and the cuts all show): the number of instances, their length distribution, the share of
    full-length ones and of random next sentences agree with the published rule's (its random stream differs;
    the bounds are about twice the spread seen between seeds)."""
    _, tok, token_docs = corpus
    max_len, ours, theirs = 128, [], []
    for seed in range(4):
        ours += [(len(i.input_ids), i.is_random_next) for i in create_instances(
            token_docs, max_len, tok.cls_token_id, tok.sep_token_id, random.Random(seed), short_seq_prob=1.0,
            dupe_factor=3)]
        theirs += _published_rule(token_docs, max_len, 1.0, 3, random.Random(100 + seed))
    ours, theirs = np.array(ours, dtype=float), np.array(theirs, dtype=float)
    assert abs(len(ours) / len(theirs) - 1) < 0.03
    assert abs(ours[:, 1].mean() - theirs[:, 1].mean()) < 0.03
    assert abs(np.mean(ours[:, 0] == max_len) - np.mean(theirs[:, 0] == max_len)) < 0.02
    assert abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 1.5
    edges = [0, 32, 64, 96, max_len, max_len + 1]
    hist = lambda x: np.histogram(x, bins=edges)[0] / len(x)  # noqa: E731
    assert np.abs(hist(ours[:, 0]) - hist(theirs[:, 0])).max() < 0.02
