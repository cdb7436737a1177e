"""Everything torchrun in one place: rank, world, device, DDP wrap, FSDP sharding, reductions, printing
on rank 0.

Launch with `torchrun --nproc-per-node N script.py` (or `python -m torch.distributed.run ...`): torchrun sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and `setup()` reads them. A plain `python script.py`
is a world of one: no process group, no DDP, the same code path otherwise. The model code knows nothing of this.
Ranks are global (RANK: data shards, seeds, rank 0's printing and saving); LOCAL_RANK only picks this machine's GPU.
On several machines (`--nnodes`) rank 0 writes the run directory that every rank reads, so it must be one they
share: `check_shared_dir` says so at once where it is not.

Two ways to spread training over the ranks:
- DDP (`wrap`): every rank holds the whole model and optimizer state; gradients are all-reduced.
- FSDP (`shard`, PyTorch's FSDP2 `fully_shard`): each rank holds 1/world of every parameter, gradient and
  optimizer state; a layer's parameters are all-gathered just before it runs and freed after. Parameters become
  DTensors, so saving gathers them (`full_state_dict`, `full_optimizer_state`: collective, every rank calls) into
  the same plain tensors a single process saves, and loading cuts plain tensors back into shards
  (`shard_state_like`, `shard_optimizer_state`): a checkpoint does not depend on how it was trained.
"""
from __future__ import annotations

import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None   # None: a world of one, no process group


_info: DistInfo | None = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def setup(backend: str | None = None, device: str | torch.device | None = None) -> DistInfo:
    """Read the torchrun environment, pick the device and (for a world > 1) join the process group.

    The device is `cuda:LOCAL_RANK` when CUDA is available, else the CPU (or `device` when given; a bare "cuda"
    means this rank's GPU, `cuda:LOCAL_RANK`). The backend
    is nccl on CUDA and gloo on the CPU unless `backend` says otherwise. Calling it again returns the same
    answer; `cleanup()` undoes it.
    """
    global _info
    if _info is not None:
        return _info
    world = _env_int("WORLD_SIZE", 1)
    if world > 1 and not os.environ.get("RANK"):
        raise ValueError(f"WORLD_SIZE={world} but no RANK: launch the processes with torchrun, which sets both")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device {device!r} is not a torch device, e.g. cpu, cuda or cuda:1") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this machine has no CUDA GPU that torch can use")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    chosen = None
    if world > 1:
        chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
        if not dist.is_initialized():
            dist.init_process_group(chosen, rank=rank, world_size=world)
        global _waiting_group
        _waiting_group = dist.new_group(backend="gloo", timeout=WAIT_FOR_MAIN)
    _info = DistInfo(rank, world, local_rank, dev, chosen)
    return _info


# How long the other ranks wait for rank 0's one-off work in `on_main` (a vocabulary, data shards from a big
# corpus), on a gloo group of their own: the process group's timeout (10 minutes under NCCL) stays short.
WAIT_FOR_MAIN = timedelta(hours=24)
_waiting_group = None
T = TypeVar("T")


class RankZeroError(ValueError):
    """Rank 0's failure in `on_main`, as the other ranks raise it (rank 0 raises the original): the CLI prints
    it once, on rank 0, and exits every rank with the same status."""


def on_main(fn: Callable[[], T]) -> T | None:
    """`fn()` on rank 0 alone (work that writes shared files, or checks them), the other ranks waiting for it.
    A ValueError or OSError there is raised on rank 0, and as a `RankZeroError` with its message on the others,
    so that each exits instead of dying in its next collective. Returns what `fn` returns on rank 0, else None."""
    if not is_distributed():
        return fn()
    result = failure = None
    if is_main():
        try:
            result = fn()
        except (ValueError, OSError) as e:
            failure = e
    box = [None if failure is None else str(failure)]
    dist.broadcast_object_list(box, src=0, group=_waiting_group)
    if failure is not None:
        raise failure
    if box[0] is not None:
        raise RankZeroError(box[0])
    return result


def from_main(fn: Callable[[], T]) -> T:
    """`on_main(fn)` with its (picklable) result on every rank: for a decision the ranks must take alike, such as
    the checkpoint a resume continues, which ranks looking each for themselves could take differently (a directory
    of the same name on each machine's own disk) and then wait for each other in different collectives."""
    result = on_main(fn)
    if not is_distributed():
        return result
    box = [result]
    dist.broadcast_object_list(box, src=0, group=_waiting_group)
    return box[0]


