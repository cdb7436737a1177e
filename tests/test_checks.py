"""`True` where a count, size or index is meant is refused by name (Python's bool is an int, `True == 1`), at
each argument check that once let it through as a 1."""
from __future__ import annotations

import random

import pytest
import torch

from bertkit.checks import is_int
from bertkit.data.masking import MaskingCollator, PretrainingBatches
from bertkit.data.pretraining import create_instances
from bertkit.data.readers import Example
from bertkit.tasks.classify import ClassificationBatches, encode_examples, label_info
from bertkit.tokenizer import BertTokenizer

VOCAB, PAD, CLS, SEP, MASK = 100, 0, 2, 3, 4


def test_is_int_is_an_int_and_not_a_bool():
    assert [is_int(v) for v in (0, -3, 2**70, True, False, 1.0, "1", None, torch.tensor(1))] == [
        True, True, True, False, False, False, False, False, False]


def _collator(**kwargs):
    return MaskingCollator(VOCAB, {PAD, CLS, SEP, MASK}, MASK, PAD, **kwargs)


def _rows():
    return [(torch.tensor([CLS, 10 + i, SEP, 20 + i, SEP]), torch.tensor([0, 0, 0, 1, 1]), 0) for i in range(8)]


@pytest.fixture(scope="module")
def features():
    tok = BertTokenizer.train_from_iterator(["a b c d e f"] * 3, vocab_size=40)
    labels = [str(i % 2) for i in range(6)]
    return encode_examples(tok, [Example("a " * (i + 1), None, labels[i], i) for i in range(6)], label_info(labels), 16)


@pytest.mark.parametrize("make, message", [
    (lambda: MaskingCollator(True, {PAD}, MASK, PAD), "vocab_size must be a positive int, got True"),
    (lambda: _collator(max_predictions_per_seq=True), "max_predictions_per_seq must be an int >= 1, got True"),
    (lambda: PretrainingBatches(_rows(), True, _collator()), "batch_size must be a positive int, got True"),
    (lambda: PretrainingBatches(_rows(), 4, _collator(), world_size=True),
     "need 0 <= rank < world_size, got rank=0, world_size=True"),
    (lambda: PretrainingBatches(_rows(), 4, _collator(), rank=True, world_size=2),
     "need 0 <= rank < world_size, got rank=True, world_size=2"),
    (lambda: create_instances([[[10], [11]], [[12], [13]]], 16, CLS, SEP, random.Random(0), dupe_factor=True),
     "dupe_factor must be an int >= 1, got True"),
])
def test_pretraining_data_refuses_a_bool_count(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": True}, "batch_size must be an int >= 1, got True"),
    ({"batch_size": 2.5}, "batch_size must be an int >= 1, got 2.5"),
    ({"batch_size": 2, "rank": True, "world_size": 2}, "need 0 <= rank < world_size, got rank=True, world_size=2"),
])
def test_classification_batches_refuse_a_bool_or_fractional_size(features, kwargs, message):
    batch_size = kwargs.pop("batch_size")
    with pytest.raises(ValueError) as e:
        ClassificationBatches(features, batch_size, **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("kwargs, message", [
    ({"max_length": True}, "max_length must be a positive int, got True"),
    ({"max_length": 6, "stride": True, "return_overflowing_tokens": True}, "stride must be an int >= 0, got True"),
])
def test_tokenizer_refuses_a_bool_length_or_stride(kwargs, message):
    tok = BertTokenizer.train_from_iterator(["hello there my good friend"] * 3, vocab_size=40)
    with pytest.raises(ValueError) as e:
        tok("hello there my good friend", truncation=True, **kwargs)
    assert str(e.value) == message
