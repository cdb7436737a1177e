"""WNUT-17 tagging race on CPU: bertkit vs transformers BertForTokenClassification, all-MiniLM-L6-v2 + a fresh head.

Same start: bertkit's BertForTokenClassification is built from the MiniLM directory with the 13 BIO tags of the
WNUT-17 training file (the head drawn under `torch.manual_seed(seed)`); every weight is copied into
`transformers.BertForTokenClassification` and checked equal. Same data: the windows and labels are built once with
bertkit's `encode_sentences` (words tokenized one by one, the tag on a word's first sub-token, -100 elsewhere; a
sentence longer than the max length becomes overlapping windows) and checked against transformers' tokenizer
(`is_split_into_words`, labels placed by `word_ids()`) on the first sentences; both sides then train on the very
same padded batch tensors in the same order, steps interleaved. Same hyper-parameters and optimizer stacks as
bench/finetune_compare.py (see bench/finetune_common.py): AdamW betas 0.9/0.999 eps 1e-8 wd 0.01 (none on biases
and LayerNorm), linear warm-up 10% then decay, clip 1.0, fp32. Each side's loss is its own: bertkit's
`TagObjective` (sum over labelled sub-tokens / their count), transformers' model loss (mean cross-entropy).

Evaluation on the WNUT-17 **test** file (emerging.test.annotated, 1,287 sentences, 1,079 entities): both models go
through bertkit's word-level decoding (`predict_word_logits`: each word's logits from the first sub-token in the
window that owns it, argmax -> tag), timed per side; scores are entity-level micro precision / recall / F1 and
per type from `bertkit.metrics.entity_f1`, and, as an independent check, from `seqeval` (default mode) on both
sides' predictions (bertkit's own `evaluate_tagging`, untimed, must give bertkit's F1 too). Also reported:
word-level prediction agreement between the two sides, training / test times with their ratio (transformers time
/ bertkit time = bertkit's speed-up) and the median time of one training step of each side.

Defaults (all 3,394 training sentences, 2 epochs = 214 steps, batch 32, max length 128, lr 5e-5) keep one seed
of the whole race under 10 minutes on the project's 2-core CPU: measured on a nearly quiet machine, a training
step takes bertkit 0.65 s and transformers about 1.05 s, and the test pass 5-8 s per side, so one seed takes
about 6.5 minutes (`--epochs 3`: about 9.5). `--train-limit`, `--epochs`, `--max-steps` and `--test-limit`
shrink it.

    python bench/finetune_tag_compare.py --seeds 1        # same as: bench/finetune_compare.py --task wnut17

Results are printed and written to /tmp/finetune_compare_wnut17.txt (and .json).
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bertkit.auto import AutoModelForTokenClassification, AutoTokenizer  # noqa: E402
from bertkit.data.readers import read_conll  # noqa: E402
from bertkit.metrics import accuracy, entity_f1  # noqa: E402
from bertkit.tasks.tag import (IGNORE, TagObjective, collate_tags, encode_sentences,  # noqa: E402
                               evaluate_tagging, model_kwargs, predict_word_logits, tag_set)
from bench.finetune_common import (SIDES, Report, copy_weights, dropout_overrides, dropout_text,  # noqa: E402
                                   make_sides, model_dir, ms, objective_loss, parse_seeds, race, race_parser,
                                   shared_batches,
                                   speedup, step_times, timed_in_turn)

DATA = ROOT.parent / "shared" / "data" / "ner" / "wnut17"
TRAIN, TEST = DATA / "wnut17train.conll", DATA / "emerging.test.annotated"
DEFAULTS = {"epochs": 2, "train_limit": None, "batch_size": 32, "max_seq_length": 128, "lr": 5e-5}


def hf_alignment(hf_tok, sentences, feats, tags, max_len: int, k: int = 200) -> tuple[int, int, int]:
    """Check the shared windows against transformers' own alignment (`is_split_into_words`, the tag on the first
    sub-token of each word by `word_ids()`, -100 elsewhere) on the first `k` one-window sentences:
    (sentences checked, input id mismatches, label mismatches)."""
    label2id = {t: i for i, t in enumerate(tags)}
    windows: dict[int, list] = {}
    for f in feats:
        windows.setdefault(f.sentence, []).append(f)
    checked = ids_bad = labels_bad = 0
    for n, sent in enumerate(sentences):
        if checked == k:
            break
        if len(windows[n]) != 1:
            continue
        enc = hf_tok(list(sent.tokens), is_split_into_words=True, truncation=True, max_length=max_len)
        labels, prev = [], None
        for w in enc.word_ids():
            labels.append(IGNORE if w is None or w == prev else label2id[sent.tags[w]])
            prev = w
        checked += 1
        ids_bad += enc["input_ids"] != windows[n][0].input_ids
        labels_bad += labels != windows[n][0].labels
    return checked, ids_bad, labels_bad


def build_pair(seed: int, tags, mdir: str, dropout: float | None = None):
    """bertkit tagger (head drawn under `seed`) and a transformers tagger holding exactly the same weights."""
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    kw = model_kwargs(tags)
    bk = AutoModelForTokenClassification.from_pretrained(mdir, **kw, **dropout_overrides(dropout))
    hf = transformers.BertForTokenClassification.from_pretrained(mdir, **kw, **dropout_overrides(dropout))
    return bk, hf, copy_weights(bk, hf)


def word_tags(model, feats, sentences, pad_id: int) -> list[list[str]]:
    """The model's tag for every word: bertkit's decoding (first sub-token in the owning window, argmax)."""
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    logits = predict_word_logits(model, feats, [len(s.tokens) for s in sentences], 64, pad_id=pad_id)
    return [[names[k] for k in a.argmax(-1)] for a in logits]


def scores(pred, gold) -> dict:
    """Entity P/R/F1 (micro and per type, bertkit.metrics) and word accuracy."""
    ent = entity_f1(pred, gold)
    return {"f1": ent["f1"], "precision": ent["precision"], "recall": ent["recall"],
            "word_accuracy": accuracy([t for p in pred for t in p], [t for g in gold for t in g]),
            "per_type_f1": {k: v["f1"] for k, v in ent["per_type"].items()},
            "support": {k: v["support"] for k, v in ent["per_type"].items()}}


def seqeval_scores(pred, gold) -> dict[str, float]:
    """The same entity scores from seqeval (default, non-strict mode), an implementation independent of bertkit."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined ratios (no predicted entities) count as 0
        return {"f1": f1_score(gold, pred), "precision": precision_score(gold, pred),
                "recall": recall_score(gold, pred)}


