"""Token-classification fine-tuning end to end through the CLI, on a toy NER task and a tiny random BERT."""
import json
import random

import numpy as np
import pytest
import torch

from bertkit import AutoModelForTokenClassification, AutoTokenizer
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.data.readers import TaggedSentence
from bertkit.modeling import BertModel
from bertkit.modeling.heads import BertForTokenClassification
from bertkit.tasks.tag import (TagBatches, TagFeature, TagObjective, collate_tags, encode_sentences, predict_tags,
                               predict_word_logits, strict_scheme_of, tag_set, tagging_scores, windows, word_pieces)
from bertkit.tokenizer import BertTokenizer
from tests.tasks.test_qa import SENTENCE, toy_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CITIES = [["Paris"], ["London"], ["Berlin"], ["Madrid"], ["Rome"], ["New", "York"], ["San", "Francisco"],
          ["Los", "Angeles"], ["Buenos", "Aires"]]
PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank"]
FILLER = "yesterday we went to the market and then flew over saw it was very nice with my friend".split()


def toy_sentences(n, seed):
    """Filler words with a city (B-LOC, or B-LOC I-LOC for two-word cities) and a person (B-PER) inserted."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, rng.randint(3, 6))]
        words.insert(rng.randrange(len(words) + 1), (rng.choice(PEOPLE), "B-PER"))
        city = rng.choice(CITIES)
        pieces = [(w, "B-LOC" if i == 0 else "I-LOC") for i, w in enumerate(city)]
        pos = rng.randrange(len(words) + 1)
        words[pos:pos] = pieces  # whole: every entity well formed (IOB2)
        out.append(words)
    return out


def write_conll(path, sentences):
    path.write_text("-DOCSTART-\tO\n\n" + "\n".join("".join(f"{w}\tX\t{t}\n" for w, t in s) for s in sentences),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("tagtoy")
    train, dev = toy_sentences(120, 0), toy_sentences(40, 1)
    texts = [" ".join(w for w, _ in s) for s in train + dev]
    tok = BertTokenizer.train_from_iterator(texts, vocab_size=120)
    tok.save_pretrained(d / "encoder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(d / "encoder")
    return {"dir": d, "encoder": d / "encoder", "rows": (train, dev),
            "train": write_conll(d / "train.conll", train), "dev": write_conll(d / "dev.conll", dev)}


def finetune(toy, out, *extra, train=None, dev=None):
    return main(["finetune", "tag", "--model", str(toy["encoder"]), "--train", str(train or toy["train"]),
                 "--dev", str(dev or toy["dev"]), "--output", str(out), "--batch-size", "16", "--lr", "1e-2",
                 "--max-seq-length", "32", "--stride", "8", *extra])


@pytest.fixture(scope="module")
def trained(toy):
    """The run the first tests share."""
    out = toy["dir"] / "run"
    assert finetune(toy, out, "--epochs", "8", "--seed", "1") == 0
    return out


def test_finetune_tag_learns_the_toy_task(trained, toy):
    res = json.loads((trained / "eval_results.json").read_text())
    assert res["metric"] == "f1" and res["task"] == "tagging"
    assert res["labels"] == ["B-LOC", "B-PER", "I-LOC", "O"]
    assert res["max_steps"] == 64 and res["num_train"] == 120 and res["num_dev"] == 40
    best = res["best"]
    assert best["f1"] >= 0.8, best
    assert set(best) >= {"f1", "precision", "recall", "accuracy", "per_type", "n"}
    assert set(best["per_type"]) == {"LOC", "PER"} and best["per_type"]["PER"]["support"] == 40
    assert best["f1"] >= res["final"]["f1"] and res["best_step"] % 8 == 0
    model = AutoModelForTokenClassification.from_pretrained(trained / "best")
    assert model.load_report.clean
    assert model.config.id2label == {0: "B-LOC", 1: "B-PER", 2: "I-LOC", 3: "O"}
    assert model.config.label2id["O"] == 3
    # the window settings and CoNLL columns are saved with the model, for evaluate / predict
    assert model.config.extra["task_specific_params"] == {"token-classification": {
        "max_seq_length": 32, "stride": 8, "token_column": 0, "tag_column": -1}}
    tok = AutoTokenizer.from_pretrained(trained / "best")
    (tags,) = predict_tags(model, tok, [["Alice", "flew", "to", "New", "York"]])
    assert [t for t, _ in tags] == ["B-PER", "O", "O", "B-LOC", "I-LOC"]


def test_evaluate_and_predict_cli_dispatch_on_a_tagger(trained, toy, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(trained / "best"), "--data", str(toy["dev"]), "--stride", "none"]) == 2
    assert "stride 'none' (truncation) is for classifiers" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(trained / "best"), "--data", str(toy["dev"]), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    best = json.loads((trained / "eval_results.json").read_text())["best"]
    assert metrics["f1"] == pytest.approx(best["f1"]) and metrics["n"] == 40
    assert set(metrics["per_type"]) == {"PER", "LOC"}
    # seqeval's strict mode beside the default: the tags are IOB2, and strict counts no more entities right
    assert metrics["scheme"] == "IOB2" and 0 < metrics["strict_f1"] <= metrics["f1"]
    assert metrics["strict_precision"] >= 0 and metrics["strict_recall"] <= metrics["recall"]
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"  # the per-type scores, drawn
    assert (trained / "curves.png").read_bytes()[:4] == b"\x89PNG"
    data = tmp_path / "words.txt"
    data.write_text("Bob\nsaw\nRome\n\nEmma\nwent\nto\nLos\nAngeles\n", encoding="utf-8")
    pred = tmp_path / "pred.jsonl"
    assert main(["predict", "--model", str(trained / "best"), "--data", str(data), "--output", str(pred)]) == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [["Bob", "saw", "Rome"], ["Emma", "went", "to", "Los", "Angeles"]]
    assert [r["line"] for r in rows] == [1, 5]  # where each sentence starts in the file
    assert [r["tags"] for r in rows] == [["B-PER", "O", "B-LOC"], ["B-PER", "O", "O", "B-LOC", "I-LOC"]]
    assert all(len(r["scores"]) == len(r["tokens"]) for r in rows)
    # sentences one a line are not CoNLL: refused, not tagged as one sentence of their first words
    (tmp_path / "sentences.txt").write_text("Bob saw Rome\nEmma went to Los Angeles\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--model", str(trained / "best"), "--data", str(tmp_path / "sentences.txt"),
                 "--output", str(tmp_path / "bad.jsonl")]) == 2
    assert capsys.readouterr().err == (f"bertkit predict: error: {tmp_path / 'sentences.txt'}:2: 5 fields where "
                                       "line 1 has 3; expected a CoNLL file, one token a line (then any tags, the "
                                       "same columns on every line; a text file, one sentence a line, is read "
                                       "with --format text): 'Emma went to Los Angeles'\n")
    assert not (tmp_path / "bad.jsonl").exists()


def test_evaluate_and_predict_read_the_columns_the_model_was_fine_tuned_with(trained, toy, tmp_path):
    """A tagger fine-tuned on "tag<TAB>word" files reads such files in evaluate and predict without being told
    the columns again (here the saved settings say so); flags still override."""
    import shutil
    model = tmp_path / "best"
    shutil.copytree(trained / "best", model)
    config = json.loads((model / "config.json").read_text())
    config["task_specific_params"]["token-classification"].update(token_column=1, tag_column=0)
    (model / "config.json").write_text(json.dumps(config))
    _, dev = toy["rows"]
    swapped = tmp_path / "swapped.conll"
    swapped.write_text("\n".join("".join(f"{t}\t{w}\n" for w, t in s) for s in dev), encoding="utf-8")
    assert main(["evaluate", "--model", str(model), "--data", str(swapped), "--output", str(tmp_path / "a.json")]) == 0
    best = json.loads((trained / "eval_results.json").read_text())["best"]
    assert json.loads((tmp_path / "a.json").read_text())["f1"] == pytest.approx(best["f1"])
    assert main(["evaluate", "--model", str(model), "--data", str(toy["dev"]), "--output", str(tmp_path / "b.json"),
                 "--token-column", "0", "--tag-column", "-1"]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["f1"] == pytest.approx(best["f1"])
    assert main(["predict", "--model", str(model), "--data", str(swapped), "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [[w for w, _ in s] for s in dev]


def test_label_on_the_first_sub_token_only(toy):
    tok = AutoTokenizer.from_pretrained(toy["encoder"])
    words = ["Alice", "don't", "yesterdaymarket", "Paris"]
    sent = TaggedSentence(words, ["B-PER", "O", "B-LOC", "B-LOC"], 1)
    tags = ("B-LOC", "B-PER", "I-LOC", "O")
    (f,) = encode_sentences(tok, [sent], tags, max_seq_length=64)
    pieces = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    assert len(pieces[1]) > 1 and len(pieces[2]) > 1  # split words
    assert f.input_ids == [tok.cls_token_id] + [i for p in pieces for i in p] + [tok.sep_token_id]
    expected = [-100]
    for p, t in zip(pieces, [1, 3, 0, 0]):
        expected += [t] + [-100] * (len(p) - 1)
    assert f.labels == expected + [-100]
    starts = [1 + sum(map(len, pieces[:k])) for k in range(4)]
    assert [i for i, w in enumerate(f.word_ids) if w is not None] == starts
    assert [f.word_ids[i] for i in starts] == [0, 1, 2, 3]
    # the model's loss over these labels equals the objective's sum / count
    model = AutoModelForTokenClassification.from_pretrained(toy["encoder"], num_labels=4).eval()
    batch = collate_tags([f, encode_sentences(tok, [TaggedSentence(["Bob"], ["B-PER"])], tags)[0]],
                         tok.pad_token_id)
    obj = TagObjective(model)
    assert obj.counts(batch) == {"tag": 5}
    sums, stats = obj(batch)
    assert sums["tag"].item() / 5 == pytest.approx(model(**batch).loss.item(), rel=1e-5)


TAGS = ("B-LOC", "I-LOC", "O")


def _tag_model(tok, positions=16):
    torch.manual_seed(0)
    return BertForTokenClassification(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=20,
                                                 max_position_embeddings=positions,
                                                 id2label=dict(enumerate(TAGS)))).eval()


def test_tag_set_needs_two_distinct_tags():
    with pytest.raises(ValueError, match=r"^tagging needs at least two distinct tags in the training data, "
                                         r"found \['O'\]$"):
        tag_set([TaggedSentence(["red", "king"], ["O", "O"])])


def test_a_word_that_tokenizes_to_nothing_is_one_unk_and_keeps_its_prediction():
    tok = toy_tokenizer()
    assert word_pieces(tok, ["red", "\x07"]) == {"red": [tok.vocab["red"]], "\x07": [tok.unk_token_id]}
    (f,) = encode_sentences(tok, [TaggedSentence(["red", "\x07", "king"], ["B-LOC", "O", "O"], 7)], TAGS, 16, 4)
    assert f.input_ids == [tok.cls_token_id, tok.vocab["red"], tok.unk_token_id, tok.vocab["king"], tok.sep_token_id]
    assert f.labels == [-100, 0, 2, 2, -100] and f.word_ids == [None, 0, 1, 2, None] and f.line == 7


def test_windows_with_stride_predict_every_word_exactly_once(toy):
    assert windows([1] * 10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert windows([1] * 5, 4, 0) == [(0, 4), (4, 5)]
    assert windows([3, 3, 3], 4, 3) == [(0, 1), (1, 2), (2, 3)]  # a window always moves on
    tok = AutoTokenizer.from_pretrained(toy["encoder"])
    rng = random.Random(3)
    sentences = [[rng.choice(FILLER + PEOPLE + ["yesterdaymarket"]) for _ in range(n)] for n in (1, 7, 30, 55)]
    feats = encode_sentences(tok, sentences, None, max_seq_length=12, stride=4)
    assert all(len(f.input_ids) <= 12 and f.labels is None for f in feats)
    for n, words in enumerate(sentences):
        mine = [f for f in feats if f.sentence == n]
        predicted = sorted(w for f in mine for w in f.word_ids if w is not None)
        assert predicted == list(range(len(words)))  # each word from exactly one window
        if len(words) > 10:
            assert len(mine) > 2
    model = AutoModelForTokenClassification.from_pretrained(toy["encoder"], num_labels=3)
    logits = predict_word_logits(model, feats, [len(s) for s in sentences], batch_size=3)
    assert [a.shape for a in logits] == [(len(s), 3) for s in sentences]
    out = predict_tags(model, tok, sentences, max_seq_length=12, stride=4)
    assert [len(p) for p in out] == [len(s) for s in sentences]


def _owned(feats):
    """{word: window} from the word_ids of the windows of one sentence."""
    return {w: k for k, f in enumerate(feats) for w in f.word_ids if w is not None}


def test_each_word_is_predicted_by_the_window_where_it_has_the_most_context():
    """Six one-piece words, windows of 4 sub-tokens sharing 3: (0-4), (1-5), (2-6). Word 2 has context
    min(2, 1) = 1 in windows 0 and 1 (the earlier wins), word 3 has 1 in windows 1 and 2 (window 1), word 4 has 1
    only in window 2."""
    tok = toy_tokenizer()
    words = "the old king of the north".split()
    feats = encode_sentences(tok, [words], None, max_seq_length=6, stride=3)
    assert [f.input_ids[1:-1] for f in feats] == [tok.convert_tokens_to_ids(words[s:s + 4]) for s in range(3)]
    assert _owned(feats) == {0: 0, 1: 0, 2: 0, 3: 1, 4: 2, 5: 2}


def _reference_owner(lengths, spans, w):
    """The module's rule restated: the window with the largest min(sub-tokens before the word, sub-tokens after
    it) inside the window, the earlier on ties."""
    best, owner = None, None
    for k, (s, e) in enumerate(spans):
        if s <= w < e:
            score = min(sum(lengths[s:w]), sum(lengths[w + 1:e]))
            if best is None or score > best:
                best, owner = score, k
    return owner


def test_owners_of_words_of_several_sub_tokens_follow_the_max_context_rule():
    tok = toy_tokenizer()
    rng = np.random.default_rng(0)
    pieces = {"red": 1, "reds": 2, "redser": 3}
    checked = 0
    for _ in range(40):
        words = list(rng.choice(list(pieces), size=int(rng.integers(5, 25))))
        max_len, stride = int(rng.integers(7, 12)), int(rng.integers(0, 5))
        feats = encode_sentences(tok, [words], None, max_seq_length=max_len, stride=stride)
        lengths = [pieces[w] for w in words]
        spans = windows(lengths, max_len - 2, stride)
        assert len(feats) == len(spans)
        assert _owned(feats) == {w: _reference_owner(lengths, spans, w) for w in range(len(words))}
        checked += len(spans) > 2
    assert checked > 20


def test_encode_sentences_refuses_a_stride_of_the_whole_window_and_a_window_without_room():
    tok = toy_tokenizer()
    with pytest.raises(ValueError, match=r"^stride must be in \[0, max_seq_length - 2\) = \[0, 4\), got 4$"):
        encode_sentences(tok, [["red"]], None, max_seq_length=6, stride=4)
    with pytest.raises(ValueError, match="^max_seq_length must be at least 3, got 2$"):
        encode_sentences(tok, [["red"]], None, max_seq_length=2, stride=0)


def test_a_word_longer_than_the_window_keeps_its_first_pieces():
    tok = toy_tokenizer()   # "redser" is red ##s ##er: three pieces, and a window holds two
    feats = encode_sentences(tok, [TaggedSentence(["redser", "king"], ["B-LOC", "O"])], TAGS, max_seq_length=4,
                             stride=0)
    assert [f.input_ids for f in feats] == [[tok.cls_token_id, *tok.convert_tokens_to_ids(["red", "##s"]),
                                             tok.sep_token_id],
                                            [tok.cls_token_id, tok.vocab["king"], tok.sep_token_id]]
    assert [f.labels for f in feats] == [[-100, 0, -100, -100], [-100, 2, -100]]
    assert _owned(feats) == {0: 0, 1: 1}


def test_collate_tags_drops_labels_unless_every_window_has_them():
    tok = toy_tokenizer()
    labelled = encode_sentences(tok, [TaggedSentence(["red", "king"], ["B-LOC", "O"])], TAGS, 16, 4)
    bare = encode_sentences(tok, [["red", "king"]], None, 16, 4)
    assert set(collate_tags(labelled + bare)) == {"input_ids", "token_type_ids", "attention_mask"}


def test_predict_word_logits_refuses_windows_that_leave_a_word_unpredicted():
    tok = toy_tokenizer()
    (f,) = encode_sentences(tok, [["red", "king"]], None, 16, 4)
    partial = TagFeature(f.input_ids, None, [None, 0, None, None], 0)   # word 1 predicted by no window
    with pytest.raises(RuntimeError, match="^sentence 0: some words were not predicted by any window$"):
        predict_word_logits(_tag_model(tok), [partial], [2])


def test_predict_tags_cuts_window_and_stride_to_the_model():
    """A max_seq_length beyond the model's 16 positions is cut to 16, and a stride beyond the window to
    max_seq_length - 3: the tags equal those of the settings given within bounds."""
    tok = toy_tokenizer()
    model = _tag_model(tok, positions=16)
    sentences = [(SENTENCE + " reds redser").split(), ["red"]]
    assert predict_tags(model, tok, sentences) == predict_tags(model, tok, sentences, max_seq_length=16, stride=13)
    assert predict_tags(model, tok, sentences, max_seq_length=8, stride=32) == \
        predict_tags(model, tok, sentences, max_seq_length=8, stride=5)


def test_a_bad_conll_line_is_a_one_line_error_naming_file_and_line(toy, tmp_path, capsys):
    bad = tmp_path / "bad.conll"
    bad.write_text("Alice\tB-PER\nflew\tO\n\nBob\tB-PER\nnotag\nParis\tB-LOC\n", encoding="utf-8")
    assert finetune(toy, tmp_path / "out", train=bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:5:" in err and err.startswith("bertkit finetune tag: error:")


def test_a_dev_tag_unseen_in_training_is_an_error(toy, tmp_path, capsys):
    dev = tmp_path / "dev.conll"
    dev.write_text("Alice\tB-PER\n\nBob\tB-PER\nACME\tB-ORG\n", encoding="utf-8")
    assert finetune(toy, tmp_path / "out", dev=dev) == 2
    err = capsys.readouterr().err
    assert f"{dev}:4:" in err and "'B-ORG'" in err


def test_tag_batches_resume_exactly(toy):
    tok = AutoTokenizer.from_pretrained(toy["encoder"])
    train, _ = toy["rows"]
    sents = [TaggedSentence([w for w, _ in s], [t for _, t in s], i) for i, s in enumerate(train[:10])]
    feats = encode_sentences(tok, sents, tag_set(sents), 32, 8)
    src = TagBatches(feats, 4, pad_id=tok.pad_token_id, seed=2)
    it = iter(src)
    [next(it) for _ in range(4)]
    state = src.state_dict()
    rest = [next(it) for _ in range(3)]
    again = TagBatches(feats, 4, pad_id=tok.pad_token_id, seed=2)
    again.load_state_dict(state)
    it2 = iter(again)
    for a in rest:
        b = next(it2)
        assert set(a) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert (a["labels"][a["attention_mask"] == 0] == -100).all()


def test_seeds_report_mean_and_sd_of_the_numeric_metrics(toy, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert finetune(toy, out, "--max-steps", "8", "--eval-every", "4", "--seeds", "1,2") == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "eval_results.json").read_text())
    assert res["seeds"] == [1, 2] and res["task"] == "tagging" and res["metric"] == "f1"
    assert set(res["mean"]) == {"f1", "precision", "recall", "accuracy", "strict_f1", "strict_precision",
                                "strict_recall"}  # per_type (and the scheme's name) is not averaged
    f1s = [res["per_seed"][s]["f1"] for s in ("1", "2")]
    assert res["mean"]["f1"] == pytest.approx(sum(f1s) / 2)
    assert res["sd"]["f1"] == pytest.approx(abs(f1s[0] - f1s[1]) / 2 ** 0.5)
    for seed in (1, 2):
        assert (out / f"seed-{seed}" / "best" / "config.json").is_file()
    assert "f1: " in printed and " ± " in printed


def test_tags_without_entity_prefixes_pick_the_best_checkpoint_by_accuracy(toy, tmp_path, capsys):
    """Part-of-speech style tags (no B-/I-) make no entities: the best checkpoint is chosen by word accuracy."""
    train, dev = toy["rows"]
    pos = lambda rows: [[(w, "NOUN" if t != "O" else "OTHER") for w, t in s] for s in rows]  # noqa: E731
    out = tmp_path / "pos"
    assert finetune(toy, out, "--max-steps", "4", train=write_conll(tmp_path / "train.conll", pos(train)),
                    dev=write_conll(tmp_path / "dev.conll", pos(dev))) == 0
    assert "so the best checkpoint is chosen by word accuracy" in capsys.readouterr().out
    assert json.loads((out / "eval_results.json").read_text())["metric"] == "accuracy"


def test_a_transformers_tagger_with_the_two_default_labels_predicts_and_evaluates(toy, tmp_path):
    """transformers 5 leaves the default id2label out of config.json: the tags are its LABEL_0 and LABEL_1."""
    transformers = pytest.importorskip("transformers")
    model = tmp_path / "model"
    torch.manual_seed(0)
    transformers.AutoModelForTokenClassification.from_pretrained(toy["encoder"]).save_pretrained(model)
    AutoTokenizer.from_pretrained(toy["encoder"]).save_pretrained(model)
    assert "id2label" not in json.loads((model / "config.json").read_text())
    (tmp_path / "words.txt").write_text("Bob\nsaw\nRome\n", encoding="utf-8")
    assert main(["predict", "--model", str(model), "--data", str(tmp_path / "words.txt"),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    row = json.loads((tmp_path / "p.jsonl").read_text())
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(model).eval()
    enc = transformers.AutoTokenizer.from_pretrained(model)(["Bob", "saw", "Rome"], is_split_into_words=True,
                                                            return_tensors="pt")
    with torch.no_grad():
        best = theirs(**enc).logits[0].argmax(-1)
    firsts = [enc.word_ids().index(w) for w in range(3)]   # each word's first sub-token
    assert row["tags"] == [f"LABEL_{int(best[i])}" for i in firsts]
    (tmp_path / "lab.conll").write_text("Bob LABEL_1\nsaw LABEL_0\n", encoding="utf-8")
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "lab.conll"),
                 "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 1


def test_a_fine_tuned_tagger_keeps_the_order_of_its_tags(toy, tmp_path):
    """As a classifier: a tagger fine-tuned again on the same tags keeps its order, so its rows keep their
    meaning (sorted, the tags would trade rows)."""
    transformers = pytest.importorskip("transformers")
    tags = sorted({t for s in toy["rows"][0] for _, t in s}, reverse=True)  # its own order: not sorted
    assert len(tags) >= 3
    src, out = tmp_path / "src", tmp_path / "run"
    torch.manual_seed(0)
    transformers.AutoModelForTokenClassification.from_pretrained(
        toy["encoder"], num_labels=len(tags), id2label=dict(enumerate(tags)),
        label2id={t: i for i, t in enumerate(tags)}).save_pretrained(src)
    AutoTokenizer.from_pretrained(toy["encoder"]).save_pretrained(src)
    assert main(["finetune", "tag", "--model", str(src), "--train", str(toy["train"]), "--dev", str(toy["dev"]),
                 "--output", str(out), "--max-steps", "1", "--lr", "1e-12", "--batch-size", "4"]) == 0
    assert json.loads((out / "best" / "config.json").read_text())["id2label"] == {str(i): t for i, t in enumerate(tags)}
    words = [[w for w, _ in s] for s in toy["rows"][1][:5]]
    before = predict_tags(AutoModelForTokenClassification.from_pretrained(src), AutoTokenizer.from_pretrained(src),
                          words)
    after = predict_tags(AutoModelForTokenClassification.from_pretrained(out / "best"),
                         AutoTokenizer.from_pretrained(out / "best"), words)
    assert [[t for t, _ in s] for s in after] == [[t for t, _ in s] for s in before]


def test_predict_and_evaluate_read_the_conll_file_alike_and_refuse_a_table_of_sentences(trained, toy, tmp_path,
                                                                                      capsys):
    """predict tags each sentence of the CoNLL file evaluate scores (tags column ignored), read the same from
    CRLF and lone-CR files; a GLUE style TSV (a table of sentences) is the same one-line error for both, not one
    "sentence" whose words are its rows."""
    _, dev = toy["rows"]
    lf = "\n".join("".join(f"{w}\t{t}\n" for w, t in s) for s in dev[:6])
    rows = {}
    for name, text in (("lf", lf), ("crlf", lf.replace("\n", "\r\n")), ("cr", lf.replace("\n", "\r"))):
        (tmp_path / f"{name}.conll").write_bytes(text.encode("utf-8"))
        assert main(["predict", "--model", str(trained / "best"), "--data", str(tmp_path / f"{name}.conll"),
                     "--output", str(tmp_path / f"{name}.jsonl")]) == 0
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert main(["evaluate", "--model", str(trained / "best"), "--data", str(tmp_path / f"{name}.conll"),
                     "--output", str(tmp_path / f"{name}.json")]) == 0
        assert json.loads((tmp_path / f"{name}.json").read_text())["n"] == 6
    assert [r["tokens"] for r in rows["lf"]] == [[w for w, _ in s] for s in dev[:6]]
    assert rows["crlf"] == rows["lf"] and rows["cr"] == rows["lf"]
    table = tmp_path / "table.tsv"
    table.write_text("sentence\tlabel\nBob saw Rome\t1\nEmma went to Los Angeles\t0\n", encoding="utf-8")
    message = (f"{table}:2: most tokens (column 0) of this sentence hold spaces, like 'Bob saw Rome': a table of "
               "sentences? Expected a CoNLL file, one token a line (then its tags, tab-separated), blank lines between "
               "sentences\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(trained / "best"), "--data", str(table),
                 "--output", str(tmp_path / "t.jsonl")]) == 2
    assert capsys.readouterr().err == "bertkit predict: error: " + message
    assert not (tmp_path / "t.jsonl").exists()
    assert main(["evaluate", "--model", str(trained / "best"), "--data", str(table),
                 "--output", str(tmp_path / "t.json")]) == 2
    assert capsys.readouterr().err == "bertkit evaluate: error: " + message


def test_wnut17_test_file_is_read_for_prediction_as_evaluate_reads_it():
    """The WNUT-17 test file (token<TAB>tag, blank lines between sentences): 1,287 sentences, the same tokens."""
    from pathlib import Path

    from bertkit.data.readers import read_conll
    from bertkit.tasks.tag import read_tokens
    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ner" / "wnut17" / "emerging.test.annotated"
    if not path.exists():
        pytest.skip(f"{path} not present")
    sentences = read_tokens(path)
    assert len(sentences) == 1287 and sum(len(words) for _, words in sentences) == 23394
    assert sentences == [(s.line, s.tokens) for s in read_conll(path)]


def test_strict_scores_only_where_every_gold_entity_is_well_formed():
    names = ["B-LOC", "I-LOC", "O"]
    assert strict_scheme_of(names, [["B-LOC", "I-LOC", "O"], ["O", "B-LOC"]]) == "IOB2"
    # IOB1 (an entity may start with I-): strict IOB2 would drop it from gold and predictions alike
    assert strict_scheme_of(names, [["B-LOC", "I-LOC", "O"], ["O", "I-LOC", "I-LOC"]]) is None
    assert strict_scheme_of(["B-LOC", "E-LOC", "S-LOC", "O"], [["B-LOC", "E-LOC", "S-LOC"]]) == "IOBES"
    assert strict_scheme_of(["B-LOC", "E-LOC", "S-LOC", "O"], [["B-LOC", "S-LOC"]]) is None  # never closed
    assert strict_scheme_of(["NN", "VB"], [["NN", "VB"]]) is None


def test_tagging_scores_word_accuracy_compares_predictions_with_gold():
    pred = [["B-LOC", "O", "O"], ["O"]]
    gold = [["B-LOC", "I-LOC", "O"], ["B-LOC"]]
    out = tagging_scores(pred, gold, list(TAGS))
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert out["f1"] == 0.0 and out["n"] == 2


def test_predict_tags_a_plain_text_file_one_sentence_a_line(trained, tmp_path, capsys):
    """--format text: each non-blank line a sentence, split into words at spaces and punctuation, tagged as the
    same words would be from a CoNLL file; each word's span in its line given."""
    text = tmp_path / "s.txt"
    text.write_text("Alice flew to New York.\n\nBob saw Rome\n", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(trained / "best"), "--data", str(text), "--output", str(out),
                 "--format", "text"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 3]
    assert rows[0]["tokens"] == ["Alice", "flew", "to", "New", "York", "."]
    assert rows[0]["spans"] == [[0, 5], [6, 10], [11, 13], [14, 17], [18, 22], [22, 23]]
    model = AutoModelForTokenClassification.from_pretrained(trained / "best")
    tok = AutoTokenizer.from_pretrained(trained / "best")
    expected = predict_tags(model, tok, [r["tokens"] for r in rows])
    assert [r["tags"] for r in rows] == [[t for t, _ in e] for e in expected]
    assert rows[0]["tags"][:5] == ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    capsys.readouterr()
    assert main(["predict", "--model", str(trained / "best"), "--data", str(text), "--output", str(out),
                 "--format", "tsv"]) == 2
    assert "--format tsv: a tagger reads a CoNLL file, or a text file with --format text" in capsys.readouterr().err


