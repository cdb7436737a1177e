import dataclasses
import os
import random
import re

import numpy as np
import pytest
import torch

from bertkit.modeling import BertForPreTraining
from bertkit.train import checkpoint as C
from bertkit.train.optim import build_optimizer, linear_schedule, param_groups

from .tiny import tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(seed=0):
    torch.manual_seed(seed)
    model = BertForPreTraining(tiny_config())
    opt = build_optimizer("adamw", param_groups(model, 0.01), lr=1e-3)
    sched = linear_schedule(opt, 2, 10)
    return model, opt, sched


def _one_step(model, opt, sched):
    ids = torch.randint(5, 99, (2, 8))
    out = model(input_ids=ids, labels=ids, next_sentence_label=torch.tensor([0, 1]))
    out.loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_round_trip_weights_only_and_rng(tmp_path):
    model, opt, sched = _setup()
    _one_step(model, opt, sched)
    _one_step(model, opt, sched)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    rng = C.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    path = C.save_checkpoint(tmp_path, 2, model, optimizer=opt, scheduler=sched,
                             data_states=[{"pos": 17, "epoch": 1}], rng_states=[rng],
                             extra={"note": "x"}, save_extra=lambda d: open(os.path.join(d, "vocab.txt"), "w").close())
    assert os.path.basename(path) == "step-000002"
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "training_state.pt", "vocab.txt"]
    assert open(tmp_path / "latest").read().strip() == "step-000002"
    assert C.find_latest(tmp_path) == path

    state = torch.load(os.path.join(path, "training_state.pt"), weights_only=True)  # no pickled objects
    assert state["step"] == 2 and state["data"] == [{"pos": 17, "epoch": 1}] and state["extra"] == {"note": "x"}

    model2, opt2, sched2 = _setup(seed=1)
    state = C.load_checkpoint(path, model2, optimizer=opt2, scheduler=sched2)
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), n
    assert model2.cls.predictions.decoder.weight is model2.bert.embeddings.word_embeddings.weight  # tie kept
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.state_dict()["param_groups"][0]["lr"] == opt.state_dict()["param_groups"][0]["lr"]
    # Same next step on both sides: optimizer moments and step counts came back exactly.
    torch.manual_seed(9)
    _one_step(model, opt, sched)
    torch.manual_seed(9)
    _one_step(model2, opt2, sched2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)

    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    C.set_rng_state(state["rng"][0])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_rng_state_round_trips_the_cached_gaussians(tmp_path):
    """Python's `gauss_next` and NumPy's cached gaussian are kept. Both generators draw normals in pairs
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


def test_crash_while_saving_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    first = C.save_checkpoint(tmp_path, 1, model, optimizer=opt, scheduler=sched)
    _one_step(model, opt, sched)

    real_save = torch.save

    def crash_midway(obj, f, *a, **k):
        real_save({"half": torch.zeros(1)}, f)  # a partial file is on disk ...
        raise OSError("disk full")                 # ... when the writer dies

    monkeypatch.setattr(C.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(tmp_path, 2, model, optimizer=opt, scheduler=sched)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["latest", "step-000001"]  # no step-000002, no temp dir left
    assert C.find_latest(tmp_path) == first
    assert open(tmp_path / "latest").read().strip() == "step-000001"
    model2, opt2, sched2 = _setup(seed=3)
    C.load_checkpoint(first, model2, optimizer=opt2, scheduler=sched2)

    # A process killed mid-save (no chance to clean up) leaves a temp dir: ignored, then pruned.
    dead = tmp_path / "step-000003.tmp-999999999"
    dead.mkdir()
    (dead / "config.json").write_text("{}")
    (dead / "training_state.pt").write_bytes(b"partial")
    assert C.find_latest(tmp_path) == first
    C.save_checkpoint(tmp_path, 2, model, optimizer=opt, scheduler=sched, keep_last=3)
    assert not dead.exists()
    assert C.find_latest(tmp_path).endswith("step-000002")


def _model(layers=2):
    torch.manual_seed(0)
    return BertForPreTraining(dataclasses.replace(tiny_config(), num_hidden_layers=layers))


def test_a_stale_temp_dir_of_this_pid_is_replaced(tmp_path):
    """The stale `step-N.tmp-<pid>` is removed first. A process id comes round again (a container's
    processes restart from the same ids), so a killed save's temp dir may bear this process's: the save must
    start from an empty directory, not fail on it or keep its files."""
    stale = tmp_path / f"step-000001.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "junk.bin").write_bytes(b"left by a killed process")
    path = C.save_checkpoint(tmp_path, 1, _model())
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", C.STATE_NAME]
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-000001"]


def test_keep_last_k(tmp_path):
    model, opt, sched = _setup()
    for step in range(1, 6):
        C.save_checkpoint(tmp_path, step * 10, model, optimizer=opt, scheduler=sched, keep_last=2)
    assert [s for s, _ in C.list_checkpoints(tmp_path)] == [40, 50]
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-000040", "step-000050"]
    assert open(tmp_path / "latest").read().strip() == "step-000050"
    # Re-saving an existing step replaces it whole.
    C.save_checkpoint(tmp_path, 50, model, optimizer=opt, scheduler=sched, extra={"again": True}, keep_last=2)
    assert C.load_training_state(tmp_path / "step-000050")["extra"] == {"again": True}
    assert C.find_latest(tmp_path / "nothing-here") is None


def _fake_checkpoint(run, step):
    os.makedirs(run / C.step_dir_name(step))
    (run / C.step_dir_name(step) / C.STATE_NAME).write_bytes(b"")


def test_checkpoints_are_listed_in_step_order_whatever_the_directory_order(tmp_path):
    """`_step_dirs` is sorted: the directory's own order (a hash order) would pick the wrong newest
    checkpoint and prune the wrong ones."""
    steps = [7, 300, 12, 1, 1000000, 45, 2, 99999, 8, 150, 3, 64]
    for s in steps:
        _fake_checkpoint(tmp_path, s)
    assert [s for s, _ in C.list_checkpoints(tmp_path)] == sorted(steps)
    assert C.find_latest(tmp_path) == str(tmp_path / "step-1000000")


def test_prune_keeps_the_newest_complete_checkpoints_and_live_processes_leftovers(tmp_path):
    """keep_last 0 is refused (it would keep nothing, or with `[:-0]` everything); a directory without its
    state is not counted among the kept ones; temp dirs of a live process (this one, mid-save) are kept; `.del-`
    leftovers of a dead one are removed."""
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


def test_load_rejects_incomplete_or_foreign_weights(tmp_path):
    model, opt, sched = _setup()
    path = C.save_checkpoint(tmp_path, 1, model)
    os.remove(os.path.join(path, "training_state.pt"))
    with pytest.raises(FileNotFoundError):
        C.load_checkpoint(path, model)
    other = BertForPreTraining(dataclasses.replace(tiny_config(), num_hidden_layers=1))
    path = C.save_checkpoint(tmp_path, 2, other)
    with pytest.raises(ValueError, match="lacks weights"):
        C.load_checkpoint(path, model)


def test_loading_refuses_extra_weights_a_missing_optimizer_state_and_a_missing_scaler(tmp_path):
    """Unexpected keys are refused (a 2-layer checkpoint loaded into a 1-layer model would silently drop its
    second layer); an absent optimizer state or grad-scaler state is refused (the optimizer would restart its
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


def test_resumed_settings_against_the_saved_ones(tmp_path):
    """A setting other than the saved one is refused in one line, unless free; one the file lacks (added to the
    arguments since the run started) counts as its default."""
    import json

    @dataclasses.dataclass
    class Args:
        lr: float = 1e-3
        max_steps: int = 10
        regression: bool = False

    path = tmp_path / "args.json"
    path.write_text(json.dumps({"lr": 1e-3, "max_steps": 10}))  # written before `regression` existed
    C.check_resumed_settings(path, Args(max_steps=20), free={"max_steps"})
    with pytest.raises(ValueError, match=r"these differ: --lr 0.002 \(the run's: 0.001\), --regression True "
                                         r"\(the run's: False\)"):
        C.check_resumed_settings(path, Args(lr=2e-3, regression=True), free={"max_steps"})


def test_a_setting_added_since_with_a_default_factory_counts_as_its_default(tmp_path):
    """A list setting (`field(default_factory=list)`, as `--eval-corpus`) the saved file lacks is its default, an
    empty list, not a difference that refuses the resume."""
    import json

    @dataclasses.dataclass
    class Args:
        lr: float = 1e-3
        eval_corpus: list = dataclasses.field(default_factory=list)

    path = tmp_path / "args.json"
    path.write_text(json.dumps({"lr": 1e-3}))  # written before `eval_corpus` existed
    C.check_resumed_settings(path, Args(), free=())
    with pytest.raises(ValueError, match=r"these differ: --eval-corpus \['b.txt'\] \(the run's: \[\]\)"):
        C.check_resumed_settings(path, Args(eval_corpus=["b.txt"]), free=())