# How long a rank looks for the file rank 0 wrote before it decides it cannot see it: some network filesystems
# show another machine's new file a moment late. Only a failing check waits this long.
SHARED_WAIT_S = 5.0


def check_shared_dir(directory) -> None:
    """Every rank must see `directory` as rank 0 does: rank 0 writes there what the others read (pre-training's
    data, the checkpoint a resume loads), so on several machines it must be a directory they share (a network
    filesystem), not a local one of the same name on each. Rank 0 writes a file there and each rank looks for it;
    if some cannot see it, a ValueError naming them, their hosts and paths, raised on rank 0 and on the first of
    them on each host (each machine's log says why; the other ranks raise a quiet `RankZeroError`), at once
    instead of a missing file later or a hang. Collective; nothing to check in a world of one."""
    if not is_distributed():
        return
    directory = Path(directory)
    name = from_main(lambda: _write_marker(directory))
    marker = directory / name
    try:
        here = (is_main() or _appears(marker), socket.gethostname(), os.path.abspath(directory))
        views = [None] * world_size()
        dist.all_gather_object(views, here, group=_waiting_group)
    finally:
        if is_main():
            marker.unlink(missing_ok=True)
    blind = [r for r, (seen, _, _) in enumerate(views) if not seen]
    if not blind:
        return
    groups: dict[tuple[str, str], list[str]] = {}  # (host, path) -> its blind ranks: a machine's ranks in one entry
    for r in blind:
        groups.setdefault(views[r][1:], []).append(str(r))
    where = [f"rank{'s' * (len(rs) > 1)} {', '.join(rs)} on {host} ({path})" for (host, path), rs in groups.items()]
    message = (f"{directory}: {', '.join(where)} cannot see the file {name} that rank 0 on {views[0][1]} "
               f"({views[0][2]}) wrote there; every rank reads the files rank 0 writes in it (data, checkpoints), so "
               "under torchrun on several machines it must be one directory that they all share (a network "
               "filesystem), not a local directory on each")
    first_per_host = {views[r][1]: r for r in reversed(blind)}  # one line per machine's log, not one per process
    if is_main() or rank() in first_per_host.values():
        raise ValueError(message)
    raise RankZeroError(message)


def _write_marker(directory: Path) -> str:
    """A new file in `directory` (written whole, by a rename), for `check_shared_dir`; its name."""
    from ..io import write_text_atomic
    name = f".shared-check-{uuid.uuid4().hex}"
    write_text_atomic(directory / name, f"written by rank 0 on {socket.gethostname()}; removed after the check\n")
    return name


def _appears(path: Path) -> bool:
    """Whether `path` exists, looking again for up to SHARED_WAIT_S."""
    deadline = time.monotonic() + SHARED_WAIT_S
    while not path.is_file():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


# What gloo's TCP transport raises (a RuntimeError from the collective, message prefixed by its source line) when
# the peer at the other end of a socket has gone: its process exited (EOF) or was killed (a reset). A hung peer
# (a timeout) or any other error is not this.
_PEER_GONE = re.compile(r"gloo/transport/\w+/pair\.cc:\d+\] (?:Connection closed by peer |"
                        r"(?:Read error|writev) [^\n]*: (?:Connection reset by peer|Broken pipe))")


def peer_failed(exc: BaseException) -> bool:
    """True when `exc` is a collective failing on this rank only because another rank died (which says why, or
    torchrun does): the CLI then stops this rank without its traceback, which would bury the real error."""
    return is_distributed() and isinstance(exc, RuntimeError) and _PEER_GONE.search(str(exc)) is not None


def info() -> DistInfo:
    """The current setup; the first call runs `setup()` (under torchrun, that joins the process group)."""
    return _info if _info is not None else setup()


def rank() -> int:
    return _info.rank if _info is not None else 0


def world_size() -> int:
    return _info.world_size if _info is not None else 1


def is_distributed() -> bool:
    return _info is not None and _info.world_size > 1


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank() == 0


def device() -> torch.device:
    return info().device


def print0(*args, **kwargs) -> None:
    """`print` on rank 0 only, flushed."""
    if is_main():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def wrap(module: nn.Module, **ddp_kwargs) -> nn.Module:
    """DistributedDataParallel around `module` in a world > 1 (on this rank's device), else `module` itself."""
    if not is_distributed():
        return module
    dev = device()
    if dev.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [dev.index])
        ddp_kwargs.setdefault("output_device", dev.index)
    return DistributedDataParallel(module, **ddp_kwargs)


