"""`bertkit predict` and `evaluate` on big inputs, measured by their mechanism on a few hundred rows: the input is
tokenized and predicted a chunk at a time (`classify.CHUNK_ROWS`, made small here), each chunk's output lines
reach the disk before the next chunk is predicted, one progress bar counts the rows of every chunk, Ctrl-C or an
error leaves no partial output, and the results are those of the whole input predicted at once."""
from __future__ import annotations

import json
import random

import pytest
import torch

from bertkit import AutoTokenizer
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.data import readers as readers_module
from bertkit.data.readers import read_conll
from bertkit.modeling import BertForSequenceClassification, BertForTokenClassification
from bertkit.tasks import classify, tag
from bertkit.tasks.classify import (Example, Feature, LabelInfo, classification_metrics, encode_examples,
                                    encode_texts, labelled_logits, predict_logits)
from bertkit.tasks.tag import encode_sentences, evaluate_tagging, predict_word_logits
from bertkit.tokenizer import BertTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = 300
CHUNK = 64   # rows (or sentences) per chunk in these tests: 5 chunks of 300
WORDS = "the a movie film plot was is good bad great awful very quite and it story actor Paris Rome Ada Bob".split()
TAGS = ("B-LOC", "B-PER", "I-LOC", "O")


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 14))) for _ in range(n)]


def _config(vocab: int, labels) -> BertConfig:
    return BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=24, max_position_embeddings=64,
                      id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A random tiny classifier and tagger (nothing trained) with a tokenizer trained here; a table of ROWS
    labelled rows (header on line 1) and a CoNLL file of ROWS sentences."""
    d = tmp_path_factory.mktemp("scale")
    texts = _texts(ROWS, 0)
    tok = BertTokenizer.train_from_iterator(texts, vocab_size=80)
    torch.manual_seed(0)
    for name, cls, labels in (("cls", BertForSequenceClassification, ("neg", "pos")),
                              ("tag", BertForTokenClassification, TAGS)):
        cls(_config(len(tok), labels)).save_pretrained(d / name)
        tok.save_pretrained(d / name)
    rng = random.Random(1)
    (d / "rows.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{rng.choice(['neg', 'pos'])}\n" for t in texts),
                                encoding="utf-8")
    (d / "rows.conll").write_text("\n".join("".join(f"{w}\t{rng.choice(TAGS)}\n" for w in t.split())
                                            for t in texts), encoding="utf-8")
    return d


def _lines_on_disk(out) -> int:
    """Lines of `out`'s temporary twin (what predict has written so far); 0 before it exists."""
    twins = list(out.parent.glob(out.name + ".tmp*"))
    return sum(1 for _ in open(twins[0], encoding="utf-8")) if twins else 0


def _features(features, *_) -> int:
    return len(features)


def _spy(monkeypatch, module, name: str, out, calls: list, count=_features):
    """Replace `module.name` (the per-chunk prediction) by itself recording, per call, its input count and the
    output lines already on disk."""
    real = getattr(module, name)

    def spy(model, features, *args, **kwargs):
        calls.append((count(features, *args), _lines_on_disk(out)))
        return real(model, features, *args, **kwargs)
    monkeypatch.setattr(module, name, spy)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _cls_lines(toy, texts, lines) -> list[str]:
    """Today's `predict` output for these rows: the whole input in one length-sorted loop."""
    model = BertForSequenceClassification.from_pretrained(toy / "cls")
    tok = AutoTokenizer.from_pretrained(toy / "cls")
    feats = [Feature(ids, types) for ids, types in encode_texts(tok, texts, None, 64)]
    probs = torch.softmax(torch.from_numpy(predict_logits(model, feats, 64, tok.pad_token_id, False)), -1)
    names = model.config.label_names()
    return [json.dumps({"line": n, "label": names[int(p.argmax())], "score": float(p.max())}) for n, p in
            zip(lines, probs.numpy())]


