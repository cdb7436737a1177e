"""Where a pre-training step's GPU time goes: kernel time by kind, per step, bertkit next to transformers.

    python bench/gpu_profile.py --out profile.json             # BERT-base, seq 128 x batch 256 (about 2 minutes)
    python bench/gpu_profile.py --out p.json --tuned           # + compile tuning options (max-autotune: > 4 min)
    python bench/gpu_profile.py --out p.json --seq 512 --batch 32 --no-ablations --trace traces/   # seq 512
    python bench/gpu_profile.py --smoke --out profile.json     # tiny config on the CPU: the code path only

For each contender (bertkit eager, bertkit with torch.compile, transformers eager; the same batches and step as
bench/gpu.py; `--contender` picks some) a few warm-up steps, then `--steps` steps under torch.profiler: from its
Chrome trace, the device time per step grouped by kind (GEMM, attention, fused Triton, LayerNorm, dropout,
elementwise, optimizer, ...), the heaviest kernels, and the step's wall time against the time the device was busy,
with each idle gap charged to the host operator that launched after it (`idle_report`), and the host's own time by
operator (`host_report`); --trace keeps the traces. Then bertkit again with one thing changed at a time to price
those parts (`--ablation` picks some, `--profile-ablation` profiles them as well): eager forward + backward without
clipping and optimizer; compiled as is (the embeddings and the layer stack, one graph each), with each layer
compiled apart (bertkit in session 9, `layer_by_layer_compiled`), with the embeddings left eager (as before
session 9, `eager_embeddings`), with the MLM head compiled too (`mlm_head_compiled`), replayed as CUDA
graphs (`cuda_graphs_compiled`), with a bf16 residual stream (a what-if of a numerics change,
`bf16_residual_stream`), and with attention as two matrix products around a fused softmax
(`attention_as_matmuls`); with --all-ablations also eager and compiled with the last layer on every row (no
selection), eager without dropout and compiled without attention dropout; with --tuned also compiled with
inductor's tuning options that keep the operations as they are (coordinate-descent tuning of the fused kernels;
max-autotune, which may pick Triton matrix products with GELU fused into them). The JSON is rewritten after every
contender and ablation, so a run cut short keeps what it measured. The race itself is bench/gpu.py; this says where
a speed-up must come from.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu import (TooSlow, bertkit_step, make_config, pretraining_batches, sync, time_steps,  # noqa: E402
                       transformers_step)
from bench.pretrain_common import copy_weights, transformers_model  # noqa: E402
from bertkit.modeling import BertForPreTraining  # noqa: E402

# kernel-name fragments -> kind; the first match wins, so the specific names come first
KINDS = [("attention", ("flash", "fmha", "attention")),
         ("layer norm", ("layer_norm", "layernorm", "gammabeta")),   # GammaBeta...: LayerNorm's weight gradient
         ("optimizer", ("adam", "multi_tensor", "foreach")),
         ("dropout", ("dropout", "bernoulli", "philox")),
         ("embedding", ("embedding", "index", "scatter", "gather", "sort", "radix")),
         ("cross entropy", ("softmax", "nll", "cross_entropy")),
         ("GEMM", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "splitk")),
         ("fused (Triton)", ("triton",)),
         ("copy / cast", ("copy", "memcpy", "memset", "fill")),   # not "cast": adds of mixed dtypes say WithCast
         ("reduction", ("reduce",)),
         ("elementwise", ("elementwise", "vectorized", "unrolled"))]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


# CUDA runtime calls that hold the host until the device (or a copy) is done: the sync debug mode counts only
# the explicit ones, while memory (de)allocations and pageable copies block as well
BLOCKING_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
                  "cudaHostAlloc", "cudaFreeHost", "cudaMalloc", "cudaFree", "cudaHostRegister")
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")   # a Chrome trace's events that run on the device


def idle_report(trace: dict, steps: int, top: int = 10) -> dict:
    """Why the GPU idles, from a Chrome trace of `steps` profiled steps: every gap between device activities
    is charged to the host operator that launched the activity after it (the innermost `cpu_op` around its
    launch call) and marked "host late" when that launch came after the device had gone idle (the host was
    the bottleneck) or "waiting" otherwise; plus the time spent in blocking CUDA runtime calls."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    device = sorted((e for e in events if e.get("cat") in DEVICE_CATS),
                    key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    # innermost cpu_op around each launch: a sweep over each thread's operators in start order
    enclosing: dict[int, str] = {}
    by_thread: dict = defaultdict(list)
    for e in events:
        if e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver"):
            by_thread[(e["pid"], e["tid"])].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list = []
        for e in evs:
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) < e["ts"]:
                stack.pop()
            if e["cat"] == "cpu_op":
                stack.append(e)
            elif "correlation" in e.get("args", {}):
                enclosing[e["args"]["correlation"]] = stack[-1]["name"] if stack else "(no operator)"
    gaps: dict = defaultdict(lambda: [0.0, 0])
    total = 0.0
    end = None
    for e in device:
        if end is not None and e["ts"] > end:
            gap = e["ts"] - end
            corr = e.get("args", {}).get("correlation")
            launch = launches.get(corr)
            how = "host late" if launch is not None and launch["ts"] > end else "waiting"
            key = f"{how}: {enclosing.get(corr, '(unknown)')}"
            gaps[key][0] += gap
            gaps[key][1] += 1
            total += gap
        end = max(end or 0.0, e["ts"] + e.get("dur", 0))
    blocking: dict = defaultdict(float)
    for e in events:
        if e.get("cat") == "cuda_runtime" and e["name"] in BLOCKING_CALLS:
            blocking[e["name"]] += e.get("dur", 0) / 1000 / steps
    worst = sorted(gaps.items(), key=lambda kv: -kv[1][0])[:top]
    busy = (end - device[0]["ts"] - total) if device else 0.0
    return {"busy_ms_per_step": busy / 1000 / steps, "gap_ms_per_step": total / 1000 / steps,
            "host_late_ms_per_step": sum(v[0] for k, v in gaps.items() if k.startswith("host late")) / 1000 / steps,
            "largest_gaps": [{"before": k, "ms_per_step": v[0] / 1000 / steps, "count_per_step": v[1] / steps}
                             for k, v in worst],
            "blocking_calls_ms_per_step": dict(blocking)}


