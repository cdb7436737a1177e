"""`bertkit predict` for extractive QA and multiple choice on big inputs, measured by their mechanism on a few
questions / rows: the input is predicted a chunk at a time (`classify.CHUNK_ROWS`, made small here), a QA chunk
holding every window of its questions, each chunk's output reaching the disk before the next chunk is predicted,
one progress bar counting the questions (not their windows) or rows, Ctrl-C leaving no partial output, and the
bytes written those of the whole input predicted at once."""
from __future__ import annotations

import csv
import json
import random

import pytest
import torch

from bertkit import AutoModelForMultipleChoice, AutoModelForQuestionAnswering, AutoTokenizer
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.data.readers import read_squad
from bertkit.modeling.heads import BertForMultipleChoice, BertForQuestionAnswering
from bertkit.tasks import choice, classify, qa
from bertkit.tasks.choice import encode_choices, predict_choice_logits, predict_choices, read_choices
from bertkit.tasks.qa import encode_qa, nbest_json, null_odds, postprocess, predict_answers, predict_qa_logits
from bertkit.tokenizer import BertTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CHUNK = 3          # questions (or rows) per chunk in these tests; --batch-size 2 keeps the chunk at 3
QUESTIONS = 10     # 4 chunks: 3, 3, 3, 1
WORDS = "the a of red green blue city king river what who color is was old new ?".split()
QA_FLAGS = ["--max-seq-length", "24", "--doc-stride", "4", "--n-best", "5"]   # contexts of several windows
ENDINGS = ["ending0", "ending1", "ending2", "ending3"]


def _config(vocab: int) -> BertConfig:
    return BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=20, max_position_embeddings=64)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A random tiny QA model and multiple-choice model (nothing trained) sharing a toy vocabulary; a SQuAD file
    of QUESTIONS questions over 4 contexts of 20-50 words (several windows each; one context has a word
    outside ASCII, so answers may too), and a table of QUESTIONS rows."""
    d = tmp_path_factory.mktemp("stream")
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS)})
    torch.manual_seed(0)
    for name, cls in (("qa", BertForQuestionAnswering), ("mc", BertForMultipleChoice)):
        cls(_config(len(tok))).save_pretrained(d / name)
        tok.save_pretrained(d / name)
    rng = random.Random(0)
    contexts = [" ".join(rng.choices(WORDS[:-1], k=rng.randint(20, 50))) + " ." for _ in range(4)]
    contexts[1] = contexts[1].replace("river", "rivière")
    paras = [{"context": c, "qas": []} for c in contexts]
    for i in range(QUESTIONS):
        paras[i * 4 // QUESTIONS]["qas"].append({"id": f"q{i}", "question": " ".join(rng.choices(WORDS, k=3)) + " ?",
                                    "answers": [], "is_impossible": i % 3 == 0})
    (d / "squad.json").write_text(json.dumps({"version": "2.0", "data": [{"title": "t", "paragraphs": paras}]}),
                                  encoding="utf-8")
    with open(d / "mc.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["context", *ENDINGS])
        for _ in range(QUESTIONS):
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randint(3, 12)))]
                       + [" ".join(rng.choices(WORDS, k=rng.randint(1, 5))) for _ in ENDINGS])
    return d


def _tmp_size(out) -> int:
    """Bytes of `out`'s temporary twin (what predict has written so far); 0 before it exists."""
    twins = list(out.parent.glob(out.name + ".tmp*"))
    return twins[0].stat().st_size if twins else 0


def _qa_model(toy):
    return AutoModelForQuestionAnswering.from_pretrained(toy / "qa"), AutoTokenizer.from_pretrained(toy / "qa")


def _qa_whole(toy, n_best: int = 5, version_2: bool = True) -> dict:
    """Today's answers: every question's windows in one loop, post-processed together."""
    model, tok = _qa_model(toy)
    examples = read_squad(toy / "squad.json", labelled=False)
    feats = encode_qa(tok, examples, 24, 4, 64, labels=False)
    logits = predict_qa_logits(model, feats, 64, tok.pad_token_id, False)
    return postprocess(feats, logits, examples, n_best=n_best, version_2=version_2)


