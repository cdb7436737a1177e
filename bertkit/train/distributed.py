"""Everything torchrun in one place: rank, world, device, DDP wrap/unwrap, reductions, printing on rank 0.

Launch with `torchrun --nproc-per-node N script.py` (or `python -m torch.distributed.run ...`): torchrun sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and `setup()` reads them. A plain `python script.py`
is a world of one: no process group, no DDP, the same code path otherwise. The model code knows nothing of this.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

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

    The device is `cuda:LOCAL_RANK` when CUDA is available, else the CPU (or `device` when given). The backend
    is nccl on CUDA and gloo on the CPU unless `backend` says otherwise. Calling it again returns the same
    answer; `cleanup()` undoes it.
    """
    global _info
    if _info is not None:
        return _info
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if device is not None:
        dev = torch.device(device)
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
    _info = DistInfo(rank, world, local_rank, dev, chosen)
    return _info


def info() -> DistInfo:
    """The current setup (a world of one on the CPU/GPU 0 if `setup()` was not called)."""
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


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP (or torch.compile's wrapper); the module itself otherwise."""
    while True:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


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


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        if device().type == "cuda":
            dist.barrier(device_ids=[device().index])
        else:
            dist.barrier()


def cleanup() -> None:
    """Leave the process group (if this module joined one) and forget the setup."""
    global _info
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _info = None
