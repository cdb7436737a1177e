"""Probe: is cuDNN's variable-length attention faster than FlashAttention-2's at the pre-training shapes?

Attention forward + backward with dropout is 5.6-5.7 ms of the compiled step at both 128 x 256 and 512 x 32 on
an H200 (sessions 19 and 22), on FlashAttention-2's varlen kernel (`aten._flash_attention_forward`, the shipped
path). cuDNN 9 has Hopper-specific fused attention, and `aten._cudnn_attention_forward` takes the same packed
(tokens, heads, head_dim) layout with `cum_seq_q/k` and a dropout probability (PyTorch's jagged SDPA calls it).
This times both on the same packed q/k/v, with transformers' padded SDPA (its cuDNN backend: the flash backend
takes no padding mask) beside them, and checks that without dropout cuDNN's output and gradients agree with
FlashAttention's. Bench-only.

    python bench/probe_attention.py             # GPU, bf16: ~20 s
    python bench/probe_attention.py --smoke     # CPU plumbing: each fused variant fails with its one-line reason
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import gpu as G  # noqa: E402

HEADS, HEAD_DIM = 12, 64


def pretraining_lengths(seq: int, batch: int) -> list[int]:
    """The sequence lengths of bench/gpu.py's first pre-training batch at this shape."""
    mask = G.pretraining_batches(1, seq, batch, vocab=512, seed=1)[0]["attention_mask"]
    return mask.sum(1).tolist()


def flash_varlen(q, k, v, cu, max_len, p):
    return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, p, False, False)[0]


def cudnn_varlen(q, k, v, cu, max_len, p):
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, max_len, max_len, True, p, False,
                                                   False)[0]


def padded_inputs(q, k, v, lengths):
    """transformers' layout, built once outside the timing: (batch, heads, width, head_dim) leaves and the
    padding as a boolean mask (None when every sequence is full)."""
    width, batch = max(lengths), len(lengths)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    def pad(x):
        out = x.detach().new_zeros(batch, width, HEADS, HEAD_DIM)                 # (batch, width, heads, dim)
        for i, n in enumerate(lengths):
            out[i, :n] = x.detach()[starts[i]:starts[i + 1]]
        return out.transpose(1, 2).contiguous().requires_grad_()                  # (batch, heads, width, dim)
    mask = None if all(n == width for n in lengths) else (
        torch.arange(width, device=q.device)[None, :] < torch.tensor(lengths, device=q.device)[:, None]
    )[:, None, None, :]                                                           # (batch, 1, 1, width)
    return pad(q), pad(k), pad(v), mask


def padded_sdpa(mask):
    """transformers' SDPA call on the padded layout, under cuDNN's backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v, p):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    return run


def time_fwd_bwd(fn, q, k, v, steps: int, device) -> float:
    """ms per forward + backward (CUDA events on the GPU, wall time on the CPU)."""
    import time
    out = fn(q, k, v)
    grad = torch.randn_like(out)
    for _ in range(3):
        torch.autograd.grad(fn(q, k, v), (q, k, v), grad)
    G.sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        torch.autograd.grad(fn(q, k, v), (q, k, v), grad)
    G.sync(device)
    return (time.perf_counter() - t0) * 1000 / steps


def agreement(q, k, v, cu, max_len) -> dict:
    """cuDNN against FlashAttention without dropout: max |difference| of the output and of each gradient."""
    def run(fn):
        out = fn(q, k, v, cu, max_len, 0.0)
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        return (out, *grads)
    ours, theirs = run(flash_varlen), run(cudnn_varlen)
    return {name: (a.float() - b.float()).abs().max().item()
            for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs)}


def probe(seq: int, batch: int, device, dtype, steps: int) -> dict:
    lengths = pretraining_lengths(seq, batch)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), HEADS, HEAD_DIM, generator=g).to(device, dtype).requires_grad_()
               for _ in range(3))                                                 # (tokens, heads, dim)
    cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)     # (batch + 1,)
    max_len = max(lengths)
    res = {"seq": seq, "batch": batch, "tokens": sum(lengths)}
    *packed_padded, mask = padded_inputs(q, k, v, lengths)
    variants = {"flash varlen (shipped)": ((q, k, v), lambda q, k, v, p: flash_varlen(q, k, v, cu, max_len, p)),
                "cudnn varlen": ((q, k, v), lambda q, k, v, p: cudnn_varlen(q, k, v, cu, max_len, p)),
                "padded sdpa, cudnn": (packed_padded, padded_sdpa(mask))}
    for p in (0.1, 0.0):
        for name, (inputs, fn) in variants.items():
            key = f"{name}, dropout {p}"
            try:
                res[key] = round(time_fwd_bwd(lambda q, k, v: fn(q, k, v, p), *inputs, steps, device), 3)
            except Exception as e:  # noqa: BLE001 - a variant this torch/GPU cannot run is a finding
                res[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            print(f"{seq} x {batch}  {key:36s} {res[key] if isinstance(res[key], str) else f'{res[key]:8.3f} ms'}",
                  flush=True)
    try:
        res["cudnn vs flash, no dropout"] = agreement(q, k, v, cu, max_len)
    except Exception as e:  # noqa: BLE001
        res["cudnn vs flash, no dropout"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    print(f"{seq} x {batch}  cudnn vs flash, no dropout: {res['cudnn vs flash, no dropout']}", flush=True)
    return res


def op_facts() -> dict:
    """What a compiled cuDNN path would need from this torch: the ops' schemas and whether each has a Meta
    (fake-tensor) kernel, without which torch.compile cannot trace it."""
    facts = {}
    for name in ("_cudnn_attention_forward", "_cudnn_attention_backward", "_flash_attention_forward"):
        op = getattr(torch.ops.aten, name, None)
        facts[name] = None if op is None else {
            "schema": [str(s) for s in op._schemas.values()],
            "kernels": [k for k in ("Autograd", "CUDA", "Meta")
                        if torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", k)]}
        print(f"{name}: {facts[name]}", flush=True)
    return facts


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: the plumbing only")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    return ap


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    device = torch.device("cpu" if a.smoke else "cuda")
    dtype = torch.float32 if a.smoke else torch.bfloat16
    shapes = [(16, 3)] if a.smoke else [(128, 256), (512, 32)]
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "ops": op_facts(), "shapes": []}
    for seq, batch in shapes:
        report["shapes"].append(probe(seq, batch, device, dtype, 2 if a.smoke else a.steps))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