def shard(root: nn.Module, units: Iterable[nn.Module], param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2 in place: `fully_shard` each of `units` (e.g. the encoder layers: each is gathered and freed on its
    own), then `root`, which owns every other parameter (embeddings, heads, tied weights) and is the module
    whose forward the training step calls. In a world of one, `root` is returned untouched.

    `param_dtype` (bf16 training): parameters are gathered and used in that dtype, half the bytes of fp32, while
    each rank's shard, the optimizer and the gradient reduction stay fp32 (FSDP2's MixedPrecisionPolicy, as
    torchtitan trains). Without it they are gathered in fp32, and autocast alone lowers the matmuls.

    Build the optimizer after this: sharding replaces the parameters. Modules called outside `root`'s forward
    (an evaluation calling the model directly) need `gathered(root)` around them."""
    units = list(units)
    if not units:
        raise ValueError(f"shard: {type(root).__name__} gives no units to shard")
    if not is_distributed():
        return root
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device().type, (world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    with torch.no_grad():  # every rank starts from rank 0's weights, as under DDP
        for t in list(root.parameters()) + list(root.buffers()):
            dist.broadcast(t.data, src=0)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(root, mesh=mesh, mp_policy=policy)
    return root


def _is_dtensor(t) -> bool:
    # duck typing: importing torch.distributed.tensor would slow down `import bertkit` for every user
    return hasattr(t, "full_tensor") and hasattr(t, "placements")


def is_sharded(module: nn.Module) -> bool:
    """True when `module` holds FSDP-sharded (DTensor) parameters."""
    return any(_is_dtensor(p) for p in module.parameters())


@contextmanager
def gathered(root: nn.Module):
    """Gather `root`'s own (non-unit) parameters for the block, so its submodules can be called directly;
    the units still gather themselves in their forward. Collective (every rank, the same forwards).
    A no-op for an unsharded module."""
    if not is_sharded(root):
        yield root
        return
    root.unshard()
    try:
        yield root
    finally:
        root.reshard()


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with every sharded tensor gathered whole, on the CPU. Collective when sharded
    (every rank calls, every rank gets it); tied entries stay one tensor. Unsharded: the state dict itself."""
    state = module.state_dict()
    if not any(_is_dtensor(t) for t in state.values()):
        return state
    # `state_dict()` gives each name a new tensor object, so ties are read off the parameters: names of one
    # Parameter (the MLM decoder and the word embeddings) share a key, the same on every rank
    tied = {name: id(p) for name, p in module.named_parameters(remove_duplicate=False)}
    out: dict[str, torch.Tensor] = {}
    done: dict[int | str, torch.Tensor] = {}
    for name, t in state.items():  # the same order on every rank
        key = tied.get(name, name)
        if key not in done:
            done[key] = t.full_tensor().cpu() if _is_dtensor(t) else t.detach().cpu()
        out[name] = done[key]
    return out


def shard_state_like(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """Plain (whole) tensors of `state` cut into the shards of the DTensors of the same name in `reference`
    (a sharded module's `state_dict()`); the others as they are. Every rank must hold the whole `state`."""
    if not any(_is_dtensor(t) for t in reference.values()):
        return state
    from torch.distributed.tensor import distribute_tensor
    out = {}
    for name, t in state.items():
        ref = reference.get(name)
        if ref is not None and _is_dtensor(ref) and not _is_dtensor(t):
            if tuple(t.shape) != tuple(ref.shape):
                raise ValueError(f"{name}: shape {tuple(t.shape)} does not match the model's {tuple(ref.shape)}")
            t = distribute_tensor(t.to(ref.device), ref.device_mesh, ref.placements, src_data_rank=None)
        out[name] = t
    return out


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list:
    """The parameters in the order `optimizer.state_dict()` numbers them."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with sharded state tensors (exp_avg ...) gathered whole, on the CPU: the same
    dict a single process saves. Collective when the parameters are sharded."""
    sd = optimizer.state_dict()
    if not any(_is_dtensor(p) for p in _optimizer_params(optimizer)):
        return sd
    state = {i: {k: (v.full_tensor().cpu() if _is_dtensor(v) else v) for k, v in per.items()}
             for i, per in sorted(sd["state"].items())}  # sorted: the same collectives in the same order
    return {**sd, "state": state}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> dict:
    """A whole optimizer state dict (`full_optimizer_state`, or a single process's) cut into the shards of
    `optimizer`'s parameters, ready for `optimizer.load_state_dict`."""
    params = _optimizer_params(optimizer)
    if not any(_is_dtensor(p) for p in params):
        return sd
    from torch.distributed.tensor import distribute_tensor
    state = {}
    for i, per in sd["state"].items():
        p = params[int(i)]
        state[i] = {k: (distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                        if _is_dtensor(p) and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape)
                        and v.dim() > 0 else v)
                    for k, v in per.items()}
    return {**sd, "state": state}


