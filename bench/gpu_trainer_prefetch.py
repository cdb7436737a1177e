"""Why is the compiled Trainer slower than the bench's own loop? The Trainer raced against itself.

Session 19 (H200) measured `bertkit pretrain --compile`'s loop (the Trainer) at 882 and 1,029 seq/s at
512 x 32, against 1,084 and 1,094 for `bench/gpu.py`'s own step loop. There a compiled step's host time equals
its kernel time, so whatever the Trainer adds to the host's work shows in the step. This races Trainer
variants, each run compiled afresh (`torch._dynamo.reset()`; the compile cache is warm after the first), on
`bench/gpu.py`'s batches, in rounds:
  * `--prefetch`: TrainConfig.prefetch, 2 (the default on CUDA: a background thread prepares and pins the
    next batches) against 0 (inline, as the bench's loop). Session 19's run 3: 33.2 against 33.5 ms per step,
    so not the thread;
  * `--log-every`: how often the Trainer logs (each log synchronises with the GPU); also its warm-up;
  * `--with-loop`: the bench's own step loop too, in each round, as the reference;
  * `--count-ops`: no timing; the ATen operations of one step of each, counted on the CPU (each is a kernel
    launch on the GPU, and host work). The Trainer's steps that do not log run the loop's operations and
    about 20 more (window sums, casts, counts), so its host work per step is not where the gap comes from.

    python bench/gpu_trainer_prefetch.py --out p.json                          # 512 x 32, prefetch 2 and 0
    python bench/gpu_trainer_prefetch.py --prefetch 2 --log-every 5 20 --with-loop --out p.json
    python bench/gpu_trainer_prefetch.py --smoke --out p.json                  # tiny config on the CPU
    python bench/gpu_trainer_prefetch.py --count-ops --out ops.json            # the CPU, seconds
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gpu import (FULL, SMOKE, Cycle, bertkit_step, fresh_compiler, make_config,  # noqa: E402
                       pretraining_batches, time_steps, trainer_run)
from bench.host_overhead import gpu_attention_path  # noqa: E402
from bertkit.config import BertConfig  # noqa: E402
from bertkit.modeling import BertForPreTraining  # noqa: E402
from bertkit.tasks.pretrain_objective import PreTrainingObjective  # noqa: E402
from bertkit.train import TrainConfig, Trainer  # noqa: E402


class OpLog(TorchDispatchMode):
    """The name of every ATen operation run under it, in order."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def count_ops(layers: int = 12, steps: int = 12, log_every: int = 5) -> dict:
    """ATen operations per step: the bench's loop (`bench/gpu.py`'s bertkit step) against the Trainer's, on the
    CPU with the GPU's attention path (`bench/host_overhead.py`'s stand-in for the varlen kernel), BERT-base's
    layers and heads at hidden 48, bf16 autocast. A Trainer step is what runs between two fetches from its
    batch source (on the CPU there is no prefetch thread: the fetch starts the step)."""
    cfg = BertConfig(vocab_size=512, hidden_size=48, num_hidden_layers=layers, num_attention_heads=12,
                     intermediate_size=192, max_position_embeddings=64)
    batches = pretraining_batches(6, 16, 4, cfg.vocab_size, seed=0)
    cpu, log = torch.device("cpu"), OpLog()
    marks: list[int] = []

    class Marked(Cycle):
        def __next__(self):
            marks.append(len(log.ops))
            return super().__next__()

    with gpu_attention_path():
        torch.manual_seed(0)
        step = bertkit_step(BertForPreTraining(cfg), cpu, torch.bfloat16, compiled=False)
        step(batches[0])
        with log:
            step(batches[1])
        loop = collections.Counter(log.ops)
        log.ops.clear()
        torch.manual_seed(0)
        model = BertForPreTraining(cfg)
        with tempfile.TemporaryDirectory(prefix="bertkit-ops-") as run, log:
            tc = TrainConfig(max_steps=steps, batch_size=4, lr=1e-4, precision="bf16", log_every=log_every,
                             save_final=False, output_dir=run, tensorboard=False, progress=False)
            Trainer(PreTrainingObjective(model), model, Marked(batches), tc).train()
    per_step = [b - a for a, b in zip(marks, marks[1:])]          # steps 1 .. steps - 1
    plain = [i for i in range(1, len(per_step)) if (i + 1) % log_every]  # past the first; no log line
    trainer = collections.Counter(log.ops[marks[plain[0]]:marks[plain[0] + 1]])
    return {"layers": layers, "log_every": log_every, "loop_ops": sum(loop.values()), "trainer_ops": per_step,
            "trainer_plain_ops": sum(trainer.values()),
            "trainer_log_ops": [per_step[i] for i in range(len(per_step)) if (i + 1) % log_every == 0],
            "extra_in_trainer": dict(trainer - loop), "extra_in_loop": dict(loop - trainer)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results (rewritten after every run)")
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU (aot_eager), few steps")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 512; 64 with --smoke)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 32; 4 with --smoke)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds: each variant once per round (default 2)")
    ap.add_argument("--prefetch", type=int, nargs="+", default=[2, 0], help="depths to race (default 2 0)")
    ap.add_argument("--log-every", type=int, nargs="+", default=[None],
                    help="log intervals to race (default: the warm-up's 5 steps, as bench/gpu.py)")
    ap.add_argument("--with-loop", action="store_true", help="the bench's own step loop too, in each round")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="eager runs")
    ap.add_argument("--count-ops", action="store_true",
                    help="no timing: count one step's ATen operations, the loop's and the Trainer's (the CPU)")
    return ap


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.count_ops:
        res = count_ops(layers=2 if args.smoke else 12)
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(f"{res['layers']} layers: the bench's loop runs {res['loop_ops']} ATen operations per step; the "
              f"Trainer {res['trainer_plain_ops']} on a step that does not log, "
              f"{', '.join(map(str, res['trainer_log_ops']))} on those that do (every {res['log_every']})\n"
              f"only in the Trainer's step: {res['extra_in_trainer']}\nonly in the loop's: {res['extra_in_loop']}")
        return res
    for k, v in (SMOKE if args.smoke else FULL).items():
        setattr(args, k, v)
    seq = args.seq or (64 if args.smoke else 512)
    batch = args.batch or (4 if args.smoke else 32)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke on the CPU")
    args.backend = "aot_eager" if args.smoke else "inductor"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cfg = make_config(args.size, args.vocab)
    batches = pretraining_batches(args.n_batches, seq, batch, args.vocab, seed=seq)
    variants = [("trainer", depth, every) for depth, every in itertools.product(args.prefetch, args.log_every)]
    variants = ([("loop", None, None)] if args.with_loop else []) + variants
    res = {"device": hw, "torch": torch.__version__, "seq": seq, "batch": batch, "compiled": args.compile,
           "runs": []}
    print(f"{hw}, torch {torch.__version__}, {seq} x {batch}, {'compiled' if args.compile else 'eager'}, "
          f"{len(variants)} variants x {args.rounds} rounds", flush=True)
    for r in range(args.rounds):
        for kind, depth, every in variants:
            if args.compile:
                fresh_compiler()
            t0 = time.perf_counter()
            if kind == "loop":
                torch.manual_seed(0)
                model = BertForPreTraining(cfg).to(device)
                step = bertkit_step(model, device, torch.bfloat16, args.compile, args.backend)
                out = time_steps(step, batches, args.warmup, args.steps, device)
                name = "bench loop"
                del model, step   # not held through the Trainer's runs (their peak memory)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                out = trainer_run(args, device, torch.bfloat16, cfg, batches, args.compile, prefetch=depth,
                                  log_every=every)
                name = f"Trainer, prefetch {depth}, log every {out['log_every']}"
            res["runs"].append({"round": r, "variant": name, "prefetch": depth, **out})
            print(f"  round {r} {name:34s} {out['sequences_per_s']:8.1f} seq/s  {out['step_ms']:6.1f} ms/step  "
                  f"(run {time.perf_counter() - t0:.0f} s)", flush=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
    for name in dict.fromkeys(x["variant"] for x in res["runs"]):
        ms = sorted(x["step_ms"] for x in res["runs"] if x["variant"] == name)
        print(f"{name}: ms/step {', '.join(f'{m:.1f}' for m in ms)}")
    return res


if __name__ == "__main__":
    main()
