import json
import os
import random
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bertkit.modeling import BertForPreTraining
from bertkit.train import TrainConfig, Trainer, find_latest, read_metrics
from bertkit.train.tracking import Tracker
from bertkit.train.trainer import resolve_precision

from .tiny import PretrainObjective, TinySource, tiny_config

SCRIPT = Path(__file__).with_name("tiny.py")


pytestmark = pytest.mark.usefixtures("one_thread")


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _start(*args):
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, expect_rc=0):
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == expect_rc, f"rc {proc.returncode}\n{out}\n{err}"
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else None


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_exact_resume_after_sigkill(tmp_path):
    """8 steps x 2 micro-batches, dropout on, a checkpoint every 3 steps. The second run SIGKILLs itself when
    it asks for micro-batch 15 (the 2nd of step 8): steps 1-7 done, step 7 never saved. Resuming from
    step-000006 must land on bitwise the same weights as the uninterrupted run."""
    common = ["--steps", 8, "--batch", 4, "--accum", 2, "--save-every", 3, "--dropout", 0.1]
    full = _start("--out", tmp_path / "full", *common)
    cut = _start("--out", tmp_path / "cut", *common, "--kill-at", 15)
    full_result = _finish(full)
    _finish(cut, expect_rc=-signal.SIGKILL)
    assert sorted(os.listdir(tmp_path / "cut")) == [".lock", "latest", "metrics.jsonl", "step-000003", "step-000006"]
    assert [r["step"] for r in read_metrics(tmp_path / "cut")] == [1, 2, 3, 4, 5, 6, 7]

    resumed = _finish(_start("--out", tmp_path / "cut", *common, "--resume"))
    assert resumed["served"] == [12, 13, 14, 15]  # continues at step 7's batches: no replay, no skip
    assert full_result["served"] == list(range(16))

    a = torch.load(tmp_path / "full" / "final_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "final_weights.pt", weights_only=True)
    diff = _max_diff(a, b)
    print(f"\nexact resume: 8 steps, killed (SIGKILL) during step 8 after checkpoint step 6, "
          f"resumed from step 6: max |weight diff| = {diff}")
    assert diff == 0.0
    assert all(torch.equal(a[k], b[k]) for k in a)

    # The run's record is whole: one line per step, the resumed steps identical to the uninterrupted ones.
    full_log = read_metrics(tmp_path / "full")
    cut_log = read_metrics(tmp_path / "cut")
    assert [r["step"] for r in cut_log] == list(range(1, 9))
    for x, y in zip(full_log, cut_log):
        assert {k: v for k, v in x.items() if k not in ("tokens_per_s", "elapsed")} == \
               {k: v for k, v in y.items() if k not in ("tokens_per_s", "elapsed")}
    assert find_latest(tmp_path / "cut").endswith("step-000008")


class _Interrupt(Exception):
    pass


class _CrashingSource(TinySource):
    """TinySource that raises when asked for batch `crash_at`: a crash inside the step loop, in-process."""

    def __init__(self, *args, crash_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at = crash_at

    def __next__(self):
        if self.pos == self.crash_at:
            raise _Interrupt
        return super().__next__()


def test_resume_refuses_other_training_settings(tmp_path, capsys):
    """The optimizer's saved state brings back its learning rate and weight decay, so a resume that asked for
    others would silently not use them: refused, like another seed or precision. More steps are allowed (and
    said); fewer than the checkpoint's are an error."""
    def run(resume=False, **changes):
        torch.manual_seed(0)
        model = BertForPreTraining(tiny_config(0.1))
        cfg = TrainConfig(**{**dict(max_steps=4, batch_size=4, lr=1e-3, warmup_steps=1, save_every=2,
                                    output_dir=str(tmp_path), tensorboard=False, progress=False), **changes})
        return Trainer(PretrainObjective(model), model, TinySource(4, seed=7), cfg).train(resume=resume)

    run()
    for changes, said in (({"lr": 5e-3}, "lr 0.005 (the checkpoint's: 0.001)"),
                          ({"weight_decay": 0.5, "seed": 1}, "weight_decay 0.5 (the checkpoint's: 0.01), seed 1 "
                                                             "(the checkpoint's: 0)"),
                          ({"optimizer": "lamb"}, "optimizer 'lamb' (the checkpoint's: 'adamw')")):
        with pytest.raises(ValueError, match=re.escape(f"resuming needs the settings the run was trained with; "
                                                       f"these differ: {said}")):
            run(resume=True, **changes)
    with pytest.raises(ValueError, match="is at step 4, past max_steps 3"):
        run(resume=True, max_steps=3)
    capsys.readouterr()
    assert run(resume=True, max_steps=6, log_every=1)["step"] == 6
    assert "the learning-rate schedule changes (max_steps 4 -> 6)" in capsys.readouterr().out
    # the resumed steps take the 6-step schedule's rates (1e-3 * (6 - s) / 5 at 0-based step s), not the
    # saved 4-step one's (0 at step 4: that step would have been lost)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in lines if r["split"] == "train"}
    assert lr[5] == pytest.approx(1e-3 * 2 / 5) and lr[6] == pytest.approx(1e-3 * 1 / 5)


def test_one_run_at_a_time_in_a_directory_and_no_mixing_with_old_checkpoints(tmp_path, another_job):
    from bertkit.train.trainer import run_lock

    def trainer(source=None, out=tmp_path, max_steps=2):
        torch.manual_seed(0)
        model = BertForPreTraining(tiny_config(0.1))
        cfg = TrainConfig(max_steps=max_steps, batch_size=4, lr=1e-3, output_dir=str(out), tensorboard=False,
                          progress=False)
        return Trainer(PretrainObjective(model), model, source or TinySource(4, seed=7), cfg)

    with another_job(tmp_path):  # as another process still training there holds it
        with pytest.raises(ValueError, match="another process is training there \\(pid 4242\\)"):
            trainer().train()
    assert find_latest(tmp_path) is None
    with run_lock(tmp_path):  # this process's own lock (a job preparing its data) lets its trainer in
        trainer().train()
    with pytest.raises(ValueError, match="already holds checkpoints .*train\\(resume=True\\) continues them"):
        trainer().train()  # a fresh run's checkpoints would interleave with (and be pruned against) these

    def plain():  # a batch source without state_dict(): a resume cannot go on where it stopped
        source = TinySource(4, seed=7)
        yield from source
    trainer(plain(), tmp_path / "plain").train()
    with pytest.warns(UserWarning, match="holds no data position .* sees other batches"):
        trainer(plain(), tmp_path / "plain", max_steps=3).train(resume=True)


def test_a_failed_job_removes_only_the_directory_it_made_and_only_when_told(tmp_path, another_job):
    """`run_lock(discard_new=...)`: a failure (an error, Ctrl-C) in a directory this lock made removes it when
    `discard_new()` says so; a directory that was there, a run that has something to keep, and a job refused by
    another's lock (even into a directory it saw missing) leave it; a file in the way is named."""
    from bertkit.train.trainer import run_lock

    def fail(path, exc=KeyboardInterrupt, discard=True):
        with pytest.raises(exc):
            with run_lock(path, discard_new=lambda: discard):
                (path / "finetune_args.json").write_text("{}")
                raise exc()
    fail(tmp_path / "new")
    fail(tmp_path / "new-error", RuntimeError)
    assert not (tmp_path / "new").exists() and not (tmp_path / "new-error").exists()
    fail(tmp_path / "kept", discard=False)  # e.g. it holds a checkpoint
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [".lock", "finetune_args.json"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    fail(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    other = tmp_path / "other"   # another job made it and trains there
    with another_job(other):
        with pytest.raises(ValueError, match="another process is training there"):
            with run_lock(other, discard_new=lambda: True):
                pass
    assert other.is_dir() and (other / ".lock").is_file()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="afile: a file, not a directory; a run writes its files into a directory"):
        with run_lock(tmp_path / "afile"):
            pass
    assert (tmp_path / "afile").read_text() == "x"


def test_a_resume_between_log_lines_logs_what_an_uninterrupted_run_logs(tmp_path, monkeypatch):
    """Log every 4 steps, checkpoint every 3, crash during step 8: the checkpoint of step 6 holds steps 5-6
    of the open log window, so the resumed run's line at step 8 averages steps 5-8 like the uninterrupted
    one (not 7-8), its time included. The trainer's clock is a fake one that a forward pass moves by 1 s,
    so that a stall of the machine (a checkpoint's fsync) cannot change the figures."""
    import types

    from bertkit.train import trainer
    clock = [0.0]
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def tick(*_):
        clock[0] += 1.0

    def run(out, crash_at=None, resume=False):
        torch.manual_seed(1234)
        model = BertForPreTraining(tiny_config(0.1))
        model.register_forward_pre_hook(tick)
        cfg = TrainConfig(max_steps=8, batch_size=4, lr=1e-3, warmup_steps=1, log_every=4, save_every=3,
                          output_dir=str(out), tensorboard=False, progress=False, seed=3, save_final=False)
        source = _CrashingSource(4, seed=7, crash_at=crash_at)
        return Trainer(PretrainObjective(model), model, source, cfg).train(resume=resume)

    full = run(tmp_path / "full")
    with pytest.raises(_Interrupt):
        run(tmp_path / "cut", crash_at=7)
    resumed = run(tmp_path / "cut", resume=True)
    full_log, cut_log = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["step"] for r in cut_log] == [r["step"] for r in full_log] == [4, 8]
    for x, y in zip(full_log, cut_log):
        assert {k: v for k, v in x.items() if k not in ("tokens_per_s", "elapsed")} == \
               {k: v for k, v in y.items() if k not in ("tokens_per_s", "elapsed")}
    assert resumed["loss"] == full["loss"] and resumed["grad_norm"] == full["grad_norm"]
    # 4 steps' tokens over the 4 s of steps 5-8 (2 s of them before the crash), not over the resumed 2 s alone
    assert cut_log[-1]["tokens_per_s"] == full_log[-1]["tokens_per_s"] > 0


def _train(out, batch, accum, steps=3, dropout=0.0, evaluate=None, save_extra=None, **kw):
    torch.manual_seed(1234)
    model = BertForPreTraining(tiny_config(dropout))
    kw.setdefault("save_final", False)
    kw.setdefault("log_every", 1)
    cfg = TrainConfig(max_steps=steps, batch_size=batch, grad_accum=accum, lr=1e-3, warmup_steps=1,
                      output_dir=str(out), tensorboard=False, progress=False, seed=3, **kw)
    source = TinySource(batch, seed=7)
    trainer = Trainer(PretrainObjective(model), model, source, cfg, evaluate=evaluate, save_extra=save_extra)
    grads = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: grads.append({n: p.grad.clone() for n, p in model.named_parameters()}))
    metrics = trainer.train()
    return model, grads, metrics, source


def test_accumulation_equals_one_big_batch(tmp_path):
    # The two micro-batches hold different numbers of MLM labels, so averaging per micro-batch would be wrong.
    src = TinySource(4, seed=7)
    n = [int((next(src)["labels"] != -100).sum()) for _ in range(6)]
    assert any(n[i] != n[i + 1] for i in range(0, 6, 2)), n

    small, g_small, m_small, s_small = _train(tmp_path / "a", batch=4, accum=2)
    big, g_big, m_big, s_big = _train(tmp_path / "b", batch=8, accum=1)
    assert s_small.pos == 6 and s_big.pos == 3
    grad_diff = max(_max_diff(x, y) for x, y in zip(g_small, g_big))
    weight_diff = _max_diff(dict(small.named_parameters()), dict(big.named_parameters()))
    print(f"\naccumulation 2 x 4 vs 1 x 8: max |grad diff| {grad_diff:.2e}, max |weight diff| {weight_diff:.2e}")
    assert grad_diff <= 1e-6 and weight_diff <= 1e-6
    for k in ("loss", "loss_mlm", "loss_nsp", "acc_mlm", "acc_nsp", "grad_norm"):
        assert m_small[k] == pytest.approx(m_big[k], rel=1e-6, abs=1e-7), k


def test_evaluation_checkpoints_and_rng_isolation(tmp_path):
    calls = []

    def evaluate(model):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(1000), random.random()  # consumes random numbers: must not change training
        calls.append(1)
        return {"loss": 1.5, "acc_mlm": 0.25}

    def save_extra(directory):
        Path(directory, "vocab.txt").write_text("[PAD]\n")

    with_eval, _, metrics, _ = _train(tmp_path / "e", batch=4, accum=1, steps=5, dropout=0.1,
                                      evaluate=evaluate, save_extra=save_extra, eval_every=2, save_every=2,
                                      keep_last=2, save_final=True)
    without, _, _, _ = _train(tmp_path / "n", batch=4, accum=1, steps=5, dropout=0.1)
    for (n, a), b in zip(with_eval.named_parameters(), without.parameters()):
        assert torch.equal(a, b), n
    assert len(calls) == 3  # steps 2, 4 and the last
    evals = [r for r in read_metrics(tmp_path / "e") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 5] and evals[0]["acc_mlm"] == 0.25
    assert metrics["eval_loss"] == 1.5 and metrics["step"] == 5 and "loss_mlm" in metrics
    assert sorted(d for d in os.listdir(tmp_path / "e") if d.startswith("step-")) == ["step-000004", "step-000005"]
    for d in ("step-000004", "step-000005"):
        assert sorted(os.listdir(tmp_path / "e" / d)) == ["config.json", "model.safetensors",
                                                          "training_state.pt", "vocab.txt"]
    state = torch.load(tmp_path / "e" / "step-000004" / "training_state.pt", weights_only=True)
    assert state["step"] == 4 and state["data"] == [{"pos": 4}] and len(state["rng"]) == 1
    train_lines = [r for r in read_metrics(tmp_path / "e") if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4, 5]
    assert {"lr", "loss", "loss_mlm", "loss_nsp", "acc_mlm", "acc_nsp", "grad_norm", "tokens_per_s",
            "elapsed"} <= set(train_lines[0])


def test_steps_without_bookkeeping_leave_the_random_states_alone(tmp_path, monkeypatch):
    """Saving and restoring every random state costs the host ~0.25 ms, which a host-bound compiled GPU step
    would pay every step: only steps that log, evaluate or save isolate their random streams."""
    from bertkit.train import trainer as trainer_module
    entered = []
    real = trainer_module.rng_isolated

    def counting():
        entered.append(1)
        return real()

    monkeypatch.setattr(trainer_module, "rng_isolated", counting)
    _train(tmp_path, batch=4, accum=1, steps=6, log_every=3)
    assert len(entered) == 1 + 2  # the run's start (its tracker), then the log steps 3 and 6


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_on_cpu(tmp_path, precision):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    _, _, metrics, _ = _train(tmp_path, batch=4, accum=2, steps=2, precision=precision, save_final=True)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
    scaler = torch.load(tmp_path / "step-000002" / "training_state.pt", weights_only=True)["scaler"]
    assert (scaler is not None and scaler["scale"] > 1) if precision == "fp16" else scaler is None


def test_fp16_overflowed_steps_are_counted_and_leave_the_schedule(tmp_path):
    """A loss scale of 2**18 overflows the first fp16 steps: GradScaler skips their updates. They are logged
    (`skipped_steps`, `loss_scale`), kept out of `grad_norm`, and do not step the schedule (transformers'
    Trainer neither), though they count towards max_steps."""
    torch.manual_seed(1234)
    model = BertForPreTraining(tiny_config())
    cfg = TrainConfig(max_steps=8, batch_size=4, lr=1e-3, warmup_steps=2, log_every=4, output_dir=str(tmp_path),
                      tensorboard=False, progress=False, seed=3, save_final=False, precision="fp16")
    trainer = Trainer(PretrainObjective(model), model, TinySource(4, seed=7), cfg)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 18)
    trainer.train()
    lines = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    skipped = sum(r["skipped_steps"] for r in lines)
    updates = int(trainer.optimizer.state[next(model.parameters())]["step"])  # fused AdamW skips inside its kernel
    assert 0 < skipped < 8 and updates == 8 - skipped, (skipped, updates)
    assert trainer.step == 8 and trainer.scheduler.last_epoch == updates
    assert all(isinstance(r["grad_norm"], float) and 0 < r["grad_norm"] < float("inf") for r in lines), lines
    assert lines[0]["loss_scale"] < 2.0 ** 18 and lines[-1]["skipped_steps"] == 0


