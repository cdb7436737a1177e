"""Learning curves side by side: BERT-mini pre-trained (MLM + NSP) by bertkit and by transformers.

Both models start from the same weights and see the same batches in the same order (the two steps of each
batch run back to back, which side goes first alternating). Standard settings: dropout 0.1, AdamW (lr 5e-4,
betas 0.9/0.999, eps 1e-6, weight decay 0.01 on matrices and embeddings), linear warm-up over 10% of the
steps then linear decay to 0, gradient clipping 1.0, batch 32 of NSP pairs of up to 128 tokens (<= 20
masked each), uncased WordPiece vocabulary 8192, fp32 (see bench/pretrain_common). Dropout draws differ
between the two (different layouts), so the curves agree statistically, not bit for bit.

Length: `--steps N`, or else `--minutes M` (default 20) of wall time for both together: a few calibration
steps on throw-away copies estimate the step and evaluation times, and the number of steps (which the
learning-rate schedule needs up front) is chosen to fit; the elapsed time is printed at the end.

Every `--log-every` steps (10) each side appends its training loss, MLM/NSP terms and accuracies (averaged
over those steps) to `<out>/<side>/metrics.jsonl`; every `--eval-every` steps (50), at step 0 and at the end,
its held-out MLM accuracy, loss and perplexity and NSP accuracy on a fixed set of `--eval-batches` (20)
batches of the WikiText-2 valid split (masks drawn once; the same for both). At the end: `<out>/curves.png`
and `<out>/summary.json`, and the final held-out metrics and steps/s of each side.

    python bench/pretrain_compare.py [--minutes 20 | --steps 300] [--eval-every 50] [--out DIR] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pretrain_common import (DEFAULT_WORK, KINDS, add_common_args, describe, make_config,  # noqa: E402
                                   make_pair, prepare_data, set_threads, versions)
from bertkit.data.masking import example_seed  # noqa: E402

CALIBRATION_STEPS = 3


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--minutes", type=float, default=20.0,
                    help="wall time for both together, when --steps is not given (default %(default)s)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (each side); overrides --minutes")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup-frac", type=float, default=0.1, help="warm-up steps as a fraction of the steps")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--out", default=None, help="output directory (default <work>/compare)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(args.work or DEFAULT_WORK, "compare")
    return args


def plan_steps(args, data, config, heldout, deadline: float) -> int:
    """The number of steps that ends the run by `deadline` (a `time.perf_counter()` value), from timing a
    few steps and evaluation batches of both sides on identical throw-away copies."""
    pair = make_pair(config, seed=args.seed, lr=args.lr, warmup_steps=1, total_steps=CALIBRATION_STEPS + 1)
    batches = iter(data.train_batches(args.batch_size, seed=args.seed + 100))
    step_s = 0.0
    for i in range(CALIBRATION_STEPS + 1):
        t0 = time.perf_counter()
        batch = next(batches)
        for kind in KINDS:
            pair[kind].step(batch)
        if i:  # the first step is cold
            step_s += time.perf_counter() - t0
    step_s /= CALIBRATION_STEPS
    probe = heldout[:2]
    t0 = time.perf_counter()
    for kind in KINDS:
        pair[kind].evaluate(probe)
    eval_s = (time.perf_counter() - t0) * len(heldout) / len(probe)
    left = deadline - time.perf_counter()
    # evaluations at step 0, every eval_every steps and at the end; 5% spare for the plot and load changes
    steps = int((0.95 * left - 2 * eval_s) / (step_s + eval_s / args.eval_every))
    print(f"calibration: {step_s:.2f} s per step of both, {eval_s:.1f} s per evaluation of both -> "
          f"{max(steps, 1)} steps fit the {left / 60:.1f} minutes left")
    return max(steps, 1)


def plot(out: Path, labels: dict[str, str], title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    records = {k: [json.loads(line) for line in (out / k / "metrics.jsonl").read_text().splitlines() if line]
               for k in KINDS}

    def series(kind, split, key):
        rs = [r for r in records[kind] if r["split"] == split and key in r]
        return [r["step"] for r in rs], [r[key] for r in rs]

    # bertkit wide and pale underneath, transformers narrow on top: both stay visible where they coincide
    style = {"bertkit": dict(color="tab:blue", lw=3.2, alpha=0.55), "transformers": dict(color="tab:orange", lw=1.3)}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (ax_loss, ax_ppl), (ax_mlm, ax_nsp) = axes
    for kind in KINDS:
        st = style[kind]
        ax_loss.plot(*series(kind, "train", "loss"), **st, label=f"{kind}: train loss (MLM + NSP)")
        ax_loss.plot(*series(kind, "train", "loss_mlm"), **st, ls="--", label=f"{kind}: train MLM loss")
        ax_loss.plot(*series(kind, "eval", "loss"), **st, ls=":", marker="o", ms=4, label=f"{kind}: held-out loss")
        ax_ppl.plot(*series(kind, "eval", "perplexity"), **st, marker="o", ms=4, label=labels[kind])
        for ax, key in ((ax_mlm, "acc_mlm"), (ax_nsp, "acc_nsp")):
            ax.plot(*series(kind, "train", key), **st, ls="--", label=f"{kind}: train")
            ax.plot(*series(kind, "eval", key), **st, marker="o", ms=4, label=f"{kind}: held-out")
    ax_loss.set_title("loss")
    ax_ppl.set_title("held-out MLM perplexity")
    ax_ppl.set_yscale("log")
    ax_mlm.set_title("MLM accuracy (masked tokens)")
    ax_nsp.set_title("NSP accuracy")
    ax_nsp.axhline(0.5, color="grey", lw=0.8, ls=":")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png = out / "curves.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    data = prepare_data(args.work, args.data, seed=args.seed)
    print(describe(data))
    config = make_config(data.tokenizer, "mini", dropout=args.dropout)
    heldout = data.heldout_batches(args.eval_batches, args.batch_size, seed=args.seed + 1)
    print(f"held-out set: {len(heldout)} batches of {args.batch_size}, "
          f"{sum(int((b['labels'] != -100).sum()) for b in heldout):,} masked tokens; {versions()}")

    steps = args.steps if args.steps else plan_steps(args, data, config, heldout, start + args.minutes * 60)
    warmup = round(args.warmup_frac * steps)
    pair = make_pair(config, seed=args.seed, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=warmup,
                     total_steps=steps)
    print(f"BERT-mini, {sum(p.numel() for p in pair['bertkit'].params):,} parameters, dropout {args.dropout}; "
          f"{steps} steps of batch {args.batch_size}, AdamW lr {args.lr:g} (warm-up {warmup} steps, then linear "
          f"decay), weight decay {args.weight_decay:g}, clipping 1.0; identical initial weights (checked)")

    logs = {}
    for kind in KINDS:
        (out / kind).mkdir(parents=True, exist_ok=True)
        logs[kind] = open(out / kind / "metrics.jsonl", "w", encoding="utf-8")

    def write(kind, record):
        logs[kind].write(json.dumps(record) + "\n")
        logs[kind].flush()

    def evaluate(step):
        res = {}
        for kind in KINDS:
            m = pair[kind].evaluate(heldout)
            res[kind] = m
            write(kind, {"split": "eval", "step": step, "loss": m["mlm_loss"] + m["nsp_loss"],
                         "loss_mlm": m["mlm_loss"], "loss_nsp": m["nsp_loss"], "acc_mlm": m["mlm_accuracy"],
                         "acc_nsp": m["nsp_accuracy"], "perplexity": m["perplexity"],
                         "elapsed": time.perf_counter() - t_train})
        print(f"  eval step {step:5d}: " + " | ".join(
            f"{kind} MLM acc {m['mlm_accuracy']:.4f} ppl {m['perplexity']:8.1f} NSP acc {m['nsp_accuracy']:.3f}"
            for kind, m in res.items()), flush=True)
        return res

    t_train = time.perf_counter()
    final = evaluate(0)
    batches = iter(data.train_batches(args.batch_size, seed=args.seed))
    seconds = dict.fromkeys(KINDS, 0.0)
    window = {kind: [] for kind in KINDS}
    for step in range(1, steps + 1):
        batch = next(batches)
        for kind in (KINDS if step % 2 else KINDS[::-1]):
            torch.manual_seed(example_seed(args.seed, step))  # dropout: reproducible runs
            r = pair[kind].step(batch)
            seconds[kind] += r.seconds
            window[kind].append(r)
        if step % args.log_every == 0 or step == steps:
            line = []
            for kind in KINDS:
                rs, n = window[kind], len(window[kind])
                rec = {"split": "train", "step": step, "lr": rs[-1].lr,
                       "loss": sum(r.loss for r in rs) / n, "loss_mlm": sum(r.loss_mlm for r in rs) / n,
                       "loss_nsp": sum(r.loss_nsp for r in rs) / n,
                       "acc_mlm": sum(r.correct_mlm for r in rs) / sum(r.n_mlm for r in rs),
                       "acc_nsp": sum(r.correct_nsp for r in rs) / sum(r.n_nsp for r in rs),
                       "grad_norm": sum(r.grad_norm for r in rs) / n,
                       "steps_per_s": n / sum(r.seconds for r in rs), "train_seconds": seconds[kind],
                       "elapsed": time.perf_counter() - t_train}
                write(kind, rec)
                line.append(f"{kind} loss {rec['loss']:.4f} MLM acc {rec['acc_mlm']:.3f} "
                            f"{rec['steps_per_s']:.2f} steps/s")
                window[kind] = []
            print(f"step {step:5d}/{steps} ({time.perf_counter() - start:6.0f} s): " + " | ".join(line), flush=True)
        if step % args.eval_every == 0 or step == steps:
            final = evaluate(step)
    for f in logs.values():
        f.close()

    speed = {kind: steps / seconds[kind] for kind in KINDS}
    labels = {kind: f"{kind} ({speed[kind]:.2f} steps/s)" for kind in KINDS}
    png = plot(out, labels, f"BERT-mini pre-training (MLM + NSP) on WikiText-2 raw test split, held out: "
                            f"valid split; same initial weights and batches; {steps} steps of batch "
                            f"{args.batch_size}, lr {args.lr:g}, dropout {args.dropout}")
    elapsed = time.perf_counter() - start
    summary = {"steps": steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": warmup,
               "dropout": args.dropout, "elapsed_s": elapsed, "steps_per_s": speed,
               "speed_ratio": speed["bertkit"] / speed["transformers"], "final_eval": final}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nafter {steps} steps ({elapsed / 60:.1f} min wall in all), held-out ({len(heldout)} batches):")
    for kind in KINDS:
        m = final[kind]
        print(f"  {kind:13s} MLM accuracy {m['mlm_accuracy']:.4f}  perplexity {m['perplexity']:8.1f}  "
              f"NSP accuracy {m['nsp_accuracy']:.4f}  | {speed[kind]:.3f} steps/s ({seconds[kind]:.0f} s training)")
    print(f"  speed ratio bertkit / transformers: {summary['speed_ratio']:.2f}x")
    print(f"curves: {png}\nmetrics: {out / 'bertkit' / 'metrics.jsonl'}, {out / 'transformers' / 'metrics.jsonl'}")
    return summary


if __name__ == "__main__":
    main()
