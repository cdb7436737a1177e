"""Race on the CPU: the host's cost of one pre-training step, bertkit vs transformers, eager and compiled.

On a GPU the host queues every kernel of a step; where the step's GPU work is short (BERT-base at 512 x 32
on an H100: an estimated 27 ms of compiled kernels), the GPU waits whenever the host takes longer to queue them.
That host cost (Python, dispatch, autograd, guards and runtime wrappers of compiled graphs) depends on the number of
operations and compiled calls, not on the tensor sizes, so it can be raced on the CPU with tensors so small
that the arithmetic is cheap: BERT-base's 12 layers and 12 heads at 1/16 of its width (hidden 48), 4
sequences of up to 16 tokens, bf16 autocast, the GPU race's own step functions (`bench/gpu.py`: forward,
backward, clipping, fused AdamW; bertkit's CPU-side `prepare` included).

bertkit runs its GPU path: the packed tokens go to the variable-length attention kernel, here a stand-in
of one SDPA call per layer (one kernel, as FlashAttention's varlen call is, but each token attends to itself
alone: nearly no arithmetic, and not the model's numbers). transformers runs its own padded SDPA, whose
arithmetic at 16 tokens is small too.
Contenders: eager; compiled as shipped (`compile_layers`: the embeddings and the layer stack, one graph
each); compiled layer by layer (how `compile_layers` worked up to session 9, for reference); transformers
eager and `torch.compile(model)`. The eager contenders are timed first, interleaved round by round (a change
in machine load hits all alike); then each compiled contender in a phase of its own, after
`torch._dynamo.reset()`, interleaved with the eager ones again. Median ms per step over every phase, 1
thread; a compiled contender's ratios to the eager ones are taken within its phase (the eager steps slow
down over the run, by up to a third, so ratios across phases would mislead).

    python bench/host_overhead.py                 # ~3-5 minutes, most of it compiling
    python bench/host_overhead.py --no-compile    # eager only, seconds
    python bench/host_overhead.py --smoke         # 2 layers, aot_eager: the code path only
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu import bertkit_step, pretraining_batches, transformers_step  # noqa: E402
from bench.gpu_profile import layer_by_layer_compiled  # noqa: E402
from bench.pretrain_common import copy_weights, transformers_model  # noqa: E402
from bertkit.config import BertConfig  # noqa: E402
from bertkit.modeling import BertForPreTraining  # noqa: E402
from bertkit.modeling import packing as P  # noqa: E402

CONTENDERS = ("bertkit", "bertkit + compile", "bertkit + compile, layer by layer", "transformers",
              "transformers + compile")
FULL = dict(layers=12, heads=12, hidden=48, vocab=512, seq=16, batch=4, warmup=4, rounds=40, backend="inductor",
            dropout=0.1)
# dropout 0 in the smoke run: the bertkit contenders then compute the same steps, which its test checks
SMOKE = dict(layers=2, heads=2, hidden=16, vocab=128, seq=8, batch=2, warmup=1, rounds=3, backend="aot_eager",
             dropout=0.0)


def one_call_attention(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p):
    """Stand-in for the varlen kernel: one SDPA call, each token its own sequence of one, so the call costs
    the host what a kernel launch does and the CPU next to no arithmetic; the queries of a Selection each
    meet one key. q (queries, heads, head_dim), k and v (tokens, heads, head_dim); out like q."""
    n = q.shape[0]                                                   # fewer than k's under a Selection
    q, k, v = (t[:n, :, None] for t in (q, k, v))                    # (n, heads, 1, head_dim)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)[:, :, 0]


@contextlib.contextmanager
def gpu_attention_path():
    """bertkit's attention takes its CUDA branch (one kernel call per layer) on CPU tensors."""
    with mock.patch.object(P, "use_varlen", lambda device_type, dtype, need_weights: not need_weights), \
            mock.patch.object(P, "_varlen_kernel", one_call_attention):
        yield


def make_step(cfg: BertConfig, name: str, backend: str):
    """The step function of one contender, from the same initial weights as every other."""
    device, dtype = torch.device("cpu"), torch.bfloat16
    torch.manual_seed(0)
    ours = BertForPreTraining(cfg)
    if name.startswith("transformers"):
        theirs = transformers_model(cfg)
        copy_weights(ours, theirs)
        return transformers_step(theirs, device, dtype, name.endswith("compile"), backend)
    if name == "bertkit + compile, layer by layer":
        with layer_by_layer_compiled():
            return bertkit_step(ours, device, dtype, True, backend)
    return bertkit_step(ours, device, dtype, name == "bertkit + compile", backend)


def gemm_rates(p: dict, reps: int = 200) -> dict:
    """Microseconds per call of the step's largest product, (tokens, hidden) @ (hidden, 4 * hidden), in bf16 and
    fp32. CPUs without native bf16 (no AVX-512 BF16 or AMX, e.g. the AMD EPYC of session 14) take a slow path
    for bf16 products, 14-25x fp32's there, and then a step's figure holds their arithmetic too (about half of
    the compiled bertkit step on that machine): such figures compare only within one machine."""
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(p["batch"] * p["seq"], p["hidden"], dtype=dtype)
        b = torch.randn(p["hidden"], 4 * p["hidden"], dtype=dtype)
        for _ in range(10):
            torch.mm(a, b)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        out[str(dtype).removeprefix("torch.")] = 1e6 * (time.perf_counter() - t0) / reps
    out["slow_bf16"] = out["bfloat16"] > 3 * out["float32"]
    return out


