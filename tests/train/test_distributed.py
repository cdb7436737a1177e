import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bertkit.train import distributed, read_metrics

from . import tiny

SCRIPT = Path(tiny.__file__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_match_one_process(tmp_path):
    """torchrun, 2 CPU processes on gloo, 2 sequences per rank and micro-batch, accumulation 2 (rank r takes
    items r::2 of each global batch of 4) against one process with batches of 4: the exact count
    normalisation makes the two the same optimisation, up to float rounding. The DDP run also recomputes its
    layers in the backward (gradient checkpointing), which must not change a thing."""
    common = ["--steps", "4", "--accum", "2", "--save-every", "2", "--dropout", "0", "--lr", "1e-3"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    ddp = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), str(SCRIPT), "--out", str(tmp_path / "ddp"), "--batch", "2",
         "--gradient-checkpointing", *common],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


def test_world_of_one_helpers(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    distributed.cleanup()
    info = distributed.setup()
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert distributed.is_main() and not distributed.is_distributed()
    m = nn.Linear(2, 2)
    assert distributed.wrap(m) is m and distributed.unwrap(m) is m
    t = torch.tensor([1.0, 2.0])
    r = distributed.all_reduce_sum(t)
    assert torch.equal(r, t) and r is not t
    assert distributed.all_reduce_sum({"n": 3, "x": 0.5, "t": torch.tensor(2.0)}) == {"n": 3, "x": 0.5,
                                                                                   "t": torch.tensor(2.0)}
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    distributed.barrier()
    distributed.cleanup()


def test_setup_rejects_bad_env(monkeypatch):
    distributed.cleanup()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="outside"):
        distributed.setup()
    distributed.cleanup()
