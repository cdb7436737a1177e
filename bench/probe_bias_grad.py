"""Probe: where the compiled pre-training step's `aten::sum` reduce kernels come from (46 per step at
512 x 32 on an H200, session 22), and whether a linear written as matmul + bias add (so the bias gradient
can fuse into the neighbouring Triton kernels) is faster. Bench-only: it patches F.linear in this process.

    TORCH_LOGS=output_code python bench/probe_bias_grad.py 2> code.log   # GPU
    python bench/probe_bias_grad.py --smoke                              # CPU plumbing
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import gpu as G  # noqa: E402
from bertkit.modeling import BertForPreTraining  # noqa: E402

_linear = F.linear


def split_linear(x, w, b=None):
    """x @ w.T, then the bias as a separate add (in the compute dtype, as addmm would)."""
    y = torch.matmul(x, w.t())                                 # (..., out)
    return y if b is None else y + b.to(y.dtype)


def summarize(path: str) -> None:
    """Per compile (the '=== label' markers): the extern and ATen calls in the generated call() functions,
    and the source nodes of each aten.sum call."""
    label, calls, sources, last_comment = "?", {}, {}, ""
    def report():
        if calls:
            print(f"--- {label}: " + ", ".join(f"{k} x{v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])))
            for src, n in sorted(sources.items(), key=lambda kv: -kv[1])[:12]:
                print(f"    sum x{n} from {src}")
    for line in open(path, errors="replace"):
        if line.startswith("=== "):
            report()
            label, calls, sources = line[4:].strip(), {}, {}
            continue
        code = line.split("[__output_code]", 1)[-1].rstrip("\n")
        stripped = code.strip()
        if stripped.startswith("# Topologically Sorted Source Nodes"):
            last_comment = stripped[len("# Topologically Sorted Source Nodes: "):][:110]
            continue
        for prefix in ("extern_kernels.", "aten.", "torch.ops.aten."):
            head = stripped.split("= ", 1)[-1] if " = " in stripped else stripped
            if head.startswith(prefix) and "(" in head:
                name = head.split("(", 1)[0]
                calls[name] = calls.get(name, 0) + 1
                if ".sum" in name:
                    sources[last_comment] = sources.get(last_comment, 0) + 1
                break
    report()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summarize", metavar="CODE_LOG", help="summarize a TORCH_LOGS=output_code log and exit")
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU (aot_eager: no code log)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    return ap


def main(argv=None) -> None:
    a = build_parser().parse_args(argv)
    if a.summarize:
        return summarize(a.summarize)
    device = torch.device("cpu" if a.smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    size, vocab, seq, batch, backend = ("base", 30522, a.seq, a.batch, "inductor")
    if a.smoke:
        size, vocab, seq, batch, backend = ("tiny", 512, 48, 3, "aot_eager")
    cfg = G.make_config(size, vocab)
    batches = G.pretraining_batches(8, seq, batch, vocab, seed=1)
    try:
        for r in range(a.rounds):
            for label, fn in (("addmm (shipped)", _linear), ("matmul + bias add", split_linear)):
                F.linear = fn
                print(f"=== {label}", file=sys.stderr, flush=True)
                G.fresh_compiler()
                torch.manual_seed(0)
                model = BertForPreTraining(cfg).to(device)
                step = G.bertkit_step(model, device, torch.bfloat16, compiled=True, backend=backend)
                res = G.time_steps(step, batches, warmup=5, steps=3 if a.smoke else 30, device=device)
                print(f"round {r} {label:20s} {res['step_ms']:7.2f} ms/step  host {res['host_ms_per_step']:6.2f}  "
                      f"{res['sequences_per_s']:7.1f} seq/s  warm-up {res['warmup_s']:.0f} s  "
                      f"loss {res['last_loss']:.4f}", flush=True)
                del model, step
    finally:
        F.linear = _linear


if __name__ == "__main__":
    main()
