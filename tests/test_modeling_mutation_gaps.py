"""Behaviour of the packing plans, the task heads and the pre-training objective that a mutation audit found
unpinned: each test here fails under a plausible one-line bug that the rest of the suite let through.

The oracle is transformers on the same weights wherever it has the behaviour; otherwise the rule the code's
docstring states (BERT's initialisation, the plan's layout, the one-line errors).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from bertkit import modeling
from bertkit.modeling import packing as P
from bertkit.modeling.heads import aligned_linear
from bertkit.tasks.pretrain_objective import PreTrainingObjective, evaluate_pretraining

from tests.test_modeling import TINY, pair, randomize_, tiny_config
from tests.test_modeling import padded_inputs as inputs

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------------
# Packing plans
# ---------------------------------------------------------------------------------------------

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


def test_pinning_a_plan_already_on_a_device_changes_nothing():
    """Only CPU tensors are pinned: a plan on another device is returned as it is."""
    plan = P.pack(torch.tensor([[1, 1, 0], [1, 1, 1]])).to("meta")
    assert plan.pin() is plan


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
    x = inputs((5, 8, 8), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice, the notes on Python values it records
        traced = torch.jit.trace(Hidden(model), (x["input_ids"], x["attention_mask"]))
    y = inputs((8, 3, 6), seed=2)
    with torch.no_grad():
        want = model(y["input_ids"], y["attention_mask"]).last_hidden_state
        got = traced(y["input_ids"], y["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


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


def test_attention_probabilities_under_autocast_are_float32_as_transformers():
    """Under bf16 autocast the attention probabilities are computed and returned in fp32, as transformers' are."""
    ours, theirs = pair("BertModel", tiny_config(), seed=5)
    x = inputs(seed=6)
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


def test_resize_keeps_the_decoder_out_features_as_transformers():
    """After resize_token_embeddings the MLM decoder says its new width, as transformers' does."""
    ours, theirs = pair("BertForMaskedLM", tiny_config(), seed=7)
    ours.resize_token_embeddings(120)
    theirs.resize_token_embeddings(120)
    assert ours.get_output_embeddings().out_features == theirs.get_output_embeddings().out_features == 120


def test_resize_untied_decoder_without_mean_resizing_draws_initializer_range():
    """mean_resizing=False: an untied decoder's new rows are N(0, initializer_range), its new bias entries 0."""
    torch.manual_seed(0)
    model = modeling.BertForMaskedLM(tiny_config(tie_word_embeddings=False, hidden_size=64))
    model.resize_token_embeddings(199, mean_resizing=False)
    decoder = model.cls.predictions.decoder
    assert decoder.weight.shape == (199, 64)
    assert 0.015 < decoder.weight[99:].std().item() < 0.025
    assert not model.cls.predictions.bias[99:].any()


@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForTokenClassification", "BertForSequenceClassification"])
def test_bf16_logits_give_a_float32_loss(name):
    """bf16 (and fp16) logits are cast to fp32 for the loss, as autocast would run it: the loss is fp32 and equals
    the loss of the fp32-cast logits."""
    cfg = tiny_config(num_labels=3)
    model = randomize_(getattr(modeling, name)(cfg), seed=8).eval().to(torch.bfloat16)
    x = inputs(seed=9)
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


