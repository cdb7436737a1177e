"""Fine-tuning jobs on the one trainer (`bertkit.train.Trainer`): sequence classification and regression
(`run_finetune_classify`), token classification on CoNLL files (`run_finetune_tag`, best checkpoint by dev entity F1).
Multiple choice (`bertkit.tasks.choice.run_finetune_choice`) and extractive QA (`bertkit.tasks.qa`) run on the
same shared parts, `train_keep_best` and `run_seeds`.

Run directory layout (both jobs; `train_keep_best` and `run_seeds` are the shared parts):
    best/               the checkpoint with the best dev metric (model + tokenizer), loadable with
                        AutoModelForSequenceClassification (or AutoModelForTokenClassification) / AutoTokenizer
    metrics.jsonl       train and dev ("eval") metrics over the steps
    curves.png          their picture: train and dev loss, dev accuracy and other scores, learning rate
    eval_results.json   the dev metrics of the best checkpoint, its step, the last evaluation
    finetune_args.json  the arguments
    step-N/             the newest training checkpoint (weights, tokenizer, optimizer, schedule, data position,
                        random streams), written after every evaluation, with best_state.json: the best-so-far metric,
                        its step and metrics, the evaluation count and the last evaluation AS OF step N
With several seeds each one runs into `seed-N/` (the layout above) and the top-level eval_results.json holds each
seed's best dev metrics with their mean and standard deviation (sample sd; 0 for one seed), and the top-level
curves.png draws every seed's curves together.

Resume (`resume=True`, ``--resume``): each run continues exactly from its newest checkpoint, and a seed whose
eval_results.json exists is done and skipped. The best-so-far state lives INSIDE each checkpoint (written with it,
atomically renamed with it), so it always matches the weights it resumes; an evaluation after that checkpoint that
had already overwritten best/ before the kill is replayed bit for bit and writes best/ again. A resume takes the
settings and the --train / --dev contents the run started with (finetune_args.json; the files may have moved), save
that --seeds may add seeds (not drop or replace any); a run with no checkpoint yet has nothing to continue, so
--resume starts it afresh, and a first run that fails before its first checkpoint removes the directory it made
(`run_seeds`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import re
import shutil
import statistics
import warnings
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .. import figures
from ..auto import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, check_vocab_fits
from ..checks import field_defaults
from ..data.readers import Example, iter_table, table_format
from ..hub import LoadWarning
from ..io import atomic_path, check_ours, check_writable, file_id, read_json, write_text_atomic
from ..tokenizer import SAVED_FILES
from ..train import distributed as dist
from ..train.checkpoint import check_resumed_settings
from ..train.tracking import plot_run, plot_runs
from ..train.trainer import TrainConfig, Trainer, run_lock
from ..warn import warn
from .classify import (ClassificationBatches, ClassificationObjective, classification_metrics,
                       classification_report, encode_examples, evaluate_classification, label_info)
from .flags import FlagError, check_ints, check_numbers

RESULTS_NAME = "eval_results.json"
ARGS_NAME = "finetune_args.json"
DATA_KEY = "data_files"   # in finetune_args.json: --train and --dev as the run started on them (`_data_files`)


def column(spec: str | int | None, fmt: str | None = None) -> str | int | None:
    """A column given on the command line: an all-digit value (or -N) is an index, anything else a name; JSONL
    columns are always keys."""
    if spec is None or isinstance(spec, int):
        return spec
    if fmt != "jsonl" and re.fullmatch(r"-?\d+", spec):
        return int(spec)
    return spec


def iter_examples(path: str, *, format: str | None = None, text_column="text", text_pair_column=None,
                  label_column="label", header: bool = True, multi_label: bool = False) -> Iterator[Example]:
    """A table's rows, read a line at a time, its columns given as on the command line (`column`)."""
    fmt = table_format(path, format)
    return iter_table(path, format=format, text_column=column(text_column, fmt),
                      text_pair_column=column(text_pair_column, fmt),
                      label_column=column(label_column, fmt), header=header, multi_label=multi_label)


def read_examples(path: str, **read) -> list[Example]:
    """`iter_examples`, every row in a list."""
    return list(iter_examples(path, **read))


@dataclass
class FinetuneArgs:
    """What every fine-tuning run takes: the model, the data files and the schedule."""

    model: str = ""
    train: str = ""
    dev: str = ""
    output: str = "runs/finetune"
    epochs: float = 3.0
    max_steps: int | None = None      # overrides epochs
    batch_size: int = 32
    grad_accum: int = 1               # micro-batches of batch_size per optimizer step
    lr: float = 2e-5
    warmup: float = 0.1               # fraction of the steps
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-6        # google-research/bert's (transformers' Trainer: 1e-8)
    max_seq_length: int = 128
    seed: int = 42
    seeds: str | None = None          # "1,2,3": one run per seed
    eval_every: int | None = None     # steps between dev evaluations (default: once per epoch)
    log_every: int = 10
    precision: str = "auto"
    compile: bool = False             # torch.compile the embeddings and the layer stack
    gradient_checkpointing: bool = False  # recompute layer activations in the backward (less memory)
    fsdp: bool = False                # under torchrun: shard the model and optimizer state (FSDP2), not DDP
    progress: bool | None = None      # None: a bar on a terminal, else a line per logged step
    resume: bool = False              # continue the run in `output` from its newest checkpoint

    def __post_init__(self):
        """Checked here, before a run touches its output directory (a fresh run removes an earlier run's
        checkpoints and results there, so a typo must not get that far)."""
        check_ints(self, ("batch_size", "grad_accum", "log_every", "max_seq_length"))
        check_ints(self, ("max_steps", "eval_every"), optional=True)
        check_numbers(self, ("epochs", "lr", "adam_epsilon"), positive=True)
        check_numbers(self, ("weight_decay",), positive=False)
        if not 0 <= self.warmup <= 1:
            raise ValueError(f"--warmup is a fraction of the steps, between 0 and 1; got {self.warmup!r}")
        if self.seeds is not None:
            _parse_seeds(self.seeds)
        check_writable(self.output, directory=True)  # a file there fails now, not after the data is read


