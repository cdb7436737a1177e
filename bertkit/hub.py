"""Checkpoint directories: finding them by name, reading and writing their weights.

A checkpoint directory holds `config.json` and the weights, `model.safetensors` (or a sharded
`model.safetensors.index.json`; `pytorch_model.bin` is read too, never executing code). The files are
the ones HuggingFace transformers writes and reads, so a directory moves freely between the two.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch

from .checks import is_int
from .config import CONFIG_NAME, BertConfig, config_file
from .io import atomic_paths, read_json, umask
from .warn import warn

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PT_WEIGHTS_NAME = "pytorch_model.bin"
PT_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# In order of preference.
WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, PT_WEIGHTS_NAME, PT_WEIGHTS_INDEX_NAME)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")

# The one table of checkpoint names that differ from bertkit's (and transformers') attribute names:
# (pattern, replacement), applied in order to every key read.
LEGACY_NAMES = (
    (re.compile(r"LayerNorm\.gamma$"), "LayerNorm.weight"),  # TF-era names in old PyTorch checkpoints
    (re.compile(r"LayerNorm\.beta$"), "LayerNorm.bias"),
    (re.compile(r"\.dense_act\."), ".dense."),              # NVIDIA DeepLearningExamples' fused Linear+act
    (re.compile(r"^module\."), ""),                          # saved from inside a DDP wrapper
)
# Checkpoint entries that carry no weights (old persistent buffer), relative to the base model.
IGNORED_KEYS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})  # buffers some versions saved
# Optional parts: each is loaded whole or, when absent from the checkpoint, freshly initialised and
# reported. Names relative to the task model; the pooler is relative to the base model.
HEAD_UNITS = ("cls.predictions", "cls.seq_relationship", "classifier", "qa_outputs")
POOLER_UNIT = "pooler"
HEAD_NAMESPACES = ("cls", "classifier", "qa_outputs")


# ---------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------

def bertkit_home() -> str:
    return os.environ.get("BERTKIT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "bertkit")


def hf_hub_cache() -> str:
    """Where huggingface_hub keeps its cache, by its own rules: `$HF_HUB_CACHE`, else the older
    `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    ~/.cache/huggingface/hub; a `~` or `$VAR` inside them expanded."""
    def expand(path: str) -> str:
        return os.path.expandvars(os.path.expanduser(path))

    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    hub = os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(expand(home), "hub")
    return expand(os.environ.get("HF_HUB_CACHE") or hub)


def _has_any(directory: str, required: tuple[str, ...]) -> bool:
    return any(os.path.isfile(os.path.join(directory, f)) for f in required)


def _broken_links(directory: str, names: tuple[str, ...]) -> str:
    """Why files named there count as absent: hub-cache links into blobs/ whose blob is gone (an interrupted
    download, a pruned cache). '' when there are none, so an error can append it."""
    paths = [os.path.join(directory, n) for n in names]
    broken = [p for p in paths if os.path.islink(p) and not os.path.exists(p)]
    return "".join(f"; {os.path.basename(p)} there links to {os.path.realpath(p)}, which is missing (fetch it again)"
                   for p in broken)


def _hf_snapshots(repo_dir: str) -> list[str]:
    """Snapshot directories of one cached repo, newest first (for a cache without `refs/main`)."""
    snapshots = os.path.join(repo_dir, "snapshots")
    if not os.path.isdir(snapshots):
        return []
    found = [os.path.join(snapshots, d) for d in os.listdir(snapshots)]
    return sorted((d for d in found if os.path.isdir(d)), key=os.path.getmtime, reverse=True)


# A full commit hash, as huggingface_hub names snapshot directories; a prefix of one is accepted from
# 7 characters, git's shortest abbreviation.
_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
_HASH_PREFIX = re.compile(r"[0-9a-f]{7,39}")


def _check_revision(revision: str) -> None:
    """Refuse a revision that could name a path outside `refs/` or `snapshots/` of the cached repo. Slashes
    stay allowed: branch names may hold them, and pull requests are cached as `refs/refs/pr/<n>`."""
    if not isinstance(revision, str):
        raise TypeError(f"revision must be a str (branch, tag or commit hash), got {type(revision).__name__}")
    parts = revision.split("/")
    if not revision or "\\" in revision or os.path.isabs(revision) or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"revision {revision!r}: expected a branch, tag or commit hash "
                         "(no empty, '.' or '..' path parts, no backslash)")


def _check_subfolder(subfolder: str) -> str:
    """A relative folder inside a model directory (transformers' `subfolder`); '' for none."""
    if not isinstance(subfolder, str):
        raise TypeError(f"subfolder must be a str, got {type(subfolder).__name__}")
    parts = subfolder.replace("\\", "/").strip("/").split("/")
    if subfolder and (os.path.isabs(subfolder) or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"subfolder {subfolder!r}: expected a relative folder inside the model directory "
                         "(no empty, '.' or '..' path parts)")
    return "/".join(parts) if subfolder else ""


def _hf_refs(repo_dir: str) -> dict[str, str]:
    """Cached revision names (branches, tags, abbreviated hashes; `refs/<name>`) -> commit hash."""
    refs_dir = os.path.join(repo_dir, "refs")
    refs = {}
    for root, _, files in os.walk(refs_dir):
        for f in files:
            path = os.path.join(root, f)
            try:
                with open(path, encoding="utf-8") as fh:
                    refs[os.path.relpath(path, refs_dir).replace(os.sep, "/")] = fh.read().strip()
            except OSError:
                continue
    return refs


def _hf_snapshot_for(name: str, repo_dir: str, revision: str) -> str:
    """The snapshot directory of one revision, resolved as huggingface_hub does offline.

    A full commit hash names `snapshots/<hash>`; otherwise `refs/<revision>` (a branch or a tag: the hub
    cache writes both there, and abbreviated hashes it has resolved once) holds the hash; otherwise a
    hash prefix of 7+ characters naming exactly one snapshot. Raises FileNotFoundError listing what is
    cached, ValueError for an ambiguous prefix.
    """
    snapshots_dir = os.path.join(repo_dir, "snapshots")
    snapshots = sorted(d for d in (os.listdir(snapshots_dir) if os.path.isdir(snapshots_dir) else ())
                       if os.path.isdir(os.path.join(snapshots_dir, d)))
    commit = None
    if _COMMIT_HASH.fullmatch(revision):
        commit = revision
    elif os.path.isfile(os.path.join(repo_dir, "refs", *revision.split("/"))):
        with open(os.path.join(repo_dir, "refs", *revision.split("/")), encoding="utf-8") as f:
            commit = f.read().strip()
    elif _HASH_PREFIX.fullmatch(revision):
        matches = [h for h in snapshots if h.startswith(revision)]
        if len(matches) > 1:
            raise ValueError(f"revision {revision!r} of model {name!r} is ambiguous: it prefixes the cached "
                             f"snapshots {', '.join(matches)}; give more characters")
        commit = matches[0] if matches else None
    if commit is not None and commit in snapshots:
        return os.path.join(snapshots_dir, commit)
    refs = ", ".join(f"{r} ({h[:12]})" for r, h in sorted(_hf_refs(repo_dir).items())) or "none"
    via = f" (commit {commit}, not in snapshots/)" if commit not in (None, revision) else ""
    raise FileNotFoundError(f"model {name!r}: revision {revision!r}{via} is not in the hub cache "
                            f"{repo_dir}; cached refs: {refs}; cached snapshots: {', '.join(snapshots) or 'none'}")


def resolve_model_dir(name_or_path: str | os.PathLike,
                      required: tuple[str, ...] = (CONFIG_NAME,), *,
                      revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                      subfolder: str = "") -> str:
    """The directory for a local path or a model name such as `ORG/NAME`.

    Looks at, in order: the path itself (any existing directory), `$BERTKIT_HOME/<name>`
    (default ~/.cache/bertkit), and HuggingFace's offline hub cache
    (found as huggingface_hub finds it: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, ... see `hf_hub_cache`)
    `models--ORG--NAME/snapshots/<rev>` (the revision in `refs/main`, as transformers' default
    revision "main"; only without `refs/main` the newest snapshot, with a warning naming it).
    A cached directory counts only if it holds at least one of the `required` files.

    `revision` (a branch, a tag, a full commit hash or an unambiguous prefix of 7+ hex characters)
    picks one hub-cache snapshot, and only that one counts: no fallback to main or the newest.
    A local directory and a `$BERTKIT_HOME` directory have no revisions, so there it is ignored (for
    `$BERTKIT_HOME`, with a warning), as transformers ignores `revision` for a local directory; it is still
    checked for path separators and '..' (ValueError) everywhere, so a bad argument fails the same way wherever
    the model lives. `cache_dir` replaces the hub cache's location, as transformers' `cache_dir`.
    `subfolder` (a relative folder, as transformers') is looked for inside each of those directories,
    and the required files in it.
    """
    if revision is not None:
        _check_revision(revision)
    sub = _check_subfolder(subfolder)
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return _local_model_dir(name, sub)
    looked = [f"{name} (not a local directory)"]
    if name and not os.path.isabs(name) and ".." not in name.replace("\\", "/").split("/"):
        found = (_home_model_dir(name, required, revision, sub, looked)
                 or _hub_model_dir(name, required, revision, cache_dir, sub, looked))
        if found is not None:
            return found
    raise _model_not_found(name, required, sub, looked)


def _inside(directory: str, sub: str) -> str:
    return os.path.join(directory, sub) if sub else directory


def _local_model_dir(name: str, sub: str) -> str:
    """A local directory counts whatever it holds; only a missing subfolder is refused."""
    if os.path.isdir(_inside(name, sub)):
        return _inside(name, sub)
    raise FileNotFoundError(f"{_inside(name, sub)}: the model directory {name} has no subfolder {sub!r}")


def _home_model_dir(name: str, required: tuple[str, ...], revision: str | None, sub: str,
                    looked: list[str]) -> str | None:
    """`$BERTKIT_HOME/<name>` if it holds a required file (it has no revisions); appends it to `looked`."""
    candidate = os.path.join(bertkit_home(), name)
    looked.append(candidate)
    if not (os.path.isdir(_inside(candidate, sub)) and _has_any(_inside(candidate, sub), required)):
        return None
    if revision is not None:
        warn(f"model {name!r}: revision {revision!r} ignored: loading {_inside(candidate, sub)} "
             "($BERTKIT_HOME), which has no revisions")
    return _inside(candidate, sub)


def _hub_model_dir(name: str, required: tuple[str, ...], revision: str | None,
                   cache_dir: str | os.PathLike | None, sub: str, looked: list[str]) -> str | None:
    """The hub cache's snapshot of `revision` (else of refs/main, else the newest one holding a required file,
    with a warning); None when there is none, its snapshots folder then appended to `looked`."""
    hub = os.fspath(cache_dir) if cache_dir is not None else hf_hub_cache()
    repo_dir = os.path.join(hub, "models--" + name.strip("/").replace("/", "--"))
    if revision is None and os.path.isfile(os.path.join(repo_dir, "refs", "main")):
        revision = "main"  # as transformers: no other snapshot stands in for the one main names
    if revision is not None:
        return _hub_revision_dir(name, repo_dir, revision, required, sub)
    looked.append(os.path.join(repo_dir, "snapshots"))
    for snapshot in _hf_snapshots(repo_dir):
        if _has_any(_inside(snapshot, sub), required):
            warn(f"model {name!r}: the hub cache {repo_dir} has no refs/main; loading its newest "
                 f"snapshot, {os.path.basename(snapshot)} (pass revision= to choose)")
            return _inside(snapshot, sub)
    return None


def _hub_revision_dir(name: str, repo_dir: str, revision: str, required: tuple[str, ...], sub: str) -> str:
    """The snapshot of one revision, which must hold a required file: no other snapshot stands in for it."""
    snapshot = _inside(_hf_snapshot_for(name, repo_dir, revision), sub)
    if not _has_any(snapshot, required):
        raise FileNotFoundError(f"model {name!r}: revision {revision!r} ({snapshot}) has no "
                                f"{' or '.join(required)}" + _broken_links(snapshot, required))
    return snapshot


def _model_not_found(name: str, required: tuple[str, ...], sub: str, looked: list[str]) -> FileNotFoundError:
    """The error for a model found nowhere: a file, a path that is no directory, or a name not in any cache."""
    where = f" in subfolder {sub!r}" if sub else ""
    if os.path.isfile(name):
        return FileNotFoundError(f"{name}: a file, not a model directory (one that holds {' or '.join(required)})")
    if os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(("/", os.sep)) or name.count("/") > 1:
        return FileNotFoundError(f"{name}: no such directory (a model directory holds {' or '.join(required)})")
    return FileNotFoundError(f"no model {name!r} with {' or '.join(required)}{where} found; looked in: "
                             + "; ".join(looked) + ". bertkit never downloads: fetch it first (e.g. `hf download "
                             + f"{name}`, into the hub cache) or pass a directory")


