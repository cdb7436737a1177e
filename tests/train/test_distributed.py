import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from torch import nn

from bertkit.train import distributed, read_metrics

from . import tiny

SCRIPT = Path(tiny.__file__)


def test_torchrun_two_cpu_ranks_match_one_process(tmp_path, torchrun):
    """torchrun, 2 CPU processes on gloo, 2 sequences per rank and micro-batch, accumulation 2 (rank r takes
    items r::2 of each global batch of 4) against one process with batches of 4: the exact count
    normalisation makes the two the same optimisation, up to float rounding. The DDP run also recomputes its
    layers in the backward (gradient checkpointing), which must not change a thing."""
    common = ["--steps", "4", "--accum", "2", "--save-every", "2", "--dropout", "0", "--lr", "1e-3"]
    ddp = torchrun(SCRIPT, "--out", tmp_path / "ddp", "--batch", "2", "--gradient-checkpointing", *common,
                   wait=False)
    n = torch.get_num_threads()
    try:  # the reference, in this process meanwhile
        tiny.main(["--out", str(tmp_path / "one"), "--batch", "4", *common])
    finally:
        torch.set_num_threads(n)
    out, err = ddp.communicate(timeout=240)
    assert ddp.returncode == 0, f"{out}\n{err}"
    assert '"world": 2' in out

    a = torch.load(tmp_path / "ddp" / "final_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "final_weights.pt", weights_only=True)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\nDDP 2 ranks x 2 x accumulation 2 vs 1 process x 4 x 2, 4 AdamW steps: max |weight diff| = {diff:.2e}")
    assert diff <= 1e-6

    # Per step: the same loss and the same global gradient norm (a missing world-size factor would halve it).
    ddp_log, one_log = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [r["step"] for r in ddp_log] == [r["step"] for r in one_log] == [1, 2, 3, 4]
    for x, y in zip(ddp_log, one_log):
        for k in ("loss", "loss_mlm", "loss_nsp", "acc_mlm", "acc_nsp", "grad_norm", "lr"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), (x["step"], k)

    # The checkpoint holds both ranks' random streams and data positions (4 steps x 2 micro-batches).
    state = torch.load(tmp_path / "ddp" / "step-000004" / "training_state.pt", weights_only=True)
    assert state["data"] == [{"pos": 8}, {"pos": 8}]
    assert len(state["rng"]) == 2 and state["extra"]["world_size"] == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # seeded seed + rank


