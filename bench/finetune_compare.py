"""Fine-tuning side by side on CPU: bertkit vs transformers, all-MiniLM-L6-v2 encoder + a fresh classifier head.

Same start: bertkit's BertForSequenceClassification is built from the MiniLM directory (the head drawn under
`torch.manual_seed(seed)`), then every one of its weights is copied into `transformers.BertForSequenceClassification`
and checked equal, key by key. Same data: one tokenization (bertkit's tokenizer, checked against transformers'
on the first rows), a fresh shuffle per epoch from a generator seeded with the seed, dynamic padding per batch;
both sides see the very same batch tensors in the same order. Same hyper-parameters: AdamW (lr 5e-5 by default,
betas 0.9/0.999, eps 1e-8, weight decay 0.01 on matrices and embeddings, none on biases and LayerNorm weights),
linear warm-up over 10% of the steps then linear decay to 0, gradient clipping 1.0 (global norm), batch 32, max
length 128, dropout as in the config (0.1; `--dropout` sets both sides), fp32, 1 epoch by default. Each side uses
its own stack: bertkit's `ClassificationObjective` / `param_groups` / `build_optimizer` / `linear_schedule`
/ `evaluate_classification`, and transformers' model forward (mean loss) / `get_linear_schedule_with_warmup`
with torch's AdamW.

Steps are interleaved (one bertkit step, one transformers step; which one goes first alternates), so load
changes on the machine hit both. Each side's training time is the sum of its steps (forward + backward + clip +
optimizer and scheduler step); its dev time is one pass over the dev set (batches of 64 sorted by length).
Dropout draws differ between the two, so the dev metrics agree statistically, not bit for bit; the
dropout-free loss of both on the first batch, logged before training, shows that they start equal. The shared
pieces (weight copy, optimizers, batches, the interleaved loop) are in bench/finetune_common.py.

    python bench/finetune_compare.py --task sst2 --train-limit 4000 --seeds 1
    python bench/finetune_compare.py --task mrpc --seeds 1,2,3 [--train-limit N]
    python bench/finetune_compare.py --task wnut17 --seeds 1    # token classification: bench/finetune_tag_compare.py

Results are printed and written to /tmp/finetune_compare_<task>.txt (and .json).
"""
from __future__ import annotations

import argparse
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
from bench.finetune_common import (SIDES, Report, copy_weights, dropout_overrides, dropout_text,  # noqa: E402
                                   make_sides, model_dir, ms, objective_loss, parse_seeds, race, race_parser,
                                   shared_batches,
                                   speedup, step_times, timed_in_turn)

DATA = ROOT.parent / "shared" / "data" / "classification"
TASKS = ("sst2", "mrpc", "wnut17")  # wnut17: bench/finetune_tag_compare.py


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


def build_pair(seed: int, info, mdir: str, dropout: float | None = None):
    """bertkit model (head drawn under `seed`) and a transformers model holding exactly the same weights."""
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    bk = AutoModelForSequenceClassification.from_pretrained(mdir, **info.model_kwargs(), **dropout_overrides(dropout))
    id2label, label2id = {int(k): v for k, v in bk.config.id2label.items()}, dict(bk.config.label2id)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        mdir, num_labels=info.num_labels, id2label=id2label, label2id=label2id,
        problem_type="single_label_classification", **dropout_overrides(dropout))
    return bk, hf, copy_weights(bk, hf)


