"""Behaviour of `train.distributed` and `train.tracking` that a mutation audit found no test pinned: torchrun's
environment as `setup` reads it, what rank 0's one-off work hands the other ranks, the sums `all_reduce_sum`
returns, FSDP state cut and gathered, and the metrics log and progress lines as a user reads them.

A world of several ranks is simulated in this process (`as_rank`: this process is rank r of `world`, with the
collectives replaced by fakes that give what the other ranks would), so no test here launches processes."""
import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from torch import nn

from bertkit.train import distributed, tracking
from bertkit.train.tracking import ProgressLines, Tracker, read_metrics

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def env(monkeypatch):
    """No torchrun variables and no setup before or after: each test sets what it reads."""
    for k in TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    distributed.cleanup()
    yield monkeypatch
    distributed.cleanup()


@pytest.fixture
def as_rank(monkeypatch):
    """`as_rank(r, world)`: this process becomes rank r of `world` (gloo on the CPU) without a process group."""
    def become(r: int, world: int = 2) -> None:
        monkeypatch.setattr(distributed, "_info", distributed.DistInfo(rank=r, world_size=world, backend="gloo"))
    return become


KEEP = object()   # `broadcasts`: leave the list as the caller filled it


def broadcasts(monkeypatch, *values):
    """Fake `broadcast_object_list`: the k-th call receives `values[k]` from rank 0 (a value `KEEP` leaves the
    list as the caller filled it, as rank 0's own call does). Returns the lists the calls were given."""
    given, queue = [], list(values)

    def fake(box, src=0, group=None):
        given.append(list(box))
        value = queue.pop(0)
        if value is not KEEP:
            box[0] = value
    monkeypatch.setattr(tdist, "broadcast_object_list", fake)
    return given



