"""Sequence classification and regression: examples -> features -> batches -> objective -> metrics -> predictions.

- `label_info` decides the task from the TRAINING labels: regression when they are real numbers (`is_regression`),
  else classification over `label_set` (sorted), whose order gives the ids stored in the config's id2label/label2id.
  Multi-label classification is asked for (`multi_label`): each row holds any number of labels, separated in one
  field (or a JSONL list), and the target is a 0/1 vector over the labels of the training data.
- `encode_examples` tokenizes single texts or pairs (truncated to `max_seq_length`) and maps labels to ids (or
  floats); an unknown label is a ``ValueError`` naming ``file:line``.
- Long inputs: with a `stride` (``--stride``; default None truncates, as transformers does), an example longer than
  `max_seq_length` becomes several WINDOWS (`encode_windows`) instead of losing its end: over the text, or for a
  pair over the second text with the first kept whole in every window; consecutive windows share `stride` tokens,
  so every token is seen, however long the text. Training uses every window with the example's label (a window
  without the cue still carries it: the model learns such windows are uninformative). Evaluation and prediction
  AVERAGE the logits of an example's windows (`Feature.example` groups them; the mean of the logits, not of the
  probabilities, so a confident window outweighs uninformative ones near 0); a text that fits is one window, and
  its result is exactly the result without a stride.
- `ClassificationBatches` yields padded batches forever: a seeded permutation per epoch, each batch padded to its
  own longest sequence, and `state_dict()` / `load_state_dict()` ({epoch, batch}) for the trainer's exact resume.
- `ClassificationObjective` is what `bertkit.train.Trainer` trains: loss sums under the term "cls", by the
  problem transformers infers (`problem_type`: the config's, else MSE for one label, CE for integer labels,
  binary CE averaged over the labels for float ones; a regression of several targets averages them), plus
  "acc_cls" for classification (a multi-label row counts when its whole label set is right). Like the tagging, QA
  and multiple-choice objectives it is a `FinetuneObjective`, whose `prepare` (`with_packing`) plans the packing on
  the CPU batch, so the training step never waits for the GPU.
- `evaluate_classification` gives accuracy, F1 (binary on label id 1 when there are two labels, else macro) and MCC,
  Pearson / Spearman / MSE for regression, or for multi-label subset accuracy and micro / macro F1 (a label is
  predicted when its sigmoid is at least 0.5); `predict` labels new texts. Both run in batches of similar lengths
  (sorted by length, then put back in the input order); like every prediction loop (tagging, QA, multiple
  choice, the pipelines) each batch goes to the device through `packed_to`, its packing planned on the CPU.
- A big input (`bertkit predict` / `evaluate` on a file) goes a chunk of CHUNK_ROWS texts at a time
  (`iter_example_logits`, `iter_predict`): tokenized, predicted and handed back in input order, so memory holds
  one chunk's features and results, not the file's, and `predict` writes each chunk's lines as they come.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import islice, repeat
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics as M
from ..checks import is_int
from ..data.labels import IGNORE, labelled, void_labels
from ..data.readers import Example, is_regression, label_key, label_maps, label_set
from ..modeling import packing as P
from ..modeling.heads import problem_type
from ..train import distributed as dist
from ..train.tracking import ProgressLines
from ..train.trainer import pin, to_device

__all__ = ["Feature", "LabelInfo", "label_info", "split_labels", "label_info_from_config", "encode_examples",
           "encode_texts", "encode_windows", "example_logits",
           "pad_inputs", "collate", "ClassificationBatches", "batch_logits", "with_packing", "packed_to",
           "FinetuneObjective", "ClassificationObjective", "predict_logits", "labelled_logits",
           "classification_metrics", "classification_report", "example_pairs", "example_labels",
           "evaluate_classification", "chunks", "in_chunks", "chunks_of", "iter_example_logits", "iter_row_logits",
           "iter_predict", "iter_predict_rows", "predict", "METRICS"]

# the dev metrics that can pick the best checkpoint (higher is better for each)
METRICS = ("accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman")


@dataclass(frozen=True)
class Feature:
    """One tokenized example; ``label`` is a class id, a float target, a multi-label 0/1 tuple, or None."""
    input_ids: list[int]
    token_type_ids: list[int]
    label: int | float | tuple[float, ...] | None = None
    line: int = 0
    example: int | None = None  # the example a window belongs to (None: a feature of its own)


@dataclass(frozen=True)
class LabelInfo:
    """What the labels make of the task: ``labels`` are the class names in id order (empty for regression);
    with ``multi_label`` a row's labels are separated by ``separator`` in its label field."""
    regression: bool
    labels: tuple[str, ...] = ()
    multi_label: bool = False
    separator: str = ","

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.labels)

    @cached_property
    def ids(self) -> tuple[dict[str, int], dict[float | str, int]]:
        """Each label's id, and each `label_key`'s first id ("1.0" for "1"): a row's label is looked up, not
        searched for (100k rows over 2,000 labels took seconds, and a spelling of another form ten times that)."""
        exact: dict[str, int] = {}
        by_key: dict[float | str, int] = {}
        for i, name in enumerate(self.labels):
            exact.setdefault(name, i)
            by_key.setdefault(label_key(name), i)
        return exact, by_key

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained`: num_labels, id2label, label2id (and problem_type)."""
        if self.regression:
            return {"num_labels": 1, "problem_type": "regression"}
        id2label, label2id = label_maps(self.labels)
        return {"num_labels": len(self.labels), "id2label": id2label, "label2id": label2id,
                "problem_type": "multi_label_classification" if self.multi_label else "single_label_classification"}


def split_labels(label: str | Sequence[str], separator: str) -> tuple[str, ...]:
    """A multi-label row's labels: a JSONL list as given, else the field split at `separator`; surrounding spaces
    and empty pieces dropped ("" is a row without labels)."""
    pieces = label.split(separator) if isinstance(label, str) else label
    return tuple(p.strip() for p in pieces if p.strip())


def label_info(examples: Sequence[Example], regression: bool = False, source: str = "", multi_label: bool = False,
               separator: str = ",") -> LabelInfo:
    """Regression when the labels are real numbers (or when asked for, e.g. ratings 1-5: every label a number),
    else classification over the sorted distinct labels; with `multi_label`, over the sorted distinct labels of
    every row (`split_labels`)."""
    if multi_label:
        return _multi_label_info(examples, source, separator)
    _refuse_label_lists(examples, source)
    if regression:
        _refuse_non_numbers(examples, source)
        return LabelInfo(True)
    if is_regression(examples):
        return LabelInfo(True)
    _refuse_damaged_regression(examples, source)
    labels = tuple(label_set(examples))
    if len(labels) < 2:
        raise ValueError(f"classification needs at least two distinct labels in the training data, found {labels}")
    return LabelInfo(False, labels)


def _multi_label_info(examples: Sequence[Example], source: str, separator: str) -> LabelInfo:
    names = [name for ex in examples for name in split_labels(getattr(ex, "label", ex), separator)]
    labels = tuple(label_set(names)) if names else ()
    if len(labels) < 2:
        raise ValueError(f"{source or 'the training data'}: multi-label classification needs at least two "
                         f"distinct labels, found {list(labels)} (labels separated by {separator!r})")
    return LabelInfo(False, labels, True, separator)


def _refuse_label_lists(examples: Sequence[Example], source: str) -> None:
    """A JSONL list of labels asks for multi-label classification, which was not asked for."""
    listed = next((ex for ex in examples if isinstance(getattr(ex, "label", ex), tuple)), None)
    if listed is not None:  # (rows, or their labels, may be given)
        raise ValueError(f"{source or 'line'}:{getattr(listed, 'line', '?')}: a list of labels "
                         f"{list(getattr(listed, 'label', listed))!r} is for multi-label classification "
                         f"(--multi-label)")


def _refuse_non_numbers(examples: Sequence[Example], source: str) -> None:
    """An asked-for regression needs every label a finite number."""
    bad = next((ex for ex in examples if isinstance(label_key(ex.label), str)), None)
    if bad is not None:
        raise ValueError(f"{source or 'line'}:{bad.line}: regression needs a finite number as the label, "
                         f"got {bad.label!r}")


def _refuse_damaged_regression(examples: Sequence[Example], source: str) -> None:
    """Real-valued targets with a few others ("nan", "N/A") are a damaged regression file, not a set of classes."""
    rows = [(getattr(ex, "label", ex), getattr(ex, "line", "?")) for ex in examples]   # (rows, or their labels)
    numbers = [label for label, _ in rows if not isinstance(label_key(label), str)]
    if numbers and len(numbers) < len(rows) and is_regression(numbers):
        label, line = next((label, line) for label, line in rows if isinstance(label_key(label), str))
        raise ValueError(f"{source or 'line'}:{line}: the label {label!r} is not a finite number, but the other "
                         f"labels are real numbers (a regression, e.g. {numbers[0]!r}): give each line a number, "
                         "or drop it")


def label_info_from_config(config, separator: str = ",") -> LabelInfo:
    """The task a fine-tuned model was trained for, from its config (`separator`: a multi-label row's)."""
    if config.num_labels == 1 or config.problem_type == "regression":
        return LabelInfo(True)
    return LabelInfo(False, tuple(config.label_names()), config.problem_type == "multi_label_classification",
                     separator)


def _label_value(ex: Example, info: LabelInfo, source: str) -> int | float | tuple[float, ...] | None:
    if ex.label is None:
        return None
    where = f"{source}:{ex.line}" if source else f"line {ex.line}"
    if info.multi_label:
        hot = [0.0] * len(info.labels)
        for name in split_labels(ex.label, info.separator):
            hot[_class_id(name, info, where)] = 1.0
        return tuple(hot)
    if isinstance(ex.label, tuple):
        raise ValueError(f"{where}: a list of labels {list(ex.label)!r} is for a multi-label model")
    if info.regression:
        try:
            v = float(ex.label)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise ValueError(f"{where}: expected a number as the regression label, got {ex.label!r}")
        return v
    return _class_id(str(ex.label), info, where)


def _class_id(label: str, info: LabelInfo, where: str) -> int:
    exact, by_key = info.ids
    found = exact.get(label, by_key.get(label_key(label)))
    if found is not None:
        return found
    if info.labels == tuple(f"LABEL_{i}" for i in range(len(info.labels))) and label.isascii() \
            and label.isdigit() and int(label) < len(info.labels):
        return int(label)  # a model with transformers' default names: the data's label i is LABEL_i
    raise ValueError(f"{where}: label {label!r} is not one of the model's labels {list(info.labels)}")


def encode_texts(tok, texts: Sequence[str], pairs: Sequence[str] | None = None, max_seq_length: int = 128
                 ) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) per text (or pair), truncated to `max_seq_length` tokens, not padded."""
    texts = list(texts)
    if not texts:
        return []
    enc = tok(texts, list(pairs) if pairs is not None else None, truncation=True, max_length=max_seq_length)
    types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return list(zip(enc["input_ids"], types))


def encode_windows(tok, texts: Sequence[str], pairs: Sequence[str] | None = None, max_seq_length: int = 128,
                   stride: int = 32, lines: Sequence[int] | None = None, source: str = ""
                   ) -> list[tuple[list[int], list[int], int]]:
    """(input_ids, token_type_ids, text index) per window of at most `max_seq_length` tokens; consecutive windows
    of a text share `stride` tokens (the tokenizer's overflowing windows). A pair keeps its first text whole in
    every window and slides over the second; a first text that leaves the second no more than `stride` tokens is
    an error naming ``source:line`` (`lines`: each text's line)."""
    texts = list(texts)
    if not texts:
        return []
    n_special = 3 if pairs is not None else 2
    if not 0 <= stride < max_seq_length - n_special:
        raise ValueError(f"--stride {stride} must be in [0, --max-seq-length - {n_special}) = "
                         f"[0, {max_seq_length - n_special})")
    if pairs is not None:
        pairs = list(pairs)
        firsts = tok(texts, add_special_tokens=False)["input_ids"]
        seconds = tok(pairs, add_special_tokens=False)["input_ids"]
        for i, (a, b) in enumerate(zip(firsts, seconds)):
            if len(a) + len(b) + 3 > max_seq_length and len(a) + 3 + stride >= max_seq_length:
                line = lines[i] if lines is not None else i + 1
                where = f"{source}:{line}" if source else f"line {line}"
                raise ValueError(f"{where}: the first text has {len(a)} tokens and is kept whole in every window, "
                                 f"leaving the second no more than --stride {stride} of --max-seq-length "
                                 f"{max_seq_length}; raise --max-seq-length or lower --stride")
    enc = tok(texts, pairs, truncation="only_second" if pairs is not None else True, max_length=max_seq_length,
              stride=stride, return_overflowing_tokens=True)
    types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return list(zip(enc["input_ids"], types, enc["overflow_to_sample_mapping"]))


def example_pairs(examples: Sequence[Example], source: str = "") -> list[str] | None:
    """The rows' second texts, or None when they have none; a table where only some rows have one is an error."""
    has_pair = [e.text_pair is not None for e in examples]
    if any(has_pair) and not all(has_pair):
        raise ValueError(f"{source}: some rows have a second text and some do not")
    return [e.text_pair for e in examples] if examples and has_pair[0] else None


def example_labels(examples: Iterable[Example], info: LabelInfo, source: str = "") -> list:
    """Each row's label as `info` maps it (class id, float, 0/1 tuple; None without a label); a label the model
    does not know is an error naming ``source:line``, found before any model work."""
    return [_label_value(e, info, source) for e in examples]


def encode_examples(tok, examples: Sequence[Example], info: LabelInfo, max_seq_length: int = 128,
                    source: str = "", stride: int | None = None) -> list[Feature]:
    """Tokenize `examples` (pairs when they have a `text_pair`) and map their labels by `info`; `source` (the
    file name) makes label errors read ``file:line: ...``. With a `stride`, a long example becomes several
    windows (see the module docstring), each a `Feature` with the example's label and index."""
    examples = list(examples)
    pairs = example_pairs(examples, source)
    labels = example_labels(examples, info, source)
    texts = [e.text for e in examples]
    if stride is None:
        encoded = encode_texts(tok, texts, pairs, max_seq_length)
        return [Feature(ids, types, label, e.line) for e, label, (ids, types) in zip(examples, labels, encoded)]
    windows = encode_windows(tok, texts, pairs, max_seq_length, stride, [e.line for e in examples], source)
    return [Feature(ids, types, labels[i], examples[i].line, i) for ids, types, i in windows]


def example_logits(logits: np.ndarray, features: Sequence[Feature]) -> tuple[np.ndarray, list[int]]:
    """Per-example logits, the mean over each example's windows, in the order examples first appear; and the
    index of each example's first feature (for its label). Features without `example` stand alone."""
    keys = [i if f.example is None else ("x", f.example) for i, f in enumerate(features)]
    first: dict[Any, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    if len(first) == len(features):
        return logits, list(range(len(features)))
    slot = {k: j for j, k in enumerate(first)}
    group = np.array([slot[k] for k in keys])
    sums = np.zeros((len(first), logits.shape[1]), dtype=np.float64)
    np.add.at(sums, group, logits)                                    # (examples, labels)
    counts = np.bincount(group, minlength=len(first))[:, None]        # (examples, 1)
    return (sums / counts).astype(np.float32), list(first.values())


def pad_inputs(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None = None,
               pad_id: int = 0) -> dict[str, torch.Tensor]:
    """The model inputs of a batch, right-padded to its longest sequence: input_ids, token_type_ids (zeros when
    None) and attention_mask, each (n, width). Every task's collate starts here."""
    n, width = len(input_ids), max(len(x) for x in input_ids)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, x in enumerate(input_ids):
        k = len(x)
        ids[i, :k] = torch.tensor(x)
        if token_type_ids is not None:
            types[i, :k] = torch.tensor(token_type_ids[i])
        mask[i, :k] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def collate(features: Sequence[Feature], pad_id: int = 0, regression: bool = False) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of this batch; `labels` only when every feature has one: class ids (batch,),
    regression targets (batch,) or multi-label 0/1 targets (batch, labels)."""
    batch = pad_inputs([f.input_ids for f in features], [f.token_type_ids for f in features], pad_id)
    if all(f.label is not None for f in features):
        floats = regression or isinstance(features[0].label, tuple)
        batch["labels"] = torch.tensor([f.label for f in features], dtype=torch.float32 if floats else torch.long)
    return batch


class ClassificationBatches:
    """Shuffled padded batches over in-memory features, forever, split across processes. Epoch `e` visits the
    features in the order of a permutation drawn from `seed * 100_003 + e`, cut into global batches of
    `batch_size * world_size`; rank r takes items r, r + world_size, ... of each, so 2 processes see the batches
    of 1 process with twice the batch size. An epoch is a whole number of optimizer steps of `grad_accum`
    micro-batches (as in transformers, the last step of an epoch takes what is left), so its last micro-batches
    may be smaller, split unevenly (the trainer divides by the global count, so the step is still one
    process's), or empty: a rank left with no item gets the epoch's first item with its labels voided
    (`void_labels`), which computes, weighs nothing, and keeps every rank in the step's collectives.
    `state_dict()` is the position of the next batch, so a source restored with `load_state_dict()` continues
    exactly where it stopped."""

    def __init__(self, features: Sequence[Feature], batch_size: int, *, pad_id: int = 0, seed: int = 0,
                 regression: bool = False, rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        if not features:
            raise ValueError("no training features")
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not (is_int(world_size) and is_int(rank)) or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.features = list(features)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.regression = regression
        self.rank, self.world_size = rank, world_size
        self.grad_accum = grad_accum
        self.epoch = 0
        self.batch = 0

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps: `grad_accum` micro-batches each, the last one of an epoch perhaps partly void."""
        return math.ceil(len(self.features) / (self.batch_size * self.world_size * self.grad_accum))

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch (on each rank)."""
        return self.steps_per_epoch * self.grad_accum

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.features), generator=g).tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def collate(self, features: Sequence[Any]) -> dict[str, torch.Tensor]:
        """One padded batch; subclasses over other features override only this."""
        return collate(features, self.pad_id, self.regression)

    def __iter__(self):
        g = self.batch_size * self.world_size
        while True:
            order = self.order(self.epoch)
            while self.batch < self.batches_per_epoch:
                b = self.batch
                mine = order[b * g:(b + 1) * g][self.rank::self.world_size]
                self.batch = b + 1
                if mine:
                    yield self.collate([self.features[i] for i in mine])
                else:
                    yield void_labels(self.collate([self.features[order[0]]]))
            self.epoch += 1
            self.batch = 0


def batch_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits for a collated batch, in fp32: (batch, labels), or (batch, seqlen, labels) for a
    token classifier, (batch, choices) for multiple choice. A batch from `with_packing` brings its plan."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"], packing=batch.get("packing")).logits.float()


def with_packing(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`batch` plus "packing", the plan of its CPU attention mask. Made before the copy to the device, it spares
    the forward its one host sync (copying the device mask back to plan the packing). A (batch, choices,
    seqlen) mask is planned flattened, as the multiple-choice model encodes it."""
    mask = batch["attention_mask"]
    return {**batch, "packing": P.pack(mask.reshape(-1, mask.shape[-1]))}  # (..., seqlen) -> (rows, seqlen)


def packed_to(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, Any]:
    """`with_packing(batch)` on `device`, for an inference forward: planned from the CPU mask (no host sync in
    the forward), pinned when the target is a GPU so that the `non_blocking` copies (`to_device`) are
    asynchronous. The prediction loops' counterpart of the trainer's prepare / pin / copy."""
    device = torch.device(device)
    batch = with_packing(batch)
    return to_device(pin(batch) if device.type == "cuda" else batch, device)


class FinetuneObjective(nn.Module):
    """The base of the fine-tuning objectives: `prepare` is `with_packing`, run by the trainer on the CPU batch,
    so that with counts from the CPU batch and stats left on the device the step never reads back from the GPU.
    Subclasses give `counts(batch)` and `forward(batch) -> (loss sums, stats)`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    prepare = staticmethod(with_packing)


class ClassificationObjective(FinetuneObjective):
    """Loss sums over the batch for the trainer, by `problem_type`: cross-entropy; for regression the squared
    error (averaged over the targets of a row when there are several); for multi-label binary cross-entropy
    averaged over the labels. transformers' MSELoss and BCEWithLogitsLoss are means over rows and labels: the
    trainer divides these sums by the rows."""

    @staticmethod
    def counts(batch: dict[str, torch.Tensor]) -> dict[str, int]:
        labels = batch["labels"]
        return {"cls": int(labelled(labels).reshape(len(labels), -1).all(-1).sum())}  # rows, of 1 or more labels

    def forward(self, batch: dict[str, torch.Tensor]):
        logits = batch_logits(self.model, batch)
        labels = batch["labels"]
        problem = problem_type(self.model.config, labels)
        if problem == "multi_label_classification":
            rows = labelled(labels).all(-1)                               # (batch,): a voided row's targets are nan
            target = torch.where(rows[:, None], labels, 0.0)              # (batch, labels)
            per_row = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)  # (batch,)
            with torch.no_grad():
                stats = {"acc_cls": (((logits >= 0) == (target > 0.5)).all(-1) & rows).sum()}
            return {"cls": (per_row * rows).sum()}, stats
        if problem == "regression":
            pred = logits.reshape(labels.shape)                           # (batch,) or (batch, targets)
            # a voided (nan) target takes the prediction's value: no loss, and no nan in the gradient
            target = torch.where(labelled(labels), labels.float(), pred.detach())
            per_row = F.mse_loss(pred, target, reduction="none").reshape(len(pred), -1).mean(-1)  # (batch,)
            return {"cls": per_row.sum()}, {}
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
        with torch.no_grad():
            stats = {"acc_cls": (logits.argmax(-1) == labels).sum()}
        return {"cls": loss}, stats


def _num_ids(feature) -> int:
    return len(feature.input_ids)


PROGRESS_EVERY_S = 30.0  # without a terminal: a progress line this often (seconds)
CHUNK_ROWS = 4096         # `iter_example_logits` / `iter_predict`: a big input's rows per chunk (or one batch)


def _progress_bar(total: int, enabled: bool | None):
    """Rank 0's progress over `total` features (enabled None or True; False: none): a tqdm bar on a terminal,
    else a line every PROGRESS_EVERY_S seconds, for logs of long predictions."""
    if enabled is False or not dist.is_main():
        return None
    if not sys.stderr.isatty():
        return ProgressLines(total, "predicting", "example", PROGRESS_EVERY_S)
    from tqdm import tqdm
    return tqdm(total=total, desc="predicting", unit="example", leave=False)


class _Part:
    """One `predict_batches` call's progress on a bar that spans a whole input predicted chunk by chunk: the
    call's `total` features (its windows, or this rank's share of them) advance `bar` by its `rows` examples,
    in proportion as they are done; closing it finishes the chunk's rows."""

    def __init__(self, bar, rows: int, total: int):
        self.bar, self.rows, self.total = bar, rows, total
        self.done = self.moved = 0

    def _move(self, to: int) -> None:
        self.bar.update(to - self.moved)
        self.moved = to

    def update(self, n: int) -> None:
        self.done += n
        self._move(self.rows * self.done // self.total if self.total else self.rows)

    def close(self) -> None:
        self._move(self.rows)


def chunks(n: int, batch_size: int) -> list[range]:
    """The chunks of CHUNK_ROWS items (or of one batch, if bigger), in order, that a long input of `n` items is
    predicted in: enough for batches of similar lengths (padding is mostly skipped anyway, `modeling.packing`),
    few enough that memory holds one chunk's tokenization, features and logits, not the file's."""
    size = max(batch_size, CHUNK_ROWS)
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def in_chunks(n: int, batch_size: int, progress: bool | None) -> Iterator[tuple[range, Any]]:
    """Each chunk (`chunks`) of a big input of `n` items with the `progress` its `predict_batches` call takes:
    one bar over all `n` (see `_progress_bar`), which each chunk advances by its items (`_Part`), closed at the
    end however the loop ends."""
    bar = _progress_bar(n, progress)
    try:
        for part in chunks(n, batch_size):
            yield part, (False if bar is None else partial(_Part, bar, len(part)))
    finally:
        if bar is not None:
            bar.close()


def chunks_of(items: Iterable[Any], total: int, batch_size: int, progress: bool | None, source: str = ""
              ) -> Iterator[tuple[list, Any]]:
    """`in_chunks` over `total` items that may come from a file read as they are needed (`bertkit predict`
    streams its input): each chunk's items in a list, with its `progress`. A count other than `total` (a file
    changed between its count and this reading) is an error naming `source`."""
    items = iter(items)
    for part, shown in in_chunks(total, batch_size, progress):
        some = list(islice(items, len(part)))
        if len(some) < len(part):
            raise ValueError(f"{source}: {total} rows were counted, {part.start + len(some)} read; did the file "
                             f"change while it was read?")
        yield some, shown
    if next(items, None) is not None:
        raise ValueError(f"{source}: more than the {total} rows counted; did the file change while it was read?")


def _open_bar(total: int, progress: bool | None | Callable[[int], Any]):
    """`progress(total)` when it makes the bar (`_Part` of a bar over chunks), else `_progress_bar`."""
    return progress(total) if callable(progress) else _progress_bar(total, progress)


@torch.no_grad()
def predict_batches(model, features: Sequence[Any], run: Callable[[list], Sequence], batch_size: int = 64,
                    length: Callable[[Any], int] = _num_ids, progress: bool | None | Callable[[int], Any] = None
                    ) -> list:
    """The prediction loop of every task: `run(batch of features) -> one result per feature`, in eval mode, over
    batches of features of similar `length` (less padding); the results in the order of `features`. In the
    trainer's evaluation or `bertkit predict` under torchrun (`distributed.together`) the ranks share the
    batches and every rank gets every result. `progress`: False for none (see `_progress_bar`), or a function of
    this call's feature count giving the object to advance (`_Part`)."""
    order = sorted(range(len(features)), key=lambda i: length(features[i]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]

    def work(my_batches: list[list[int]]) -> list:
        bar = _open_bar(sum(map(len, my_batches)), progress)  # this rank's share
        done = []
        try:
            for idx in my_batches:
                done.append(list(run([features[i] for i in idx])))
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return done

    was_training = model.training
    model.eval()
    try:
        per_batch = dist.split_map(work, batches)
    finally:
        model.train(was_training)
    out: list = [None] * len(features)
    for idx, results in zip(batches, per_batch):
        for i, r in zip(idx, results):
            out[i] = r
    return out


def predict_logits(model, features: Sequence[Feature], batch_size: int = 64, pad_id: int | None = None,
                   progress: bool | None | Callable[[int], Any] = None) -> np.ndarray:
    """(n, num_labels) float32 logits in the order of `features`; batches hold sequences of similar length."""
    pad_id = (model.config.pad_token_id or 0) if pad_id is None else pad_id
    device = next(model.parameters()).device

    def run(feats):
        batch = collate([Feature(f.input_ids, f.token_type_ids) for f in feats], pad_id)
        return batch_logits(model, packed_to(batch, device)).cpu().numpy()

    rows = predict_batches(model, features, run, batch_size, progress=progress)
    return np.stack(rows) if rows else np.zeros((0, model.config.num_labels), dtype=np.float32)


def labelled_logits(model, features: Sequence[Feature], batch_size: int = 64) -> tuple[np.ndarray, list]:
    """(logits per example, its label): the windows of one example count once, by their mean logits."""
    if not features:
        raise ValueError("no evaluation features")
    if any(f.label is None for f in features):
        raise ValueError("evaluation needs labelled features")
    logits, firsts = example_logits(predict_logits(model, features, batch_size), features)
    return logits, [features[i].label for i in firsts]


def classification_metrics(logits: np.ndarray, gold: Sequence, num_labels: int, multi_label: bool = False
                           ) -> dict[str, float]:
    """Accuracy, f1, mcc and loss for classification; pearson, spearman and mse for regression (one output); for
    `multi_label` (gold: 0/1 rows) subset accuracy, micro precision / recall / f1, macro_f1 and the binary
    cross-entropy (a label is predicted when its logit is >= 0, its sigmoid >= 0.5). F1 is binary with label id 1
    positive for two labels, else macro; n is the number of examples."""
    if multi_label:
        gold = np.asarray(gold, dtype=np.float32)                         # (examples, labels)
        scores = M.multi_label_scores(logits >= 0, gold > 0.5)
        loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(gold)).item()
        return {**{k: scores[k] for k in ("accuracy", "f1", "macro_f1", "precision", "recall")}, "loss": loss,
                "n": len(gold)}
    if num_labels == 1:
        preds = logits[:, 0].astype(np.float64)
        gold = np.array([float(g) for g in gold])
        with warnings.catch_warnings():  # a constant prediction (early in training) has no correlation: nan
            warnings.simplefilter("ignore")
            corr = {"pearson": float(M.pearson(preds, gold)), "spearman": float(M.spearman(preds, gold))}
        return {**corr, "mse": float(np.mean((preds - gold) ** 2)), "n": len(gold)}
    gold = [int(g) for g in gold]
    preds = logits.argmax(-1).tolist()
    loss = F.cross_entropy(torch.from_numpy(logits), torch.tensor(gold)).item()
    f1 = M.f1(preds, gold, average="binary", pos_label=1) if num_labels == 2 else M.f1(preds, gold, average="macro")
    return {"accuracy": M.accuracy(preds, gold), "f1": f1, "mcc": M.matthews_corrcoef(preds, gold),
            "loss": loss, "n": len(gold)}


def classification_report(logits: np.ndarray, gold: Sequence, names: Sequence[str], multi_label: bool = False
                          ) -> dict[str, Any]:
    """Per-label precision / recall / F1 / support and the confusion matrix (rows: true label, columns:
    predicted), by label name; a multi-label model's labels are not exclusive, so it has no confusion matrix."""
    if multi_label:
        scores = M.multi_label_scores(logits >= 0, np.asarray(gold) > 0.5)["per_label"]
        return {"per_label": {names[j]: v for j, v in scores.items()}}
    ids = range(len(names))
    preds, gold = logits.argmax(-1).tolist(), [int(g) for g in gold]
    scores = M.per_label(preds, gold, ids)
    return {"per_label": {names[i]: scores[i] for i in ids},
            "confusion_matrix": {"labels": list(names), "matrix": M.confusion_matrix(preds, gold, ids)}}


def evaluate_classification(model, features: Sequence[Feature], batch_size: int = 64) -> dict[str, float]:
    """`classification_metrics` of `model` on labelled features."""
    logits, gold = labelled_logits(model, features, batch_size)
    multi_label = problem_type(model.config, torch.as_tensor(gold[:1])) == "multi_label_classification"
    return classification_metrics(logits, gold, model.config.num_labels, multi_label)


def iter_example_logits(model, tok, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                        max_seq_length: int = 128, batch_size: int = 64, stride: int | None = None,
                        lines: Sequence[int] | None = None, source: str = "", progress: bool | None = None
                        ) -> Iterator[np.ndarray]:
    """(examples, labels) float32 logits of `texts` (or pairs), chunk after chunk in input order (`chunks`): each
    chunk tokenized, predicted in length-sorted batches and averaged over its windows (with a `stride`), so a big
    file costs one chunk's memory and its results can be written as they come. One progress bar over all the
    texts (`progress` as in `predict_batches`). `lines` and `source` name a pair whose first text leaves the
    second no room (``source:line``; default: the text's 1-based index)."""
    texts = list(texts)
    pairs = None if pairs is None else list(pairs)
    lines = range(1, len(texts) + 1) if lines is None else list(lines)
    for name, given in (("second texts", pairs), ("lines", lines)):
        if given is not None and len(given) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(given)} {name}")
    rows = zip(texts, repeat(None) if pairs is None else pairs, lines)
    for _, logits in iter_row_logits(model, tok, rows, len(texts), max_seq_length=max_seq_length,
                                     batch_size=batch_size, stride=stride, source=source, progress=progress):
        yield logits


def iter_row_logits(model, tok, rows: Iterable[tuple[str, str | None, int]], total: int, *, max_seq_length: int = 128,
                    batch_size: int = 64, stride: int | None = None, source: str = "", progress: bool | None = None
                    ) -> Iterator[tuple[list[tuple[str, str | None, int]], np.ndarray]]:
    """`iter_example_logits` of `total` rows (text, second text or None, line), read a chunk at a time
    (`chunks_of`: a file streamed by `bertkit predict`): each chunk's rows with their logits. The first row says
    whether all have a second text."""
    max_seq_length = min(max_seq_length, model.config.max_position_embeddings)
    with_pairs = None
    for some, shown in chunks_of(rows, total, batch_size, progress, source):
        with_pairs = some[0][1] is not None if with_pairs is None else with_pairs
        texts = [r[0] for r in some]
        pairs = [r[1] for r in some] if with_pairs else None
        if stride is None:
            features = [Feature(ids, types) for ids, types in encode_texts(tok, texts, pairs, max_seq_length)]
        else:
            features = [Feature(ids, types, example=i) for ids, types, i in encode_windows(
                tok, texts, pairs, max_seq_length, stride, [r[2] for r in some], source)]
        yield some, example_logits(predict_logits(model, features, batch_size, tok.pad_token_id, shown), features)[0]


def _results(config, logits: np.ndarray) -> list[dict[str, Any]]:
    """`predict`'s dict per example of its (examples, labels) logits."""
    cfg, names = config, config.label_names()
    if cfg.num_labels == 1 and cfg.problem_type is None:  # a cross-encoder's relevance: the pipeline's sigmoid
        return [{"label": names[0], "score": float(s)} for s in torch.sigmoid(torch.from_numpy(logits[:, 0]))]
    if cfg.num_labels == 1:
        return [{"label": float(v), "score": float(v)} for v in logits[:, 0]]
    if cfg.problem_type == "regression":
        return [{"values": {name: float(v) for name, v in zip(names, row)}} for row in logits]
    multi_label = cfg.problem_type == "multi_label_classification"
    t = torch.from_numpy(logits)
    probs = (torch.sigmoid(t) if multi_label else torch.softmax(t, dim=-1)).numpy()
    out = []
    for p, row in zip(probs, logits):
        k = int(p.argmax())
        out.append({"label": names[k], "score": float(p[k]),
                    "probabilities": {name: float(q) for name, q in zip(names, p)}})
        if multi_label:  # a logit >= 0, as evaluate counts it (float32's sigmoid is 0.5 just below 0 too)
            out[-1]["labels"] = [name for name, z in zip(names, row) if z >= 0]
    return out


def iter_predict(model, tok, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_seq_length: int = 128,
                 batch_size: int = 64, stride: int | None = None, lines: Sequence[int] | None = None,
                 source: str = "", progress: bool | None = None) -> Iterator[list[dict[str, Any]]]:
    """`predict`, a chunk at a time (`iter_example_logits`): `bertkit predict` writes each chunk's lines as it
    comes, holding one chunk, however long the file."""
    for logits in iter_example_logits(model, tok, texts, pairs, max_seq_length=max_seq_length, batch_size=batch_size,
                                      stride=stride, lines=lines, source=source, progress=progress):
        yield _results(model.config, logits)


def iter_predict_rows(model, tok, rows: Iterable[tuple[str, str | None, int]], total: int, **kw
                      ) -> Iterator[tuple[list[tuple[str, str | None, int]], list[dict[str, Any]]]]:
    """`iter_predict` of `total` rows (text, second text or None, line) read a chunk at a time (`iter_row_logits`,
    which takes `kw`): each chunk's rows with their results."""
    for some, logits in iter_row_logits(model, tok, rows, total, **kw):
        yield some, _results(model.config, logits)


def predict(model, tok, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_seq_length: int = 128,
            batch_size: int = 64, stride: int | None = None) -> list[dict[str, Any]]:
    """One dict per text, in input order: for classification ``label`` (the config's id2label name), ``score``
    (its probability) and ``probabilities`` (label -> probability); for regression ``label`` and ``score`` are both
    the predicted value (one output without a problem_type, a cross-encoder's, gives its name and sigmoid, as the
    pipeline does). As the text-classification pipeline reads the config: a multi-label model's
    probabilities are a sigmoid per label, and ``labels`` lists those of at least 0.5; a regression of several
    targets gives ``values`` (name -> value). With a `stride`, long texts are read in windows whose logits are
    averaged. Run a chunk at a time (`iter_predict`)."""
    return [p for part in iter_predict(model, tok, texts, pairs, max_seq_length=max_seq_length,
                                       batch_size=batch_size, stride=stride) for p in part]
