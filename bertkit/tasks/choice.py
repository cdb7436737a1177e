"""Multiple choice (SWAG, RACE-style tables): rows -> (choices, seqlen) features -> batches -> objective ->
accuracy -> predictions, and the `finetune choice` job.

- A row has a context, an optional question (or sentence prefix), N choice columns and a label: the 0-based index
  of the right choice, or the name of its choice column (e.g. ``ending2``). A bad label or a missing column is a
  ``ValueError`` naming ``file:line``.
- Each choice becomes the pair (context, question + " " + choice), or (context, choice) without a question column,
  exactly as transformers' ``run_swag.py`` builds them; pairs are truncated longest-first to `max_seq_length`.
- `ChoiceBatches` reuses `ClassificationBatches`' seeded order and exact resume state; each batch is padded to its
  own longest choice: input_ids (batch, choices, seqlen).
- `ChoiceObjective` gives the trainer the cross-entropy SUM over the choices' scores (term "choice") and
  "acc_choice"; `evaluate_choice` gives accuracy, loss and n; `predict_choices` the index and the probabilities.
- `bertkit predict` and `evaluate` go a chunk of rows at a time (`_iter_choice_logits`, over
  `classify.chunks_of`): predict writes each chunk's lines as they come, evaluate keeps each row's scores (a few
  floats), so memory holds one chunk's features, not the file's.
"""
from __future__ import annotations

import itertools
import json
import re
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics as M
from ..data.readers import iter_columns, table_format
from ..train import distributed as dist
from .classify import (IGNORE, ClassificationBatches, FinetuneObjective, batch_logits, chunks_of, labelled,
                       packed_to, pad_inputs, predict_batches)
from .finetune import (FinetuneArgs, column, count_to_predict, load_saved, prediction_lines, run_seeds,
                       settings_for, split_args, train_keep_best, window_length, write_eval)

__all__ = ["ChoiceExample", "ChoiceFeature", "read_choices", "iter_choices", "encode_choices", "collate_choices",
           "ChoiceBatches", "ChoiceObjective", "predict_choice_logits", "evaluate_choice", "predict_choices",
           "iter_predict_choices", "FinetuneChoiceArgs", "run_finetune_choice", "run_evaluate_choice",
           "run_predict_choice"]


@dataclass(frozen=True)
class ChoiceExample:
    """One row: ``label`` is the index of the right choice, None without a label column."""
    context: str
    question: str | None
    choices: tuple[str, ...]
    label: int | None = None
    line: int = 0


@dataclass(frozen=True)
class ChoiceFeature:
    """One tokenized row: one (input_ids, token_type_ids) pair of lists per choice."""
    input_ids: tuple[list[int], ...]
    token_type_ids: tuple[list[int], ...]
    label: int | None = None
    line: int = 0


def _choice_specs(choice_columns: str | Sequence[str | int], fmt: str | None) -> list[str | int]:
    specs = choice_columns.split(",") if isinstance(choice_columns, str) else list(choice_columns)
    specs = [column(s.strip() if isinstance(s, str) else s, fmt) for s in specs]
    if len(specs) < 2 or any(s == "" for s in specs):
        raise ValueError(f"--choice-columns must name at least two columns, comma-separated, got {choice_columns!r}")
    return specs


def _label_index(value: str, specs: Sequence[str | int], where: str) -> int:
    v = value.strip()
    if re.fullmatch(r"[+-]?\d+", v) and 0 <= int(v) < len(specs):
        return int(v)
    if v in [str(s) for s in specs if isinstance(s, str)]:
        return [str(s) for s in specs].index(v)
    raise ValueError(f"{where}: label {value!r} is not a choice index 0..{len(specs) - 1} or one of the choice "
                     f"columns {[str(s) for s in specs]}")


def read_choices(path: str | Path, **read) -> list[ChoiceExample]:
    """`iter_choices`, every row in a list."""
    return list(iter_choices(path, **read))