def _qa_files(preds: dict, version_2: bool = True) -> dict[str, str]:
    """The bytes `bertkit predict` wrote from `preds` before it streamed: each file one json.dumps."""
    files = {"p.json": {q: p["text"] for q, p in preds.items()}, "p.nbest.json": nbest_json(preds, version_2, 5)}
    if version_2:
        files["p.null_odds.json"] = null_odds(preds)
    return {name: json.dumps(obj, indent=2, ensure_ascii=False) + "\n" for name, obj in files.items()}


def _predict_qa(toy, out, *extra) -> int:
    return main(["predict", "--model", str(toy / "qa"), "--data", str(toy / "squad.json"), "--output", str(out),
                 *QA_FLAGS, *extra])


@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_qa_predict_files_are_byte_for_byte_the_whole_input_s(toy, tmp_path, monkeypatch, chunk):
    """One chunk (the default 4096) or four: the answers, n-best lists and null odds are the bytes of the whole
    input predicted at once, non-ASCII answers included."""
    if chunk is not None:
        monkeypatch.setattr(classify, "CHUNK_ROWS", chunk, raising=False)
    assert _predict_qa(toy, tmp_path / "p.json", "--batch-size", "2") == 0
    want = _qa_files(_qa_whole(toy))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(want)
    for name, text in want.items():
        assert (tmp_path / name).read_text(encoding="utf-8") == text, name
    assert "rivière" in want["p.nbest.json"]   # written as is (ensure_ascii=False), as before


def test_qa_v1_predict_streams_no_null_odds(toy, tmp_path, monkeypatch):
    """v1.1 (asked for no v2.0, and the file read without is_impossible marks): answers and n-best only."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    data = json.loads((toy / "squad.json").read_text(encoding="utf-8"))
    for para in data["data"][0]["paragraphs"]:
        for q in para["qas"]:
            q["is_impossible"] = False
    (tmp_path / "v1.json").write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out" / "p.json"
    assert main(["predict", "--model", str(toy / "qa"), "--data", str(tmp_path / "v1.json"), "--output", str(out),
                 *QA_FLAGS, "--batch-size", "2"]) == 0
    want = _qa_files(_qa_whole(toy, version_2=False), version_2=False)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(want)
    for name, text in want.items():
        assert (out.parent / name).read_text(encoding="utf-8") == text, name


def test_qa_predict_writes_each_chunk_of_whole_questions_before_the_next(toy, tmp_path, monkeypatch):
    """Each prediction call holds 3 questions with all their windows (as many as the whole input gives them),
    and the answers and n-best lists of the chunks before are already on disk."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    model, tok = _qa_model(toy)
    examples = read_squad(toy / "squad.json", labelled=False)
    windows = [0] * QUESTIONS
    for f in encode_qa(tok, examples, 24, 4, 64, labels=False):
        windows[f.example] += 1
    assert min(windows) >= 2 and sum(windows) > 2 * QUESTIONS   # several windows a question
    out, calls, real = tmp_path / "p.json", [], qa.predict_qa_logits

    def spy(model, features, *args, **kwargs):
        per = {}
        for f in features:
            per[f.example] = per.get(f.example, 0) + 1
        calls.append((list(per.values()), _tmp_size(out), _tmp_size(tmp_path / "p.nbest.json")))
        return real(model, features, *args, **kwargs)
    monkeypatch.setattr(qa, "predict_qa_logits", spy)
    assert _predict_qa(toy, out, "--batch-size", "2") == 0
    assert [c[0] for c in calls] == [windows[0:3], windows[3:6], windows[6:9], windows[9:10]]
    sizes = [c[1:] for c in calls]
    assert sizes[0] == (0, 0) and all(a < b for x, y in zip(sizes, sizes[1:]) for a, b in zip(x, y)), sizes


