"""The prediction loops on the GPU fast path, checked on the CPU: each batch reaches the model with the packing
plan of its CPU mask (`packed_to`), made once per batch, so the forward reads nothing back from the device (a
plan made from a device mask is one host sync per forward); and the outputs are bit for bit those of the model
planning from the mask itself, as the loops did before."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from bertkit.config import BertConfig
from bertkit.modeling import (BertForMaskedLM, BertForMultipleChoice, BertForQuestionAnswering,
                              BertForSequenceClassification, BertForTokenClassification, BertModel)
from bertkit.modeling import packing as P
from bertkit.pipelines import pipeline
from bertkit.tasks.choice import ChoiceFeature, predict_choice_logits
from bertkit.tasks.classify import Feature, packed_to, predict_logits
from bertkit.tasks.qa import QAFeature, predict_qa_logits
from bertkit.tasks.tag import TagFeature, predict_word_logits
from bertkit.tokenizer import BertTokenizer
from tests.train.test_fastpath import MASK_INDEX_OPS, SYNC_OPS

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("the cat sat on a mat dog ran far away red blue sky is big small who what where paris london "
         "ada met bob in city").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
BATCH = 4
TEXTS = ["the cat sat on the mat", "a dog ran", "red sky", "the big blue sky is far away", "who",
         "ada met bob in paris", "a small red cat sat on a big blue mat in london", "dog"]


def _config(num_labels: int = 3) -> BertConfig:
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    config.num_labels = num_labels
    return config


def _ids(g: np.random.Generator) -> list[int]:
    """[CLS] 1 to 11 random tokens [SEP]: batches of mixed lengths, so every plan has padding to remove."""
    return [2] + g.integers(5, len(VOCAB), g.integers(1, 12)).tolist() + [3]


class Watch:
    """Records what the planning and the model see: the device of every mask `pack` plans, the `packing`
    each forward receives, and the ops of each forward that would make the host wait for a GPU."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.masks: list[str] = []
        self.plans: list = []
        self.syncs: list[str] = []
        pack = P.pack

        def spy(mask, *args, **kwargs):
            self.masks.append(mask.device.type)
            return pack(mask, *args, **kwargs)

        monkeypatch.setattr(P, "pack", spy)

    def model(self, model):
        """`model` watched: the plan each encoder call receives, and the device ops of its forward (or, for
        loops that call the encoder and a head themselves, as fill-mask does, of those calls)."""
        from torch.utils._python_dispatch import TorchDispatchMode
        syncs, depth = self.syncs, [0]

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.overloadpacket)
                if name.startswith(SYNC_OPS) or (name in MASK_INDEX_OPS and any(
                        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])):
                    syncs.append(name)
                return func(*args, **(kwargs or {}))

        def recorded(f):
            def run(*args, **kwargs):
                if depth[0]:                      # already inside a recorded call
                    return f(*args, **kwargs)
                depth[0] += 1
                try:
                    with Record():
                        return f(*args, **kwargs)
                finally:
                    depth[0] -= 1
            return run

        encode = model.base_model.encode

        def watched_encode(*args, **kwargs):
            self.plans.append(inspect.signature(encode).bind(*args, **kwargs).arguments.get("packing"))
            return recorded(encode)(*args, **kwargs)

        self.monkeypatch.setattr(model.base_model, "encode", watched_encode)
        self.monkeypatch.setattr(model, "forward", recorded(model.forward))
        if hasattr(model, "cls"):
            self.monkeypatch.setattr(model.cls.predictions, "forward", recorded(model.cls.predictions.forward))
        return model


def unplanned(model, monkeypatch):
    """`model` ignoring any `packing` its encoder is given: it plans from the mask itself, as before
    `packed_to`."""
    encode = model.base_model.encode

    def planning_itself(*args, **kwargs):
        bound = inspect.signature(encode).bind(*args, **kwargs)
        bound.arguments["packing"] = None
        return encode(*bound.args, **bound.kwargs)

    monkeypatch.setattr(model.base_model, "encode", planning_itself)
    return model


# Each case: (model, run(model) -> outputs as arrays, number of forwards); 10 inputs in batches of 4 -> 3.
def _classify(g):
    feats = [Feature(ids, [0] * len(ids)) for ids in (_ids(g) for _ in range(10))]
    return BertForSequenceClassification(_config()), lambda m: [predict_logits(m, feats, BATCH)], 3


def _tag(g):
    feats = []
    for s in range(10):
        ids = _ids(g)
        feats.append(TagFeature(ids, None, [None, *range(len(ids) - 2), None], s))
    words = [len(f.input_ids) - 2 for f in feats]
    return BertForTokenClassification(_config()), lambda m: predict_word_logits(m, feats, words, BATCH), 3


def _qa(g):
    feats = []
    for i in range(10):
        ids = _ids(g)
        n = len(ids) - 2
        feats.append(QAFeature(ids, [0] + [1] * (len(ids) - 1), i, 1, np.zeros((n, 2), np.int64),
                               np.arange(n), np.ones(n, bool)))
    run = lambda m: [x for pair in predict_qa_logits(m, feats, BATCH, progress=False) for x in pair]  # noqa: E731
    return BertForQuestionAnswering(_config()), run, 3