def test_torchrun_fsdp_matches_one_process_and_resumes_exactly(tmp_path, torchrun):
    """FSDP (`TrainConfig.fsdp`): 2 CPU ranks, each holding half of every parameter, gradient and AdamW state,
    against one process with the whole global batch: the same optimisation. Then a run SIGKILLed in step 4
    resumes from the step-2 checkpoint (written whole, as one process writes it, and cut back into shards on
    load) under FSDP to the same weights; the checkpoint's weights load into a plain model."""
    from safetensors.torch import load_file

    common = ["--steps", "4", "--accum", "2", "--save-every", "2", "--dropout", "0", "--lr", "1e-3", "--batch", "2",
              "--gradient-checkpointing", "--fsdp"]
    fsdp = torchrun(SCRIPT, "--out", tmp_path / "fsdp", *common, wait=False)
    n = torch.get_num_threads()
    try:
        tiny.main(["--out", str(tmp_path / "one"), "--steps", "4", "--accum", "2", "--save-every", "2",
                   "--dropout", "0", "--lr", "1e-3", "--batch", "4"])
    finally:
        torch.set_num_threads(n)
    out, err = fsdp.communicate(timeout=240)
    assert fsdp.returncode == 0, f"{out}\n{err}"
    assert '"world": 2' in out and '"sharded": true' in out
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert result["local_params"] <= result["params"] // 2 + 64  # half of every tensor, rounded up per tensor
    assert result["forward_weight_dtypes"] == ["torch.float32"]  # fp32 training gathers fp32 weights

    one = torch.load(tmp_path / "one" / "final_weights.pt", weights_only=True)
    full = torch.load(tmp_path / "fsdp" / "final_weights.pt", weights_only=True)
    diff = max((full[k] - one[k]).abs().max().item() for k in one)
    print(f"\nFSDP 2 ranks x 2 x accumulation 2 vs 1 process x 4 x 2, 4 AdamW steps: max |weight diff| = {diff:.2e}")
    assert diff <= 1e-6
    for x, y in zip(read_metrics(tmp_path / "fsdp"), read_metrics(tmp_path / "one"), strict=True):
        for k in ("loss", "loss_mlm", "loss_nsp", "grad_norm", "lr"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), (x["step"], k)

    # The checkpoint is whole: its weights and AdamW moments have the single process's shapes and values.
    step4 = tmp_path / "fsdp" / "step-000004"
    saved = load_file(step4 / "model.safetensors")
    assert max((saved[k] - full[k]).abs().max().item() for k in saved) == 0.0
    ref_state = torch.load(tmp_path / "one" / "step-000004" / "training_state.pt", weights_only=True)
    state = torch.load(step4 / "training_state.pt", weights_only=True)
    assert state["optimizer"]["state"].keys() == ref_state["optimizer"]["state"].keys()
    for i, per in ref_state["optimizer"]["state"].items():
        for k, v in per.items():
            assert state["optimizer"]["state"][i][k].shape == v.shape
            assert torch.allclose(state["optimizer"]["state"][i][k], v, rtol=1e-4, atol=1e-9), (i, k)

    # Killed while fetching step 4's second micro-batch: the step-2 checkpoint is the newest.
    cut = torchrun(SCRIPT, "--out", tmp_path / "cut", *common, "--kill-at", "7")
    assert cut.returncode != 0
    assert sorted(p.name for p in (tmp_path / "cut").glob("step-*")) == ["step-000002"]
    shutil.copytree(tmp_path / "cut", tmp_path / "cut-ddp")
    resumed = torchrun(SCRIPT, "--out", tmp_path / "cut", *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = torch.load(tmp_path / "cut" / "final_weights.pt", weights_only=True)
    gap = max((again[k] - full[k]).abs().max().item() for k in full)
    print(f"FSDP killed in step 4, resumed from step 2: max |weight diff| to the uninterrupted run = {gap:.2e}")
    assert gap <= 1e-7
    # The same checkpoint resumed under DDP: a checkpoint does not depend on how it was trained.
    resumed = torchrun(SCRIPT, "--out", tmp_path / "cut-ddp", *[a for a in common if a != "--fsdp"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"sharded": false' in resumed.stdout
    ddp = torch.load(tmp_path / "cut-ddp" / "final_weights.pt", weights_only=True)
    gap = max((ddp[k] - full[k]).abs().max().item() for k in full)
    print(f"... resumed under DDP instead: max |weight diff| = {gap:.2e}")
    assert gap <= 1e-6


def _fsdp_and_one_process(tmp_path, torchrun, common, sharded_only=()):
    """Train `common` on 2 FSDP ranks of batch 2 (plus `sharded_only`) and in this process with batch 4 (the same
    global batch); the sharded run's RESULT and both final weights."""
    run = torchrun(SCRIPT, "--out", tmp_path / "fsdp", *common, *sharded_only, "--batch", "2", "--fsdp")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["sharded"]
    n = torch.get_num_threads()
    try:
        tiny.main(["--out", str(tmp_path / "one"), *common, "--batch", "4"])
    finally:
        torch.set_num_threads(n)
    return result, *(torch.load(tmp_path / d / "final_weights.pt", weights_only=True) for d in ("fsdp", "one"))


def test_torchrun_fsdp_lamb_matches_one_process(tmp_path, torchrun):
    """LAMB's trust ratio needs each parameter's whole norm: on FSDP shards the norms are reduced across the
    ranks, so 2 sharded ranks take the steps of one process."""
    _, a, b = _fsdp_and_one_process(tmp_path, torchrun,
                                    ["--steps", "3", "--dropout", "0", "--lr", "1e-2", "--optimizer", "lamb"])
    assert max((a[k] - b[k]).abs().max().item() for k in b) <= 1e-6


def test_torchrun_fsdp_compiled_takes_the_eager_steps(tmp_path, torchrun):
    """`--compile` under FSDP: the embeddings (in the root's shard group) and the layer stack (each layer its
    own group, and compiled too for checkpointing) compiled by inductor on 2 sharded CPU ranks take the steps
    of one eager process."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on the CPU needs a C compiler")
    result, a, b = _fsdp_and_one_process(tmp_path, torchrun, ["--steps", "3", "--dropout", "0"], ["--compile"])
    assert result["metrics"]["step"] == 3
    assert result["compiled"] == ["BertEmbeddings", "BertEncoder"] + ["BertLayer"] * 2
    assert max((a[k] - b[k]).abs().max().item() for k in b) <= 1e-5


def test_torchrun_fsdp_bf16_gathers_bf16_weights_and_keeps_fp32_shards(tmp_path, torchrun):
    """With bf16, FSDP gathers the weights in bf16 (half the traffic), while the shards, the optimizer and the
    saved weights stay fp32; training then follows one process under bf16 autocast to bf16's precision."""
    result, a, b = _fsdp_and_one_process(tmp_path, torchrun, ["--steps", "3", "--dropout", "0", "--precision", "bf16"])
    assert result["forward_weight_dtypes"] == ["torch.bfloat16"]
    assert all(t.dtype == torch.float32 for t in a.values())
    assert max((a[k] - b[k]).abs().max().item() for k in b) <= 1e-2  # 3 AdamW steps of lr 1e-3, bf16 weights
    for x, y in zip(read_metrics(tmp_path / "fsdp"), read_metrics(tmp_path / "one"), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=2e-2)


def test_resume_on_another_number_of_processes(tmp_path, torchrun):
    """A 2-process run (batch 2 each) dies after its step-2 checkpoint; one process with batch 4 (the same global
    batch) resumes it: the same data and masks, so with dropout 0 the weights of an uninterrupted 1-process run.
    A batch that changes the global batch is refused with the batch size that would fit."""
    common = ["--steps", "4", "--save-every", "2", "--dropout", "0", "--lr", "1e-3"]
    cut = torchrun(SCRIPT, "--out", tmp_path / "cut", *common, "--batch", "2", "--kill-at", "3")
    assert cut.returncode != 0
    assert sorted(p.name for p in (tmp_path / "cut").glob("step-*")) == ["step-000002"]
    n = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match=r"written by 2 processes.*a batch size of 4 per process"):
            tiny.main(["--out", str(tmp_path / "cut"), *common, "--batch", "2", "--resume"])
        distributed.cleanup()
        tiny.main(["--out", str(tmp_path / "cut"), *common, "--batch", "4", "--resume"])
        tiny.main(["--out", str(tmp_path / "one"), *common, "--batch", "4"])
    finally:
        torch.set_num_threads(n)
    a = torch.load(tmp_path / "cut" / "final_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "final_weights.pt", weights_only=True)
    gap = max((a[k] - b[k]).abs().max().item() for k in b)
    print(f"\n2 processes killed after step 2, resumed by 1: max |weight diff| to 1 process throughout = {gap:.2e}")
    assert gap <= 1e-6


def test_split_map_shares_work_only_inside_together(torchrun, tmp_path):
    """`split_map` in 2 processes: outside `together()` each rank computes every item; inside, rank r computes
    items r, r + 2, ... (rank 1 topped up with a copy of item 0, so both make 3 calls) and both get all 5
    results in order."""
    run = torchrun(SCRIPT, "--out", tmp_path, "--split-check")
    assert run.returncode == 0, run.stderr[-3000:]
    got = [json.loads((tmp_path / f"split-{r}.json").read_text()) for r in range(2)]
    for rank, d in enumerate(got):
        assert d["alone"] == [[x, rank] for x in range(5)] and d["seen_alone"] == [0, 1, 2, 3, 4]
        assert d["shared"] == [[0, 0], [1, 1], [2, 0], [3, 1], [4, 0]]
    assert got[0]["seen"] == [0, 2, 4] and got[1]["seen"] == [1, 3, 0]


def test_world_of_one_helpers(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    distributed.cleanup()
    info = distributed.setup()
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert distributed.is_main() and not distributed.is_distributed()
    m = nn.Linear(2, 2)
    assert distributed.wrap(m) is m
    t = torch.tensor([1.0, 2.0])
    r = distributed.all_reduce_sum(t)
    assert torch.equal(r, t) and r is not t
    assert distributed.all_reduce_sum({"n": 3, "x": 0.5, "t": torch.tensor(2.0)}) == {"n": 3, "x": 0.5,
                                                                                   "t": torch.tensor(2.0)}
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    # FSDP in a world of one: nothing to shard, and the gather / cut helpers hand states through untouched
    assert distributed.shard(m, [m]) is m and not distributed.is_sharded(m)
    state = m.state_dict()
    assert distributed.full_state_dict(m).keys() == state.keys()
    assert distributed.shard_state_like(state, state) is state
    opt = torch.optim.AdamW(m.parameters())
    m(torch.ones(1, 2)).sum().backward()
    opt.step()
    osd = distributed.full_optimizer_state(opt)
    assert distributed.shard_optimizer_state(opt, osd) is osd
    with distributed.gathered(m) as g:
        assert g is m
    distributed.barrier()
    distributed.cleanup()


def test_setup_rejects_bad_env(monkeypatch):
    distributed.cleanup()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="outside"):
        distributed.setup()
    monkeypatch.delenv("RANK")  # every process would take rank 0
    with pytest.raises(ValueError, match="WORLD_SIZE=2 but no RANK: launch the processes with torchrun"):
        distributed.setup()
    distributed.cleanup()


# What torch 2.13's gloo raised on the surviving rank of `torchrun --nproc-per-node 2` (a RuntimeError, not a
# DistBackendError) when the other rank exited in step 5, and when it was killed (SIGKILL) there.
GLOO_EOF = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:5319. This is typically caused by a remote worker crashing. Check the logs of the remote "
            "worker before reporting an error. GLHF! 🏖️")
GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:22433: "
              "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the "
              "application. Check the logs of the remote worker before reporting an error. GLHF! 🏖️")


def test_peer_failed_recognises_only_a_collective_whose_peer_died(monkeypatch):
    """The surviving rank's gloo error (EOF or reset from the dead peer, as RuntimeError or DistBackendError) is a
    peer's death; a gloo timeout (a hung peer), the same words from elsewhere, or any error in a world of one
    is not."""
    import torch.distributed as tdist
    monkeypatch.setattr(distributed, "_info", distributed.DistInfo(rank=0, world_size=2, backend="gloo"))
    for e in (RuntimeError(GLOO_EOF), RuntimeError(GLOO_RESET), tdist.DistBackendError(GLOO_EOF),
              RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:310] writev [127.0.0.1]:41230: "
                           "Broken pipe")):
        assert distributed.peer_failed(e), e
    for e in (RuntimeError("[/x/third_party/gloo/gloo/transport/tcp/pair.cc:598] Read timeout [127.0.0.1]:1"),
              RuntimeError("Connection closed by peer"), RuntimeError("upload failed: Connection reset by peer"),
              ValueError(GLOO_EOF), ConnectionResetError(104, "Connection reset by peer"),
              RuntimeError("CUDA error: out of memory")):
        assert not distributed.peer_failed(e), e
    monkeypatch.setattr(distributed, "_info", distributed.DistInfo())
    assert not distributed.peer_failed(RuntimeError(GLOO_EOF))


