"""Training checkpoints: atomic directories, keep-last-K, and the state for an exact resume.

A run directory holds one directory per checkpoint:

    run/step-000123/config.json, model.safetensors   the model (`save_pretrained`), loadable on its own
    run/step-000123/<extra files>                    whatever `save_extra(dir)` writes (e.g. the tokenizer)
    run/step-000123/training_state.pt                step, optimizer, scheduler, grad scaler, RNG states,
                                                      data position, extra; loads with weights_only=True
    run/latest                                       the newest checkpoint's name (a convenience for people)

A checkpoint is built in `step-000123.tmp-<pid>` and renamed to its final name only when every file is
written, so a directory named `step-NNN` is complete by construction: `find_latest` trusts the highest
such name (not the `latest` file, which a crash can leave one behind). Older checkpoints are pruned only after
the new one is in place, each renamed away before its files go (`remove_checkpoint`).

RNG and data states are stored per rank (lists indexed by rank), so a resumed run continues each rank's
random streams and data position exactly with the same world size. Another world size can resume a run that
keeps its global batch (the trainer checks): the same data position, new random streams.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from collections.abc import Iterable
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..checks import field_defaults
from ..hub import load_tensors
from ..io import pid_alive, read_json, write_text_atomic

STATE_NAME = "training_state.pt"
LATEST_NAME = "latest"
_STEP_RE = re.compile(r"^step-(\d+)$")
# what a killed process leaves beside its checkpoints: one being written, swapped out (re-saved) or deleted
_LEFTOVER_RE = re.compile(r"^step-(\d+)\.(?:tmp|old|del)-(\d+)$")
FORMAT_VERSION = 1


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------------------
# RNG states as plain tensors / numbers (weights_only-loadable)
# ---------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's random states: Python `random`, NumPy's global generator, torch CPU, torch CUDA."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    if np_state["bit_generator"] != "MT19937":
        raise ValueError(f"cannot store NumPy's {np_state['bit_generator']} global state")
    out = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only when CUDA is available here)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(f"checkpoint holds {len(state['cuda'])} CUDA RNG states, "
                             f"this machine has {torch.cuda.device_count()} GPUs")
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------------------------

def is_complete(path: str | os.PathLike) -> bool:
    """A final-named checkpoint directory holding its training state."""
    path = os.fspath(path)
    return (_STEP_RE.match(os.path.basename(os.path.normpath(path))) is not None
            and os.path.isfile(os.path.join(path, STATE_NAME)))


def _step_dirs(run_dir: str) -> list[tuple[int, str]]:
    """Every directory of `run_dir` named as a checkpoint (complete or not), as (step, path), oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        m = _STEP_RE.match(name)
        path = os.path.join(run_dir, name)
        if m and os.path.isdir(path):
            found.append((int(m.group(1)), path))
    return sorted(found)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete checkpoints in `run_dir`, as (step, path), oldest first. Temp dirs are ignored."""
    return [(step, path) for step, path in _step_dirs(os.fspath(run_dir)) if is_complete(path)]


def find_latest(run_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint directory in `run_dir`, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def find_resumable(run_dir: str | os.PathLike) -> str | None:
    """The checkpoint a resume continues: the newest complete one, or None. A checkpoint directory newer than it
    without its training state was not left so by a crash (a checkpoint appears whole, by a rename): it was
    damaged or emptied since, and going back to an older checkpoint (or step 0) without a word would silently
    redo that training; a ValueError naming it instead."""
    run_dir = os.fspath(run_dir)
    latest = find_latest(run_dir)
    found = _step_dirs(run_dir)
    if found and found[-1][1] != latest:
        before = f"from {os.path.basename(latest)}" if latest else "from step 0"
        raise ValueError(f"{found[-1][1]}: a checkpoint directory without its {STATE_NAME} (deleted or damaged since "
                         f"it was written: a crash leaves none so); remove that directory to resume {before}")
    return latest


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _save_model(model: nn.Module, directory: str, state: dict | None) -> None:
    if state is None and hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        from ..hub import save_pretrained
        save_pretrained(model, directory, state_dict=state)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module, *,
                    model_state: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    optimizer_state: dict | None = None,
                    scheduler: Any = None,
                    scaler: Any = None,
                    data_states: list | None = None,
                    rng_states: list | None = None,
                    extra: dict | None = None,
                    save_extra: Callable[[str], None] | None = None,
                    keep_last: int | None = None) -> str:
    """Write checkpoint `step` into `run_dir` atomically and return its path.

    `data_states` and `rng_states` are per-rank lists (default: this process only — `[rng_state()]`, no data
    state). `model_state` / `optimizer_state` replace `model.state_dict()` / `optimizer.state_dict()` when given
    (a sharded run's, gathered whole: `distributed.full_state_dict`, `full_optimizer_state`). `extra` is any
    weights_only-loadable dict. `keep_last` (>= 1) prunes older checkpoints once the new one is complete. Call
    it on one rank only (the trainer gathers the per-rank states first).
    """
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    final = os.path.join(run_dir, step_dir_name(step))
    tmp = f"{final}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        _save_model(model, tmp, model_state)
        if save_extra is not None:
            save_extra(tmp)
        state = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "optimizer": (optimizer_state if optimizer_state is not None
                          else optimizer.state_dict() if optimizer is not None else None),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": rng_states if rng_states is not None else [rng_state()],
            "data": data_states,
            "extra": extra or {},
        }
        torch.save(state, os.path.join(tmp, STATE_NAME))
        _fsync_tree(tmp)
        if os.path.exists(final):  # re-saving a step (e.g. a run restarted without resume): swap it out
            old = f"{final}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(os.path.join(run_dir, LATEST_NAME), os.path.basename(final) + "\n")
    if keep_last is not None:
        prune(run_dir, keep_last)
    return final


def prune(run_dir: str | os.PathLike, keep_last: int) -> list[str]:
    """Delete all but the newest `keep_last` complete checkpoints, and temp dirs of dead processes.
    Returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    run_dir = os.fspath(run_dir)
    deleted = []
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        remove_checkpoint(path)
        deleted.append(path)
    for name in os.listdir(run_dir):
        m = _LEFTOVER_RE.match(name)
        if m and not pid_alive(int(m.group(2))):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
            deleted.append(os.path.join(run_dir, name))
    return deleted


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint directory: renamed first, so that a kill while its files go leaves a leftover that
    `prune` removes, never a directory that still looks like a checkpoint (with its training state but not all
    of its weights, or neither, kept for good)."""
    path = os.fspath(path)
    doomed = f"{os.path.normpath(path)}.del-{os.getpid()}"
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def check_resumed_settings(path: str | os.PathLike, args: Any, free: Iterable[str]) -> None:
    """On resume: a job's settings (`args`, its arguments dataclass) must be those it started with (`path`, the
    arguments file it wrote then), apart from the `free` ones, which do not change what it computes; otherwise
    the resumed run would silently be another run, or (the learning rate, which the optimizer's saved state
    holds) not the one it says. A setting the file lacks (added to bertkit since) counts as its default."""
    if not os.path.isfile(path):
        return  # written by a version that saved its arguments only at the end
    defaults = field_defaults(type(args))
    saved = {**json.loads(json.dumps(defaults)), **read_json(path)}
    now = json.loads(json.dumps(dataclasses.asdict(args)))  # tuples compare as the lists JSON holds
    changed = [k for k in sorted(set(saved) | set(now)) if k not in free and saved.get(k) != now.get(k)]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {now.get(k)!r} (the run's: {saved.get(k)!r})" for k in changed)
        raise ValueError(f"{path}: --resume continues the run with the settings it started with; these differ: "
                         f"{diffs}. Start a new run (another --output) to change them")


_STATE_KEYS = ("step", "optimizer", "scheduler", "scaler", "rng", "data", "extra")  # what save_checkpoint writes


def load_training_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """`training_state.pt` of a checkpoint directory, loaded with weights_only=True; a file that loads but is not
    what `save_checkpoint` writes (another tool's, one replaced by hand) is a one-line ValueError, not a KeyError
    somewhere in the resume."""
    file = os.path.join(os.fspath(path), STATE_NAME)
    state = load_tensors(file, map_location)
    missing = [k for k in _STATE_KEYS if k not in state] if isinstance(state, dict) else list(_STATE_KEYS)
    if missing:
        got = f"a dict without {', '.join(missing)}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ValueError(f"{file}: not a bertkit training state: expected a dict of {', '.join(_STATE_KEYS)}, "
                         f"got {got}")
    return state


def load_model_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy a checkpoint's weights into `model` in place (parameters keep their identity, so an optimizer
    built on them stays valid). Every parameter and persistent buffer must be found, directly or through a
    tied alias; unknown keys are an error. A sharded (FSDP) model takes its shards of the whole tensors."""
    from ..hub import load_state_dict
    from .distributed import shard_state_like
    state = load_state_dict(os.fspath(path))
    missing, unexpected = model.load_state_dict(shard_state_like(state, model.state_dict()), strict=False)
    if unexpected:
        raise ValueError(f"{path}: checkpoint has weights the model lacks: {', '.join(unexpected[:8])}")
    if missing:
        # A key is fine when the tensor it names was loaded under another name (a tie).
        by_id: dict[int, list[str]] = {}
        for name, t in list(model.named_parameters(remove_duplicate=False)) + \
                list(model.named_buffers(remove_duplicate=False)):
            by_id.setdefault(id(t), []).append(name)
        loaded = set(state)
        really = [k for k in missing
                  if not any(alias in loaded for ids in by_id.values() if k in ids for alias in ids)]
        if really:
            raise ValueError(f"{path}: checkpoint lacks weights: {', '.join(really[:8])}")


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None,
                    scaler: Any = None,
                    map_location: Any = "cpu") -> dict[str, Any]:
    """Load the weights into `model` and the states into `optimizer` / `scheduler` / `scaler` (each when
    given); return the training state (step, rng, data, extra ...). RNG and data states are left to the
    caller (`set_rng_state(state["rng"][rank])`, `source.load_state_dict(state["data"][rank])`)."""
    from .distributed import shard_optimizer_state
    path = os.fspath(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint directory (no {STATE_NAME})")
    state = load_training_state(path, map_location)
    if model is not None:
        load_model_weights(model, path)
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValueError(f"{path}: no optimizer state saved")
        optimizer.load_state_dict(shard_optimizer_state(optimizer, state["optimizer"]))
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and scaler.is_enabled():
        if state["scaler"] is None:
            raise ValueError(f"{path}: the run uses a grad scaler (fp16) but the checkpoint has none")
        scaler.load_state_dict(state["scaler"])
    return state