HOST_CATS = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver")   # a Chrome trace's host-side events


def host_report(trace: dict, steps: int, top: int = 15) -> dict:
    """Where the host's time goes, from a Chrome trace: each host event's self time (its duration less that of
    the events nested in it on the same thread), summed by name, and each thread's busy time per step (the
    autograd engine runs the backward on a thread of its own). Made for the compiled step that left an H100
    waiting on the host (session 9), where the device-side report can only say that the host was late."""
    self_us: dict = defaultdict(float)
    calls: dict = defaultdict(int)
    busy: dict = defaultdict(float)
    by_thread: dict = defaultdict(list)
    for e in trace.get("traceEvents", []):
        if e.get("ph") == "X" and e.get("cat") in HOST_CATS:
            by_thread[(e["pid"], e["tid"])].append(e)
    for thread, evs in by_thread.items():
        evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list = []   # [event, time of its children]
        for e in evs:
            while stack and stack[-1][0]["ts"] + stack[-1][0].get("dur", 0) <= e["ts"]:
                done, children = stack.pop()
                self_us[done["name"]] += max(done.get("dur", 0) - children, 0)
            if stack:
                stack[-1][1] += e.get("dur", 0)
            else:
                busy[thread] += e.get("dur", 0)
            calls[e["name"]] += 1
            stack.append([e, 0.0])
        for done, children in stack:
            self_us[done["name"]] += max(done.get("dur", 0) - children, 0)
    worst = sorted(self_us.items(), key=lambda kv: -kv[1])[:top]
    return {"threads_busy_ms_per_step": sorted((us / 1000 / steps for us in busy.values()), reverse=True),
            "top_self_ms": [{"name": n[:120], "ms_per_step": us / 1000 / steps, "calls_per_step": calls[n] / steps}
                            for n, us in worst]}


