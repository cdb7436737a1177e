"""What a long run's bookkeeping must not do: count the time of its evaluations and checkpoints as training."""
from __future__ import annotations

import types

import torch

from bertkit.modeling import BertForPreTraining
from bertkit.train import TrainConfig, Trainer
from bertkit.train.checkpoint import load_training_state
from bertkit.train.tracking import read_metrics
from tests.train.tiny import PretrainObjective, TinySource, tiny_config


class _CountingSource(TinySource):
    """TinySource that records each batch's real tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens: list[float] = []

    def __next__(self):
        batch = super().__next__()
        self.tokens.append(float(batch["attention_mask"].sum()))
        return batch


def _run(out, monkeypatch, eval_seconds: float, save_seconds: float):
    """4 steps, a log line at step 4, an evaluation and a checkpoint at steps 2 and 4, on a fake clock that a
    training forward moves by 1 s, an evaluation by `eval_seconds` and a checkpoint by `save_seconds`.
    Returns the tokens of the batches and the train log lines."""
    from bertkit.train import trainer
    clock = [0.0]
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def tick(seconds):
        clock[0] += seconds

    torch.manual_seed(1234)
    model = BertForPreTraining(tiny_config(0.0))
    model.register_forward_pre_hook(lambda *_: tick(1.0))
    source = _CountingSource(4, seed=7)
    cfg = TrainConfig(max_steps=4, batch_size=4, lr=1e-3, warmup_steps=1, log_every=4, eval_every=2, save_every=2,
                      output_dir=str(out), tensorboard=False, progress=False, seed=3)
    Trainer(PretrainObjective(model), model, source, cfg, evaluate=lambda m: tick(eval_seconds) or {"score": 1.0},
            save_extra=lambda directory: tick(save_seconds)).train()
    return source.tokens, [r for r in read_metrics(out) if r["split"] == "train"]


def test_evaluations_and_checkpoints_do_not_count_as_training_time(tmp_path, monkeypatch):
    """tokens/s is the window's tokens over its steps' time: step 2's evaluation and checkpoint, inside the window
    of steps 1-4, are left out. Counted in, a fine-tuning run evaluating at every log line (tiny BERT, 2 CPUs)
    read 5,212 tok/s where its steps ran at 13,369."""
    tokens, slow = _run(tmp_path / "slow", monkeypatch, eval_seconds=100.0, save_seconds=50.0)
    _, fast = _run(tmp_path / "fast", monkeypatch, eval_seconds=0.0, save_seconds=0.0)
    assert [r["step"] for r in slow] == [4] and len(tokens) == 4
    assert slow[0]["tokens_per_s"] == fast[0]["tokens_per_s"] == sum(tokens) / 4.0   # 4 steps of 1 s
    assert slow[0]["elapsed"] == fast[0]["elapsed"] + 150.0   # the run's clock still counts everything


def test_a_checkpoint_after_an_evaluation_records_the_window_without_it(tmp_path, monkeypatch):
    """A checkpoint written after its step's evaluation records the open log window (for a resume between log
    lines) with the steps' time only: 2 s at step 2 (not 102), nothing at step 4, whose log line closed the
    window before the evaluation."""
    _run(tmp_path / "run", monkeypatch, eval_seconds=100.0, save_seconds=50.0)
    at = {step: load_training_state(tmp_path / "run" / f"step-00000{step}")["extra"]["log_windows"][0]
          for step in (2, 4)}
    assert (at[2]["steps"], at[2]["seconds"]) == (2, 2.0)
    assert (at[4]["steps"], at[4]["seconds"]) == (0, 0.0)


class _FakeEvent:
    """A CUDA timing event on a fake GPU clock (ms), so the GPU path's arithmetic runs on a machine without one."""
    now = 0.0

    def __init__(self, enable_timing: bool = False):
        self.t = None

    def record(self, stream=None):
        self.t = _FakeEvent.now

    def elapsed_time(self, other: "_FakeEvent") -> float:
        return other.t - self.t

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


def test_on_the_gpu_a_pause_is_taken_off_the_windows_gpu_time(monkeypatch):
    """On CUDA the window is timed on the GPU's clock, between events in the stream: a pause's own pair of events
    is subtracted. 3 s of steps, a 100 s evaluation, 1 s of steps: 40 tokens make 10 tok/s, not 0.38."""
    from bertkit.train import trainer
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    _FakeEvent.now = 0.0
    window = trainer._Window(torch.device("cuda"))
    _FakeEvent.now = 3000.0
    with window.paused():
        _FakeEvent.now += 100_000.0
    _FakeEvent.now += 1000.0
    end = _FakeEvent()
    end.record()
    line = trainer._PendingLog(4, torch.tensor([40.0], dtype=torch.float64), ["tokens"],
                               {"lr": 1e-3, "stats": [], "steps": 4, "skipped": 0}, _FakeEvent(), window.start, end,
                               window.carried, list(window.pauses))
    assert line.record(elapsed=0.0)["tokens_per_s"] == 10.0
