"""`bertkit evaluate` for extractive QA (v1.1 and v2.0) and multiple choice on big inputs, measured by their
mechanism on a few questions / rows: the file is encoded and predicted a chunk at a time (`classify.CHUNK_ROWS`,
made small here), a QA chunk holding every window of its questions, one progress bar counting the questions (not
their windows) or rows, and every metric equal, to the last digit, to today's: the whole file's windows (rows)
predicted in one loop and scored together (`_qa_whole`, `_mc_whole`: the bodies `evaluate_qa` and
`evaluate_choice` had before they went by chunks)."""
from __future__ import annotations

import csv
import json
import random

import pytest
import torch
import torch.nn.functional as F

from bertkit import AutoModelForMultipleChoice, AutoModelForQuestionAnswering, AutoTokenizer
from bertkit import metrics as M
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.data.readers import read_squad
from bertkit.modeling.heads import BertForMultipleChoice, BertForQuestionAnswering
from bertkit.tasks import choice, classify, qa
from bertkit.tasks.choice import encode_choices, evaluate_choice, predict_choice_logits, read_choices
from bertkit.tasks.qa import encode_qa, evaluate_qa, postprocess, predict_qa_logits, score_predictions
from bertkit.tokenizer import BertTokenizer
from tests.tasks.test_predict_stream_qa_choice import CHUNK, QUESTIONS, _one_bar, _refused_late, _too_long_late

pytestmark = pytest.mark.usefixtures("one_thread")

# CHUNK (3) questions or rows per chunk and QUESTIONS (10): 4 chunks, 3, 3, 3, 1, as in the predict tests
PARTS = [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
WORDS = "the a of red green blue city king river what who color is was old new ?".split()
QA_FLAGS = ["--max-seq-length", "24", "--doc-stride", "4", "--n-best", "5", "--batch-size", "2"]
ENDINGS = ["ending0", "ending1", "ending2", "ending3"]
MC_FLAGS = ["--context-column", "context", "--choice-columns", ",".join(ENDINGS), "--label-column", "label",
            "--batch-size", "2"]


def _config(vocab: int) -> BertConfig:
    # weights 25x BERT's init: scores far apart, so the answers, accuracy and loss depend on every logit
    return BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=20, max_position_embeddings=64, initializer_range=0.5)


def _squad(contexts: list[str], rng: random.Random, version_2: bool) -> dict:
    """QUESTIONS questions over `contexts`, each answered by 1-3 words of its context (every third one
    unanswerable for v2.0)."""
    paras = [{"context": c, "qas": []} for c in contexts]
    for i in range(QUESTIONS):
        c = contexts[i * 4 // QUESTIONS]
        words = c.split()
        j = rng.randrange(len(words) - 3)
        text = " ".join(words[j:j + rng.randint(1, 3)])
        start = len(" ".join(words[:j])) + (1 if j else 0)
        impossible = version_2 and i % 3 == 0
        paras[i * 4 // QUESTIONS]["qas"].append({
            "id": f"q{i}", "question": " ".join(rng.choices(WORDS, k=3)) + " ?", "is_impossible": impossible,
            "answers": [] if impossible else [{"text": text, "answer_start": start}]})
    return {"version": "2.0" if version_2 else "1.1", "data": [{"title": "t", "paragraphs": paras}]}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A random tiny QA model and multiple-choice model (nothing trained) sharing a toy vocabulary; SQuAD v1.1 and
    v2.0 files of QUESTIONS questions over 4 contexts of 20-50 words (several windows each; one context has a word
    outside ASCII), and a labelled table of QUESTIONS rows."""
    d = tmp_path_factory.mktemp("evalstream")
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS)})
    torch.manual_seed(0)
    for name, cls in (("qa", BertForQuestionAnswering), ("mc", BertForMultipleChoice)):
        cls(_config(len(tok))).save_pretrained(d / name)
        tok.save_pretrained(d / name)
    rng = random.Random(0)
    contexts = [" ".join(rng.choices(WORDS[:-1], k=rng.randint(20, 50))) + " ." for _ in range(4)]
    contexts[1] = contexts[1].replace("river", "rivière")
    for name, v2 in (("v1.json", False), ("v2.json", True)):
        (d / name).write_text(json.dumps(_squad(contexts, rng, v2)), encoding="utf-8")
    with open(d / "mc.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["context", *ENDINGS, "label"])
        for _ in range(QUESTIONS):
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randint(3, 12)))]
                       + [" ".join(rng.choices(WORDS, k=rng.randint(1, 5))) for _ in ENDINGS] + [rng.randrange(4)])
    return d


# ------------------------------------------------------------------------------------------------------- QA
def _qa_model(toy):
    return AutoModelForQuestionAnswering.from_pretrained(toy / "qa"), AutoTokenizer.from_pretrained(toy / "qa")


def _qa_whole(toy, name: str, features=None) -> dict:
    """Today's metrics: every window of the file predicted in one loop, post-processed and scored together."""
    model, tok = _qa_model(toy)
    examples = read_squad(toy / name, strict=False)
    version_2 = any(e.is_impossible for e in examples)
    feats = encode_qa(tok, examples, 24, 4, 64, labels=False) if features is None else features
    logits = predict_qa_logits(model, feats, 64, tok.pad_token_id, False)
    preds = postprocess(feats, logits, examples, n_best=5, version_2=version_2)
    return score_predictions(preds, examples, version_2)