def test_objective_contract_errors(tmp_path):
    model = BertForPreTraining(tiny_config())

    class Stray(PretrainObjective):
        def __init__(self, model):
            super().__init__(model)
            self.extra = nn.Linear(2, 2)

    cfg = TrainConfig(max_steps=1, batch_size=4, output_dir=str(tmp_path), progress=False, tensorboard=False)
    with pytest.raises(ValueError, match="outside the model"):
        Trainer(Stray(model), model, TinySource(4), cfg)

    class BadStat(PretrainObjective):
        def forward(self, batch):
            sums, stats = super().forward(batch)
            return sums, {"correct": stats["acc_mlm"]}

    with pytest.raises(ValueError, match="<metric>_<term>"):
        Trainer(BadStat(model), model, TinySource(4), cfg).train()
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


def test_fsdp_in_a_single_process_warns_and_trains_unsharded(tmp_path):
    model = BertForPreTraining(tiny_config())
    cfg = TrainConfig(max_steps=1, batch_size=4, output_dir=str(tmp_path), progress=False, tensorboard=False,
                      fsdp=True)
    with pytest.warns(UserWarning, match="nothing to shard"):
        trainer = Trainer(PretrainObjective(model), model, TinySource(4), cfg)
    assert not trainer.sharded and trainer.wrapped is trainer.objective
    assert trainer.train()["step"] == 1


