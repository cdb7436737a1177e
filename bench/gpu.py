"""Race on one GPU: every GPU figure of docs/PERFORMANCE.md in one run, bertkit vs transformers.

    python bench/gpu.py --out gpu.json                # the full run (at most ~8 minutes on an H100)
    python bench/gpu.py --out gpu.json --no-compile   # eager only (about 1-2 minutes)
    python bench/gpu.py --smoke --out smoke.json      # tiny config on the CPU: every code path, in seconds

Every eager figure is measured first, then the torch.compile contenders (each costs a compile of a minute or
more), bertkit's at both pre-training shapes first, then the Trainer's, then transformers'; those not started
within --budget-s (default 420 s) are skipped and reported as such.
Sections (each one runs on its own: a failure is printed, recorded in the JSON and the run goes on):
  numerics     varlen FlashAttention vs padded SDPA in bf16, against an fp32 reference: attention alone
               (packing.attention vs a masked dense SDPA), and the whole BERT-base encoder (bertkit bf16 vs
               fp32, next to transformers bf16 vs fp32 for scale); plus host syncs counted in bertkit's
               training step (torch.cuda sync debug mode).
  pretrain     BERT-base MLM + NSP training steps, sequences/s, seq 128 x batch 256 and seq 512 x batch 32:
               the same random initial weights (bertkit's, copied into transformers.BertForPreTraining,
               attn_implementation="sdpa"), the same batches (90% of the sequences full length, 10% shorter,
               15% of the real tokens masked, as BERT's data), bf16 autocast, fused AdamW, clipping 1.0,
               dropout 0.1. bertkit: PreTrainingObjective (packed tokens, varlen attention, the last layer
               and the MLM head on the masked rows and [CLS] only, its CPU-side `prepare`), in a step loop
               like the Trainer's and through the Trainer itself (prefetch thread); transformers:
               model(**batch).loss. Each side also with torch.compile (bertkit: compile_layers; transformers:
               torch.compile(model)). Warm-up steps are excluded; torch.cuda.synchronize() brackets the timed
               steps; peak memory per contender.
  inference    BERT-base encoder in bf16 on 8,192 sequences of lognormal lengths (median 67 tokens, cap
               512), batch 128 in arrival order: real tokens/s, the host-to-device copy included;
               transformers also with the sequences sorted by length (its best case); bertkit eager (mask on
               the GPU: one host sync per batch), with the packing planned on the CPU, replayed from CUDA
               graphs (bench/graphed_encoder.py: tokens padded to multiples of 256, one graph per bucket,
               captured before the clock starts; "if they pay"), and compiled.
Prints a table with the ratios and writes everything to --out (JSON).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cudnn_attention  # noqa: E402
from bench.pretrain_common import copy_weights, transformers_model  # noqa: E402
from bertkit.config import BertConfig  # noqa: E402
from bertkit.modeling import BertForPreTraining, BertModel  # noqa: E402
from bertkit.modeling import packing as P  # noqa: E402
from bertkit.modeling.bert import compile_layers  # noqa: E402
from bertkit.tasks.pretrain_objective import PreTrainingObjective  # noqa: E402
from bertkit.train.optim import build_optimizer, param_groups  # noqa: E402
from bertkit.train.trainer import _num_tokens, pin, to_device  # noqa: E402

GOALS = {"pretrain_128": ("sequences/s", 6000.0), "pretrain_512_ratio": 2.0, "inference": ("tokens/s", 1e6)}
FULL = dict(size="base", vocab=30522, pretrain=[(128, 256), (512, 32)], n_infer=8192, infer_batch=128,
            infer_cap=512, warmup=5, steps=20, n_batches=6)
SMOKE = dict(size="tiny", vocab=512, pretrain=[(32, 8), (64, 4)], n_infer=48, infer_batch=16, infer_cap=64,
             warmup=1, steps=2, n_batches=2)


# ---------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def lognormal_lengths(n: int, median: float, cap: int, sigma: float = 0.8, seed: int = 0) -> list[int]:
    """Sequence lengths whose logarithm is normal (median `median`), clipped to [2, cap]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * sigma + math.log(median)
    return x.exp().round().clamp(2, cap).long().tolist()