# ---------------------------------------------------------------------------------------------
# Reading weights
# ---------------------------------------------------------------------------------------------

def weights_names(variant: str | None = None) -> tuple[str, ...]:
    """The weights file names looked for, in order; a `variant` goes before the last suffix, as in
    transformers (`model.fp16.safetensors`, `model.safetensors.index.fp16.json`)."""
    if variant is None:
        return WEIGHTS_NAMES
    if not isinstance(variant, str) or not variant or any(c in variant for c in "/\\"):
        raise ValueError(f"variant {variant!r}: expected a name such as 'fp16' (no path separators)")
    return tuple(f"{stem}.{variant}.{suffix}" for stem, suffix in (n.rsplit(".", 1) for n in WEIGHTS_NAMES))


def find_weights_file(directory: str | os.PathLike, variant: str | None = None,
                      use_safetensors: bool | None = None) -> str:
    """The weights file of `directory`: safetensors first. `use_safetensors` as in transformers: True, only
    safetensors; False, only torch's .bin (read with weights_only=True)."""
    directory = os.fspath(directory)
    names = tuple(n for n in weights_names(variant)
                  if use_safetensors is None or ("safetensors" in n) == bool(use_safetensors))
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    variant_file = re.compile(r"(model|pytorch_model)\.[^.]+\.(safetensors|bin)")
    variants = sorted(f for f in os.listdir(directory) if variant_file.fullmatch(f))
    hint = f" (it has {', '.join(variants)}: pass variant=)" if variants else ""
    raise FileNotFoundError(f"{directory}: no weights file; expected one of {', '.join(names)}{hint}"
                            + _broken_links(directory, names))


