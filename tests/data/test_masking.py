"""bertkit.data.masking: the MLM masking rule (counts, 80/10/10 proportions, whole words, determinism) and the
resumable, rank-split batch source."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from bertkit.data.masking import MaskingCollator, PretrainingBatches, example_seed
from bertkit.tasks.pretrain_objective import PreTrainingObjective

VOCAB = 1000
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = {PAD, UNK, CLS, SEP, MASK}
CONTINUATION = set(range(600, VOCAB))  # ids 600..999 play the '##' pieces


def _examples(n: int, seed: int, min_len: int = 8, max_len: int = 128, unk_rate: float = 0.02):
    """`[CLS] A [SEP] B [SEP]` examples of random ordinary ids (a few [UNK]), as PretrainingDataset gives."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        body = rng.integers(5, VOCAB, size=length - 3)
        body[rng.random(length - 3) < unk_rate] = UNK
        a = int(rng.integers(1, length - 3))
        ids = np.concatenate([[CLS], body[:a], [SEP], body[a:], [SEP]]).astype(np.int64)
        types = np.zeros(length, dtype=np.int64)
        types[a + 2:] = 1
        out.append((ids, types, int(rng.integers(0, 2))))
    return out


def _collator(**kwargs) -> MaskingCollator:
    return MaskingCollator(VOCAB, SPECIAL, MASK, PAD, wordpiece_continuation=CONTINUATION, **kwargs)


def _padded(examples) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e[0]) for e in examples)
    ids = torch.full((len(examples), width), PAD)
    for i, e in enumerate(examples):
        ids[i, :len(e[0])] = torch.from_numpy(e[0])
    return ids, ids != PAD


def _candidates(ids, real):
    return real & ~torch.isin(ids, torch.tensor(sorted(SPECIAL)))


def _check_labels(batch, ids, real):
    selected = batch["labels"] != -100
    assert torch.equal(batch["labels"][selected], ids[selected])
    assert torch.equal(batch["input_ids"][~selected], ids[~selected])  # unchosen tokens untouched
    assert not (selected & ~_candidates(ids, real)).any()  # never a special token or padding
    assert torch.equal(batch["attention_mask"], real.long())
    return selected


def test_counts_and_80_10_10():
    examples = _examples(2000, seed=0)
    ids, real = _padded(examples)
    batch = _collator(max_predictions_per_seq=10_000)(examples, torch.Generator().manual_seed(0))
    selected = _check_labels(batch, ids, real)
    n_cand = _candidates(ids, real).sum(1)
    assert int(n_cand.sum()) > 100_000
    n_real = real.sum(1)   # [CLS] and [SEP] counted, as google-research/bert counts them
    expected = [min(int(c), max(1, round(0.15 * int(n)))) for c, n in zip(n_cand, n_real)]
    assert selected.sum(1).tolist() == expected  # round(15%) of each row, exactly
    ratio = selected.sum().item() / n_real.sum().item()
    assert abs(ratio - 0.15) < 0.003

    chosen = int(selected.sum())
    out, orig = batch["input_ids"][selected], ids[selected]
    masked = (out == MASK).float().mean().item()
    random_ = ((out != MASK) & (out != orig)).float().mean().item()
    kept = (out == orig).float().mean().item()
    sd = lambda p: 4.5 * math.sqrt(p * (1 - p) / chosen)  # noqa: E731
    p_same = 1 / (VOCAB - len(SPECIAL))  # a random token can be the original one
    assert abs(masked - 0.8) < sd(0.8)
    assert abs(random_ - 0.1 * (1 - p_same)) < sd(0.1)
    assert abs(kept - 0.1 * (1 + p_same)) < sd(0.1)
    replaced = out[(out != MASK) & (out != orig)]
    assert not torch.isin(replaced, torch.tensor(sorted(SPECIAL))).any()  # random tokens are never special
    assert len(replaced.unique()) > 0.8 * (VOCAB - len(SPECIAL))  # drawn over the whole vocabulary

    # positions are uniform over the candidates: the same rate in each quarter of every row
    cand = _candidates(ids, real)
    overall = selected.sum().item() / cand.sum().item()
    rank = (cand.cumsum(1) - 1).float() / n_cand[:, None]
    for q in range(4):
        in_q = cand & (rank >= q / 4) & (rank < (q + 1) / 4)
        rate = (selected & in_q).sum().item() / in_q.sum().item()
        assert abs(rate - overall) < 4.5 * math.sqrt(overall * (1 - overall) / in_q.sum().item())