def test_log_window_regroups_when_the_number_of_ranks_changes():
    """The log line adds the ranks' sums up: resumed on another number of ranks, rank 0 carries them all; the
    counts, gradient norm and steps are global. On the same number, each rank takes its own."""
    from bertkit.train.trainer import _Window
    states = [{"sums": {"mlm": 2.0}, "stats": {"acc_mlm": 1.0}, "counts": {"mlm": 10.0}, "tokens": 5.0,
               "grad_norm": 3.0, "steps": 2, "seconds": 1.0},
              {"sums": {"mlm": 4.0}, "stats": {"acc_mlm": 3.0}, "counts": {"mlm": 10.0}, "tokens": 7.0,
               "grad_norm": 3.0, "steps": 2, "seconds": 1.5}]
    cpu = torch.device("cpu")
    first, other = _Window(cpu), _Window(cpu)
    first.load(states, 0, 3)
    other.load(states, 2, 3)
    assert (float(first.sums["mlm"]), float(first.stats["acc_mlm"]), first.tokens) == (6.0, 4.0, 12.0)
    assert (float(other.sums["mlm"]), float(other.stats["acc_mlm"]), other.tokens) == (0.0, 0.0, 0.0)
    for w in (first, other):
        assert float(w.counts["mlm"]) == 10.0 and float(w.grad_norm) == 3.0 and w.steps == 2
    same = _Window(cpu)
    same.load(states, 1, 2)
    assert float(same.sums["mlm"]) == 4.0 and same.tokens == 7.0
    assert same.state()["seconds"] >= 1.0  # the window's time goes on from where it was


