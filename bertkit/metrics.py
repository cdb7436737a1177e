"""Evaluation metrics for fine-tuning: classification, regression, entity-level NER and SQuAD.

Pure Python and numpy. The semantics follow the usual references, and the tests check them against those references:

- `accuracy`, `precision` / `recall` / `f1` (binary, macro, weighted, micro) and `matthews_corrcoef` behave like
  scikit-learn's functions with their default ``zero_division`` (an undefined ratio counts as 0, but silently: a
  model early in training that never predicts some class would warn at every evaluation). Macro and weighted
  averages run over every label seen in the predictions or the labels.
- `multi_label_scores` scores (examples, labels) 0/1 indicator arrays as scikit-learn scores such input: subset
  accuracy, micro and macro precision / recall / F1 (the macro mean over every label column), per-label scores.
- `pearson` and `spearman` behave like scipy's (`spearman` ranks ties by their average rank); a constant input gives
  ``nan``, as in scipy.
- `entity_f1` scores BIO / IOB2 (and IOBES) tag sequences like seqeval's default mode: an ``I-`` tag that does not
  continue an entity of the same type starts a new one; the micro average runs over all entities. With
  ``scheme="IOB2"`` or ``"IOBES"`` it is seqeval's strict mode: only well-formed entities count.
- `squad_normalize`, `squad_em_f1` and `squad_evaluate` reproduce the official SQuAD v1.1 and v2.0 evaluation scripts.

Inputs of mismatched length, or empty inputs, raise a ``ValueError``.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from .warn import warn

__all__ = [
    "accuracy",
    "precision",
    "recall",
    "f1",
    "precision_recall_f1",
    "matthews_corrcoef",
    "confusion_matrix",
    "per_label",
    "multi_label_scores",
    "pearson",
    "spearman",
    "get_entities",
    "entity_f1",
    "strict_scheme",
    "squad_normalize",
    "squad_em_f1",
    "squad_evaluate",
    "squad_best_thresholds",
]


# ----------------------------------------------------------------------------------------------------------------
# classification and regression
# ----------------------------------------------------------------------------------------------------------------

def _as_list(values: Any, name: str) -> list:
    """A 1-D sequence (list, tuple, numpy array, CPU tensor) as a list of plain Python scalars."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of values, not a single string")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(arr.shape)}")
    return arr.tolist()


def _pair(preds: Any, labels: Any) -> tuple[list, list]:
    p, y = _as_list(preds, "preds"), _as_list(labels, "labels")
    if len(p) != len(y):
        raise ValueError(f"preds and labels differ in length: {len(p)} predictions for {len(y)} labels")
    if not p:
        raise ValueError("preds and labels are empty")
    return p, y


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def accuracy(preds: Any, labels: Any) -> float:
    """The fraction of predictions equal to their label."""
    p, y = _pair(preds, labels)
    return sum(a == b for a, b in zip(p, y)) / len(y)


def _tallies(p: list, y: list) -> tuple[Counter, Counter, Counter]:
    """Per value: the right predictions of it, its predictions, its labels; one pass over the rows, so scoring
    every label costs rows + labels, not rows x labels (1,000 labels of 200k rows took 15 s a label at a time)."""
    return Counter(a for a, b in zip(p, y) if a == b), Counter(p), Counter(y)