def test_at_least_one_and_the_cap():
    short = _examples(300, seed=1, min_len=5, max_len=12, unk_rate=0.0)
    ids, real = _padded(short)
    batch = _collator()(short, torch.Generator().manual_seed(1))
    selected = _check_labels(batch, ids, real)
    assert (selected.sum(1) >= 1).all()
    assert selected.sum(1).tolist() == [max(1, round(0.15 * len(e[0]))) for e in short]
    long = _examples(50, seed=2, min_len=300, max_len=512)
    ids, real = _padded(long)
    batch = _collator()(long, torch.Generator().manual_seed(2))
    assert (_check_labels(batch, ids, real).sum(1) == 20).all()  # max_predictions_per_seq
    batch = _collator(max_predictions_per_seq=7)(long, torch.Generator().manual_seed(2))
    assert (_check_labels(batch, ids, real).sum(1) == 7).all()


def test_a_three_token_row_and_a_row_of_few_candidates():
    """round(15% of 3) is 0, yet every row gets one prediction; a row with fewer candidates than its budget
    (here one word among [UNK]s) gets as many as it has, never a special token."""
    word = 7
    rows = [(np.array([CLS, word, SEP]), np.zeros(3, dtype=np.int64), 0),
            (np.array([CLS, *[UNK] * 16, word, SEP]), np.zeros(19, dtype=np.int64), 1)]  # budget round(2.85) = 3
    for seed in range(5):
        batch = _collator()(rows, torch.Generator().manual_seed(seed))
        assert (batch["labels"] != -100).nonzero().tolist() == [[0, 1], [1, 17]]  # the word of each row


def test_random_replacements_cover_every_ordinary_id():
    """The 10% random tokens are drawn uniformly from the non-special ids, the last one included; [PAD] and
    [MASK] are special even when `special_ids` leaves them out."""
    collator = MaskingCollator(8, {CLS, SEP}, MASK, PAD, mlm_probability=1.0, max_predictions_per_seq=1000)
    rows = [(np.array([CLS] + [5] * 50 + [SEP]), np.zeros(52, dtype=np.int64), 0)] * 200
    batch = collator(rows, torch.Generator().manual_seed(0))
    assert (batch["labels"][:, 1:-1] == 5).all()  # every candidate chosen
    counts = torch.bincount(batch["input_ids"][:, 1:-1].flatten(), minlength=8).tolist()
    assert counts[PAD] == counts[CLS] == counts[SEP] == 0
    drawn = [counts[i] for i in (UNK, 6, 7)]  # 5 is also the unchanged 10%; MASK the 80%
    assert min(drawn) > 0.8 * max(drawn) > 0, counts  # ~250 each of 10,000 positions


def _words(row: list[int], real_len: int) -> list[list[int]]:
    """Positions of each word: a non-special token and the '##' pieces right after it."""
    words: list[list[int]] = []
    for i in range(real_len):
        if row[i] in SPECIAL:
            continue
        if row[i] in CONTINUATION and words and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return words


@pytest.mark.parametrize("cap", [20, 10_000])
def test_whole_word_masking(cap):
    examples = _examples(600, seed=3)
    ids, real = _padded(examples)
    batch = _collator(whole_word=True, max_predictions_per_seq=cap)(examples, torch.Generator().manual_seed(3))
    selected = _check_labels(batch, ids, real)
    pieces = 0
    for row, (e_ids, _, _) in enumerate(examples):
        chosen = set(torch.nonzero(selected[row]).flatten().tolist())
        words = _words(e_ids.tolist(), len(e_ids))
        budget = min(cap, sum(map(len, words)), max(1, round(0.15 * len(e_ids))))
        for w in words:
            assert set(w) <= chosen or not set(w) & chosen  # all pieces of a word, or none
        if all(len(w) > budget for w in words):  # no word fits: one word anyway, within the cap
            assert sum(set(w) <= chosen for w in words) == 1 and len(chosen) <= cap
        else:
            assert 1 <= len(chosen) <= budget
        pieces += sum(len(w) > 1 and set(w) <= chosen for w in words)
    assert pieces > 100  # multi-piece words do get chosen
    n_cand = _candidates(ids, real).sum()
    if cap > 1000:
        assert abs(selected.sum().item() / n_cand.item() - 0.15) < 0.01