# ------------------------------------------------------------------------------------------ setup: the environment
def test_empty_torchrun_variables_mean_their_defaults(env):
    """An exported but empty variable (`WORLD_SIZE=` in a job script) is unset, not an error."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.setenv(k, "")
    info = distributed.setup()
    assert (info.rank, info.world_size, info.local_rank, info.backend) == (0, 1, 0, None)


def test_a_variable_that_is_not_an_integer_is_named(env):
    env.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError) as e:
        distributed.setup()
    assert str(e.value) == "environment variable WORLD_SIZE must be an integer, got 'two'"


@pytest.mark.parametrize("rank", ["2", "-1"])
def test_a_rank_outside_the_world_is_refused_before_joining(env, rank):
    """RANK counts from 0 to WORLD_SIZE - 1: RANK=2 of 2 (the first rank numbered 1) is refused at once, not
    left to a rendezvous that never completes."""
    env.setenv("WORLD_SIZE", "2")
    env.setenv("RANK", rank)
    with pytest.raises(ValueError) as e:
        distributed.setup()
    assert str(e.value) == f"RANK={rank} is outside WORLD_SIZE=2"


def test_local_rank_is_read_apart_from_the_global_rank(env):
    """On the second node of `--nnodes 2`, LOCAL_RANK (this machine's GPU) differs from RANK (the data shard)."""
    env.setenv("WORLD_SIZE", "1")
    env.setenv("RANK", "0")
    env.setenv("LOCAL_RANK", "3")
    info = distributed.setup()
    assert (info.rank, info.local_rank) == (0, 3)


def test_setup_again_returns_the_same_answer(env):
    """The first call decides; a later call (another module asking) gets that very setup, not a new reading."""
    first = distributed.setup()
    env.setenv("LOCAL_RANK", "5")
    assert distributed.setup() is first and distributed.info() is first


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_cuda_is_refused(env):
    with pytest.raises(ValueError) as e:
        distributed.setup(device="cuda")
    assert str(e.value) == "device 'cuda': this machine has no CUDA GPU that torch can use"


def test_a_device_that_is_not_one_is_refused(env):
    with pytest.raises(ValueError) as e:
        distributed.setup(device="gpu0")
    assert str(e.value) == "device 'gpu0' is not a torch device, e.g. cpu, cuda or cuda:1"


# ------------------------------------------------------------------------------ rank 0's one-off work, the others'
def test_rank_0s_os_error_is_sent_to_the_other_ranks_before_it_is_raised(as_rank, monkeypatch):
    """A missing file on rank 0 (an OSError) must reach the other ranks, waiting in the broadcast: raised before
    it, they would wait there for ever."""
    as_rank(0)
    given = broadcasts(monkeypatch, KEEP)

    def fail():
        raise FileNotFoundError("corpus.txt: no such file")
    with pytest.raises(FileNotFoundError, match="corpus.txt"):
        distributed.on_main(fail)
    assert given == [["corpus.txt: no such file"]]


def test_the_other_ranks_raise_rank_0s_failure_and_do_not_run_the_work(as_rank, monkeypatch):
    as_rank(1)
    broadcasts(monkeypatch, "vocab.txt: empty", None)
    ran = []
    with pytest.raises(distributed.RankZeroError) as e:
        distributed.on_main(lambda: ran.append(1))
    assert str(e.value) == "vocab.txt: empty" and ran == []
    assert distributed.on_main(lambda: ran.append(1)) is None and ran == []   # rank 0 succeeded: None here


def test_from_main_hands_rank_0s_result_to_the_other_ranks(as_rank, monkeypatch):
    """The checkpoint a resume continues is rank 0's choice on every rank, not each rank's own look."""
    as_rank(1)
    given = broadcasts(monkeypatch, None, "step-000002")
    assert distributed.from_main(lambda: "step-000004") == "step-000002"
    assert given == [[None], [None]]


def _views(monkeypatch, blind):
    """Fake `all_gather_object` of `check_shared_dir`: this rank's own view, and `blind` {rank: host} of the
    ranks that cannot see the marker (their path /mnt/run); every other rank sees it."""
    def fake(views, here, group=None):
        for r in range(len(views)):
            views[r] = (False, blind[r], "/mnt/run") if r in blind else (True, socket.gethostname(), "/run")
        if distributed.rank() not in blind:
            views[distributed.rank()] = here
    monkeypatch.setattr(tdist, "all_gather_object", fake)


def test_check_shared_dir_on_rank_0_names_each_hosts_blind_ranks_and_removes_its_marker(as_rank, monkeypatch,
                                                                                     tmp_path):
    as_rank(0, world=4)
    given = broadcasts(monkeypatch, KEEP, KEEP)
    _views(monkeypatch, {1: "node1", 2: "node1", 3: "node2"})
    with pytest.raises(ValueError) as e:
        distributed.check_shared_dir(tmp_path)
    name = given[1][0]
    assert name.startswith(".shared-check-")
    assert str(e.value).startswith(
        f"{tmp_path}: ranks 1, 2 on node1 (/mnt/run), rank 3 on node2 (/mnt/run) cannot see the file {name} that "
        f"rank 0 on {socket.gethostname()} ({tmp_path}) wrote there; ")
    assert list(tmp_path.iterdir()) == []   # the marker is gone, failing or not


@pytest.mark.parametrize("rank, error", [(1, ValueError), (2, distributed.RankZeroError)])
def test_check_shared_dir_raises_the_full_error_once_per_host(as_rank, monkeypatch, tmp_path, rank, error):
    """Ranks 1 and 2 on one machine cannot see the directory: the first of them says why in that machine's log,
    the second raises quietly."""
    as_rank(rank, world=3)
    broadcasts(monkeypatch, None, ".shared-check-0")
    monkeypatch.setattr(distributed, "SHARED_WAIT_S", 0.0)
    _views(monkeypatch, {1: "node1", 2: "node1"})
    with pytest.raises(ValueError) as e:   # a RankZeroError is a ValueError
        distributed.check_shared_dir(tmp_path)
    assert type(e.value) is error
    assert "ranks 1, 2 on node1 (/mnt/run) cannot see the file .shared-check-0" in str(e.value)


# --------------------------------------------------------------------------------------- printing, FSDP, sums
def test_print0_prints_on_rank_0_only(as_rank, capsys):
    as_rank(1)
    distributed.print0("from rank 1")
    as_rank(0)
    distributed.print0("from rank 0")
    assert capsys.readouterr().out == "from rank 0\n"


def test_shard_without_units_is_refused_in_a_world_of_one_too(env):
    """A model giving no layers to shard is a mistake in any world: said at once, not first under torchrun."""
    with pytest.raises(ValueError) as e:
        distributed.shard(nn.Linear(2, 2), [])
    assert str(e.value) == "shard: Linear gives no units to shard"


def test_all_reduce_sum_of_a_tensor_is_a_new_tensor(env):
    """The sum is written into a copy: the caller's tensor (a running loss) is not changed."""
    t = torch.tensor([1.0, 2.0])
    distributed.all_reduce_sum(t).add_(10)
    assert t.tolist() == [1.0, 2.0]


def test_all_reduce_sum_of_a_dict_keeps_each_values_type_and_integers_exact(as_rank, monkeypatch):
    """Two ranks holding the same values: counts come back as exact ints (past float32's 2**24), floats as
    floats, tensors as float64; a bool is not a number to sum. Anything but a tensor or dict is refused."""
    as_rank(0)
    monkeypatch.setattr(tdist, "all_reduce", lambda t, op=None, group=None: t.mul_(2))
    big = 2 ** 40 + 1
    out = distributed.all_reduce_sum({"tokens": big, "loss": 0.25, "correct": torch.tensor(3, dtype=torch.int32)})
    assert out["tokens"] == 2 * big and type(out["tokens"]) is int
    assert out["loss"] == 0.5 and type(out["loss"]) is float
    assert out["correct"].dtype == torch.float64 and out["correct"].item() == 6.0
    with pytest.raises(TypeError) as e:
        distributed.all_reduce_sum({"n": 1, "skipped": True})
    assert str(e.value) == "all_reduce_sum: value of 'skipped' is a bool, not a number"
    with pytest.raises(TypeError) as e:
        distributed.all_reduce_sum([1.0])
    assert str(e.value) == "all_reduce_sum takes a tensor or a dict, got list"


def test_split_map_still_shares_after_a_nested_together(as_rank, monkeypatch):
    """Leaving an inner `together()` restores the outer one: rank 1 of 2 still takes items 1, 3 (and a copy of
    item 0, so both ranks make 3 calls) and gets every result in order."""
    as_rank(1)
    items = [0, 1, 2, 3, 4]
    monkeypatch.setattr(distributed, "all_gather_object", lambda mine: [[10 * x for x in items[0::2]], mine])
    seen = []

    def fn(xs):
        seen.append(list(xs))
        return [10 * x for x in xs]
    with distributed.together():
        with distributed.together():
            pass
        assert distributed.split_map(fn, items) == [0, 10, 20, 30, 40]
    assert seen == [[1, 3, 0]]


@pytest.fixture
def one_rank_group(tmp_path):
    """A process group of one (gloo, a file store): enough for FSDP2 to make DTensors in this process."""
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        yield init_device_mesh("cpu", (1,))
    finally:
        tdist.destroy_process_group()


def test_sharded_state_gathers_whole_and_a_wrong_shape_is_refused_by_name(one_rank_group):
    """A sharded model's state dict gathers into plain tensors of the model's values; cutting a checkpoint back
    into shards refuses a tensor of another shape, naming it, instead of a DTensor error deep in torch."""
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    fully_shard(model, mesh=one_rank_group)
    full = distributed.full_state_dict(model)
    assert full.keys() == plain.keys()
    for k, v in plain.items():
        assert type(full[k]) is torch.Tensor and torch.equal(full[k], v)
    cut = distributed.shard_state_like(full, model.state_dict())
    assert all(distributed._is_dtensor(t) for t in cut.values())
    with pytest.raises(ValueError) as e:
        distributed.shard_state_like({"weight": torch.zeros(2, 4)}, model.state_dict())
    assert str(e.value) == "weight: shape (2, 4) does not match the model's (2, 3)"


def test_tied_weights_are_gathered_once_into_one_tensor(one_rank_group, monkeypatch):
    """The word embeddings and the MLM decoder are one Parameter: gathered once (a collective less, 23M values
    of BERT-base) into one tensor, as in an unsharded state dict."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    fully_shard(model, mesh=one_rank_group)
    gathers = []
    real = DTensor.full_tensor
    monkeypatch.setattr(DTensor, "full_tensor", lambda self, **kw: gathers.append(1) or real(self, **kw))
    full = distributed.full_state_dict(model)
    assert list(full) == ["0.weight", "1.weight"] and full["0.weight"] is full["1.weight"]
    assert len(gathers) == 1


def test_shard_reduces_bf16_gradients_in_fp32_and_shards_the_units_before_the_root(as_rank, monkeypatch):
    """bf16 FSDP: weights gathered in bf16, gradients reduced in fp32 (a bf16 sum over ranks loses the small
    ones); fp32 training sets neither. Each unit is its own shard group, then the root; every rank starts from
    rank 0's weights."""
    import torch.distributed.device_mesh as mesh_module
    import torch.distributed.fsdp as fsdp
    as_rank(0)
    calls = []
    monkeypatch.setattr(mesh_module, "init_device_mesh", lambda kind, shape: ("mesh", kind, shape))
    monkeypatch.setattr(fsdp, "fully_shard", lambda m, mesh, mp_policy: calls.append((m, mesh, mp_policy)))
    sent = []
    monkeypatch.setattr(tdist, "broadcast", lambda t, src: sent.append(src))
    root = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    assert distributed.shard(root, list(root), param_dtype=torch.bfloat16) is root
    assert [m for m, _, _ in calls] == [root[0], root[1], root]
    assert {(mesh, p.param_dtype, p.reduce_dtype) for _, mesh, p in calls} == {
        (("mesh", "cpu", (2,)), torch.bfloat16, torch.float32)}
    assert sent == [0] * 4   # two weights, two biases
    calls.clear()
    distributed.shard(root, list(root))
    assert {(p.param_dtype, p.reduce_dtype) for _, _, p in calls} == {(None, None)}


# ------------------------------------------------------------------------------------------------ the metrics log
def test_tensor_and_numpy_values_are_logged_as_plain_numbers(tmp_path):
    """The trainer logs 0-d tensors and numpy scalars: metrics.jsonl holds their numbers, not a failure to
    serialise them."""
    tr = Tracker(tmp_path, total_steps=1, progress=False, tensorboard=False)
    record = tr.log(1, {"loss": torch.tensor(2.5), "acc": np.float32(0.75), "n": np.int64(3)})
    tr.close()
    assert record == {"split": "train", "step": 1, "loss": 2.5, "acc": 0.75, "n": 3}
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == record and line.startswith('{"split": "train", "step": 1, ')   # as documented


def test_progress_line_numbers(tmp_path, capsys):
    """Zero is "0" and 0.001 is "0.001" (4 significant digits); below 1e-3 a number is shown in e notation."""
    tr = Tracker(tmp_path, total_steps=3, progress=True, tensorboard=False)
    tr.log(1, {"loss": 0.0, "acc": 0.001, "acc_nsp": 0.0005, "acc_x": 0.0123456})
    tr.close()
    assert capsys.readouterr().err == "step 1/3 loss=0 acc=0.001 acc_nsp=5.00e-04 acc_x=0.01235\n"


def test_progress_off_prints_nothing(tmp_path, capsys):
    tr = Tracker(tmp_path, total_steps=3, progress=False, tensorboard=False)
    tr.log(1, {"loss": 1.0})
    tr.close()
    assert capsys.readouterr().err == ""


def test_resuming_from_step_0_truncates_the_log_instead_of_setting_it_aside(tmp_path):
    """`resume_step=0` is a resume like any other: what was logged after step 0 is dropped, with no warning and
    no metrics.jsonl.old."""
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "step": 0, "loss": 9.0}\n'
                                             '{"split": "train", "step": 1, "loss": 8.0}\n')
    Tracker(tmp_path, total_steps=2, progress=False, tensorboard=False, resume_step=0).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