def _counts(tallies: tuple[Counter, Counter, Counter], label: Any) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of `label`."""
    tp, predicted, labelled = (t[label] for t in tallies)
    return tp, predicted - tp, labelled - tp


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def precision_recall_f1(preds: Any, labels: Any, average: str = "binary", pos_label: Any = 1
                        ) -> tuple[float, float, float]:
    """(precision, recall, F1).

    ``average="binary"`` scores ``pos_label`` only (at most two distinct labels allowed); ``"macro"`` is the unweighted
    mean of the per-label scores over every label present in ``preds`` or ``labels``; ``"weighted"`` weighs that mean
    by each label's count in ``labels`` (a label only predicted weighs 0); ``"micro"`` pools the counts (for
    single-label data it equals accuracy). An undefined ratio (0/0) counts as 0.
    """
    p, y = _pair(preds, labels)
    present = sorted(set(p) | set(y), key=lambda v: (str(type(v)), v))
    if average == "binary":
        if len(present) > 2:
            raise ValueError(f"average='binary' needs at most two distinct labels, found {len(present)}: "
                             f"{present[:10]}; use average='macro' or 'micro'")
        if len(present) == 2 and pos_label not in present:
            raise ValueError(f"pos_label={pos_label!r} is not one of the labels {present}")
        return _prf(*_counts(_tallies(p, y), pos_label))
    if average == "micro":
        tp = sum(a == b for a, b in zip(p, y))
        return _prf(tp, len(p) - tp, len(y) - tp)
    if average in ("macro", "weighted"):
        tallies = _tallies(p, y)
        scores = [_prf(*_counts(tallies, label)) for label in present]
        weights = [tallies[2][label] for label in present] if average == "weighted" else None
        return tuple(float(v) for v in np.average(scores, axis=0, weights=weights))  # type: ignore[return-value]
    raise ValueError(f"average must be 'binary', 'macro', 'weighted' or 'micro', got {average!r}")


def precision(preds: Any, labels: Any, average: str = "binary", pos_label: Any = 1) -> float:
    """Precision; see `precision_recall_f1` for ``average``."""
    return precision_recall_f1(preds, labels, average, pos_label)[0]


def recall(preds: Any, labels: Any, average: str = "binary", pos_label: Any = 1) -> float:
    """Recall; see `precision_recall_f1` for ``average``."""
    return precision_recall_f1(preds, labels, average, pos_label)[1]


def f1(preds: Any, labels: Any, average: str = "binary", pos_label: Any = 1) -> float:
    """F1; see `precision_recall_f1` for ``average``."""
    return precision_recall_f1(preds, labels, average, pos_label)[2]


def confusion_matrix(preds: Any, labels: Any, classes: Sequence[Any]) -> list[list[int]]:
    """Counts of (true class, predicted class): row i holds the examples labelled ``classes[i]``, column j those
    predicted ``classes[j]`` (scikit-learn's layout). A value outside `classes` is an error."""
    p, y = _pair(preds, labels)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({v for v in p + y if v not in index}, key=str)
    if unknown:
        raise ValueError(f"values outside the classes {list(classes)[:10]}: {unknown[:10]}")
    matrix = [[0] * len(classes) for _ in classes]
    for a, b in zip(p, y):
        matrix[index[b]][index[a]] += 1
    return matrix


def per_label(preds: Any, labels: Any, classes: Sequence[Any]) -> dict[Any, dict[str, float]]:
    """{class: {"precision", "recall", "f1", "support"}} for each of `classes` (support: examples labelled so), as
    scikit-learn's ``precision_recall_fscore_support(average=None)``; an undefined ratio counts as 0."""
    tallies = _tallies(*_pair(preds, labels))
    out = {}
    for c in classes:
        pr, rc, f = _prf(*_counts(tallies, c))
        out[c] = {"precision": pr, "recall": rc, "f1": f, "support": tallies[2][c]}
    return out


def multi_label_scores(preds: Any, labels: Any) -> dict[str, Any]:
    """Scores of multi-label predictions, `preds` and `labels` (examples, labels) 0/1 indicator arrays:
    "accuracy" the share of examples whose label set is exactly right (scikit-learn's subset accuracy);
    "precision", "recall", "f1" pooled over every (example, label) decision (micro); "macro_precision",
    "macro_recall", "macro_f1" the means over the label columns, each column counting (an undefined ratio is 0);
    "per_label" {column: {"precision", "recall", "f1", "support"}}."""
    p, y = np.asarray(preds), np.asarray(labels)
    for name, a in (("preds", p), ("labels", y)):
        other = a[~np.isin(a, (0, 1))]  # probabilities or logits would silently count as 1s
        if other.size:
            raise ValueError(f"{name} must hold only 0/1 (or bool) values, found {other.flat[0].item()!r}; "
                             f"threshold probabilities or logits first")
    p, y = p.astype(bool), y.astype(bool)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"preds and labels must be (examples, labels) arrays of one shape, got {p.shape} and "
                         f"{y.shape}")
    if not p.size:
        raise ValueError("preds and labels are empty")
    tp, fp, fn = (p & y).sum(0), (p & ~y).sum(0), (~p & y).sum(0)  # (labels,) each
    columns = [_prf(int(a), int(b), int(c)) for a, b, c in zip(tp, fp, fn)]
    micro = _prf(int(tp.sum()), int(fp.sum()), int(fn.sum()))
    macro = [float(np.mean([c[i] for c in columns])) for i in range(3)]
    return {"accuracy": float((p == y).all(1).mean()), "precision": micro[0], "recall": micro[1], "f1": micro[2],
            "macro_precision": macro[0], "macro_recall": macro[1], "macro_f1": macro[2],
            "per_label": {j: {"precision": c[0], "recall": c[1], "f1": c[2], "support": int(y[:, j].sum())}
                          for j, c in enumerate(columns)}}


