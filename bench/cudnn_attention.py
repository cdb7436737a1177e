"""Bench-only: cuDNN's variable-length attention in place of the shipped FlashAttention-2 varlen call, in a
form torch.compile can trace, to race whole pre-training steps on it (bench/gpu.py's opt-in contender
"bertkit cuDNN attention + compile").

Why: attention forward + backward is 5.6-5.7 ms of either compiled pre-training step on an H200 (sessions 19
and 22), on FlashAttention-2, which predates Hopper; cuDNN 9 has Hopper attention kernels and takes the same
packed (tokens, heads, head_dim) layout with cumulative lengths and dropout (`aten._cudnn_attention_forward`,
what PyTorch's jagged SDPA calls). That op has an autograd formula but no Meta kernel (torch 2.11-2.13), so
torch.compile cannot trace it; here the forward and the backward are each a custom op with a fake kernel. The
shapes of the dropout seed and offset the op returns differ between torch versions, so `install` reads them
from one eager call rather than assuming them.

    with cudnn_attention.installed():   # bertkit's varlen attention runs on cuDNN inside the block
        ...

Measured in session 24 (H200, torch 2.11.0+cu130, cuDNN 9.19): the check against FlashAttention refused it (the
gradient of q/k/v 2.09 apart on a scale of 1.71; the outputs agree), and bench/probe_attention.py timed cuDNN's
ragged forward + backward at 200-265 times FlashAttention's. Kept for a torch whose cuDNN path agrees.
"""
from __future__ import annotations

import contextlib

import torch

from bertkit.modeling import packing as P

# The ATen ops (module attributes, so a CPU test can stand in for them with a reference of the same contract)
FORWARD = torch.ops.aten._cudnn_attention_forward
BACKWARD = torch.ops.aten._cudnn_attention_backward
# (dropout on?) -> {"lse": shape pattern, "seed"/"offset": (shape, dtype, on q's device)}, from `install`
_LAYOUT: dict[bool, dict] = {}


def _pattern(shape, tokens: int, heads: int) -> tuple:
    """A shape with the token and head counts replaced by 'T' and 'H' (the probe's counts differ from all else)."""
    return tuple("T" if n == tokens else "H" if n == heads else n for n in shape)


def _shape(pattern: tuple, tokens, heads) -> tuple:
    return tuple(tokens if n == "T" else heads if n == "H" else n for n in pattern)


def _rng(t: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """The op's seed or offset; without dropout it may be undefined (None), and a custom op returns tensors."""
    return q.new_empty(0, dtype=torch.long) if t is None else t


@torch.library.custom_op("bertkit_bench::cudnn_varlen_fwd", mutates_args=())
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int,
         max_k: int, dropout_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out, lse, _, _, _, _, seed, offset, _ = FORWARD(q, k, v, None, cu_q, cu_k, max_q, max_k, True, dropout_p,
                                                    False, False)
    return out.contiguous(), lse.contiguous(), _rng(seed, q), _rng(offset, q)


@_fwd.register_fake
def _fwd_fake(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p):
    layout = _LAYOUT.get(dropout_p > 0)
    if layout is None:
        raise RuntimeError("cudnn_attention.install() must run (eagerly, on the GPU) before tracing")
    tokens, heads = q.shape[0], q.shape[1]
    out = q.new_empty(tokens, heads, v.shape[2])                                      # (tokens, heads, head_dim)
    lse = q.new_empty(_shape(layout["lse"], tokens, heads), dtype=torch.float32)
    rng = [torch.empty(shape, dtype=dtype, device=q.device if on_q else "cpu")
           for shape, dtype, on_q in (layout["seed"], layout["offset"])]
    return out, lse, *rng


@torch.library.custom_op("bertkit_bench::cudnn_varlen_bwd", mutates_args=())
def _bwd(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
         lse: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
         max_q: int, max_k: int, dropout_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = BACKWARD(grad, q, k, v, out, lse, seed, offset, None, cu_q, cu_k, max_q, max_k, dropout_p, False)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_bwd.register_fake
def _bwd_fake(grad, q, k, v, out, lse, seed, offset, cu_q, cu_k, max_q, max_k, dropout_p):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, dropout_p = inputs
    out, lse, seed, offset = output
    ctx.save_for_backward(q, k, v, out, lse, seed, offset, cu_q, cu_k)   # seed / offset replay the dropout mask
    ctx.sizes = (max_q, max_k, dropout_p)


def _backward(ctx, grad_out, *_):
    q, k, v, out, lse, seed, offset, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = _bwd(grad_out.contiguous(), q, k, v, out, lse, seed, offset, cu_q, cu_k, *ctx.sizes)
    return dq, dk, dv, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup)


def varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, dropout_p: float) -> torch.Tensor:
    """`packing._varlen_kernel`'s contract on cuDNN. The inputs are made contiguous: bertkit's q, k and v are
    views of one (tokens, 3, heads, head_dim) projection, and cuDNN's ragged offsets are counted in whole
    (heads x head_dim) rows."""
    return _fwd(q.contiguous(), k.contiguous(), v.contiguous(), cu_q, cu_k, max_q, max_k, dropout_p)[0]


