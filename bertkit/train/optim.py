"""Optimizers for BERT: AdamW parameter groups, LAMB, the linear warm-up/decay schedule.

Weight decay skips exactly the parameters transformers' Trainer skips (`Trainer.get_decay_parameter_names`):
those inside an `nn.LayerNorm` and those whose lower-cased name contains `bias`, `layernorm`, `rmsnorm`, a
`norm` component or `_norm` at the end of one. On BERT that is every bias and LayerNorm weight; the
embedding matrices are decayed (as in google-research/bert and NVIDIA's recipe). A 1-D parameter with
another name (a learned scale) is decayed, as in transformers. A tied parameter (the MLM decoder sharing
the word embeddings) is one tensor and is listed once.

Deliberate differences from what BERT users compare with:
- google-research/bert's AdamWeightDecayOptimizer has no bias correction (for a steady gradient its step is
  (1 - 0.9^t) / sqrt(1 - 0.999^t) times torch's: 3.2x at t = 1, 6.6x at 12, 1.26x at 1000), and its schedule
  decays from the origin, `init_lr * (1 - step / total)` after warm-up (a drop at the end of warm-up).
  Here AdamW is torch's, with bias correction, and `linear_schedule` is transformers' (from the peak at
  `warmup_steps` down to 0 at `total_steps`). google's epsilon (1e-6) and weight decay (0.01) are bertkit's
  defaults (transformers': 1e-8 and 0).
- Only the linear schedule (transformers' default `lr_scheduler_type`); no cosine or constant schedule.
- Warm-up longer than the run is refused (transformers' schedule would go on climbing past `total_steps`).
- NVIDIA's FusedLAMB clips the global gradient norm itself (`max_grad_norm=1.0`: g / (norm / 1.0) when the norm
  is above 1); here the trainer clips it (`clip_grad_norm_`, g * 1.0 / (norm + 1e-6)) before `Lamb.step`. The
  scales differ by a factor 1 - 1e-6 / norm that changes from step to step, so Adam's normalisation does not
  cancel it exactly: 4e-8 relative after 20 steps of a small model, below float32 rounding.
- Each tensor counts its own steps (as torch's optimizers do); FusedLAMB counts per group, every `step`, so a
  tensor whose gradient is None for k steps (frozen, unused) then takes its first step with the bias correction
  of step k + 1: 0.58 times bertkit's Adam step for k = 3. A zero gradient counts as a step in both.
  `Lamb.load_state_dict` takes FusedLAMB's state dict (NVIDIA's recipe checkpoints `optimizer.state_dict()`):
  each tensor without a `step` of its own takes its group's, the steps taken so far.
- The trainer logs the learning rate each logged step was taken with; transformers' Trainer logs the next one.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..checks import is_int

OPTIMIZERS = ("adamw", "lamb")


_NO_DECAY_NAMES = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")  # transformers'


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: `decay` (matrices and embeddings, with `weight_decay`) and `no_decay`
    (biases and LayerNorm weights, with 0). Each group carries `group_name` and the parameter `names`
    (strings, so optimizer state dicts stay loadable with `weights_only=True`). Frozen parameters are left
    out; a parameter reachable under several names (a tie) appears once, under its first name.
    """
    groups = {"decay": ([], []), "no_decay": ([], [])}
    norms = tuple(f"{n}." for n, m in model.named_modules(remove_duplicate=False)
                  if n and isinstance(m, nn.LayerNorm))
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        no_decay = name.startswith(norms) or _NO_DECAY_NAMES.search(name.lower())
        params, names = groups["no_decay" if no_decay else "decay"]
        params.append(p)
        names.append(name)
    out = []
    for group_name, (params, names) in groups.items():
        if params:
            out.append({"params": params, "names": names, "group_name": group_name,
                        "weight_decay": weight_decay if group_name == "decay" else 0.0})
    return out