def _evaluate_qa(toy, tmp_path, name: str, *extra) -> dict:
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(toy / "qa"), "--data", str(toy / name), "--output", str(out),
                 *QA_FLAGS, *extra]) == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    assert (got.pop("model"), got.pop("data")) == (str(toy / "qa"), str(toy / name))
    return got


def _window_counts(toy, name: str) -> list[int]:
    model, tok = _qa_model(toy)
    windows = [0] * QUESTIONS
    for f in encode_qa(tok, read_squad(toy / name, strict=False), 24, 4, 64, labels=False):
        windows[f.example] += 1
    assert min(windows) >= 2 and sum(windows) > 2 * QUESTIONS   # several windows a question
    return windows


def _spy_qa(monkeypatch) -> list[list[int]]:
    """Per `predict_qa_logits` call, the number of windows of each question it holds (by the question's number
    within the call)."""
    calls, real = [], qa.predict_qa_logits

    def spy(model, features, *args, **kwargs):
        per: dict[int, int] = {}
        for f in features:
            per[f.example] = per.get(f.example, 0) + 1
        calls.append([per[k] for k in sorted(per)])
        assert sorted(per) == list(range(len(per)))   # numbered from the chunk's first question
        return real(model, features, *args, **kwargs)
    monkeypatch.setattr(qa, "predict_qa_logits", spy)
    return calls


@pytest.mark.parametrize("name", ["v1.json", "v2.json"])
def test_qa_evaluate_goes_by_chunks_with_today_s_metrics(toy, tmp_path, monkeypatch, name):
    """Four chunks of 3, 3, 3 and 1 questions, each encoded (`encode_qa` called per chunk) and predicted with all
    its windows; every metric (v2.0: HasAns / NoAns and the best thresholds too) exactly today's."""
    want = _qa_whole(toy, name)
    assert set(want) >= ({"exact", "f1", "n", "HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh"}
                         if name == "v2.json" else {"exact", "f1", "n"})
    assert 0 < want["f1"] < 100 and want["n"] == QUESTIONS
    windows = _window_counts(toy, name)
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    calls, encoded, real_encode = _spy_qa(monkeypatch), [], qa.encode_qa

    def encode_spy(tok, examples, *args, **kwargs):
        encoded.append(len(examples))
        return real_encode(tok, examples, *args, **kwargs)
    monkeypatch.setattr(qa, "encode_qa", encode_spy)
    got = _evaluate_qa(toy, tmp_path, name)
    assert got == want
    assert encoded == [3, 3, 3, 1]
    assert calls == [windows[p.start:p.stop] for p in PARTS]


def test_qa_evaluate_default_chunk_is_today_s_too(toy, tmp_path):
    """One chunk (CHUNK_ROWS 4096): the same metrics."""
    assert _evaluate_qa(toy, tmp_path, "v2.json") == _qa_whole(toy, "v2.json")


@pytest.mark.parametrize("shuffle", [False, True])
def test_evaluate_qa_of_encoded_windows_goes_by_chunks(toy, monkeypatch, shuffle):
    """The library function (the fine-tuning job's dev score) on windows encoded beforehand, in any order: a call
    per chunk of questions holding all their windows, numbered from the chunk's first; today's metrics."""
    model, tok = _qa_model(toy)
    examples = read_squad(toy / "v2.json", strict=False)
    feats = encode_qa(tok, examples, 24, 4, 64, labels=False)
    if shuffle:
        random.Random(1).shuffle(feats)
    want = _qa_whole(toy, "v2.json", feats)
    windows = _window_counts(toy, "v2.json")
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    calls = _spy_qa(monkeypatch)
    got = evaluate_qa(model, feats, examples, batch_size=2, n_best=5, pad_id=tok.pad_token_id, progress=False)
    assert got == want
    assert calls == [windows[p.start:p.stop] for p in PARTS]


def test_qa_evaluate_progress_bar_counts_questions_not_windows(toy, tmp_path, monkeypatch, capsys):
    """Without a terminal: one count over the file's 10 questions (not its windows)."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    monkeypatch.setattr(classify, "PROGRESS_EVERY_S", 0.0)
    capsys.readouterr()
    _evaluate_qa(toy, tmp_path, "v1.json")
    _one_bar(capsys.readouterr().err)


def test_qa_evaluate_a_question_too_long_in_a_late_chunk_names_the_file(toy, tmp_path, monkeypatch, capsys):
    """A question whose windows leave no room (the ninth, in the third chunk): one line naming the file and the
    question, and no metrics file."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    path = _too_long_late(toy / "v1.json", tmp_path)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(toy / "qa"), "--data", str(path), "--output", str(tmp_path / "e.json"),
                 *QA_FLAGS]) == 2
    _refused_late(capsys.readouterr().err, "evaluate", path, tmp_path)