def load_tensors(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True; a file it refuses is a one-line ValueError naming the file and why
    (torch's own message advises weights_only=False, which would run the file's pickled code: not passed on)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for code or garbage, RuntimeError for a damaged archive
        text = " ".join(str(e).split())
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", text)  # blocked modules too
        if found:  # an object torch's safe unpickler does not build: what it is, not torch's advice to run it
            hint = ("; an NVIDIA training checkpoint saved mid-run holds its data loader: use the last one, or save "
                    "its 'model' entry alone") if "DataLoader" in found[1] else ""
            raise ValueError(f"{os.fspath(path)}: refused to load: it pickles a {found[1]}, which loading would "
                             f"have to run (bertkit reads pickles with torch.load(weights_only=True) only{hint})"
                             ) from None
        # torch's own reason, without its advice to rerun with weights_only=False
        why = text.split("WeightsUnpickler error:")[-1].split("trusted source.")[-1]
        why = why.split(" Check the documentation")[0].strip()
        raise ValueError(f"{os.fspath(path)}: refused to load: a damaged file, or not a plain tensor checkpoint "
                         f"(torch.load with weights_only=True: {why or type(e).__name__})") from None


def _load_torch_pickle(path: str) -> dict[str, torch.Tensor]:
    obj = load_tensors(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a training checkpoint (NVIDIA DeepLearningExamples): weights under "model"
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        what = type(obj).__name__ if not isinstance(obj, dict) else "a dict with other values, under the keys " + \
            ", ".join(repr(k) for k in list(obj)[:4])
        raise ValueError(f"{path}: expected a dict of name -> tensor, got {what}")
    return obj


def _load_file(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except safetensors.SafetensorError as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return _load_torch_pickle(path)


def load_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in `directory` (safetensors preferred), on the CPU, names as stored."""
    return read_weights(find_weights_file(directory))


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """All tensors of one weights file (or of the shards a `.index.json` lists), on the CPU, names as stored."""
    if not path.endswith(".json"):  # a shard index: model.safetensors.index.json, or .index.<variant>.json
        return _load_file(path)
    weight_map = read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{path}: not a shard index: expected 'weight_map', an object of tensor name -> file name")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        _check_shard_name(path, shard)
        shard_path = os.path.join(os.path.dirname(path), shard)
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"{path}: lists the shard {shard}, which is not in {os.path.dirname(path)}"
                                    + _broken_links(os.path.dirname(path), (shard,)))
        state.update(_load_file(shard_path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(f"{path}: {len(missing)} indexed tensors absent from the shards: {_names(missing)}")
    return state


def _check_shard_name(index: str, shard: str) -> None:
    """A shard index names files beside it: a path elsewhere (`../x`, `/abs/x`) would make a downloaded directory
    read another model's weights from this machine (transformers follows them; bertkit refuses). A safetensors
    index lists safetensors shards, so that `use_safetensors=True` never reaches a pickle."""
    if not shard or shard in (".", "..") or any(sep in shard for sep in "/\\") or os.path.isabs(shard):
        raise ValueError(f"{index}: weight_map names the shard {shard!r}; expected a file name in "
                         f"{os.path.dirname(index) or '.'} (no path separators or '..')")
    if ".safetensors" in os.path.basename(index) and not shard.endswith(".safetensors"):
        raise ValueError(f"{index}: weight_map names the shard {shard!r}; a safetensors index lists .safetensors "
                         "files only")


# Base-model weights whose shape the config's sizes set: key (relative to the base model) -> the fields of its rows
# and columns.
SIZED_BY_CONFIG = {"embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
                   "embeddings.position_embeddings.weight": ("max_position_embeddings", "hidden_size"),
                   "embeddings.token_type_embeddings.weight": ("type_vocab_size", "hidden_size"),
                   "encoder.layer.0.intermediate.dense.weight": ("intermediate_size", "hidden_size")}
_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.")


def check_config_sizes(config: BertConfig, state: dict[str, torch.Tensor], weights: str, config_source: str,
                       given: frozenset[str] = frozenset()) -> None:
    """Before the model is built: the config's sizes must be those of the checkpoint's tensors. A config.json that
    says vocab_size 10**12 (or hidden_size, intermediate_size, num_hidden_layers far above the weights') beside a
    small checkpoint would otherwise first allocate and initialise the model it describes (terabytes, or most of
    the machine's memory) and only then fail on a mis-shaped key (or initialise millions of layers). `config_source`
    names where the config came from, for the error, and `given` the fields an argument set there."""

    def where(name: str) -> str:
        return f"{name} {getattr(config, name)} in {config_source}" + (" (given)" if name in given else "")

    base = {}
    for key, t in state.items():
        key = legacy_name(key)
        base[key[len("bert."):] if key.startswith("bert.") else key] = t
    for key, fields in SIZED_BY_CONFIG.items():
        t, want = base.get(key), [getattr(config, f) for f in fields]
        if isinstance(t, torch.Tensor) and t.dim() == 2 and list(t.shape) != want:
            field = next(f for f, n, w in zip(fields, t.shape, want) if n != w)
            raise ValueError(f"{weights}: mis-shaped key: {key} (checkpoint {list(t.shape)}, model {want}): "
                             f"{where(field)}, not this checkpoint's config (refused before building that model)")
    layers = {int(m[1]) for m in map(_LAYER_KEY.match, base) if m}
    if layers and config.num_hidden_layers > max(layers) + 1:   # the strict load's missing keys, before building
        raise ValueError(f"{weights}: {max(layers) + 1} layers, but {where('num_hidden_layers')}: not this "
                         "checkpoint's config (refused before building that model)")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def state_dict_for_saving(model: torch.nn.Module,
                          state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors (or those of `state`, its state dict gathered elsewhere: a sharded model's,
    `distributed.full_state_dict`), each stored once, contiguous.

    A parameter reachable under several names (a tie) is kept under the first name PyTorch lists:
    for the MLM heads that is `bert.embeddings.word_embeddings.weight` and `cls.predictions.bias`
    (not `cls.predictions.decoder.weight/bias`), exactly the names transformers keeps; and under the names
    transformers keeps apart (`untied_names`: an untied decoder's bias), as copies.
    """
    state = model.state_dict() if state is None else state
    keep = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name in keep:
        if name not in state or _base_key(model, name) in IGNORED_KEYS:
            continue  # non-persistent buffer, or an entry no checkpoint needs
        t = state[name].detach().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages and t.numel():  # distinct parameters that happen to share memory
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    for name in _untied_names(model):
        if name in state:
            out[name] = state[name].detach().contiguous().clone()
    return out


def _untied_names(model: torch.nn.Module) -> tuple[str, ...]:
    untied = getattr(model, "untied_names", None)
    return untied() if untied is not None else ()


def _class_name(model: torch.nn.Module) -> str:
    """The model's class name; FSDP2 re-classes a sharded root as `FSDP<name>`, a subclass made in torch."""
    return next(c.__name__ for c in type(model).__mro__ if not c.__module__.startswith("torch."))


# transformers' default max_shard_size, "50GB"
DEFAULT_MAX_SHARD_SIZE = 50 * 10**9
# The shard files save_pretrained writes (and removes when a later save no longer writes them), as transformers
# names them.
_SHARD_FILE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


_SIZE_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "GIB": 2**30, "MIB": 2**20, "KIB": 2**10}


def shard_size_in_bytes(size: int | str) -> int:
    """A `max_shard_size` as transformers 5 reads it (huggingface_hub's parse_size_to_int): bytes, or a number and a
    unit, any case ("5GB", "0.5gb", "5Gb" all in bytes); bertkit also reads KiB, MiB, GiB."""
    if is_int(size) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]I?B)\s*", size, re.IGNORECASE) if isinstance(
        size, str) else None
    n = int(float(match[1]) * _SIZE_UNITS[match[2].upper()]) if match and match[2].upper() in _SIZE_UNITS else 0
    if n <= 0:
        raise ValueError(f"save_pretrained: max_shard_size must be a positive number of bytes or a number and a unit "
                         f"(KB, MB, GB, TB, KiB, MiB, GiB), like '5GB', got {size!r}")
    return n


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def shard_plan(tensors: dict[str, torch.Tensor], max_shard_size: int) -> list[list[str]]:
    """The tensor names of each shard, packed as transformers 5 packs them (huggingface_hub's
    split_torch_state_dict_into_shards): in order, a shard closed when the next tensor would take it over the
    limit; a tensor larger than the limit alone in a shard of its own, placed before the shard being filled."""
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, t in tensors.items():
        size = _tensor_bytes(t)
        if size > max_shard_size:
            shards.append([name])
            continue
        if current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current or not shards:
        shards.append(current)
    return shards


def shard_names(count: int) -> list[str]:
    """`model.safetensors` for one shard, else `model-00001-of-0000N.safetensors`, ... (transformers' names)."""
    if count == 1:
        return [SAFE_WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _shard_index(model: torch.nn.Module, tensors: dict[str, torch.Tensor], plan: list[list[str]],
                 files: list[str]) -> str:
    """model.safetensors.index.json's text, as transformers writes it: "total_parameters" counts the model's
    parameters (each tied one once; `untied_names`, its own parameters there, too), whatever `state_dict` was
    saved; "total_size" the bytes of the tensors."""
    parameters = sum(p.numel() for p in model.parameters())
    parameters += sum(model.get_parameter(n).numel() for n in _untied_names(model))
    index = {"metadata": {"total_parameters": parameters,
                          "total_size": sum(_tensor_bytes(t) for t in tensors.values())},
             "weight_map": {name: f for names, f in zip(plan, files) for name in names}}
    return json.dumps(index, indent=2, sort_keys=True) + "\n"


def _stale_weights(directory: str, files: list[str]) -> tuple[list[str], list[str]]:
    """What an earlier save left that this one does not write: shard files, and the other layout's file (the
    index, or a single model.safetensors, which loading would read before a new index)."""
    shards = [os.path.join(directory, n) for n in sorted(os.listdir(directory))
              if _SHARD_FILE.fullmatch(n) and n not in files]
    other = os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME if files == [SAFE_WEIGHTS_NAME] else SAFE_WEIGHTS_NAME)
    return [p for p in shards if os.path.isfile(p)], [other] if os.path.isfile(other) else []


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike,
                    state_dict: dict[str, torch.Tensor] | None = None,
                    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> None:
    """Write `config.json` (with `architectures`) and the weights: `model.safetensors`, or, when they take more
    than `max_shard_size` bytes, shards and `model.safetensors.index.json` as transformers writes them (see
    `shard_plan`). The weights are `state_dict` when given (see `state_dict_for_saving`).

    Everything is written to temporary files first, so a failure while writing (a full disk) leaves the old
    checkpoint; then renamed, the index last. Weights files of an earlier save that this one does not write
    are removed: the other layout's before the renames, stale shards after."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors = state_dict_for_saving(model, state_dict)
    # the dtype transformers reads (dtype="auto"): that of the weights written, not the one loaded
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    extra = {k: v for k, v in model.config.extra.items() if k != "torch_dtype"}
    extra["dtype"] = str(dtype).removeprefix("torch.")
    config = dataclasses.replace(model.config, architectures=[_class_name(model)], extra=extra)
    plan = shard_plan(tensors, max_shard_size)
    files = shard_names(len(plan))
    paths = [os.path.join(directory, f) for f in files] + [os.path.join(directory, CONFIG_NAME)]
    if len(files) > 1:
        paths.append(os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME))  # renamed last
    with atomic_paths(*paths) as tmps:
        for names, path, tmp in zip(plan, paths, tmps):
            _write_safetensors({n: tensors[n] for n in names}, path, tmp)
        config.to_json_file(tmps[len(plan)])
        if len(files) > 1:
            with open(tmps[-1], "w", encoding="utf-8") as f:
                f.write(_shard_index(model, tensors, plan, files))
        stale_shards, other_layout = _stale_weights(directory, files)
        for path in other_layout:  # before the renames: it must not outlive them and shadow the new files
            os.remove(path)
    for path in stale_shards:
        os.remove(path)


def _write_safetensors(tensors: dict[str, torch.Tensor], path: str, tmp: str) -> None:
    try:
        safetensors.torch.save_file(tensors, tmp, metadata={"format": "pt"})
    except safetensors.SafetensorError as e:  # a full disk
        raise OSError(f"{path}: not written: {e}") from None
    os.chmod(tmp, 0o666 & ~umask())  # safetensors writes it private (0600): an ordinary file


# ---------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """What `load_pretrained` did beyond a one-to-one load; kept as `model.load_report`."""

    source: str
    newly_initialized: list[str] = field(default_factory=list)  # absent optional parts, fresh init
    unused: list[str] = field(default_factory=list)             # checkpoint parts this model lacks, as stored
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, ckpt, model)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # legacy names, (old, new)

    def to_dict(self) -> dict[str, Any]:
        """transformers' `output_loading_info` dict: sets of names, (name, checkpoint, model shape) triples."""
        return {"missing_keys": set(self.newly_initialized), "unexpected_keys": set(self.unused),
                "mismatched_keys": set(self.mismatched), "error_msgs": []}

    @property
    def clean(self) -> bool:
        return not (self.newly_initialized or self.unused or self.mismatched)

    def __str__(self) -> str:
        parts = []
        if self.newly_initialized:
            parts.append(f"newly initialised (train before use): {_names(self.newly_initialized)}")
        if self.mismatched:
            parts.append("reinitialised for a shape mismatch: " + _names(
                [f"{k} (checkpoint {list(a)}, model {list(b)})" for k, a, b in self.mismatched]))
        if self.unused:
            parts.append(f"unused checkpoint weights: {_names(self.unused)}")
        return f"{self.source}: " + ("; ".join(parts) if parts else "all weights loaded")


class LoadWarning(UserWarning):
    """Some weights were freshly initialised or left unused while loading a checkpoint."""


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _model_prefix(model: torch.nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(model, prefix, None), torch.nn.Module) else ""


def _base_key(model: torch.nn.Module, key: str) -> str:
    prefix = _model_prefix(model)
    return key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key


def _unit_of(key: str, prefix: str) -> str | None:
    units = HEAD_UNITS + (f"{prefix}.{POOLER_UNIT}" if prefix else POOLER_UNIT,)
    return next((u for u in units if key == u or key.startswith(u + ".")), None)


def legacy_name(key: str) -> str:
    """`key` with `LEGACY_NAMES` applied: the name bertkit (and transformers) gives that weight."""
    for pattern, replacement in LEGACY_NAMES:
        key = pattern.sub(replacement, key)
    return key


def _normalise_keys(state: dict[str, torch.Tensor], model: torch.nn.Module,
                    report: LoadReport) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Legacy names, the base-model prefix added or stripped, ignorable entries dropped; with each new
    name's name as stored (where they differ).

    A task model (its base model is the child `bert`) reading a plain encoder checkpoint gets `bert.`
    added; a `BertModel` reading a task checkpoint gets it stripped (the head keys stay, unused).
    """
    renamed, stored = {}, {}
    for key, t in state.items():
        new = legacy_name(key)
        if new != key:
            report.renamed.append((key, new))
        renamed[new], stored[new] = t, key
    prefix = _model_prefix(model)  # "bert" for a task model, "" for the base model itself
    p = getattr(model, "base_model_prefix", "bert")
    has_prefix = any(k.startswith(p + ".") for k in renamed)
    out, names = {}, {}
    for key, t in renamed.items():
        original = stored[key]
        if prefix and not has_prefix and key.split(".", 1)[0] not in HEAD_NAMESPACES:
            key = f"{prefix}.{key}"
        elif not prefix and key.startswith(p + "."):
            key = key[len(p) + 1:]
        if _base_key(model, key) not in IGNORED_KEYS:
            out[key] = t
            if key != original:
                names[key] = original
    return out, names


def _beside_base_model(state: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    """The keys (legacy names applied) of a checkpoint that stores its encoder under the base-model prefix
    (`bert.`) which lie outside it: parts of another model built around that BERT, such as TinyBERT's
    distillation projections `fit_denses.N`. Like another task's head they are unused, as transformers leaves them;
    an unknown key inside `bert.` (or in a checkpoint without the prefix) stays an error."""
    p = getattr(model, "base_model_prefix", "bert")
    names = {legacy_name(k) for k in state}
    if not any(n.startswith(p + ".") for n in names):
        return set()
    return {n for n in names if not n.startswith(p + ".")}


def apply_config_overrides(config: BertConfig, overrides: dict[str, Any]) -> BertConfig:
    """A copy of `config` with BertConfig fields (and `num_labels`) replaced; validated."""
    if not overrides:
        return config
    unknown = sorted(set(overrides) - config.field_names())
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}: "
                        "not a BertConfig field nor a loading option")
    d = config.to_dict()
    d.update({k: v for k, v in overrides.items() if k != "num_labels"})
    if "id2label" in overrides and "label2id" not in overrides:
        d.pop("label2id", None)
    new = BertConfig.from_dict(d)
    if "num_labels" in overrides:
        new.num_labels = overrides["num_labels"]
    return new


def _mapped_device(device_map) -> torch.device:
    """The one device a transformers-style `device_map` names; a map of modules to devices is refused."""
    if isinstance(device_map, dict):
        raise ValueError("device_map: bertkit puts the whole model on one device; pass one device, "
                         "e.g. 'cuda' or 'cpu'")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map)


def _config_dtype(config: BertConfig) -> torch.dtype | None:
    """config.json's "dtype" (or its older name "torch_dtype"), when it names a floating-point torch dtype."""
    name = config.extra.get("dtype") or config.extra.get("torch_dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def _resolve_dtype(dtype, state: dict[str, torch.Tensor], config_dtype: torch.dtype | None = None
                   ) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":  # as transformers: config.json's dtype, else the checkpoint's
        return config_dtype or next((t.dtype for t in state.values() if t.is_floating_point()), None)
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def _record_dtype(model: torch.nn.Module) -> None:
    """config.dtype names the dtype the model was loaded in, as transformers sets it after from_pretrained (not
    config.json's; its older name torch_dtype, when config.json had it, too). save_pretrained writes the dtype of
    the weights it saves instead."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return
    name = str(dtype).removeprefix("torch.")
    model.config.extra["dtype"] = name
    if "torch_dtype" in model.config.extra:
        model.config.extra["torch_dtype"] = name


# transformers' loading options that change nothing here: bertkit only reads local files, runs no code from a
# checkpoint, and picks its attention kernel itself (the same numbers either way).
NO_EFFECT_OPTIONS = frozenset({"local_files_only", "trust_remote_code", "attn_implementation", "low_cpu_mem_usage",
                               "token", "force_download", "resume_download", "proxies"})


def load_pretrained(cls, name_or_path: str | os.PathLike, *, config: BertConfig | None = None,
                    dtype: torch.dtype | str | None = None, ignore_mismatched_sizes: bool = False,
                    revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                    device_map: str | torch.device | None = None, subfolder: str = "",
                    variant: str | None = None, output_loading_info: bool = False,
                    use_safetensors: bool | None = None, **config_overrides):
    """Build `cls(config)` and load the checkpoint at `name_or_path` into it; returns it in eval mode.

    Strict: missing, unexpected and mis-shaped weights raise one ValueError listing all three.
    Allowed, and reported in `model.load_report` (a `LoadReport`) plus one `LoadWarning`:
    an optional part (task head, pooler) absent from the checkpoint keeps its fresh initialisation;
    checkpoint parts the model lacks (another task's head) are unused; with
    `ignore_mismatched_sizes=True` mis-shaped weights keep their fresh initialisation.
    `revision` picks a hub-cache snapshot of a model name, `cache_dir` another hub cache (see
    `resolve_model_dir`). As in transformers: `torch_dtype` is another name of `dtype`, and `device_map`
    (one device: "cpu", "cuda", "cuda:1"; "auto" for the GPU when there is one) moves the model there;
    `NO_EFFECT_OPTIONS` are accepted. Also as there: `subfolder` (the checkpoint in a folder of the model
    directory), `variant` (`model.<variant>.safetensors`), `use_safetensors` (True: only safetensors, False:
    only .bin), and `output_loading_info=True`, which returns
    `(model, info)` with info's keys "missing_keys" (newly initialised), "unexpected_keys" (unused),
    "mismatched_keys" and "error_msgs". `model.config` is a copy whose `dtype` names the dtype loaded in.
    """
    if "torch_dtype" in config_overrides:
        if dtype is not None:
            raise TypeError("pass dtype or torch_dtype (its older name), not both")
        dtype = config_overrides.pop("torch_dtype")
    for name in NO_EFFECT_OPTIONS & set(config_overrides):
        config_overrides.pop(name)
    directory = resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir, subfolder=subfolder)
    config_source = "the config given"
    if config is None:
        config_source = config_file(directory)
        config = BertConfig.from_json_file(config_source)
    config = apply_config_overrides(config, config_overrides)
    path = find_weights_file(directory, variant, use_safetensors)
    state = read_weights(path)
    if not ignore_mismatched_sizes:  # asked to re-initialise what differs: the config's sizes are wanted
        check_config_sizes(config, state, path, config_source, frozenset(config_overrides))
    dtype = _resolve_dtype(dtype, state, _config_dtype(config))

    # the model's own copy, as transformers': loading records the loaded dtype in it (and may untie), which must
    # not change the caller's config
    config = copy.deepcopy(config)
    model = load_state(cls(config), state, path, ignore_mismatched_sizes=ignore_mismatched_sizes)
    if dtype is not None:
        model.to(dtype=dtype)
    _record_dtype(model)
    if device_map is not None:
        model.to(_mapped_device(device_map))
    model.name_or_path = os.fspath(name_or_path)
    if not model.load_report.clean:
        warn(str(model.load_report), LoadWarning)
    if output_loading_info:
        return model.eval(), model.load_report.to_dict()
    return model.eval()


def _can_take(param: torch.Tensor, t: torch.Tensor, taken: set[int]) -> bool:
    """Whether checkpoint tensor `t` can become `param` rather than be copied into it: same dtype, shape and
    device, and alone in its memory (not a slice of a larger storage, nor a storage another parameter took:
    a .bin may store two names in one). safetensors' tensors map the file, so the weights are read from it when
    first used and the pages are the page cache's, shared between processes until one writes (copy on write; the
    file never changes): loading holds the weights once, not the file and a copy (`bench/memory_cpu.py`)."""
    storage = t.untyped_storage()
    return (t.dtype == param.dtype and t.shape == param.shape and t.device == param.device
            and t.layout == torch.strided and t.is_contiguous()
            and storage.nbytes() == t.numel() * t.element_size() and storage.data_ptr() not in taken)


# The MLM head's two names of its one output bias; transformers' forward reads the decoder's.
MLM_BIAS, MLM_DECODER_BIAS = "cls.predictions.bias", "cls.predictions.decoder.bias"


def _stored_apart(state: dict[str, torch.Tensor], a: str, b: str) -> bool:
    """Both names stored, of one shape, with different values."""
    x, y = state.get(a), state.get(b)
    return x is not None and y is not None and x.shape == y.shape and not torch.equal(x, y)


def _untie_if_stored_apart(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A config that ties the MLM decoder to the word embeddings, with a checkpoint that stores the decoder
    with other values (e.g. written after transformers' set_input_embeddings): transformers 5 then leaves the
    two apart, each as stored, with a warning; so does bertkit, and its config says so from then on.

    The two biases stored with different values: transformers 5 unties them too (warning), its logits read the
    decoder's and its cls.predictions.bias keeps values nothing reads. bertkit keeps one bias, loaded from the
    decoder's (see `load_state`), so the logits agree and a save writes the bias that was used."""
    if not getattr(model.config, "tie_word_embeddings", False) or not hasattr(model, "untied_names"):
        return
    if _stored_apart(state, MLM_BIAS, MLM_DECODER_BIAS):
        warn(f"{source}: the config ties {MLM_DECODER_BIAS} to {MLM_BIAS}, but the checkpoint stores them with "
             f"different values: loaded {MLM_DECODER_BIAS}, the one transformers' logits use")
    if not _stored_apart(state, "cls.predictions.decoder.weight",
                         f"{model.base_model_prefix}.embeddings.word_embeddings.weight"):
        return
    warn(f"{source}: the config ties the MLM decoder to the word embeddings, but the checkpoint stores it with "
         "other values: loaded untied (tie_word_embeddings false), each as stored, as transformers does")
    model.config.tie_word_embeddings = False
    pred = model.cls.predictions
    pred.decoder.weight = torch.nn.Parameter(pred.decoder.weight.detach().clone())
    model.tie_weights()


def _tied_names(model: torch.nn.Module) -> dict[int, list[str]]:
    """Each parameter's names by its id: several for a tied parameter, any one of which in the checkpoint provides
    all."""
    aliases: dict[int, list[str]] = collections.defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases[id(p)].append(name)
    return aliases


def _provided_names(state: dict[str, torch.Tensor], aliases: dict[int, list[str]]) -> set[str]:
    """The names the checkpoint fills: its own, and every name of a tied parameter it stores under one of them."""
    provided = set(state)
    for names in aliases.values():
        if provided.intersection(names):
            provided.update(names)
    return provided


def _fresh_or_missing(absent: list[str], state: dict[str, torch.Tensor], prefix: str, report: LoadReport) -> list[str]:
    """Optional parts wholly absent from the checkpoint keep their fresh initialisation (reported as newly
    initialised); returns the rest of `absent`, missing."""
    present_units = {_unit_of(k, prefix) for k in state} - {None}
    missing = []
    for k in absent:
        unit = _unit_of(k, prefix)
        if unit is not None and unit not in present_units:
            report.newly_initialized.append(k)
        else:
            missing.append(k)
    return missing


def _unused_or_unexpected(extra: list[str], prefix: str, beside: set[str], stored_names: dict[str, str],
                          report: LoadReport) -> list[str]:
    """Another task's head (or a pooler this model has not) is unused, reported as the checkpoint names it;
    returns the rest of `extra`, unexpected."""
    def is_head(k: str) -> bool:
        return _unit_of(k, prefix) is not None or k.split(".", 1)[0] in HEAD_NAMESPACES or k in beside

    report.unused = [stored_names.get(k, k) for k in extra if is_head(k)]
    return [k for k in extra if not is_head(k)]


def _mis_shaped(state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]
                ) -> list[tuple[str, tuple, tuple]]:
    """(key, checkpoint shape, model shape) of each weight the checkpoint stores in another shape than the model's."""
    return [(k, tuple(state[k].shape), tuple(v.shape))
            for k, v in model_state.items() if k in state and state[k].shape != v.shape]


