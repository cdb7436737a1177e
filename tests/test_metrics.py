"""bertkit.metrics: hand-computed values, scikit-learn / scipy / seqeval as oracles on random inputs (when installed),
and the SQuAD scores of the real v1.1 dev set and v2.0 excerpt."""
from __future__ import annotations

import json
import math
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.readers import SquadExample
from bertkit.metrics import (
    accuracy,
    confusion_matrix,
    entity_f1,
    f1,
    get_entities,
    strict_scheme,
    matthews_corrcoef,
    multi_label_scores,
    pearson,
    per_label,
    precision,
    precision_recall_f1,
    recall,
    spearman,
    squad_em_f1,
    squad_best_thresholds,
    squad_evaluate,
    squad_normalize,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SQUAD_V1 = DATA / "qa" / "squad" / "dev-v1.1.json.zip"
SQUAD_V2 = DATA / "qa" / "squad" / "dev-v2.0.excerpt-Normans-Rhine.json"
WNUT_DEV = DATA / "ner" / "wnut17" / "emerging.dev.conll"


# ---------------------------------------------------------------------------------------------------------------
# classification / regression: hand-computed
# ---------------------------------------------------------------------------------------------------------------

def test_binary_scores_by_hand():
    preds, labels = [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]  # tp 2, fp 1, fn 1, tn 1
    assert accuracy(preds, labels) == pytest.approx(3 / 5)
    assert precision(preds, labels) == pytest.approx(2 / 3)
    assert recall(preds, labels) == pytest.approx(2 / 3)
    assert f1(preds, labels) == pytest.approx(2 / 3)
    assert f1(preds, labels, pos_label=0) == pytest.approx(1 / 2)  # tp 1, fp 1, fn 1
    assert matthews_corrcoef(preds, labels) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    # string labels, numpy and tuples all work
    assert f1(np.array(["spam", "ham", "spam"]), ("spam", "spam", "ham"), pos_label="spam") == pytest.approx(1 / 2)


def test_multiclass_scores_by_hand():
    preds = ["a", "a", "b", "c", "c", "c"]
    labels = ["a", "b", "b", "c", "a", "c"]
    # a: tp 1 fp 1 fn 1 -> f 1/2; b: tp 1 fp 0 fn 1 -> f 2/3; c: tp 2 fp 1 fn 0 -> f 4/5
    assert f1(preds, labels, average="macro") == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    p, r, f = precision_recall_f1(preds, labels, average="macro")
    assert p == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert r == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert f1(preds, labels, average="micro") == pytest.approx(accuracy(preds, labels)) == pytest.approx(4 / 6)
    # a label that is never predicted still counts in the macro average, with score 0
    assert f1([0, 0, 0], [0, 1, 2], average="macro") == pytest.approx((2 / 4 + 0 + 0) / 3)


def test_degenerate_cases_are_zero_not_errors():
    assert f1([0, 0], [0, 0]) == 0.0  # no positive anywhere: 0/0 counts as 0
    assert precision([0, 0], [1, 1]) == 0.0
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction
    assert matthews_corrcoef([0, 1, 0], [0, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0], [0, 1]) == pytest.approx(-1.0)


def test_correlations_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties take their average rank: x ranks 1, 2.5, 2.5, 4 against 1, 2, 3, 4
    x_r, y_r = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    assert spearman([10, 20, 20, 30], [1, 2, 3, 4]) == pytest.approx(np.corrcoef(x_r, y_r)[0, 1])
    assert spearman([1, 5, 2, 100], [0.1, 0.9, 0.3, 7]) == pytest.approx(1.0)  # monotone, not linear
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # constant input: undefined, as in scipy
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    # a diverged model's nan/inf outputs: undefined, as scipy says (ranks would rate all-nan a perfect 1.0)
    assert math.isnan(spearman([math.nan] * 5, [0.5, 1, 2, 3.5, 4]))
    assert math.isnan(spearman([0.1, math.nan, 0.3, 0.4, 0.5], [1, 2, 3, 4, 5]))
    assert math.isnan(spearman([1, 2, 3], [1, math.inf, 3])) and math.isnan(pearson([1, 2, 3], [1, math.inf, 3]))


@pytest.mark.parametrize("fn", [accuracy, f1, precision, recall, matthews_corrcoef, pearson, spearman])
def test_bad_inputs_raise(fn):
    with pytest.raises(ValueError, match="differ in length: 2 predictions for 3 labels"):
        fn([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="one-dimensional"):
        fn([[1, 0], [0, 1]], [[1, 0], [0, 1]])


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


def test_average_errors():
    with pytest.raises(ValueError, match="at most two distinct labels, found 3"):
        f1([0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="pos_label=1 is not one of the labels"):
        f1(["neg", "pos"], ["pos", "pos"])
    with pytest.raises(ValueError, match="average must be"):
        f1([0, 1], [0, 1], average="samples")
    with pytest.raises(ValueError, match="at least two values"):
        pearson([1.0], [2.0])


# ---------------------------------------------------------------------------------------------------------------
# against scikit-learn and scipy on random inputs
# ---------------------------------------------------------------------------------------------------------------

def test_classification_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on 0/0; both sides count it as 0
        for trial in range(150):
            k = 2 if trial % 2 else int(rng.integers(1, 6))
            n = int(rng.integers(1, 40))
            y, p = rng.integers(0, k, n), rng.integers(0, k, n)
            assert accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))
            assert matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)
            for avg in ("macro", "micro", "weighted"):
                ours = precision_recall_f1(p, y, average=avg)
                ref = skm.precision_recall_fscore_support(y, p, average=avg, zero_division=0)[:3]
                assert ours == pytest.approx(ref), (avg, y, p)
            if k == 2:
                ours = precision_recall_f1(p, y)
                ref = skm.precision_recall_fscore_support(y, p, average="binary", zero_division=0)[:3]
                assert ours == pytest.approx(ref), (y, p)
            classes = list(range(k + 1))  # one class absent from both: a zero row and column
            assert confusion_matrix(p, y, classes) == skm.confusion_matrix(y, p, labels=classes).tolist()
            scores = per_label(p, y, classes)
            ref = skm.precision_recall_fscore_support(y, p, labels=classes, average=None, zero_division=0)
            for c in classes:
                assert [scores[c][m] for m in ("precision", "recall", "f1", "support")] == pytest.approx(
                    [r[c] for r in ref]), (c, y, p)