def test_log_lines_wait_for_their_figures_without_stalling_the_steps(tmp_path, monkeypatch):
    """A log step queues its figures (on CUDA a non-blocking copy) and the line is written once they have
    landed, so the step loop never waits for the GPU. Here they never land by themselves: each line is then
    written before the next checkpoint (a resumed run rewrites what follows it) and the end, in order, with the
    figures an immediate write gives."""
    from bertkit.train import trainer as trainer_module
    _, _, now, _ = _train(tmp_path / "now", batch=4, accum=1, steps=5, save_every=3)
    written, saved, steps = [], [], [0]
    real_log, real_advance, real_save = Tracker.log, Tracker.advance, trainer_module.Trainer.save

    def advance(tracker, n=1):
        steps[0] += n
        real_advance(tracker, n)

    def log(tracker, step, metrics, split="train"):
        written.append((step, steps[0]))
        return real_log(tracker, step, metrics, split)

    def save(trainer, *a, **kw):
        saved.append((trainer.step, [r["step"] for r in read_metrics(trainer.cfg.output_dir)]))
        return real_save(trainer, *a, **kw)

    monkeypatch.setattr(trainer_module._PendingLog, "ready", lambda self: False)
    monkeypatch.setattr(Tracker, "log", log)
    monkeypatch.setattr(Tracker, "advance", advance)
    monkeypatch.setattr(trainer_module.Trainer, "save", save)
    _, _, later, _ = _train(tmp_path / "later", batch=4, accum=1, steps=5, save_every=3)
    assert written == [(1, 3), (2, 3), (3, 3), (4, 5), (5, 5)]   # (line's step, step when written)
    assert saved == [(3, [1, 2, 3])]
    for a, b in zip(read_metrics(tmp_path / "now"), read_metrics(tmp_path / "later")):
        assert {k: v for k, v in a.items() if k not in ("tokens_per_s", "elapsed")} == \
               {k: v for k, v in b.items() if k not in ("tokens_per_s", "elapsed")}
    assert {k: v for k, v in now.items() if k not in ("tokens_per_s", "elapsed")} == \
           {k: v for k, v in later.items() if k not in ("tokens_per_s", "elapsed")}
    assert [r["step"] for r in read_metrics(tmp_path / "later")] == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------
