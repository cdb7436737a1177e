"""Behaviour of the training loop and of checkpoints that a mutation audit of `bertkit/train/trainer.py` and
`bertkit/train/checkpoint.py` found no test pinned: each test here fails on a plausible bug (named in its docstring)
that the rest of the suite let through."""
from __future__ import annotations

import dataclasses
import os
import random
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertkit.modeling import BertForPreTraining
from bertkit.train import TrainConfig, Trainer, read_metrics
from bertkit.train import checkpoint as C
from bertkit.train.optim import build_optimizer, param_groups

from .test_trainer import _CrashingSource, _Interrupt
from .tiny import PretrainObjective, TinySource, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


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


# ---------------------------------------------------------------------------------------------
# the step: clipping, the logged gradient norm, zero counts, seeding
# ---------------------------------------------------------------------------------------------

def test_gradients_are_clipped_to_max_grad_norm_and_the_log_averages_the_norms_before_clipping(tmp_path):
    """Mutants: no clipping (`global_grad_norm` instead of `clip_grad_norm_`); the window's grad_norm holding its
    last step's norm instead of the sum of all. Unclipped, two steps' norms n1, n2: the line at step 2 (log every
    2) reads (n1 + n2) / 2. Clipped at 1e-3: the optimizer sees gradients of norm 1e-3, the line the norm before."""
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
    """Mutant: the window's summed norm divided by all its steps, overflowed ones included (whose norm is
    inf and is left out of the sum). One 6-step log line must read the mean of the per-step lines' grad_norm
    over the steps that were not skipped."""
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
    """Mutants: the loss divided by the raw count (0 / 0 = nan, which poisons every weight) or the logged loss
    divided by it (nan in metrics.jsonl). A term with no count contributes 0, as google-research/bert's
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
    """Mutants: seed_everything without `torch.manual_seed` (or without `random.seed`): dropout masks and any
    draw of the objective then depend on what ran before `train()`. Two runs with the same `seed`, the global
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
    """Mutant: keep_last left out of the check; `prune` would then fail only at the first checkpoint, after
    the first `save_every` steps of training."""
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{field} must be a positive integer, got 0$"):
        TrainConfig(**{field: 0})


def test_warmup_may_last_the_whole_run_but_not_longer():
    """Mutant: `>=` for `>`: a schedule warming up over every step (allowed by `linear_schedule`) refused."""
    assert TrainConfig(max_steps=3, warmup_steps=3).warmup_steps == 3
    with pytest.raises(ValueError, match=r"^TrainConfig\.warmup_steps \(4\) exceeds max_steps \(3\)$"):
        TrainConfig(max_steps=3, warmup_steps=4)


def test_a_batch_source_yielding_another_batch_size_is_warned_about(tmp_path):
    """Mutant: the check dropped: the run would report a wrong global batch without a word."""
    with pytest.warns(UserWarning, match="TrainConfig.batch_size is 8 but the batch source yields batches of 4"):
        _trainer(tmp_path, steps=1, batch_size=8).train()


