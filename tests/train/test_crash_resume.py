"""A run killed (SIGKILL) at any moment, a checkpoint's write included, and resumed ends where an uninterrupted run
ends: the same weights bit for bit, the same metrics.jsonl line for line, no leftovers; a checkpoint damaged by hand
is refused in one line, never passed over in silence.

The kills are real: a wrapper runs `tests/train/tiny.py` (or `python -m bertkit`) with one function replaced by
one that does part of its work and SIGKILLs its own process at its n-th call (`KILL=<point>:<n>`)."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit.modeling import BertForPreTraining
from bertkit.train import TrainConfig, Trainer
from bertkit.train.checkpoint import STATE_NAME

from .tiny import PretrainObjective, TinySource, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).parent
WORDS = "river stone cloud garden lamp window forest bridge engine letter market violin harbor candle".split()

# Replaces one function with a killer at its n-th call, then runs tiny.py's main or bertkit's command line.
WRAPPER = r'''
import io, os, shutil, signal, sys
import torch
from bertkit.train import checkpoint, tracking

point, n = os.environ["KILL"].split(":")
calls = [0]

def now():
    calls[0] += 1
    return calls[0] == int(n)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "state":      # the n-th training_state.pt written half, as a kill inside torch.save leaves it
    real_save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(f, str) and f.endswith(checkpoint.STATE_NAME) and now():
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            with open(f, "wb") as out:
                out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            die()
        return real_save(obj, f, *a, **k)
    checkpoint.torch.save = save
elif point == "line":     # the n-th metrics line cut short
    real_log = tracking.Tracker.log
    def log(self, step, metrics, split="train"):
        if now():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write('{"split": "train", "step": 99, "lr": 0.0001')
            die()
        return real_log(self, step, metrics, split)
    tracking.Tracker.log = log
elif point == "prune":    # the n-th checkpoint deletion killed after its training state went (rmtree's order is the
    real_rmtree = shutil.rmtree   # file system's)
    def rmtree(path, *a, **k):
        if os.path.isfile(os.path.join(path, checkpoint.STATE_NAME)) and now():
            os.remove(os.path.join(path, checkpoint.STATE_NAME))
            die()
        return real_rmtree(path, *a, **k)
    checkpoint.shutil.rmtree = rmtree
elif point == "latest":   # killed at the n-th `latest` write: the checkpoint is in place, `latest` not yet
    real_write = checkpoint.write_text_atomic
    def write(path, text):
        if now():
            die()
        return real_write(path, text)
    checkpoint.write_text_atomic = write
if sys.argv[1] == "tiny":
    sys.path.insert(0, TESTS)
    from tiny import main
    main(sys.argv[2:])
else:
    from bertkit.cli import main
    sys.exit(main(sys.argv[1:]))
'''


def _env(kill=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "KILL")}
    env["OMP_NUM_THREADS"] = "1"
    if kill:
        env["KILL"] = kill
    return env


def _run(tmp_path, args, kill=None):
    """Run the wrapper; with `kill`, it must die by SIGKILL. Returns (returncode, stderr)."""
    script = tmp_path / "wrapper.py"
    if not script.exists():
        script.write_text(f"TESTS = {str(HERE)!r}\n" + WRAPPER)
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], env=_env(kill or "none:0"),
                          capture_output=True, text=True, timeout=180)
    if kill:
        assert proc.returncode == -signal.SIGKILL, f"not killed at {kill}: rc {proc.returncode}\n{proc.stderr}"
    return proc.returncode, proc.stderr


def _log_lines(run):
    """metrics.jsonl as written, line for line (a duplicate or a cut line counts), less the timings."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "elapsed")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kills_inside_checkpoint_writes_log_lines_and_pruning_resume_to_the_uninterrupted_run(tmp_path):
    """10 steps, dropout on, a checkpoint every 2 steps (2 kept), a log line every step. One run is killed three
    times: half-way through writing step 4's training state (the torn checkpoint must never be loaded), then
    resumed and killed inside step 5's metrics line, then resumed and killed while pruning step 2's checkpoint
    after its training state was deleted (step 6 written). Each time --resume. The end: the uninterrupted run's
    weights bit for bit, its metrics.jsonl line for line, and only the two newest checkpoints left (a
    checkpoint half deleted by a kill once stayed, for good, as a directory named like one)."""
    common = ["--steps", 10, "--batch", 4, "--save-every", 2, "--dropout", 0.1]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert _run(tmp_path, ["tiny", "--out", ref, *common])[0] == 0
    _run(tmp_path, ["tiny", "--out", cut, *common], kill="state:2")
    assert [p.name for p in cut.iterdir() if p.name.startswith("step-") and "." not in p.name] == ["step-000002"]
    _run(tmp_path, ["tiny", "--out", cut, *common, "--resume"], kill="line:3")      # the line of step 5
    _run(tmp_path, ["tiny", "--out", cut, *common, "--resume"], kill="prune:1")     # pruning step 2 (after 6)
    assert _run(tmp_path, ["tiny", "--out", cut, *common, "--resume"])[0] == 0

    a = torch.load(ref / "final_weights.pt", weights_only=True)
    b = torch.load(cut / "final_weights.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log_lines(cut) == _log_lines(ref)
    assert [r["step"] for r in _log_lines(cut)] == list(range(1, 11))
    assert sorted(os.listdir(cut)) == sorted(os.listdir(ref)) == [".lock", "final_weights.pt", "latest",
                                                                  "metrics.jsonl", "step-000008", "step-000010"]


def _tiny_run(tmp_path, steps, resume=False):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(0.1))
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-3, warmup_steps=1, save_every=2, keep_last=2,
                      output_dir=str(tmp_path), tensorboard=False, progress=False)
    return Trainer(PretrainObjective(model), model, TinySource(4, seed=7), cfg).train(resume=resume)