def test_same_generator_same_batch_and_per_example_generators():
    examples = _examples(32, seed=4)
    for whole_word in (False, True):
        collator = _collator(whole_word=whole_word)
        a = collator(examples, torch.Generator().manual_seed(7))
        b = collator(examples, torch.Generator().manual_seed(7))
        c = collator(examples, torch.Generator().manual_seed(8))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["labels"], c["labels"])
        # with one generator per example, an example's masks do not depend on its batch-mates or padding
        gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
        full = collator(examples, gens(range(32)))
        alone = collator(examples[5:6], gens([5]))
        n = len(examples[5][0])
        for key in ("input_ids", "labels", "token_type_ids", "attention_mask"):
            assert torch.equal(full[key][5, :n], alone[key][0, :n])
        assert torch.equal(full["next_sentence_label"][5:6], alone["next_sentence_label"])


def test_collator_errors_and_dict_examples():
    with pytest.raises(ValueError, match="wordpiece_continuation"):
        MaskingCollator(VOCAB, SPECIAL, MASK, PAD, whole_word=True)
    bad = [(np.array([CLS, 5, VOCAB, SEP]), np.zeros(4, dtype=np.int64), 0)]
    with pytest.raises(ValueError, match="token ids must be in"):
        _collator()(bad, torch.Generator())
    with pytest.raises(ValueError, match=r"mlm_probability must be in \(0, 1\], got 0"):
        MaskingCollator(VOCAB, SPECIAL, MASK, PAD, mlm_probability=0)
    with pytest.raises(ValueError, match="2 generators for 1 examples"):
        _collator()(_examples(1, seed=0), [torch.Generator(), torch.Generator()])
    table = np.zeros(VOCAB, dtype=bool)
    table[sorted(CONTINUATION)] = True
    as_array = MaskingCollator(VOCAB, SPECIAL, MASK, PAD, whole_word=True, wordpiece_continuation=table)
    examples = _examples(4, seed=5)
    dicts = [{"input_ids": i, "token_type_ids": t, "next_sentence_label": y} for i, t, y in examples]
    a = as_array(dicts, torch.Generator().manual_seed(0))
    b = _collator(whole_word=True)(examples, torch.Generator().manual_seed(0))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _row(ids, a_length=None):
    """`(input_ids, token_type_ids, label)` of `[CLS] A [SEP] B [SEP]` ids; A is `a_length` tokens."""
    ids = np.array(ids, dtype=np.int64)
    token_types = np.zeros(len(ids), dtype=np.int64)
    if a_length is not None:
        token_types[a_length + 2:] = 1
    return ids, token_types, 0


def _every_id_special():
    return MaskingCollator(5, {0, 1, 2, 3, 4}, 4, 0)


def _special_id_past_the_vocabulary():
    return MaskingCollator(VOCAB, SPECIAL | {VOCAB}, MASK, PAD)


def _continuation_table_of_the_wrong_size():
    return MaskingCollator(VOCAB, SPECIAL, MASK, PAD, whole_word=True,
                           wordpiece_continuation=np.zeros(VOCAB - 1, dtype=bool))


def _negative_token_id():
    return _collator()([_row([CLS, 7, -1, SEP])], torch.Generator())


def _no_examples():
    return _collator()([], torch.Generator())


def _no_predictions():
    return MaskingCollator(VOCAB, SPECIAL, MASK, PAD, max_predictions_per_seq=0)


@pytest.mark.parametrize("make, message", [
    (_no_predictions, "max_predictions_per_seq must be an int >= 1, got 0"),
    (_every_id_special, "every id is special: no token to draw random replacements from"),
    (_special_id_past_the_vocabulary, "special_ids: ids [1000] are outside the vocabulary of 1000"),
    (_continuation_table_of_the_wrong_size,
     "wordpiece_continuation: a bool array must have shape (1000,), got (999,)"),
    (_negative_token_id, "token ids must be in [0, 1000), got -1..7"),
    (_no_examples, "no examples to collate"),
])
def test_collator_refuses_bad_settings_and_ids(make, message):
    """Each check exact (neither dropped nor loosened by one): a bad setting or id is a ValueError that says
    what was expected, not a crash later (an empty random pool, an out-of-range table index, max() of nothing) or a
    negative id silently wrapped to the last row of the special-id table."""
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message


def test_whole_word_fallback_respects_max_predictions_per_seq():
    """The fallback's cap check: a row whose only word (5 pieces) overshoots its budget of
    round(0.15 * 7) = 1 gets that word anyway when it fits max_predictions_per_seq, and no prediction when it does
    not (the module docstring's rule)."""
    row = [_row([CLS, 7, 600, 601, 602, 603, SEP])]
    for seed in range(5):
        fits = _collator(whole_word=True, max_predictions_per_seq=5)(row, torch.Generator().manual_seed(seed))
        assert (fits["labels"][0] != -100).nonzero().flatten().tolist() == [1, 2, 3, 4, 5]
        over = _collator(whole_word=True, max_predictions_per_seq=4)(row, torch.Generator().manual_seed(seed))
        assert (over["labels"] == -100).all()
        assert torch.equal(over["input_ids"][0], torch.from_numpy(row[0][0]))


