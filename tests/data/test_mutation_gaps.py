"""bertkit.data: behaviour a mutation audit of masking.py, pretraining.py and corpus.py found unpinned (each test here
fails with the mutant named in its docstring): input checks, padding, the whole-word fallback, SplitMix64 seeds,
short targets, shard metadata, sentence rules and the hard-wrap heuristic's thresholds."""
from __future__ import annotations

import json
import random
import types

import numpy as np
import pytest
import torch

from bertkit.data.corpus import hard_wrap_width, read_documents, split_sentences
from bertkit.data.masking import MaskingCollator, PretrainingBatches, example_seed
from bertkit.data.pretraining import PretrainingDataset, build_shards, create_instances
from bertkit.tokenizer import BertTokenizer

VOCAB = 1000
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = {PAD, UNK, CLS, SEP, MASK}
CONTINUATION = set(range(600, VOCAB))  # ids 600..999 play the '##' pieces


def _collator(**kwargs) -> MaskingCollator:
    return MaskingCollator(VOCAB, SPECIAL, MASK, PAD, wordpiece_continuation=CONTINUATION, **kwargs)


def _row(ids, a_length=None):
    """`(input_ids, token_type_ids, label)` of `[CLS] A [SEP] B [SEP]` ids; A is `a_length` tokens."""
    ids = np.array(ids, dtype=np.int64)
    token_types = np.zeros(len(ids), dtype=np.int64)
    if a_length is not None:
        token_types[a_length + 2:] = 1
    return ids, token_types, 0


# ------------------------------------------------------------------------------------------ MaskingCollator
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
    (_no_predictions, "max_predictions_per_seq must be an int >= 1, got 0"),                            # M10
    (_every_id_special, "every id is special: no token to draw random replacements from"),             # M11
    (_special_id_past_the_vocabulary, "special_ids: ids [1000] are outside the vocabulary of 1000"),   # M12
    (_continuation_table_of_the_wrong_size,
     "wordpiece_continuation: a bool array must have shape (1000,), got (999,)"),                      # M13
    (_negative_token_id, "token ids must be in [0, 1000), got -1..7"),                                 # M14
    (_no_examples, "no examples to collate"),                                                          # M38
])
def test_collator_refuses_bad_settings_and_ids(make, message):
    """Mutants M10-M14, M38 (each check dropped or loosened by one): a bad setting or id is a ValueError that says
    what was expected, not a crash later (an empty random pool, an out-of-range table index, max() of nothing) or a
    negative id silently wrapped to the last row of the special-id table."""
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message