def op_origins(trace: dict, names: set[str], steps: int, depth: int = 4, top: int = 8) -> dict:
    """Where the named host operators are called from, from a Chrome trace recorded with Python stacks: for
    each call, the innermost `depth` events enclosing it on its thread (Python frames, or on the autograd
    engine's thread the backward node that ran it), counted per step. Made for session 22's 46 ATen reduction
    kernels per compiled step at 512 x 32, which the compiled code does not call (session 24's code log)."""
    by_thread: dict = defaultdict(list)
    for e in trace.get("traceEvents", []):
        if e.get("ph") == "X" and e.get("cat") in HOST_CATS + ("python_function",):
            by_thread[(e["pid"], e["tid"])].append(e)
    found: dict = {n: defaultdict(int) for n in names}
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list = []
        for e in evs:
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) <= e["ts"]:
                stack.pop()
            if e["name"] in names and all(x["name"] != e["name"] for x in stack):   # outermost only
                where = (re.sub(r" at 0x[0-9a-f]+", "", x["name"])[:60] for x in reversed(stack[-depth:]))
                found[e["name"]][" < ".join(where)] += 1
            stack.append(e)
    return {n: [{"calls_per_step": c / steps, "from": where}
                for where, c in sorted(places.items(), key=lambda kv: -kv[1])[:top]]
            for n, places in found.items()}