@pytest.mark.skipif(not tracking.tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_gets_numbers_but_not_flags_or_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tr = Tracker(tmp_path, total_steps=1, progress=False, tensorboard=True)
    tr.log(1, {"loss": 2.0, "n": 3, "skipped": True, "note": "x"})
    tr.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/n"]


def test_read_metrics_keeps_the_later_of_two_records_and_train_before_eval(tmp_path):
    """A step logged twice (a resumed run's redo) counts once, the later record; at one step the training record
    comes before the evaluation; lines without a step are not records."""
    lines = [{"split": "eval", "step": 2, "loss": 5.0}, {"split": "train", "step": 2, "loss": 4.0},
             {"split": "train", "step": 1, "loss": 9.0}, {"loss": 1.0}, {"split": "train", "step": 1, "loss": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [(r["split"], r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        ("train", 1, 3.0), ("train", 2, 4.0), ("eval", 2, 5.0)]


def test_flags_are_not_plotted_as_numbers():
    records = [{"split": "train", "step": 1, "loss": True}, {"split": "train", "step": 2, "loss": 2},
               {"split": "train", "step": 3, "loss": "Infinity"}]
    xs, ys = tracking._series(records, "train", "loss")
    assert xs == [2, 3] and ys[0] == 2.0 and ys[1] != ys[1]   # the string's infinity as NaN, where the line breaks


def test_squads_no_answer_scores_are_dev_scores():
    assert [k for k in ("NoAns_f1", "NoAns_exact", "NoAns_total", "HasAns_total", "loss") if tracking._is_score(k)] \
        == ["NoAns_f1", "NoAns_exact"]


@pytest.mark.parametrize("step, label", [(9999, "9999"), (10_000, "10k"), (25_000, "25k"), (150_000, "150k"),
                                         (1_000_000, "1M"), (1_500_000, "1.5M")])
def test_step_labels(step, label):
    assert tracking._step_label(step) == label


def _train_losses(run_dir, losses, **extra):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"split": "train", "step": 10 * (i + 1), "loss": v, **extra}) + "\n" for i, v in enumerate(losses)))
    return run_dir