# the step: clipping, the logged gradient norm, zero counts, seeding
# ---------------------------------------------------------------------------------------------

def _trainer(out, steps=2, dropout=0.0, source=None, objective=PretrainObjective, **kw) -> Trainer:
    """A tiny pre-training run (no warm-up: step 1 already moves the weights)."""
    torch.manual_seed(1234)
    model = BertForPreTraining(tiny_config(dropout))
    settings = dict(max_steps=steps, batch_size=4, lr=1e-3, warmup_steps=0, log_every=1, output_dir=str(out),
                    tensorboard=False, progress=False, seed=3, save_final=False)
    cfg = TrainConfig(**{**settings, **kw})
    return Trainer(objective(model), model, source or TinySource(4, seed=7), cfg)


def _grad_norms(trainer: Trainer) -> list[float]:
    """The global gradient norm each optimizer step is handed (after any clipping), appended as the run goes."""
    norms: list[float] = []

    def record(*_):
        grads = [p.grad.double() for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
    trainer.optimizer.register_step_pre_hook(record)
    return norms


def _train_lines(out) -> list[dict]:
    return [r for r in read_metrics(out) if r["split"] == "train"]


def test_gradients_are_clipped_to_max_grad_norm_and_the_log_averages_the_norms_before_clipping(tmp_path):
    """Gradients are clipped to max_grad_norm (`clip_grad_norm_`, not only measured), and the window's grad_norm
    is the sum of all its steps' norms, not its last step's. Unclipped, two steps' norms n1, n2: the line at step 2
    (log every 2) reads (n1 + n2) / 2. Clipped at 1e-3: the optimizer sees gradients of norm 1e-3, the line the norm
    before."""
    free = _trainer(tmp_path / "free", steps=2, log_every=2, max_grad_norm=0.0)
    unclipped = _grad_norms(free)
    free.train()
    assert len(unclipped) == 2 and min(unclipped) > 0.1 and unclipped[0] != unclipped[1]
    [line] = _train_lines(tmp_path / "free")
    assert line["step"] == 2 and line["grad_norm"] == pytest.approx(sum(unclipped) / 2, rel=1e-5)

    clipped_run = _trainer(tmp_path / "clipped", steps=1, max_grad_norm=1e-3)
    clipped = _grad_norms(clipped_run)
    clipped_run.train()
    assert clipped == [pytest.approx(1e-3, rel=1e-4)]   # clip_grad_norm_: g * 1e-3 / (norm + 1e-6)
    [line] = _train_lines(tmp_path / "clipped")
    assert line["grad_norm"] == pytest.approx(unclipped[0], rel=1e-5)   # the same first step, before clipping


def test_fp16_grad_norm_averages_over_the_steps_that_were_not_skipped(tmp_path):
    """The window's summed norm is divided by its steps that were not skipped, not by all its steps (an overflowed
    one's norm is inf and is left out of the sum). One 6-step log line must read the mean of the per-step lines'
    grad_norm over the steps that were not skipped."""
    def run(out, log_every):
        trainer = _trainer(out, steps=6, precision="fp16", log_every=log_every, warmup_steps=2)
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 18)
        trainer.train()
        return _train_lines(out)

    per_step = run(tmp_path / "each", 1)
    taken = [r["grad_norm"] for r in per_step if r["skipped_steps"] == 0]
    assert 0 < len(taken) < 6, per_step   # the window mixes skipped and taken steps
    [line] = run(tmp_path / "one", 6)
    assert line["skipped_steps"] == 6 - len(taken)
    assert line["grad_norm"] == pytest.approx(sum(taken) / len(taken), rel=1e-6)