def _unloadable(source: str, missing: list[str], unexpected: list[str],
                mis_shaped: list[tuple[str, tuple, tuple]]) -> ValueError:
    """One error naming all that stops the load, so one run shows every key to fix."""
    parts = []
    if missing:
        parts.append(f"{_count(len(missing), 'missing key')}: {_names(missing)}")
    if unexpected:
        parts.append(f"{_count(len(unexpected), 'unexpected key')}: {_names(unexpected)}")
    if mis_shaped:
        parts.append(f"{_count(len(mis_shaped), 'mis-shaped key')}: " + _names(
            [f"{k} (checkpoint {list(a)}, model {list(b)})" for k, a, b in mis_shaped]))
    return ValueError(f"{source}: " + "; ".join(parts))


def _second_names(aliases: dict[int, list[str]], state: dict[str, torch.Tensor]) -> set[str]:
    """The names not loaded of a tied parameter the checkpoint stores under several: it takes one, the tie's source
    (the first name), but the MLM bias the decoder's, which transformers' forward reads, tied or not (see
    `_untie_if_stored_apart`)."""
    preferred = {MLM_DECODER_BIAS}
    skip = set()
    for names in aliases.values():
        present = [n for n in names if n in state]
        kept = next((n for n in present if n in preferred), present[0] if present else None)
        skip.update(n for n in present if n != kept)
    return skip