def test_predict_writes_each_chunk_before_the_next_is_read(toy, tmp_path, monkeypatch):
    """A chunk of rows is tokenized and predicted at a time, and its lines are on disk (in the temporary file)
    before the next chunk is predicted; the rows come out in input order, as the whole file predicted at once."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    out, calls = tmp_path / "p.jsonl", []
    _spy(monkeypatch, classify, "predict_logits", out, calls)
    assert main(["predict", "--model", str(toy / "cls"), "--data", str(toy / "rows.tsv"), "--output", str(out),
                 "--text-column", "text", "--batch-size", "8"]) == 0
    assert calls == [(64, 0), (64, 64), (64, 128), (64, 192), (44, 256)]
    got = _read(out)
    want = [json.loads(line) for line in _cls_lines(toy, _texts(ROWS, 0), range(2, ROWS + 2))]
    assert [r["line"] for r in got] == list(range(2, ROWS + 2)) and [r["label"] for r in got] == \
        [r["label"] for r in want]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, want)) <= 1e-6


def _spy_lines_read(monkeypatch, module, name: str, out, calls: list, readers: list, count=_features):
    """`_spy`, recording per call the lines the newest `readers.read_lines` (a file's reading) has given."""
    real_read = readers_module.read_lines

    def read_lines(path, *args):
        readers.append(0)
        for item in real_read(path, *args):
            readers[-1] += 1
            yield item
    monkeypatch.setattr(readers_module, "read_lines", read_lines)
    real = getattr(module, name)

    def spy(model, features, *args, **kwargs):
        calls.append((count(features, *args), readers[-1] if readers else None))
        return real(model, features, *args, **kwargs)
    monkeypatch.setattr(module, name, spy)


def test_predict_reads_the_table_a_chunk_at_a_time(toy, tmp_path, monkeypatch):
    """The table is read twice, a line at a time: once to check and count its rows before any prediction (every
    line), then as it is predicted, a chunk ahead at most; memory holds one chunk of rows, not the file."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    out, calls, readers = tmp_path / "p.jsonl", [], []
    _spy_lines_read(monkeypatch, classify, "predict_logits", out, calls, readers)
    assert main(["predict", "--model", str(toy / "cls"), "--data", str(toy / "rows.tsv"), "--output", str(out),
                 "--text-column", "text", "--batch-size", "8"]) == 0
    # rows per call, and the second reading's lines given by then: the header and the chunks so far
    assert calls == [(64, 1 + 64), (64, 1 + 128), (64, 1 + 192), (64, 1 + 256), (44, 1 + 300)]
    assert readers == [1 + ROWS, 1 + ROWS]
    assert [r["line"] for r in _read(out)] == list(range(2, ROWS + 2))


def test_evaluate_reads_the_table_a_chunk_at_a_time(toy, tmp_path, monkeypatch):
    """`evaluate` too: the labels first (every line), then the texts as they are scored; the metrics are those of
    the whole input (`test_evaluate_predicts_a_chunk_at_a_time_with_the_whole_input_s_metrics`)."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    calls, readers = [], []
    _spy_lines_read(monkeypatch, classify, "predict_logits", tmp_path / "none", calls, readers)
    assert main(["evaluate", "--model", str(toy / "cls"), "--data", str(toy / "rows.tsv"), "--output",
                 str(tmp_path / "e.json"), "--text-column", "text", "--batch-size", "8"]) == 0
    assert calls == [(64, 1 + 64), (64, 1 + 128), (64, 1 + 192), (64, 1 + 256), (44, 1 + 300)]
    assert readers == [1 + ROWS, 1 + ROWS] and json.loads((tmp_path / "e.json").read_text())["n"] == ROWS


def test_tagger_evaluate_reads_the_conll_file_a_chunk_at_a_time(toy, tmp_path, monkeypatch):
    """A tagger's `evaluate` too: the tags first (every line), then the words as they are tagged, the second
    reading no further than the blank line that ends the chunk's last sentence; the metrics are those of the
    whole file (`test_evaluate_predicts_a_chunk_at_a_time_with_the_whole_input_s_metrics`)."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    calls, readers = [], []
    _spy_lines_read(monkeypatch, tag, "predict_word_logits", tmp_path / "none", calls, readers,
                    count=lambda feats, words, *_: len(words))
    assert main(["evaluate", "--model", str(toy / "tag"), "--data", str(toy / "rows.conll"), "--output",
                 str(tmp_path / "te.json"), "--batch-size", "8"]) == 0
    words = [len(t.split()) for t in _texts(ROWS, 0)]
    lines = sum(words) + ROWS - 1            # a blank line between sentences
    assert calls == [(64, sum(words[:k]) + k) for k in (64, 128, 192, 256)] + [(44, lines)]
    assert readers == [lines, lines] and json.loads((tmp_path / "te.json").read_text())["n"] == ROWS


def test_tagger_evaluate_refuses_an_unknown_tag_at_the_end_before_the_model_runs(toy, tmp_path, monkeypatch,
                                                                                 capsys):
    text = (toy / "rows.conll").read_text(encoding="utf-8")
    bad = tmp_path / "bad.conll"
    bad.write_text(text + "\nParis\tB-XYZ\n", encoding="utf-8")
    ran = []
    monkeypatch.setattr(tag, "predict_word_logits", lambda *a, **k: ran.append(1))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(toy / "tag"), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    line = len(text.splitlines()) + 2
    assert err.startswith(f"bertkit evaluate: error: {bad}:{line}: tag 'B-XYZ' is not one of the model's tags"), err
    assert len(err.splitlines()) == 1 and not ran


def test_tagger_predict_reads_a_text_file_a_chunk_at_a_time(toy, tmp_path, monkeypatch):
    """As the table: a text file of sentences (--format text) is counted first, then read as it is tagged."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    text = tmp_path / "s.txt"
    text.write_text("".join(t + "\n" for t in _texts(ROWS, 0)), encoding="utf-8")
    out, calls, readers = tmp_path / "t.jsonl", [], []
    _spy_lines_read(monkeypatch, tag, "predict_word_logits", out, calls, readers,
                    count=lambda feats, words, *_: len(words))
    assert main(["predict", "--model", str(toy / "tag"), "--data", str(text), "--output", str(out),
                 "--format", "text", "--batch-size", "8"]) == 0
    assert calls == [(64, 64), (64, 128), (64, 192), (64, 256), (44, 300)] and readers == [ROWS, ROWS]
    got = _read(out)
    assert [(r["line"], r["tokens"]) for r in got] == [(n, t.split()) for n, t in enumerate(_texts(ROWS, 0), 1)]


def test_tagger_predict_reads_a_conll_file_a_chunk_at_a_time(toy, tmp_path, monkeypatch):
    """A CoNLL file too: counted first, then read as it is tagged, a sentence's lines up to the blank line that
    ends it (the last one's, the end of the file)."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    out, calls, readers = tmp_path / "t.jsonl", [], []
    _spy_lines_read(monkeypatch, tag, "predict_word_logits", out, calls, readers,
                    count=lambda feats, words, *_: len(words))
    assert main(["predict", "--model", str(toy / "tag"), "--data", str(toy / "rows.conll"), "--output", str(out),
                 "--batch-size", "8"]) == 0
    lines = [len(t.split()) + 1 for t in _texts(ROWS, 0)]   # a sentence's tokens and the blank line after it
    total = sum(lines) - 1                                  # none after the last
    assert calls == [(64, sum(lines[:64])), (64, sum(lines[:128])), (64, sum(lines[:192])), (64, sum(lines[:256])),
                     (44, total)] and readers == [total, total]
    want = [(s.line, s.tokens) for s in read_conll(toy / "rows.conll")]
    assert [(r["line"], r["tokens"]) for r in _read(out)] == want


def test_predict_of_a_file_without_rows_is_one_line_and_no_output(toy, tmp_path, capsys):
    """A table of a header alone, or a text file of blank lines: counted on the first reading, refused before any
    model work, no output file."""
    (tmp_path / "empty.tsv").write_text("text\tlabel\n", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    for model, data, extra, what in (("cls", "empty.tsv", ["--text-column", "text"], "rows"),
                                     ("tag", "blank.txt", ["--format", "text"], "sentences")):
        capsys.readouterr()
        assert main(["predict", "--model", str(toy / model), "--data", str(tmp_path / data), "--output",
                     str(tmp_path / "p.jsonl"), *extra]) == 2
        assert capsys.readouterr().err.strip().endswith(f"{tmp_path / data}: no {what} to predict")
        assert not (tmp_path / "p.jsonl").exists()


def test_chunks_of_a_file_that_changed_between_its_count_and_its_reading():
    """A streamed input shorter or longer than counted is an error naming the file, not a silent misalignment."""
    assert [some for some, _ in classify.chunks_of(iter(range(5)), 5, 2, False)] == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match=r"^d\.tsv: 5 rows were counted, 3 read; did the file change while it was "
                                         r"read\?$"):
        list(classify.chunks_of(iter(range(3)), 5, 2, False, "d.tsv"))
    with pytest.raises(ValueError, match=r"^d\.tsv: more than the 5 rows counted; did the file change"):
        list(classify.chunks_of(iter(range(6)), 5, 2, False, "d.tsv"))


def test_predict_s_texts_and_second_texts_must_pair_up(toy):
    """Lists of other lengths given to the Python API are said so, not cut to the shorter (nor taken for a file
    that changed)."""
    model = BertForSequenceClassification.from_pretrained(toy / "cls")
    tok = AutoTokenizer.from_pretrained(toy / "cls")
    with pytest.raises(ValueError, match=r"^3 texts but 2 second texts$"):
        classify.predict(model, tok, ["a", "b", "c"], ["x", "y"])
    with pytest.raises(ValueError, match=r"^2 texts but 1 lines$"):
        list(classify.iter_example_logits(model, tok, ["a", "b"], lines=[4]))


def test_predict_output_of_a_small_input_is_byte_for_byte_todays(toy, tmp_path):
    """An input of one chunk (the default chunk is 4096 rows) gives the bytes the unchunked predict wrote."""
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(toy / "cls"), "--data", str(toy / "rows.tsv"), "--output", str(out),
                 "--text-column", "text"]) == 0
    assert out.read_text(encoding="utf-8") == "".join(
        line + "\n" for line in _cls_lines(toy, _texts(ROWS, 0), range(2, ROWS + 2)))


def _tag_lines(toy, sentences) -> list[dict]:
    """Today's tagger output: every sentence's windows in one loop."""
    model = BertForTokenClassification.from_pretrained(toy / "tag")
    tok = AutoTokenizer.from_pretrained(toy / "tag")
    feats = encode_sentences(tok, [s.tokens for s in sentences], None, 64, 32)
    out = []
    for s, a in zip(sentences, predict_word_logits(model, feats, [len(s.tokens) for s in sentences], 8,
                                                   tok.pad_token_id)):
        p = torch.softmax(torch.from_numpy(a), -1)
        out.append({"line": s.line, "tokens": s.tokens, "tags": [TAGS[k] for k in p.argmax(-1)],
                    "scores": [round(float(q), 6) for q in p.max(-1).values]})
    return out


def test_tagger_predict_writes_each_chunk_before_the_next_is_read(toy, tmp_path, monkeypatch):
    """As the classifier's; and each distinct word of the file is tokenized once, not once per chunk."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    out, calls, tokenized = tmp_path / "t.jsonl", [], []
    _spy(monkeypatch, tag, "predict_word_logits", out, calls, count=lambda feats, words, *_: len(words))
    pieces = tag.word_pieces
    monkeypatch.setattr(tag, "word_pieces", lambda tok, words: tokenized.extend(set(words)) or pieces(tok, words))
    assert main(["predict", "--model", str(toy / "tag"), "--data", str(toy / "rows.conll"), "--output", str(out),
                 "--batch-size", "8"]) == 0
    assert calls == [(64, 0), (64, 64), (64, 128), (64, 192), (44, 256)]   # sentences per call, lines on disk
    assert sorted(tokenized) == sorted({w for t in _texts(ROWS, 0) for w in t.split()})
    got, want = _read(out), _tag_lines(toy, read_conll(toy / "rows.conll"))
    assert [(r["line"], r["tokens"], r["tags"]) for r in got] == [(r["line"], r["tokens"], r["tags"]) for r in want]
    assert max(abs(a - b) for x, y in zip(got, want) for a, b in zip(x["scores"], y["scores"])) <= 2e-6


def test_evaluate_predicts_a_chunk_at_a_time_with_the_whole_input_s_metrics(toy, tmp_path, monkeypatch):
    """evaluate holds one chunk's features (and the logits, a few numbers a row), not the file's; its
    metrics are those of the whole input predicted at once."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    calls, tag_calls = [], []
    _spy(monkeypatch, classify, "predict_logits", tmp_path / "none", calls)
    _spy(monkeypatch, tag, "predict_word_logits", tmp_path / "none", tag_calls, count=lambda f, words, *_: len(words))
    assert main(["evaluate", "--model", str(toy / "cls"), "--data", str(toy / "rows.tsv"), "--output",
                 str(tmp_path / "e.json"), "--text-column", "text", "--batch-size", "8"]) == 0
    assert main(["evaluate", "--model", str(toy / "tag"), "--data", str(toy / "rows.conll"), "--output",
                 str(tmp_path / "te.json"), "--batch-size", "8"]) == 0
    assert [n for n, _ in calls] == [n for n, _ in tag_calls] == [64, 64, 64, 64, 44]
    monkeypatch.undo()

    model = BertForSequenceClassification.from_pretrained(toy / "cls")
    tok = AutoTokenizer.from_pretrained(toy / "cls")
    rows = [Example(t, None, label, n) for n, (t, label) in
            enumerate((line.split("\t") for line in (toy / "rows.tsv").read_text().splitlines()[1:]), 2)]
    logits, gold = labelled_logits(model, encode_examples(tok, rows, LabelInfo(False, ("neg", "pos")), 64), 8)
    got = json.loads((tmp_path / "e.json").read_text())
    assert {k: got[k] for k in ("accuracy", "f1", "mcc", "n")} == \
        {k: v for k, v in classification_metrics(logits, gold, 2).items() if k != "loss"}
    assert got["loss"] == pytest.approx(classification_metrics(logits, gold, 2)["loss"], abs=1e-6)

    tagger = BertForTokenClassification.from_pretrained(toy / "tag")
    sentences = read_conll(toy / "rows.conll")
    want = evaluate_tagging(tagger, encode_sentences(tok, sentences, TAGS, 64, 32), sentences, 8)
    got = json.loads((tmp_path / "te.json").read_text())
    assert {k: got[k] for k in want} == json.loads(json.dumps(want))


@pytest.mark.parametrize("before", [None, "an earlier output\n"])
def test_ctrl_c_midway_leaves_no_partial_output(toy, tmp_path, monkeypatch, capsys, before):
    """Ctrl-C in the third chunk, two chunks' lines already written: one line, status 130, and the output
    absent (or the earlier file as it was), no temporary file left."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    out = tmp_path / "p.jsonl"
    if before is not None:
        out.write_text(before, encoding="utf-8")
    real, seen = classify.predict_logits, []

    def interrupted(*args, **kwargs):
        seen.append(_lines_on_disk(out))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(classify, "predict_logits", interrupted)
    capsys.readouterr()
    assert main(["predict", "--model", str(toy / "cls"), "--data", str(toy / "rows.tsv"), "--output", str(out),
                 "--text-column", "text"]) == 130
    assert seen == [0, 64, 128]
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("bertkit predict: interrupted"), err
    assert [p.name for p in tmp_path.iterdir()] == ([] if before is None else ["p.jsonl"])
    assert before is None or out.read_text(encoding="utf-8") == before


def test_one_progress_bar_counts_the_rows_of_every_chunk(toy, tmp_path, monkeypatch, capsys):
    """Without a terminal: lines of one count over the file's rows (not a count per chunk, nor of the windows
    that --stride makes), rising to 300/300 and closed once."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    monkeypatch.setattr(classify, "PROGRESS_EVERY_S", 0.0)
    capsys.readouterr()
    assert main(["predict", "--model", str(toy / "cls"), "--data", str(toy / "rows.tsv"), "--output",
                 str(tmp_path / "p.jsonl"), "--text-column", "text", "--batch-size", "16", "--max-seq-length", "8",
                 "--stride", "2"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("predicting: ")]
    counts = [line.split()[1] for line in lines]
    assert all(c.endswith(f"/{ROWS}") for c in counts), counts
    done = [int(c.split("/")[0]) for c in counts]
    assert done == sorted(done) and len(done) > 5 and done.count(ROWS) == 1 and done[-1] == ROWS, done


def test_a_pair_too_long_for_windows_in_a_late_chunk_names_its_file_and_line(toy, tmp_path, monkeypatch, capsys):
    """With --stride, a first text that leaves the second no room: the error names the file and the row's line
    (line 250 of the file, in the fourth chunk), and no output is left."""
    monkeypatch.setattr(classify, "CHUNK_ROWS", CHUNK, raising=False)
    texts = [" ".join(t.split()[:3]) for t in _texts(ROWS, 0)]
    texts[248] = " ".join(["movie"] * 40)   # file line 250: the header is line 1
    data = tmp_path / "pairs.tsv"
    data.write_text("a\tb\n" + "".join(f"{t}\tgood plot\n" for t in texts), encoding="utf-8")
    out = tmp_path / "p.jsonl"
    capsys.readouterr()
    assert main(["predict", "--model", str(toy / "cls"), "--data", str(data), "--output", str(out),
                 "--text-column", "a", "--text-pair-column", "b", "--max-seq-length", "24", "--stride", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bertkit predict: error: {data}:250: the first text has "), err
    assert len(err.splitlines()) == 1 and not out.exists() and [p.name for p in tmp_path.iterdir()] == ["pairs.tsv"]


def test_predict_warns_of_a_tokenizer_longer_than_the_embeddings(toy, tmp_path):
    """A model directory whose tokenizer got tokens its embeddings lack (added, not resized): `predict` says so
    at load, naming the directory (a GPU would otherwise stop at the first text holding one, saying nothing)."""
    import shutil
    shutil.copytree(toy / "cls", tmp_path / "cls")
    tok = AutoTokenizer.from_pretrained(tmp_path / "cls")
    tok.add_tokens(["[ent]"])
    tok.save_pretrained(tmp_path / "cls")
    with pytest.warns(UserWarning, match=rf"^{tmp_path / 'cls'}: the tokenizer has {len(tok)} tokens but the "
                                         rf"model's embeddings hold {len(tok) - 1} \(config vocab_size\)"):
        assert main(["predict", "--model", str(tmp_path / "cls"), "--data", str(toy / "rows.tsv"), "--output",
                     str(tmp_path / "p.jsonl"), "--text-column", "text"]) == 0
