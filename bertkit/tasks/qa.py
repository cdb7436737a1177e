"""Extractive question answering (SQuAD v1.1 / v2.0): examples -> windows -> batches -> objective -> answers.

- Windows: each example is ``[CLS] question [SEP] context-window [SEP]``. The question keeps its first
  `max_query_length` sub-tokens (run_squad.py's cut; run_qa.py keeps it whole: the same windows on SQuAD v1.1 dev,
  whose longest question has 38); the context is cut into windows of at most ``max_seq_length - len(question) - 3``
  sub-tokens, and ``doc_stride`` is the number of sub-tokens SHARED by consecutive windows (the convention of
  transformers' ``run_qa.py`` and its tokenizers' ``stride``; the original BERT code's doc_stride was the step
  between window starts instead). The context is tokenized once on its own, with character offsets, so every answer
  maps back to an exact character span of the original context; the windows' ids, token types and offsets are
  those of transformers' tokenizers (``truncation="only_second"``, ``return_overflowing_tokens``, ``stride``).
- Training labels: the start / end sub-token of the (first) gold answer when it lies fully inside the window, else
  position 0 ([CLS]); unanswerable (v2.0) questions are labelled [CLS] in every window. The answer's sub-tokens are
  those its characters overlap, so whitespace around an answer text adds no token (run_qa.py's character rule
  takes the neighbouring token then, and starts an answer on a window's last context token at the [SEP]).
- Max context: a context sub-token is scored only in the window where it has the most context, the largest
  ``min(tokens left of it, tokens right of it) + 0.01 * window length`` (BERT's ``_check_is_max_context``), the
  earlier window on ties. So a start position is considered exactly once per example. transformers' run_qa.py
  does not do this (its utils_qa applies it only to features that carry a ``token_is_max_context``), so on
  contexts longer than one window its answers may differ.
- Post-processing (`postprocess`): per window, the `n_best` highest start logits among the context tokens the
  window owns and the `n_best` highest end logits among its context tokens (restricting before taking the top n,
  where BERT took the top n of the whole sequence and then filtered, so no valid candidate is crowded out); pairs
  with start <= end and at most `max_answer_length` tokens, scored start logit + end logit; the answer is the
  context substring from the start token's first character to the end token's last. For v2.0 the null score is
  the minimum over the example's windows of the [CLS] start + end logits, and "" is predicted when
  ``null score - best non-null score > null_threshold``. transformers' utils_qa takes the top n of the whole
  padded sequence (question, [CLS], [SEP] and padding logits included) before filtering, so with the same
  max-context rule it keeps a subset of these candidates: its best span is never better, and the same whenever
  no such logit crowds out a candidate (tests/tasks/test_qa.py compares the two on SQuAD). When no span is
  valid the answer is "" (utils_qa and run_squad.py answer "empty").
- `QABatches` reuses `ClassificationBatches`' seeded per-epoch order and exact resume state; `QAObjective` gives the
  trainer (start CE + end CE) / 2 summed over windows (term "qa") and "acc_qa" (both ends right).
- `evaluate_qa` scores predictions with `bertkit.metrics.squad_evaluate`; `run_finetune_qa`, `run_evaluate_qa`
  and `run_predict_qa` are the command-line jobs.
- `bertkit predict` and `evaluate` answer a big file a chunk of questions at a time (`iter_predict_answers`, over
  `classify.in_chunks`): every window of a question lies in its chunk, so its answer is the whole file's; predict
  writes each chunk's answers, n-best lists and null odds as they come (`_JsonObjectLines`), evaluate keeps
  only what the scores read (`_score_chunks`), so memory holds one chunk's windows and logits, not the file's.
"""
from __future__ import annotations

import contextlib
import json
import time
from bisect import bisect_left
from functools import partial
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics as M
from ..auto import AutoModelForQuestionAnswering, AutoTokenizer
from ..data.readers import SquadExample, read_squad
from ..train import distributed as dist
from .classify import (IGNORE, ClassificationBatches, FinetuneObjective, in_chunks, labelled, packed_to, pad_inputs,
                       predict_batches)
from .finetune import (FinetuneArgs, load_saved, prediction_lines, run_seeds, settings_for, split_args, to_predict,
                       train_keep_best, window_length, write_eval)
from .flags import check_ints