def test_a_stat_is_divided_by_the_longest_count_name_it_ends_with(tmp_path):
    """Mutant: the shortest match. With count terms `nsp` and `pair_nsp`, `acc_pair_nsp` is divided by the
    `pair_nsp` count (here 2 per sequence), not by `nsp`'s (1 per sequence)."""
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
    """Mutant: `elapsed` restarting from 0 on resume. On a clock that a forward moves by 1 s, 4 steps read
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
    """Mutant: `>=` for `>` in the step check: a run at exactly max_steps (finished, or a job resumed once
    more) refused as past its end."""
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
    """Mutant: FIXED_ON_RESUME without max_grad_norm and precision (the existing test tries lr, weight_decay,
    seed and optimizer only)."""
    _trainer(tmp_path, steps=2, save_every=2).train()
    with pytest.raises(ValueError, match=re.escape(f"resuming needs the settings the run was trained with; these "
                                                   f"differ: {said}")):
        _trainer(tmp_path, steps=4, save_every=2, **changes).train(resume=True)


def test_resume_refuses_another_accumulation(tmp_path):
    """Mutant: the global-batch check comparing the batch alone: the saved data position counts micro-batches,
    so resuming 2 x 4 with 1 x 4 goes on from other examples (the first test compares it to the batch size)."""
    _trainer(tmp_path, steps=2, save_every=2, grad_accum=2).train()
    with pytest.raises(ValueError, match=re.escape(
            "step-000002 was written by 1 process, each micro-batch 4 sequences in all, accumulation 2; resuming "
            "on 1 needs the same (a batch size of 4 per process, and accumulation 2), not 4 and 1")):
        _trainer(tmp_path, steps=4, save_every=2, grad_accum=1).train(resume=True)


# ---------------------------------------------------------------------------------------------
# checkpoint files
# ---------------------------------------------------------------------------------------------

def _model(layers=2):
    torch.manual_seed(0)
    return BertForPreTraining(dataclasses.replace(tiny_config(), num_hidden_layers=layers))


def _fake_checkpoint(run, step):
    os.makedirs(run / C.step_dir_name(step))
    (run / C.step_dir_name(step) / C.STATE_NAME).write_bytes(b"")


def test_checkpoints_are_listed_in_step_order_whatever_the_directory_order(tmp_path):
    """Mutant: `_step_dirs` unsorted: the directory's own order (a hash order) would pick the wrong newest
    checkpoint and prune the wrong ones."""
    steps = [7, 300, 12, 1, 1000000, 45, 2, 99999, 8, 150, 3, 64]
    for s in steps:
        _fake_checkpoint(tmp_path, s)
    assert [s for s, _ in C.list_checkpoints(tmp_path)] == sorted(steps)
    assert C.find_latest(tmp_path) == str(tmp_path / "step-1000000")


def test_prune_keeps_the_newest_complete_checkpoints_and_live_processes_leftovers(tmp_path):
    """Mutants: keep_last 0 accepted (it would keep nothing, or with `[:-0]` everything); a directory without its
    state counted among the kept ones; temp dirs of a live process (this one, mid-save) removed; `.del-`
    leftovers of a dead one kept."""
    with pytest.raises(ValueError, match=r"^keep_last must be >= 1, got 0$"):
        C.prune(tmp_path, 0)
    for s in (1, 2, 3):
        _fake_checkpoint(tmp_path, s)
    os.makedirs(tmp_path / "step-000004")   # no training state
    live = [f"step-000005.tmp-{os.getpid()}", f"step-000003.old-{os.getpid()}"]
    dead = ["step-000002.del-999999999", "step-000001.old-999999999", "step-000006.tmp-999999999"]
    for name in live + dead:
        os.makedirs(tmp_path / name)
    deleted = C.prune(tmp_path, 2)
    assert sorted(os.path.basename(p) for p in deleted) == sorted(["step-000001", *dead])
    assert [s for s, _ in C.list_checkpoints(tmp_path)] == [2, 3]
    assert sorted(os.listdir(tmp_path)) == sorted(["step-000002", "step-000003", "step-000004", *live])


def test_a_stale_temp_dir_of_this_pid_is_replaced(tmp_path):
    """Mutant: the stale `step-N.tmp-<pid>` not removed first. A process id comes round again (a container's
    processes restart from the same ids), so a killed save's temp dir may bear this process's: the save must
    start from an empty directory, not fail on it or keep its files."""
    stale = tmp_path / f"step-000001.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "junk.bin").write_bytes(b"left by a killed process")
    path = C.save_checkpoint(tmp_path, 1, _model())
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", C.STATE_NAME]
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-000001"]


def test_rng_state_round_trips_the_cached_gaussians(tmp_path):
    """Mutants: Python's `gauss_next` or NumPy's cached gaussian dropped. Both generators draw normals in pairs
    and keep the second: after an odd number of draws, a resumed stream would give another next normal."""
    random.seed(1), np.random.seed(1)
    random.gauss(0, 1), np.random.randn()   # the second of each pair is now cached
    state = C.rng_state()
    assert state["python"]["gauss_next"] is not None and state["numpy"]["has_gauss"] == 1
    expected = (random.gauss(0, 1), float(np.random.randn()))
    C.save_checkpoint(tmp_path, 1, _model(), rng_states=[state])
    random.seed(2), np.random.seed(2), random.gauss(0, 1), np.random.randn()
    C.set_rng_state(C.load_training_state(tmp_path / "step-000001")["rng"][0])
    assert (random.gauss(0, 1), float(np.random.randn())) == expected


def test_loading_refuses_extra_weights_a_missing_optimizer_state_and_a_missing_scaler(tmp_path):
    """Mutants: unexpected keys ignored (a 2-layer checkpoint loaded into a 1-layer model silently dropped its
    second layer); an absent optimizer state or grad-scaler state let through (the optimizer restarting its
    moments, fp16 its loss scale, without a word)."""
    path = C.save_checkpoint(tmp_path, 1, _model(2))
    small = _model(1)
    with pytest.raises(ValueError, match=r"checkpoint has weights the model lacks: bert\.encoder\.layer\.1\."):
        C.load_checkpoint(path, small)
    model = _model(2)
    optimizer = build_optimizer("adamw", param_groups(model, 0.01), lr=1e-3)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: no optimizer state saved$"):
        C.load_checkpoint(path, model, optimizer=optimizer)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: the run uses a grad scaler \(fp16\) but the "
                                         r"checkpoint has none$"):
        C.load_checkpoint(path, model, scaler=torch.amp.GradScaler("cpu", enabled=True))
