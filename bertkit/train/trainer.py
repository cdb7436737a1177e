"""One training loop for pre-training and fine-tuning: AMP, exact gradient accumulation, clipping, the
learning-rate schedule, evaluation, checkpoints and exact resume, on one process or under torchrun.

The trainer knows nothing of BERT heads. It trains an *objective*, an `nn.Module` holding the model, with

    counts(batch) -> {"mlm": n_labels, "nsp": n_sequences}     the denominator of each loss term,
                                                                 computed on the CPU batch, before the
                                                                 forward and before the copy to the GPU
    prepare(batch) -> batch                        optional: CPU-side work on each batch before the copy
                                                   (e.g. the packing plan and masked rows), so the step
                                                   itself never waits for the GPU
    forward(batch) -> (sums, stats)                              sums: each loss term SUMMED over the
                                                                 micro-batch; stats: metric sums, e.g.
                                                                 {"acc_mlm": n_correct, "acc_nsp": ...}

Each step takes `grad_accum` micro-batches, sums their counts and all-reduces them across ranks, then
backpropagates `sum_k sums[k] / global_count[k]` per micro-batch (times the world size, since DDP and FSDP
average gradients), so the step's gradient is exactly that of one process seeing the whole global batch,
however the tokens fall across micro-batches and ranks. Gradients are synced on the last micro-batch only
(DDP's `no_sync`, FSDP's `set_requires_gradient_sync`).

Under torchrun the objective is wrapped in DDP, or with `fsdp=True` sharded (FSDP2: each encoder layer, then
the objective as the root; see `distributed.shard`). Checkpoints are the same either way: whole tensors, as one
process writes them (gathered on every rank, written by rank 0), so a run can resume under the other.

A stat named `<metric>_<term>` is divided by the counts of `<term>` (the longest count name it ends with):
`acc_mlm` = correct MLM predictions / MLM labels. Logged metrics are means over the steps since the
previous log line, weighted by the counts and reduced across ranks: `loss_<term>`, `loss` (their sum),
the stats, `lr`, `grad_norm` (mean of the global norm before clipping), `tokens_per_s` (all ranks, over the
steps' own time: evaluations and checkpoints left out), `elapsed` (seconds of the run, evaluations and
checkpoints included, when the line was written, across resumes); with fp16, `skipped_steps` (steps
whose gradients overflowed: no update and, as in transformers' Trainer, no schedule step; they still count
towards `max_steps`, and `grad_norm` averages the others) and `loss_scale`.

GPU fast path: nothing inside the step loop reads a GPU value back (no `.item()`, `int(tensor)`, tensor
`if`; fp16's loss scaler excepted, which must know whether gradients overflowed): counts and token totals
come from the CPU batch, loss and metric sums stay on the device until a log
step, and a log step does not wait either: its figures leave the GPU in one non-blocking copy, and the line is
written once the copy has landed (a step or so later; at once before an evaluation, a checkpoint and the end).
On CUDA a background thread fetches, prepares and pins the next `prefetch` batches while the GPU
works; the copies are `non_blocking`. `compile=True` runs the embeddings and encoder layers through
torch.compile (`bertkit.modeling.bert.compile_layers`). AdamW is fused (`train.optim.build_optimizer`).
"""
from __future__ import annotations

import dataclasses
import os
import queue
import random
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..checks import is_int
from ..modeling import packing as P
from ..warn import warn
from . import distributed as dist
from .checkpoint import (find_latest, find_resumable, load_checkpoint, rng_state, save_checkpoint,
                         set_rng_state)
from .optim import OPTIMIZERS, build_optimizer, global_grad_norm, linear_schedule, param_groups
from .tracking import Tracker

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


_held_locks: dict[str, int] = {}  # directory -> how many `run_lock` blocks of this process hold it