def race(p: dict, names: list[str]) -> dict:
    """The eager contenders, interleaved; then each compiled one in a phase of its own after
    `torch._dynamo.reset()` (as in a user's process: compiled code of another model in the same process
    adds cache entries whose guards every call checks), interleaved with the eager ones again."""
    cfg = BertConfig(vocab_size=p["vocab"], hidden_size=p["hidden"], num_hidden_layers=p["layers"],
                     num_attention_heads=p["heads"], intermediate_size=4 * p["hidden"], max_position_embeddings=64,
                     hidden_dropout_prob=p["dropout"], attention_probs_dropout_prob=p["dropout"])
    batches = pretraining_batches(4, p["seq"], p["batch"], p["vocab"], seed=0)
    out = {"config": {k: p[k] for k in ("layers", "heads", "hidden", "vocab", "seq", "batch", "dropout")},
           "backend": p["backend"], "contenders": {}, "phases": []}
    eager = [n for n in names if "compile" not in n]
    times: dict[str, list[float]] = {n: [] for n in names}
    losses = {}
    with gpu_attention_path():
        steps = {}
        for phase in [[]] + [[n] for n in names if n not in eager]:
            torch._dynamo.reset()
            for name in eager + phase:
                if name not in steps:
                    steps[name] = make_step(cfg, name, p["backend"])
                    t0 = time.perf_counter()
                    for i in range(p["warmup"]):
                        losses[name] = float(steps[name](batches[i % len(batches)]))
                    out["contenders"][name] = {"warmup_s": time.perf_counter() - t0}
                    print(f"  {name}: warmed up in {out['contenders'][name]['warmup_s']:.1f} s", flush=True)
            phase_times: dict[str, list[float]] = {n: [] for n in eager + phase}
            for r in range(p["rounds"]):
                order = eager + phase if r % 2 == 0 else (eager + phase)[::-1]
                for name in order:
                    t0 = time.perf_counter()
                    losses[name] = float(steps[name](batches[r % len(batches)]))
                    phase_times[name].append(time.perf_counter() - t0)
            for name in phase:     # done: its compiled code goes with the next reset
                del steps[name]
            out["phases"].append({"ms_per_step": {n: 1000 * statistics.median(ts) for n, ts in phase_times.items()},
                                  "last_loss": {n: losses[n] for n in phase_times}})
            for n, ts in phase_times.items():
                times[n] += ts
    c = out["contenders"]
    for name in names:
        c[name].update(ms_per_step=1000 * statistics.median(times[name]), last_loss=losses[name])
    for ph in out["phases"]:   # against the eager contenders in the same phase
        ms = ph["ms_per_step"]
        for name in ms:
            if name.startswith("bertkit") and "transformers" in ms:
                c[name].setdefault("ratio_vs_transformers", ms["transformers"] / ms[name])
            if "compile" in name:
                ref = "bertkit" if name.startswith("bertkit") else "transformers"
                c[name]["speedup_vs_own_eager"] = ms[ref] / ms[name]
    if "transformers + compile" in c:
        for name in c:
            if name.startswith("bertkit"):
                c[name]["ratio_vs_transformers + compile"] = (c["transformers + compile"]["ms_per_step"]
                                                              / c[name]["ms_per_step"])
    return out


def table(res: dict) -> str:
    lines = ["| contender | ms / step (median) | vs transformers eager | vs transformers compiled | "
             "compiled vs its own eager |", "| --- | --- | --- | --- | --- |"]
    for name, v in res["contenders"].items():
        ratios = [f"{v[k]:.2f}x" if k in v else "" for k in
                  ("ratio_vs_transformers", "ratio_vs_transformers + compile", "speedup_vs_own_eager")]
        lines.append(f"| {name} | {v['ms_per_step']:.2f} | {' | '.join(ratios)} |")
    return "\n".join(lines)


def versions() -> str:
    import transformers
    return f"torch {torch.__version__}, transformers {transformers.__version__}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2 tiny layers, aot_eager, 3 rounds: the code path only")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="the eager contenders only")
    ap.add_argument("--rounds", type=int, default=None, help="timed steps of each contender (default 40)")
    ap.add_argument("--out", default=None, help="also write the results to this JSON file")
    return ap


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    p = dict(SMOKE if args.smoke else FULL)
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
        p["rounds"] = args.rounds
    torch.set_num_threads(1)
    names = [n for n in CONTENDERS if args.compile or "compile" not in n]
    load = os.getloadavg()[0]
    print(f"{p['layers']} layers, {p['heads']} heads, hidden {p['hidden']}; {p['batch']} sequences of up to "
          f"{p['seq']} tokens; bf16 autocast, 1 thread; {versions()}; load average {load:.1f}", flush=True)
    gemm = gemm_rates(p)
    print(f"the step's largest product: {gemm['bfloat16']:.1f} us in bf16, {gemm['float32']:.1f} us in fp32"
          + ("; this CPU has no fast bf16 products, so the figures below hold their arithmetic: compare them only "
             "with runs on the same machine" if gemm["slow_bf16"] else ""), flush=True)
    res = race(p, names)
    res.update(load_before=load, load_after=os.getloadavg()[0], versions=versions(), gemm_us=gemm)
    print(table(res))
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(args.out)
    return res


if __name__ == "__main__":
    main()