def test_uint8_token_labels_give_transformers_loss():
    """uint8 class indices are taken as they are (torch's cross_entropy and transformers take them)."""
    ours, theirs = pair("BertForMaskedLM", tiny_config(), seed=10)
    x = inputs((11, 11, 11), seed=11)
    labels = torch.randint(0, TINY["vocab_size"], x["input_ids"].shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ours(**x, labels=labels.to(torch.uint8)).loss
        b = theirs(**x, labels=labels.to(torch.uint8)).loss
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_pretraining_total_loss_needs_both_labels_as_transformers():
    """BertForPreTraining's `loss` is MLM + NSP only when both labels are given (transformers: None otherwise);
    the part that was given is still reported."""
    ours, theirs = pair("BertForPreTraining", tiny_config(), seed=12)
    x = inputs(seed=13)
    labels = torch.randint(0, TINY["vocab_size"], x["input_ids"].shape, generator=torch.Generator().manual_seed(3))
    labels = labels.masked_fill(~x["attention_mask"].bool(), -100)
    nsp = torch.tensor([1, 0, 1])
    with torch.no_grad():
        only_mlm, their_mlm = ours(**x, labels=labels), theirs(**x, labels=labels)
        only_nsp, their_nsp = ours(**x, next_sentence_label=nsp), theirs(**x, next_sentence_label=nsp)
    assert only_mlm.loss is None and their_mlm.loss is None
    assert only_nsp.loss is None and their_nsp.loss is None
    assert only_mlm.mlm_loss is not None and only_nsp.nsp_loss is not None


def test_qa_loss_needs_both_positions_as_transformers():
    """Only start_positions given: no loss, as in transformers (which needs both)."""
    ours, theirs = pair("BertForQuestionAnswering", tiny_config(), seed=14)
    x = inputs(seed=15)
    with torch.no_grad():
        a = ours(**x, start_positions=torch.tensor([1, 2, 3]))
        b = theirs(**x, start_positions=torch.tensor([1, 2, 3]))
    assert a.loss is None and b.loss is None


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
    x = inputs((11, 11, 11), seed=17)
    if name == "BertForMultipleChoice":
        x = {k: v.view(1, 3, 11) for k, v in x.items()}
    with torch.no_grad():
        torch.manual_seed(9)  # hidden states asked for: every row of the last layer, as transformers computes
        a = ours(**x, output_hidden_states=True).logits
        torch.manual_seed(9)
        b = theirs(**x, output_hidden_states=True).logits
    assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForMaskedLM", "BertForPreTraining", "BertForQuestionAnswering"])
def test_config_output_flags_are_the_heads_default_as_transformers(name):
    """config.output_hidden_states / output_attentions set: a head's forward returns them unasked, the values
    transformers returns (at real positions)."""
    cfg = tiny_config(num_labels=None if name == "BertForQuestionAnswering" else 3, output_hidden_states=True,
                      output_attentions=True)
    ours, theirs = pair(name, cfg, seed=18)
    x = inputs(seed=19)
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
    x = inputs(seed=21)
    m = x["attention_mask"].bool()
    with torch.no_grad():
        a, b = ours(**x).logits, theirs(**x).logits
    assert (a - b)[m].abs().max() < 1e-5


def test_label_shape_errors_for_multi_label_and_choice_probabilities():
    """Multi-label targets of the wrong width, and float multiple-choice labels that are not (batch, choices)
    probabilities, are named before the forward."""
    x = inputs(seed=22)
    clf = modeling.BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    with pytest.raises(ValueError, match=r"^labels for multi_label_classification must have shape \(batch, "
                                         r"num_labels\) = \(3, 3\), got \(3, 5\)"):
        clf(**x, labels=torch.zeros(3, 5))
    mc = modeling.BertForMultipleChoice(tiny_config()).eval()
    y = {k: v.view(1, 3, 11) for k, v in x.items()}
    with pytest.raises(TypeError, match=r"^labels must hold class indices as an integer tensor \(torch.long\), "
                                        r"got torch.float32$"):
        mc(**y, labels=torch.tensor([1.0]))


def test_num_labels_follows_a_replaced_classifier():
    """num_labels is the classifier's width (what the logits have), also after a user swaps the classifier."""
    model = modeling.BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    model.classifier = torch.nn.Linear(TINY["hidden_size"], 5)
    assert model.num_labels == 5
    with torch.no_grad():
        assert model(**inputs(seed=23)).logits.shape == (3, 5)


# ---------------------------------------------------------------------------------------------
# The pre-training objective
# ---------------------------------------------------------------------------------------------

def pretraining_batch(seed: int, nsp=(1, 0, -100)) -> dict[str, torch.Tensor]:
    """A collated batch: padded rows, masked-token labels (a target of id 0 among them), NSP labels with an
    ignored one."""
    x = inputs((7, 11, 4), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    labels = torch.randint(0, TINY["vocab_size"], x["input_ids"].shape, generator=g)
    chosen = (torch.rand(labels.shape, generator=g) < 0.4) & x["attention_mask"].bool()
    chosen[:, 1] = True
    labels = labels.masked_fill(~chosen, -100)
    labels[0, 1] = 0
    return {**x, "labels": labels, "next_sentence_label": torch.tensor(nsp)}


def reference(theirs, batch) -> dict[str, float]:
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


def some_right(theirs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`batch` with every other masked token's target set to transformers' prediction there (a random tiny model
    predicts none right otherwise, and an accuracy of 0 hides what it is divided by)."""
    with torch.no_grad():
        guess = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).prediction_logits.argmax(-1)
    labels = batch["labels"].clone()
    rows, cols = torch.nonzero((labels != -100) & (labels != 0), as_tuple=True)  # the id-0 target stays
    labels[rows[::2], cols[::2]] = guess[rows[::2], cols[::2]]
    return {**batch, "labels": labels}


def test_objective_sums_and_counts_equal_transformers():
    """MLM at every labelled row (a target of id 0 included, only -100 is ignored) and NSP at every labelled
    sequence: the sums, correct counts and counts of transformers' logits."""
    ours, theirs = pair("BertForPreTraining", tiny_config(), seed=30)
    objective = PreTrainingObjective(ours).eval()
    batch = some_right(theirs, pretraining_batch(31))
    want = reference(theirs, batch)
    assert 0 < want["acc_mlm"] < want["mlm"] and batch["labels"][0, 1] == 0
    assert objective.counts(objective.prepare(batch)) == {"mlm": want["mlm"], "nsp": want["nsp"]}
    assert objective.counts(batch) == {"mlm": want["mlm"], "nsp": want["nsp"]}
    with torch.no_grad():
        sums, stats = objective(objective.prepare(batch))
    assert sums["mlm"].item() == pytest.approx(want["loss_mlm"], rel=1e-5)
    assert sums["nsp"].item() == pytest.approx(want["loss_nsp"], rel=1e-5)
    assert (stats["acc_mlm"].item(), stats["acc_nsp"].item()) == (want["acc_mlm"], want["acc_nsp"])


def test_objective_of_a_bf16_model_sums_in_float32():
    """bf16 logits are cast to fp32 before the loss: the sums are fp32, those of the fp32-cast logits."""
    torch.manual_seed(0)
    model = randomize_(modeling.BertForPreTraining(tiny_config()), seed=32).eval().to(torch.bfloat16)
    objective = PreTrainingObjective(model)
    batch = pretraining_batch(33, nsp=(1, 0, 1))
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


@pytest.mark.parametrize("training", [False, True])
def test_evaluate_pretraining_equals_transformers_and_restores_the_mode(training):
    """Held-out metrics over two batches: each total divided by its own count (the masked tokens for MLM,
    the labelled sequences for NSP), perplexity exp(MLM loss); the objective is left in the mode it was in."""
    ours, theirs = pair("BertForPreTraining", tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                        seed=34)
    objective = PreTrainingObjective(ours).train(training)
    batches = [some_right(theirs, pretraining_batch(35)), some_right(theirs, pretraining_batch(36, nsp=(0, 1, 1)))]
    refs = [reference(theirs, b) for b in batches]
    total = {k: sum(r[k] for r in refs) for k in refs[0]}
    assert total["mlm"] != total["nsp"] and 0 < total["acc_mlm"] < total["mlm"] and 0 < total["acc_nsp"]
    got = evaluate_pretraining(objective, batches)
    assert objective.training is training and ours.training is training
    mlm_loss = total["loss_mlm"] / total["mlm"]
    want = {"mlm_accuracy": total["acc_mlm"] / total["mlm"], "mlm_loss": mlm_loss, "perplexity": math.exp(mlm_loss),
            "nsp_accuracy": total["acc_nsp"] / total["nsp"], "nsp_loss": total["loss_nsp"] / total["nsp"]}
    assert got == pytest.approx(want, rel=1e-5)


def test_evaluate_pretraining_errors_name_what_is_missing():
    objective = PreTrainingObjective(modeling.BertForPreTraining(tiny_config()))
    with pytest.raises(ValueError, match=r"^evaluate_pretraining: no batches$"):
        evaluate_pretraining(objective, [])
    unlabelled = pretraining_batch(37, nsp=(-100, -100, -100))
    with pytest.raises(ValueError, match=r"^evaluate_pretraining: the batches hold \d+ masked tokens and 0 NSP "
                                         r"labels; each is needed$"):
        evaluate_pretraining(objective, [unlabelled])