def test_confusion_matrix_rows_are_true_labels_and_unknown_values_are_errors():
    assert confusion_matrix(["b", "b", "a"], ["a", "b", "a"], ["a", "b"]) == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match=r"values outside the classes \['a', 'b'\]: \['c'\]"):
        confusion_matrix(["a", "c"], ["a", "b"], ["a", "b"])


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for trial in range(100):
        n = int(rng.integers(2, 50))
        if trial % 2:  # many ties
            a, b = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
        else:
            a = rng.normal(size=n)
            b = 0.5 * a + rng.normal(size=n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_p, ref_s = stats.pearsonr(a, b)[0], stats.spearmanr(a, b)[0]
        if np.isnan(ref_p):
            assert math.isnan(pearson(a, b))
        else:
            assert pearson(a, b) == pytest.approx(ref_p, abs=1e-10)
        if np.isnan(ref_s):
            assert math.isnan(spearman(a, b))
        else:
            assert spearman(a, b) == pytest.approx(ref_s, abs=1e-10)


def test_pearson_of_a_constant_float_is_nan_and_extremes_match_scipy():
    """Ten 0.1s average to 0.09999999999999999, so centring left 1e-17s and r came out 0.0 or -2e-17 (rounding
    noise) where scipy says nan; 1e200-sized values overflowed to nan, and two values 1e8 apart from their spread
    gave -0.99999999997 where scipy promises exactly -1."""
    stats = pytest.importorskip("scipy.stats")
    assert math.isnan(pearson([0.1] * 10, range(10))) and math.isnan(pearson(range(10), [0.1] * 10))
    rng = np.random.default_rng(2)
    cases = [(np.full(n, v), rng.normal(size=n)) for n in (3, 10, 11, 30) for v in (0.1, 1 / 3, 2.7)]
    cases += [(rng.normal(size=20) * 1e200, rng.normal(size=20) * 1e-200) for _ in range(5)]
    cases += [(1e8 + rng.normal(size=2) * 1e-3, rng.normal(size=2)) for _ in range(5)]
    for a, b in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = float(stats.pearsonr(a, b)[0])
        got = pearson(a, b)
        assert (math.isnan(got) and math.isnan(ref)) or abs(got - ref) <= 1e-12, (a, b, got, ref)


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


def test_weighted_average_by_hand_and_against_sklearn():
    # per label (p, r, f): 0 (1/2, 1, 2/3) support 1, 1 (1/2, 1/2, 1/2) support 2, 2 (1, 2/3, 4/5) support 3
    got = precision_recall_f1([0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 2], average="weighted")
    assert got == pytest.approx(((1 / 2 + 1 + 3) / 6, (1 + 1 + 2) / 6, (2 / 3 + 1 + 12 / 5) / 6))
    # label 3 is only predicted: it counts in the macro mean but weighs 0 in the weighted one
    preds, labels = [3, 3, 1, 1, 2, 2], [0, 1, 1, 2, 2, 2]
    assert f1(preds, labels, average="weighted") == pytest.approx((0 + 2 * 1 / 2 + 3 * 4 / 5) / 6)
    skm = pytest.importorskip("sklearn.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert f1(preds, labels, average="weighted") == pytest.approx(
            skm.f1_score(labels, preds, average="weighted"), abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# entity-level F1 (seqeval's default mode)
# ---------------------------------------------------------------------------------------------------------------

def test_get_entities_by_hand():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-PER", "I-ORG", "B-creative-work", "I-creative-work"]
    assert get_entities(tags) == [("PER", 0, 1), ("LOC", 3, 4), ("PER", 5, 5), ("ORG", 6, 6),
                                  ("creative-work", 7, 8)]
    # B after B splits; an I- of another type splits; IOBES ends after E- and S-
    assert get_entities(["B-X", "B-X", "I-X", "I-Y"]) == [("X", 0, 0), ("X", 1, 2), ("Y", 3, 3)]
    assert get_entities(["S-X", "B-X", "E-X", "I-X"]) == [("X", 0, 0), ("X", 1, 2), ("X", 3, 3)]
    assert get_entities(["O", "O"]) == []
    # "." (conlleval's sentence-end tag) ends an entity without starting one, as "O" does
    assert get_entities(["B-X", ".", "I-X", "I-X", "."]) == [("X", 0, 0), ("X", 2, 3)]
    assert get_entities(["O", ".", "I"]) == [("_", 0, 2)]  # seqeval's quirk: "." starts nothing, so an untyped


def test_get_entities_types_follow_seqeval_for_tags_without_a_hyphen():
    """seqeval's type is everything after the first character up to a '-' split: "BPER" is a B of type PER, a
    prefixless "PER" an entity of type "ER" (its quirk); reading the type as tag[2:] would give "ER" and "R"."""
    from seqeval.metrics.sequence_labeling import get_entities as ref_entities

    for tags in (["BPER", "IPER", "O", "BLOC"], ["PER", "PER", "O", "LOC"], ["B_PER", "I_PER", "O"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # seqeval warns that such tags are not NE tags
            assert get_entities(tags) == ref_entities(tags), tags
    assert get_entities(["BPER", "IPER", "O", "BLOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # I- after it (type "_", as "."'s) extends from the last start


def test_entity_f1_by_hand():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG"]]
    # true: PER(0-1) LOC(3) ORG(0); pred: PER(0-1) ORG(3) ORG(0-1); correct: PER only
    out = entity_f1(pred, true)
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(1 / 3)
    assert out["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert out["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_type"]["ORG"]["support"] == 1 and out["per_type"]["ORG"]["precision"] == 0.0
    # one flat sequence is one sentence; entities never run across sentences
    assert entity_f1(["B-PER", "I-PER"], ["B-PER", "I-PER"])["per_type"]["PER"]["support"] == 1
    assert entity_f1([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])["per_type"]["PER"]["support"] == 2
    assert entity_f1([["O"]], [["O"]])["f1"] == 0.0  # no entities at all: 0/0 counts as 0


def test_entity_f1_errors():
    with pytest.raises(ValueError, match="2 sentences, true_tags 1"):
        entity_f1([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 1: 1 predicted tags for 2 true tags"):
        entity_f1([["O"], ["O"]], [["O"], ["O", "O"]])
    with pytest.raises(ValueError, match="empty"):
        entity_f1([], [])


def test_entity_f1_refuses_tags_mixed_with_sentences():
    with pytest.raises(ValueError, match="^pred_tags mixes tags and sequences of tags$"):
        entity_f1(["O", ["B-PER"]], [["O"], ["B-PER"]])
    with pytest.raises(ValueError, match="^true_tags mixes tags and sequences of tags$"):
        entity_f1([["O"], ["B-PER"]], [["O"], "B-PER"])


# "." is conlleval's sentence-end tag; "I" an untyped one
TAGS = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG", "E-PER", "S-LOC", ".", "I"]
sentence_pairs = st.integers(1, 12).flatmap(
    lambda n: st.tuples(st.lists(st.sampled_from(TAGS), min_size=n, max_size=n),
                        st.lists(st.sampled_from(TAGS), min_size=n, max_size=n)))


@pytest.mark.filterwarnings("ignore:.* seems not to be NE tag:UserWarning")  # seqeval, of "." and untyped "I"
@settings(max_examples=150, deadline=None)
@given(st.lists(sentence_pairs, min_size=1, max_size=5))
def test_entity_f1_matches_seqeval(pairs):
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.metrics.sequence_labeling import get_entities as ref_entities

    pred, true = [p for p, _ in pairs], [t for _, t in pairs]
    for seq in pred:
        assert get_entities(seq) == ref_entities(seq)
    out = entity_f1(pred, true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert out["precision"] == pytest.approx(seqeval.precision_score(true, pred))
        assert out["recall"] == pytest.approx(seqeval.recall_score(true, pred))
        assert out["f1"] == pytest.approx(seqeval.f1_score(true, pred))
        report = seqeval.classification_report(true, pred, output_dict=True)
    for typ, s in out["per_type"].items():
        if typ in report:
            ref = report[typ]
            assert (s["precision"], s["recall"], s["f1"], s["support"]) == pytest.approx(
                (ref["precision"], ref["recall"], ref["f1-score"], ref["support"]))
        else:  # seqeval lists only types with true entities... or predicted ones, depending on version
            assert s["support"] == 0


def test_strict_entities_by_hand():
    # IOB2: an I- with no B- of its type before it is no entity; B- I-(other type) keeps the B- alone
    assert get_entities(["I-X", "B-X", "I-X", "I-Y", "O", "B-Y"], "IOB2") == [("X", 1, 2), ("Y", 5, 5)]
    # IOBES: B- ... E- closed, S- alone; an unclosed B- I- or a mismatched E- counts for nothing
    assert get_entities(["B-X", "I-X", "E-X", "S-Y", "B-X", "I-X", "O", "B-X", "E-Y"], "IOBES") == \
        [("X", 0, 2), ("Y", 3, 3)]
    assert entity_f1([["I-X", "I-X"]], [["B-X", "I-X"]], "IOB2")["recall"] == 0.0
    assert entity_f1([["I-X", "I-X"]], [["B-X", "I-X"]])["recall"] == 1.0  # the default mode reads it as X
    with pytest.raises(ValueError, match="tag 'E-X' is not an IOB2 tag"):
        get_entities(["B-X", "E-X"], "IOB2")
    with pytest.raises(ValueError, match="scheme 'BILOU'"):
        entity_f1(["O"], ["O"], "BILOU")


def test_strict_scheme_of_a_tag_set():
    assert strict_scheme(["O", "B-PER", "I-PER"]) == "IOB2"
    assert strict_scheme(["O", "B-PER", "E-PER", "S-LOC"]) == "IOBES"
    assert strict_scheme(["O"]) is None and strict_scheme(["NOUN", "VERB"]) is None
    assert strict_scheme(["B-PER", "U-PER"]) is None


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["IOB2", "IOBES"]), st.data())
def test_strict_mode_matches_seqeval(scheme, data):
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval import scheme as schemes
    from seqeval.scheme import Entities

    tags = [t for t in [*TAGS, "E-LOC", "E-ORG", "S-PER"] if t[0] in {"IOB2": "BIO", "IOBES": "BIOES"}[scheme]]
    pairs = data.draw(st.lists(st.integers(1, 12).flatmap(lambda n: st.tuples(
        st.lists(st.sampled_from(tags), min_size=n, max_size=n),
        st.lists(st.sampled_from(tags), min_size=n, max_size=n))), min_size=1, max_size=5))
    pred, true = [p for p, _ in pairs], [t for _, t in pairs]
    ref_scheme = getattr(schemes, scheme)
    ref = Entities(pred, ref_scheme).entities
    assert [get_entities(p, scheme) for p in pred] == [[(e.tag, e.start, e.end - 1) for e in sent] for sent in ref]
    out = entity_f1(pred, true, scheme)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in (("precision", seqeval.precision_score), ("recall", seqeval.recall_score),
                         ("f1", seqeval.f1_score)):
            assert out[name] == pytest.approx(fn(true, pred, mode="strict", scheme=ref_scheme)), name


@pytest.mark.skipif(not WNUT_DEV.exists(), reason="WNUT-17 data not present")
def test_entity_f1_on_real_wnut_tags():
    sents, cur = [], []
    for line in WNUT_DEV.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            cur.append(line.split("\t")[1])
        elif cur:
            sents.append(cur)
            cur = []
    assert len(sents) == 1009
    perfect = entity_f1(sents, sents)
    assert perfect["f1"] == 1.0
    assert sum(s["support"] for s in perfect["per_type"].values()) == 836  # the B- count of SOURCES.md
    # a damaged prediction: every I- tag becomes O (multi-token entities are cut short)
    pred = [[("O" if t.startswith("I-") else t) for t in s] for s in sents]
    out = entity_f1(pred, sents)
    seqeval = pytest.importorskip("seqeval.metrics")
    assert out["f1"] == pytest.approx(seqeval.f1_score(sents, pred))
    assert 0.0 < out["f1"] < 1.0 and out["precision"] == out["recall"]


# ---------------------------------------------------------------------------------------------------------------
# SQuAD
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The Cat!", "cat"),
    ("  a  DOG, an   apple and the  end. ", "dog apple and end"),
    ("theory anthem", "theory anthem"),  # articles only as whole words
    ("Denver Broncos", "denver broncos"),
    ("24–10", "24–10"),  # the en dash is not ASCII punctuation: it stays
    ("U.S.", "us"),
    ("The", ""),
])
def test_squad_normalize(text, expected):
    assert squad_normalize(text) == expected


def test_squad_em_f1_cases():
    assert squad_em_f1("The Cat!", ["cat"]) == (1.0, 1.0)
    assert squad_em_f1("the big black cat", ["black cat sat"]) == pytest.approx((0.0, 2 / 3))
    assert squad_em_f1("cat", ["dog", "a cat", "cat cat"]) == pytest.approx((1.0, 1.0))  # max over golds
    assert squad_em_f1("cat cat", ["cat"]) == pytest.approx((0.0, 2 / 3))  # counts, not sets
    assert squad_em_f1("Denver", ["Denver Broncos", "the Denver Broncos."]) == pytest.approx((0.0, 2 / 3))
    # unanswerable (v2.0): only an empty prediction is right
    assert squad_em_f1("", []) == (1.0, 1.0)
    assert squad_em_f1("Normandy", []) == (0.0, 0.0)
    assert squad_em_f1("", ["Normandy"]) == (0.0, 0.0)
    # gold answers that normalise to nothing: v2.0 drops them, v1.1 keeps them (and its F1 is then 0)
    assert squad_em_f1(".", ["."], version="1.1") == (1.0, 0.0)
    assert squad_em_f1(".", ["."], version="2.0") == (1.0, 1.0)
    assert squad_em_f1(".", ["interventionism", "."], version="2.0") == (0.0, 0.0)
    assert squad_em_f1(".", ["interventionism", "."], version="1.1") == (1.0, 0.0)
    with pytest.raises(ValueError, match="at least one gold answer"):
        squad_em_f1("x", [], version="1.1")
    with pytest.raises(ValueError, match="version must be"):
        squad_em_f1("x", ["x"], version="3")


def test_squad_em_f1_takes_one_gold_answer_as_a_string():
    # a bare string is one gold answer, not a list of its characters
    assert squad_em_f1("Denver", "Denver Broncos") == squad_em_f1("Denver", ["Denver Broncos"]) == \
        pytest.approx((0.0, 2 / 3))
    assert squad_em_f1("the cat", "Cat", version="1.1") == (1.0, 1.0)


def test_squad_em_f1_refuses_a_prediction_that_is_not_a_string():
    with pytest.raises(ValueError, match="^prediction must be a string, got NoneType$"):
        squad_em_f1(None, ["x"])


def _tiny_dataset():
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "A cat sat.", "qas": [
        {"id": "q1", "question": "who?", "answers": [{"text": "A cat", "answer_start": 0}], "is_impossible": False},
        {"id": "q2", "question": "why?", "answers": [], "is_impossible": True},
    ]}]}]}


def test_squad_best_thresholds_by_hand():
    """The official v2.0 sweep: questions by increasing no-answer score, answered up to the threshold. (Equal to
    transformers 4.x's copy of the official script on 300 random cases, checked once outside the suite.)"""
    data = {"version": "v2.0", "data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "q2", "question": "?", "answers": [], "is_impossible": True},
        {"id": "q3", "question": "?", "answers": [{"text": "old Rome", "answer_start": 0}]}]}]}]}
    preds = {"q1": "paris", "q2": "x", "q3": "rome"}
    na = {"q1": 0.1, "q2": 0.5, "q3": 0.9}
    # abstain everywhere: 1 of 3 (q2); +q1 (right): 2; +q2 (answered, wrong): 1; +q3 (F1 2/3, exact 0)
    got = squad_best_thresholds(preds, na, data)
    assert got == pytest.approx({"best_exact": 200 / 3, "best_exact_thresh": 0.1,
                                 "best_f1": 200 / 3, "best_f1_thresh": 0.1})
    na["q2"] = 1.0  # q2 last: answering q1 and q3 reaches exact 2/3 (q2 abstained), F1 (1 + 2/3 + 1) / 3
    got = squad_best_thresholds(preds, na, data)
    assert got["best_f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3) and got["best_f1_thresh"] == 0.9
    # every answer wrong: abstaining everywhere is best, and the threshold is one that abstains everywhere
    got = squad_best_thresholds({"q1": "x", "q2": "x", "q3": "x"}, {"q1": -2.5, "q2": 0.5, "q3": 1.0}, data)
    assert got["best_f1"] == pytest.approx(100 / 3) and got["best_f1_thresh"] == -3.5
    with pytest.raises(ValueError, match="1 questions lack a prediction or a no-answer score, e.g. 'q3'"):
        squad_best_thresholds({"q1": "a", "q2": ""}, na, data)


def test_squad_evaluate_tiny():
    out = squad_evaluate({"q1": "cat", "q2": "", "zzz": "ignored"}, _tiny_dataset())
    assert out == {"exact_match": 100.0, "f1": 100.0, "total": 2, "HasAns_exact": 100.0, "HasAns_f1": 100.0,
                   "HasAns_total": 1, "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 1}
    out = squad_evaluate({"q1": "a dog", "q2": "cat"}, _tiny_dataset()["data"])  # list of articles works too
    assert out["exact_match"] == 0.0 and out["total"] == 2
    with pytest.warns(UserWarning, match="1 of 2 questions have no prediction"):
        out = squad_evaluate({"q2": ""}, _tiny_dataset())
    assert out["exact_match"] == 50.0 and out["HasAns_exact"] == 0.0
    with pytest.raises(ValueError, match="no gold answer"):
        squad_evaluate({"q1": "cat", "q2": ""}, _tiny_dataset(), version="1.1")
    with pytest.raises(ValueError, match="prediction for question 'q1' must be a string, got int"):
        squad_evaluate({"q1": 3, "q2": ""}, _tiny_dataset())
    with pytest.raises(ValueError, match="no questions"):
        squad_evaluate({}, {"version": "1.1", "data": []})


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


@pytest.mark.skipif(not SQUAD_V1.exists(), reason="SQuAD v1.1 dev not present")
def test_squad_evaluate_real_v1():
    dataset = json.loads(zipfile.ZipFile(SQUAD_V1).read("dev-v1.1.json"))
    qas = [qa for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]]
    first = {qa["id"]: qa["answers"][0]["text"] for qa in qas}
    assert squad_evaluate(first, dataset) == {"exact_match": 100.0, "f1": 100.0, "total": 10570}
    empty = squad_evaluate({qid: "" for qid in first}, dataset)
    # Three questions list "." among their gold answers; it normalises to "" so the v1.1 rule counts an empty
    # prediction as an exact match for them (with F1 0): EM 3/10570, not 0.
    dots = [qa["id"] for qa in qas if any(squad_normalize(a["text"]) == "" for a in qa["answers"])]
    assert len(dots) == 3
    assert empty == {"exact_match": pytest.approx(100 * 3 / 10570), "f1": 0.0, "total": 10570}
    # the last gold answer instead of the first: still EM/F1 below 100 only where golds disagree
    last = squad_evaluate({qa["id"]: qa["answers"][-1]["text"] for qa in qas}, dataset)
    assert last["exact_match"] == 100.0


@pytest.mark.skipif(not SQUAD_V2.exists(), reason="SQuAD v2.0 excerpt not present")
def test_squad_evaluate_real_v2():
    dataset = json.loads(SQUAD_V2.read_text(encoding="utf-8"))
    qas = [qa for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]]
    empty = squad_evaluate({qa["id"]: "" for qa in qas}, dataset)
    assert (empty["total"], empty["HasAns_total"], empty["NoAns_total"]) == (706, 386, 320)
    assert (empty["HasAns_exact"], empty["HasAns_f1"], empty["NoAns_exact"], empty["NoAns_f1"]) == (0, 0, 100, 100)
    assert empty["exact_match"] == pytest.approx(100 * 320 / 706)
    gold = {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "") for qa in qas}
    assert squad_evaluate(gold, dataset) == {k: (100.0 if not k.endswith("total") else v) for k, v in empty.items()}
    # a plausible (but wrong) answer to every unanswerable question costs exactly the NoAns part
    wrong = {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else qa["plausible_answers"][0]["text"])
             for qa in qas}
    out = squad_evaluate(wrong, dataset)
    assert out["NoAns_exact"] == 0.0 and out["HasAns_exact"] == 100.0
    assert out["exact_match"] == pytest.approx(100 * 386 / 706)