def test_format_conll_reads_a_one_sentence_file_that_might_be_text(trained, tmp_path, capsys):
    """A one-sentence CoNLL file with spaces between its columns, named x.txt, might be a text file of two-word
    sentences: refused without --format (the message names --format conll), and with --format conll tagged and
    scored as the same file named x.conll is, by predict and evaluate alike."""
    content = "Bob B-PER\nsaw O\nRome B-LOC\n"
    txt, conll = tmp_path / "x.txt", tmp_path / "x.conll"
    txt.write_text(content, encoding="utf-8")
    conll.write_text(content, encoding="utf-8")
    model = str(trained / "best")
    message = (f"{txt}:1: 2 space-separated words on every line and no blank line between sentences: a text file, "
               "one sentence a line? predict reads one with --format text; a CoNLL file (one token a line, then its "
               "tags) is read with --format conll, or needs tabs between its columns, blank lines between its "
               "sentences or a .conll name: 'Bob B-PER'\n")
    capsys.readouterr()
    assert main(["predict", "--model", model, "--data", str(txt), "--output", str(tmp_path / "bad.jsonl")]) == 2
    assert capsys.readouterr().err == "bertkit predict: error: " + message
    assert main(["evaluate", "--model", model, "--data", str(txt), "--output", str(tmp_path / "bad.json")]) == 2
    assert capsys.readouterr().err == "bertkit evaluate: error: " + message
    assert not (tmp_path / "bad.jsonl").exists() and not (tmp_path / "bad.json").exists()
    rows = {}
    for name, data, extra in (("txt", txt, ["--format", "conll"]), ("conll", conll, [])):
        assert main(["predict", "--model", model, "--data", str(data), "--output", str(tmp_path / f"{name}.jsonl"),
                     *extra]) == 0
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert main(["evaluate", "--model", model, "--data", str(data), "--output", str(tmp_path / f"{name}.json"),
                     *extra]) == 0
    assert rows["txt"] == rows["conll"]
    assert [(r["line"], r["tokens"]) for r in rows["txt"]] == [(1, ["Bob", "saw", "Rome"])]
    assert rows["txt"][0]["tags"] == ["B-PER", "O", "B-LOC"]   # what the toy model learnt
    scored = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("txt", "conll")}
    assert (scored["txt"].pop("data"), scored["conll"].pop("data")) == (str(txt), str(conll))
    assert scored["txt"] == scored["conll"] and scored["txt"]["n"] == 1 and scored["txt"]["f1"] == 1.0
    # a tagger evaluates a CoNLL file only: a table format is refused by name, not ignored
    capsys.readouterr()
    assert main(["evaluate", "--model", model, "--data", str(conll), "--output", str(tmp_path / "t.json"),
                 "--format", "tsv"]) == 2
    assert capsys.readouterr().err == ("bertkit evaluate: error: --format tsv: a tagger is evaluated on a CoNLL "
                                       "file (--format conll)\n")
