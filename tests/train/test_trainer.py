import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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