def install(device, dtype=torch.bfloat16) -> None:
    """Record the op's output layout from one eager call with and one without dropout (what the fake kernels
    build); raises what the op raises where this torch / GPU cannot run it."""
    lengths = [5, 3, 9]                       # 17 tokens, 12 heads: counts no other dimension has
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), 12, 64, generator=g).to(device, dtype) for _ in range(3))
    cu = torch.tensor([0] + lengths).cumsum(0).to(device, torch.int32)
    for dropout in (False, True):
        _, lse, _, _, _, _, seed, offset, _ = FORWARD(q, k, v, None, cu, cu, max(lengths), max(lengths), True,
                                                      0.1 if dropout else 0.0, False, False)
        seed, offset = _rng(seed, q), _rng(offset, q)
        _LAYOUT[dropout] = {"lse": _pattern(lse.shape, q.shape[0], q.shape[1]),
                            **{name: (tuple(t.shape), t.dtype, t.device == q.device)
                               for name, t in (("seed", seed), ("offset", offset))}}


ORIGINAL = P._varlen_kernel   # the shipped FlashAttention call


def agreement(device, dtype=torch.bfloat16, lengths=(512, 300, 512, 77)) -> dict:
    """cuDNN through the custom ops against the shipped FlashAttention call without dropout, q/k/v as bertkit
    makes them (views of one projection): max |difference| of the output and of the projection's gradient."""
    g = torch.Generator().manual_seed(1)
    tokens, most = sum(lengths), max(lengths)
    qkv = torch.randn(tokens, 3, 12, 64, generator=g).to(device, dtype)             # (tokens, 3, heads, dim)
    cu = torch.tensor([0, *lengths]).cumsum(0).to(device, torch.int32)
    w = torch.randn(tokens, 12, 64, generator=g).to(device, dtype)
    results = []
    for kernel in (ORIGINAL, varlen):
        leaf = qkv.clone().requires_grad_()
        out = kernel(*leaf.unbind(1), cu, cu, most, most, 0.0)
        (out.float() * w.float()).sum().backward()
        results.append((out.float(), leaf.grad.float()))
    (o1, g1), (o2, g2) = results
    return {"out": (o1 - o2).abs().max().item(), "grad_qkv": (g1 - g2).abs().max().item(),
            "out_scale": o1.abs().max().item(), "grad_scale": g1.abs().max().item()}


@contextlib.contextmanager
def installed(device, dtype=torch.bfloat16):
    """bertkit's varlen attention on cuDNN inside the block (checked against FlashAttention first: raises if the
    output or gradients differ by more than bf16 noise), the kernel it replaced again after it."""
    install(device, dtype)
    diff = agreement(device, dtype)
    if diff["out"] > 0.02 * diff["out_scale"] + 1e-2 or diff["grad_qkv"] > 0.02 * diff["grad_scale"] + 1e-2:
        raise RuntimeError(f"cuDNN varlen attention disagrees with FlashAttention: {diff}")
    previous, P._varlen_kernel = P._varlen_kernel, varlen
    try:
        yield diff
    finally:
        P._varlen_kernel = previous
