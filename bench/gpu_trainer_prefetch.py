"""Why is the compiled Trainer slower than the bench's own loop? The Trainer raced against itself.

Session 19 (H200) measured `bertkit pretrain --compile`'s loop (the Trainer) at 882 and 1,029 seq/s at
512 x 32, against 1,084 and 1,094 for `bench/gpu.py`'s own step loop. There a compiled step's host time equals
its kernel time, so whatever the Trainer adds to the host's work shows in the step. This races Trainer
variants, each run compiled afresh (`torch._dynamo.reset()`; the compile cache is warm after the first), on
`bench/gpu.py`'s batches, in rounds:
  * `--prefetch`: TrainConfig.prefetch, 2 (the default on CUDA: a background thread prepares and pins the
    next batches) against 0 (inline, as the bench's loop). Session 19's run 3: 33.2 against 33.5 ms per step,
    so not the thread;
  * `--log-every`: how often the Trainer logs (each log synchronises with the GPU); also its warm-up;
  * `--with-loop`: the bench's own step loop too, in each round, as the reference.

    python bench/gpu_trainer_prefetch.py --out p.json                          # 512 x 32, prefetch 2 and 0
    python bench/gpu_trainer_prefetch.py --prefetch 2 --log-every 5 20 --with-loop --out p.json
    python bench/gpu_trainer_prefetch.py --smoke --out p.json                  # tiny config on the CPU
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gpu import (FULL, SMOKE, bertkit_step, fresh_compiler, make_config, pretraining_batches,  # noqa: E402
                       time_steps, trainer_run)
from bertkit.modeling import BertForPreTraining  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results (rewritten after every run)")
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU (aot_eager), few steps")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 512; 64 with --smoke)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 32; 4 with --smoke)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds: each variant once per round (default 2)")
    ap.add_argument("--prefetch", type=int, nargs="+", default=[2, 0], help="depths to race (default 2 0)")
    ap.add_argument("--log-every", type=int, nargs="+", default=[None],
                    help="log intervals to race (default: the warm-up's 5 steps, as bench/gpu.py)")
    ap.add_argument("--with-loop", action="store_true", help="the bench's own step loop too, in each round")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="eager runs")
    return ap


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
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
    variants = [("trainer", depth, every) for depth, every in itertools.product(args.prefetch, args.log_every)]
    variants = ([("loop", None, None)] if args.with_loop else []) + variants
    res = {"device": hw, "torch": torch.__version__, "seq": seq, "batch": batch, "compiled": args.compile,
           "runs": []}
    print(f"{hw}, torch {torch.__version__}, {seq} x {batch}, {'compiled' if args.compile else 'eager'}, "
          f"{len(variants)} variants x {args.rounds} rounds", flush=True)
    for r in range(args.rounds):
        for kind, depth, every in variants:
            if args.compile:
                fresh_compiler()
            t0 = time.perf_counter()
            if kind == "loop":
                torch.manual_seed(0)
                model = BertForPreTraining(cfg).to(device)
                step = bertkit_step(model, device, torch.bfloat16, args.compile, args.backend)
                out = time_steps(step, batches, args.warmup, args.steps, device)
                name = "bench loop"
                del model, step   # not held through the Trainer's runs (their peak memory)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                out = trainer_run(args, device, torch.bfloat16, cfg, batches, args.compile, prefetch=depth,
                                  log_every=every)
                name = f"Trainer, prefetch {depth}, log every {out['log_every']}"
            res["runs"].append({"round": r, "variant": name, "prefetch": depth, **out})
            print(f"  round {r} {name:34s} {out['sequences_per_s']:8.1f} seq/s  {out['step_ms']:6.1f} ms/step  "
                  f"(run {time.perf_counter() - t0:.0f} s)", flush=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
    for name in dict.fromkeys(x["variant"] for x in res["runs"]):
        ms = sorted(x["step_ms"] for x in res["runs"] if x["variant"] == name)
        print(f"{name}: ms/step {', '.join(f'{m:.1f}' for m in ms)}")
    return res


if __name__ == "__main__":
    main()