@dataclass
class FinetuneClassifyArgs(FinetuneArgs):
    output: str = "runs/classify"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    format: str | None = None
    header: bool = True
    metric: str | None = None         # accuracy (classification) / f1 (multi-label) / pearson (regression) by default
    stride: int | None = None         # long examples: windows sharing this many tokens (None: truncate)
    regression: bool = False          # one output trained with MSE even on integer labels (e.g. ratings 1-5)
    multi_label: bool = False         # any number of labels per row, a sigmoid per label (binary cross-entropy)
    label_separator: str = ","        # between a multi-label row's labels in its label field

    def __post_init__(self):
        super().__post_init__()
        if self.multi_label and self.regression:
            raise ValueError("--multi-label and --regression exclude each other")
        if not self.label_separator:
            raise ValueError("--label-separator must not be empty")


def _better(value: float, best: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return best is None
    return best is None or (isinstance(best, float) and math.isnan(best)) or value > best


def _parse_seeds(spec: str) -> list[int]:
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {spec!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct integers, got {spec!r}")
    return seeds


def _format(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n" and isinstance(v, float))


def _data_name(data: str) -> str:
    """The file's name less a compression suffix and then its format suffix."""
    name = Path(data)
    if name.suffix.lower() in (".zip", ".gz", ".bz2", ".xz"):
        name = Path(name.stem)
    return name.stem


def write_eval(metrics: dict[str, Any], model_dir: str, data: str, output: str | None, unit: str,
               draw: Callable[[str, str], str] | None = None) -> dict[str, Any]:
    """What `bertkit evaluate` leaves: the metrics in `output` (default ``<model_dir>/eval_<data name>.json``,
    the name without its format suffix, so ``dev-v1.1.json.zip`` gives ``eval_dev-v1.1`` and WNUT-17's
    ``emerging.dev.conll`` and ``emerging.test.annotated`` stay apart), the picture `draw(png, title)` makes
    beside it (same name, ``.png``) and a printed line counting `unit`s. Returns `metrics`."""
    path = Path(output) if output else Path(model_dir) / f"eval_{_data_name(data)}.json"
    if dist.is_main():  # under torchrun the ranks computed the metrics together; one writes them
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"model": str(model_dir), "data": str(data), **metrics}, indent=2) + "\n")
        wrote = str(path) if draw is None else f"{path} and {draw(str(path.with_suffix('.png')), Path(data).name)}"
        print(f"{data}: {_format(metrics)} ({metrics['n']} {unit}); wrote {wrote}")
    return metrics


def to_predict(items: list, data: str, what: str) -> list:
    """`items` read from `data` for `predict`; none is an error (as for `evaluate`), not an empty output."""
    count_to_predict(items, data, what)
    return items


def count_to_predict(items: Iterable, data: str, what: str) -> int:
    """How many `items` (a file's rows, read and checked as they are counted, none kept: `predict`'s first
    reading) there are; none is an error, as in `to_predict`."""
    n = sum(1 for _ in items)
    if not n:
        raise ValueError(f"{data}: no {what} to predict")
    return n


@contextlib.contextmanager
def prediction_lines(output: str) -> Iterator[Callable[[Iterable[str]], None]]:
    """`bertkit predict`'s output written as the predictions come: yields `write(lines)`, each line ended by a
    newline, into a temporary file beside `output` (flushed after each call: a chunk's lines leave memory) that
    becomes `output` when the block ends; an error or Ctrl-C inside it leaves no partial file (an `output`
    already there is untouched). By rank 0 alone under torchrun."""
    if not dist.is_main():
        yield lambda lines: None
        return
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        def write(lines: Iterable[str]) -> None:
            f.writelines(line + "\n" for line in lines)
            f.flush()
        yield write


BEST_STATE_NAME = "best_state.json"

# The input settings a head was fine-tuned with (window length, stride, QA windowing and answer rules) go into
# its config.json under HuggingFace's `task_specific_params`, keyed by pipeline task, so that `evaluate`,
# `predict` and the run_* functions below default to them instead of to settings the model never saw.
TASK_PARAMS = "task_specific_params"
PIPELINE_TASK = {"BertForSequenceClassification": "text-classification",
                 "BertForTokenClassification": "token-classification",
                 "BertForQuestionAnswering": "question-answering",
                 "BertForMultipleChoice": "multiple-choice"}


def remember_settings(model, settings: dict[str, Any]) -> None:
    """Store `settings` in `model.config` (saved with it) as the head's fine-tuning settings."""
    task = PIPELINE_TASK[type(model).__name__]
    model.config.extra.setdefault(TASK_PARAMS, {})[task] = dict(settings)


def saved_settings(model) -> dict[str, Any]:
    """The settings `remember_settings` stored with `model` ({} for a model fine-tuned elsewhere)."""
    return dict((model.config.extra.get(TASK_PARAMS) or {}).get(PIPELINE_TASK.get(type(model).__name__)) or {})


def settings_for(model, args_cls, **given: Any) -> dict[str, Any]:
    """Each of `given` unless None, else the value saved with `model` at fine-tuning (`remember_settings`),
    else the default of that field of `args_cls` (the fine-tuning job's own default)."""
    saved = saved_settings(model)
    defaults = field_defaults(args_cls)
    return {k: v if v is not None else saved.get(k, defaults[k]) for k, v in given.items()}


def _fresh_state() -> dict[str, Any]:
    return {"best": None, "metrics": None, "step": 0, "evals": 0, "last": {}}


