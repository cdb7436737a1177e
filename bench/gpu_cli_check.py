"""`bertkit predict` on the GPU against the CPU, end to end through the command line: a small random
classifier (its own vocabulary, 2 labels) over 512 generated texts of 3-200 words, predicted once with
`--device cpu` (fp32) and once with `--device cuda` (default precision: bf16 autocast, so the varlen kernel).
Prints and writes the label agreement, the largest score difference and both wall times. Not a race with
transformers (their CLI has no counterpart): a check that the GPU path of the CLI runs and agrees.

    python bench/gpu_cli_check.py --out cli.json
    python bench/gpu_cli_check.py --smoke --out cli.json   # the second run on the CPU too, under bf16 autocast
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bertkit from this checkout, installed or not (the GPU machine's image has it not)

WORDS = ("the a film story was very good bad plot actor music scene long short quite really not "
         "fine awful lovely dull bright slow fast").split()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--smoke", action="store_true", help="no GPU: the second run on the CPU under bf16 autocast")
    return p


def make_model(directory: Path) -> None:
    import torch

    from bertkit import BertConfig, BertForSequenceClassification
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer.train_from_iterator([" ".join(WORDS)] * 4, vocab_size=64)
    tok.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=512, id2label={0: "neg", 1: "pos"})
    BertForSequenceClassification(config).save_pretrained(directory)


def predict(model: Path, data: Path, output: Path, *device_args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bertkit", "predict", "--model", str(model), "--data", str(data),
                    "--output", str(output), "--max-seq-length", "256", *device_args], check=True, cwd=ROOT)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model")
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 200))) for _ in range(512)]
        (tmp / "data.tsv").write_text("text\n" + "\n".join(texts) + "\n", encoding="utf-8")
        cpu_s = predict(tmp / "model", tmp / "data.tsv", tmp / "cpu.jsonl", "--device", "cpu")
        second = ["--device", "cpu", "--precision", "bf16"] if args.smoke else ["--device", "cuda"]
        gpu_s = predict(tmp / "model", tmp / "data.tsv", tmp / "gpu.jsonl", *second)
        a, b = ([json.loads(x) for x in (tmp / n).read_text().splitlines()] for n in ("cpu.jsonl", "gpu.jsonl"))
    result = {"texts": len(texts), "second_run": " ".join(second), "label_agreement":
              sum(x["label"] == y["label"] for x, y in zip(a, b)) / len(a),
              "max_score_diff": max(abs(x["score"] - y["score"]) for x, y in zip(a, b)),
              "cpu_fp32_s": round(cpu_s, 2), "second_s": round(gpu_s, 2)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
