import json
import shutil
from pathlib import Path

import pytest
import torch
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