def iter_choices(path: str | Path, *, format: str | None = None, context_column: str | int = "context",
                 question_column: str | int | None = None,
                 choice_columns: str | Sequence[str | int] = "ending0,ending1,ending2,ending3",
                 label_column: str | int | None = "label", header: bool = True) -> Iterator[ChoiceExample]:
    """Rows of a CSV / TSV / JSONL table, read a line at a time (columns as in
    `bertkit.data.readers.iter_columns`; command-line strings of digits are indices)."""
    fmt = table_format(str(path), format)
    specs = _choice_specs(choice_columns, fmt)
    roles = {"context_column": column(context_column, fmt), "question_column": column(question_column, fmt),
             "label_column": column(label_column, fmt)}
    roles.update({f"choice_column {s}": s for s in specs})
    if len(roles) != 3 + len(specs):
        raise ValueError(f"--choice-columns lists a column twice: {choice_columns!r}")
    for n, v in iter_columns(path, roles, format=format, header=header):
        label = None if v["label_column"] is None else _label_index(v["label_column"], specs, f"{path}:{n}")
        yield ChoiceExample(v["context_column"], v["question_column"], tuple(v[f"choice_column {s}"] for s in specs),
                            label, n)


def encode_choices(tok, examples: Sequence[ChoiceExample], max_seq_length: int = 128) -> list[ChoiceFeature]:
    """Tokenize every (context, [question + " "] + choice) pair, truncated longest-first to `max_seq_length`."""
    examples = list(examples)
    if not examples:
        return []
    firsts = [e.context for e in examples for _ in e.choices]
    seconds = [c if e.question is None else f"{e.question} {c}" for e in examples for c in e.choices]
    enc = tok(firsts, seconds, truncation=True, max_length=max_seq_length)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids") or [[0] * len(x) for x in ids]
    out, k = [], 0
    for e in examples:
        n = len(e.choices)
        out.append(ChoiceFeature(tuple(ids[k:k + n]), tuple(types[k:k + n]), e.label, e.line))
        k += n
    return out


