"""Race: MLM + NSP pre-training steps per second on the CPU, bertkit vs transformers, same batches.

BERT-mini (4 layers, hidden 256, 4 heads, feed-forward 1024), the uncased WikiText-2 vocabulary of 8192,
batch 32 of NSP pairs of up to 128 tokens (<= 20 masked each), fp32, AdamW (lr 5e-4, 10% warm-up then
linear decay), gradient clipping 1.0, dropout 0 (so both sides compute the same function and their losses
can be compared). Both models start from the same weights; each step gives the *same* batch to both,
interleaved step by step (which side goes first alternates), so a change in machine load hits both alike.
First `--warmup` steps each on separate, identical copies (thrown away), so the race itself starts from the
identical initial weights. A step is forward + backward + clip + optimizer step (see bench/pretrain_common).

The load average is printed: when other processes keep the cores busy, torch's default of one OpenMP thread
per core oversubscribes them and every parallel region may wait a scheduler time slice for a descheduled
thread; bertkit (more, smaller kernels) loses more to that than transformers. Compare with `--threads 1`
(or OMP_WAIT_POLICY=PASSIVE) when the machine is shared.

    python bench/pretrain_cpu.py [--steps 20] [--warmup 2] [--batch-size 32] [--work DIR] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pretrain_common import (KINDS, add_common_args, describe, make_config, make_pair,  # noqa: E402
                                   max_weight_difference, prepare_data, set_threads, versions)

GOAL = 1.5
LR = 5e-4


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps of each side")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    load_before = os.getloadavg()[0]
    data = prepare_data(args.work, args.data, seed=args.seed)
    print(describe(data))
    config = make_config(data.tokenizer, "mini", dropout=0.0)
    schedule = dict(seed=args.seed, lr=LR, warmup_steps=max(1, args.steps // 10), total_steps=args.steps)

    warm = make_pair(config, **schedule)  # identical copies, only to warm the kernels and allocators up
    warm_batches = iter(data.train_batches(args.batch_size, seed=args.seed + 100))
    for _ in range(args.warmup):
        batch = next(warm_batches)
        for kind in KINDS:
            warm[kind].step(batch)
    del warm

    pair = make_pair(config, **schedule)
    batches = iter(data.train_batches(args.batch_size, seed=args.seed))
    print(f"BERT-mini, {sum(p.numel() for p in pair['bertkit'].params):,} parameters; batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps each; dropout 0; {versions()}")
    seconds = dict.fromkeys(KINDS, 0.0)
    step_ratios = []  # transformers' time / bertkit's, step by step (robust to a load spike in one step)
    first, last = {}, {}
    tokens = masked = 0
    for step in range(args.steps):
        batch = next(batches)
        tokens += int(batch["attention_mask"].sum())
        masked += int((batch["labels"] != -100).sum())
        times = {}
        for kind in (KINDS if step % 2 == 0 else KINDS[::-1]):
            r = pair[kind].step(batch)
            times[kind] = r.seconds
            seconds[kind] += r.seconds
            (first if step == 0 else last)[kind] = r
        step_ratios.append(times["transformers"] / times["bertkit"])
        if step == 0:
            last = dict(first)
    print(f"{args.steps} batches: {tokens / args.steps:.0f} real tokens each "
          f"({tokens / args.steps / args.batch_size:.1f} per sequence), {masked / args.steps:.0f} masked")
    for kind in KINDS:
        print(f"{kind:13s} {args.steps / seconds[kind]:6.3f} steps/s  ({seconds[kind]:.1f} s, "
              f"{tokens / seconds[kind]:,.0f} tokens/s)")
    ratio = seconds["transformers"] / seconds["bertkit"]
    print(f"ratio bertkit / transformers: {ratio:.2f}x   (goal >= {GOAL}x); per-step ratios: median "
          f"{statistics.median(step_ratios):.2f}x, range {min(step_ratios):.2f}x .. {max(step_ratios):.2f}x")
    for label, res in (("step 1", first), (f"step {args.steps}", last)):
        a, b = res["bertkit"], res["transformers"]
        print(f"loss at {label:8s} bertkit {a.loss:.6f}  transformers {b.loss:.6f}  "
              f"|difference| {abs(a.loss - b.loss):.2e}  "
              f"(MLM {abs(a.loss_mlm - b.loss_mlm):.2e}, NSP {abs(a.loss_nsp - b.loss_nsp):.2e})")
    print(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"max |weight difference| after {args.steps} steps: "
          f"{max_weight_difference(pair['bertkit'].model, pair['transformers'].model):.2e}")
    return ratio


if __name__ == "__main__":
    main()
