"""Token tagging and QA fine-tuning under torchrun, DDP against FSDP: their heads read every token (no pooler) and
their evaluations gather per-window results that the ranks computed in shares. (Classification, whose head reads
the [CLS] row, is raced the same way in test_classify.py.) Then classification against one process, and a
pre-training run resumed on another number of processes, as users launch them."""
import json
import shutil

import pytest
from safetensors.torch import load_file
from test_classify import toy as cls_toy  # noqa: F401  (the toy tasks' fixtures)
from test_pretrain import corpus, tokenizer_dir  # noqa: F401
from test_qa import toy as qa_toy  # noqa: F401
from test_tag import toy as tag_toy  # noqa: F401

from bertkit import AutoModel, AutoTokenizer
from bertkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = {
    "tag": lambda toy: ["--model", toy["encoder"], "--train", toy["train"], "--dev", toy["dev"], "--lr", "1e-2",
                        "--max-seq-length", "32", "--stride", "8"],
    "qa": lambda toy: ["--model", toy / "encoder", "--train", toy / "train.json", "--dev", toy / "dev.json",
                       "--lr", "5e-3", "--max-seq-length", "32", "--doc-stride", "8"],
}


@pytest.mark.parametrize("task", sorted(ARGS))
def test_fsdp_fine_tuning_equals_ddp(task, tmp_path, torchrun, request):
    args = ARGS[task](request.getfixturevalue(f"{task}_toy"))
    evals = {}
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        run = torchrun("-m", "bertkit", "finetune", task, *args, "--batch-size", "8", "--epochs", "1", "--seed", "1",
                       "--output", tmp_path / name, *extra)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stderr.count("LoadWarning: ") == 1   # the new head, said by rank 0 alone
        lines = map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
        evals[name] = [r for r in lines if r["split"] == "eval"]
    assert len(evals["ddp"]) == 1 and evals["fsdp"][0]["step"] == evals["ddp"][0]["step"]
    ddp, fsdp = evals["ddp"][0], evals["fsdp"][0]
    metric = "f1"
    assert fsdp["n"] == ddp["n"] and fsdp[metric] == pytest.approx(ddp[metric], abs=1e-9)
    assert 0 < ddp[metric]  # it learned something in one epoch, so the comparison means something