__all__ = ["QAFeature", "context_windows", "max_context_owner", "encode_qa", "collate_qa", "QABatches",
           "QAObjective", "predict_qa_logits", "postprocess", "evaluate_qa", "squad_metrics", "predict_answers",
           "iter_predict_answers", "FinetuneQAArgs", "run_finetune_qa", "run_evaluate_qa", "run_predict_qa"]


@dataclass(frozen=True, eq=False)
class QAFeature:
    """One window of one example. Context sub-token ``k`` of the window sits at ``input_ids[offset + k]``;
    ``offsets[k]`` is its character span in the context, ``words[k]`` its word index in the context, ``owned[k]``
    whether this window has its max context. ``start_position`` / ``end_position`` index ``input_ids`` (0 =
    [CLS]: no answer in this window); None when unlabelled."""
    input_ids: list[int]
    token_type_ids: list[int]
    example: int
    offset: int
    offsets: np.ndarray        # (window tokens, 2) int64
    words: np.ndarray          # (window tokens,) int64
    owned: np.ndarray          # (window tokens,) bool
    start_position: int | None = None
    end_position: int | None = None


def context_windows(n: int, budget: int, doc_stride: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) covering `n` context tokens: at most `budget` tokens each, consecutive windows
    sharing `doc_stride` tokens (the last window ends at `n`, so it may be shorter), as transformers' tokenizers cut
    overflowing tokens with `stride`. One empty window when n=0."""
    if not 0 <= doc_stride < budget:
        raise ValueError(f"doc_stride must be in [0, {budget}) for a window of {budget} context tokens, "
                         f"got {doc_stride}")
    spans, start = [], 0
    while True:
        end = min(start + budget, n)
        spans.append((start, end))
        if end >= n:
            return spans
        start += budget - doc_stride


def max_context_owner(n: int, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """(n,) index of the window where each token has the most context: the largest
    ``min(left, right) + 0.01 * window length``, the earlier window on ties."""
    best = np.full(n, -np.inf)
    owner = np.full(n, -1, dtype=np.int64)
    for k, (s, e) in enumerate(spans):
        pos = np.arange(s, e)
        score = np.minimum(pos - s, e - 1 - pos) + 0.01 * (e - s)
        better = score > best[s:e]
        best[s:e] = np.where(better, score, best[s:e])
        owner[s:e] = np.where(better, k, owner[s:e])
    return owner


def _answer_tokens(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """First and last context token overlapping the characters [start_char, end_char)."""
    ends, starts = offsets[:, 1], offsets[:, 0]
    first = int(np.searchsorted(ends, start_char, side="right"))   # first token ending after start_char
    last = int(np.searchsorted(starts, end_char, side="left")) - 1  # last token starting before end_char
    return first, last


def encode_qa(tok, examples: Sequence[SquadExample], max_seq_length: int = 384, doc_stride: int = 128,
              max_query_length: int = 64, *, labels: bool = True, source: str = "") -> list[QAFeature]:
    """The windows of every example (see the module docstring), in example order. With `labels`, answerable
    examples are labelled by their first answer; an answer that covers no context token is an error naming the
    question (and `source`, the file)."""
    where = f"{source}: " if source else ""
    if max_query_length < 1:
        raise ValueError(f"max_query_length must be >= 1, got {max_query_length}")
    examples = list(examples)
    if not examples:
        return []
    questions = tok([e.question for e in examples], add_special_tokens=False)["input_ids"]
    uniq, ctx_ids, ctx_offsets, ctx_words = _tokenize_contexts(tok, examples)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    feats: list[QAFeature] = []
    windows: dict[tuple[int, int], tuple[list, np.ndarray]] = {}
    for i, (ex, q) in enumerate(zip(examples, questions)):
        q = q[:max_query_length]
        c = uniq[ex.context]
        ids, offsets, words = ctx_ids[c], ctx_offsets[c], ctx_words[c]
        budget = _context_budget(max_seq_length, len(q), doc_stride, ex.qid, where)
        spans, owner = _windows_of(windows, c, len(ids), budget, doc_stride)
        answer = _answer_span(ex, offsets, where) if labels else None
        head = [cls] + q + [sep]
        for k, (s, e) in enumerate(spans):
            input_ids = head + ids[s:e] + [sep]
            types = [0] * len(head) + [1] * (e - s + 1)
            sp = ep = None
            if labels:
                sp = ep = 0
                if answer is not None and s <= answer[0] and answer[1] < e:
                    sp, ep = answer[0] - s + len(head), answer[1] - s + len(head)
            feats.append(QAFeature(input_ids, types, i, len(head), offsets[s:e], words[s:e], owner[s:e] == k,
                                   sp, ep))
    return feats


def _tokenize_contexts(tok, examples: Sequence[SquadExample]
                       ) -> tuple[dict[str, int], list[list[int]], list[np.ndarray], list[np.ndarray]]:
    """Each distinct context tokenized once (a SQuAD paragraph has several questions): its index by text, and per
    index its token ids, (tokens, 2) character offsets and word indices."""
    uniq: dict[str, int] = {}
    for e in examples:
        uniq.setdefault(e.context, len(uniq))
    enc = tok(list(uniq), add_special_tokens=False, return_offsets_mapping=True)
    offsets = [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in enc["offset_mapping"]]  # (tokens, 2)
    words = [np.asarray([-1 if w is None else w for w in enc.word_ids(i)], dtype=np.int64) for i in range(len(uniq))]
    return uniq, enc["input_ids"], offsets, words


def _context_budget(max_seq_length: int, question_length: int, doc_stride: int, qid: str, where: str) -> int:
    """Context tokens per window, besides the question, [CLS] and two [SEP]; windows must move forward."""
    budget = max_seq_length - question_length - 3
    if budget <= doc_stride:
        raise ValueError(f"{where}question {qid}: max_seq_length {max_seq_length} leaves {budget} context "
                         f"tokens per window after the {question_length}-token question, not more than doc_stride "
                         f"{doc_stride}; raise max_seq_length or lower doc_stride / max_query_length")
    return budget


def _windows_of(cache: dict[tuple[int, int], tuple[list, np.ndarray]], context: int, n: int, budget: int,
                doc_stride: int) -> tuple[list, np.ndarray]:
    """The windows of a context and each token's owner window, computed once per (context, budget): the
    questions of a paragraph share them."""
    if (context, budget) not in cache:
        spans = context_windows(n, budget, doc_stride)
        cache[context, budget] = (spans, max_context_owner(n, spans))
    return cache[context, budget]


def _answer_span(ex: SquadExample, offsets: np.ndarray, where: str) -> tuple[int, int] | None:
    """The first and last context token of the example's first answer; None when it has no answer."""
    if not ex.answers or ex.is_impossible:
        return None
    text, start_char = ex.answers[0]
    first, last = _answer_tokens(offsets, start_char, start_char + len(text))
    if first > last:
        raise ValueError(f"{where}question {ex.qid}: answer {text!r} at {start_char} covers no token of "
                         f"the context")
    return first, last


