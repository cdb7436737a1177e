"""What a user sees while a long command works: a line saying what it does before a phase that says nothing
itself for tens of seconds on real sizes (torch.export's tracing; cutting SQuAD's training questions into windows),
so that a log file is not silent while it runs. Tiny hermetic models and toy data, made here."""
from __future__ import annotations

import json
import random

import pytest
import torch

from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.modeling.heads import BertForQuestionAnswering, BertForSequenceClassification
from bertkit.tokenizer import BertTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the a of red green blue city king river what who color is was old new".split()


def _tiny(directory, cls):
    """A random tiny model of class `cls` with a toy vocabulary, saved with its tokenizer."""
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?"] + WORDS)})
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=20, max_position_embeddings=64)
    torch.manual_seed(0)
    cls(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_export_says_what_it_does_before_tracing(tmp_path, capsys, monkeypatch):
    """torch.export says nothing while it traces (23 s for all-MiniLM-L6-v2 on 2 busy cores): a line on stderr
    names the model and the step before it starts, and the result on stdout says how long it all took."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = _tiny(tmp_path / "m", BertForSequenceClassification)
    real = torch.onnx.export
    said_before = []

    def export(*args, **kwargs):
        said_before.append(capsys.readouterr().err)   # what the user had seen when the tracing began
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    assert main(["export", str(model), "--output", str(tmp_path / "onnx")]) == 0
    assert len(said_before) == 1
    lines = said_before[0].splitlines()
    assert lines[-1].startswith("exporting BertForSequenceClassification (1 layer, ") and str(model) in lines[-1]
    assert "to ONNX with torch.export" in lines[-1]
    out = capsys.readouterr().out
    assert out.startswith(f"BertForSequenceClassification -> {tmp_path / 'onnx' / 'model.onnx'} (")
    assert out.splitlines()[0].endswith(" s)")


def test_export_refusals_say_nothing_before_their_error(tmp_path, capsys):
    """A refused export (output taken) is its one-line error alone: the start line comes only when work starts."""
    model = _tiny(tmp_path / "m", BertForSequenceClassification)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["export", str(model), "--output", str(tmp_path / "taken")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "already exists and is not an empty directory" in captured.err


def _squad(path, questions: int, seed: int) -> None:
    """A SQuAD v1.1 file of `questions` answerable questions over two contexts."""
    rng = random.Random(seed)
    paras = []
    for _ in range(2):
        context = " ".join(rng.choices(WORDS, k=30)) + " ."
        qas = []
        for i in range(questions // 2):
            start = rng.randrange(0, 25)
            words = context.split()
            answer = " ".join(words[start:start + 2])
            char = len(" ".join(words[:start])) + (1 if start else 0)
            qas.append({"id": f"{seed}-{len(paras)}-{i}", "question": " ".join(rng.choices(WORDS, k=4)) + " ?",
                        "answers": [{"text": answer, "answer_start": char}]})
        paras.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}), encoding="utf-8")


def test_finetune_qa_says_what_it_read_before_cutting_windows(tmp_path, capsys, monkeypatch):
    """Cutting SQuAD's 87,599 training questions into windows says nothing for most of a minute (10,570 took 6 s on
    2 busy cores): the questions read are said before it starts, the windows and the time it took after."""
    from bertkit.tasks import qa
    model = _tiny(tmp_path / "m", BertForQuestionAnswering)
    _squad(tmp_path / "train.json", 8, 0)
    _squad(tmp_path / "dev.json", 4, 1)
    real = qa.encode_qa
    said_before = []

    def encode(*args, **kwargs):
        said_before.append(capsys.readouterr().out)
        return real(*args, **kwargs)

    monkeypatch.setattr(qa, "encode_qa", encode)
    assert main(["finetune", "qa", "--model", str(model), "--train", str(tmp_path / "train.json"),
                 "--dev", str(tmp_path / "dev.json"), "--output", str(tmp_path / "run"), "--max-steps", "1",
                 "--batch-size", "4", "--max-seq-length", "48", "--doc-stride", "8"]) == 0
    assert said_before[0] == (f"SQuAD v1.1 QA: 8 training questions of {tmp_path / 'train.json'}, 4 dev questions "
                              f"of {tmp_path / 'dev.json'}; cutting them into windows of 48 tokens\n")
    after = capsys.readouterr().out.splitlines()[0]
    assert after.startswith("8 training and 4 dev windows (") and after.endswith(f" s); model {model}")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_qa_model_given_a_table_says_it_reads_squad_json(tmp_path, capsys, command):
    """A QA model given a TSV (another task's data, or the wrong --model) is told what it reads, in one line,
    not "bad JSON" at the table's line 1."""
    model = _tiny(tmp_path / "m", BertForQuestionAnswering)
    table = tmp_path / "dev.tsv"
    table.write_text("sentence\tlabel\nthe red city .\t1\n", encoding="utf-8")
    extra = ["--output", str(tmp_path / "p.json")] if command == "predict" else []
    assert main([command, "--model", str(model), "--data", str(table), *extra]) == 2
    err = capsys.readouterr().err
    assert err == (f"bertkit {command}: error: {table}: {model} is a question answering model "
                   "(BertForQuestionAnswering), which reads SQuAD JSON or JSON Lines, not a TSV file\n")
    assert not (tmp_path / "p.json").exists()