def matthews_corrcoef(preds: Any, labels: Any) -> float:
    """Matthews correlation coefficient, in its multi-class form (Gorodkin's R_K); 0 when it is undefined."""
    p, y = _pair(preds, labels)
    index = {v: i for i, v in enumerate(set(p) | set(y))}
    k = len(index)
    cm = np.zeros((k, k), dtype=np.float64)
    for a, b in zip(p, y):
        cm[index[b], index[a]] += 1
    t, q = cm.sum(axis=1), cm.sum(axis=0)  # true and predicted counts per class
    c, s = np.trace(cm), cm.sum()
    cov_yp = c * s - t @ q
    cov_pp = s * s - q @ q
    cov_yy = s * s - t @ t
    if cov_pp * cov_yy == 0:
        return 0.0
    return float(cov_yp / math.sqrt(cov_pp * cov_yy))


def _floats(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _pair(preds, labels)
    if len(p) < 2:
        raise ValueError("a correlation needs at least two values")
    return np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r the way scipy's ``pearsonr`` computes it. A constant input (undefined: nan) is found by comparing
    values, since the mean of equal floats need not equal them (ten 0.1s centre to 1e-17s, not 0s, and r came out
    as rounding noise); two values give exactly +-1; each centred input is scaled by its largest magnitude before
    its norm is taken, so values near 1e200 or 1e-200 neither overflow nor underflow."""
    if (a == a[0]).all() or (b == b[0]).all():
        return float("nan")
    if len(a) == 2:
        return float(np.sign(a[1] - a[0]) * np.sign(b[1] - b[0]))
    units = []
    for x in (a, b):
        x = x - x.mean()
        scale = np.abs(x).max()
        units.append(x / (scale * np.linalg.norm(x / scale)))
    return float(np.clip(units[0] @ units[1], -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first position of each run of equal values
    ends = np.r_[starts[1:], len(xs)]
    run_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def pearson(preds: Any, labels: Any) -> float:
    """Pearson's correlation coefficient; ``nan`` when either input is constant."""
    return _corr(*_floats(preds, labels))


def spearman(preds: Any, labels: Any) -> float:
    """Spearman's rank correlation (Pearson on average ranks, so ties are handled); ``nan`` for a constant input
    or one holding nan or inf (a diverged model's outputs rank like any others, and could score 1.0)."""
    p, y = _floats(preds, labels)
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        return float("nan")
    return _corr(_average_ranks(p), _average_ranks(y))


# ----------------------------------------------------------------------------------------------------------------
# entity-level scores for tag sequences (seqeval's default and strict modes)
# ----------------------------------------------------------------------------------------------------------------

def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_'); an untyped 'B' -> ('B', '_')."""
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tags must be non-empty strings, got {tag!r}")
    return tag[0], tag[1:].split("-", 1)[-1] or "_"


def _chunk_ends(prev: str, cur: str, prev_type: str, cur_type: str) -> bool:
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and cur in ("B", "S", "O"):
        return True
    return prev not in ("O", ".") and prev_type != cur_type


def _chunk_starts(prev: str, cur: str, prev_type: str, cur_type: str) -> bool:
    if cur in ("B", "S"):
        return True
    if prev in ("E", "S", "O") and cur in ("E", "I"):
        return True
    return cur not in ("O", ".") and prev_type != cur_type


def get_entities(tags: Sequence[str], scheme: str | None = None) -> list[tuple[str, int, int]]:
    """The entities of one tag sequence as ``(type, first, last)`` (inclusive token indices).

    BIO / IOB2 tags ("B-PER", "I-PER", "O") and IOBES ("E-", "S-") are read like seqeval's default mode: an entity
    ends at O, at a B- or S-, after an E- or S-, or where the type changes; an I- or E- tag that does not continue an
    entity of its type starts a new one. A `scheme` ("IOB2" or "IOBES") reads them as seqeval's strict mode.
    """
    if scheme is not None:
        if scheme not in STRICT_SCHEMES:
            raise ValueError(f"scheme {scheme!r}: expected None (seqeval's default mode) or one of "
                             f"{', '.join(STRICT_SCHEMES)} (its strict mode)")
        return _strict_entities(tags, scheme)
    entities = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        cur, cur_type = _split_tag(tag)
        if _chunk_ends(prev, cur, prev_type, cur_type):
            entities.append((prev_type, begin, i - 1))
        if _chunk_starts(prev, cur, prev_type, cur_type):
            begin = i
        prev, prev_type = cur, cur_type
    return entities


# strict mode: the prefixes each scheme allows
STRICT_SCHEMES = {"IOB2": "BIO", "IOBES": "BIOES"}


def strict_scheme(tag_set: Sequence[str]) -> str | None:
    """The strict scheme a set of tags follows: "IOBES" when it has E- or S- tags, "IOB2" for B- and I- alone,
    None when some tag is neither "O" nor prefixed so (part-of-speech style tags make no entities)."""
    prefixes = {"O" if t == "O" else t[:2] for t in tag_set}
    if not prefixes - {"O"} or not prefixes <= {"O", "B-", "I-", "E-", "S-"}:
        return None
    return "IOBES" if prefixes & {"E-", "S-"} else "IOB2"


def _strict_entities(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """seqeval's strict mode: an entity is B- then I- of its type (IOB2; IOBES also needs a closing E-), or one
    S-; anything else (an I- or E- with no B- of its type before it, an IOBES entity never closed) is no entity."""
    allowed = STRICT_SCHEMES[scheme]
    parsed = [_split_tag(t) for t in tags]
    for tag, (prefix, _) in zip(tags, parsed):
        if prefix not in allowed:
            raise ValueError(f"tag {tag!r} is not an {scheme} tag (prefixes {', '.join(allowed)})")
    entities, i = [], 0
    while i < len(parsed):
        prefix, typ = parsed[i]
        if prefix == "S":
            entities.append((typ, i, i))
        if prefix != "B":
            i += 1
            continue
        j = i + 1
        while j < len(parsed) and parsed[j] == ("I", typ):
            j += 1
        if scheme == "IOB2":
            entities.append((typ, i, j - 1))
        elif j < len(parsed) and parsed[j] == ("E", typ):
            entities.append((typ, i, j))
            j += 1
        i = j
    return entities


def _sentences(tags: Sequence, name: str) -> list[list[str]]:
    seqs = list(tags)
    if not seqs:
        raise ValueError(f"{name} is empty")
    if all(isinstance(t, str) for t in seqs):
        return [seqs]  # one flat sequence
    if any(isinstance(t, str) for t in seqs):
        raise ValueError(f"{name} mixes tags and sequences of tags")
    return [list(s) for s in seqs]


def entity_f1(pred_tags: Sequence, true_tags: Sequence, scheme: str | None = None) -> dict:
    """Entity-level precision, recall and F1 (micro-averaged over all entities), plus per-type scores.

    Takes one tag sequence or a list of them (one per sentence; entities never cross sentences). An entity counts as
    correct only when its type, first and last token all match. Returns::

        {"precision", "recall", "f1",                                     # micro
         "per_type": {type: {"precision", "recall", "f1", "support"}}}   # support = true entities of that type

    An undefined ratio counts as 0, as in seqeval. `scheme` as in `get_entities` (strict mode when given).
    """
    pred, true = _sentences(pred_tags, "pred_tags"), _sentences(true_tags, "true_tags")
    if len(pred) != len(true):
        raise ValueError(f"pred_tags has {len(pred)} sentences, true_tags {len(true)}")
    pred_set, true_set = set(), set()
    for n, (ps, ts) in enumerate(zip(pred, true)):
        if len(ps) != len(ts):
            raise ValueError(f"sentence {n}: {len(ps)} predicted tags for {len(ts)} true tags")
        pred_set.update((n, *e) for e in get_entities(ps, scheme))
        true_set.update((n, *e) for e in get_entities(ts, scheme))
    hit = pred_set & true_set
    # each set counted by type in one pass: a pass per type made 80 types of 200k tags 2.5x seqeval's time
    hits, preds, trues = (Counter(e[1] for e in entities) for entities in (hit, pred_set, true_set))
    per_type = {}
    for typ in sorted(preds.keys() | trues.keys()):
        tp, np_, nt = hits[typ], preds[typ], trues[typ]
        p, r, f = _prf(tp, np_ - tp, nt - tp)
        per_type[typ] = {"precision": p, "recall": r, "f1": f, "support": nt}
    p, r, f = _prf(len(hit), len(pred_set) - len(hit), len(true_set) - len(hit))
    return {"precision": p, "recall": r, "f1": f, "per_type": per_type}


# ----------------------------------------------------------------------------------------------------------------
# SQuAD (the official v1.1 and v2.0 evaluation scripts)
# ----------------------------------------------------------------------------------------------------------------

_PUNCT = frozenset(string.punctuation)  # ASCII punctuation only, as in the official scripts
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def squad_normalize(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (official SQuAD rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(pred: str, gold: str, version: str) -> float:
    p, g = squad_normalize(pred).split(), squad_normalize(gold).split()
    if version == "2.0" and (not p or not g):
        return float(p == g)  # v2.0: an empty answer is right only against an empty one
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def _check_version(version: str) -> str:
    v = str(version).lstrip("v")
    if v not in ("1.1", "2.0"):
        raise ValueError(f"version must be '1.1' or '2.0', got {version!r}")
    return v


def squad_em_f1(prediction: str, gold_answers: Sequence[str], *, version: str = "2.0") -> tuple[float, float]:
    """(exact match, token F1) of one prediction, each the maximum over the gold answers, in [0, 1].

    With ``version="2.0"`` (the default; it is defined for every input) gold answers that normalise to nothing are
    dropped, an empty gold list means "unanswerable" (only an empty prediction is right), and F1 between two empty
    answers is 1. ``version="1.1"`` keeps the v1.1 script's rules: every gold answer counts, F1 with no common token
    is 0, and an empty gold list is an error.
    """
    version = _check_version(version)
    if not isinstance(prediction, str):
        raise ValueError(f"prediction must be a string, got {type(prediction).__name__}")
    golds = [gold_answers] if isinstance(gold_answers, str) else list(gold_answers)
    if version == "2.0":
        golds = [g for g in golds if squad_normalize(g)] or [""]
    elif not golds:
        raise ValueError("SQuAD v1.1 scoring needs at least one gold answer")
    pred_norm = squad_normalize(prediction)
    em = max(float(pred_norm == squad_normalize(g)) for g in golds)
    f = max(_token_f1(prediction, g, version) for g in golds)
    return em, f


def _questions(dataset: Any) -> tuple[list[tuple[str, list[str]]], str | None]:
    """(qid, gold answer texts) for each question, and the version the dataset declares (or None)."""
    declared = None
    if isinstance(dataset, Mapping):
        if "data" not in dataset:
            raise ValueError("a SQuAD dataset dict needs a 'data' list of articles")
        declared = dataset.get("version")
        dataset = dataset["data"]
    items = list(dataset)
    questions, impossible = [], False
    for item in items:
        if isinstance(item, Mapping):  # an article of the official JSON
            for para in item.get("paragraphs", ()):
                for qa in para.get("qas", ()):
                    impossible = impossible or bool(qa.get("is_impossible"))
                    questions.append((qa["id"], [a["text"] for a in qa.get("answers", ())]))
        elif hasattr(item, "qid") and hasattr(item, "answers"):  # a SquadExample of bertkit.data.readers
            impossible = impossible or bool(getattr(item, "is_impossible", False))
            questions.append((item.qid, [a[0] if isinstance(a, (tuple, list)) else a for a in item.answers]))
        else:
            raise ValueError(f"cannot read a SQuAD question or article from {type(item).__name__}")
    if declared is not None:
        version = _check_version(declared)
    else:
        version = "2.0" if impossible else None
    return questions, version


def squad_best_thresholds(predictions: Mapping[str, str], na_probs: Mapping[str, float], dataset: Any) -> dict:
    """The official SQuAD v2.0 script's best no-answer thresholds (its ``--na-prob-file`` output): with the
    questions taken in increasing ``na_probs`` (a no-answer score per question, e.g. the null score minus the best
    span's), answering those up to a threshold and abstaining on the rest, the best exact match and F1 reachable
    (percent) and the thresholds that reach them: ``best_exact``, ``best_exact_thresh``, ``best_f1``,
    ``best_f1_thresh``. When abstaining everywhere is best the threshold is one below every score, so that
    predicting with it abstains everywhere (the official script says 0.0, which for null odds, negative as
    often as not, would answer many). Every question needs a prediction and a no-answer score."""
    questions, _ = _questions(dataset)
    if not questions:
        raise ValueError("the SQuAD dataset has no questions")
    missing = [q for q, _ in questions if q not in predictions or q not in na_probs]
    if missing:
        raise ValueError(f"{len(missing)} questions lack a prediction or a no-answer score, e.g. {missing[0]!r}")
    has_answer = {qid: bool(golds) for qid, golds in questions}
    scores = {qid: squad_em_f1(predictions[qid], golds, version="2.0") for qid, golds in questions}
    out = {}
    below_all = min(float(na_probs[q]) for q in scores) - 1.0
    for i, name in enumerate(("exact", "f1")):
        current = best = sum(1 for v in has_answer.values() if not v)  # abstaining everywhere
        threshold = below_all
        for qid in sorted(na_probs, key=lambda q: na_probs[q]):
            if qid not in scores:
                continue
            current += scores[qid][i] if has_answer[qid] else (-1 if predictions[qid] else 0)
            if current > best:
                best, threshold = current, float(na_probs[qid])
        out[f"best_{name}"] = 100.0 * best / len(scores)
        out[f"best_{name}_thresh"] = threshold
    return out


def squad_evaluate(predictions: Mapping[str, str], dataset: Any, *, version: str | None = None) -> dict:
    """Score predicted answer texts against a SQuAD dataset, in percent, like the official scripts.

    ``dataset`` is the parsed official JSON (a dict with ``"data"``), its list of articles, or a list of
    `bertkit.data.readers.SquadExample`. The version is ``version`` if given, else the one the JSON declares, else
    2.0 when some question is unanswerable, else 1.1. Returns ``{"exact_match", "f1", "total"}``; for v2.0 also
    ``HasAns_exact/HasAns_f1/HasAns_total`` and ``NoAns_exact/NoAns_f1/NoAns_total`` (each group only when it has
    questions, as in the official script). A question with no prediction scores 0 (with a warning), as in v1.1;
    predictions for unknown ids are ignored.
    """
    questions, declared = _questions(dataset)
    if not questions:
        raise ValueError("the SQuAD dataset has no questions")
    version = _check_version(version or declared or "1.1")
    if not isinstance(predictions, Mapping):
        raise ValueError("predictions must be a dict of question id -> answer text")
    groups: dict[str, list[tuple[float, float]]] = {"all": [], "HasAns": [], "NoAns": []}
    missing = 0
    for qid, golds in questions:
        pred = predictions.get(qid)
        if pred is None:
            missing += 1
            score = (0.0, 0.0)
        else:
            if not isinstance(pred, str):
                raise ValueError(f"the prediction for question {qid!r} must be a string, got {type(pred).__name__}")
            if version == "1.1" and not golds:
                raise ValueError(f"question {qid!r} has no gold answer; score it with version='2.0'")
            score = squad_em_f1(pred, golds, version=version)
        groups["all"].append(score)
        groups["HasAns" if golds else "NoAns"].append(score)
    if missing:
        warn(f"{missing} of {len(questions)} questions have no prediction; they score 0")

    def mean(scores: list, i: int) -> float:
        return 100.0 * sum(s[i] for s in scores) / len(scores)

    out = {"exact_match": mean(groups["all"], 0), "f1": mean(groups["all"], 1), "total": len(groups["all"])}
    if version == "2.0":
        for name in ("HasAns", "NoAns"):
            if groups[name]:
                out.update({f"{name}_exact": mean(groups[name], 0), f"{name}_f1": mean(groups[name], 1),
                            f"{name}_total": len(groups[name])})
    return out