def collate_qa(features: Sequence[QAFeature], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest window of the batch; start/end positions only when every feature has them."""
    batch = pad_inputs([f.input_ids for f in features], [f.token_type_ids for f in features], pad_id)
    if all(f.start_position is not None for f in features):
        batch["start_positions"] = torch.tensor([f.start_position for f in features])
        batch["end_positions"] = torch.tensor([f.end_position for f in features])
    return batch


class QABatches(ClassificationBatches):
    """`ClassificationBatches` (seeded order per epoch, exact resume) over QA windows."""

    def collate(self, features: Sequence[QAFeature]) -> dict[str, torch.Tensor]:
        return collate_qa(features, self.pad_id)


def _logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"], packing=batch.get("packing"))
    return out.start_logits.float(), out.end_logits.float()


class QAObjective(FinetuneObjective):
    """(start CE + end CE) / 2 summed over the windows (term "qa", the halving of transformers'
    BertForQuestionAnswering loss), and "acc_qa": windows whose argmax start and end are both right."""

    @staticmethod
    def counts(batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"qa": int(labelled(batch["start_positions"]).sum())}

    def forward(self, batch: dict[str, torch.Tensor]):
        start, end = _logits(self.model, batch)  # (batch, seqlen) each
        sp, ep = batch["start_positions"], batch["end_positions"]
        loss = (F.cross_entropy(start, sp, ignore_index=IGNORE, reduction="sum")
                + F.cross_entropy(end, ep, ignore_index=IGNORE, reduction="sum")) / 2
        with torch.no_grad():
            stats = {"acc_qa": ((start.argmax(-1) == sp) & (end.argmax(-1) == ep)).sum()}
        return {"qa": loss}, stats


@torch.no_grad()
def predict_qa_logits(model, features: Sequence[QAFeature], batch_size: int = 64, pad_id: int | None = None,
                      progress: bool | None | Callable[[int], Any] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) float32 logits of each window (its own length), in the order of `features`; batches hold
    windows of similar length. `progress` as in `predict_batches`."""
    pad_id = (model.config.pad_token_id or 0) if pad_id is None else pad_id
    device = next(model.parameters()).device

    def run(feats):
        batch = collate_qa([QAFeature(f.input_ids, f.token_type_ids, 0, 0, None, None, None) for f in feats], pad_id)
        start, end = _logits(model, packed_to(batch, device))
        start, end = start.cpu().numpy(), end.cpu().numpy()  # (batch, width)
        return [(start[row, :len(f.input_ids)], end[row, :len(f.input_ids)]) for row, f in enumerate(feats)]

    return predict_batches(model, features, run, batch_size, progress=progress)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first, ties by lower index (google-research/bert's sorted n-best;
    a partition would pick among values tied at the k-th place arbitrarily, and bf16 logits tie often)."""
    return np.argsort(-values, kind="stable")[:k]


def postprocess(features: Sequence[QAFeature], logits: Sequence[tuple[np.ndarray, np.ndarray]],
                examples: Sequence[SquadExample], *, n_best: int = 20, max_answer_length: int = 30,
                version_2: bool = False, null_threshold: float = 0.0) -> dict[str, dict[str, Any]]:
    """Per question id: ``text`` (the answer, "" for a predicted no-answer), ``start`` / ``end`` (its character
    span in the context), ``score`` (best non-null start + end logit, None when no span is valid),
    ``null_score`` (min over windows of the [CLS] start + end logits) and ``nbest`` ([(text, start, end, score)],
    best first, at most n_best). See the module docstring for the rules."""
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"n_best and max_answer_length must be >= 1, got {n_best} and {max_answer_length}")
    if len(features) != len(logits):
        raise ValueError(f"{len(features)} features but {len(logits)} logit pairs")
    by_example: dict[int, list[int]] = {}
    for i, f in enumerate(features):
        by_example.setdefault(f.example, []).append(i)
    out: dict[str, dict[str, Any]] = {}
    for e, ex in enumerate(examples):
        cands: list[tuple[float, int, int]] = []   # (score, start char, end char)
        null = np.inf
        for i in by_example.get(e, ()):
            f = features[i]
            start, end = logits[i]
            null = min(null, float(start[0]) + float(end[0]))
            n = len(f.offsets)
            if n == 0:
                continue
            s_log = start[f.offset:f.offset + n].astype(np.float64)
            e_log = end[f.offset:f.offset + n].astype(np.float64)
            owned = np.flatnonzero(f.owned)
            if not len(owned):
                continue
            starts = owned[_top(s_log[owned], n_best)]
            ends = _top(e_log, n_best)
            length = ends[None, :] - starts[:, None]                      # (starts, ends)
            ok = (length >= 0) & (length < max_answer_length)
            si, ei = np.nonzero(ok)
            for a, b in zip(starts[si], ends[ei]):
                cands.append((s_log[a] + e_log[b], int(f.offsets[a, 0]), int(f.offsets[b, 1])))
        if null == np.inf:
            raise ValueError(f"question {ex.qid}: no window")
        cands.sort(key=lambda c: -c[0])
        cands = cands[:n_best]
        nbest = [(ex.context[s:t], s, t, float(sc)) for sc, s, t in cands]
        best = nbest[0] if nbest else None
        predict_null = best is None or (version_2 and null - best[3] > null_threshold)
        text, s, t = ("", 0, 0) if predict_null else best[:3]
        out[ex.qid] = {"text": text, "start": s, "end": t, "score": best[3] if best else None,
                       "null_score": null, "nbest": nbest}
    return out


def evaluate_qa(model, features: Sequence[QAFeature], examples: Sequence[SquadExample], *, batch_size: int = 64,
                n_best: int = 20, max_answer_length: int = 30, version_2: bool | None = None,
                null_threshold: float = 0.0, pad_id: int | None = None, progress: bool | None = None
                ) -> dict[str, Any]:
    """SQuAD exact match and F1 in percent (``exact``, ``f1``; for v2.0 also ``HasAns_*`` / ``NoAns_*``) and ``n``
    (questions). `version_2` None: v2.0 when some example is unanswerable. Predicted a chunk of questions at a
    time (`_chunk_answers`: one chunk's logits and n-best lists in memory, one progress bar over the questions)."""
    if not examples:
        raise ValueError("no evaluation questions")
    examples = list(examples)
    if version_2 is None:
        version_2 = any(e.is_impossible for e in examples)
    parts = _chunk_answers(model, examples, _given_windows(features), batch_size=batch_size, pad_id=pad_id,
                           progress=progress, n_best=n_best, max_answer_length=max_answer_length,
                           version_2=version_2, null_threshold=null_threshold)
    return _score_chunks(parts, examples, version_2)


def _given_windows(features: Sequence[QAFeature]) -> Callable[[range], list[QAFeature]]:
    """The windows of a chunk of questions taken from already encoded `features` (any order; each question's
    windows keep theirs), renumbered from the chunk's first question as `postprocess` of the chunk reads them."""
    order = sorted(range(len(features)), key=lambda i: features[i].example)   # stable: window order kept
    keys = [features[i].example for i in order]

    def windows(part: range) -> list[QAFeature]:
        picked = [features[i] for i in order[bisect_left(keys, part.start):bisect_left(keys, part.stop)]]
        return picked if part.start == 0 else [replace(f, example=f.example - part.start) for f in picked]

    return windows


def _score_chunks(parts: Iterable[dict[str, dict[str, Any]]], examples: Sequence[SquadExample], version_2: bool
                  ) -> dict[str, Any]:
    """`score_predictions` of `postprocess` outputs that come a chunk at a time, keeping of each answer only what
    the scores read (not its n-best list), so memory holds one chunk's lists. Equal to scoring them together: a
    repeated question id keeps its first place and its last answer, as `postprocess` of them all."""
    kept: dict[str, dict[str, Any]] = {}
    for preds in parts:
        kept.update((q, {**p, "nbest": p["nbest"][:1]}) for q, p in preds.items())
    return score_predictions(kept, examples, version_2)


def score_predictions(preds: dict[str, dict[str, Any]], examples: Sequence[SquadExample], version_2: bool
                      ) -> dict[str, Any]:
    """`postprocess`'s predictions scored: `squad_metrics` of the answers, and for v2.0, as the official script
    given the null odds, the best --null-threshold and what it reaches. The sweep answers each question with
    its best span (the answers were cut at the current threshold, so a better one above it would be missed)."""
    metrics = squad_metrics({q: p["text"] for q, p in preds.items()}, examples, version_2)
    if version_2:
        spans = {q: p["nbest"][0][0] if p["nbest"] else "" for q, p in preds.items()}
        metrics.update(M.squad_best_thresholds(spans, null_odds(preds), examples))
    return metrics


def null_odds(preds: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Per question, the null score minus the best span's (0 for the span when none is valid), as google-research's
    run_squad.py writes null_odds.json: a no-answer is predicted when this exceeds --null-threshold."""
    return {q: p["null_score"] - (p["score"] if p["score"] is not None else 0.0) for q, p in preds.items()}


def nbest_json(preds: dict[str, dict[str, Any]], version_2: bool = False, n_best: int = 20
               ) -> dict[str, list[dict[str, Any]]]:
    """Per question, its n-best spans, best first, with the softmax of their scores over the list (run_squad.py's
    nbest_predictions.json): text, probability, score (start + end logit) and character start / end. With v2.0
    the no-answer ("", its null score) competes for the `n_best` places and is added back last when it loses
    them, as run_squad.py and utils_qa put it, so the list and its softmax are theirs."""
    out = {}
    for q, p in preds.items():
        nbest = list(p["nbest"])
        if version_2:
            null = ("", 0, 0, p["null_score"])
            ranked = sorted([*nbest, null], key=lambda c: -c[3])[:n_best]
            nbest = ranked if null in ranked else nbest[:n_best] + [null]
        scores = np.array([c[3] for c in nbest], dtype=np.float64)
        weights = np.exp(scores - scores.max()) if len(scores) else scores
        probs = weights / weights.sum() if len(scores) else scores
        out[q] = [{"text": t, "probability": float(pr), "score": float(sc), "start": a, "end": b}
                  for (t, a, b, sc), pr in zip(nbest, probs)]
    return out


def squad_metrics(answers: dict[str, str], examples: Sequence[SquadExample], version_2: bool) -> dict[str, Any]:
    """`squad_evaluate` with its keys renamed for run results: exact_match -> exact, total -> n."""
    m = M.squad_evaluate(answers, examples, version="2.0" if version_2 else "1.1")
    out = {"exact": m.pop("exact_match"), "f1": m.pop("f1")}
    n = m.pop("total")
    return {**out, **m, "n": n}


def _chunk_answers(model, examples: list[SquadExample], windows: Callable[[range], list[QAFeature]], *,
                   batch_size: int, pad_id: int | None, progress: bool | None, **post) -> Iterator[dict[str, dict]]:
    """The chunk loop of QA predict and evaluate: `postprocess` (with `post`) of each chunk of questions
    (`classify.in_chunks`, one progress bar over the questions), `windows(chunk)` giving every window of its
    questions (numbered from its first), so their answers are those of the whole input, and memory holds one
    chunk's windows and logits."""
    for part, shown in in_chunks(len(examples), batch_size, progress):
        feats = windows(part)
        logits = predict_qa_logits(model, feats, batch_size, pad_id, shown)
        yield postprocess(feats, logits, examples[part.start:part.stop], **post)


def iter_predict_answers(model, tok, examples: Sequence[SquadExample], *, max_seq_length: int = 384,
                         doc_stride: int = 128, max_query_length: int = 64, n_best: int = 20,
                         max_answer_length: int = 30, version_2: bool = False, null_threshold: float = 0.0,
                         batch_size: int = 64, progress: bool | None = None, source: str = ""
                         ) -> Iterator[dict[str, dict[str, Any]]]:
    """`predict_answers`, a chunk of questions at a time (`_chunk_answers`), each chunk's windows encoded as it
    comes. `source` names the file in a window error."""
    examples = list(examples)
    max_seq_length = min(max_seq_length, model.config.max_position_embeddings)

    def windows(part: range) -> list[QAFeature]:
        return encode_qa(tok, examples[part.start:part.stop], max_seq_length, doc_stride, max_query_length,
                         labels=False, source=source)

    yield from _chunk_answers(model, examples, windows, batch_size=batch_size, pad_id=tok.pad_token_id,
                              progress=progress, n_best=n_best, max_answer_length=max_answer_length,
                              version_2=version_2, null_threshold=null_threshold)


def predict_answers(model, tok, examples: Sequence[SquadExample], *, max_seq_length: int = 384,
                    doc_stride: int = 128, max_query_length: int = 64, n_best: int = 20, max_answer_length: int = 30,
                    version_2: bool = False, null_threshold: float = 0.0, batch_size: int = 64,
                    progress: bool | None = None) -> dict[str, dict[str, Any]]:
    """`postprocess` output (answer text, span, scores, n-best) for each question of `examples`, predicted a
    chunk at a time (`iter_predict_answers`)."""
    out: dict[str, dict[str, Any]] = {}
    for part in iter_predict_answers(model, tok, examples, max_seq_length=max_seq_length, doc_stride=doc_stride,
                                     max_query_length=max_query_length, n_best=n_best,
                                     max_answer_length=max_answer_length, version_2=version_2,
                                     null_threshold=null_threshold, batch_size=batch_size, progress=progress):
        out.update(part)   # a repeated id: its first place, its last answer, as `postprocess` of them all
    return out


# ---------------------------------------------------------------------------------------------------- jobs

@dataclass
class FinetuneQAArgs(FinetuneArgs):
    output: str = "runs/qa"
    epochs: float = 2.0
    lr: float = 3e-5
    batch_size: int = 12
    max_seq_length: int = 384
    doc_stride: int = 128             # sub-tokens shared by consecutive windows of a long context
    max_query_length: int = 64
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0
    version_2_with_negative: bool = False   # also on when the data has an unanswerable question

    def __post_init__(self):
        super().__post_init__()
        _check_qa(self)


def _check_qa(settings) -> None:
    """The window and answer settings, before a run trains (or `evaluate` / `predict` run the model)."""
    check_ints(settings, ("max_query_length", "n_best", "max_answer_length"))
    check_ints(settings, ("doc_stride",), least=0)


def _read(path: str, what: str, strict: bool = True) -> list[SquadExample]:
    """Questions of a SQuAD file; `strict=False` (scoring: the official script compares answer texts only)
    warns about answer offsets that do not match their context instead of refusing the file."""
    examples = read_squad(path, strict=strict)
    if not examples:
        raise ValueError(f"{path}: no {what} questions")
    return examples


def run_finetune_qa(args: FinetuneQAArgs) -> dict[str, Any]:
    """Fine-tune `args.model` for extractive QA on SQuAD data (JSON, or flat records: `read_squad`); keep the best
    checkpoint by dev F1. Same run layout as `run_finetune_classify` (eval_results.json: exact / f1, HasAns_* /
    NoAns_* for v2.0)."""
    dist.setup()
    # the dev answers are scored by their text (as `evaluate`): offsets that miss warn there, only training needs them
    train, dev = _read(args.train, "training"), _read(args.dev, "dev", strict=False)
    version_2 = args.version_2_with_negative or any(e.is_impossible for e in train + dev)
    tok = AutoTokenizer.from_pretrained(args.model)
    max_len = window_length(args)
    enc = dict(max_seq_length=max_len, doc_stride=args.doc_stride, max_query_length=args.max_query_length)
    version = "2.0" if version_2 else "1.1"
    # said before the windows are cut: SQuAD's 88k training questions take most of a minute on a CPU
    dist.print0(f"SQuAD v{version} QA: {len(train):,} training questions of {args.train}, {len(dev):,} dev questions "
                f"of {args.dev}; cutting them into windows of {max_len} tokens")
    started = time.monotonic()
    train_feats = encode_qa(tok, train, **enc, source=args.train)
    dev_feats = encode_qa(tok, dev, **enc, labels=False, source=args.dev)
    dist.print0(f"{len(train_feats):,} training and {len(dev_feats):,} dev windows "
                f"({time.monotonic() - started:.0f} s); model {args.model}")
    post = dict(n_best=args.n_best, max_answer_length=args.max_answer_length, version_2=version_2,
                null_threshold=args.null_threshold)

    def run_one(seed: int, out: Path) -> dict[str, Any]:
        batch_size = min(args.batch_size, len(train_feats))
        batches = QABatches(train_feats, batch_size, pad_id=tok.pad_token_id, seed=seed, **split_args(args))
        return train_keep_best(
            args, seed, out, partial(AutoModelForQuestionAnswering.from_pretrained, args.model), tok, batches,
            QAObjective, lambda m: evaluate_qa(m, dev_feats, dev, batch_size=max(64, batch_size),
                                               pad_id=tok.pad_token_id, progress=args.progress, **post), "f1",
            {"task": "qa", "version": version, "num_train": len(train), "num_dev": len(dev),
             "train_windows": len(train_feats), "dev_windows": len(dev_feats)},
            {**enc, "n_best": args.n_best, "max_answer_length": args.max_answer_length,
             "null_threshold": args.null_threshold, "version_2_with_negative": version_2})

    results = run_seeds(args, Path(args.output), run_one, "f1", {"task": "qa", "version": version})
    dist.cleanup()
    return results


def _qa_settings(model, examples, max_seq_length, doc_stride, max_query_length, n_best, max_answer_length,
                 null_threshold, version_2) -> dict[str, Any]:
    """The keyword arguments of `predict_answers` for `evaluate` / `predict`: each as given, else as fine-tuned
    (`settings_for`); v2.0 also when `examples` hold an unanswerable question."""
    s = settings_for(model, FinetuneQAArgs, max_seq_length=max_seq_length, doc_stride=doc_stride,
                     max_query_length=max_query_length, n_best=n_best, max_answer_length=max_answer_length,
                     null_threshold=null_threshold, version_2_with_negative=version_2 or None)
    s["max_seq_length"] = min(s["max_seq_length"], model.config.max_position_embeddings)
    s["version_2"] = s.pop("version_2_with_negative") or any(e.is_impossible for e in examples)
    _check_qa(SimpleNamespace(**s))
    return s


def run_evaluate_qa(model_dir: str, data: str, *, output: str | None = None, batch_size: int = 64,
                    max_seq_length: int | None = None, doc_stride: int | None = None,
                    max_query_length: int | None = None, n_best: int | None = None,
                    max_answer_length: int | None = None, null_threshold: float | None = None,
                    version_2: bool | None = None, device: str | None = None, compile: bool = False
                    ) -> dict[str, Any]:
    """SQuAD exact match / F1 of a fine-tuned QA model on a SQuAD file (`read_squad`; v2.0 when `version_2` or when
    the file has unanswerable questions); printed and written as JSON to `output` (default
    `<model_dir>/eval_<data name>.json`). Settings left None are those the model was fine-tuned with."""
    model, tok = load_saved(AutoModelForQuestionAnswering, model_dir, device, compile)
    examples = _read(data, "evaluation", strict=False)
    s = _qa_settings(model, examples, max_seq_length, doc_stride, max_query_length, n_best, max_answer_length,
                     null_threshold, version_2)
    parts = iter_predict_answers(model, tok, examples, batch_size=batch_size, source=data, **s)  # a chunk at a time
    metrics = _score_chunks(parts, examples, s["version_2"])
    return write_eval(metrics, model_dir, data, output, "questions")


class _JsonObjectLines:
    """A JSON object written entry by entry through `write` (`prediction_lines`), byte for byte what
    ``json.dumps(whole, indent=2, ensure_ascii=False)`` and a newline give, without holding the whole: each
    entry's line waits for the next entry (or the end) to know whether a comma follows it."""

    def __init__(self, write: Callable[[Iterable[str]], None]):
        self.write = write
        self.held: str | None = None   # the last entry, not written yet

    def add(self, items: Iterable[tuple[str, Any]]) -> None:
        entries = [json.dumps({k: v}, indent=2, ensure_ascii=False)[2:-2] for k, v in items]  # '  "k": v', indented
        if not entries:
            return
        self.write(["{" if self.held is None else self.held + ","] + [e + "," for e in entries[:-1]])
        self.held = entries[-1]

    def close(self) -> None:
        self.write(["{}"] if self.held is None else [self.held, "}"])


def run_predict_qa(model_dir: str, data: str, output: str, *, batch_size: int = 64,
                   max_seq_length: int | None = None, doc_stride: int | None = None,
                   max_query_length: int | None = None, n_best: int | None = None,
                   max_answer_length: int | None = None, null_threshold: float | None = None,
                   version_2: bool | None = None, device: str | None = None, compile: bool = False) -> int:
    """Answer every question of a SQuAD file (`read_squad`; answers are optional and ignored); `output` gets the
    official predictions format ``{question id: answer text}`` ("" for no answer; v2.0 when `version_2` or when the
    file has unanswerable questions), and `<output stem>.nbest.json` (and for v2.0 `.null_odds.json`) the n-best
    lists (and null odds), each file written a chunk of questions at a time. Settings left None are those the model
    was fine-tuned with. Returns the count."""
    model, tok = load_saved(AutoModelForQuestionAnswering, model_dir, device, compile)
    examples = to_predict(read_squad(data, labelled=False, strict=False), data, "questions")  # answers unused
    s = _qa_settings(model, examples, max_seq_length, doc_stride, max_query_length, n_best, max_answer_length,
                     null_threshold, version_2)
    suffixes = [".nbest.json", ".null_odds.json"] if s["version_2"] else [".nbest.json"]
    paths = [Path(output).with_suffix(suffix) for suffix in suffixes]
    answered = 0
    with contextlib.ExitStack() as files:   # each file temporary until all are written: Ctrl-C leaves none
        written = [_JsonObjectLines(files.enter_context(prediction_lines(str(p)))) for p in [output, *paths]]
        answers, nbest, *odds = written
        for preds in iter_predict_answers(model, tok, examples, batch_size=batch_size, source=data, **s):
            answers.add((q, p["text"]) for q, p in preds.items())   # each chunk's entries written as they come
            nbest.add(nbest_json(preds, s["version_2"], s["n_best"]).items())
            for f in odds:
                f.add(null_odds(preds).items())
            answered += len(preds)
        for f in written:
            f.close()
    dist.print0(f"answered {answered} questions of {data}; wrote {output} "
                f"({' and '.join(['n-best', 'null odds'][:len(paths)])}: {', '.join(map(str, paths))})")
    return answered