def test_torchrun_classify_equals_one_process_with_the_same_global_batch(tmp_path, torchrun, cls_toy):  # noqa: F811
    """`finetune classify` on 2 ranks of batch 2 with accumulation 2 against one process of batch 4 with accumulation
    2 (an encoder without dropout, so the ranks' dropout streams do not matter): the same weights at the end."""
    encoder = tmp_path / "encoder"
    model = AutoModel.from_pretrained(cls_toy["encoder"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(encoder)
    AutoTokenizer.from_pretrained(cls_toy["encoder"]).save_pretrained(encoder)
    args = ["finetune", "classify", "--model", encoder, "--train", cls_toy["train"], "--dev", cls_toy["dev"],
            "--lr", "1e-2", "--max-seq-length", "16", "--epochs", "2", "--seed", "4", "--grad-accum", "2"]
    assert main([*map(str, args), "--batch-size", "4", "--output", str(tmp_path / "one")]) == 0
    run = torchrun("-m", "bertkit", *args, "--batch-size", "2", "--output", tmp_path / "two")
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (load_file(tmp_path / d / "step-000020" / "model.safetensors") for d in ("one", "two"))  # 2 x 80 rows / 8
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\nclassify 2 ranks x 2 x accumulation 2 vs 1 process x 4 x 2, 20 steps: max |weight diff| = {diff:.2e}")
    assert diff <= 1e-5
    again = torchrun("-m", "bertkit", *args, "--batch-size", "2", "--output", tmp_path / "two")  # a finished run there
    assert again.returncode != 0 and "exitcode  : 2" in again.stderr, again.stderr[-3000:]
    assert again.stderr.count("bertkit finetune classify: error:") == 1, again.stderr[-3000:]  # rank 0's, once


def test_torchrun_resumes_a_one_process_run_and_says_a_refusal_once(corpus, tokenizer_dir,  # noqa: F811
                                                                    tmp_path, torchrun):
    """A 1-process pre-training run (batch 4) that died after its step-2 checkpoint, resumed by 2 processes of
    batch 2: the weights of the uninterrupted run, each step once in metrics.jsonl. The refusals every rank would
    make alike (another global batch, another --lr) are printed once, by rank 0, not once per rank."""
    from bertkit.config import BertConfig

    config = tmp_path / "config.json"
    BertConfig.from_size("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).to_json_file(config)
    args = ["pretrain", "--corpus", corpus, "--tokenizer", tokenizer_dir, "--config", config, "--max-steps", "4",
            "--save-every", "2", "--keep-last", "5", "--log-every", "1", "--seq-len", "32", "--eval-batches", "2",
            "--eval-every", "3", "--seed", "5"]
    assert main([*map(str, args), "--batch-size", "4", "--output", str(tmp_path / "one")]) == 0
    shutil.copytree(tmp_path / "one", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "step-000004")  # as if killed in step 4: metrics.jsonl has lines past step 2

    for extra, message in ((["--batch-size", "4"], "step-000002 was written by 1 process, each micro-batch 4 "
                                                   "sequences in all, accumulation 1; resuming on 2 needs the same "
                                                   "(a batch size of 2 per process"),
                           (["--batch-size", "2", "--lr", "1e-4"], "these differ: --lr 0.0001 (the run's: 0.001)")):
        run = torchrun("-m", "bertkit", *args, *extra, "--resume", "--output", tmp_path / "cut")
        assert run.returncode != 0 and "exitcode  : 2" in run.stderr, run.stderr[-3000:]
        assert run.stderr.count("bertkit pretrain: error:") == 1 and message in run.stderr, run.stderr[-3000:]

    run = torchrun("-m", "bertkit", *args, "--batch-size", "2", "--resume", "--output", tmp_path / "cut")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("step-000002 was written by 1 process, this run has 2") == 1
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("one", "cut"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\n1 process killed after step 2, resumed by 2 ranks: max |weight diff| to the uninterrupted run = "
          f"{diff:.2e}")
    assert diff <= 1e-6
    lines = {d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
             for d in ("one", "cut")}
    assert [(r["step"], r["split"]) for r in lines["cut"]] == [(r["step"], r["split"]) for r in lines["one"]] == [
        (1, "train"), (2, "train"), (3, "train"), (3, "eval"), (4, "train"), (4, "eval")]
    for x, y in zip(lines["one"], lines["cut"]):
        assert y.get("loss", y.get("mlm_loss")) == pytest.approx(x.get("loss", x.get("mlm_loss")), rel=1e-5)


def test_finetune_resume_of_a_run_on_node_0_alone_fails_at_once_on_both_nodes(tmp_path, cls_toy):  # noqa: F811
    """A finished fine-tuning run on node 0's local disk, resumed on 2 nodes (each a working directory of its own,
    `tests.train.test_multinode`): node 0 would find the run complete while node 1 trained alone, a hang. Both
    nodes fail within seconds instead, each saying why."""
    from tests.train.test_multinode import ERROR, two_nodes
    args = ["finetune", "classify", "--model", cls_toy["encoder"], "--train", cls_toy["train"], "--dev",
            cls_toy["dev"], "--batch-size", "16", "--max-seq-length", "16", "--epochs", "1"]
    assert main([*map(str, args), "--output", str(tmp_path / "node0" / "run")]) == 0
    nodes = two_nodes([tmp_path / "node0", tmp_path / "node1"], "-m", "bertkit", *args, "--output", "run",
                      "--resume")
    for node in nodes:
        assert node.returncode != 0 and "exitcode  : 2" in node.stderr, node.stderr[-3000:]
        lines = [line for line in node.stderr.splitlines() if line.startswith("bertkit finetune classify: error: ")]
        assert len(lines) == 1 and ERROR in lines[0] and str(tmp_path / "node1" / "run") in lines[0], lines
