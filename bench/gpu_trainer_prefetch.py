"""Does the Trainer's prefetch thread slow a host-bound compiled step? The Trainer raced against itself.

Session 19 (H200) measured `bertkit pretrain --compile`'s loop (the Trainer, which prepares and pins the next
batches in a background thread) at 882 and 1,029 seq/s at 512 x 32, against 1,084 and 1,094 for the bench's
own loop, which prepares each batch inline. There a compiled step's host time equals its kernel time, so a
thread that takes the GIL from the launching thread would show in the step. This races the Trainer with
`prefetch` 2 (the default on CUDA) and 0 (inline, as the bench's loop), alternating, each run compiled afresh
(`torch._dynamo.reset()`; the compile cache is warm after the first), on the same batches as `bench/gpu.py`.

    python bench/gpu_trainer_prefetch.py --out p.json                 # 512 x 32, 2 rounds, compiled
    python bench/gpu_trainer_prefetch.py --smoke --out p.json         # tiny config on the CPU: the code path
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gpu import FULL, SMOKE, fresh_compiler, make_config, pretraining_batches, trainer_run  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results (rewritten after every run)")
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU (aot_eager), few steps")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 512; 64 with --smoke)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 32; 4 with --smoke)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each prefetch depth, alternating")
    ap.add_argument("--prefetch", type=int, nargs="+", default=[2, 0], help="depths to race (default 2 0)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="eager Trainer runs")
    args = ap.parse_args(argv)
    for k, v in (SMOKE if args.smoke else FULL).items():
        setattr(args, k, v)
    seq = args.seq or (64 if args.smoke else 512)
    batch = args.batch or (4 if args.smoke else 32)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke on the CPU")
    args.backend = "aot_eager" if args.smoke else "inductor"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cfg = make_config(args.size, args.vocab)
    batches = pretraining_batches(args.n_batches, seq, batch, args.vocab, seed=seq)
    res = {"device": hw, "torch": torch.__version__, "seq": seq, "batch": batch, "compiled": args.compile,
           "runs": []}
    print(f"{hw}, torch {torch.__version__}, Trainer at {seq} x {batch}, "
          f"{'compiled' if args.compile else 'eager'}, prefetch {args.prefetch} x {args.rounds} rounds", flush=True)
    for r in range(args.rounds):
        for depth in args.prefetch:
            if args.compile:
                fresh_compiler()
            t0 = time.perf_counter()
            out = trainer_run(args, device, torch.bfloat16, cfg, batches, args.compile, prefetch=depth)
            res["runs"].append({"round": r, "prefetch": depth, **out})
            print(f"  round {r} prefetch {depth}: {out['sequences_per_s']:8.1f} seq/s  {out['step_ms']:6.1f} "
                  f"ms/step  (run {time.perf_counter() - t0:.0f} s)", flush=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
    for depth in args.prefetch:
        ms = sorted(x["step_ms"] for x in res["runs"] if x["prefetch"] == depth)
        print(f"prefetch {depth}: ms/step {', '.join(f'{m:.1f}' for m in ms)}")
    return res


if __name__ == "__main__":
    main()