def padded_batch(lengths: list[int], vocab: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (batch, longest) padded with 0, [CLS]=101-like first token, and the attention mask."""
    width = max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]      # (batch, width)
    ids = torch.randint(5, vocab, (len(lengths), width), generator=g) * mask
    ids[:, 0] = min(101, vocab - 1)
    return ids, mask.long()


def pretraining_batches(n: int, seq: int, batch: int, vocab: int, seed: int = 0) -> list[dict]:
    """MLM + NSP batches shaped like BERT's pre-training data: 90% of the sequences `seq` long, 10% of a
    uniform shorter length; 15% of the real tokens (at most 20 per 128) carry a label, their inputs masked."""
    g = torch.Generator().manual_seed(seed)
    out = []
    max_pred = max(1, round(seq * 20 / 128))
    for _ in range(n):
        short = torch.rand(batch, generator=g) < 0.1
        lengths = torch.where(short, torch.randint(8, seq + 1, (batch,), generator=g), torch.full((batch,), seq))
        ids, mask = padded_batch(lengths.tolist(), vocab, g)
        types = (torch.arange(ids.shape[1])[None, :] >= (lengths[:, None] // 2)).long() * mask
        labels = torch.full_like(ids, -100)
        for i, n_real in enumerate(lengths.tolist()):
            k = min(max_pred, max(1, round(0.15 * (n_real - 2))))
            pos = torch.randperm(n_real - 2, generator=g)[:k] + 1
            labels[i, pos] = ids[i, pos]
            ids[i, pos] = 4  # [MASK]-like id
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels,
                    "next_sentence_label": torch.randint(0, 2, (batch,), generator=g)})
    return out


def make_config(size: str, vocab: int, max_pos: int = 512) -> BertConfig:
    cfg = BertConfig.from_size(size, max_position_embeddings=max_pos)
    cfg.vocab_size = vocab
    cfg.validate()
    return cfg


def hf_encoder(cfg: BertConfig, ours: BertModel):
    """transformers.BertModel (SDPA, no pooler) holding `ours`' weights; raises if any weight fails to map."""
    import transformers
    hf_cfg = transformers.BertConfig(**cfg.to_dict())
    hf_cfg._attn_implementation = "sdpa"
    theirs = transformers.BertModel(hf_cfg, add_pooling_layer=False)
    r = theirs.load_state_dict(ours.state_dict(), strict=False)
    missing = [k for k in r.missing_keys if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or r.unexpected_keys:
        raise RuntimeError(f"weights do not map: missing {missing}, unexpected {list(r.unexpected_keys)}")
    return theirs.eval()


def autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype)


def fresh_compiler() -> None:
    """Forget every compiled graph before a compiled contender, as in a user's process: another model's
    compiled code, left in the cache of code objects they share (nn.Module's call), adds entries whose
    guards each call checks (in `bench/host_overhead.py` a compiled step took 44 ms in a process that had
    compiled three models, 31 ms alone)."""
    torch._dynamo.reset()


def over_budget(args) -> bool:
    """True once the run has used its --budget-s: the remaining compiled contenders (minutes of compile
    each) are skipped so that the eager figures always come back."""
    return time.perf_counter() - args.t_start > args.budget_s


def section(results: dict, name: str, fn, *args) -> None:
    """Run one section; a failure is printed and recorded, the run continues, and the JSON so far is
    written to --out (a run cut short by its time limit still leaves every finished figure behind)."""
    t0 = time.perf_counter()
    prev = results.get(name, {})
    try:
        results[name] = {**prev, "ok": prev.get("ok", True), **fn(*args)}
    except Exception as e:  # report and carry on: one broken contender must not cost the other figures
        traceback.print_exc()
        results[name] = {**prev, "ok": False, "error": f"{type(e).__name__}: {e}"}
        print(f"!! {name} failed: {type(e).__name__}: {e}", flush=True)
    results[name]["seconds"] = round(prev.get("seconds", 0.0) + time.perf_counter() - t0, 1)
    save(results)


def save(results: dict) -> None:
    out = Path(results["out"])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)