class _NoMaskSource(TinySource):
    """TinySource whose batches hold no MLM label at all (a batch of short sequences can)."""

    def __next__(self):
        batch = super().__next__()
        batch["labels"].fill_(-100)
        return batch


class _MaskedSumObjective(PretrainObjective):
    """The MLM sum taken over every position, the unlabelled ones weighted 0 (google-research/bert's
    `label_weights`): with no label its gradient is 0, not absent."""

    def forward(self, batch):
        sums, stats = super().forward(batch)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"])
        weights = (batch["labels"] != -100).float()
        per_token = F.cross_entropy(out.prediction_logits.float().transpose(1, 2), batch["labels"].clamp(min=0),
                                    reduction="none")
        return {**sums, "mlm": (per_token * weights).sum()}, stats


def test_a_step_without_mlm_labels_trains_on_nsp_alone_and_logs_a_zero_mlm_loss(tmp_path):
    """Neither the loss nor the logged loss is divided by a raw count of 0 (0 / 0 = nan, which would poison every
    weight or metrics.jsonl). A term with no count contributes 0, as google-research/bert's
    `sum / (count + 1e-5)` gives."""
    trainer = _trainer(tmp_path, steps=2, source=_NoMaskSource(4, seed=7), objective=_MaskedSumObjective)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    lines = _train_lines(tmp_path)
    assert [r["loss_mlm"] for r in lines] == [0.0, 0.0] and [r["acc_mlm"] for r in lines] == [0.0, 0.0]
    assert all(r["loss"] == r["loss_nsp"] > 0 for r in lines)
    after = dict(trainer.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    assert not torch.equal(before["cls.seq_relationship.weight"], after["cls.seq_relationship.weight"])


class _DrawingObjective(PretrainObjective):
    """Records, at each forward, one draw from Python's, NumPy's and torch's global random streams."""

    draws: list

    def forward(self, batch):
        self.draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
        return super().forward(batch)


def test_train_seeds_python_numpy_and_torch_from_cfg_seed_whatever_the_state_before(tmp_path):
    """train() seeds torch (`torch.manual_seed`) and Python (`random.seed`) as well as NumPy, so dropout masks and
    any draw of the objective do not depend on what ran before `train()`. Two runs with the same `seed`, the global
    streams scrambled differently before each, draw the same numbers and end on the same weights."""
    def run(out, scramble):
        trainer = _trainer(out, steps=2, dropout=0.1, objective=_DrawingObjective)
        trainer.objective.draws = []
        random.seed(scramble), np.random.seed(scramble), torch.manual_seed(scramble)
        trainer.train()
        return trainer.objective.draws, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    draws_a, weights_a = run(tmp_path / "a", 1)
    draws_b, weights_b = run(tmp_path / "b", 2)
    assert draws_a == draws_b and len(draws_a) == 2
    assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)
    random.seed(3), np.random.seed(3), torch.manual_seed(3)   # cfg.seed + rank 0: the first step's draws
    assert draws_a[0] == (random.random(), float(np.random.rand()), float(torch.rand(())))


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["max_steps", "batch_size", "grad_accum", "log_every", "keep_last"])
def test_counts_of_train_config_must_be_positive(field):
    """keep_last is checked with the other counts; left out, `prune` would fail only at the first checkpoint,
    after the first `save_every` steps of training."""
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{field} must be a positive integer, got 0$"):
        TrainConfig(**{field: 0})