def _checkpoint_state(out: Path, resume: bool) -> dict[str, Any]:
    """The best-so-far state to start from: on resume, the one saved in the newest checkpoint; on a fresh run,
    a clean one (and the checkpoints, best model and results of an earlier run in `out` are removed, so a later
    resume cannot pick them up, pruning cannot keep them over the new ones, and a resume of this run, killed
    early, cannot take the old results for its own)."""
    from ..train.checkpoint import find_resumable, list_checkpoints, remove_checkpoint
    if resume:
        latest = dist.from_main(lambda: find_resumable(out))   # a refusal said once, the same checkpoint for all
        if latest is None:
            return _fresh_state()
        path = Path(latest) / BEST_STATE_NAME
        if not path.is_file():
            raise ValueError(f"{latest}: no {BEST_STATE_NAME} in the checkpoint; it was not written by a "
                             f"fine-tuning run that can be resumed")
        return {**_fresh_state(), **read_json(path)}
    if dist.is_main():
        for _, path in list_checkpoints(out):
            remove_checkpoint(path)
        shutil.rmtree(out / "best", ignore_errors=True)
        (out / RESULTS_NAME).unlink(missing_ok=True)
    dist.barrier()
    return _fresh_state()


def train_keep_best(args, seed: int, out: Path, load_model, tok, batches, objective_cls, dev_metrics, metric: str,
                    info: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """One seed of a fine-tuning job: `load_model()` after seeding torch with `seed` (the fresh head's
    initialisation), then train `objective_cls(model)` on `batches` with the trainer; after each dev evaluation
    (`dev_metrics(model) -> dict`) keep the model and tokenizer with the best `metric` in `out/best`, and
    checkpoint (the newest one kept) with the best-so-far state, so that `args.resume` continues exactly (see the
    module docstring). `args` gives the schedule (epochs / max_steps, eval_every, lr, warmup, weight_decay,
    precision, log_every, progress, batch_size, resume). Returns, and writes to `out/eval_results.json`: metric,
    best_step, best (its dev metrics), final (the last evaluation), max_steps, seed, and `info` (the task).
    `settings` (the input settings used) are saved in the model's config (`remember_settings`)."""
    per_epoch = batches.steps_per_epoch  # optimizer steps
    max_steps = args.max_steps or max(1, math.ceil(args.epochs * per_epoch))
    eval_every = args.eval_every or per_epoch
    cfg = TrainConfig(max_steps=max_steps, batch_size=batches.batch_size, grad_accum=batches.grad_accum, lr=args.lr,
                      warmup_steps=math.ceil(args.warmup * max_steps), weight_decay=args.weight_decay,
                      eps=args.adam_epsilon,
                      precision=args.precision, log_every=min(args.log_every, max_steps), eval_every=eval_every,
                      save_every=eval_every, save_final=True, keep_last=1, seed=seed, output_dir=str(out),
                      tensorboard=False, compile=args.compile, gradient_checkpointing=args.gradient_checkpointing,
                      fsdp=args.fsdp,
                      progress=True if args.progress is None else args.progress)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = load_model()
    check_vocab_fits(tok, model.config, args.model)
    remember_settings(model, settings)
    best_dir = out / "best"
    resume = bool(getattr(args, "resume", False))
    state = _checkpoint_state(out, resume)  # a fresh run removes an earlier run's checkpoints and results

    def evaluate(m) -> dict[str, Any]:
        metrics = dev_metrics(m)
        state["evals"] += 1
        step = trainer.step  # the step just taken (the trainer evaluates after it)
        state["last"] = metrics
        if _better(metrics[metric], state["best"]):
            state.update(best=metrics[metric], metrics=metrics, step=step)
            dist.save_pretrained(m, best_dir)  # collective under FSDP
            if dist.is_main():
                tok.save_pretrained(best_dir)
        return metrics

    def save_state(directory: str) -> None:  # into each checkpoint, so it always matches the weights
        write_text_atomic(Path(directory) / BEST_STATE_NAME, json.dumps(state, indent=2) + "\n")
        tok.save_pretrained(directory)  # so that a checkpoint loads on its own, as pre-training's do

    trainer = Trainer(objective_cls(model), model, batches, cfg, evaluate=evaluate, save_extra=save_state)
    trainer.train(resume=resume)
    results = {"metric": metric, "best_step": state["step"], "best": state["metrics"], "final": state["last"],
               "max_steps": max_steps, "seed": seed, **info}
    if dist.is_main():
        write_text_atomic(out / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
        plot_run(out)  # curves.png: train loss, dev loss and scores, learning rate
    return results


def _done(out: Path, resume: bool, args, args_file: Path) -> dict[str, Any] | None:
    """On resume, the results of a run that already finished (its eval_results.json), else None. A finished
    run is not extended (its schedule has decayed to 0): more steps or epochs than it took are an error, not
    a silent no-op. `args_file`: the flags the job started with (finetune_args.json)."""
    path = out / RESULTS_NAME
    if not (resume and path.is_file()):
        return None
    results, started = read_json(path), read_json(args_file)
    longer = (args.max_steps > results["max_steps"] if args.max_steps else
              not started.get("max_steps") and args.epochs > started.get("epochs", args.epochs))
    if longer:
        asked = f"--max-steps {args.max_steps}" if args.max_steps else f"--epochs {args.epochs:g}"
        raise FlagError(f"{path}: the run finished after {results['max_steps']} steps; {asked} would extend it, "
                        "which a finished run cannot be (its learning rate has decayed to 0): start a new run")
    return results


def window_length(args, config=None) -> int:
    """The window length to fine-tune with: --max-seq-length, cut to the model's positions (`config`: the
    model's, else read) when it is the job's default, and refused when a longer one was asked for."""
    positions = (config or AutoConfig.from_pretrained(args.model)).max_position_embeddings
    if args.max_seq_length > positions and args.max_seq_length != field_defaults(type(args))["max_seq_length"]:
        raise ValueError(f"--max-seq-length {args.max_seq_length} exceeds the max_position_embeddings of "
                         f"{args.model} ({positions})")
    return min(args.max_seq_length, positions)


def split_args(args) -> dict[str, int]:
    """`rank`, `world_size` and `grad_accum` for a batch source: under torchrun each rank trains on its share of
    each global batch, and an epoch ends with a whole (if smaller) optimizer step."""
    info = dist.info()
    return {"rank": info.rank, "world_size": info.world_size, "grad_accum": args.grad_accum}


def _run_one(args: FinetuneClassifyArgs, seed: int, out: Path, data) -> dict[str, Any]:
    tok, info, train_feats, dev_feats, metric, max_len = data
    batch_size = min(args.batch_size, len(train_feats))
    batches = ClassificationBatches(train_feats, batch_size, pad_id=tok.pad_token_id, seed=seed,
                                    regression=info.regression, **split_args(args))
    load = partial(AutoModelForSequenceClassification.from_pretrained, args.model, **info.model_kwargs())
    return train_keep_best(
        args, seed, out, load, tok, batches, ClassificationObjective,
        lambda m: evaluate_classification(m, dev_feats, batch_size=max(64, batch_size)), metric,
        {"task": _task_name(info), "labels": list(info.labels),
         "num_train": len({f.example if f.example is not None else i for i, f in enumerate(train_feats)}),
         "num_dev": len({f.example if f.example is not None else i for i, f in enumerate(dev_feats)})},
        {"max_seq_length": max_len, "stride": args.stride, "text_column": args.text_column,
         "text_pair_column": args.text_pair_column, "label_column": args.label_column, "header": args.header,
         "format": args.format, **({"label_separator": args.label_separator} if info.multi_label else {})})


def head_label_order(model: str, labels: Sequence[str], head: str) -> tuple[str, ...]:
    """The data's `labels` in the order of the `head` classifier `model` was already fine-tuned with, when its
    labels are the data's (matched regardless of case, as transformers' run_glue.py and run_ner.py match them),
    so that its rows keep their meaning; otherwise `labels` as given, with a warning when the classifier was
    fine-tuned for other labels (its rows are then kept by position, as transformers keeps them)."""
    config = AutoConfig.from_pretrained(model)
    if head not in (config.architectures or ()):
        return tuple(labels)  # a new classifier
    names = config.label_names()
    if names == [f"LABEL_{i}" for i in range(len(names))]:
        return tuple(labels)  # a classifier without label names: nothing to match
    by_name = {label.lower(): label for label in labels}
    if len(by_name) == len(labels) == len(names) and set(by_name) == {n.lower() for n in names}:
        return tuple(by_name[n.lower()] for n in names)
    if len(names) == len(labels):
        warn(f"{model}: its classifier was fine-tuned for the labels {names}, the data has {list(labels)}; its "
             f"rows are kept by position, as transformers keeps them")
    return tuple(labels)


def _task_name(info) -> str:
    return "regression" if info.regression else "multi-label classification" if info.multi_label else "classification"


# what --resume may change: how the run is shown or executed, not what it computes; its length (more steps); and the
# per-process batch, which the trainer checks (it may change with the number of processes, the global batch may not);
# seeds: `_check_seeds` (more may be added)
RESUME_FREE = frozenset({"resume", "progress", "compile", "gradient_checkpointing", "fsdp", "log_every", "epochs",
                         "max_steps", "seeds", "batch_size", "grad_accum", "output"})  # output: the run, wherever it is


# what a run writes to best/ (the model and its tokenizer); `evaluate` adds its eval_<data>.json / .png there
BEST_FILES = frozenset({"config.json", "model.safetensors", *SAVED_FILES})


def _refuse_earlier_run(out: Path) -> None:
    """A fresh run would remove an earlier run's files in `out` (see `_checkpoint_state`): refused when that run
    did not finish, since its checkpoints are what continues it, and when it did, since its best model and
    results would go (as `pretrain` refuses a directory holding a run)."""
    from ..train.checkpoint import find_latest
    for run in [out, *sorted(out.glob("seed-*"))]:
        latest = find_latest(run)
        if latest is not None and not (Path(latest) / BEST_STATE_NAME).is_file():
            what = "a pre-training run" if (run / "pretrain_args.json").is_file() else "a run of another job"
            raise ValueError(f"{run} holds {what} (its checkpoint {latest} was not written by fine-tuning); choose "
                             "another --output (to fine-tune that model, give its directory as --model)")
        if (run / RESULTS_NAME).is_file():
            raise ValueError(f"{run} holds a finished run ({RESULTS_NAME}, best/); choose another --output, or "
                             "remove it to start over")
        if latest is not None:
            raise ValueError(f"{run} holds an unfinished run (its newest checkpoint is {latest}); pass --resume to "
                             "continue it, or choose another --output (or remove it) to start over")
        # a run killed before its first checkpoint leaves best/, which a fresh run removes: only if bertkit wrote it
        check_ours(run / "best", lambda name: name in BEST_FILES or name.startswith("eval_"), "a fine-tuning run")


def run_seeds(args, out: Path, run_one, metric: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Write finetune_args.json (a fresh run; a resume keeps it), then `run_one(seed, dir)` once into `out`
    (`args.seed`), or per seed of `args.seeds` into `out/seed-N/` with the mean and sd of each numeric dev metric
    in `out/eval_results.json` (plus `extra`). Prints a summary; returns the results. Rank 0 holds `out`'s lock
    throughout: a second job there is refused before it removes or writes anything. A job that fails before any
    checkpoint (a model without weights, Ctrl-C in the first epoch) removes the directory if it made it, as
    `pretrain` does, so the same command, fixed, starts as a first run; a directory that was there before, or
    holds a checkpoint, stays."""
    with contextlib.ExitStack() as held:
        dist.on_main(lambda: held.enter_context(run_lock(out, discard_new=lambda: not _started(out))))
        return _run_seeds(args, out, run_one, metric, extra)


def _started(out: Path) -> bool:
    """Whether `out` holds a run to keep or continue: a checkpoint or results, its own or a seed's."""
    from ..train.checkpoint import find_latest
    return any(find_latest(run) is not None or (run / RESULTS_NAME).is_file()
               for run in [out, *out.glob("seed-*")])


def _data_files(args) -> dict[str, dict[str, Any]]:
    """--train and --dev by name, size and a hash of their ends, as pre-training identifies its corpus."""
    return {flag: file_id(getattr(args, flag)) for flag in ("train", "dev")}


def _check_same_data(args, args_file: Path, now: dict[str, dict[str, Any]]) -> set[str]:
    """On resume: --train and --dev must hold what they held when the run started; edited since, the checkpoint's
    data position and best-so-far dev metric would refer to other data than the resumed run reads. Returns the
    flags so checked by content (a copy moved elsewhere is the same data, as pretrain's corpus): none for an older
    run's file, which recorded no content, and whose paths are then compared with the other settings."""
    saved = read_json(args_file).get(DATA_KEY) if args_file.is_file() else None
    if not saved:
        return set()
    changed = [f"--{flag} {getattr(args, flag)}" for flag in now if saved.get(flag, now[flag]) != now[flag]]
    if changed:
        raise ValueError(f"{args_file}: {' and '.join(changed)} changed since the run started (size or content); "
                         "--resume continues the run on the data it started with. Start a new run (another "
                         "--output) to train on the new data")
    return set(now)


def _check_seeds(args, args_file: Path) -> bool:
    """On resume: --seeds may add seeds to those the run started with (each new one runs, the finished ones are
    skipped), not drop or replace one (the results would silently average other runs than the directory's) nor
    switch between one run in the directory and one per seed in seed-N/. Returns whether seeds were added."""
    saved = read_json(args_file).get("seeds") if args_file.is_file() else None
    if not args_file.is_file() or saved == args.seeds:
        return False
    before, now = (set(_parse_seeds(v)) if v else None for v in (saved, args.seeds))
    if before is None or now is None or not before <= now:
        raise ValueError(f"{args_file}: --resume continues the run with the seeds it started with: --seeds "
                         f"{_seeds_shown(args.seeds)} (the run's: {_seeds_shown(saved)}); seeds may be added, not "
                         "dropped or replaced. Start a new run (another --output) to change them")
    return now != before


def _seeds_shown(spec: str | None) -> str:
    """--seeds as the error shows it; none means the run is one seed's, in the directory itself."""
    return repr(spec) if spec else "none (one run, --seed)"


def _check_run_dir(args, out: Path, args_file: Path, resume: bool, continuing: bool,
                   data: dict[str, dict[str, Any]]) -> None:
    """Whether the run may start (no earlier run in `out`) or continue (its settings, data and seeds), and its
    arguments file written (or, with seeds added, updated so that none is dropped later)."""
    if continuing:
        check_resumed_settings(args_file, args, RESUME_FREE | {DATA_KEY} | _check_same_data(args, args_file, data))
        if _check_seeds(args, args_file):  # more seeds: recorded, so none is dropped later
            write_text_atomic(args_file, json.dumps({**read_json(args_file), "seeds": args.seeds}, indent=2) + "\n")
    elif not resume:
        _refuse_earlier_run(out)
    if not (continuing and args_file.is_file()):
        write_text_atomic(args_file, json.dumps({**dataclasses.asdict(args), DATA_KEY: data}, indent=2) + "\n")


def _run_seeds(args, out: Path, run_one, metric: str, extra: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    args_file = out / ARGS_NAME
    resume = bool(getattr(args, "resume", False))
    if resume:   # every rank then reads what rank 0 wrote (results, checkpoints): on several machines, one directory
        dist.check_shared_dir(out)
    data = _data_files(args)
    # a --resume with nothing to continue (the first run failed before its first checkpoint, or none ran) is a
    # first run: the settings a failed attempt left do not bind it
    continuing = resume and _started(out)
    dist.on_main(lambda: _check_run_dir(args, out, args_file, resume, continuing, data))  # a refusal said once
    if not args.seeds:
        return _run_single(args, out, run_one, metric, resume, args_file)
    seeds = _parse_seeds(args.seeds)
    per_seed = {}
    for i, seed in enumerate(seeds):
        per_seed[str(seed)] = _run_seed(args, out / f"seed-{seed}", seed, run_one, metric, resume, args_file,
                                        quiet_load=i > 0)
    mean, sd = _mean_and_sd(per_seed)
    results = {"metric": metric, "seeds": seeds, "per_seed": per_seed, "mean": mean, "sd": sd, **extra}
    if dist.is_main():
        _write_seed_results(out, results, metric, seeds, mean, sd)
    return results


def _run_single(args, out: Path, run_one, metric: str, resume: bool, args_file: Path) -> dict[str, Any]:
    """The one run of `args.seed`, in `out` itself; on resume a finished one is not run again."""
    res = _done(out, resume, args, args_file)
    if res is not None:
        dist.print0(f"resume: {out / RESULTS_NAME} exists; the run is complete")
    else:
        res = run_one(args.seed, out)
    dist.print0(f"dev (best {metric} at step {res['best_step']}): {_format(res['best'])}")
    dist.print0(f"best checkpoint in {out / 'best'}; results in {out / RESULTS_NAME}; curves in "
                f"{out / 'curves.png'}")
    return res


def _run_seed(args, run_dir: Path, seed: int, run_one, metric: str, resume: bool, args_file: Path,
              quiet_load: bool) -> dict[str, Any]:
    """One seed's run in `run_dir` (on resume a finished one is not run again); its best dev metrics."""
    res = _done(run_dir, resume, args, args_file)
    if res is not None:
        dist.print0(f"seed {seed}: complete (resume), results from {run_dir / RESULTS_NAME}")
    else:
        dist.print0(f"seed {seed}:")
        with warnings.catch_warnings():
            if quiet_load:   # every seed loads the same model: what its load says (a new head) was said for the first
                warnings.simplefilter("ignore", LoadWarning)
            res = run_one(seed, run_dir)
    dist.print0(f"  dev (best {metric} at step {res['best_step']}): {_format(res['best'])}")
    return res["best"]


def _mean_and_sd(per_seed: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """The mean and sd over the seeds of each numeric dev metric (the first seed's; not the count `n`)."""
    first = next(iter(per_seed.values()))
    keys = [k for k, v in first.items() if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean = {k: statistics.fmean(r[k] for r in per_seed.values()) for k in keys}
    sd = {k: statistics.stdev([r[k] for r in per_seed.values()]) if len(per_seed) > 1 else 0.0 for k in keys}
    return mean, sd


def _write_seed_results(out: Path, results: dict[str, Any], metric: str, seeds: list[int],
                        mean: dict[str, float], sd: dict[str, float]) -> None:
    """eval_results.json, the summary printed and every seed's curves in one figure (rank 0)."""
    write_text_atomic(out / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
    print(f"dev over {len(seeds)} seeds ({', '.join(map(str, seeds))}), best checkpoint of each by {metric}:")
    for k in mean:
        print(f"  {k}: {mean[k]:.4f} ± {sd[k]:.4f}")
    seed_dirs = [out / f"seed-{seed}" for seed in seeds]
    plot_runs(seed_dirs, [f"seed {seed}" for seed in seeds], out / "curves.png")
    print(f"runs in {out}/seed-*/; results in {out / RESULTS_NAME}; curves of every seed in {out / 'curves.png'}")


def run_finetune_classify(args: FinetuneClassifyArgs) -> dict[str, Any]:
    """Fine-tune `args.model` on `args.train`, keep the best checkpoint by the dev metric; returns (and writes)
    the results (see the module docstring)."""
    dist.setup()
    read = dict(format=args.format, text_column=args.text_column, text_pair_column=args.text_pair_column,
                label_column=args.label_column, header=args.header, multi_label=args.multi_label)
    train = read_examples(args.train, **read)
    dev = read_examples(args.dev, **read)
    if not train:
        raise ValueError(f"{args.train}: no training rows")
    if not dev:
        raise ValueError(f"{args.dev}: no dev rows")
    info = label_info(train, args.regression, args.train, args.multi_label, args.label_separator)
    if not info.regression:  # a classifier fine-tuned before keeps its label order
        info = dataclasses.replace(info, labels=head_label_order(args.model, info.labels,
                                                                 "BertForSequenceClassification"))
    metric = args.metric or ("pearson" if info.regression else "f1" if info.multi_label else "accuracy")
    allowed = (("pearson", "spearman") if info.regression else ("f1", "macro_f1", "accuracy") if info.multi_label
               else ("accuracy", "f1", "mcc"))
    if metric not in allowed:
        raise ValueError(f"--metric {metric} does not apply to {_task_name(info)}; choose one of {', '.join(allowed)}")
    if info.regression and len(dev) < 2:
        raise ValueError(f"{args.dev}: {len(dev)} dev row; a regression's correlations need at least 2")
    tok = AutoTokenizer.from_pretrained(args.model)
    max_len = window_length(args)
    train_feats = encode_examples(tok, train, info, max_len, source=args.train, stride=args.stride)
    dev_feats = encode_examples(tok, dev, info, max_len, source=args.dev, stride=args.stride)
    data = (tok, info, train_feats, dev_feats, metric, max_len)
    task = ("regression" if info.regression else f"{info.num_labels}-way "
            f"{'multi-label ' if info.multi_label else ''}classification ({', '.join(info.labels)})")
    windows = (f" ({len(train_feats)} and {len(dev_feats)} windows of {max_len} tokens, stride {args.stride})"
               if args.stride is not None else "")
    dist.print0(f"{task}: {len(train)} training and {len(dev)} dev examples{windows}; model {args.model}")
    results = run_seeds(args, Path(args.output), lambda seed, out: _run_one(args, seed, out, data), metric,
                        {"task": _task_name(info), "labels": list(info.labels)})
    dist.cleanup()
    return results


@dataclass
class FinetuneTagArgs(FinetuneArgs):
    output: str = "runs/tag"
    lr: float = 5e-5
    token_column: int = 0
    tag_column: int = -1
    stride: int = 32                  # sub-tokens shared by consecutive windows of a long sentence


def _tag_window(args, config) -> tuple[int, int]:
    max_len = window_length(args, config)
    if args.stride >= max_len - 2:
        raise ValueError(f"--stride {args.stride} must be smaller than --max-seq-length - 2 = {max_len - 2}")
    return max_len, args.stride


def run_finetune_tag(args: FinetuneTagArgs) -> dict[str, Any]:
    """Fine-tune `args.model` for token classification on CoNLL files; keep the best checkpoint by dev entity F1
    (by word accuracy when no tag has a B-/I-/E-/S- prefix: part-of-speech style tags make no entities). Same run
    layout as `run_finetune_classify` (eval_results.json: entity precision / recall / F1, per type, word
    accuracy)."""
    from ..auto import AutoModelForTokenClassification
    from ..data.readers import read_conll
    from .tag import TagBatches, TagObjective, encode_sentences, evaluate_tagging, model_kwargs, tag_set
    dist.setup()
    train = read_conll(args.train, args.token_column, args.tag_column)
    dev = read_conll(args.dev, args.token_column, args.tag_column)
    if not train:
        raise ValueError(f"{args.train}: no training sentences")
    if not dev:
        raise ValueError(f"{args.dev}: no dev sentences")
    tags = head_label_order(args.model, tag_set(train), "BertForTokenClassification")
    tok = AutoTokenizer.from_pretrained(args.model)
    max_len, stride = _tag_window(args, AutoConfig.from_pretrained(args.model))
    train_feats = encode_sentences(tok, train, tags, max_len, stride, source=args.train)
    dev_feats = encode_sentences(tok, dev, tags, max_len, stride, source=args.dev)
    metric = "f1" if any(t[:2] in ("B-", "I-", "E-", "S-") for t in tags) else "accuracy"
    dist.print0(f"tagging with {len(tags)} tags ({', '.join(tags)}): {len(train)} training sentences "
                f"({len(train_feats)} windows), {len(dev)} dev sentences; model {args.model}"
                + ("" if metric == "f1" else "; no tag marks entities (B-/I-), so the best checkpoint is "
                                             "chosen by word accuracy"))

    def run_one(seed: int, out: Path) -> dict[str, Any]:
        batches = TagBatches(train_feats, min(args.batch_size, len(train_feats)), pad_id=tok.pad_token_id,
                             seed=seed, **split_args(args))
        load = partial(AutoModelForTokenClassification.from_pretrained, args.model, **model_kwargs(tags))
        return train_keep_best(
            args, seed, out, load, tok, batches, TagObjective,
            lambda m: evaluate_tagging(m, dev_feats, dev, max(64, args.batch_size)), metric,
            {"task": "tagging", "labels": list(tags), "num_train": len(train), "num_dev": len(dev)},
            {"max_seq_length": max_len, "stride": args.stride, "token_column": args.token_column,
             "tag_column": args.tag_column})

    results = run_seeds(args, Path(args.output), run_one, metric, {"task": "tagging", "labels": list(tags)})
    dist.cleanup()
    return results


def architecture(model_dir: str) -> str:
    """The saved model's head class, the first entry of config.json's ``architectures`` ("" when none): what
    `bertkit evaluate` / `predict` dispatch on."""
    archs = AutoConfig.from_pretrained(model_dir).architectures or []
    return archs[0] if archs else ""


def inference_device(device: str | None = None) -> torch.device:
    """`device`, or by default the GPU when there is one."""
    return torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_saved(model_cls, model_dir: str, device: str | None = None, compile: bool = False):
    """A fine-tuned model and its tokenizer for `evaluate` / `predict`: the model on `device` (default: the GPU
    when there is one), its encoder layers compiled on request (it pays on a GPU over a big file)."""
    from ..modeling.bert import compile_layers
    model = model_cls.from_pretrained(model_dir).to(inference_device(device))
    if compile:
        compile_layers(model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    check_vocab_fits(tok, model.config, model_dir)
    return model, tok


def _tag_settings(model, max_seq_length: int | None, stride: int | str | None) -> tuple[int, int]:
    """max_seq_length and stride as given, else as fine-tuned (`settings_for`)."""
    if stride == "none":
        raise ValueError("stride 'none' (truncation) is for classifiers; a tagger reads long sentences in windows")
    s = settings_for(model, FinetuneTagArgs, max_seq_length=max_seq_length, stride=stride)
    return s["max_seq_length"], s["stride"]


def _tag_columns(model, **columns: int | None) -> dict[str, int]:
    """The CoNLL columns given, else as fine-tuned, else the fine-tuning job's defaults (`settings_for`)."""
    return settings_for(model, FinetuneTagArgs, **columns)


def run_evaluate_tag(model_dir: str, data: str, *, output: str | None = None, batch_size: int = 64,
                     max_seq_length: int | None = None, stride: int | None = None, token_column: int | None = None,
                     tag_column: int | None = None, format: str | None = None, device: str | None = None,
                     compile: bool = False) -> dict[str, Any]:
    """Entity F1 (micro and per type) and word accuracy of a fine-tuned tagger on a CoNLL file; printed and
    written as JSON to `output` (default: `<model_dir>/eval_<data name>.json`). Columns left None are those
    the model was fine-tuned with. `format` "conll" reads the file as CoNLL even where it might be a text file
    (`bertkit.data.readers.conll_blocks`). The file is read twice, a line at a time: its tags first (a bad one
    found before the model runs), then its words a chunk at a time as they are tagged; memory holds the true
    and predicted tags, a reference each a word, not the words."""
    from ..auto import AutoModelForTokenClassification
    from ..data.readers import iter_conll
    from .tag import gold_tags, iter_word_logits, tagging_scores
    if format not in (None, "conll"):
        raise FlagError(f"--format {format}: a tagger is evaluated on a CoNLL file (--format conll)")
    model, tok = load_saved(AutoModelForTokenClassification, model_dir, device, compile)
    max_seq_length, stride = _tag_settings(model, max_seq_length, stride)
    tags = model.config.label_names()
    cols = _tag_columns(model, token_column=token_column, tag_column=tag_column)
    read = partial(iter_conll, data, cols["token_column"], cols["tag_column"], explicit=format == "conll")
    gold = gold_tags(read(), tags, data)   # the first reading: a bad tag found before the model runs
    if not gold:
        raise ValueError(f"{data}: no sentences")
    parts = iter_word_logits(model, tok, (s.tokens for s in read()), max_seq_length=max_seq_length, stride=stride,
                             batch_size=batch_size, total=len(gold), source=data)   # the second, a chunk at a time
    pred = [[tags[k] for k in a.argmax(-1)] for logits in parts for a in logits]
    metrics = tagging_scores(pred, gold, tags)
    draw = partial(figures.entity_scores, metrics["per_type"]) if metrics["per_type"] else None
    return write_eval(metrics, model_dir, data, output, "sentences", draw)


def run_predict_tag(model_dir: str, data: str, output: str, *, batch_size: int = 64,
                    max_seq_length: int | None = None, stride: int | None = None, token_column: int | None = None,
                    format: str | None = None, device: str | None = None, compile: bool = False) -> int:
    """Tag every sentence of a CoNLL-style file (one token per line; other columns ignored; `format` "conll": read
    so even where it might be a text file, `bertkit.data.readers.conll_blocks`), or with `format` "text" of a
    plain text file (one sentence per line, split into words at spaces and punctuation); one JSON
    line per sentence ({"line" of its first token, "tokens", "tags", "scores"; from text also "spans", each
    word's [start, end) in its line}) in `output`. Returns the sentence count. `token_column` None: as
    fine-tuned. The file is read twice, a line at a time: every sentence checked and counted first, then a chunk
    at a time as it is tagged."""
    from ..auto import AutoModelForTokenClassification
    from .tag import iter_predict_tags, iter_tokens, iter_words
    if format not in (None, "conll", "text"):
        raise FlagError(f"--format {format}: a tagger reads a CoNLL file, or a text file with --format text "
                        f"(formats: conll, text)")
    model, tok = load_saved(AutoModelForTokenClassification, model_dir, device, compile)
    max_seq_length, stride = _tag_settings(model, max_seq_length, stride)
    if format == "text":
        def read():
            return ((line, words, {"spans": spans}) for line, words, spans in iter_words(data))
    else:
        column = _tag_columns(model, token_column=token_column)["token_column"]

        def read():
            return ((line, words, {}) for line, words in iter_tokens(data, column, explicit=format == "conll"))
    total = count_to_predict(read(), data, "sentences")
    # two readers of one stream: the tagger's runs a chunk ahead of the writer's, so the copy holds one chunk
    for_tagger, rows = itertools.tee(read())
    parts = iter_predict_tags(model, tok, (words for _, words, _ in for_tagger), max_seq_length=max_seq_length,
                              stride=stride, batch_size=batch_size, total=total, source=data)
    with prediction_lines(output) as write:
        for preds in parts:   # each chunk's lines written as it comes
            write(json.dumps({"line": line, "tokens": words, "tags": [t for t, _ in p],
                              "scores": [round(s, 6) for _, s in p], **extra}, ensure_ascii=False)
                  for p, (line, words, extra) in zip(preds, rows))   # preds first: zip stops there
    dist.print0(f"tagged {total} sentences of {data}; wrote {output}")
    return total


def _classify_settings(model, max_seq_length: int | None, stride: int | str | None) -> tuple[int, int | None]:
    """max_seq_length and stride as given, else as fine-tuned (`settings_for`); stride "none" truncates even a
    model fine-tuned with windows."""
    s = settings_for(model, FinetuneClassifyArgs, max_seq_length=max_seq_length, stride=stride)
    return s["max_seq_length"], None if s["stride"] == "none" else s["stride"]


def _classify_columns(model, read: dict[str, Any], data: str) -> dict[str, Any]:
    """The table reading options, with the columns left None taken as fine-tuned (`settings_for`): a model
    fine-tuned on pairs reads pairs without being told again. So is the format, for a file whose extension
    does not name one (SMS Spam's, MRPC's .txt), the extension winning otherwise."""
    columns = {k: read.get(k) for k in ("text_column", "text_pair_column", "label_column", "header")}
    if table_format(data, read.get("format")) is None:
        columns["format"] = None
    return {**read, **settings_for(model, FinetuneClassifyArgs, **columns)}


def run_evaluate(model_dir: str, data: str, *, output: str | None = None, batch_size: int = 64,
                 max_seq_length: int | None = None, stride: int | str | None = None, device: str | None = None,
                 compile: bool = False, **read) -> dict[str, Any]:
    """Metrics of a fine-tuned classification / regression model on a labelled table; printed and written as
    JSON to `output` (default: `<model_dir>/eval_<data name>.json`). With a `stride`, long examples are read in
    windows whose logits are averaged (`bertkit.tasks.classify`). The table is read twice, a line at a time: its
    labels first (a bad one found before the model runs), then its texts a chunk at a time as they are scored;
    memory holds the labels and scores, a few numbers a row, not the texts."""
    from .classify import example_labels, iter_row_logits, label_info_from_config
    model, tok = load_saved(AutoModelForSequenceClassification, model_dir, device, compile)
    max_seq_length, stride = _classify_settings(model, max_seq_length, stride)
    separator = settings_for(model, FinetuneClassifyArgs, label_separator=read.pop("label_separator", None))
    if not separator["label_separator"]:
        raise FlagError("--label-separator must not be empty")
    info = label_info_from_config(model.config, separator["label_separator"])
    if info.regression and model.config.num_labels > 1:
        raise ValueError(f"{model_dir}: a regression of {model.config.num_labels} targets "
                         f"({', '.join(model.config.label_names())}); evaluate scores one target (predict gives "
                         f"each target's value)")
    read = {**_classify_columns(model, read, data), "multi_label": info.multi_label}
    gold = example_labels(iter_examples(data, **read), info, data)   # a bad label found before the model runs
    if not gold:
        raise ValueError(f"{data}: no rows")
    if info.regression and len(gold) < 2:
        raise ValueError(f"{data}: 1 row; a regression's correlations need at least 2")
    rows = ((e.text, e.text_pair, e.line) for e in iter_examples(data, **read))
    logits = np.concatenate([logits for _, logits in iter_row_logits(  # a chunk at a time
        model, tok, rows, len(gold), max_seq_length=max_seq_length, batch_size=batch_size, stride=stride,
        source=data)])
    metrics = classification_metrics(logits, gold, model.config.num_labels, info.multi_label)
    if info.regression:
        draw = partial(figures.regression, logits[:, 0].tolist(), [float(g) for g in gold])
    elif info.multi_label:
        metrics.update(classification_report(logits, gold, info.labels, multi_label=True))
        draw = partial(figures.entity_scores, metrics["per_label"], support="rows with the label")
    else:
        report = classification_report(logits, gold, info.labels)
        metrics.update(report)
        if len(info.labels) == 2:   # whose F1 "f1" is: label id 1, the second in label order
            metrics["positive_label"] = info.labels[1]
        matrix = report["confusion_matrix"]
        draw = partial(figures.confusion, matrix["matrix"], matrix["labels"])
    return write_eval(metrics, model_dir, data, output, "examples", draw)


def run_predict(model_dir: str, data: str, output: str, *, batch_size: int = 64, max_seq_length: int | None = None,
                stride: int | str | None = None, device: str | None = None, compile: bool = False, **read) -> int:
    """Label every row of a table; one JSON line per row in `output`, in order: the row's line in `data`, its
    label and score, with a multi-label model's labels of probability >= 0.5, or a regression's values of
    several targets. Returns the row count. The table is read twice, a line at a time: once to check and count
    every row before any model work, then a chunk at a time as it is predicted, so a file of any size costs one
    chunk's memory."""
    from .classify import iter_predict_rows
    model, tok = load_saved(AutoModelForSequenceClassification, model_dir, device, compile)
    max_seq_length, stride = _classify_settings(model, max_seq_length, stride)
    read = {**_classify_columns(model, read, data), "label_column": None}
    total = count_to_predict(iter_examples(data, **read), data, "rows")
    rows = ((e.text, e.text_pair, e.line) for e in iter_examples(data, **read))
    with prediction_lines(output) as write:
        for some, preds in iter_predict_rows(model, tok, rows, total, max_seq_length=max_seq_length,
                                             batch_size=batch_size, stride=stride, source=data):
            write(json.dumps({"line": line, **{k: p[k] for k in ("label", "score", "labels", "values") if k in p}},
                             ensure_ascii=False) for p, (_, _, line) in zip(preds, some))
    dist.print0(f"predicted {total} rows of {data}; wrote {output}")
    return total