def test_qa_predict_answers_and_its_iterator_equal_the_whole_input_s(toy, monkeypatch):
    """The library functions keep their results: `predict_answers` (a dict) is the whole input's, and
    `iter_predict_answers` gives it chunk by chunk, in input order."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    model, tok = _qa_model(toy)
    examples = read_squad(toy / "squad.json", labelled=False)
    s = dict(max_seq_length=24, doc_stride=4, n_best=5, version_2=True, batch_size=2, progress=False)
    want = _qa_whole(toy)
    got = predict_answers(model, tok, examples, **s)
    assert list(got) == list(want) and got == want
    parts = list(qa.iter_predict_answers(model, tok, examples, **s))
    assert [list(p) for p in parts] == [[f"q{i}" for i in r] for r in (range(0, 3), range(3, 6), range(6, 9), [9])]


@pytest.mark.parametrize("before", [None, "an earlier output\n"])
def test_qa_ctrl_c_midway_leaves_none_of_the_three_files(toy, tmp_path, monkeypatch, capsys, before):
    """Ctrl-C in the third chunk, two chunks already written: status 130, one line, and neither the answers nor
    the n-best lists nor the null odds left (an earlier answers file as it was), no temporary file."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    out = tmp_path / "p.json"
    if before is not None:
        out.write_text(before, encoding="utf-8")
    real, seen = qa.predict_qa_logits, []

    def interrupted(*args, **kwargs):
        seen.append(_tmp_size(out))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(qa, "predict_qa_logits", interrupted)
    capsys.readouterr()
    assert _predict_qa(toy, out, "--batch-size", "2") == 130
    assert len(seen) == 3 and seen[2] > seen[1] > 0
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("bertkit predict: interrupted"), err
    assert [p.name for p in tmp_path.iterdir()] == ([] if before is None else ["p.json"])
    assert before is None or out.read_text(encoding="utf-8") == before


# shared with tests/tasks/test_evaluate_stream_qa_choice.py (the same mechanisms through `bertkit evaluate`)
def _progress_counts(err: str) -> list[str]:
    return [line.split()[1] for line in err.splitlines() if line.startswith("predicting: ")]


def _one_bar(err: str) -> list[int]:
    """The counts of one progress bar over QUESTIONS, rising to QUESTIONS once."""
    counts = _progress_counts(err)
    assert counts and all(c.endswith(f"/{QUESTIONS}") for c in counts), counts
    done = [int(c.split("/")[0]) for c in counts]
    assert done == sorted(done) and len(done) > 3 and done.count(QUESTIONS) == 1 and done[-1] == QUESTIONS, done
    return done


def _too_long_late(squad, tmp_path):
    """`squad` with its ninth question (q8, in the third chunk) too long to leave QA_FLAGS' windows any room."""
    data = json.loads(squad.read_text(encoding="utf-8"))
    data["data"][0]["paragraphs"][3]["qas"][0]["question"] = " ".join(["red"] * 18)   # q8
    path = tmp_path / "long.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _refused_late(err: str, command: str, path, tmp_path) -> None:
    """One line naming the file and the question, and nothing written beside the input."""
    assert err.startswith(f"bertkit {command}: error: {path}: question q8: max_seq_length 24 leaves 3 "), err
    assert len(err.splitlines()) == 1 and [p.name for p in tmp_path.iterdir()] == ["long.json"]


def test_qa_progress_bar_counts_questions_not_windows(toy, tmp_path, monkeypatch, capsys):
    """Without a terminal: one count over the file's 10 questions (not its 28 windows), rising to 10/10 once."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    monkeypatch.setattr(classify, "PROGRESS_EVERY_S", 0.0)
    capsys.readouterr()
    assert _predict_qa(toy, tmp_path / "p.json", "--batch-size", "2") == 0
    _one_bar(capsys.readouterr().err)


def test_qa_a_question_too_long_in_a_late_chunk_names_the_file(toy, tmp_path, monkeypatch, capsys):
    """A question whose windows leave no room (the ninth, in the third chunk): one line naming the file and the
    question, and no output left."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    path = _too_long_late(toy / "squad.json", tmp_path)
    capsys.readouterr()
    assert main(["predict", "--model", str(toy / "qa"), "--data", str(path), "--output", str(tmp_path / "p.json"),
                 *QA_FLAGS, "--batch-size", "2"]) == 2
    _refused_late(capsys.readouterr().err, "predict", path, tmp_path)


# ------------------------------------------------------------------------------------------- multiple choice
def _mc_lines(toy) -> str:
    """Today's multiple-choice output: every row in one loop."""
    model = AutoModelForMultipleChoice.from_pretrained(toy / "mc")
    tok = AutoTokenizer.from_pretrained(toy / "mc")
    rows = read_choices(toy / "mc.csv", label_column=None)
    logits = predict_choice_logits(model, encode_choices(tok, rows, 64), 64, tok.pad_token_id)
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    return "".join(json.dumps({"line": e.line, "label": int(p.argmax()), "score": round(float(p.max()), 6),
                               "probabilities": [round(float(q), 6) for q in p]}) + "\n" for e, p in zip(rows, probs))