def origins_of(step, batches, steps: int, device, names: set[str]) -> dict:
    """`op_origins` over `steps` more steps, profiled with Python stacks (apart from the timed profile: the
    stacks slow the host)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, with_stack=True) as prof:
        for i in range(steps):
            step(batches[i % len(batches)])
        sync(device)
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(f"{tmp}/trace.json")
        # leniently: Python frames' names can hold unescaped quotes or undecodable bytes (kineto, pytorch#146900)
        raw = Path(f"{tmp}/trace.json").read_bytes().decode("utf-8", "replace")
        return op_origins(json.loads(raw, strict=False), names, steps)


def profile_steps(step, batches, warmup: int, steps: int, device, trace: Path | None = None) -> dict:
    """Warm up, then profile `steps` steps: wall ms per step, host ms per step (until the last step is
    queued), kernel ms per step by kind, and on CUDA why the device idled (`idle_report`; idle = wall time
    the device was not busy, kernels on several streams counted once); `trace`: also write the Chrome trace
    there (gzipped)."""
    from torch.profiler import ProfilerActivity, profile
    for i in range(warmup):
        step(batches[i % len(batches)])
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(batches[(warmup + i) % len(batches)])
        host = (time.perf_counter() - t0) / steps
        sync(device)
        wall = (time.perf_counter() - t0) / steps
    idle = host_side = None
    if device.type == "cuda" or trace is not None:
        import gzip
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_chrome_trace(f"{tmp}/trace.json")
            raw = Path(f"{tmp}/trace.json").read_bytes()
        if trace is not None:
            trace.parent.mkdir(parents=True, exist_ok=True)
            trace.write_bytes(gzip.compress(raw))
        trace_events = [e for e in json.loads(raw).get("traceEvents", []) if e.get("ph") == "X"]
        report = idle_report({"traceEvents": trace_events}, steps)   # on the CPU: no device, no report
        idle = report if device.type == "cuda" else None
        host_side = host_report({"traceEvents": trace_events}, steps)
    by_kind, by_name, counts = defaultdict(float), defaultdict(float), defaultdict(int)
    if device.type == "cuda":
        # from the trace: the profiler's own event list drops some of the device events (a quarter of
        # the kernel time of an eager step on an H200, seen against the trace)
        work = [(e["name"], e.get("dur", 0)) for e in trace_events if e.get("cat") in DEVICE_CATS]
    else:  # the smoke run: top-level CPU operators stand in for kernels
        work = [(ev.name, ev.cpu_time_total) for ev in prof.events()
                if ev.name.startswith("aten::") and ev.cpu_parent is None]
    for name, us in work:
        by_kind[kind_of(name)] += us / 1000 / steps
        by_name[name] += us / 1000 / steps
        counts[name] += 1
    kernel_ms = sum(by_kind.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:20]
    return {"wall_ms_per_step": wall * 1000, "host_ms_per_step": host * 1000, "kernel_ms_per_step": kernel_ms,
            "idle_ms_per_step": wall * 1000 - (idle["busy_ms_per_step"] if idle else kernel_ms),
            "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n[:120], "ms_per_step": ms, "calls_per_step": counts[n] / steps}
                            for n, ms in top],
            "idle": idle, "host": host_side}


def print_profile(name: str, r: dict) -> None:
    print(f"\n== {name}: {r['wall_ms_per_step']:.1f} ms/step wall ({r['host_ms_per_step']:.1f} ms until queued), "
          f"{r['kernel_ms_per_step']:.1f} ms in kernels, {r['idle_ms_per_step']:.1f} ms idle", flush=True)
    if r["idle"] is not None:
        i = r["idle"]
        print(f"   device gaps {i['gap_ms_per_step']:.2f} ms/step, host late {i['host_late_ms_per_step']:.2f}; "
              f"blocking calls {i['blocking_calls_ms_per_step']}", flush=True)
        for g in i["largest_gaps"][:6]:
            print(f"   gap {g['ms_per_step']:6.2f} ms x{g['count_per_step']:<5.1f} before {g['before'][:80]}")
    if r["host"] is not None:
        h = r["host"]
        print("   host threads busy " + ", ".join(f"{ms:.1f}" for ms in h["threads_busy_ms_per_step"][:3])
              + " ms/step; most self time:", flush=True)
        for o in h["top_self_ms"][:8]:
            print(f"   host {o['ms_per_step']:6.2f} ms x{o['calls_per_step']:<5.1f} {o['name'][:80]}")
    for op, places in r.get("op_origins", {}).items():
        for o in places:
            print(f"   {op} x{o['calls_per_step']:<5.1f} from {o['from'][:200]}")
    for kind, ms in r["by_kind_ms"].items():
        print(f"   {kind:16s} {ms:7.2f} ms")
    for k in r["top_kernels"][:12]:
        print(f"   {k['ms_per_step']:7.2f} ms  x{k['calls_per_step']:<5.0f} {k['name'][:90]}")


@contextlib.contextmanager
def bf16_residual_stream():
    """A what-if, not bertkit's behaviour: each layer's output (the residual stream) kept in the autocast dtype
    instead of the fp32 that autocast's LayerNorm returns. Halves the bytes of the fused add/LayerNorm kernels,
    at the price of bf16 rounding of the stream (outputs under autocast would no longer track transformers')."""
    from bertkit.modeling.bert import BertSelfOutput
    original = BertSelfOutput.forward

    def forward(self, x, residual):
        h = self.dropout(self.dense(x))
        return self.LayerNorm(h + residual).to(h.dtype)

    BertSelfOutput.forward = forward
    try:
        yield
    finally:
        BertSelfOutput.forward = original


@contextlib.contextmanager
def attention_as_matmuls():
    """A lever to price at short sequences: the layers' attention (not the last layer's selected queries) as
    transformers' eager attention computes it, on the padded grid: two batched matrix products with the key
    mask, softmax and dropout between them, which Inductor fuses into one kernel each way, in place of
    FlashAttention's varlen kernel (5.8 ms of a 47 ms compiled step at 128 x 256 on an H200, session 22).
    The packed rows are scattered onto the (batch, seqlen) grid and gathered back, so the other kernels still
    run on real tokens only. Numerics: the scores in the autocast dtype, softmax in fp32 (autocast's rule)."""
    from bertkit.modeling import packing
    original = packing.attention

    def attention(q, k, v, plan, dropout_p=0.0, need_weights=False, selection=None):
        if selection is not None or need_weights or plan.key_mask is not None:
            return original(q, k, v, plan, dropout_p, need_weights, selection)
        batch, seqlen, (_, heads, dim) = plan.batch, plan.seqlen, q.shape

        def grid(t):  # (tokens, heads, dim) -> (batch, heads, seqlen, dim), zero at the padding
            z = t.new_zeros(batch * seqlen, heads, dim).index_copy(0, plan.indices, t)
            return z.view(batch, seqlen, heads, dim).transpose(1, 2)
        real = torch.zeros(batch * seqlen, dtype=torch.bool, device=q.device).index_fill(0, plan.indices, True)
        scores = (grid(q) @ grid(k).transpose(-1, -2)) * dim ** -0.5               # (batch, heads, seqlen, seqlen)
        scores = scores.float().masked_fill(~real.view(batch, 1, 1, seqlen), float("-inf"))
        probs = torch.nn.functional.dropout(scores.softmax(-1), dropout_p).to(q.dtype)
        out = (probs @ grid(v)).transpose(1, 2).reshape(batch * seqlen, heads, dim)  # (batch * seqlen, heads, dim)
        return out.index_select(0, plan.indices), []                                 # (tokens, heads, dim)

    packing.attention = attention
    try:
        yield
    finally:
        packing.attention = original


@contextlib.contextmanager
def every_row_selected():
    """bertkit before selections: the last layer computes every token, not only the masked ones and the
    [CLS] (prices `packing.Selection`; the loss and gradients are the same either way)."""
    from bertkit.modeling import packing
    original = packing.select

    def select(plan, rows):
        return original(plan, torch.arange(int(plan.cu_seqlens[-1])))

    packing.select = select
    try:
        yield
    finally:
        packing.select = original


def _compile_layers_replaced(replacement):
    """bench/gpu.py's `compile_layers` replaced, for the block, by `replacement(original, model, **kwargs)`:
    the levers below change what a compiled contender compiles."""
    import bench.gpu as bench_gpu
    return mock.patch.object(bench_gpu, "compile_layers", functools.partial(replacement, bench_gpu.compile_layers))


def eager_embeddings():
    """`compile_layers` with the embeddings left eager, as before session 9, when on an H100 the compiled
    layers behind eager embeddings left the GPU waiting on the host (77.9 against 53.2 ms per step at
    128 x 256); kept to watch that finding in later runs."""
    from bertkit.modeling.bert import BertEmbeddings

    def compile_then_undo_embeddings(original, model, **kwargs):
        original(model, **kwargs)
        for m in model.modules():
            if isinstance(m, BertEmbeddings):
                m._compiled_call_impl = None   # nn.Module.compile's wrapper, dropped: the eager forward again
        return model
    return _compile_layers_replaced(compile_then_undo_embeddings)


def mlm_head_compiled():
    """A lever to price: `compile_layers` plus the MLM head (transform, LayerNorm and the vocabulary-wide
    decoder on the masked rows), its own graph. (Session 9's "embeddings and heads too" compiled
    `model.cls`, which is never called as a module, so only its embeddings part took effect.)"""
    def compile_more(original, model, **kwargs):
        original(model, **kwargs)
        model.cls.predictions.compile(**{"dynamic": True, **kwargs})
        return model
    return _compile_layers_replaced(compile_more)


def layer_by_layer_compiled():
    """bertkit's `compile_layers` in session 9: the embeddings and each layer compiled apart, one compiled
    call per layer forward and backward instead of one for the whole stack (`python bench/host_overhead.py`
    prices that host cost on the CPU: 22.5 against 17.6 ms per step); kept to measure the change on a GPU."""
    from bertkit.modeling import packing
    from bertkit.modeling.bert import BertEmbeddings, BertLayer

    def compile_each_layer(original, model, **kwargs):
        kwargs = {"dynamic": True, **kwargs}
        packing.keep_runs_out_of_graphs()
        for m in model.modules():
            if isinstance(m, (BertEmbeddings, BertLayer)):
                m.compile(**kwargs)
        return model
    return _compile_layers_replaced(compile_each_layer)


def cuda_graphs_compiled():
    """A lever to price: `compile_layers` with mode="reduce-overhead", the compiled graphs replayed as CUDA
    graphs, one per batch shape. An upper bound only: the bench cycles through 4 batches, while real packed
    batches each have their own token count (graphs would need token counts padded to buckets)."""
    def compile_graphed(original, model, **kwargs):
        return original(model, **{**kwargs, "mode": "reduce-overhead"})
    return _compile_layers_replaced(compile_graphed)


def cpp_wrapper_prerequisites() -> None:
    """What Inductor's C++ wrapper needs on a CUDA machine, checked in a second rather than found after a
    compile: a C++ compiler ($CXX or g++), Python's headers, and CUDA's headers (a toolkit; else the copy Triton
    ships, the workaround of pytorch#150442). Raises naming what is missing."""
    import os
    import shutil
    import sysconfig

    import torch.utils.cpp_extension as ext
    missing = []
    if not shutil.which(os.environ.get("CXX", "g++")):
        missing.append(f"a C++ compiler ({os.environ.get('CXX', 'g++')})")
    if not Path(sysconfig.get_path("include"), "Python.h").is_file():
        missing.append(f"Python.h in {sysconfig.get_path('include')}")
    if not (ext.CUDA_HOME and Path(ext.CUDA_HOME, "include", "cuda.h").is_file()):
        import triton
        bundled = Path(triton.__file__).parent / "backends" / "nvidia"
        if Path(bundled, "include", "cuda.h").is_file():
            os.environ["CUDA_HOME"] = ext.CUDA_HOME = str(bundled)
            print(f"cpp_wrapper: no CUDA toolkit; CUDA_HOME={bundled} (Triton's headers)", flush=True)
        else:
            missing.append("CUDA's headers (no toolkit at CUDA_HOME, none in Triton)")
    if missing:
        raise RuntimeError(f"Inductor's C++ wrapper needs {', '.join(missing)}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU: the code path only")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip bertkit + compile")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per contender")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 128; smoke 32)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per batch (default 256; smoke 8)")
    ap.add_argument("--no-ablations", dest="ablations", action="store_false", help="profile the contenders only")
    ap.add_argument("--ablation", dest="only_ablations", action="append", metavar="NAME",
                    help="time only this ablation (repeatable, run in the order given; the names are those "
                         "printed and saved)")
    ap.add_argument("--profile-ablation", dest="profile_ablations", action="append", metavar="NAME",
                    help="after timing this ablation, profile its steps as the contenders' are (repeatable)")
    ap.add_argument("--no-contenders", dest="contenders", action="store_false",
                    help="skip the kernel profiles of the contenders: the ablations only")
    ap.add_argument("--contender", dest="only_contenders", action="append", metavar="NAME",
                    help='profile only this contender (repeatable): "bertkit", "bertkit + compile", "transformers"')
    ap.add_argument("--max-step-s", type=float, default=None,
                    help="an ablation whose step takes longer after its warm-up is reported as failed, not timed "
                         "(default 5 s; none with --smoke)")
    ap.add_argument("--all-ablations", action="store_true",
                    help="also the ablations already priced on an H100 (session 8): the last layer on every row, "
                         "no dropout, no attention dropout")
    ap.add_argument("--trace", type=Path, default=None,
                    help="folder for each contender's Chrome trace of the profiled steps (.json.gz)")
    ap.add_argument("--op-origins", nargs="+", default=None, metavar="OP",
                    help="after each contender's profile, profile its steps again with Python stacks and list "
                         "where these host operators are called from (e.g. aten::sum)")
    ap.add_argument("--tuned", action="store_true",
                    help="add compiled ablations with inductor's tuning options (coordinate descent, max-autotune)")
    return ap