# ---------------------------------------------------------------------------------------------------------------
# against copies of the official SQuAD evaluation script and seqeval, on corner cases
# ---------------------------------------------------------------------------------------------------------------

def _official_normalize_answer(s):
    """normalize_answer of the official SQuAD v1.1 / v2.0 evaluation scripts, verbatim but for the layout."""
    import re
    import string

    def remove_articles(text):
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


@pytest.mark.parametrize("text", [
    "pizza", "Roman", "banana", "Thea", "anathema", "A.B.", "the-end", "a-team", "The Cat", "AN apple",
    "THE END", "(the) end", "an.", "a, b, c", "the\tend\n", "théatre the", "Ｔhe", "a’s", "e.g. the", "", " . ",
])
def test_squad_normalize_is_the_official_normalize_answer(text):
    assert squad_normalize(text) == _official_normalize_answer(text)


def test_squad_normalize_drops_articles_only_as_whole_words_after_punctuation():
    assert squad_normalize("pizza") == "pizza" and squad_normalize("Roman") == "roman"
    assert squad_normalize("A.B.") == "ab" and squad_normalize("the-end") == "theend"


def test_squad_best_thresholds_an_empty_answer_to_an_unanswerable_question_counts_zero():
    """The official sweep adds 0 for a no-answer question answered "" (and -1 only for a non-empty answer):
    abstaining everywhere scores 1 (q2), answering q2 ("") keeps 1, answering q1 too reaches 2."""
    data = {"version": "v2.0", "data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "q2", "question": "?", "answers": [], "is_impossible": True}]}]}]}
    got = squad_best_thresholds({"q1": "Paris", "q2": ""}, {"q1": 1.0, "q2": 0.0}, data)
    assert got == pytest.approx({"best_exact": 100.0, "best_exact_thresh": 1.0,
                                 "best_f1": 100.0, "best_f1_thresh": 1.0})


def test_squad_evaluate_has_ans_is_decided_by_the_raw_gold_answers():
    """The official v2.0 script: has_ans = bool(qa['answers']); a gold "." (normalised to nothing) still makes
    the question answerable, scored against "" (so an empty prediction is right)."""
    data = {"version": "v2.0", "data": [{"paragraphs": [{"context": ". x", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": ".", "answer_start": 0}]}]}]}]}
    out = squad_evaluate({"q1": ""}, data)
    assert out == {"exact_match": 100.0, "f1": 100.0, "total": 1,
                   "HasAns_exact": 100.0, "HasAns_f1": 100.0, "HasAns_total": 1}
    got = squad_best_thresholds({"q1": ""}, {"q1": 0.5}, data)
    assert got["best_exact"] == 100.0 and got["best_exact_thresh"] == 0.5  # q1 counts as answerable


def test_entity_f1_per_type_includes_types_only_predicted():
    out = entity_f1(["B-PER", "O"], ["O", "B-LOC"])  # pred, true
    assert set(out["per_type"]) == {"PER", "LOC"}
    assert out["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert out["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert entity_f1(["B-PER"], ["O"])["per_type"] == {"PER": {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                                "support": 0}}
    seqeval = pytest.importorskip("seqeval.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = seqeval.classification_report([["O", "B-LOC"]], [["B-PER", "O"]], output_dict=True)
    types = {k for k in report if not k.endswith(" avg")}
    assert types == set(out["per_type"])
    for typ in types:
        ref = report[typ]
        assert (ref["precision"], ref["recall"], ref["f1-score"], ref["support"]) == pytest.approx(
            tuple(out["per_type"][typ][k] for k in ("precision", "recall", "f1", "support")))


def test_strict_scheme_is_iobes_with_s_tags_alone_or_e_tags_alone():
    assert strict_scheme(["O", "S-LOC", "B-PER", "I-PER"]) == "IOBES"
    assert strict_scheme(["S-LOC"]) == "IOBES"
    assert strict_scheme(["B-PER", "E-PER"]) == "IOBES"


def test_multi_label_metrics_match_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(20):
        y = rng.random((30, 5)) < 0.3
        p = rng.random((30, 5)) < 0.3
        y[:, 4] = p[:, 4] = False  # a label never given nor predicted: 0 in the macro mean, as scikit-learn
        got = multi_label_scores(p, y)
        assert got["accuracy"] == pytest.approx(sklearn.accuracy_score(y, p))
        for average in ("micro", "macro"):
            want = sklearn.precision_recall_fscore_support(y, p, average=average, zero_division=0)[:3]
            prefix = "" if average == "micro" else "macro_"
            assert [got[prefix + k] for k in ("precision", "recall", "f1")] == pytest.approx(list(want))
        per = sklearn.precision_recall_fscore_support(y, p, average=None, zero_division=0)
        for j in range(5):
            assert [got["per_label"][j][k] for k in ("precision", "recall", "f1", "support")] == \
                pytest.approx([per[0][j], per[1][j], per[2][j], per[3][j]])
    with pytest.raises(ValueError, match=r"one shape, got \(2, 3\) and \(2, 2\)"):
        multi_label_scores(np.zeros((2, 3)), np.zeros((2, 2)))


def test_multi_label_scores_refuse_values_other_than_0_and_1():
    """Probabilities or logits passed as predictions counted every nonzero value as a 1 (scikit-learn refuses
    such input too)."""
    assert multi_label_scores(np.array([[1.0, 0.0]]), np.array([[True, False]]))["f1"] == 1.0
    with pytest.raises(ValueError, match="preds must hold only 0/1 .* values, found 0.3; threshold probabilities"):
        multi_label_scores(np.array([[0.3, 1.0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="labels must hold only 0/1 .* values, found 2"):
        multi_label_scores(np.array([[1, 0]]), np.array([[2, 0]]))


def test_multi_label_scores_refuse_one_dimensional_and_empty_input():
    # scikit-learn refuses both; a 1-D pair would otherwise be read as one column of scalars
    with pytest.raises(ValueError, match=r"must be \(examples, labels\) arrays of one shape, got \(2,\) and \(2,\)"):
        multi_label_scores(np.array([1, 0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="^preds and labels are empty$"):
        multi_label_scores(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="^preds and labels are empty$"):
        multi_label_scores(np.zeros((2, 0)), np.zeros((2, 0)))


# ---------------------------------------------------------------------------------------------------------------
# real data, random predictions derived from the gold, against seqeval and the official SQuAD scripts to 1e-12
# ---------------------------------------------------------------------------------------------------------------

def _read_conll_tags(path):
    sents, cur = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            cur.append(line.split("\t")[-1])
        elif cur:
            sents.append(cur)
            cur = []
    return sents + ([cur] if cur else [])


def _to_iobes(sent):
    out = []
    for tag, nxt in zip(sent, [*sent[1:], "O"]):
        goes_on = tag != "O" and nxt == "I-" + tag[2:]
        out.append(tag if tag == "O" else ("BS" if tag[0] == "B" else "IE")[not goes_on] + tag[1:])
    return out


@pytest.mark.skipif(not WNUT_DEV.exists(), reason="WNUT-17 data not present")
@pytest.mark.parametrize("scheme", ["IOB2", "IOBES"])
def test_entity_f1_matches_seqeval_on_perturbed_wnut(scheme):
    """WNUT-17 dev (types like creative-work hold a hyphen) with tags randomly replaced, retyped or dropped: micro
    and per-type scores equal seqeval's, in its default mode and in its strict mode."""
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval import scheme as schemes

    gold = _read_conll_tags(WNUT_DEV)
    if scheme == "IOBES":
        gold = [_to_iobes(s) for s in gold]
    tag_set = sorted({t for s in gold for t in s})
    assert strict_scheme(tag_set) == scheme
    types = sorted({t[2:] for t in tag_set if t != "O"})
    assert "creative-work" in types
    rng = np.random.default_rng(3)
    pred = []
    for sent in gold:
        sent = list(sent)
        for i, r in enumerate(rng.random(len(sent))):
            if r < 0.05:
                sent[i] = str(rng.choice(tag_set))
            elif r < 0.08 and sent[i] != "O":
                sent[i] = sent[i][:2] + str(rng.choice(types))
            elif r < 0.1:
                sent[i] = "O"
        pred.append(sent)
    for mode, kwargs in ((None, {}), (scheme, {"mode": "strict", "scheme": getattr(schemes, scheme)})):
        out = entity_f1(pred, gold, mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = seqeval.classification_report(gold, pred, output_dict=True, **kwargs)
            for name, fn in (("precision", seqeval.precision_score), ("recall", seqeval.recall_score),
                             ("f1", seqeval.f1_score)):
                assert abs(out[name] - fn(gold, pred, **kwargs)) <= 1e-12, (mode, name)
        assert 0.3 < out["f1"] < 0.95
        for typ in types:
            ours, ref = out["per_type"][typ], report[typ]
            assert [ours[k] for k in ("precision", "recall", "f1", "support")] == pytest.approx(
                [ref[k] for k in ("precision", "recall", "f1-score", "support")], abs=1e-12), (mode, typ)


def _official_f1(gold, pred, version):
    """compute_f1 of the official v2.0 script (version "2.0") or f1_score of v1.1, but for the layout."""
    gold_toks, pred_toks = _official_normalize_answer(gold).split(), _official_normalize_answer(pred).split()
    num_same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if version == "2.0" and (len(gold_toks) == 0 or len(pred_toks) == 0):
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = 1.0 * num_same / len(pred_toks), 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _official_evaluate(dataset, preds, version, na_probs=None):
    """The official scripts' evaluate (v1.1) / main without a threshold, plus find_all_best_thresh (v2.0)."""
    qas = [qa for article in dataset for p in article["paragraphs"] for qa in p["qas"]]
    exact, f1s = {}, {}
    for qa in qas:
        golds = [a["text"] for a in qa["answers"]]
        if version == "2.0":
            golds = [g for g in golds if _official_normalize_answer(g)] or [""]
        pred = preds[qa["id"]]
        exact[qa["id"]] = max(int(_official_normalize_answer(g) == _official_normalize_answer(pred)) for g in golds)
        f1s[qa["id"]] = max(_official_f1(g, pred, version) for g in golds)
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    groups = {"": list(exact)}
    if version == "2.0":
        groups.update(HasAns_=[q for q in has_ans if has_ans[q]], NoAns_=[q for q in has_ans if not has_ans[q]])
    out = {}
    for prefix, qids in groups.items():
        out[prefix + "exact"] = 100.0 * sum(exact[k] for k in qids) / len(qids)
        out[prefix + "f1"] = 100.0 * sum(f1s[k] for k in qids) / len(qids)
        out[prefix + "total"] = len(qids)
    for name, scores in (("exact", exact), ("f1", f1s)) if na_probs else ():
        cur = best = sum(1 for k in has_ans if not has_ans[k])
        thresh = 0.0
        for qid in sorted(na_probs, key=lambda k: na_probs[k]):
            cur += scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
            if cur > best:
                best, thresh = cur, na_probs[qid]
        out[f"best_{name}"], out[f"best_{name}_thresh"] = 100.0 * best / len(scores), thresh
    return out


def _derived_answer(rng, text, context):
    """A prediction made from a gold answer: itself, cased and punctuated, with articles, cut, padded with Unicode
    punctuation (which the official scripts keep), a random stretch of the context, or empty."""
    words = text.split()
    return [text, "", text.upper() + "!", "The " + text, " ".join(words[len(words) // 2:]), text + "” —",
            "« " + text.replace(" ", "\u00a0 ") + " »", context[(i := int(rng.integers(len(context)))):i + 30],
            " ".join(words + words[:1]), text.replace(" ", " - ")][int(rng.integers(10))]


@pytest.mark.skipif(not SQUAD_V1.exists(), reason="SQuAD v1.1 dev not present")
def test_squad_evaluate_matches_the_official_v1_script_on_derived_predictions():
    dataset = json.loads(zipfile.ZipFile(SQUAD_V1).read("dev-v1.1.json"))
    rng = np.random.default_rng(4)
    preds = {qa["id"]: _derived_answer(rng, qa["answers"][int(rng.integers(len(qa["answers"])))]["text"],
                                       p["context"])
             for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]}
    ref = _official_evaluate(dataset["data"], preds, "1.1")
    got = squad_evaluate(preds, dataset)
    assert 30 < got["exact_match"] < 70
    assert (got["exact_match"], got["f1"], got["total"]) == (ref["exact"], ref["f1"], ref["total"])


@pytest.mark.skipif(not SQUAD_V2.exists(), reason="SQuAD v2.0 excerpt not present")
def test_squad_evaluate_matches_the_official_v2_script_on_derived_predictions():
    dataset = json.loads(SQUAD_V2.read_text(encoding="utf-8"))
    qas = [(qa, p["context"]) for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]]
    rng = np.random.default_rng(5)
    for _ in range(5):
        preds = {qa["id"]: _derived_answer(rng, (qa["answers"] or qa["plausible_answers"])[0]["text"], c)
                 for qa, c in qas}
        na_probs = {qid: float(rng.normal()) for qid in preds}
        ref = _official_evaluate(dataset["data"], preds, "2.0", na_probs)
        got = {**squad_evaluate(preds, dataset), **squad_best_thresholds(preds, na_probs, dataset)}
        got["exact"] = got.pop("exact_match")
        for name in ("exact", "f1"):
            if ref[f"best_{name}"] == 100.0 * ref["NoAns_total"] / ref["total"]:  # abstaining everywhere is best:
                assert got[f"best_{name}_thresh"] == min(na_probs.values()) - 1  # a threshold that does abstain
                got[f"best_{name}_thresh"] = 0.0  # where the official script says 0.0
        assert got == ref