def _predict_mc(toy, out, *extra) -> int:
    return main(["predict", "--model", str(toy / "mc"), "--data", str(toy / "mc.csv"), "--output", str(out),
                 "--context-column", "context", "--choice-columns", ",".join(ENDINGS), *extra])


@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_choice_predict_is_byte_for_byte_the_whole_input_s(toy, tmp_path, monkeypatch, chunk):
    if chunk is not None:
        monkeypatch.setattr(classify, "CHUNK_ROWS", chunk, raising=False)
    assert _predict_mc(toy, tmp_path / "p.jsonl", "--batch-size", "2") == 0
    assert (tmp_path / "p.jsonl").read_text(encoding="utf-8") == _mc_lines(toy)


def test_choice_predict_writes_each_chunk_before_the_next(toy, tmp_path, monkeypatch):
    """A prediction call per chunk of 3 rows, the lines of the chunks before already on disk; `predict_choices`
    keeps its list, the whole input's."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    out, calls, real = tmp_path / "p.jsonl", [], choice.predict_choice_logits

    def spy(model, features, *args, **kwargs):
        twins = list(out.parent.glob(out.name + ".tmp*"))
        calls.append((len(features), sum(1 for _ in open(twins[0], encoding="utf-8")) if twins else 0))
        return real(model, features, *args, **kwargs)
    monkeypatch.setattr(choice, "predict_choice_logits", spy)
    assert _predict_mc(toy, out, "--batch-size", "2") == 0
    assert calls == [(3, 0), (3, 3), (3, 6), (1, 9)]
    monkeypatch.setattr(choice, "predict_choice_logits", real)
    model = AutoModelForMultipleChoice.from_pretrained(toy / "mc")
    tok = AutoTokenizer.from_pretrained(toy / "mc")
    got = predict_choices(model, tok, read_choices(toy / "mc.csv", label_column=None), max_seq_length=64,
                          batch_size=2)
    assert [json.dumps({"label": p["label"], "score": round(p["score"], 6),
                        "probabilities": [round(q, 6) for q in p["probabilities"]]}) for p in got] == \
        [json.dumps({k: v for k, v in json.loads(line).items() if k != "line"}) for line in _mc_lines(toy).splitlines()]


def test_choice_predict_reads_the_table_a_chunk_at_a_time(toy, tmp_path, monkeypatch):
    """As the classifier's table (`test_predict_scale`): counted first, then read a chunk ahead of the writing."""
    from tests.tasks.test_predict_scale import _spy_lines_read
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    calls, readers = [], []
    _spy_lines_read(monkeypatch, choice, "predict_choice_logits", tmp_path / "p.jsonl", calls, readers)
    assert _predict_mc(toy, tmp_path / "p.jsonl", "--batch-size", "2") == 0
    assert calls == [(3, 1 + 3), (3, 1 + 6), (3, 1 + 9), (1, 1 + QUESTIONS)] and readers == [1 + QUESTIONS] * 2
    assert (tmp_path / "p.jsonl").read_text(encoding="utf-8") == _mc_lines(toy)


def test_choice_progress_bar_counts_rows_and_ctrl_c_leaves_no_output(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    monkeypatch.setattr(classify, "PROGRESS_EVERY_S", 0.0)
    capsys.readouterr()
    assert _predict_mc(toy, tmp_path / "p.jsonl", "--batch-size", "2") == 0
    done = [int(c.split("/")[0]) for c in _progress_counts(capsys.readouterr().err) if c.endswith(f"/{QUESTIONS}")]
    assert done == sorted(done) and len(done) > 3 and done.count(QUESTIONS) == 1 and done[-1] == QUESTIONS, done
    (tmp_path / "p.jsonl").unlink()
    real, seen = choice.predict_choice_logits, []

    def interrupted(*args, **kwargs):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(choice, "predict_choice_logits", interrupted)
    assert _predict_mc(toy, tmp_path / "p.jsonl", "--batch-size", "2") == 130
    assert list(tmp_path.iterdir()) == []
