"""torchrun on several machines, simulated on this one: two launchers (`--nnodes 2 --node-rank 0|1`, a static
rendezvous on a local port), each a "node" with a working directory of its own, where a relative --output is that
node's local disk. Against one launcher of 2 processes (the `torchrun` fixture) with the same global batch."""
import os
import random
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bertkit.config import BertConfig
from bertkit.tokenizer import BertTokenizer
from bertkit.train import read_metrics

from .test_distributed import SCRIPT

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "river stone cloud garden lamp window forest bridge engine letter market violin".split()
ERROR = "cannot see the file .shared-check-"
CLOCKS = ("tokens_per_s", "elapsed")


@pytest.fixture(scope="module")
def pretrain_inputs(tmp_path_factory):
    """A corpus of 60 short documents, a vocabulary trained on it once (two trainings may differ) and a tiny
    config without dropout: the pre-training command's arguments, less --output and --batch-size."""
    d = tmp_path_factory.mktemp("multinode")
    rng = random.Random(0)
    docs = ["\n".join(f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)}." for _ in range(6)) for _ in range(60)]
    (d / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    BertTokenizer.train([d / "corpus.txt"], 100).save_pretrained(d / "tok")
    BertConfig.from_size("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).to_json_file(
        d / "config.json")
    return ["pretrain", "--corpus", d / "corpus.txt", "--tokenizer", d / "tok", "--config", d / "config.json",
            "--max-steps", "4", "--save-every", "2", "--keep-last", "5", "--log-every", "1", "--seq-len", "32",
            "--eval-batches", "2", "--eval-every", "4", "--seed", "5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(cwds, *args, nproc: int = 1, timeout: float = 90) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2 --nproc-per-node nproc --node-rank i *args` run in `cwds[i]`, both at once; their
    finished runs. Either still going at `timeout` (a hang) is stopped with its ranks, and the test fails."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    port = _free_port()
    procs = []
    for node, cwd in enumerate(cwds):
        os.makedirs(cwd, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", str(nproc),
               "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port), *map(str, args)]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.terminate()  # torchrun passes it to its ranks
        for p in procs:
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        pytest.fail(f"two nodes still running after {timeout} s: hung")
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outs)]


def _weights_gap(a, b) -> float:
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_nodes_pretrain_and_resume_as_one_node_of_two_processes(pretrain_inputs, tmp_path, torchrun):
    """`bertkit pretrain` on 2 nodes x 1 process (both LOCAL_RANK 0: the data is split by the global RANK) in a
    directory both share, against 1 node x 2 processes: the same losses and weights; node 1 prints nothing (rank 0
    alone does). The run cut after its step-2 checkpoint resumes on 2 nodes to the same weights."""
    shared = tmp_path / "shared"
    nodes = two_nodes([tmp_path / "node0", tmp_path / "node1"], "-m", "bertkit", *pretrain_inputs, "--batch-size", "2",
                      "--output", shared)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    one = torchrun("-m", "bertkit", *pretrain_inputs, "--batch-size", "2", "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "held-out (2 batches)" in nodes[0].stdout and nodes[1].stdout == ""
    assert "bertkit" not in nodes[1].stderr and "step 4/4" in nodes[0].stderr
    gap = _weights_gap(shared / "model.safetensors", tmp_path / "one" / "model.safetensors")
    print(f"\n2 nodes x 1 vs 1 node x 2, 4 steps: max |weight diff| = {gap:.2e}")
    assert gap <= 1e-6
    logs = [read_metrics(shared), read_metrics(tmp_path / "one")]
    assert [(r["step"], r["split"]) for r in logs[0]] == [(1, "train"), (2, "train"), (3, "train"), (4, "train"),
                                                          (4, "eval")]
    for x, y in zip(*logs, strict=True):  # the same numbers but the clocks'
        assert {k: v for k, v in x.items() if k not in CLOCKS} == {k: v for k, v in y.items() if k not in CLOCKS}
    state = torch.load(shared / "step-000004" / "training_state.pt", weights_only=True)
    assert state["extra"]["world_size"] == 2 and len(state["rng"]) == 2

    shutil.rmtree(shared / "step-000004")  # as if killed in step 4
    nodes = two_nodes([tmp_path / "node0", tmp_path / "node1"], "-m", "bertkit", *pretrain_inputs, "--batch-size", "2",
                      "--output", shared, "--resume")
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    assert "resume: " in nodes[0].stdout and nodes[1].stdout == ""
    assert _weights_gap(shared / "model.safetensors", tmp_path / "one" / "model.safetensors") <= 1e-6


def test_two_nodes_of_two_processes_split_the_data_by_global_rank(tmp_path, torchrun):
    """2 nodes x 2 processes of batch 1 (ranks 0-3, local ranks 0, 1, 0, 1) against 1 node x 2 of batch 2: the
    same global batches, so the same weights up to float rounding; data taken by local rank would repeat items."""
    common = ["--steps", "3", "--dropout", "0", "--lr", "1e-3", "--save-every", "3"]
    nodes = two_nodes([tmp_path, tmp_path], SCRIPT, "--out", tmp_path / "four", "--batch", "1", *common, nproc=2)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    assert '"world": 4' in nodes[0].stdout and "RESULT" not in nodes[1].stdout
    one = torchrun(SCRIPT, "--out", tmp_path / "two", "--batch", "2", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (torch.load(tmp_path / d / "final_weights.pt", weights_only=True) for d in ("four", "two"))
    gap = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\n2 nodes x 2 vs 1 node x 2 (batch 1 vs 2), 3 steps: max |weight diff| = {gap:.2e}")
    assert gap <= 1e-6
    state = torch.load(tmp_path / "four" / "step-000003" / "training_state.pt", weights_only=True)
    assert state["data"] == [{"pos": 3}] * 4 and len(state["rng"]) == 4


def test_pretrain_into_a_node_local_output_is_refused_on_both_nodes(pretrain_inputs, tmp_path):
    """A relative --output on nodes that do not share a disk is two directories: node 1 would miss the data rank 0
    builds there. Both nodes fail at once, each log saying why (and node 0's new run directory is removed)."""
    cwds = [tmp_path / "node0", tmp_path / "node1"]
    nodes = two_nodes(cwds, "-m", "bertkit", *pretrain_inputs, "--batch-size", "2", "--output", "run")
    for node, cwd in zip(nodes, cwds):
        assert node.returncode != 0 and "exitcode  : 2" in node.stderr, node.stderr[-3000:]
        lines = [line for line in node.stderr.splitlines() if line.startswith("bertkit pretrain: error: ")]
        assert len(lines) == 1 and ERROR in lines[0], node.stderr[-3000:]
        assert f"rank 1 on {socket.gethostname()} ({cwds[1] / 'run'})" in lines[0]
        assert "must be one directory that they all share" in lines[0]
    assert not (cwds[0] / "run").exists() and not (cwds[1] / "run" / "data").exists()


def test_resume_from_checkpoints_on_node_0_alone_fails_at_once(tmp_path):
    """A run whose checkpoints are on node 0's local disk only, resumed on 2 nodes: rank 0 would load step 2 while
    rank 1 started from step 0, each then waiting in other collectives (a hang of gloo's 30-minute timeout).
    Rank 0 picks the checkpoint for all, and a rank that cannot see it says so: both fail within seconds."""
    common = ["--dropout", "0", "--save-every", "2", "--batch", "2"]
    first = two_nodes([tmp_path / "shared"] * 2, SCRIPT, "--out", "run", "--steps", "2", *common)
    assert all(node.returncode == 0 for node in first), first[0].stderr[-3000:]
    shutil.copytree(tmp_path / "shared" / "run", tmp_path / "node0" / "run")
    nodes = two_nodes([tmp_path / "node0", tmp_path / "node1"], SCRIPT, "--out", "run", "--steps", "4", *common,
                      "--resume")
    for node in nodes:
        assert node.returncode != 0 and ERROR in node.stderr, node.stderr[-3000:]
        assert f"rank 1 on {socket.gethostname()} ({tmp_path / 'node1' / 'run'})" in node.stderr


def test_a_world_of_one_checks_no_directory(tmp_path, monkeypatch):
    """One process has nothing to share its directory with: no file is written, even where none could be."""
    from bertkit.train import distributed
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    distributed.cleanup()
    distributed.setup()
    distributed.check_shared_dir(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []
    assert distributed.from_main(lambda: "decided") == "decided"
    distributed.cleanup()