def test_padding_is_pad_id_segment_0_and_void_labels():
    """Token types padded with 0 (not 1) and ids with pad_id (not 0): padding holds
    pad_id, token type 0 (transformers' tokenizers pad token_type_ids with pad_token_type_id 0), attention 0 and
    label -100, here with a [PAD] id that is not 0 and a B segment (type 1) that ends the longer row."""
    pad = 9
    collator = MaskingCollator(VOCAB, {UNK, CLS, SEP}, MASK, pad)
    rows = [_row([CLS, 10, 11, SEP, 12, 13, 14, 15, SEP], a_length=2), _row([CLS, 20, SEP, 21, SEP], a_length=1)]
    batch = collator(rows, torch.Generator().manual_seed(0))
    assert batch["input_ids"][1, 5:].tolist() == [pad] * 4
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 9, [1] * 5 + [0] * 4]
    assert batch["labels"][1, 5:].tolist() == [-100] * 4


def test_mapping_examples_that_are_not_dicts():
    """Not only a dict (no `isinstance(example, dict)` test): any Mapping with the three keys is an example,
    e.g. a read-only mapping proxy, and collates as the tuple does."""
    rows = [_row([CLS, 10, 11, SEP, 12, 13, SEP], a_length=2), _row([CLS, 20, SEP, 21, SEP], a_length=1)]
    proxies = [types.MappingProxyType({"input_ids": i, "token_type_ids": t, "next_sentence_label": y})
               for i, t, y in rows]
    a = _collator()(proxies, torch.Generator().manual_seed(3))
    b = _collator()(rows, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in b)


# ------------------------------------------------------------------------------------ PretrainingBatches
DATASET = _examples(50, seed=6, max_len=40)


def _take(batches: PretrainingBatches, n: int) -> list[dict]:
    it = iter(batches)
    return [next(it) for _ in range(n)]


def _rows(batch: dict) -> list[tuple]:
    """Each example of a batch without its padding, as comparable tuples."""
    out = []
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        out.append(tuple(tuple(batch[k][i, :n].tolist()) for k in ("input_ids", "token_type_ids", "labels"))
                   + (int(batch["next_sentence_label"][i]),))
    return out


def _original(row: tuple) -> tuple:
    """The unmasked ids of a row (labels hold them where masked)."""
    return tuple(label if label != -100 else token for token, label in zip(row[0], row[2]))


def test_batches_deterministic_and_cover_each_epoch():
    collator = _collator()
    a = _take(PretrainingBatches(DATASET, 4, collator, seed=1), 30)  # 12 batches an epoch: crosses two epochs
    b = _take(PretrainingBatches(DATASET, 4, collator, seed=1), 30)
    assert [_rows(x) for x in a] == [_rows(x) for x in b]
    c = _take(PretrainingBatches(DATASET, 4, collator, seed=2), 30)
    assert [_rows(x) for x in a] != [_rows(x) for x in c]
    originals = {tuple(e[0].tolist()) for e in DATASET}
    epoch = [_original(r) for x in a[:12] for r in _rows(x)]
    assert len(set(epoch)) == 48 and set(epoch) <= originals  # drop_last: 2 of 50 left out
    everything = PretrainingBatches(DATASET, 7, collator, seed=1, drop_last=False)
    assert everything.batches_per_epoch == 8
    epoch = [_original(r) for x in _take(everything, 8) for r in _rows(x)]
    assert sorted(epoch) == sorted(originals)
    # an epoch's second pass is another order and other masks: epoch e takes the order randperm(seed + e), and
    # each example its own generator, seeded by (seed, epoch, batch, position in the batch)
    assert _rows(a[0]) != _rows(a[12])
    for e in (0, 1):
        order = torch.randperm(50, generator=torch.Generator().manual_seed(1 + e)).tolist()
        assert [_original(r) for x in a[12 * e:12 * e + 12] for r in _rows(x)] == \
            [tuple(DATASET[i][0].tolist()) for i in order[:48]]
        alone = collator([DATASET[order[12 + 2]]], [torch.Generator().manual_seed(example_seed(1, e, 3, 2))])
        assert _rows(alone)[0] == _rows(a[12 * e + 3])[2]