def _choice(g):
    feats = []
    for _ in range(10):
        choices = tuple(_ids(g) for _ in range(3))
        feats.append(ChoiceFeature(choices, tuple([0] * len(c) for c in choices)))
    return BertForMultipleChoice(_config()), lambda m: [predict_choice_logits(m, feats, BATCH)], 3


LOOPS = {"classify": _classify, "tag": _tag, "qa": _qa, "choice": _choice}


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer({t: i for i, t in enumerate(VOCAB)})


def _as_arrays(result) -> list[np.ndarray]:
    """A pipeline's results as arrays: its tensors, or every number of its nested dicts and lists, in order."""
    if isinstance(result, torch.Tensor):
        return [result.numpy()]
    if isinstance(result, dict):
        return [a for k in sorted(result) for a in _as_arrays(result[k])]
    if isinstance(result, (list, tuple)):
        return [a for x in result for a in _as_arrays(x)]
    return [np.array(result)]


def _pipeline(task, cls, inputs, batches=None):
    """A case running the `task` pipeline over `inputs` (`batches`: default, `inputs` cut in batches of 4)."""
    def build(g, tok):
        run = lambda m: _as_arrays(pipeline(task, m, tokenizer=tok, batch_size=BATCH)(inputs))  # noqa: E731
        return cls(_config()), run, batches or math.ceil(len(inputs) / BATCH)
    return build


def _masked(k: int, text: str) -> str:
    words = text.split()
    words[k % len(words)] = "[MASK]"
    return " ".join(words)


PIPELINES = {
    "fill-mask": _pipeline("fill-mask", BertForMaskedLM, [_masked(k, t) for k, t in enumerate(TEXTS)]),
    # texts and pairs are never batched together: 3 + 3 inputs in two batches
    "text-classification": _pipeline("text-classification", BertForSequenceClassification,
                                     [*TEXTS[:3], *zip(TEXTS[3:6], TEXTS[:3])], batches=2),
    "token-classification": _pipeline("token-classification", BertForTokenClassification, TEXTS),
    "question-answering": _pipeline("question-answering", BertForQuestionAnswering,
                                    [{"question": "who met bob", "context": t} for t in TEXTS]),
    "feature-extraction": _pipeline("feature-extraction", BertModel, TEXTS),
}


def _build(name, tok):
    g = np.random.default_rng(sorted([*LOOPS, *PIPELINES]).index(name))
    torch.manual_seed(0)
    return LOOPS[name](g) if name in LOOPS else PIPELINES[name](g, tok)


@pytest.mark.parametrize("name", [*LOOPS, *PIPELINES])
def test_each_batch_is_planned_once_on_the_cpu_and_the_forward_never_syncs(name, tok, monkeypatch):
    model, run, batches = _build(name, tok)
    watch = Watch(monkeypatch)
    run(watch.model(model))
    assert len(watch.plans) == batches and all(isinstance(p, P.Packing) for p in watch.plans)
    assert watch.masks == ["cpu"] * batches   # one plan per batch, from the CPU mask, none inside the forward
    assert any(not p.is_dense for p in watch.plans)  # there was padding to plan around
    assert watch.syncs == []


@pytest.mark.parametrize("name", [*LOOPS, *PIPELINES])
def test_outputs_are_those_of_the_model_planning_itself(name, tok, monkeypatch):
    model, run, _ = _build(name, tok)
    model.eval()
    planned = run(model)
    before = run(unplanned(model, monkeypatch))
    assert len(planned) == len(before) > 0
    for a, b in zip(planned, before):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_the_check_can_fail(tok, monkeypatch):
    """Without the plan the forward plans from its mask: seen as a `pack` inside it, and a `nonzero`."""
    model, run, _ = _build("classify", tok)
    watch = Watch(monkeypatch)
    run(watch.model(unplanned(model, monkeypatch)))
    assert watch.masks == ["cpu"] * 6 and "aten.nonzero" in watch.syncs


def test_packed_to_adds_the_cpu_plan_and_moves_the_batch():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": mask}
    out = packed_to(batch, "meta")
    assert out["input_ids"].device.type == out["attention_mask"].device.type == "meta"
    plan = out["packing"]
    assert plan.indices.device.type == plan.cu_seqlens.device.type == "meta"
    assert (plan.batch, plan.seqlen, plan.max_seqlen, plan.runs) == (2, 3, 3, ((0, 1, 3), (3, 1, 2)))
    # a (batch, choices, seqlen) mask is planned flattened, and on the CPU the plan is the CPU one
    cpu = packed_to({"attention_mask": mask.view(1, 2, 3)}, torch.device("cpu"))["packing"]
    assert torch.equal(cpu.indices, torch.tensor([0, 1, 2, 3, 4])) and (cpu.batch, cpu.seqlen) == (2, 3)