def save_pretrained(model: nn.Module, directory) -> None:
    """`model.save_pretrained(directory)` on rank 0. Collective when the model is sharded: every rank must
    call it, the parameters are gathered and rank 0 writes them."""
    if is_sharded(model):
        from ..hub import save_pretrained as save
        state = full_state_dict(model)
        if is_main():
            save(model, directory, state_dict=state)
    elif is_main():
        model.save_pretrained(directory)


def all_reduce_sum(x):
    """Sum across ranks. A tensor gives a new tensor; a dict of tensors / numbers gives a dict of the same
    keys: tensors come back as float64 tensors on this rank's device, Python ints as ints, floats as floats.

    One collective for a whole dict (values are packed into one float64 vector, exact for integers < 2**53).
    In a world of one the values come back unchanged (tensors cloned).
    """
    if isinstance(x, torch.Tensor):
        out = x.detach().clone()
        if is_distributed():
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out
    if not isinstance(x, dict):
        raise TypeError(f"all_reduce_sum takes a tensor or a dict, got {type(x).__name__}")
    if not x:
        return {}
    if not is_distributed():
        return {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in x.items()}
    dev = device()
    keys = list(x)
    flat = torch.stack([torch.as_tensor(x[k], dtype=torch.float64, device=dev).detach().reshape(())
                        for k in keys])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out = {}
    for i, k in enumerate(keys):
        v = x[k]
        if isinstance(v, torch.Tensor):
            out[k] = flat[i]
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"all_reduce_sum: value of {k!r} is a {type(v).__name__}, not a number")
        elif isinstance(v, int):
            out[k] = int(flat[i].item())
        else:
            out[k] = float(flat[i].item())
    return out


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list in a world of one)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


_together = False


@contextmanager
def together():
    """Marks a block every rank runs with the same calls (the trainer's evaluation): inside it `split_map`
    shares its work among the ranks. Outside it each rank does all of its own work, so a function that uses
    `split_map` is safe to call on one rank alone."""
    global _together
    before, _together = _together, True
    try:
        yield
    finally:
        _together = before


def split_map(fn, items: list) -> list:
    """`fn(items)` gives one result per item. Inside `together()` with several ranks, rank r runs `fn` on items
    r, r + world, ... (topped up with copies of item 0 to the same count on every rank, since a sharded model
    needs the same forward calls everywhere) and every rank gets every result, in order. Otherwise `fn(items)`."""
    if not (_together and is_distributed()) or not items:
        return list(fn(items))
    w, r = world_size(), rank()
    mine = items[r::w]
    per = -(-len(items) // w)
    results = list(fn(mine + [items[0]] * (per - len(mine))))[:len(mine)]
    out: list = [None] * len(items)
    for k, part in enumerate(all_gather_object(results)):
        out[k::w] = part
    return out


def barrier() -> None:
    if is_distributed():
        if device().type == "cuda":
            dist.barrier(device_ids=[device().index])
        else:
            dist.barrier()


def exit_if_grouped(status: int) -> None:
    """Exit at once, streams flushed, with `status` if this process is still in a process group: a rank that
    fails leaves without `cleanup()` (the others are not at its barrier), and tearing a live gloo group down at
    interpreter exit can abort the process ("terminate called without an active exception", SIGABRT), so that
    torchrun would report the abort, not the status (3 in 20 runs of a refused `finetune` under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def cleanup() -> None:
    """Leave the process group (if this module joined one) and forget the setup. The ranks leave together
    (a barrier first): one tearing its group down while another still works on it can abort the process."""
    global _info, _waiting_group
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()
    _info = _waiting_group = None