def test_warmup_may_last_the_whole_run_but_not_longer():
    """The check is `>`, not `>=`: a schedule warming up over every step (allowed by `linear_schedule`) is taken."""
    assert TrainConfig(max_steps=3, warmup_steps=3).warmup_steps == 3
    with pytest.raises(ValueError, match=r"^TrainConfig\.warmup_steps \(4\) exceeds max_steps \(3\)$"):
        TrainConfig(max_steps=3, warmup_steps=4)


def test_a_batch_source_yielding_another_batch_size_is_warned_about(tmp_path):
    """The batch size the source yields is checked: without it the run would report a wrong global batch without
    a word."""
    with pytest.warns(UserWarning, match="TrainConfig.batch_size is 8 but the batch source yields batches of 4"):
        _trainer(tmp_path, steps=1, batch_size=8).train()


def test_a_stat_is_divided_by_the_longest_count_name_it_ends_with(tmp_path):
    """The longest matching count name, not the shortest. With count terms `nsp` and `pair_nsp`, `acc_pair_nsp` is
    divided by the `pair_nsp` count (here 2 per sequence), not by `nsp`'s (1 per sequence)."""
    class Paired(PretrainObjective):
        def counts(self, batch):
            return {**super().counts(batch), "pair_nsp": 2 * batch["next_sentence_label"].numel()}

        def forward(self, batch):
            sums, stats = super().forward(batch)
            n = batch["next_sentence_label"].numel()
            return sums, {**stats, "acc_pair_nsp": torch.tensor(float(n))}

    _trainer(tmp_path, steps=1, objective=Paired).train()
    [line] = _train_lines(tmp_path)
    assert line["acc_pair_nsp"] == 0.5


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------