def collate_choices(features: Sequence[ChoiceFeature], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad every choice of the batch to its longest one: (batch, choices, seqlen); `labels` only when every
    feature has one."""
    n, choices = len(features), len(features[0].input_ids)
    if any(len(f.input_ids) != choices for f in features):
        raise ValueError("every example of a batch must have the same number of choices")
    flat = pad_inputs([x for f in features for x in f.input_ids],
                      [t for f in features for t in f.token_type_ids], pad_id)
    # (n * choices, width) -> (n, choices, width)
    batch = {k: v.view(n, choices, -1) for k, v in flat.items()}
    if all(f.label is not None for f in features):
        batch["labels"] = torch.tensor([f.label for f in features], dtype=torch.long)
    return batch


class ChoiceBatches(ClassificationBatches):
    """`ClassificationBatches` (seeded order per epoch, exact resume) over multiple-choice features."""

    def collate(self, features):
        return collate_choices(features, self.pad_id)


class ChoiceObjective(FinetuneObjective):
    """Cross-entropy over each example's choice scores, summed over the batch (term "choice"), and accuracy.
    `prepare` plans the packing of the flattened (batch * choices, seqlen) mask."""

    @staticmethod
    def counts(batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"choice": int(labelled(batch["labels"]).sum())}

    def forward(self, batch: dict[str, torch.Tensor]):
        logits = batch_logits(self.model, batch)  # (batch, choices)
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
        with torch.no_grad():
            stats = {"acc_choice": (logits.argmax(-1) == labels).sum()}
        return {"choice": loss}, stats


@torch.no_grad()
def predict_choice_logits(model, features: Sequence[ChoiceFeature], batch_size: int = 64,
                          pad_id: int | None = None, progress: bool | None | Callable[[int], Any] = None
                          ) -> np.ndarray:
    """(n, choices) float32 scores in the order of `features`; batches hold rows of similar length. `progress`
    as in `predict_batches`."""
    pad_id = (model.config.pad_token_id or 0) if pad_id is None else pad_id
    device = next(model.parameters()).device

    def run(feats):
        batch = collate_choices([ChoiceFeature(f.input_ids, f.token_type_ids) for f in feats], pad_id)
        return batch_logits(model, packed_to(batch, device)).cpu().numpy()

    rows = predict_batches(model, features, run, batch_size, length=lambda f: max(map(len, f.input_ids)),
                           progress=progress)
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _gold(items: Iterable[ChoiceFeature] | Iterable[ChoiceExample], empty: str = "no evaluation features"
          ) -> list[int]:
    """The right choice of each labelled feature (or row, read as it comes), refused before the model runs when
    one has none, or when there are none (the error `empty`)."""
    gold = []
    for f in items:
        if f.label is None:
            raise ValueError("evaluation needs labelled features")
        gold.append(int(f.label))
    if not gold:
        raise ValueError(empty)
    return gold


def _choice_metrics(logits: np.ndarray, gold: list[int]) -> dict[str, float]:
    """Accuracy, mean cross-entropy and n of (rows, choices) scores."""
    loss = F.cross_entropy(torch.from_numpy(logits), torch.tensor(gold)).item()
    return {"accuracy": M.accuracy(logits.argmax(-1).tolist(), gold), "loss": loss, "n": len(gold)}


def evaluate_choice(model, features: Sequence[ChoiceFeature], batch_size: int = 64) -> dict[str, float]:
    """Accuracy and mean cross-entropy of `model` on labelled features, and their number."""
    gold = _gold(features)
    return _choice_metrics(predict_choice_logits(model, features, batch_size), gold)


def _iter_choice_logits(model, tok, examples: Iterable[ChoiceExample], *, max_seq_length: int = 128,
                        batch_size: int = 64, progress: bool | None = None, total: int | None = None,
                        source: str = "") -> Iterator[np.ndarray]:
    """(rows, choices) scores of `examples`, a chunk of rows at a time (`classify.chunks_of`, one progress bar
    over the rows), each chunk encoded as it comes: predict and evaluate hold one chunk's features. With their
    `total`, `examples` may be read as they are needed (a file streamed by `bertkit predict`)."""
    if total is None:
        examples = list(examples)
        total = len(examples)
    max_seq_length = min(max_seq_length, model.config.max_position_embeddings)
    for some, shown in chunks_of(examples, total, batch_size, progress, source):
        feats = encode_choices(tok, some, max_seq_length)
        yield predict_choice_logits(model, feats, batch_size, tok.pad_token_id, shown)


def iter_predict_choices(model, tok, examples: Iterable[ChoiceExample], *, max_seq_length: int = 128,
                         batch_size: int = 64, progress: bool | None = None, total: int | None = None,
                         source: str = "") -> Iterator[list[dict[str, Any]]]:
    """`predict_choices`, a chunk of examples at a time (`_iter_choice_logits`, which takes `total` and
    `source`): `bertkit predict` writes each chunk's lines as it comes, holding one chunk's features and scores."""
    for logits in _iter_choice_logits(model, tok, examples, max_seq_length=max_seq_length, batch_size=batch_size,
                                      progress=progress, total=total, source=source):
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        yield [{"label": int(p.argmax()), "score": float(p.max()), "probabilities": [float(q) for q in p]}
               for p in probs]


def predict_choices(model, tok, examples: Sequence[ChoiceExample], *, max_seq_length: int = 128,
                    batch_size: int = 64) -> list[dict[str, Any]]:
    """One dict per example, in input order: ``label`` (the index of the chosen choice), ``score`` (its
    probability) and ``probabilities`` (one per choice). Predicted a chunk at a time (`iter_predict_choices`)."""
    return [p for part in iter_predict_choices(model, tok, examples, max_seq_length=max_seq_length,
                                               batch_size=batch_size) for p in part]


@dataclass
class FinetuneChoiceArgs(FinetuneArgs):
    output: str = "runs/choice"
    batch_size: int = 16              # examples (each with all its choices) per step
    lr: float = 5e-5
    context_column: str = "context"
    question_column: str | None = None
    choice_columns: str = "ending0,ending1,ending2,ending3"
    label_column: str = "label"
    format: str | None = None
    header: bool = True


def _read(args, path: str, label: bool = True) -> list[ChoiceExample]:
    return read_choices(path, format=args.format, context_column=args.context_column,
                        question_column=args.question_column, choice_columns=args.choice_columns,
                        label_column=args.label_column if label else None, header=args.header)


def run_finetune_choice(args: FinetuneChoiceArgs) -> dict[str, Any]:
    """Fine-tune `args.model` for multiple choice; keep the best checkpoint by dev accuracy. Same run layout as
    `bertkit.tasks.finetune.run_finetune_classify`; best/ loads with AutoModelForMultipleChoice."""
    from ..auto import AutoModelForMultipleChoice, AutoTokenizer
    dist.setup()
    train, dev = _read(args, args.train), _read(args, args.dev)
    if not train:
        raise ValueError(f"{args.train}: no training rows")
    if not dev:
        raise ValueError(f"{args.dev}: no dev rows")
    tok = AutoTokenizer.from_pretrained(args.model)
    max_len = window_length(args)
    train_feats, dev_feats = encode_choices(tok, train, max_len), encode_choices(tok, dev, max_len)
    n_choices = len(train[0].choices)
    dist.print0(f"{n_choices}-way multiple choice: {len(train)} training and {len(dev)} dev examples; "
                f"model {args.model}")

    def run_one(seed: int, out: Path) -> dict[str, Any]:
        batch_size = min(args.batch_size, len(train_feats))
        batches = ChoiceBatches(train_feats, batch_size, pad_id=tok.pad_token_id, seed=seed, **split_args(args))
        return train_keep_best(
            args, seed, out, partial(AutoModelForMultipleChoice.from_pretrained, args.model), tok, batches,
            ChoiceObjective, lambda m: evaluate_choice(m, dev_feats, max(64, batch_size)), "accuracy",
            {"task": "multiple_choice", "num_choices": n_choices, "num_train": len(train), "num_dev": len(dev)},
            {"max_seq_length": max_len, **{k: getattr(args, k) for k in CHOICE_COLUMNS}})

    results = run_seeds(args, Path(args.output), run_one, "accuracy",
                        {"task": "multiple_choice", "num_choices": n_choices})
    dist.cleanup()
    return results


CHOICE_COLUMNS = ("context_column", "question_column", "choice_columns", "label_column", "header")


def _choice_read(model, read: dict[str, Any]) -> dict[str, Any]:
    """`read_choices`' options with the columns left out or None taken as fine-tuned (`settings_for`)."""
    return {**read, **settings_for(model, FinetuneChoiceArgs, **{k: read.get(k) for k in CHOICE_COLUMNS})}


def run_evaluate_choice(model_dir: str, data: str, *, output: str | None = None, batch_size: int = 64,
                        max_seq_length: int | None = None, device: str | None = None, compile: bool = False,
                        **read) -> dict[str, Any]:
    """Accuracy of a fine-tuned multiple-choice model on a labelled table (`read`: `read_choices`' column
    arguments, those left out as fine-tuned); printed and written as JSON to `output` (default:
    `<model_dir>/eval_<data name>.json`). The table is read twice, a line at a time: its labels first (a bad
    one found before the model runs), then its rows a chunk at a time as they are scored."""
    from ..auto import AutoModelForMultipleChoice
    model, tok = load_saved(AutoModelForMultipleChoice, model_dir, device, compile)
    max_seq_length = settings_for(model, FinetuneChoiceArgs, max_seq_length=max_seq_length)["max_seq_length"]
    read = _choice_read(model, read)
    gold = _gold(iter_choices(data, **read), f"{data}: no rows")
    # one chunk's rows and features in memory; the scores, (rows, choices), all kept so the loss is the mean of
    # them together, as `evaluate_choice`'s
    logits = np.concatenate(list(_iter_choice_logits(model, tok, iter_choices(data, **read),
                                                     max_seq_length=max_seq_length, batch_size=batch_size,
                                                     total=len(gold), source=data)))
    metrics = _choice_metrics(logits, gold)
    return write_eval(metrics, model_dir, data, output, "examples")


def run_predict_choice(model_dir: str, data: str, output: str, *, batch_size: int = 64,
                       max_seq_length: int | None = None, device: str | None = None, compile: bool = False,
                       **read) -> int:
    """Pick a choice for every row; one JSON line per row ({"line", "label": index, "score", "probabilities"}) in
    `output` (`read`: as for `run_evaluate_choice`). Returns the row count. The table is read twice, a line at a
    time (checked and counted first, then a chunk at a time as it is predicted)."""
    from ..auto import AutoModelForMultipleChoice
    model, tok = load_saved(AutoModelForMultipleChoice, model_dir, device, compile)
    max_seq_length = settings_for(model, FinetuneChoiceArgs, max_seq_length=max_seq_length)["max_seq_length"]
    read = {**_choice_read(model, read), "label_column": None}
    total = count_to_predict(iter_choices(data, **read), data, "rows")
    for_model, rows = itertools.tee(iter_choices(data, **read))  # the model's reader runs a chunk ahead: one held
    parts = iter_predict_choices(model, tok, for_model, max_seq_length=max_seq_length, batch_size=batch_size,
                                 total=total, source=data)
    with prediction_lines(output) as write:
        for preds in parts:   # each chunk's lines written as it comes
            write(json.dumps({"line": e.line, "label": p["label"], "score": round(p["score"], 6),
                              "probabilities": [round(q, 6) for q in p["probabilities"]]})
                  for p, e in zip(preds, rows))   # preds first: zip stops there
    dist.print0(f"predicted {total} rows of {data}; wrote {output}")
    return total
