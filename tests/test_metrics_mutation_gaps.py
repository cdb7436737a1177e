"""bertkit.metrics: behaviour the mutation audit found unpinned by tests/test_metrics.py (each test here fails on a
small plausible change to bertkit/metrics.py that the older tests let through)."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from bertkit.data.readers import SquadExample
from bertkit.metrics import accuracy, entity_f1, f1, get_entities, multi_label_scores, pearson, squad_em_f1, \
    squad_evaluate


@pytest.mark.parametrize("fn", [accuracy, f1, pearson])
def test_more_predictions_than_labels_is_an_error(fn):
    # the length check must hold both ways: zip would silently score the first len(labels) predictions
    with pytest.raises(ValueError, match="^preds and labels differ in length: 3 predictions for 2 labels$"):
        fn([1, 0, 1], [1, 0])


def test_a_single_string_is_refused_not_read_as_characters_or_a_scalar():
    with pytest.raises(ValueError, match="^preds must be a sequence of values, not a single string$"):
        accuracy("abc", ["a", "b", "c"])
    with pytest.raises(ValueError, match="^labels must be a sequence of values, not a single string$"):
        accuracy(["a", "b", "c"], "abc")


def test_multi_label_scores_refuse_one_dimensional_and_empty_input():
    # scikit-learn refuses both; a 1-D pair would otherwise be read as one column of scalars
    with pytest.raises(ValueError, match=r"must be \(examples, labels\) arrays of one shape, got \(2,\) and \(2,\)"):
        multi_label_scores(np.array([1, 0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="^preds and labels are empty$"):
        multi_label_scores(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="^preds and labels are empty$"):
        multi_label_scores(np.zeros((2, 0)), np.zeros((2, 0)))


def test_pearson_stays_within_minus_one_and_one_where_rounding_overshoots():
    """A perfectly linear pair centres and scales to unit vectors whose dot product rounds to 1.0000000000000004
    (seed 0, 25 values); scipy's pearsonr clips to [-1, 1] as well."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    overshoot = 0
    for _ in range(50):
        x = rng.normal(size=int(rng.integers(3, 30)))
        for y, sign in ((2 * x + 1, 1.0), (-3 * x + 0.5, -1.0)):
            r = pearson(x, y)
            assert -1.0 <= r <= 1.0 and r == pytest.approx(sign, abs=1e-12)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert r == pytest.approx(float(stats.pearsonr(x, y)[0]), abs=1e-12)
            overshoot += r in (1.0, -1.0)
    assert overshoot > 0   # the clip is exercised, not only the loose comparison


def test_get_entities_types_follow_seqeval_for_tags_without_a_hyphen():
    """seqeval's type is everything after the first character up to a '-' split: "BPER" is a B of type PER, a
    prefixless "PER" an entity of type "ER" (its quirk); reading the type as tag[2:] would give "ER" and "R"."""
    from seqeval.metrics.sequence_labeling import get_entities as ref_entities

    for tags in (["BPER", "IPER", "O", "BLOC"], ["PER", "PER", "O", "LOC"], ["B_PER", "I_PER", "O"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # seqeval warns that such tags are not NE tags
            assert get_entities(tags) == ref_entities(tags), tags
    assert get_entities(["BPER", "IPER", "O", "BLOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]


def test_entity_f1_refuses_tags_mixed_with_sentences():
    with pytest.raises(ValueError, match="^pred_tags mixes tags and sequences of tags$"):
        entity_f1(["O", ["B-PER"]], [["O"], ["B-PER"]])
    with pytest.raises(ValueError, match="^true_tags mixes tags and sequences of tags$"):
        entity_f1([["O"], ["B-PER"]], [["O"], "B-PER"])


def test_squad_em_f1_takes_one_gold_answer_as_a_string():
    # a bare string is one gold answer, not a list of its characters
    assert squad_em_f1("Denver", "Denver Broncos") == squad_em_f1("Denver", ["Denver Broncos"]) == \
        pytest.approx((0.0, 2 / 3))
    assert squad_em_f1("the cat", "Cat", version="1.1") == (1.0, 1.0)


def test_squad_em_f1_refuses_a_prediction_that_is_not_a_string():
    with pytest.raises(ValueError, match="^prediction must be a string, got NoneType$"):
        squad_em_f1(None, ["x"])


def _examples():
    ctx = "A cat sat."
    return [SquadExample("q1", "who?", ctx, [("A cat", 0)]), SquadExample("q2", "why?", ctx, [], True)]


def test_squad_evaluate_of_squad_examples_reads_v2_from_their_is_impossible_flags():
    """Without a declared version, a list of SquadExamples with an unanswerable question is scored as v2.0 (as an
    official JSON with one is): HasAns / NoAns groups, and an empty answer right for the unanswerable one."""
    out = squad_evaluate({"q1": "cat", "q2": ""}, _examples())
    assert out == {"exact_match": 100.0, "f1": 100.0, "total": 2, "HasAns_exact": 100.0, "HasAns_f1": 100.0,
                   "HasAns_total": 1, "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 1}


def test_squad_evaluate_reads_duck_typed_questions_with_plain_text_answers():
    # an object with qid and answers (texts, or (text, start) pairs) is a question; a text is one answer
    items = [SimpleNamespace(qid="q1", answers=["Denver Broncos"]),
             SimpleNamespace(qid="q2", answers=[("Carolina Panthers", 0)])]
    out = squad_evaluate({"q1": "Denver", "q2": "the Carolina Panthers"}, items)
    assert out == {"exact_match": 50.0, "f1": pytest.approx(100 * (2 / 3 + 1) / 2), "total": 2}


def test_squad_evaluate_refuses_predictions_that_are_not_a_mapping():
    with pytest.raises(ValueError, match="^predictions must be a dict of question id -> answer text$"):
        squad_evaluate([("q1", "cat")], _examples())