def main(argv=None) -> dict:
    ap = build_parser()
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke on the CPU")
    size, vocab, seq, batch, warmup = ("tiny", 512, 32, 8, 1) if args.smoke else ("base", 30522, 128, 256, 5)
    seq, batch = args.seq or seq, args.batch or batch
    max_step_s = args.max_step_s if args.max_step_s is not None or args.smoke else 5.0
    backend = "aot_eager" if args.smoke else "inductor"
    dtype = torch.bfloat16
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = make_config(size, vocab)
    batches = pretraining_batches(4, seq, batch, vocab, seed=seq)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict = {"device": hw, "torch": torch.__version__, "seq": seq, "batch": batch, "contenders": {},
                     "ablations_ms_per_step": {}}
    print(f"{hw}, torch {torch.__version__}, BERT-{size} seq {seq} x batch {batch}, bf16", flush=True)

    def save():
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    def model_for(kind: str, config=cfg):
        torch.manual_seed(0)
        ours = BertForPreTraining(config)
        if kind == "transformers":
            theirs = transformers_model(config)
            copy_weights(ours, theirs)
            return theirs.to(device)
        return ours.to(device)

    # the ablations' list first, so that a wrong --ablation name stops the run before any GPU time is spent
    no_dropout = make_config(size, vocab)
    no_dropout.hidden_dropout_prob = no_dropout.attention_probs_dropout_prob = 0.0
    no_attention_dropout = make_config(size, vocab)
    no_attention_dropout.attention_probs_dropout_prob = 0.0

    def step(config=cfg, compiled=False, **kw):
        return lambda: bertkit_step(model_for("bertkit", config), device, dtype, compiled, backend, **kw)

    def inductor_options(**options):
        import torch._inductor.config as inductor_config

        def context():
            if options.get("cpp_wrapper") and device.type == "cuda":
                cpp_wrapper_prerequisites()
            return inductor_config.patch(**options)
        return context

    # (session 8 priced on the H100: the last layer on every row, eager +6.0 ms and compiled +4.9 ms; no
    # dropout at all, eager, no change; those now run with --all-ablations only)
    ablations = [("bertkit eager", step(), contextlib.nullcontext)]
    if args.all_ablations:
        ablations += [("eager, last layer on every row", step(), every_row_selected),
                      ("no dropout", step(no_dropout), contextlib.nullcontext)]
    ablations += [("forward + backward only", step(optimize=False), contextlib.nullcontext)]
    if args.compile:
        ablations += [("compiled", step(compiled=True), contextlib.nullcontext),
                      ("compiled, eager embeddings", step(compiled=True), eager_embeddings),
                      ("compiled, layer by layer", step(compiled=True), layer_by_layer_compiled),
                      ("compiled, CUDA graphs (4 batch shapes)", step(compiled=True), cuda_graphs_compiled),
                      ("compiled, MLM head too", step(compiled=True), mlm_head_compiled),
                      # the host's cost of launching the compiled kernels: Inductor's wrapper in C++, not Python
                      ("compiled, C++ wrapper", step(compiled=True), inductor_options(cpp_wrapper=True)),
                      # the clipping's scale divided out in AdamW's kernel: one read of the gradients less (the
                      # kernel writes the unscaled ones back) and fewer launches
                      ("compiled, clipping inside fused AdamW", step(compiled=True, clip_in_optimizer=True),
                       contextlib.nullcontext),
                      ("compiled, C++ wrapper + clipping inside fused AdamW",   # both, as they would ship
                       step(compiled=True, clip_in_optimizer=True), inductor_options(cpp_wrapper=True)),
                      ("compiled, bf16 residual stream", step(compiled=True), bf16_residual_stream),
                      ("compiled, attention as matmuls", step(compiled=True), attention_as_matmuls)]
    if args.compile and args.all_ablations:
        ablations += [("compiled, last layer on every row", step(compiled=True), every_row_selected),
                      ("compiled, no attention dropout", step(no_attention_dropout, True), contextlib.nullcontext)]
    if args.compile and args.tuned:
        # the same operations, other kernels: first the fused kernels' block sizes tuned, then max-autotune
        # (Triton matrix-product templates raced against cuBLAS, with epilogues such as GELU fused in)
        ablations += [("compiled, coordinate-descent tuning", step(compiled=True),
                       inductor_options(coordinate_descent_tuning=True)),
                      ("compiled, max-autotune", step(compiled=True),
                       inductor_options(max_autotune=True, coordinate_descent_tuning=True))]
    if args.only_ablations:
        unknown = sorted(set(args.only_ablations) - {name for name, _, _ in ablations})
        if unknown:
            raise SystemExit(f"--ablation: no ablation {', '.join(map(repr, unknown))} with these flags; "
                             f"there are {', '.join(repr(name) for name, _, _ in ablations)}")
        by_name = {a[0]: a for a in ablations}
        ablations = [by_name[name] for name in dict.fromkeys(args.only_ablations)]   # in the order given
    unknown = sorted(set(args.profile_ablations or []) - {name for name, _, _ in ablations})
    if unknown:
        raise SystemExit(f"--profile-ablation: {', '.join(map(repr, unknown))} is not among the ablations to run")

    contenders = [("bertkit", lambda: bertkit_step(model_for("bertkit"), device, dtype, False))]
    if args.compile:
        contenders.append(("bertkit + compile",
                           lambda: bertkit_step(model_for("bertkit"), device, dtype, True, backend)))
    contenders.append(("transformers", lambda: transformers_step(model_for("transformers"), device, dtype, False)))
    if args.only_contenders:
        unknown = sorted(set(args.only_contenders) - {name for name, _ in contenders})
        if unknown:
            raise SystemExit(f"--contender: no contender {', '.join(map(repr, unknown))} with these flags; "
                             f"there are {', '.join(repr(name) for name, _ in contenders)}")
        contenders = [c for c in contenders if c[0] in args.only_contenders]
    for name, make in contenders if args.contenders else []:
        trace = args.trace / f"{name.replace(' + ', '-')}-{seq}x{batch}.json.gz" if args.trace else None
        step_fn = make()
        r = results["contenders"][name] = profile_steps(step_fn, batches, warmup, args.steps, device, trace)
        save()
        if args.op_origins:
            # one step: a trace with Python stacks is several times the size (its export and parse take the time);
            # a failure (torch's Python-stack tracing has known asserts under Dynamo) costs this list only
            try:
                r["op_origins"] = origins_of(step_fn, batches, 1, device, set(args.op_origins))
            except Exception as e:  # noqa: BLE001 - recorded, the ablations still run
                r["op_origins_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print_profile(name, r)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()
    if not args.ablations:
        return results
    for name, make, context in ablations:
        torch._dynamo.reset()
        try:
            with context():
                # bench/gpu.py's timing: warm-up, then the steps between two synchronisations
                step_fn = make()
                ms = time_steps(step_fn, batches, warmup, max(args.steps, 10 if not args.smoke else 1), device,
                                max_step_s=max_step_s)["step_ms"]
                if name in (args.profile_ablations or []):   # warm already: profiled as the contenders are
                    results.setdefault("ablation_profiles", {})[name] = r = profile_steps(
                        step_fn, batches, 0, args.steps, device)
                    print_profile(f"ablation {name}", r)
        except Exception as e:  # recorded (too slow, or a compile that fails on this machine); the next still run
            results.setdefault("ablation_errors", {})[name] = str(e) if isinstance(e, TooSlow) else (
                f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            print(f"ablation {name:36s} failed: {e}", flush=True)
            save()
            continue
        results["ablations_ms_per_step"][name] = ms
        print(f"ablation {name:36s} {ms:7.1f} ms/step", flush=True)
        save()
    return results


if __name__ == "__main__":
    main()
