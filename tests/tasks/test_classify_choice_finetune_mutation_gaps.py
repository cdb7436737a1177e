"""Behaviour of the classification, multiple-choice and fine-tuning modules that a mutation audit found unpinned:
each test below fails on a plausible one-token bug that the other tests let through. Tiny, hermetic, fast."""
import json
import warnings

import numpy as np
import pytest
import torch
from scipy import stats as S
from sklearn import metrics as SK

from bertkit.config import BertConfig
from bertkit.data.labels import IGNORE, void_labels
from bertkit.hub import LoadWarning
from bertkit.modeling import BertForMultipleChoice, BertForSequenceClassification
from bertkit.tasks import choice as CH
from bertkit.tasks import classify as C
from bertkit.tasks import finetune as FT
from bertkit.tokenizer import BertTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the movie was good and plot bad a lovely film story actor really quite nice".split()


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer.train_from_iterator([" ".join(WORDS)] * 3, vocab_size=80)


def tiny(cls, tok, **kw):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=20, max_position_embeddings=16, **kw)
    return cls(cfg)


# ---------------------------------------------------------------------------------------------------------------
# classify.py
# ---------------------------------------------------------------------------------------------------------------

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
    model = tiny(BertForSequenceClassification, tok, num_labels=2, hidden_dropout_prob=0.5,
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
    model = tiny(BertForSequenceClassification, tok, num_labels=2).eval()
    long = " ".join(WORDS * 3)
    assert C.predict(model, tok, [long], max_seq_length=512) == C.predict(model, tok, [long], max_seq_length=16)


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


def test_evaluation_refuses_unlabelled_features(tok):
    """A feature without a label is refused by name, not met later as int(None) in the metrics."""
    model = tiny(BertForSequenceClassification, tok, num_labels=2)
    feats = [C.Feature([2, 5, 3], [0, 0, 0], 1), C.Feature([2, 6, 3], [0, 0, 0], None)]
    with pytest.raises(ValueError, match=r"^evaluation needs labelled features$"):
        C.evaluate_classification(model, feats)


# ---------------------------------------------------------------------------------------------------------------
# choice.py
# ---------------------------------------------------------------------------------------------------------------

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
    model = tiny(BertForMultipleChoice, tok).eval()
    ex = [CH.ChoiceExample(" ".join(WORDS * 3), None, ("a lovely film", "the plot was bad"), None)]
    assert CH.predict_choices(model, tok, ex, max_seq_length=512) == CH.predict_choices(model, tok, ex,
                                                                                         max_seq_length=16)


# ---------------------------------------------------------------------------------------------------------------
# finetune.py
# ---------------------------------------------------------------------------------------------------------------

def test_a_tie_or_a_nan_keeps_the_earlier_best():
    """As transformers' Trainer (np.greater): only a strictly higher metric replaces the best checkpoint; a nan
    (a constant prediction's correlation) never does, except as the first."""
    assert FT._better(0.5, None) and FT._better(0.6, 0.5)
    assert not FT._better(0.5, 0.5)
    assert not FT._better(float("nan"), 0.5) and FT._better(float("nan"), None)
    assert FT._better(0.1, float("nan"))


def test_repeated_seeds_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^--seeds must list distinct integers, got '1,2,1'$"):
        FT.FinetuneArgs(seeds="1,2,1", output=str(tmp_path / "o"))


@pytest.mark.parametrize("name", ["dev.tsv.bz2", "dev.tsv.xz"])  # (.zip and .gz: tests/test_cli.py)
def test_evaluate_writes_eval_named_after_the_data_less_compression(tmp_path, name, capsys):
    FT.write_eval({"accuracy": 1.0, "n": 3}, str(tmp_path), f"data/{name}", None, "rows")
    assert json.loads((tmp_path / "eval_dev.json").read_text()) == {"model": str(tmp_path), "data": f"data/{name}",
                                                                    "accuracy": 1.0, "n": 3}


def test_a_fraction_of_an_epoch_rounds_the_steps_up(tok, tmp_path, monkeypatch):
    """As transformers' Trainer: max_steps = ceil(epochs * steps per epoch); 10 rows in batches of 4 are 3 steps
    an epoch, so half an epoch is 2 steps (not 1)."""
    from bertkit.modeling import BertModel
    enc = tmp_path / "enc"
    tok.save_pretrained(enc)
    tiny(BertModel, tok).save_pretrained(enc)
    rows = "".join(f"{'a lovely film' if i % 2 else 'the plot was bad'}\t{'pos' if i % 2 else 'neg'}\n"
                   for i in range(10))
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + rows, encoding="utf-8")
    args = FT.FinetuneClassifyArgs(model=str(enc), train=str(tmp_path / "t.tsv"), dev=str(tmp_path / "t.tsv"),
                                   output=str(tmp_path / "run"), epochs=0.5, batch_size=4, max_seq_length=16,
                                   progress=False)
    seen = {}

    class Stop(Exception):
        pass

    def trainer(objective, model, batches, cfg, **kw):  # the schedule is all this test needs: no training
        seen["max_steps"], seen["per_epoch"] = cfg.max_steps, batches.steps_per_epoch
        raise Stop

    monkeypatch.setattr(FT, "Trainer", trainer)
    with warnings.catch_warnings(), pytest.raises(Stop):
        warnings.simplefilter("ignore", LoadWarning)  # the fresh classifier head
        FT.run_finetune_classify(args)
    assert seen == {"max_steps": 2, "per_epoch": 3}


def test_seeds_report_the_mean_and_sample_sd_of_each_metric(tmp_path, monkeypatch, capsys):
    """Over seeds, eval_results.json holds each metric's mean and SAMPLE standard deviation (n - 1), for seeds
    whose metrics differ (the end-to-end test's two seeds often tie, where every sd is 0)."""
    data = tmp_path / "d.tsv"
    data.write_text("text\tlabel\na\tx\n", encoding="utf-8")
    args = FT.FinetuneArgs(train=str(data), dev=str(data), output=str(tmp_path / "run"), seeds="1,2,3")
    best = {1: {"accuracy": 0.5, "f1": 0.25, "n": 4}, 2: {"accuracy": 0.75, "f1": 0.5, "n": 4},
            3: {"accuracy": 1.0, "f1": 1.0, "n": 4}}

    def run_one(seed, out):  # a finished seed, without training
        return {"best": best[seed], "best_step": 1}

    monkeypatch.setattr(FT, "plot_runs", lambda *a, **k: None)
    res = FT.run_seeds(args, tmp_path / "run", run_one, "accuracy", {})
    assert res["mean"] == pytest.approx({"accuracy": 0.75, "f1": 1.75 / 3})
    assert res["sd"] == pytest.approx({"accuracy": 0.25, "f1": float(np.std([0.25, 0.5, 1.0], ddof=1))})
    assert json.loads((tmp_path / "run" / "eval_results.json").read_text())["sd"] == res["sd"]


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