def _take_or_copy(model: torch.nn.Module, state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor],
                  skip: set[str]) -> set[int]:
    """Each checkpoint tensor the model has (and `skip` lacks) taken as its parameter where it can be (see
    `_can_take`), else copied in; returns the ids of the parameters loaded."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded, taken = set(), set()
    with torch.no_grad():
        for k, t in state.items():
            if k not in model_state or k in skip:
                continue
            p = params.get(k)
            if p is not None and _can_take(p, t, taken):
                p.data = t   # the same Parameter (ties and optimizers keep it), the checkpoint's memory
                taken.add(t.untyped_storage().data_ptr())
            else:
                model_state[k].copy_(t)
            if p is not None:
                loaded.add(id(p))
    return loaded


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, *,
               ignore_mismatched_sizes: bool = False) -> torch.nn.Module:
    """Put the checkpoint tensors `state` (read from `source`, named in the error) into `model`, with
    `load_pretrained`'s rules; sets `model.load_report` and returns `model`. A tensor of the parameter's dtype,
    shape and device that owns its memory becomes the parameter (see `_can_take`); the others are copied in.
    So `state` must be the caller's to give: read from a file, not another model's live tensors."""
    report = LoadReport(source=source)
    prefix = _model_prefix(model)
    beside = _beside_base_model(state, model)
    state, stored_names = _normalise_keys(state, model, report)
    _untie_if_stored_apart(model, state, source)
    model_state = {k: v for k, v in model.state_dict().items() if _base_key(model, k) not in IGNORED_KEYS}
    aliases = _tied_names(model)

    provided = _provided_names(state, aliases)
    missing = _fresh_or_missing([k for k in model_state if k not in provided], state, prefix, report)
    unexpected = _unused_or_unexpected([k for k in state if k not in model_state], prefix, beside, stored_names,
                                       report)
    mis_shaped = _mis_shaped(state, model_state)
    if ignore_mismatched_sizes:
        report.mismatched, mis_shaped = mis_shaped, []
    if missing or unexpected or mis_shaped:
        raise _unloadable(source, missing, unexpected, mis_shaped)

    skip = {k for k, _, _ in report.mismatched} | _second_names(aliases, state)
    loaded = _take_or_copy(model, state, model_state, skip)
    # the rest (a new head, weights of mismatched sizes): initialised now, drawing random numbers for them alone
    if hasattr(model, "init_unloaded"):
        model.init_unloaded(loaded)
    model.load_report = report
    return model