def run_seed(seed: int, args, tags, train_feats, test_feats, test, pad_id: int, mdir: str, log) -> dict:
    bk, hf, n_tensors = build_pair(seed, tags, mdir, args.dropout)
    log(f"seed {seed}: {n_tensors} weight tensors copied bertkit -> transformers and checked equal")
    batches = shared_batches(len(train_feats), args.batch_size, args.epochs, seed,
                             lambda idx: collate_tags([train_feats[i] for i in idx], pad_id), args.max_steps)
    total = len(batches)
    warmup = int(args.warmup * total)
    bk_loss = objective_loss(TagObjective(bk), "tag")
    tr = race(make_sides(bk, bk_loss, hf, args, total, warmup), batches, seed, log, args.log_every)

    gold = [list(s.tags) for s in test]
    ev = timed_in_turn(seed, {side: (lambda m=m: word_tags(m, test_feats, test, pad_id))
                              for side, m in (("bertkit", bk), ("transformers", hf))})
    pred = {s: ev[s][1] for s in SIDES}
    flat = {s: [t for p in pred[s] for t in p] for s in SIDES}
    res = {"seed": seed, "steps": total, "warmup_steps": warmup,
           "agreement": float(np.mean([a == b for a, b in zip(flat["bertkit"], flat["transformers"])])),
           "start_loss": tr["start_loss"], "first_step_loss": {s: tr["losses"][s][0] for s in SIDES},
           "final_train_loss": tr["final_train_loss"], "train_loss": tr["losses"], "step_s": tr["step_s"]}
    for side in SIDES:
        res[side] = {"train_s": tr["train_s"][side], "test_s": ev[side][0], **scores(pred[side], gold),
                     "seqeval": seqeval_scores(pred[side], gold)}
        gap = max(abs(res[side]["seqeval"][k] - res[side][k]) for k in ("f1", "precision", "recall"))
        if gap > 1e-9:
            log(f"  WARNING: {side}: bertkit.metrics and seqeval disagree by {gap:.2e}")
    # bertkit's own evaluation entry point must score its model the same (untimed: one more pass)
    res["bertkit"]["evaluate_tagging_f1"] = evaluate_tagging(bk, test_feats, test, 64)["f1"]
    if abs(res["bertkit"]["evaluate_tagging_f1"] - res["bertkit"]["f1"]) > 1e-9:
        log(f"  WARNING: bertkit evaluate_tagging F1 {res['bertkit']['evaluate_tagging_f1']:.6f} != "
            f"{res['bertkit']['f1']:.6f} here")
    b, h, t = res["bertkit"], res["transformers"], tr["train_s"]
    log(f"  test bertkit F1 {b['f1']:.4f} (P {b['precision']:.4f} R {b['recall']:.4f}) | transformers F1 "
        f"{h['f1']:.4f} (P {h['precision']:.4f} R {h['recall']:.4f}; seqeval F1 {h['seqeval']['f1']:.4f}) | word "
        f"agreement {res['agreement']:.4f}; train s {t['bertkit']:.1f} vs {t['transformers']:.1f}, test s "
        f"{ev['bertkit'][0]:.2f} vs {ev['transformers'][0]:.2f}")
    return res