def test_elapsed_goes_on_across_a_resume(tmp_path, monkeypatch):
    """`elapsed` does not restart from 0 on resume. On a clock that a forward moves by 1 s, 4 steps read
    4 s at the last line, resumed from step 2 or not."""
    from bertkit.train import trainer as trainer_module
    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def run(out, crash_at=None, resume=False):
        trainer = _trainer(out, steps=4, log_every=4, save_every=2,
                           source=_CrashingSource(4, seed=7, crash_at=crash_at))
        trainer.model.register_forward_pre_hook(lambda *_: clock.__setitem__(0, clock[0] + 1.0))
        return trainer.train(resume=resume)

    assert run(tmp_path / "full")["elapsed"] == 4.0
    with pytest.raises(_Interrupt):
        run(tmp_path / "cut", crash_at=3)
    clock[0] += 1000.0   # the time between the crash and the resume is not the run's
    assert run(tmp_path / "cut", resume=True)["elapsed"] == 4.0
    assert [r["elapsed"] for r in _train_lines(tmp_path / "cut")] == [4.0]


def test_resuming_a_finished_run_with_its_max_steps_does_nothing(tmp_path):
    """The step check is `>`, not `>=`: a run at exactly max_steps (finished, or a job resumed once more) is not
    refused as past its end."""
    _trainer(tmp_path, steps=2, save_final=True).train()
    lines = (tmp_path / "metrics.jsonl").read_text()
    again = _trainer(tmp_path, steps=2, save_final=True)
    assert again.train(resume=True) == {"step": 2}
    assert again.batches.pos == 2 and (tmp_path / "metrics.jsonl").read_text() == lines


@pytest.mark.parametrize("changes, said", [
    ({"max_grad_norm": 0.5}, "max_grad_norm 0.5 (the checkpoint's: 1.0)"),
    ({"precision": "bf16"}, "precision 'bf16' (the checkpoint's: 'auto')"),
    ({"betas": (0.9, 0.98)}, "betas (0.9, 0.98) (the checkpoint's: (0.9, 0.999))"),
    ({"eps": 1e-8}, "eps 1e-08 (the checkpoint's: 1e-06)"),
])
def test_resume_refuses_another_clipping_precision_or_adam_setting(tmp_path, changes, said):
    """FIXED_ON_RESUME holds max_grad_norm and precision too (the existing test tries lr, weight_decay,
    seed and optimizer only)."""
    _trainer(tmp_path, steps=2, save_every=2).train()
    with pytest.raises(ValueError, match=re.escape(f"resuming needs the settings the run was trained with; these "
                                                   f"differ: {said}")):
        _trainer(tmp_path, steps=4, save_every=2, **changes).train(resume=True)


def test_resume_refuses_another_accumulation(tmp_path):
    """The global-batch check compares accumulation too, not the batch alone: the saved data position counts
    micro-batches, so resuming 2 x 4 with 1 x 4 would go on from other examples (the first test compares it to the
    batch size)."""
    _trainer(tmp_path, steps=2, save_every=2, grad_accum=2).train()
    with pytest.raises(ValueError, match=re.escape(
            "step-000002 was written by 1 process, each micro-batch 4 sequences in all, accumulation 2; resuming "
            "on 1 needs the same (a batch size of 4 per process, and accumulation 2), not 4 and 1")):
        _trainer(tmp_path, steps=4, save_every=2, grad_accum=1).train(resume=True)