def test_the_loss_scale_turns_log_at_one_and_a_half_decades(tmp_path, drawn):
    """A loss from 4.0 to 0.1 (40 times, 1.6 decades) is drawn on a log scale; one reaching exactly 0 stays
    linear (a log axis has no 0)."""
    tracking.plot_run(_train_losses(tmp_path / "a", [4.0, 1.0, 0.1]))
    tracking.plot_run(_train_losses(tmp_path / "b", [4.0, 1.0, 0.0]))
    scales = [[ax.get_yscale() for ax in fig.axes if ax.get_title().startswith("train loss")] for fig in drawn]
    assert scales == [["log"], ["linear"]]


def test_a_single_loss_term_is_not_drawn_again_beside_the_total(tmp_path, drawn):
    """Fine-tuning logs "loss" and one term equal to it: the panel shows the total alone; two terms are drawn."""
    tracking.plot_run(_train_losses(tmp_path / "one", [2.0, 1.5], loss_cls=1.0))
    tracking.plot_run(_train_losses(tmp_path / "two", [2.0, 1.5], loss_mlm=1.0, loss_nsp=0.5))
    panels = [[ax for ax in fig.axes if ax.get_title().startswith("train loss")] for fig in drawn]
    labels = [[line.get_label() for ax in axes for line in ax.get_lines()] for axes in panels]
    assert labels == [["loss"], ["loss", "loss_mlm", "loss_nsp"]]