def test_a_newest_checkpoint_damaged_by_hand_is_refused_in_one_line(tmp_path, capsys):
    """A checkpoint appears whole (a rename), so a newest step directory without its training state was emptied or
    damaged afterwards. Resume used to pass over it in silence: back to the checkpoint before, or (none kept) to
    step 0, redoing the training since; now a one-line error names it and what removing it would resume from. A
    state file cut short, or one that loads but is not a training state, is a one-line error naming the file."""
    _tiny_run(tmp_path, 4)
    newest = tmp_path / "step-000004"
    state = (newest / STATE_NAME).read_bytes()

    def refused(pattern):
        with pytest.raises(ValueError, match=pattern) as e:
            _tiny_run(tmp_path, 6, resume=True)
        assert "\n" not in str(e.value)

    (newest / STATE_NAME).unlink()
    refused(rf"^{re.escape(str(newest))}: a checkpoint directory without its {STATE_NAME} .*; remove that "
            r"directory to resume from step-000002$")
    (tmp_path / "step-000002" / STATE_NAME).unlink()
    refused(r"step-000004: .*; remove that directory to resume from step 0$")

    (newest / STATE_NAME).write_bytes(state[: len(state) // 2])
    refused(rf"^{re.escape(str(newest / STATE_NAME))}: refused to load: a damaged file")
    torch.save({"model": {}}, newest / STATE_NAME)
    refused(rf"^{re.escape(str(newest / STATE_NAME))}: not a bertkit training state: expected a dict of step, "
            r"optimizer, .*, got a dict without step, optimizer, scheduler, scaler, rng, data, extra$")
    (newest / STATE_NAME).write_bytes(state)   # repaired: the run goes on
    assert _tiny_run(tmp_path, 6, resume=True)["step"] == 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """50 short documents (the held-out twentieth needs 40 or more)."""
    import random
    rng = random.Random(0)
    docs = ["\n".join(f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)}." for _ in range(5))
            for _ in range(50)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def test_pretrain_killed_before_latest_is_written_is_still_a_run_a_fresh_start_refuses(corpus, tmp_path):
    """Killed between the first checkpoint's rename and the write of `latest`, the run directory holds a complete
    checkpoint but no `latest`. A rerun without --resume was let through the job's check (it looked for `latest`
    alone): it rewrote pretrain_args.json with its own settings (which a later --resume is then checked against)
    and retrained the vocabulary before the trainer refused it. Now it is refused first, in one line, and
    changes nothing; --resume then continues the run."""
    run = tmp_path / "run"
    args = ["pretrain", "--corpus", corpus, "--output", run, "--vocab-size", "100", "--model-size", "tiny",
            "--max-steps", "4", "--batch-size", "4", "--seq-len", "24", "--eval-batches", "1", "--save-every", "2",
            "--seed", "3"]
    _run(tmp_path, args, kill="latest:1")
    assert (run / "step-000002" / STATE_NAME).is_file() and not (run / "latest").exists()
    saved_args = (run / "pretrain_args.json").read_bytes()
    vocab = run / "tokenizer" / "vocab.txt"
    stamp = vocab.stat().st_mtime_ns

    rc, err = _run(tmp_path, [*args, "--lr", "5e-4"])
    assert (run / "pretrain_args.json").read_bytes() == saved_args and vocab.stat().st_mtime_ns == stamp
    assert rc == 2
    assert err.strip().splitlines()[-1] == (f"bertkit pretrain: error: {run} already holds a run; pass --resume to "
                                           "continue it or choose another --output")

    assert _run(tmp_path, [*args, "--resume"])[0] == 0
    assert load_file(run / "model.safetensors")
    assert [r["step"] for r in _log_lines(run) if r["split"] == "train"] == [4]