# ---------------------------------------------------------------------------------------------------------------
# a world of several ranks simulated in this process (`as_rank`: this process is rank r of `world`, the
# collectives replaced by fakes that give what the other ranks would): no process launched
# ---------------------------------------------------------------------------------------------------------------

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


_KEEP = object()   # `_broadcasts`: leave the list as the caller filled it


_KEEP = object()   # `_broadcasts`: leave the list as the caller filled it


def _broadcasts(monkeypatch, *values):
    """Fake `broadcast_object_list`: the k-th call receives `values[k]` from rank 0 (a value `_KEEP` leaves the
    list as the caller filled it, as rank 0's own call does). Returns the lists the calls were given."""
    given, queue = [], list(values)

    def fake(box, src=0, group=None):
        given.append(list(box))
        value = queue.pop(0)
        if value is not _KEEP:
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
    given = _broadcasts(monkeypatch, _KEEP)

    def fail():
        raise FileNotFoundError("corpus.txt: no such file")
    with pytest.raises(FileNotFoundError, match="corpus.txt"):
        distributed.on_main(fail)
    assert given == [["corpus.txt: no such file"]]


def test_the_other_ranks_raise_rank_0s_failure_and_do_not_run_the_work(as_rank, monkeypatch):
    as_rank(1)
    _broadcasts(monkeypatch, "vocab.txt: empty", None)
    ran = []
    with pytest.raises(distributed.RankZeroError) as e:
        distributed.on_main(lambda: ran.append(1))
    assert str(e.value) == "vocab.txt: empty" and ran == []
    assert distributed.on_main(lambda: ran.append(1)) is None and ran == []   # rank 0 succeeded: None here


def test_from_main_hands_rank_0s_result_to_the_other_ranks(as_rank, monkeypatch):
    """The checkpoint a resume continues is rank 0's choice on every rank, not each rank's own look."""
    as_rank(1)
    given = _broadcasts(monkeypatch, None, "step-000002")
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
    given = _broadcasts(monkeypatch, _KEEP, _KEEP)
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
    _broadcasts(monkeypatch, None, ".shared-check-0")
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