def run_seed(seed: int, args, info, train_feats, dev_feats, pad_id: int, mdir: str, log) -> dict:
    bk, hf, n_tensors = build_pair(seed, info, mdir, args.dropout)
    log(f"seed {seed}: {n_tensors} weight tensors copied bertkit -> transformers and checked equal")
    batches = shared_batches(len(train_feats), args.batch_size, args.epochs, seed,
                             lambda idx: collate([train_feats[i] for i in idx], pad_id), args.max_steps)
    total = len(batches)
    warmup = int(args.warmup * total)
    bk_loss = objective_loss(ClassificationObjective(bk), "cls")
    tr = race(make_sides(bk, bk_loss, hf, args, total, warmup), batches, seed, log, args.log_every)

    # dev: bertkit's evaluate_classification vs the transformers model over the same length-sorted batches
    gold = [int(f.label) for f in dev_feats]

    def bk_eval():
        m = evaluate_classification(bk, dev_feats, batch_size=64)
        return {"accuracy": m["accuracy"], "f1": m["f1"]}

    ev = timed_in_turn(seed, {"bertkit": bk_eval,
                              "transformers": lambda: binary_metrics(hf_logits(hf, dev_feats, pad_id).argmax(-1),
                                                                     gold)})
    # cross-checks (untimed): bertkit's metrics against the plain computation here; prediction agreement
    bk_preds = predict_logits(bk, dev_feats, 64, pad_id=pad_id).argmax(-1)
    mine = binary_metrics(bk_preds, gold)
    for k in ("accuracy", "f1"):
        if abs(mine[k] - ev["bertkit"][1][k]) > 1e-9:
            log(f"  WARNING: bertkit evaluate_classification {k} {ev['bertkit'][1][k]:.6f} != {mine[k]:.6f} here")
    agree = float((bk_preds == hf_logits(hf, dev_feats, pad_id).argmax(-1)).mean())
    res = {"seed": seed, "steps": total, "warmup_steps": warmup, "agreement": agree,
           "start_loss": tr["start_loss"], "first_step_loss": {s: tr["losses"][s][0] for s in SIDES},
           "final_train_loss": tr["final_train_loss"], "step_s": tr["step_s"]}
    for side in SIDES:
        res[side] = {"train_s": tr["train_s"][side], "dev_s": ev[side][0], **ev[side][1]}
    t = tr["train_s"]
    log(f"  dev bertkit acc {res['bertkit']['accuracy']:.4f} f1 {res['bertkit']['f1']:.4f} | transformers acc "
        f"{res['transformers']['accuracy']:.4f} f1 {res['transformers']['f1']:.4f} | prediction agreement "
        f"{agree:.4f}; train s {t['bertkit']:.1f} vs {t['transformers']:.1f}, dev s {ev['bertkit'][0]:.2f} vs "
        f"{ev['transformers'][0]:.2f}")
    return res


def summary(args, results, n_train: int, n_dev: int, wall: float) -> list[str]:
    seeds = [x["seed"] for x in results]
    hdr = f"{'side':<13} {'dev acc':>17} {'dev F1':>17} {'train s':>15} {'dev s':>13}"
    table = ["", f"=== {args.task}: first {n_train} train rows x {args.epochs} epoch, "
             f"{results[0]['steps']} steps/seed, "
             f"dev {n_dev}, seeds {seeds} (mean ± sd over seeds) ===", hdr, "-" * len(hdr)]
    for side in SIDES:
        r = [x[side] for x in results]
        table.append(f"{side:<13} {ms(x['accuracy'] for x in r):>17} {ms(x['f1'] for x in r):>17} "
                     f"{ms((x['train_s'] for x in r), '{:.1f}'):>15} {ms((x['dev_s'] for x in r), '{:.2f}'):>13}")
    table.append(f"speed-up (transformers time / bertkit time, summed over seeds): training "
                 f"{speedup(results, 'train_s'):.2f}x, dev evaluation {speedup(results, 'dev_s'):.2f}x")
    table.append(f"dev prediction agreement between the two sides: {ms(x['agreement'] for x in results)}")
    table.append(step_times(results))
    table.append(f"wall time so far {wall:.0f}s")
    return table


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    if pre.parse_known_args(argv)[0].task == "wnut17":
        from bench import finetune_tag_compare
        return finetune_tag_compare.main(argv)
    args = race_parser(__doc__.splitlines()[0], TASKS).parse_args(argv)
    seeds = parse_seeds(args.seeds)
    log = Report(Path(args.out or f"/tmp/finetune_compare_{args.task}.txt"))

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
        f"linear decay, clip {args.clip}, batch {args.batch_size}, max length {args.max_seq_length}, "
        f"{dropout_text(args.dropout)}, fp32; seeds {seeds}")
    log(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")

    t_start = time.perf_counter()
    results = []
    for s in seeds:
        results.append(run_seed(s, args, info, train_feats, dev_feats, tok.pad_token_id or 0, mdir, log))
        table = summary(args, results, len(train), len(dev), time.perf_counter() - t_start)
        log.save(table, {"args": vars(args), "results": results})
    for line in table:
        log(line)
    print(f"wrote {log.out}")
    return results


if __name__ == "__main__":
    main()