class Lamb(Optimizer):
    """LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76 Minutes"),
    with the bias correction and decoupled weight decay of NVIDIA's FusedLAMB:

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * w
        w = w - lr * r * u,      r = ||w|| / ||u||  (per parameter tensor; r = 1 when either norm is 0)

    Choice: like FusedLAMB's default (`use_nvlamb=False`), the trust ratio applies only to groups with a
    non-zero weight decay; biases and LayerNorm weights (the no-decay group) take plain Adam steps (r = 1). (The
    paper's algorithm adapts every layer, as `use_nvlamb=True` does.) Gradient clipping is left to the caller
    (the trainer clips the global norm before `step`).

    The arithmetic is in float32 at least, the moments are kept in the parameter's dtype (FusedLAMB's kernel
    does both; torch's `load_state_dict` casts the moments to it anyway). Keep the parameters in float32, as the
    trainer does under autocast: in float16 the second moment underflows to 0 for small gradients (|g| < 8e-3 at
    the first step, where it is g^2 / 1000), which then take steps of many times lr (15 lr a step in the test);
    in bfloat16 it cannot decay (0.999 v rounds back to v).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01):
        if lr < 0:
            raise ValueError(f"Lamb: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Lamb: betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"Lamb: eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"Lamb: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        """One tensor's step, computed in float32 at least (as FusedLAMB's kernel): in float16 (1 - b2) g^2
        underflows to 0 for |g| < 8e-3, and the step would be lr * m / eps instead of about lr."""
        if p.grad.is_sparse:
            raise RuntimeError("Lamb does not support sparse gradients")
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)  # on the CPU, whatever p's device
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = int(state["step"].item())  # a CPU tensor (see `load_state_dict`): no wait for the device
        acc = torch.promote_types(p.dtype, torch.float32)
        g = p.grad.to(acc)
        m, v = state["exp_avg"].to(acc), state["exp_avg_sq"].to(acc)  # the state itself when already acc
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        _store(state["exp_avg"], m)
        _store(state["exp_avg_sq"], v)
        update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt_().add_(eps))
        w = p.to(acc)
        if wd != 0.0:
            update.add_(w, alpha=wd)
            update.mul_(_trust_ratio(w, update))
        w.add_(update, alpha=-lr)
        _store(p, w)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader moves the moments to each parameter's device but leaves `step` where the dict has it:
        on the GPU after `torch.load(..., map_location="cuda")`, where reading it would wait for the device once
        per tensor per step. Here each becomes a new float32 CPU tensor (from a plain number too, as some LAMB
        checkpoints hold), read once now.

        Also takes apex FusedLAMB's state dict, which counts steps per group (`group["step"]`, an int; a
        one-element int tensor in DeepLearningExamples' FusedLAMBAMP) and keeps only `exp_avg` and `exp_avg_sq`
        per tensor: a tensor without a step takes its group's, which FusedLAMB raises before each update, so it
        is the number of steps taken, as Lamb's. The group's count is then dropped (it would go stale); its other
        keys (`bias_correction`, `grad_averaging`, `max_grad_norm`) stay, unused. The dict is checked before
        anything is loaded, so a refused one leaves the optimizer as it was."""
        steps = _saved_steps(self.param_groups, state_dict)
        super().load_state_dict(state_dict)  # says what differs when the groups do not match (steps is None)
        for group in self.param_groups:
            group.pop("step", None)
        for p, step in (steps or {}).items():
            self.state[p]["step"] = torch.tensor(step, dtype=torch.float32)


def _saved_steps(groups: list[dict], state_dict: dict) -> dict[torch.Tensor, float] | None:
    """Each parameter's step count in `state_dict` (its own, else its group's), after checking its moments;
    None when the groups do not match `groups` (left to torch's loader to report)."""
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(groups) or any(len(s["params"]) != len(g["params"])
                                               for s, g in zip(saved_groups, groups)):
        return None
    steps = {}
    for i, (group, saved) in enumerate(zip(groups, saved_groups)):
        _check_fused_options(saved, i)
        names = group.get("names") or [None] * len(group["params"])
        for key, p, name in zip(saved["params"], group["params"], names):
            state = state_dict["state"].get(key)
            if state:
                where = f"parameter {key} (group {i}{', ' + name if name else ''})"
                _check_moments(state, p, where)
                steps[p] = _step_of(state, saved, where)
    return steps