# ------------------------------------------------------------------------------------------- multiple choice
def _mc_model(toy):
    return AutoModelForMultipleChoice.from_pretrained(toy / "mc"), AutoTokenizer.from_pretrained(toy / "mc")


def _mc_whole(toy) -> dict:
    """Today's metrics: every row predicted in one loop; accuracy and the mean cross-entropy of them all."""
    model, tok = _mc_model(toy)
    rows = read_choices(toy / "mc.csv")
    logits = predict_choice_logits(model, encode_choices(tok, rows, 64), 64, tok.pad_token_id)
    gold = [e.label for e in rows]
    return {"accuracy": M.accuracy(logits.argmax(-1).tolist(), gold),
            "loss": F.cross_entropy(torch.from_numpy(logits), torch.tensor(gold)).item(), "n": len(gold)}


def _evaluate_mc(toy, tmp_path) -> dict:
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(toy / "mc"), "--data", str(toy / "mc.csv"), "--output", str(out),
                 *MC_FLAGS]) == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    assert (got.pop("model"), got.pop("data")) == (str(toy / "mc"), str(toy / "mc.csv"))
    return got


@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_choice_evaluate_goes_by_chunks_with_today_s_metrics(toy, tmp_path, monkeypatch, chunk):
    """One chunk (the default 4096) or four of 3, 3, 3 and 1 rows, each encoded and predicted on its own:
    accuracy, n and the loss (the mean over all rows' scores kept together, so no summation order changes)
    exactly today's."""
    want = _mc_whole(toy)
    assert 0 < want["accuracy"] < 1 and abs(want["loss"] - 1.3862944) > 0.01   # not a uniform guess
    if chunk is not None:
        monkeypatch.setattr(classify, "CHUNK_ROWS", chunk, raising=False)
    calls, encoded = [], []
    real_predict, real_encode = choice.predict_choice_logits, choice.encode_choices

    def predict_spy(model, features, *args, **kwargs):
        calls.append(len(features))
        return real_predict(model, features, *args, **kwargs)

    def encode_spy(tok, examples, *args, **kwargs):
        encoded.append(len(examples))
        return real_encode(tok, examples, *args, **kwargs)
    monkeypatch.setattr(choice, "predict_choice_logits", predict_spy)
    monkeypatch.setattr(choice, "encode_choices", encode_spy)
    assert _evaluate_mc(toy, tmp_path) == want
    assert calls == encoded == ([QUESTIONS] if chunk is None else [3, 3, 3, 1])


def test_choice_evaluate_reads_the_table_a_chunk_at_a_time(toy, tmp_path, monkeypatch):
    """The table is read twice, a line at a time: its labels first (every line), then its rows as they are
    scored, a chunk of 3 at a time; memory holds one chunk of rows, not the file."""
    from tests.tasks.test_predict_scale import _spy_lines_read
    want = _mc_whole(toy)
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    calls, readers = [], []
    _spy_lines_read(monkeypatch, choice, "predict_choice_logits", tmp_path / "none", calls, readers)
    assert _evaluate_mc(toy, tmp_path) == want
    # rows per call, and the second reading's lines given by then: the header and the chunks so far
    assert calls == [(3, 1 + 3), (3, 1 + 6), (3, 1 + 9), (1, 1 + 10)]
    assert readers == [1 + QUESTIONS, 1 + QUESTIONS]


def test_choice_evaluate_refuses_a_bad_label_at_the_end_before_the_model_runs(toy, tmp_path, monkeypatch, capsys):
    rows = (toy / "mc.csv").read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows[:-1] + [rows[-1].rsplit(",", 1)[0] + ",7"]) + "\n", encoding="utf-8")
    ran = []
    monkeypatch.setattr(choice, "predict_choice_logits", lambda *a, **k: ran.append(1))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(toy / "mc"), "--data", str(bad), *MC_FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bertkit evaluate: error: {bad}:{len(rows)}: ") and len(err.splitlines()) == 1, err
    assert not ran


def test_evaluate_choice_of_encoded_features_is_today_s(toy):
    """The library function (the fine-tuning job's dev score) keeps its results and its refusals."""
    model, tok = _mc_model(toy)
    feats = encode_choices(tok, read_choices(toy / "mc.csv"), 64)
    assert evaluate_choice(model, feats, 2) == _mc_whole(toy)
    with pytest.raises(ValueError, match="^no evaluation features$"):
        evaluate_choice(model, [], 2)
    with pytest.raises(ValueError, match="^evaluation needs labelled features$"):
        evaluate_choice(model, encode_choices(tok, read_choices(toy / "mc.csv", label_column=None), 64), 2)


def test_choice_evaluate_progress_bar_counts_rows(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    monkeypatch.setattr(classify, "PROGRESS_EVERY_S", 0.0)
    capsys.readouterr()
    _evaluate_mc(toy, tmp_path)
    _one_bar(capsys.readouterr().err)
