"""The fine-tuning objectives on the trainer's GPU fast path, checked on the CPU: `prepare` (the packing plan
from the CPU batch) changes no loss, stat or logit, and with it a training step reads nothing back from the
device (the plan made from a device mask would be one host sync per forward)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bertkit.config import BertConfig
from bertkit.modeling import (BertForMultipleChoice, BertForQuestionAnswering, BertForSequenceClassification,
                              BertForTokenClassification)
from bertkit.modeling import packing as P
from bertkit.tasks.choice import ChoiceBatches, ChoiceFeature, ChoiceObjective
from bertkit.tasks.classify import ClassificationBatches, ClassificationObjective, Feature
from bertkit.tasks.qa import QABatches, QAFeature, QAObjective
from bertkit.tasks.tag import IGNORE, TagBatches, TagFeature, TagObjective
from tests.train.test_fastpath import syncing_ops_in_main_thread

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, BATCH = 40, 4


def _config(num_labels: int = 2) -> BertConfig:
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    config.num_labels = num_labels
    return config


def _ids(g: np.random.Generator) -> list[int]:
    """[CLS] random tokens [SEP], 4 to 14 long: every batch has padding, so planning in the step would show."""
    return [2] + g.integers(5, VOCAB, g.integers(2, 13)).tolist() + [3]


def _classify(g, regression=False):
    feats = [Feature(ids, [0] * len(ids), float(g.normal()) if regression else int(g.integers(3)))
             for ids in (_ids(g) for _ in range(12))]
    model = BertForSequenceClassification(_config(num_labels=1 if regression else 3))
    return ClassificationObjective(model), ClassificationBatches(feats, BATCH, seed=1, regression=regression)


def _tag(g):
    feats = []
    for s in range(12):
        ids = _ids(g)
        labels = [IGNORE] + [int(g.integers(4)) if g.random() < 0.7 else IGNORE for _ in ids[2:]] + [IGNORE]
        labels[1] = 1  # at least one label
        feats.append(TagFeature(ids, labels, [None] * len(ids), s))
    return TagObjective(BertForTokenClassification(_config(num_labels=4))), TagBatches(feats, BATCH, seed=1)


def _qa(g):
    feats = []
    for i in range(12):
        ids = _ids(g)
        start = int(g.integers(len(ids) - 1))
        end = start + int(g.integers(len(ids) - start - 1))
        feats.append(QAFeature(ids, [0] * 3 + [1] * (len(ids) - 3), i, 3, None, None, None, start, end))
    return QAObjective(BertForQuestionAnswering(_config())), QABatches(feats, BATCH, seed=1)


def _choice(g):
    feats = []
    for _ in range(12):
        choices = tuple(_ids(g) for _ in range(3))
        feats.append(ChoiceFeature(choices, tuple([0] * len(c) for c in choices), int(g.integers(3))))
    return ChoiceObjective(BertForMultipleChoice(_config())), ChoiceBatches(feats, BATCH, seed=1)


TASKS = {"classify": _classify, "regression": lambda g: _classify(g, regression=True), "tag": _tag, "qa": _qa,
         "choice": _choice}


def _build(task):
    """(objective of a tiny model, its batch source): what the trainer runs and the tests feed by hand."""
    return TASKS[task](np.random.default_rng(0))


def _outputs(objective, batch):
    """The objective's loss sums and stats, and every tensor of the model's output, from one seeded forward
    in training mode (dropout on), so that two runs compare bit for bit."""
    torch.manual_seed(5)
    sums, stats = objective(batch)
    torch.manual_seed(5)
    out = objective.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"], packing=batch.get("packing"))
    tensors = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)
               if isinstance(getattr(out, f.name), torch.Tensor)}
    return {**{f"sum.{k}": v for k, v in sums.items()}, **{f"stat.{k}": v for k, v in stats.items()}, **tensors}


@pytest.mark.parametrize("task", TASKS)
def test_prepare_changes_no_loss_stat_or_logit(task):
    torch.manual_seed(0)
    objective, batches = _build(task)
    objective.train()
    batch = next(iter(batches))
    prepared = objective.prepare(batch)
    mask = batch["attention_mask"]
    plan = prepared["packing"]
    assert isinstance(plan, P.Packing) and not plan.is_dense
    # multiple choice plans the flattened (batch * choices, seqlen) mask, as its model encodes it
    assert (plan.batch, plan.seqlen) == (mask.numel() // mask.shape[-1], mask.shape[-1])
    assert objective.counts(prepared) == objective.counts(batch)
    plain, packed = _outputs(objective, batch), _outputs(objective, prepared)
    assert set(plain) == set(packed)
    for k in plain:
        assert torch.equal(plain[k], packed[k]), k


def test_tag_accuracy_is_the_labelled_tokens_guessed_right():
    """The masked sum that replaced `[keep]` indexing (a data-dependent shape) counts the same."""
    torch.manual_seed(0)
    objective, batches = _build("tag")
    batch = objective.prepare(next(iter(batches)))
    objective.eval()
    with torch.no_grad():
        pred = objective.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               packing=batch["packing"]).logits.argmax(-1)
        _, stats = objective(batch)
    labels = batch["labels"]
    keep = labels != IGNORE
    assert stats["acc_tag"].dim() == 0 and int(stats["acc_tag"]) == int((pred[keep] == labels[keep]).sum()) > 0


@pytest.mark.parametrize("task", TASKS)
def test_training_steps_read_nothing_back_from_the_device(task, tmp_path):
    few = syncing_ops_in_main_thread(tmp_path, 2, lambda: _build(task))
    many = syncing_ops_in_main_thread(tmp_path, 6, lambda: _build(task))
    assert few == many  # only the one log step reads values back, however many steps run
    assert set(many) <= {"aten._local_scalar_dense"}   # (its figures, in one copy: tolist() is not an op)


def test_without_prepare_every_step_syncs(tmp_path):
    """The check above can fail: planning from the mask in the step (no `prepare`) is seen at every step."""
    def build():
        objective, batches = _build("classify")
        objective.prepare = None  # the trainer then leaves the planning to the forward
        return objective, batches

    few = syncing_ops_in_main_thread(tmp_path, 2, build)
    many = syncing_ops_in_main_thread(tmp_path, 6, build)
    assert many.count("aten.nonzero") == 6 and few.count("aten.nonzero") == 2
