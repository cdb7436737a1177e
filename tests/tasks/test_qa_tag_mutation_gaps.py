"""bertkit.tasks.qa and bertkit.tasks.tag: behaviour the mutation audit found unpinned by tests/tasks/test_qa.py and
tests/tasks/test_tag.py (each test here fails on a small plausible change to the module that the older tests let
through). Toy vocabulary, tiny random models, hand-made logits."""
import numpy as np
import pytest
import torch

import bertkit.tasks.qa as qa_mod
from bertkit.config import BertConfig
from bertkit.data.readers import SquadExample, TaggedSentence
from bertkit.modeling.heads import BertForQuestionAnswering, BertForTokenClassification
from bertkit.tasks.qa import QAObjective, collate_qa, encode_qa, nbest_json, null_odds, postprocess, predict_answers
from bertkit.tasks.tag import (TagFeature, collate_tags, encode_sentences, predict_tags, predict_word_logits, tag_set,
                               tagging_scores, windows, word_pieces)
from tests.tasks.test_qa import _logits, _one_window, ex, toy_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCE = "the old king of the north was red and the new city is green"


def _qa_model(tok, positions=64):
    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=20,
                                               max_position_embeddings=positions)).eval()


# ------------------------------------------------------------------------------------------- QA: encoding
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


def test_collate_qa_drops_positions_unless_every_window_has_them():
    tok = toy_tokenizer()
    labelled = encode_qa(tok, [ex("a", "who ?", SENTENCE, "king")], 64, 8)
    bare = encode_qa(tok, [ex("b", "who ?", SENTENCE, "king")], 64, 8, labels=False)
    batch = collate_qa(labelled + bare)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    assert collate_qa(labelled)["start_positions"].tolist() == [labelled[0].start_position]


# ------------------------------------------------------------------------------------------- QA: post-processing
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


# ------------------------------------------------------------------------------------------- QA: objective
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


# ------------------------------------------------------------------------------------------- QA: prediction
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


# ------------------------------------------------------------------------------------------- tagging
TAGS = ("B-LOC", "I-LOC", "O")


def _tag_model(tok, positions=16):
    torch.manual_seed(0)
    return BertForTokenClassification(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=20,
                                                 max_position_embeddings=positions,
                                                 id2label=dict(enumerate(TAGS)))).eval()


def _owned(feats):
    """{word: window} from the word_ids of the windows of one sentence."""
    return {w: k for k, f in enumerate(feats) for w in f.word_ids if w is not None}


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


def test_tagging_scores_word_accuracy_compares_predictions_with_gold():
    pred = [["B-LOC", "O", "O"], ["O"]]
    gold = [["B-LOC", "I-LOC", "O"], ["B-LOC"]]
    out = tagging_scores(pred, gold, list(TAGS))
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert out["f1"] == 0.0 and out["n"] == 2