# --------------------------------------------------------------------------------------------- numerics
def numerics(args, device, dtype) -> dict:
    """varlen (or, off CUDA, the per-run path) vs padded SDPA, both in `dtype`, against fp32."""
    out = {"attention_path": "varlen" if P.use_varlen(device.type, dtype, False) else "per-run"}
    lengths = lognormal_lengths(args.infer_batch, 67 if not args.smoke else 12, args.infer_cap, seed=1)
    heads, head_dim = (12, 64) if not args.smoke else (2, 16)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    plan = P.pack(mask, device)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), heads, head_dim, generator=g).to(device) for _ in range(3))
    ref, _ = P.attention(q, k, v, plan)                                   # fp32: the per-run path, exact
    packed, _ = P.attention(*(t.to(dtype) for t in (q, k, v)), plan)
    # padded SDPA with a key-padding mask, what transformers runs: (batch, heads, width, head_dim)
    q4, k4, v4 = (P.repad(t.to(dtype), plan).transpose(1, 2) for t in (q, k, v))
    key_mask = mask.bool().to(device)[:, None, None, :]                   # (batch, 1, 1, width)
    padded = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=key_mask)
    padded = P.unpad(padded.transpose(1, 2), plan)                          # (tokens, heads, head_dim)
    out["attention_max_abs_error"] = {"packed": (packed.float() - ref).abs().max().item(),
                                      "padded_sdpa": (padded.float() - ref).abs().max().item(),
                                      "packed_vs_padded": (packed.float() - padded.float()).abs().max().item()}
    # gradients through the same paths (the backward of the varlen kernel), and the dropout variant
    w = torch.randn(q.shape, generator=g).to(device)
    grads = {}
    for name, run in (("fp32", lambda a, b, c: P.attention(a, b, c, plan)[0]),
                      ("packed", lambda a, b, c: P.attention(a, b, c, plan)[0]),
                      ("packed_dropout_0.1", lambda a, b, c: P.attention(a, b, c, plan, dropout_p=0.1)[0])):
        leaves = [t.detach().to(torch.float32 if name == "fp32" else dtype).requires_grad_() for t in (q, k, v)]
        (run(*leaves).float() * w).sum().backward()
        grads[name] = torch.cat([t.grad.float().flatten() for t in leaves])
    out["attention_grad_max_abs_error"] = {"packed": (grads["packed"] - grads["fp32"]).abs().max().item()}
    out["attention_dropout_grads_finite"] = bool(torch.isfinite(grads["packed_dropout_0.1"]).all())
    # whole encoder: bf16 vs fp32, bertkit and transformers, same weights and inputs
    cfg = make_config(args.size, args.vocab)
    torch.manual_seed(0)
    ours = BertModel(cfg, add_pooling_layer=False).eval()
    theirs = hf_encoder(cfg, ours).to(device)
    ours = ours.to(device)
    ids, m = padded_batch(lengths, args.vocab, g)
    ids, m = ids.to(device), m.to(device)
    real = m.bool()
    errs = {}
    with torch.inference_mode():
        for name, model in (("bertkit", ours), ("transformers", theirs)):
            h32 = model(input_ids=ids, attention_mask=m).last_hidden_state
            with autocast(device, dtype):
                h16 = model(input_ids=ids, attention_mask=m).last_hidden_state
            errs[name] = (h16.float() - h32)[real].abs().max().item()
            if name == "bertkit":
                ours32 = h32
            else:
                errs["fp32_bertkit_vs_transformers"] = (ours32 - h32)[real].abs().max().item()
    out["encoder_max_abs_error_vs_fp32"] = errs
    out["ok_within_bf16_tolerance"] = (
        out["attention_max_abs_error"]["packed"] <= 2 * out["attention_max_abs_error"]["padded_sdpa"] + 1e-2
        and errs["bertkit"] <= 2 * errs["transformers"] + 1e-2)
    out["host_syncs_per_training_step"] = count_syncs(args, device, dtype)
    return out


def count_syncs(args, device, dtype):
    """Host syncs in one bertkit training step (after warm-up), from CUDA's sync debug mode; None off CUDA."""
    if device.type != "cuda":
        return None
    seq, batch = args.pretrain[0]
    cfg = make_config(args.size, args.vocab)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).to(device)
    step = bertkit_step(model, device, dtype, compiled=False)
    batches = pretraining_batches(2, seq, min(batch, 32), args.vocab, seed=5)
    step(batches[0])
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batches[1])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    # the mode's own notice ("... is a prototype feature ...") is not a sync
    found = [str(w.message).splitlines()[0] for w in caught
             if "synchroniz" in str(w.message).lower() and "prototype" not in str(w.message)]
    return {"count": len(found), "first": found[:3]}