def test_resume_gives_exactly_the_next_batch():
    collator = _collator(whole_word=True)
    reference = [_rows(x) for x in _take(PretrainingBatches(DATASET, 4, collator, seed=3), 30)]
    for stop in (1, 11, 12, 17):
        first = PretrainingBatches(DATASET, 4, collator, seed=3)
        it = iter(first)
        for _ in range(stop):
            next(it)
        state = first.state_dict()
        assert state == {"epoch": stop // 12, "batch": stop % 12}
        resumed = PretrainingBatches(DATASET, 4, collator, seed=3)
        resumed.load_state_dict(state)
        assert [_rows(x) for x in _take(resumed, 30 - stop)] == reference[stop:]
    with pytest.raises(ValueError, match="outside"):
        resumed.load_state_dict({"epoch": 0, "batch": 12})


def test_load_state_dict_refuses_a_negative_epoch():
    """The `epoch < 0` check: a state from before the first epoch is refused by value."""
    rows = [_row([CLS, 10 + i, SEP, 20 + i, SEP], a_length=1) for i in range(8)]
    batches = PretrainingBatches(rows, 4, _collator())
    with pytest.raises(ValueError, match=r"^state \{'epoch': -1, 'batch': 0\} is outside epochs of 2 batches$"):
        batches.load_state_dict({"epoch": -1, "batch": 0})


@pytest.mark.parametrize("whole_word", [False, True])
def test_two_ranks_equal_one_rank(whole_word):
    collator = _collator(whole_word=whole_word)
    single = _take(PretrainingBatches(DATASET, 8, collator, seed=5), 14)  # 6 global batches an epoch
    ranks = [_take(PretrainingBatches(DATASET, 4, collator, seed=5, rank=r, world_size=2), 14) for r in (0, 1)]
    for g, batch in enumerate(single):
        rows = _rows(batch)
        assert _rows(ranks[0][g]) == rows[0::2]
        assert _rows(ranks[1][g]) == rows[1::2]


def test_uneven_last_batch_and_errors():
    collator = _collator()
    data = DATASET[:43]  # global batch 8: 5 full batches and 3 left, split 2 + 1
    ranks = [PretrainingBatches(data, 4, collator, seed=0, rank=r, world_size=2, drop_last=False) for r in (0, 1)]
    batches = [_take(b, 6) for b in ranks]
    assert [len(b[5]["input_ids"]) for b in batches] == [2, 1]
    seen = {_original(r) for b in batches for x in b for r in _rows(x)}
    assert seen == {tuple(e[0].tolist()) for e in data}
    # 1 left: rank 1 gets a row whose labels are void (it weighs nothing in the objective's counts and losses)
    ranks = [PretrainingBatches(DATASET[:41], 4, collator, seed=0, rank=r, world_size=2, drop_last=False)
             for r in (0, 1)]
    last = [_take(b, 6)[5] for b in ranks]
    assert [len(b["input_ids"]) for b in last] == [1, 1]
    assert (last[0]["labels"] != -100).any() and (last[1]["labels"] == -100).all()
    assert (last[1]["next_sentence_label"] == -100).all()
    assert PreTrainingObjective.counts(last[1]) == {"mlm": 0, "nsp": 0}
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PretrainingBatches(DATASET[:5], 4, collator, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        PretrainingBatches(DATASET, 4, collator, rank=2, world_size=2)
    assert example_seed(1, 2, 3) != example_seed(1, 2, 4) and 0 <= example_seed(1, 2, 3) < 2**63


_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
# SplitMix64's published outputs for the seed 1234567 (the reference sequence of the Rosetta Code task
# "Pseudo-random numbers/Splitmix64", from Steele, Lea and Flood's generator)
_SPLITMIX_1234567 = (6457827717110365317, 3203168211198807973, 9817491932198370423)


def test_example_seed_is_splitmix64_halved_to_63_bits():
    """The top bit dropped and SplitMix64's own shift constants: each value is XORed into a SplitMix64
    state that then takes one step; the seed is the last output without its low bit, so below 2**63. Pinned
    against SplitMix64's published sequence: the state after XOR is the reference's (1234567, then 1234567 plus
    the increment for each further step), so example_seed's outputs are the reference outputs halved."""
    state, values = 1234567, []
    h = _GOLDEN
    for out in _SPLITMIX_1234567:
        values.append(h ^ state)  # the value that puts the reference state into h
        h = out
        state = (state + _GOLDEN) & _MASK64
    for k, out in enumerate(_SPLITMIX_1234567, start=1):
        assert example_seed(*values[:k]) == out >> 1
    seeds = [example_seed(7, e, b, j) for e in range(4) for b in range(8) for j in range(8)]
    assert all(0 <= s < 2**63 for s in seeds) and len(set(seeds)) == len(seeds)
    assert max(seeds) >= 2**62  # the 63 bits are used