def test_progress_lines_close_once(capsys, monkeypatch):
    """A second `close` (a caller's finally after its own) prints no second closing line."""
    clock = iter([0.0, 40.0, 50.0, 60.0])
    monkeypatch.setattr(tracking.time, "monotonic", lambda: next(clock))
    lines = ProgressLines(100, "scoring", "example", every_s=30.0)
    lines.update(10)   # at 40 s: a line
    lines.close()      # at 50 s: the closing line
    lines.close()
    assert capsys.readouterr().err.splitlines() == ["scoring: 10/100 examples (10%), 0.2 examples/s",
                                                    "scoring: 10/100 examples (10%), 0.2 examples/s"]


def test_a_loop_projected_to_last_exactly_long_intervals_says_at_once_that_it_started(capsys, monkeypatch):
    """10 of 100 examples in the first 6 s: a 60 s loop, exactly `LONG` (2) intervals of 30 s, which is "LONG
    intervals or more": a line at once, not after 30 s of silence."""
    clock = iter([0.0, 6.0])
    monkeypatch.setattr(tracking.time, "monotonic", lambda: next(clock))
    lines = ProgressLines(100, "scoring", "example", every_s=30.0, first_s=5.0)
    lines.update(10)
    assert capsys.readouterr().err == "scoring: 10/100 examples (10%), 1.7 examples/s\n"