# --------------------------------------------------------------------------------------------- training
def bertkit_step(model, device, dtype, compiled: bool, backend: str = "inductor", lr: float = 1e-4,
                 optimize: bool = True, clip_in_optimizer: bool = False):
    """bertkit's step as the Trainer runs it: CPU-side prepare + counts, pinned non-blocking copies,
    packed forward, sums / counts, backward, clipping, fused AdamW (`optimize` False: the gradients are
    dropped instead of clipping and the optimizer, to price those). `clip_in_optimizer`: a candidate, the
    clipping's scale handed to fused AdamW as its `grad_scale` (the AMP unscale its kernel applies, writing the
    unscaled gradients back) instead of clipping's own pass over them; the same update up to fp32 rounding
    (g / (1 / c) for g * c)."""
    model.train()
    if compiled:
        compile_layers(model, backend=backend)
    objective = PreTrainingObjective(model)
    opt = build_optimizer("adamw", param_groups(model, 0.01), lr, 0.01)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(cpu_batch):
        prepared = objective.prepare(cpu_batch)
        counts = objective.counts(prepared)
        batch = to_device(pin(prepared) if device.type == "cuda" else prepared, device)
        with autocast(device, dtype):
            sums, _ = objective(batch)
        loss = sums["mlm"].float() / counts["mlm"] + sums["nsp"].float() / counts["nsp"]
        loss.backward()
        if optimize:
            if clip_in_optimizer:   # max_norm 1: divide by the norm where it is above 1 (+ clip_grad_norm_'s 1e-6)
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], 2.0)
                opt.grad_scale = torch.clamp(norm + 1e-6, min=1.0)
            else:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def transformers_step(model, device, dtype, compiled: bool, backend: str = "inductor", lr: float = 1e-4):
    """transformers' step in its normal usage: model(**batch).loss (the full-vocabulary MLM head)."""
    model.train()
    forward = torch.compile(model, backend=backend) if compiled else model
    opt = build_optimizer("adamw", param_groups(model, 0.01), lr, 0.01)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(cpu_batch):
        batch = to_device(pin(cpu_batch) if device.type == "cuda" else cpu_batch, device)
        with autocast(device, dtype):
            loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


class TooSlow(RuntimeError):
    pass


def too_slow(seconds: float, max_step_s: float | None, what: str) -> None:
    """Give up on a contender whose step, after warm-up, takes over `max_step_s`: one broken contender must
    not eat the GPU session (session 8 lost its compiled figures to a 2 s-per-step one)."""
    if max_step_s is not None and seconds > max_step_s:
        raise TooSlow(f"{what} took {seconds:.1f} s after the warm-up (limit {max_step_s:g} s): not timed")


def time_steps(step, batches, warmup: int, steps: int, device, max_step_s: float | None = None) -> dict:
    reset_peak(device)
    t_compile = time.perf_counter()
    for i in range(warmup):
        if i == warmup - 1:  # the last warm-up step alone, timed: a contender far too slow stops here
            sync(device)
            t_last = time.perf_counter()
        warm_loss = step(batches[i % len(batches)])
    sync(device)
    warm_s = time.perf_counter() - t_compile
    too_slow(time.perf_counter() - t_last, max_step_s, "a training step")
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(batches[(warmup + i) % len(batches)])
    queued = time.perf_counter() - t0   # host time to queue the steps: close to `seconds` = host-bound
    sync(device)
    seconds = time.perf_counter() - t0
    seqs = sum(batches[(warmup + i) % len(batches)]["input_ids"].shape[0] for i in range(steps))
    return {"sequences_per_s": seqs / seconds, "step_ms": 1000 * seconds / steps,
            "host_ms_per_step": 1000 * queued / steps, "warmup_s": warm_s,
            "peak_gib": peak_gib(device), "last_warmup_loss": float(warm_loss), "last_loss": float(loss)}


class Cycle:
    """The given batches again and again: a batch source for the Trainer."""

    def __init__(self, batches: list[dict]):
        self.batches, self.i = batches, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self.i += 1
        return self.batches[(self.i - 1) % len(self.batches)]


# every contender's name, as --contenders takes them (pre-training, then inference)
CONTENDERS = (*(k + c for c in ("", " + compile") for k in ("bertkit", "transformers", "bertkit Trainer")),
              "bertkit, arrival order", "bertkit, plan on CPU, arrival order",
              "bertkit + CUDA graphs, plan on CPU, arrival order", "transformers, arrival order",
              "transformers, sorted by length", "bertkit + compile, arrival order",
              "transformers + compile, sorted by length")