def summary(args, results, n_train: int, n_test: int, wall: float) -> list[str]:
    seeds = [x["seed"] for x in results]
    hdr = (f"{'side':<13} {'test F1':>17} {'precision':>17} {'recall':>17} {'seqeval F1':>17} {'train s':>15} "
           f"{'test s':>13}")
    table = ["", f"=== wnut17: {n_train} train sentences x {args.epochs} epoch(s), {results[0]['steps']} steps/seed, "
             f"test {n_test} sentences, seeds {seeds} (mean ± sd over seeds) ===", hdr, "-" * len(hdr)]
    for side in SIDES:
        r = [x[side] for x in results]
        table.append(f"{side:<13} {ms(x['f1'] for x in r):>17} {ms(x['precision'] for x in r):>17} "
                     f"{ms(x['recall'] for x in r):>17} {ms(x['seqeval']['f1'] for x in r):>17} "
                     f"{ms((x['train_s'] for x in r), '{:.1f}'):>15} {ms((x['test_s'] for x in r), '{:.2f}'):>13}")
    table.append(f"speed-up (transformers time / bertkit time, summed over seeds): training "
                 f"{speedup(results, 'train_s'):.2f}x, test evaluation {speedup(results, 'test_s'):.2f}x")
    table.append(f"word-level test prediction agreement between the two sides: {ms(x['agreement'] for x in results)}")
    start = [abs(x["start_loss"]["bertkit"] - x["start_loss"]["transformers"]) for x in results]
    table.append(f"first-batch loss without dropout, max |bertkit - transformers| over seeds: {max(start):.2e}")
    types = sorted({k for x in results for s in SIDES for k in x[s]["per_type_f1"]})
    support = results[0]["bertkit"]["support"]
    table.append("per-type test F1 (bertkit | transformers):")
    for k in types:
        table.append(f"  {k:<14} (support {support.get(k, 0):>4}) "
                     f"{ms(x['bertkit']['per_type_f1'].get(k, 0.0) for x in results):>17} | "
                     f"{ms(x['transformers']['per_type_f1'].get(k, 0.0) for x in results):>17}")
    table.append(step_times(results))
    table.append(f"wall time so far {wall:.0f}s")
    return table


def main(argv=None):
    ap = race_parser(__doc__.splitlines()[0], ("wnut17",), **DEFAULTS)
    ap.add_argument("--stride", type=int, default=32, help="sub-tokens shared by the windows of a long sentence")
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test sentences only")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    log = Report(Path(args.out or "/tmp/finetune_compare_wnut17.txt"))

    import transformers
    mdir = model_dir()
    train_all, test = read_conll(TRAIN), read_conll(TEST)
    tags = tag_set(train_all)  # from the whole file, so a subset keeps every label
    train = train_all[:args.train_limit] if args.train_limit else train_all
    test_all = len(test)
    test = test[:args.test_limit] if args.test_limit else test
    tok = AutoTokenizer.from_pretrained(mdir)
    train_feats = encode_sentences(tok, train, tags, args.max_seq_length, args.stride, source=str(TRAIN))
    test_feats = encode_sentences(tok, test, tags, args.max_seq_length, args.stride, source=str(TEST))
    checked, ids_bad, labels_bad = hf_alignment(transformers.AutoTokenizer.from_pretrained(mdir), train,
                                                train_feats, tags, args.max_seq_length)
    n_ent = sum(t.startswith("B-") for s in test for t in s.tags)
    log(f"task wnut17: WNUT-17 {TRAIN.name} -> {TEST.name} (test), {len(tags)} tags: {', '.join(tags)}")
    log(f"train: {'first ' if args.train_limit else ''}{len(train)} of {len(train_all)} sentences "
        f"({len(train_feats)} windows), {args.epochs} epoch(s); test: {len(test)} of {test_all} sentences "
        f"({len(test_feats)} windows, {n_ent} entities); windows vs transformers' tokenizer + word_ids() labels on "
        f"{checked} sentences: {ids_bad} input id / {labels_bad} label mismatches")
    log(f"model: all-MiniLM-L6-v2 encoder ({mdir}) + fresh token-classification head; AdamW lr {args.lr:g} betas "
        f"0.9/0.999 eps 1e-8 wd {args.weight_decay} (not on biases/LayerNorm), warm-up {args.warmup:.0%} then "
        f"linear decay, clip {args.clip}, batch {args.batch_size}, max length {args.max_seq_length} (stride "
        f"{args.stride}), {dropout_text(args.dropout)}, fp32; seeds {seeds}"
        + (f"; stop after {args.max_steps} steps" if args.max_steps else ""))
    log(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")

    t_start = time.perf_counter()
    results = []
    for s in seeds:
        results.append(run_seed(s, args, tags, train_feats, test_feats, test, tok.pad_token_id or 0, mdir, log))
        table = summary(args, results, len(train), len(test), time.perf_counter() - t_start)
        log.save(table, {"args": vars(args), "tags": list(tags), "results": results})
    for line in table:
        log(line)
    print(f"wrote {log.out}")
    return results


if __name__ == "__main__":
    main()