@contextmanager
def run_lock(output_dir: str | os.PathLike, discard_new: Callable[[], bool] | None = None):
    """One training process at a time in a directory: a second one (a resume started while the first still
    runs, or still-running workers of a killed launcher) would interleave checkpoints and metrics, and its data
    preparation could rebuild what the first reads. The kernel releases the lock when its process ends, however
    it ends. Re-entrant within a process: a job takes it before preparing its data, the trainer again.

    `discard_new()` is asked when the block fails (an error, Ctrl-C) in a directory this call created: when it
    says the run left nothing to keep (no checkpoint), the directory goes, so that the same command starts again
    as a first run. Decided here, by the process that made the directory and holds its lock: a job refused by
    the lock never removes a directory that the job holding it made, even one it saw missing a moment before."""
    import fcntl
    import shutil
    key = os.path.realpath(output_dir)
    if key in _held_locks:
        _held_locks[key] += 1
        try:
            yield
        finally:
            _held_locks[key] -= 1
        return
    try:
        os.makedirs(output_dir)
        created = True
    except FileExistsError:
        created = False
        if not os.path.isdir(output_dir):
            raise ValueError(f"{output_dir}: a file, not a directory; a run writes its files into a directory"
                             ) from None
    with open(os.path.join(output_dir, ".lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ValueError(f"{output_dir}: another process is training there (pid {f.read().strip() or '?'}); "
                             "let it finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _held_locks[key] = 1
        try:
            yield
        except BaseException:
            if created and discard_new is not None and discard_new():
                shutil.rmtree(output_dir, ignore_errors=True)
            raise
        finally:
            del _held_locks[key]


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


# TrainConfig fields a resume must keep (see Trainer._check_settings)
FIXED_ON_RESUME = ("lr", "weight_decay", "optimizer", "betas", "eps", "max_grad_norm", "precision", "seed")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@dataclass
class TrainConfig:
    """What one run does. Steps are optimizer steps; a step sees `batch_size * grad_accum * world_size`
    sequences (the global batch)."""

    max_steps: int = 1000
    batch_size: int = 32            # per rank and micro-batch: what the batch source yields (checked once)
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 1e-4                # peak learning rate
    warmup_steps: int = 0
    weight_decay: float = 0.01      # not applied to biases and LayerNorm weights
    optimizer: str = "adamw"        # "adamw" or "lamb"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    max_grad_norm: float = 1.0      # clip the global gradient norm; 0 = no clipping
    precision: str = "auto"         # auto: bf16 autocast on CUDA when supported, else fp32; fp16: + GradScaler
    log_every: int = 10             # steps between metrics.jsonl lines (and the last step)
    eval_every: int = 0             # steps between evaluations (and the last step); 0 = never
    save_every: int = 0             # steps between checkpoints; 0 = only the final one
    save_final: bool = True         # checkpoint the last step
    keep_last: int = 2              # checkpoints kept
    seed: int = 0                   # seeds Python, NumPy and torch at the start (rank r uses seed + r)
    output_dir: str = "runs/bert"
    tensorboard: bool | None = None  # None: when the tensorboard package is installed
    progress: bool = True           # rank 0: a tqdm bar on a terminal, else a line per logged step
    find_unused_parameters: bool = False  # DDP: for objectives that leave some parameters out of a forward
    fsdp: bool = False              # under torchrun: shard parameters, gradients and optimizer state (FSDP2);
                                    # with bf16 the parameters are gathered in bf16 (fp32 shards and reduction)
    compile: bool = False           # torch.compile the embeddings and the layer stack (dynamic token count)
    gradient_checkpointing: bool = False  # recompute each layer's forward in the backward: less memory
    prefetch: int | None = None     # batches prepared ahead in a background thread; None: 2 on CUDA, 0 on CPU

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "keep_last"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "eval_every", "save_every"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {v!r}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"TrainConfig.warmup_steps ({self.warmup_steps}) exceeds max_steps "
                             f"({self.max_steps})")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("TrainConfig.weight_decay and max_grad_norm must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.prefetch is not None and (not is_int(self.prefetch)
                                          or self.prefetch < 0):
            raise ValueError(f"TrainConfig.prefetch must be None or an integer >= 0, got {self.prefetch!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")
        self.betas = tuple(self.betas)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" → "bf16" on a CUDA device that supports it, else "fp32"; the others as given."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in a (nested) dict / list / tuple (and packing plans) moved to `device`; everything else as
    is. The copies are `non_blocking`: from pinned memory (see `pin`) they overlap the GPU's work."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (P.Packing, P.Selection)):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def pin(batch: Any) -> Any:
    """CPU tensors in a (nested) batch copied to page-locked memory, so that a `non_blocking` copy to the
    GPU is asynchronous (from pageable memory it is not)."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory() if batch.device.type == "cpu" else batch
    if isinstance(batch, (P.Packing, P.Selection)):
        return batch.pin()
    if isinstance(batch, dict):
        return {k: pin(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(pin(v) for v in batch)
    return batch


class Prefetcher:
    """`fn(item)` for the items of `source`, computed `depth` items ahead in a daemon thread.

    Each `next()` returns `(fn(item), state)`, where `state` is `state_fn()` read right after the source
    produced the item: the data position *after* that item, which is what a checkpoint must record (the
    source itself is already further ahead). An exception in the thread (StopIteration included) is raised
    by the `next()` that reaches it. The source must not draw from the global random streams (the thread
    would race the training step for them); bertkit's batch sources use their own generators."""

    def __init__(self, source, fn: Callable[[Any], Any], depth: int, state_fn: Callable[[], Any] | None = None):
        if depth < 1:
            raise ValueError(f"Prefetcher: depth must be >= 1, got {depth}")
        self._source, self._fn, self._state_fn = source, fn, state_fn
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bertkit-prefetch", daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = next(self._source)
                state = self._state_fn() if self._state_fn is not None else None
                if not self._put((self._fn(item), state, None)):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put((None, None, e))

    def __iter__(self):
        return self

    def __next__(self):
        out, state, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        return out, state

    def close(self) -> None:
        """Stop the thread (it finishes the item it is computing, which is dropped)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


@contextmanager
def rng_isolated():
    """Run a block without moving the random streams: the states are restored on exit."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def _num_tokens(objective: nn.Module, batch: Any) -> float:
    """Real tokens of a CPU batch (for tokens/s), as a Python number."""
    if hasattr(objective, "num_tokens"):
        return float(objective.num_tokens(batch))
    if isinstance(batch, dict):
        if isinstance(batch.get("attention_mask"), torch.Tensor):
            return float(batch["attention_mask"].sum())
        if isinstance(batch.get("input_ids"), torch.Tensor):
            return float(batch["input_ids"].numel())
    return 0.0


def _as_number(v: Any) -> float:
    """A count from `counts(cpu_batch)`: a Python number or a CPU tensor (reading it costs no GPU sync)."""
    if isinstance(v, torch.Tensor):
        if v.device.type != "cpu":
            raise ValueError("counts(batch) must be computed from the CPU batch; got a tensor on "
                             f"{v.device} (reading it back would stall the GPU every step)")
        return float(v)
    return float(v)


def _denominator(stat: str, terms: Iterable[str]) -> str:
    matches = [t for t in terms if stat.endswith("_" + t)]
    if not matches:
        raise ValueError(f"objective stat {stat!r} must be named <metric>_<term> for one of the count terms "
                         f"{sorted(terms)} (e.g. 'acc_mlm'), so the trainer knows its denominator")
    return max(matches, key=len)


class _Window:
    """Sums since the last log line, kept as device tensors (no host sync per step). On CUDA its time is
    measured on the GPU's own clock, between two events in the stream: the host runs ahead of the GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}  # already global
        self.tokens = 0.0
        self.grad_norm: torch.Tensor | float = 0.0   # summed over the steps not skipped
        self.steps = 0
        self.skipped = 0   # fp16 steps skipped for overflowed gradients
        self.t0 = time.perf_counter()   # moved on by each pause, so that now - t0 is the window's training time
        self.carried = 0.0   # seconds the window ran before a checkpoint (a resumed run's first window; `load`)
        self.paused_at: float | None = None   # while a pause runs: when it began
        self.pauses: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []   # CUDA: each pause's events
        self.start = self._event()

    def _event(self) -> torch.cuda.Event | None:
        """On CUDA, a timing event recorded now in the stream; None on the CPU."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    @contextmanager
    def paused(self):
        """An evaluation or a checkpoint is not training: its time is left out of the window's, so that tokens/s
        measures the steps (counted in, a dev evaluation at every log line made it read 2.6x too low)."""
        self.paused_at = time.perf_counter()
        begin = self._event()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - self.paused_at
            self.paused_at = None
            if begin is not None:
                self.pauses.append((begin, self._event()))

    @staticmethod
    def _add(acc: dict, new: dict):
        for k, v in new.items():
            v = v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
            acc[k] = acc[k] + v if k in acc else v

    def state(self) -> dict[str, Any]:
        """This rank's window as plain numbers, for a checkpoint: a run resumed between two log lines then
        logs the same averages as an uninterrupted one (and tokens/s over the window's own time)."""
        def floats(d):
            return {k: float(v) for k, v in d.items()}
        return {"sums": floats(self.sums), "stats": floats(self.stats), "counts": floats(self.counts),
                "tokens": float(self.tokens), "grad_norm": float(self.grad_norm), "steps": self.steps,
                "skipped": self.skipped,
                "seconds": (time.perf_counter() if self.paused_at is None else self.paused_at) - self.t0}

    def load(self, states: list[dict[str, Any]], rank: int, world_size: int) -> None:
        """Take up the windows a checkpoint's ranks saved. With the same number of ranks, each its own;
        with another, rank 0 carries the sums of them all and the other ranks none (the log line adds the
        ranks' sums up). The counts, gradient norm and steps are global: the same on every rank."""
        if len(states) == world_size:
            own = states[rank]
        else:
            factor = 1.0 if rank == 0 else 0.0
            own = {key: {k: factor * sum(st[key][k] for st in states) for k in states[0][key]}
                   for key in ("sums", "stats")}
            own["tokens"] = factor * sum(st["tokens"] for st in states)
        first = states[0]

        def tensors(d):
            return {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in d.items()}
        self.sums, self.stats, self.counts = tensors(own["sums"]), tensors(own["stats"]), tensors(first["counts"])
        self.tokens = own["tokens"]
        self.grad_norm = torch.tensor(first["grad_norm"], dtype=torch.float64, device=self.device)
        self.steps, self.skipped = first["steps"], first.get("skipped", 0)  # absent from older checkpoints
        self.t0 = time.perf_counter() - first["seconds"]
        self.carried = first["seconds"]


class _PendingLog:
    """A train log line whose figures are on their way from the device: `ready()` once they have landed,
    `record()` waits for them and builds the line (queued by `Trainer._queue_log`)."""

    def __init__(self, step: int, values: torch.Tensor, names: list[str], host: dict[str, Any],
                 copied: torch.cuda.Event | None, start: torch.cuda.Event | None, end: torch.cuda.Event | None,
                 seconds: float, pauses: list[tuple[torch.cuda.Event, torch.cuda.Event]]):
        self.step, self.values, self.names, self.host = step, values, names, host
        self.copied, self.start, self.end, self.seconds = copied, start, end, seconds
        self.pauses = pauses

    def ready(self) -> bool:
        return self.copied is None or self.copied.query()

    def record(self, elapsed: float) -> dict[str, Any]:
        if self.copied is not None:
            self.copied.synchronize()
        v = dict(zip(self.names, self.values.tolist()))
        seconds = self.seconds
        if self.start is not None:   # the window on the GPU's clock (ms), after any part before a checkpoint
            seconds += self.start.elapsed_time(self.end) / 1000
            seconds -= sum(begin.elapsed_time(end) for begin, end in self.pauses) / 1000   # evaluations, checkpoints
        h = self.host
        losses = {k: v[k] for k in self.names if k.startswith("loss_")}
        out: dict[str, Any] = {"lr": h["lr"], "loss": sum(losses.values()), **losses}
        out.update({k: v[k] for k in h["stats"]})
        out["grad_norm"] = v.get("grad_norm", 0.0) / max(h["steps"] - h["skipped"], 1)  # the steps taken
        if "loss_scale" in h:
            out["skipped_steps"] = h["skipped"]   # fp16 overflows in the window: no update, no schedule step
            out["loss_scale"] = h["loss_scale"]
        out["tokens_per_s"] = v["tokens"] / max(seconds, 1e-9)
        out["elapsed"] = elapsed
        return out


class Trainer:
    """Train `objective` (whose parameters are `model`'s) on `batches`, a source yielding dict batches
    forever; with `state_dict()` / `load_state_dict()` it resumes at the exact data position.

    `model` is the unwrapped model saved in checkpoints (`save_pretrained`). `evaluate(model) -> dict` is
    called every `eval_every` steps (and after the last step) on EVERY rank, in eval mode under `no_grad`
    and the run's autocast, with the random streams restored afterwards (evaluation never changes the
    training trajectory); it may shard its data and use `distributed.all_reduce_sum`, and runs inside
    `distributed.together()`, so the prediction loops share their batches among the ranks; rank 0's dict is
    logged with split "eval". `save_extra(dir)` writes extra files into each checkpoint (e.g. the
    tokenizer's `save_pretrained`), on rank 0.

    Under torchrun, call `distributed.setup()` first (the trainer calls it otherwise) so the batch source
    can read the rank; the objective is moved to the rank's device and wrapped in DDP (sharded with FSDP when
    `cfg.fsdp`; then `evaluate` runs with the root's parameters gathered, and must make the same forward calls
    on every rank).
    """

    def __init__(self, objective: nn.Module, model: nn.Module, batches, cfg: TrainConfig, *,
                 evaluate: Callable[[nn.Module], dict] | None = None,
                 save_extra: Callable[[str], None] | None = None):
        for method in ("counts", "forward"):
            if not callable(getattr(objective, method, None)):
                raise TypeError(f"the objective must define {method}(batch); see bertkit.train.trainer")
        self.cfg = cfg
        self.info = dist.setup()
        self.device = self.info.device
        self.objective = objective.to(self.device)
        self.model = model
        self.batches = batches
        self.evaluate_fn = evaluate
        self.save_extra = save_extra
        self.precision = resolve_precision(cfg.precision, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.prefetch = (2 if self.device.type == "cuda" else 0) if cfg.prefetch is None else cfg.prefetch
        if cfg.gradient_checkpointing:
            if not hasattr(model, "gradient_checkpointing_enable"):
                raise ValueError(f"TrainConfig.gradient_checkpointing: {type(model).__name__} is not a bertkit "
                                 "model (it has no gradient_checkpointing_enable)")
            model.gradient_checkpointing_enable()
        if cfg.compile:
            from ..modeling.bert import compile_layers
            compile_layers(model)
        self.sharded = cfg.fsdp and dist.is_distributed()
        if cfg.fsdp and not self.sharded:
            warn("TrainConfig.fsdp: a single process has nothing to shard; training unsharded "
                 "(launch with torchrun --nproc-per-node N to shard over N processes)")
        if self.sharded:  # before the optimizer: sharding replaces the parameters
            from ..modeling.bert import BertLayer
            dist.shard(objective, [m for m in model.modules() if isinstance(m, BertLayer)],
                       param_dtype=torch.bfloat16 if self.precision == "bf16" else None)

        model_params = {id(p) for p in model.parameters()}
        stray = [n for n, p in objective.named_parameters() if id(p) not in model_params]
        if stray:
            raise ValueError("the objective has parameters outside the model, which checkpoints would not "
                             f"save: {', '.join(stray[:8])}")
        self.params = [p for p in objective.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optimizer, param_groups(objective, cfg.weight_decay), cfg.lr,
                                         cfg.weight_decay, cfg.betas, cfg.eps)
        self.scheduler = linear_schedule(self.optimizer, cfg.warmup_steps, cfg.max_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.wrapped = dist.wrap(objective, find_unused_parameters=cfg.find_unused_parameters) \
            if dist.is_distributed() and not self.sharded else objective
        self.step = 0
        self._elapsed0 = 0.0
        self._t_start = time.perf_counter()
        self._batch_checked = False
        self._data_state: Any = None   # the data position after the last consumed batch (when prefetching)
        self._prefetcher: Prefetcher | None = None

    # -- pieces ---------------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _cpu_side(self, batch):
        """Everything done to a batch before it reaches the device, on the CPU (in the prefetch thread when
        there is one): the objective's `prepare`, the counts, the token total, pinning.
        Returns (batch, counts as Python numbers, real tokens)."""
        if not self._batch_checked:
            self._batch_checked = True
            ids = batch.get("input_ids") if isinstance(batch, dict) else None
            if isinstance(ids, torch.Tensor) and ids.dim() >= 1 and ids.shape[0] != self.cfg.batch_size:
                warn(f"TrainConfig.batch_size is {self.cfg.batch_size} but the batch source yields "
                     f"batches of {ids.shape[0]}; the reported global batch is wrong")
        if callable(getattr(self.objective, "prepare", None)):
            batch = self.objective.prepare(batch)
        counts = {k: _as_number(v) for k, v in self.objective.counts(batch).items()}
        tokens = _num_tokens(self.objective, batch)
        if self.device.type == "cuda":
            batch = pin(batch)
        return batch, counts, tokens

    def _next_batch(self, it):
        """The next (device batch, counts, tokens); no host sync."""
        try:
            if self._prefetcher is not None:
                (batch, counts, tokens), self._data_state = next(self._prefetcher)
            else:
                batch, counts, tokens = self._cpu_side(next(it))
        except StopIteration:
            raise RuntimeError(f"the batch source ran out at step {self.step}; it must yield batches "
                               "forever (wrap a finite source in an epoch loop)") from None
        return to_device(batch, self.device), counts, tokens

    def _global_counts(self, counts_list: list[dict[str, float]]) -> dict[str, Any]:
        """The step's counts summed over micro-batches (Python numbers) and, under DDP, over ranks (then
        device tensors: the all-reduce runs on the GPU's stream, with no host sync)."""
        total: dict[str, float] = {}
        for counts in counts_list:
            for k, v in counts.items():
                total[k] = total.get(k, 0.0) + v
        if not dist.is_distributed():
            return total
        return dist.all_reduce_sum({k: torch.tensor(v, dtype=torch.float64, device=self.device)
                                    for k, v in total.items()})

    def _loss(self, sums: dict[str, torch.Tensor], counts: dict[str, Any]) -> torch.Tensor:
        missing = [k for k in sums if k not in counts]
        if missing:
            raise ValueError(f"objective returned loss terms {missing} that counts() does not give "
                             f"(counts: {sorted(counts)})")
        loss = sum(sums[k].float() / (counts[k].clamp(min=1) if isinstance(counts[k], torch.Tensor)
                                      else max(counts[k], 1.0)) for k in sums)
        if self.info.world_size > 1:
            loss = loss * self.info.world_size  # DDP and FSDP average gradients over ranks; we want their sum
        return loss

    def _update_scale(self) -> bool:
        """fp16: update the loss scale; True when this step's gradients overflowed, so `scaler.step` skipped the
        optimizer (the scale then backs off). Reading the scale waits for the step's kernels: a host sync per
        step that fp16 alone pays (a fused optimizer skips on the device, so nothing else would tell). Other
        precisions never skip."""
        if not self.scaler.is_enabled():
            return False
        before = self.scaler.get_scale()
        self.scaler.update()
        return self.scaler.get_scale() < before

    def _queue_log(self, window: _Window, lr: float) -> _PendingLog:
        """The window's figures, reduced across ranks and divided on the device, sent to the host in one
        non-blocking copy: nothing here waits for the GPU, so a log step does not drain its queue (the host
        would then have to get ahead of it again). On the CPU the figures are there at once."""
        reduced = dist.all_reduce_sum({**{f"s.{k}": v for k, v in window.sums.items()},
                                       **{f"t.{k}": v for k, v in window.stats.items()},
                                       "tokens": torch.tensor(window.tokens, dtype=torch.float64,
                                                              device=self.device)})
        figures = {f"loss_{k}": reduced[f"s.{k}"] / window.counts[k].clamp(min=1) for k in window.sums}
        for k in window.stats:
            figures[k] = reduced[f"t.{k}"] / window.counts[_denominator(k, window.counts)].clamp(min=1)
        figures["tokens"] = reduced["tokens"]
        if isinstance(window.grad_norm, torch.Tensor):  # a float when every step of the window was skipped
            figures["grad_norm"] = window.grad_norm
        values = torch.stack([v.to(self.device, torch.float64).reshape(()) for v in figures.values()])
        host: dict[str, Any] = {"lr": lr, "stats": list(window.stats), "steps": window.steps,
                                "skipped": window.skipped}
        if self.scaler.is_enabled():
            host["loss_scale"] = self.scaler.get_scale()
        copied = end = None
        seconds = time.perf_counter() - window.t0
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            end = torch.cuda.Event(enable_timing=True)
            end.record(stream)
            values = values.to("cpu", non_blocking=True)   # pinned by the copy: it lands asynchronously
            copied = torch.cuda.Event()
            copied.record(stream)
            seconds = window.carried
        return _PendingLog(self.step, values, list(figures), host, copied, window.start, end, seconds,
                           list(window.pauses))

    def _write_logs(self, tracker: Tracker, wait: bool) -> dict[str, Any] | None:
        """Write the queued log lines whose figures have landed (all of them with `wait`), in order; returns
        the last line written, or None."""
        written = None
        while self._pending and (wait or self._pending[0].ready()):
            pending = self._pending.pop(0)
            written = tracker.log(pending.step, pending.record(self.elapsed()))
        return written

    def elapsed(self) -> float:
        """Seconds of training so far, including the runs this one resumed."""
        return self._elapsed0 + time.perf_counter() - self._t_start

    def run_evaluation(self) -> dict[str, Any]:
        if self.evaluate_fn is None:
            return {}
        was_training = self.objective.training
        self.objective.eval()
        self.model.eval()
        try:  # gathered: it calls the model, not the sharded root's forward; together: the ranks share its work
            with rng_isolated(), torch.no_grad(), self.autocast(), dist.gathered(self.objective), dist.together():
                metrics = self.evaluate_fn(self.model)
        finally:
            self.objective.train(was_training)
            self.model.train(was_training)
        if not isinstance(metrics, dict):
            raise TypeError(f"evaluate(model) must return a dict, got {type(metrics).__name__}")
        return metrics

    def save(self, step: int | None = None) -> str | None:
        """Checkpoint now (collective: call on every rank). Returns the path on rank 0."""
        step = self.step if step is None else step
        if not hasattr(self.batches, "state_dict"):
            data = None
        elif self._prefetcher is not None:  # the source is ahead of the step; record where the step is
            data = self._data_state if self._data_state is not None else self.batches.state_dict()
        else:
            data = self.batches.state_dict()
        rngs = dist.all_gather_object(rng_state())
        datas = dist.all_gather_object(data)
        window = getattr(self, "_window", None)
        windows = dist.all_gather_object(window.state()) if window is not None else None
        model_state = dist.full_state_dict(self.model) if self.sharded else None       # collective
        optimizer_state = dist.full_optimizer_state(self.optimizer) if self.sharded else None
        path = None
        if dist.is_main():
            path = save_checkpoint(
                self.cfg.output_dir, step, self.model, model_state=model_state,
                optimizer=self.optimizer, optimizer_state=optimizer_state, scheduler=self.scheduler,
                scaler=self.scaler, data_states=datas if data is not None else None, rng_states=rngs,
                extra={"elapsed": self.elapsed(), "world_size": self.info.world_size,
                       "config": dataclasses.asdict(self.cfg), "log_windows": windows},
                save_extra=self.save_extra, keep_last=self.cfg.keep_last)
        dist.barrier()
        return path

    def _resume(self) -> int | None:
        # rank 0 picks the checkpoint for all: ranks looking each in its own view of output_dir could pick others
        path = dist.from_main(lambda: find_resumable(self.cfg.output_dir))
        if path is None:
            dist.print0(f"resume: no checkpoint in {self.cfg.output_dir}; starting from step 0")
            return None
        dist.check_shared_dir(self.cfg.output_dir)  # every rank loads it: a machine's local directory has none
        state = load_checkpoint(path, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                scaler=self.scaler)
        # the saved learning rate is the saved schedule's; with more max_steps (or another warm-up) the next
        # step's comes from the schedule in force (the scheduler keeps its own factor, and the saved step)
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        same_world = len(state["rng"]) == self.info.world_size
        dist.on_main(lambda: self._check_resumable(path, state))  # every rank would refuse alike: rank 0 says it
        if state["data"] is not None:
            if not hasattr(self.batches, "load_state_dict"):
                raise TypeError("the checkpoint holds a data position but the batch source has no "
                                "load_state_dict(); exact resume needs one")
            self.batches.load_state_dict(state["data"][self.info.rank if same_world else 0])
        else:
            warn(f"{path} holds no data position (its batch source had no state_dict()): the batch source "
                 "starts from its beginning, so the resumed run sees other batches than the uninterrupted one")
        self._elapsed0 = float(state["extra"].get("elapsed", 0.0))
        self._resume_windows = state["extra"].get("log_windows")  # None from a checkpoint before they were kept
        if same_world:
            self._resume_rng = state["rng"][self.info.rank]
        else:  # fresh streams, not those of the start: seed + rank + step
            seed_everything(self.cfg.seed + self.info.rank + int(state["step"]))
            self._resume_rng = rng_state()
        dist.print0(f"resume: {path} (step {state['step']})")
        return int(state["step"])

    def _check_resumable(self, path: str, state: dict) -> None:
        """Whether this run may continue the checkpoint `path` (its loaded `state`): the same global batch, settings
        and, with another number of processes, one data position for all."""
        self._check_global_batch(path, state)   # first: a wrong batch also changes the steps _check_settings reports
        self._check_settings(path, state)
        if len(state["rng"]) != self.info.world_size:
            self._check_regrouping(path, state)

    def _check_settings(self, path: str, state: dict) -> None:
        """A resumed run computes as the saved one did: the optimizer's settings come back from the checkpoint
        (so a new learning rate would be silently ignored), and the others would make it another run. Only the
        schedule's length may change (training longer), and it is said."""
        saved = state["extra"].get("config", {})
        changed = [f"{k} {getattr(self.cfg, k)!r} (the checkpoint's: {saved[k]!r})" for k in FIXED_ON_RESUME
                   if k in saved and _plain(saved[k]) != _plain(getattr(self.cfg, k))]
        if changed:
            raise ValueError(f"{path}: resuming needs the settings the run was trained with; these differ: "
                             f"{', '.join(changed)}")
        if int(state["step"]) > self.cfg.max_steps:
            raise ValueError(f"{path} is at step {state['step']}, past max_steps {self.cfg.max_steps}")
        schedule = [f"{k} {saved[k]} -> {getattr(self.cfg, k)}" for k in ("max_steps", "warmup_steps")
                    if k in saved and saved[k] != getattr(self.cfg, k)]
        if schedule:
            dist.print0(f"resume: the learning-rate schedule changes ({', '.join(schedule)}): the run goes on from "
                        f"{path}, no longer as the uninterrupted run would have")

    def _check_global_batch(self, path: str, state: dict) -> None:
        """The saved data position counts global micro-batches: resuming needs the same global batch (batch
        size x processes) and accumulation, or it would go on from other examples and masks."""
        before = len(state["rng"])
        saved = state["extra"].get("config", {})
        if "batch_size" not in saved:
            return  # a checkpoint that did not record them
        old = (int(saved["batch_size"]) * before, int(saved.get("grad_accum", 1)))
        new = (self.cfg.batch_size * self.info.world_size, self.cfg.grad_accum)
        if old != new:
            per, left = divmod(old[0], self.info.world_size)
            hint = (f"a batch size of {per} per process" if not left else
                    f"no batch size per process fits {self.info.world_size} processes")
            raise ValueError(
                f"{path} was written by {_processes(before)}, each micro-batch {old[0]} "
                f"sequences in all, accumulation {old[1]}; resuming on {self.info.world_size} needs the same "
                f"({hint}, and accumulation {old[1]}), not {new[0]} and {new[1]}")

    def _check_regrouping(self, path: str, state: dict) -> None:
        """Resuming with another number of processes: allowed when each micro-batch step still takes the same
        global batch (`_check_global_batch`) and every rank of the checkpoint stood at the same (global) data
        position; then the data and masks go on exactly, only the random streams (dropout) are new."""
        before = len(state["rng"])
        if state["data"] is not None and any(d != state["data"][0] for d in state["data"]):
            raise ValueError(f"{path}: its {before} processes stood at different data positions; resuming it "
                             f"needs the same number of processes, not {self.info.world_size}")
        dist.print0(f"resume: {path} was written by {_processes(before)}, this run has {self.info.world_size}: "
                    "the same weights, optimizer, data and masks; new dropout streams, so not bit for bit")

    # -- the loop -------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run to `cfg.max_steps`; with `resume=True`, continue from the newest complete checkpoint in
        `cfg.output_dir` exactly where it stopped (weights, optimizer, scheduler, scaler, random streams,
        data position, step). Returns the last logged train metrics, the last eval metrics prefixed
        `eval_`, and `step`. A fresh run refuses a directory that holds checkpoints (its own would mix with
        them), and one process at a time trains in a directory."""
        with run_lock(self.cfg.output_dir) if dist.is_main() else nullcontext():
            return self._train(resume)

    def _train(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        tracker = self._start(resume)
        it = self._open_batches()
        final: dict[str, Any] = {}
        last_eval: dict[str, Any] = {}
        window = self._window = _Window(self.device)
        self._pending: list[_PendingLog] = []
        if self._resume_windows:  # the steps since the last log line before the checkpoint count in the next one
            window.load(self._resume_windows, self.info.rank, self.info.world_size)
        self.objective.train()
        try:
            while self.step < cfg.max_steps:
                lr = self.optimizer.param_groups[0]["lr"]  # this step's (set by the scheduler, or on resume)
                self._optimizer_step(it, window)
                last = self.step == cfg.max_steps
                tracker.advance()
                log_now = self.step % cfg.log_every == 0 or last
                eval_now = self.evaluate_fn is not None and cfg.eval_every and (
                    self.step % cfg.eval_every == 0 or last)
                save_now = (cfg.save_every and self.step % cfg.save_every == 0) or (last and cfg.save_final)
                landed = bool(self._pending) and self._pending[0].ready()
                if log_now or eval_now or save_now or landed:
                    # only then: saving and restoring every random state takes the host about 0.25 ms (these
                    # CPUs), which a host-bound step (compiled BERT-base at 512 x 32 on a GPU) would pay each step
                    with rng_isolated():
                        if log_now:
                            self._pending.append(self._queue_log(window, lr))
                            window.reset()
                        # the queued lines first, in order; all of them before an evaluation, a checkpoint
                        # (a resumed run rewrites the lines after it) or the end
                        final = self._write_logs(tracker, wait=eval_now or save_now or last) or final
                        with window.paused() if eval_now or save_now else nullcontext():
                            if eval_now:
                                metrics = self.run_evaluation()
                                last_eval = tracker.log(self.step, metrics, split="eval")
                            if save_now:
                                self.save()
        finally:
            self._close_batches()
            tracker.close()
        dist.barrier()
        out = {k: v for k, v in final.items() if k != "split"}
        out.update({f"eval_{k}": v for k, v in last_eval.items() if k not in ("split", "step")})
        out["step"] = self.step
        return out

    def _start(self, resume: bool) -> Tracker:
        """Resume or start afresh (refusing a directory that holds checkpoints), seed, and open the tracker."""
        cfg = self.cfg
        self._resume_rng = self._resume_windows = None
        if not resume and (old := find_latest(cfg.output_dir)) is not None:
            raise ValueError(f"{cfg.output_dir} already holds checkpoints ({old}); train(resume=True) continues "
                             "them: remove them or choose another output_dir to start over")
        start = self._resume() if resume else None
        resumed = start is not None
        self.step = start or 0
        self._t_start = time.perf_counter()
        if not resumed:
            self._elapsed0 = 0.0
            seed_everything(cfg.seed + self.info.rank)
        with rng_isolated():
            tracker = Tracker(
                cfg.output_dir, cfg.max_steps, initial_step=self.step, enabled=dist.is_main(),
                progress=cfg.progress, tensorboard=cfg.tensorboard, resume_step=start if resumed else None)
            n_params = sum(p.numel() for p in self.params)
            tracker.write(
                f"training {n_params:,} parameters on {self.info.world_size} x {self.device} ({self.precision}): "
                f"global batch {cfg.batch_size} x {cfg.grad_accum} accumulation x {self.info.world_size} ranks"
                f" = {cfg.batch_size * cfg.grad_accum * self.info.world_size}, {cfg.optimizer}, lr {cfg.lr}, "
                f"steps {self.step} -> {cfg.max_steps}")
        return tracker

    def _open_batches(self):
        """The batches' iterator, behind the prefetch thread when there is one; then a resumed run's random
        states are restored, last, so that nothing before moves them."""
        it = iter(self.batches)
        self._data_state = None
        self._prefetcher = None
        if self.prefetch:
            state_fn = self.batches.state_dict if hasattr(self.batches, "state_dict") else None
            self._prefetcher = Prefetcher(it, self._cpu_side, self.prefetch, state_fn)
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
        return it

    def _close_batches(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            if self._data_state is not None and hasattr(self.batches, "load_state_dict"):
                # the thread ran ahead: leave the source where the steps stopped
                self.batches.load_state_dict(self._data_state)

    def _optimizer_step(self, it, window: _Window) -> None:
        """One optimizer step: forward and backward over `grad_accum` micro-batches (gradients synchronised
        on the last), clipping, the (possibly skipped) update, and the window's sums, all without a host sync."""
        cfg = self.cfg
        ddp = self.wrapped is not self.objective
        micro = [self._next_batch(it) for _ in range(cfg.grad_accum)]
        counts = self._global_counts([c for _, c, _ in micro])
        for i, (batch, _, tokens) in enumerate(micro):
            sync = i == len(micro) - 1
            if self.sharded:
                self.wrapped.set_requires_gradient_sync(sync)
            with (self.wrapped.no_sync() if ddp and not sync else nullcontext()):
                with self.autocast():
                    sums, stats = self.wrapped(batch)
                loss = self._loss(sums, counts)
                self.scaler.scale(loss).backward()
            window._add(window.sums, sums)
            window._add(window.stats, stats)
            window.tokens += tokens
        self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        else:
            norm = global_grad_norm(self.params)
        if hasattr(norm, "full_tensor"):  # FSDP: a replicated DTensor
            norm = norm.full_tensor()
        self.scaler.step(self.optimizer)
        skipped = self._update_scale()
        if not skipped:  # as transformers' Trainer: a skipped step leaves the schedule where it was
            self.scheduler.step()
            window.grad_norm = window.grad_norm + norm.detach().double()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        window._add(window.counts, counts)
        window.steps += 1
        window.skipped += skipped