# run only when --contenders names them: bertkit with its varlen attention on cuDNN (bench/cudnn_attention.py),
# a candidate kernel rather than the shipped path
OPT_IN = ("bertkit cuDNN attention", "bertkit cuDNN attention + compile")


def trainer_run(args, device, dtype, cfg: BertConfig, batches: list[dict], compiled: bool,
                prefetch: int | None = None, log_every: int | None = None) -> dict:
    """bertkit's Trainer itself (prefetch thread, pinned copies, CPU-side counts) on the same batches: the
    timed steps are those between the first log line and the last one (a log step synchronises).
    `prefetch`: TrainConfig.prefetch (None: the Trainer's default, 2 batches ahead on CUDA). `log_every`
    (default: the warm-up's steps) is also the warm-up; the timed steps are --steps rounded up to a multiple."""
    import tempfile

    import bertkit.modeling.bert as bert_module
    from bertkit.train import TrainConfig, Trainer, read_metrics
    torch.manual_seed(0)
    model = BertForPreTraining(cfg)
    batch = batches[0]["input_ids"].shape[0]
    reset_peak(device)
    every = log_every or args.warmup
    timed = -(-args.steps // every) * every
    with tempfile.TemporaryDirectory(prefix="bertkit-gpu-bench-") as run:
        tc = TrainConfig(max_steps=every + timed, batch_size=batch, lr=1e-4, precision="bf16",
                         log_every=every, save_final=False, output_dir=run, tensorboard=False,
                         progress=False, compile=compiled, prefetch=prefetch)
        t0 = time.perf_counter()
        # the Trainer compiles with inductor; the bench's --backend instead (aot_eager in the smoke run)
        with mock.patch.object(bert_module, "compile_layers",
                               functools.partial(bert_module.compile_layers, backend=args.backend)):
            objective = PreTrainingObjective(model)
            Trainer(objective, model, Cycle(batches), tc).train()
        lines = [m for m in read_metrics(run) if m.get("split") == "train"]
    first, last = lines[0], lines[-1]
    if first["step"] != every or last["step"] != every + timed:
        raise RuntimeError(f"unexpected log steps {[m['step'] for m in lines]}")
    # Each window's time from its tokens/s (on CUDA the GPU's own clock between the log steps; a line's
    # `elapsed` is when it was written, once its figures had landed): step s trains on batches[(s - 1) % n]
    tokens = [_num_tokens(objective, b) for b in batches]
    seconds_in = [sum(tokens[(s - 1) % len(batches)] for s in range(a["step"] + 1, b["step"] + 1)) / b["tokens_per_s"]
                  for a, b in zip(lines, lines[1:])]
    seconds = sum(seconds_in)
    # ms per step in each window between two log lines: whether the Trainer is slow throughout or in bursts
    windows = [1000 * w / (b["step"] - a["step"]) for w, a, b in zip(seconds_in, lines, lines[1:])]
    return {"sequences_per_s": timed * batch / seconds, "step_ms": 1000 * seconds / timed, "log_every": every,
            "window_step_ms": windows, "warmup_s": time.perf_counter() - t0 - seconds, "peak_gib": peak_gib(device),
            "last_loss": last["loss"], "tokens_per_s_logged": last["tokens_per_s"]}


# the compiled phase's order, each kind at every shape before the next kind: bertkit's compiled step at 512 x 32
# (a goal's figure) must not wait behind the Trainer's and transformers' compiles at 128 x 256 and meet
# --budget-s; the Trainer then, and transformers, whose compile takes a minute, last
COMPILED_ORDER = ("bertkit", "bertkit cuDNN attention", "bertkit Trainer", "transformers")


def pretrain(args, device, dtype, seq: int, batch: int, compiled_phase: bool, prev: dict | None,
             kinds: tuple[str, ...] | None = None) -> dict:
    """The eager contenders (`compiled_phase` False) or the compiled ones of `kinds` (default: all, in
    COMPILED_ORDER), added to `prev`'s."""
    cfg = make_config(args.size, args.vocab)
    batches = pretraining_batches(args.n_batches, seq, batch, args.vocab, seed=seq)
    real = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
    out = {"seq": seq, "batch": batch, "real_token_fraction": real,
           "contenders": dict((prev or {}).get("contenders", {}))}
    # the Trainer compiled too: `bertkit pretrain --compile` as users run it (prefetch thread, pinned copies)
    order = (list(kinds or COMPILED_ORDER) if compiled_phase
             else ["bertkit", "bertkit cuDNN attention", "transformers", "bertkit Trainer"])
    for kind in order:
        name = kind + (" + compile" if compiled_phase else "")
        if (args.contenders and name not in args.contenders) or (name in OPT_IN and not args.contenders):
            continue
        if compiled_phase and over_budget(args):
            out["contenders"][name] = {"error": f"skipped: past the --budget-s of {args.budget_s} s"}
            print(f"!! pretrain {name} skipped: time budget", flush=True)
            continue
        model = ours = None
        if compiled_phase:
            fresh_compiler()
        try:
            if kind == "bertkit Trainer":
                r = trainer_run(args, device, dtype, cfg, batches, compiled_phase)
            elif kind == "bertkit cuDNN attention":
                with cudnn_attention.installed(device, dtype) as agreement:
                    torch.manual_seed(0)
                    model = ours = BertForPreTraining(cfg).to(device)
                    r = time_steps(bertkit_step(model, device, dtype, compiled_phase, args.backend), batches,
                                   args.warmup, args.steps, device, args.max_step_s)
                r["agreement_with_flash_no_dropout"] = agreement
            else:
                torch.manual_seed(0)
                model = ours = BertForPreTraining(cfg)
                if kind == "transformers":
                    model = transformers_model(cfg)
                    copy_weights(ours, model)
                model = model.to(device)
                make = bertkit_step if kind == "bertkit" else transformers_step
                r = time_steps(make(model, device, dtype, compiled_phase, args.backend), batches, args.warmup,
                               args.steps, device, args.max_step_s)
            out["contenders"][name] = r
            print(f"  pretrain seq {seq} x {batch}  {name:24s} {r['sequences_per_s']:9.1f} seq/s  "
                  f"{r['step_ms']:7.1f} ms/step  (host {r.get('host_ms_per_step', float('nan')):5.1f})  "
                  f"peak {r['peak_gib'] or 0:.1f} GiB  (warm-up {r['warmup_s']:.0f} s)",
                  flush=True)
        except Exception as e:  # one contender failing (e.g. compile) must not cost the others
            traceback.print_exc()
            out["contenders"][name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"!! pretrain {name} failed: {type(e).__name__}: {e}", flush=True)
        finally:
            model = ours = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    c = out["contenders"]
    best_theirs = max((v["sequences_per_s"] for k, v in c.items() if k.startswith("transformers") and "error" not in v),
                      default=None)
    for k, v in c.items():
        if k.startswith("bertkit") and "error" not in v and best_theirs:
            v["ratio_vs_best_transformers"] = v["sequences_per_s"] / best_theirs
        if k.startswith("bertkit") and "error" not in v and "error" not in c.get("transformers", {"error": 1}):
            v["ratio_vs_transformers_sdpa"] = v["sequences_per_s"] / c["transformers"]["sequences_per_s"]
    return out


# -------------------------------------------------------------------------------------------- inference
def inference(args, device, dtype, compiled_phase: bool, prev: dict | None) -> dict:
    """The eager contenders (`compiled_phase` False) or the compiled ones, added to `prev`'s."""
    cfg = make_config(args.size, args.vocab)
    lengths = lognormal_lengths(args.n_infer, 67 if not args.smoke else 12, args.infer_cap, seed=2)
    g = torch.Generator().manual_seed(3)
    arrival = [padded_batch(lengths[i:i + args.infer_batch], args.vocab, g)
               for i in range(0, len(lengths), args.infer_batch)]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    by_len = [lengths[i] for i in order]
    g = torch.Generator().manual_seed(3)
    sorted_batches = [padded_batch(by_len[i:i + args.infer_batch], args.vocab, g)
                      for i in range(0, len(by_len), args.infer_batch)]
    if device.type == "cuda":
        arrival = [(ids.pin_memory(), m.pin_memory()) for ids, m in arrival]
        sorted_batches = [(ids.pin_memory(), m.pin_memory()) for ids, m in sorted_batches]
    tokens = sum(lengths)
    padded_tokens = sum(ids.numel() for ids, _ in arrival)
    out = {"sequences": len(lengths), "real_tokens": tokens, "median_length": sorted(lengths)[len(lengths) // 2],
           "padding_fraction_arrival": 1 - tokens / padded_tokens,
           "contenders": dict((prev or {}).get("contenders", {}))}

    torch.manual_seed(0)
    ours = BertModel(cfg, add_pooling_layer=False).eval()
    theirs = hf_encoder(cfg, ours)
    ours, theirs = ours.to(device, dtype), theirs.to(device, dtype)

    def run_ours(model, plan_on_cpu):
        def f(ids, m):
            ids_d, m_d = ids.to(device, non_blocking=True), m.to(device, non_blocking=True)
            plan = P.pack(m, device) if plan_on_cpu else None
            return model(ids_d, m_d, packing=plan).last_hidden_state
        return f

    def run_theirs(model):
        def f(ids, m):
            return model(input_ids=ids.to(device, non_blocking=True),
                         attention_mask=m.to(device, non_blocking=True)).last_hidden_state
        return f

    def graphed_ours():
        """The CUDA-graph what-if (bench/graphed_encoder.py): its graphs are captured here, untimed, like
        a compile; off CUDA the same bucketed computation runs eagerly."""
        from bench.graphed_encoder import GraphedEncoder
        encoder = GraphedEncoder(ours, granule=min(256, args.infer_cap), max_batch=args.infer_batch)
        encoder.capture([m for _, m in arrival])
        return encoder

    contenders = [("bertkit, arrival order", lambda: run_ours(ours, False), arrival),
                  ("bertkit, plan on CPU, arrival order", lambda: run_ours(ours, True), arrival),
                  ("bertkit + CUDA graphs, plan on CPU, arrival order", graphed_ours, arrival),
                  ("transformers, arrival order", lambda: run_theirs(theirs), arrival),
                  ("transformers, sorted by length", lambda: run_theirs(theirs), sorted_batches)]
    if compiled_phase:
        def compiled_ours():
            import copy
            return run_ours(compile_layers(copy.deepcopy(ours), backend=args.backend), True)

        def compiled_theirs():
            return run_theirs(torch.compile(theirs, dynamic=True, backend=args.backend))
        contenders = [("bertkit + compile, arrival order", compiled_ours, arrival),
                      ("transformers + compile, sorted by length", compiled_theirs, sorted_batches)]
    for name, make, batches in contenders:
        if args.contenders and name not in args.contenders:
            continue
        if "compile" in name and over_budget(args):
            out["contenders"][name] = {"error": f"skipped: past the --budget-s of {args.budget_s} s"}
            print(f"!! inference {name} skipped: time budget", flush=True)
            continue
        if "compile" in name:
            fresh_compiler()
        try:
            t_make = time.perf_counter()
            f = make()
            setup = time.perf_counter() - t_make
            reset_peak(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for ids, m in batches[:3]:  # warm-up (and compile)
                    f(ids, m)
                sync(device)
                warm = time.perf_counter() - t0
                f(*batches[0])
                sync(device)
                too_slow(time.perf_counter() - t0 - warm, args.max_step_s, "a batch")
                t0 = time.perf_counter()
                for ids, m in batches:
                    f(ids, m)
                sync(device)
            seconds = time.perf_counter() - t0
            r = {"real_tokens_per_s": tokens / seconds, "sequences_per_s": len(lengths) / seconds,
                 "seconds": seconds, "warmup_s": warm, "setup_s": setup, "peak_gib": peak_gib(device)}
            if name.startswith("bertkit"):  # fast must not mean wrong: the first and last batch vs eager
                reference = run_ours(ours, True)
                with torch.inference_mode():
                    r["max_abs_diff_vs_bertkit_eager"] = max(
                        float((f(ids, m).float() - reference(ids, m).float()).abs().max())
                        for ids, m in (batches[0], batches[-1]))
            out["contenders"][name] = r
            print(f"  inference {name:50s} {r['real_tokens_per_s']:12,.0f} real tokens/s  ({seconds:.2f} s, "
                  f"peak {r['peak_gib'] or 0:.1f} GiB)", flush=True)
        except Exception as e:  # one contender failing (e.g. compile) must not cost the others
            traceback.print_exc()
            out["contenders"][name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"!! inference {name} failed: {type(e).__name__}: {e}", flush=True)
    c = out["contenders"]
    for ref in ("transformers, arrival order", "transformers, sorted by length"):
        if "error" in c.get(ref, {"error": 1}):
            continue
        for k, v in c.items():
            if k.startswith("bertkit") and "error" not in v:
                v[f"ratio_vs_{ref}"] = v["real_tokens_per_s"] / c[ref]["real_tokens_per_s"]
    return out


# ----------------------------------------------------------------------------------------------- report
def table(results: dict) -> str:
    lines = ["", "| race | contender | figure | ratio vs transformers (SDPA, arrival) | peak GiB |",
             "| --- | --- | --- | --- | --- |"]
    for key, r in results.items():
        if not isinstance(r, dict) or "contenders" not in r:
            continue
        for name, v in r["contenders"].items():
            if "error" in v:
                lines.append(f"| {key} | {name} | failed: {v['error'][:60]} | | |")
                continue
            if "sequences_per_s" in v and "real_tokens_per_s" not in v:
                fig, ratio = f"{v['sequences_per_s']:,.0f} seq/s", v.get("ratio_vs_transformers_sdpa")
            else:
                fig, ratio = f"{v['real_tokens_per_s']:,.0f} tokens/s", v.get("ratio_vs_transformers, arrival order")
            peak = "" if v.get("peak_gib") is None else f"{v['peak_gib']:.1f}"
            lines.append(f"| {key} | {name} | {fig} | {'' if ratio is None else f'{ratio:.2f}x'} | {peak} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU, few steps: every code path")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile contenders")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; the smoke run uses aot_eager: no C compile)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per contender")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="seconds after which compiled contenders not yet started are skipped (default %(default)s)")
    ap.add_argument("--only", nargs="+", choices=["numerics", "pretrain", "inference"], default=None)
    ap.add_argument("--max-step-s", type=float, default=None,
                    help="a contender whose step (or inference batch) takes longer after its warm-up is reported "
                         "as failed, not timed (default 5 s; none with --smoke)")
    ap.add_argument("--contenders", nargs="+", default=None, metavar="NAME",
                    help='run only these contenders, named as in the table (e.g. "bertkit" "bertkit + compile")')
    return ap


def main(argv=None) -> dict:
    ap = build_parser()
    args = ap.parse_args(argv)
    unknown = sorted(set(args.contenders or []) - set(CONTENDERS) - set(OPT_IN))
    if unknown:
        ap.error(f"--contenders: no contender {', '.join(map(repr, unknown))}; there are "
                 f"{', '.join(map(repr, CONTENDERS + OPT_IN))}")
    args.t_start = time.perf_counter()
    for k, v in (SMOKE if args.smoke else FULL).items():
        if k != "steps" or args.steps is None:
            setattr(args, k, v)
    if args.max_step_s is None and not args.smoke:  # the limit is for GPU steps; the CPU is slow
        args.max_step_s = 5.0
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke on the CPU")
    dtype = torch.bfloat16
    backend = args.backend = args.compile_backend or ("aot_eager" if args.smoke else "inductor")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import transformers
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    results: dict = {"device": hw, "torch": torch.__version__, "transformers": transformers.__version__,
                     "dtype": "bf16", "smoke": args.smoke, "compile_backend": backend if args.compile else None,
                     "argv": sys.argv[1:] if argv is None else list(argv), "out": args.out}
    print(f"{hw}, torch {torch.__version__}, transformers {transformers.__version__}, bf16, "
          f"BERT-{args.size}, compile {'on (' + backend + ')' if args.compile else 'off'}", flush=True)
    only = args.only or ["numerics", "pretrain", "inference"]
    t0 = time.perf_counter()
    if "numerics" in only:
        section(results, "numerics", numerics, args, device, dtype)
        print(f"numerics: {json.dumps({k: v for k, v in results['numerics'].items()})}", flush=True)
    # every eager figure first, then the compiled contenders (minutes of compile each, cut by --budget-s)
    for compiled_phase in ([False, True] if args.compile else [False]):
        if "pretrain" in only:
            for kinds in ([(kind,) for kind in COMPILED_ORDER] if compiled_phase else [None]):
                for seq, batch in args.pretrain:
                    key = f"pretrain_{seq}x{batch}"
                    section(results, key, pretrain, args, device, dtype, seq, batch, compiled_phase,
                            results.get(key), kinds)
        if "inference" in only:
            section(results, "inference", inference, args, device, dtype, compiled_phase, results.get("inference"))
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(table(results))
    failed = [k for k, v in results.items() if isinstance(v, dict) and not v.get("ok", True)]
    failed += [f"{k}/{n}" for k, v in results.items() if isinstance(v, dict)
               for n, c in v.get("contenders", {}).items() if "error" in c]
    results["failed"] = failed
    print(f"total {results['total_seconds']:.0f} s; failed: {', '.join(failed) or 'nothing'}")
    save(results)
    return results


if __name__ == "__main__":
    main()
