"""Token tagging and QA fine-tuning under torchrun, DDP against FSDP: their heads read every token (no pooler) and
their evaluations gather per-window results that the ranks computed in shares. (Classification, whose head reads
the [CLS] row, is raced the same way in test_classify.py.)"""
import json

import pytest
from test_qa import toy as qa_toy  # noqa: F401  (the toy tasks' fixtures)
from test_tag import toy as tag_toy  # noqa: F401

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