def _check_fused_options(saved_group: dict, index: int) -> None:
    """FusedLAMB's switches that Lamb cannot follow: its moments would go on under other arithmetic."""
    for key in ("bias_correction", "grad_averaging"):
        if key in saved_group and not saved_group[key]:
            raise ValueError(f"Lamb.load_state_dict: param group {index} has {key}={saved_group[key]!r} "
                             f"(apex FusedLAMB); Lamb always uses {key}=True")


def _check_moments(state: dict, p: torch.Tensor, where: str) -> None:
    """Both moments, shaped as the parameter (torch's loader casts them but would not notice a wrong shape)."""
    for key in ("exp_avg", "exp_avg_sq"):
        value = state.get(key)
        if isinstance(value, torch.Tensor) and value.shape == p.shape:
            continue
        got = ("missing" if value is None else f"of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
               else f"a {type(value).__name__}")
        raise ValueError(f"Lamb.load_state_dict: {where}: '{key}' is {got}; expected a tensor of the parameter's "
                         f"shape {tuple(p.shape)}")


def _step_of(state: dict, saved_group: dict, where: str) -> float:
    """The tensor's own step (torch's optimizers, Lamb), else its group's (FusedLAMB)."""
    if "step" in state:
        return float(state["step"])
    step = saved_group.get("step")
    if step is None:
        raise ValueError(f"Lamb.load_state_dict: {where} has no 'step' and neither has its param group; expected "
                         f"a per-tensor 'step' (Lamb, torch's optimizers) or a group 'step' (apex FusedLAMB)")
    if not _is_count(step):
        got = f"a {step.dtype} tensor of shape {tuple(step.shape)}" if isinstance(step, torch.Tensor) else repr(step)
        raise ValueError(f"Lamb.load_state_dict: {where}: its param group's 'step' is {got}; expected a "
                         f"non-negative integer (apex FusedLAMB's count of steps taken)")
    return float(int(step))


def _is_count(value) -> bool:
    """A non-negative int, or a one-element integer tensor (FusedLAMBAMP keeps its step on the GPU)."""
    if isinstance(value, torch.Tensor):
        integer = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
        return value.numel() == 1 and integer and bool(value >= 0)
    return is_int(value) and value >= 0


def _store(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Write a float32 result back into a lower-precision tensor (nothing to do when they are the same)."""
    if src is not dst:
        dst.copy_(src)


def _trust_ratio(w: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """||w|| / ||update||, or 1 when either norm is 0 (FusedLAMB's rule)."""
    w_norm, u_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(update)
    return torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.01,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6) -> Optimizer:
    """`"adamw"` (torch.optim.AdamW, fused when every parameter is on CUDA, or every one on the CPU: one pass
    over memory per step instead of one per operation, 4.6x faster for 33M parameters on 2 CPU cores) or
    `"lamb"` (`Lamb` above).

    `params` is a list of parameters or of groups (see `param_groups`); `weight_decay` is the default for
    groups that do not set their own.
    """
    params = list(params)
    if not params:
        raise ValueError("build_optimizer: no parameters to optimize")
    tensors = [p for g in params for p in g["params"]] if isinstance(params[0], dict) else params
    if name == "adamw":
        kinds = {p.device.type for p in tensors}
        fused = len(kinds) == 1 and kinds <= {"cuda", "cpu"}
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                 fused=True if fused else None)
    if name == "lamb":
        return Lamb(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def linear_schedule(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warm-up from 0 to the peak learning rate over `warmup_steps`, then linear decay to 0 at
    `total_steps`. Optimizer step s (0-based) uses `peak * s / warmup_steps` during warm-up (so step 0 has
    lr 0, as in transformers' `get_linear_schedule_with_warmup`), then
    `peak * (total_steps - s) / (total_steps - warmup_steps)`, never below 0.
    """
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"linear_schedule: need warmup_steps >= 0 and total_steps >= 1, "
                         f"got {warmup_steps} and {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(f"linear_schedule: warmup_steps ({warmup_steps}) > total_steps ({total_steps})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor)


def global_grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all gradients together (0 when there are none)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


__all__ = ["OPTIMIZERS", "Lamb", "build_optimizer", "global_grad_norm", "linear_schedule",
           "param_groups"]