def test_whole_word_fallback_respects_max_predictions_per_seq():
    """Mutant M20 (the fallback's cap check dropped): a row whose only word (5 pieces) overshoots its budget of
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
    """Mutants M22 (token types padded with 1) and M23 (ids padded with 0 rather than pad_id): padding holds
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
    """Mutant M35 (`isinstance(example, dict)`): any Mapping with the three keys is an example, e.g. a read-only
    mapping proxy, and collates as the tuple does."""
    rows = [_row([CLS, 10, 11, SEP, 12, 13, SEP], a_length=2), _row([CLS, 20, SEP, 21, SEP], a_length=1)]
    proxies = [types.MappingProxyType({"input_ids": i, "token_type_ids": t, "next_sentence_label": y})
               for i, t, y in rows]
    a = _collator()(proxies, torch.Generator().manual_seed(3))
    b = _collator()(rows, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_load_state_dict_refuses_a_negative_epoch():
    """Mutant M29 (the `epoch < 0` check dropped): a state from before the first epoch is refused by value."""
    rows = [_row([CLS, 10 + i, SEP, 20 + i, SEP], a_length=1) for i in range(8)]
    batches = PretrainingBatches(rows, 4, _collator())
    with pytest.raises(ValueError, match=r"^state \{'epoch': -1, 'batch': 0\} is outside epochs of 2 batches$"):
        batches.load_state_dict({"epoch": -1, "batch": 0})


_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
# SplitMix64's published outputs for the seed 1234567 (the reference sequence of the Rosetta Code task
# "Pseudo-random numbers/Splitmix64", from Steele, Lea and Flood's generator)
_SPLITMIX_1234567 = (6457827717110365317, 3203168211198807973, 9817491932198370423)


def test_example_seed_is_splitmix64_halved_to_63_bits():
    """Mutants M30 (the top bit kept) and M31 (a shift constant changed): each value is XORed into a SplitMix64
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


# ------------------------------------------------------------------------------------- NSP instances, shards
def _token_documents(n_docs: int = 4, n_sentences: int = 12):
    """Documents of one-token sentences (ids 10..), so no pair is ever cut."""
    return [[[10 + (d * n_sentences + s) % 50] for s in range(n_sentences)] for d in range(n_docs)]


def test_short_targets_are_drawn_from_2_to_max_num_tokens():
    """Mutant P04 (`randint(1, ...)`): a short target is uniform on [2, max_seq_length - 3], as
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


def test_create_instances_refuses_a_dupe_factor_of_0():
    """Mutant P19 (`dupe_factor < 0`): no pass over the corpus is an error, not an empty set of instances."""
    with pytest.raises(ValueError) as e:
        create_instances(_token_documents(), 16, CLS, SEP, random.Random(0), dupe_factor=0)
    assert str(e.value) == "dupe_factor must be an int >= 1, got 0"


WORDS = "river stone cloud garden lamp window forest bridge engine letter market violin harbor candle".split()


def _text_documents(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."
             for _ in range(5)] for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer.train_from_iterator([s for d in _text_documents(30, 0) for s in d], vocab_size=80)


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_empty_documents_between_chunks_change_nothing(tok, tmp_path):
    """Mutant P27 (empty documents counted into a chunk): an empty document given in memory is skipped, so a chunk
    still holds two documents with text (a chunk of one cannot draw random next sentences, and is an error)."""
    docs = _text_documents(4, 1)
    holed = [docs[0], [], docs[1], [], docs[2], [], docs[3]]
    build_shards(docs, tok, tmp_path / "plain", max_seq_length=24, seed=0, chunk_chars=1)
    build_shards(holed, tok, tmp_path / "holed", max_seq_length=24, seed=0, chunk_chars=1)
    assert _files(tmp_path / "holed") == _files(tmp_path / "plain")
    assert len(json.loads((tmp_path / "plain" / "meta.json").read_text())["shards"]) == 2


def test_meta_counts_the_random_next_instances_of_each_shard(tok, tmp_path):
    """Mutant P35 (num_random_next written as 0): each shard's count of random next sentences in meta.json is the
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


class _Claims:
    """A tokenizer that claims `num_ids` ids (the shards' token dtype follows it)."""

    def __init__(self, tok, num_ids: int):
        self._tok, self.num_ids = tok, num_ids

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_token_dtype_is_uint16_below_65536_ids(tok, tmp_path):
    """Mutant P24 (`vocab_size < 65537`): as the module docstring says, uint16 when the vocabulary has fewer than
    65,536 ids, else int32 (the boundary of the format; any larger one would let an id wrap round)."""
    docs = _text_documents(3, 3)
    assert build_shards(docs, _Claims(tok, 65535), tmp_path / "a", max_seq_length=24)["token_dtype"] == "uint16"
    assert build_shards(docs, _Claims(tok, 65536), tmp_path / "b", max_seq_length=24)["token_dtype"] == "int32"
    assert np.load(tmp_path / "b" / "shard_00000.tokens.npy").dtype == np.int32


@pytest.mark.parametrize("where", [0, -1])
def test_offsets_that_do_not_span_the_tokens_are_refused(tok, tmp_path, where):
    """Mutant P30 (the offsets check dropped): offsets of the right shape that do not start at 0 or end at the
    token count are an error naming the file, not instances read from the wrong place."""
    build_shards(_text_documents(3, 4), tok, tmp_path / "shards", max_seq_length=24)
    path = tmp_path / "shards" / "shard_00000.offsets.npy"
    offsets = np.load(path)
    offsets[where] += 1 if where == 0 else -1
    np.save(path, offsets)
    with pytest.raises(ValueError) as e:
        PretrainingDataset(tmp_path / "shards")
    assert str(e.value) == f"{path}: offsets do not span the tokens"


# ------------------------------------------------------------------------------------------------ corpus
@pytest.mark.parametrize("text, expected", [
    ("Is it done? Yes, it is.", ["Is it done?", "Yes, it is."]),                                    # C01
    ("They met in May. 1990 was a good year.", ["They met in May.", "1990 was a good year."]),      # C02
    ('He met "Dr. Who" there. Then he left.', ['He met "Dr. Who" there.', "Then he left."]),        # C08
    ("She saw (Mr. Smith) leave. It rained.", ["She saw (Mr. Smith) leave.", "It rained."]),        # C08
    ("They scored 3. The crowd cheered.", ["They scored 3.", "The crowd cheered."]),                # C20
    ("The cost was approx... Then it rose.", ["The cost was approx...", "Then it rose."]),          # C26
])
def test_sentence_rule_cases(text, expected):
    """Mutants C01 ('?' dropped from the sentence ends), C02 (a digit no longer starts a sentence), C08 (the word
    before '.' read with its opening quote or bracket, so '"Dr.' is no abbreviation), C20 (a digit taken for an
    initial) and C26 (the abbreviation rule applied to '...' too: only a single '.' can end an abbreviation)."""
    assert split_sentences(text) == expected


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_doc_boundary_matches_at_the_start_of_a_line(tmp_path):
    """Mutant C11 (`boundary.search`): a heading is a line the regex matches from its start, so a line that only
    mentions the word stays text."""
    p = _write(tmp_path / "book.txt", "CHAPTER I\nHe read the CHAPTER list aloud.\nCHAPTER II\nMore.\n")
    assert read_documents(p, "CHAPTER") == [["He read the CHAPTER list aloud."], ["More."]]


def test_wrapped_paragraphs_end_at_blank_lines_and_headings_and_lose_indentation(tmp_path):
    """Mutants C14 (wrapped lines joined unstripped), C27 (no paragraph end at a heading: the text before a heading
    would open the next document) and C28 (no paragraph end at a blank line: a title line without a full stop
    would run into the next paragraph)."""
    p = _write(tmp_path / "book.txt", "CHAPTER I\nPrologue\n\n   It was a truth\n   universally known.\n"
                                      "The end of it\nCHAPTER II\nMore.\n")
    assert read_documents(p, r"^CHAPTER", wrapped=True) == [
        ["Prologue", "It was a truth universally known.", "The end of it"], ["More."]]


def _lines(lengths, starts_lower, ends=""):
    """Lines of lowercase words cut to each length (the last character `ends` when given), each starting with a
    lowercase or an uppercase letter."""
    out = []
    for n, lower in zip(lengths, starts_lower):
        body = ("word " * (n // 5 + 2))[:n - len(ends)].rstrip().ljust(n - len(ends), "x") + ends
        out.append(body if lower else body[0].upper() + body[1:])
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name, lengths, lower, ends, expected", [
    # 100 pairs of lines; a line's length counts when another line follows it (the last line does not)
    ("wrapped", [60] * 101, [True] * 101, "", 60),
    ("a few long lines", [60] * 96 + [100] * 4 + [60], [True] * 101, "", 60),              # C22: 95th percentile
    ("55% full", [40] * 45 + [60] * 55 + [60], [True] * 101, "", None),                     # C17, C23
    ("60% full", [40] * 40 + [60] * 60 + [60], [True] * 101, "", 60),
    ("40% run on", [60] * 101, [False] + [True] * 40 + [False] * 60, "", None),             # C18
    ("50% run on", [60] * 101, [True, False] * 50 + [True], "", 60),
    ("full stops", [60] * 101, [True] * 101, ".", None),                                    # C19
    ("semicolons", [60] * 101, [True] * 101, ";", None),                                    # C24
    ("colons", [60] * 101, [True] * 101, ":", None),                                        # C24
])
def test_hard_wrap_width_thresholds(tmp_path, name, lengths, lower, ends, expected):
    """Mutants C17 (60% -> 40% of lines full), C18 (half -> a fifth running on), C19 (sentence punctuation no
    longer ends a run), C22 (the longest line for the 95th percentile), C23 (3/4 -> 1/2 of the width counts as
    full), C24 (':' and ';' no longer end a run): the docstring's thresholds, on each side of them."""
    assert hard_wrap_width(_write(tmp_path / "t.txt", _lines(lengths, lower, ends))) == expected
