"""Token classification (BIO tagging, e.g. NER): sentences of words -> windows of sub-tokens -> batches ->
objective -> word-level predictions -> entity F1.

- Words are tokenized one by one (without special tokens), so every sub-token belongs to exactly one word, even
  when BERT's basic tokenization splits a word like "don't" into several pieces. A word that tokenizes to nothing
  becomes [UNK], so every word gets a prediction. A word longer than the window keeps its first pieces.
- A word's label sits on its FIRST sub-token; the other sub-tokens, [CLS] and [SEP] get -100 (ignored by the loss).
- The label set is the sorted distinct tags of the TRAINING data, stored in the config's id2label / label2id; a dev
  tag outside it is a ``ValueError`` naming ``file:line``.
- A sentence longer than `max_seq_length` is split into windows of whole words: each holds at most
  `max_seq_length - 2` sub-tokens, and consecutive windows overlap by at most `stride` sub-tokens (and by at least
  one word unless the window moves by one word). Training labels every word of every window. For prediction each
  word is OWNED by exactly one window, the one where it has the most context: the largest
  ``min(sub-tokens before it, sub-tokens after it)`` within the window, the earlier window on ties (the rule of
  BERT's SQuAD code). `TagFeature.word_ids` marks, at the first sub-token of each owned word, its index in the
  sentence, so the predictions cover every word exactly once.
- `TagBatches` reuses `ClassificationBatches`' seeded per-epoch order and exact resume state; `TagObjective` gives
  the trainer the cross-entropy SUM over labelled sub-tokens (term "tag") and "acc_tag".
- `evaluate_tagging` maps predictions back to words and scores entity-level precision / recall / F1 (micro, and per
  type, seqeval semantics via `bertkit.metrics.entity_f1`) and word accuracy.
- A big file (`bertkit predict` / `evaluate`) goes a chunk of sentences at a time (`iter_word_logits`,
  `iter_predict_tags`, chunks of `classify.chunks`): memory holds one chunk's windows and logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics as M
from ..data.readers import TaggedSentence, conll_blocks, iter_columns, label_maps
from .classify import (IGNORE, ClassificationBatches, FinetuneObjective, batch_logits, chunks_of, packed_to,
                       pad_inputs, predict_batches)

__all__ = ["TagFeature", "tag_set", "word_pieces", "windows", "encode_sentences", "collate_tags", "TagBatches",
           "TagObjective", "predict_word_logits", "iter_word_logits", "gold_tags", "evaluate_tagging",
           "tagging_scores", "iter_predict_tags", "predict_tags", "read_tokens", "iter_tokens", "read_words",
           "iter_words", "model_kwargs"]


@dataclass(frozen=True)
class TagFeature:
    """One window of one sentence. ``labels`` holds a tag id at the first sub-token of every word in the window and
    -100 elsewhere (None when unlabelled); ``word_ids`` holds the sentence's word index at the first sub-token of
    each word this window predicts (see the module docstring), None elsewhere."""
    input_ids: list[int]
    labels: list[int] | None
    word_ids: list[int | None]
    sentence: int
    line: int = 0


def tag_set(sentences: Sequence[TaggedSentence]) -> tuple[str, ...]:
    """The sorted distinct tags of the training sentences; their order gives the label ids."""
    tags = tuple(sorted({t for s in sentences for t in s.tags}))
    if len(tags) < 2:
        raise ValueError(f"tagging needs at least two distinct tags in the training data, found {list(tags)}")
    return tags


def model_kwargs(tags: Sequence[str]) -> dict[str, Any]:
    id2label, label2id = label_maps(tags)
    return {"num_labels": len(tags), "id2label": id2label, "label2id": label2id}


def word_pieces(tok, words: Sequence[str]) -> dict[str, list[int]]:
    """Sub-token ids of each distinct word (no special tokens); [UNK] for a word that tokenizes to nothing."""
    unique = sorted(set(words))
    if not unique:
        return {}
    ids = tok(unique, add_special_tokens=False)["input_ids"]
    unk = tok.unk_token_id
    return {w: (p if p else [unk]) for w, p in zip(unique, ids)}


def windows(lengths: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of the windows over words of `lengths` sub-tokens (each <= budget): at most
    `budget` sub-tokens per window, consecutive windows sharing at most `stride` sub-tokens."""
    n = len(lengths)
    out: list[tuple[int, int]] = []
    s = 0
    while True:
        e, used = s, 0
        while e < n and used + lengths[e] <= budget:
            used += lengths[e]
            e += 1
        out.append((s, e))
        if e >= n:
            return out
        j, shared = e, 0
        while j - 1 > s and shared + lengths[j - 1] <= stride:
            j -= 1
            shared += lengths[j]
        s = j


def _owners(lengths: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each word, the window where it has the most context (earliest on ties)."""
    best = [(-1, -1)] * len(lengths)  # (score, window)
    for k, (s, e) in enumerate(spans):
        total = sum(lengths[s:e])
        before = 0
        for w in range(s, e):
            score = min(before, total - before - lengths[w])
            if score > best[w][0]:
                best[w] = (score, k)
            before += lengths[w]
    return [k for _, k in best]


def _tag_ids(sent: TaggedSentence, label2id: dict[str, int], source: str) -> list[int]:
    """The sentence's tags as ids; a tag the model does not know is an error naming ``file:line``."""
    for i, t in enumerate(sent.tags):
        if t not in label2id:
            where = f"{source}:{sent.line + i}" if source else f"line {sent.line + i}"
            raise ValueError(f"{where}: tag {t!r} is not one of the model's tags {list(label2id)}")
    return [label2id[t] for t in sent.tags]


def gold_tags(sentences: Iterable[TaggedSentence], tags: Sequence[str], source: str = "") -> list[list[str]]:
    """Each sentence's tags, every one checked to be one of `tags` (as `encode_sentences` would find) before a
    chunked evaluation's model work, not after some chunks of it. The tags are `tags`' own strings, so a big
    file's gold costs a reference a word, not its text."""
    label2id = {t: i for i, t in enumerate(tags)}
    return [[tags[i] for i in _tag_ids(sent, label2id, source)] for sent in sentences]


def _pieces_of(tok, words_of: Sequence[Sequence[str]], cache: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """`word_pieces` of these words; with a `cache` (shared by a big file's chunks), of the words not in it yet,
    added to it: a chunk tokenizes only the words no chunk before it held."""
    if cache is None:
        return word_pieces(tok, [w for ws in words_of for w in ws])
    cache.update(word_pieces(tok, [w for ws in words_of for w in ws if w not in cache]))
    return cache


def encode_sentences(tok, sentences: Sequence[TaggedSentence] | Sequence[Sequence[str]], tags: Sequence[str] | None,
                     max_seq_length: int = 128, stride: int = 32, source: str = "",
                     pieces: dict[str, list[int]] | None = None) -> list[TagFeature]:
    """Windows of every sentence (TaggedSentence, or plain word lists when `tags` is None). With `tags` (the
    model's label names in id order), each sentence's tags become labels; an unknown tag is an error naming
    ``file:line``. `pieces`: a cache of word pieces shared by the calls over one file's chunks."""
    budget = max_seq_length - 2
    if budget < 1:
        raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
    if not 0 <= stride < budget:
        raise ValueError(f"stride must be in [0, max_seq_length - 2) = [0, {budget}), got {stride}")
    label2id = {t: i for i, t in enumerate(tags)} if tags is not None else None
    words_of = [s.tokens if isinstance(s, TaggedSentence) else list(s) for s in sentences]
    pieces = _pieces_of(tok, words_of, pieces)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    feats: list[TagFeature] = []
    for n, (sent, words) in enumerate(zip(sentences, words_of)):
        line = sent.line if isinstance(sent, TaggedSentence) else 0
        ids_of = [pieces[w][:budget] for w in words]
        word_labels = _tag_ids(sent, label2id, source) if label2id is not None else None
        lengths = [len(p) for p in ids_of]
        spans = windows(lengths, budget, stride) if words else [(0, 0)]
        owner = _owners(lengths, spans)
        for k, (s, e) in enumerate(spans):
            input_ids, labels, word_ids = [cls], [IGNORE], [None]
            for w in range(s, e):
                input_ids += ids_of[w]
                labels += [word_labels[w] if word_labels is not None else IGNORE] + [IGNORE] * (lengths[w] - 1)
                word_ids += [w if owner[w] == k else None] + [None] * (lengths[w] - 1)
            input_ids.append(sep)
            labels.append(IGNORE)
            word_ids.append(None)
            feats.append(TagFeature(input_ids, labels if word_labels is not None else None, word_ids, n, line))
    return feats


def collate_tags(features: Sequence[TagFeature], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest window of the batch; `labels` (-100 at padding) only when every feature has them."""
    batch = pad_inputs([f.input_ids for f in features], None, pad_id)
    if all(f.labels is not None for f in features):
        labels = torch.full_like(batch["input_ids"], IGNORE)
        for i, f in enumerate(features):
            labels[i, :len(f.labels)] = torch.tensor(f.labels)
        batch["labels"] = labels
    return batch


class TagBatches(ClassificationBatches):
    """`ClassificationBatches` (seeded order per epoch, exact resume) over tagging windows."""

    def collate(self, features: Sequence[TagFeature]) -> dict[str, torch.Tensor]:
        return collate_tags(features, self.pad_id)


class TagObjective(FinetuneObjective):
    """Cross-entropy summed over the labelled sub-tokens (term "tag"), and their accuracy ("acc_tag")."""

    @staticmethod
    def counts(batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"tag": int((batch["labels"] != IGNORE).sum())}

    def forward(self, batch: dict[str, torch.Tensor]):
        logits = batch_logits(self.model, batch)
        labels = batch["labels"]
        # (batch * seqlen, labels) logits against (batch * seqlen,) labels
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        with torch.no_grad():
            # a masked sum, not `[keep]` indexing: a data-dependent shape would make the host wait for the GPU
            stats = {"acc_tag": ((logits.argmax(-1) == labels) & (labels != IGNORE)).sum()}
        return {"tag": loss}, stats


@torch.no_grad()
def predict_word_logits(model, features: Sequence[TagFeature], num_words: Sequence[int], batch_size: int = 64,
                        pad_id: int | None = None, progress: bool | None | Callable[[int], Any] = None
                        ) -> list[np.ndarray]:
    """(words, labels) float32 logits per sentence, each word's from the window that owns it. `progress` as in
    `predict_batches`."""
    pad_id = (model.config.pad_token_id or 0) if pad_id is None else pad_id
    device = next(model.parameters()).device

    def run(feats):  # each window's (tokens, labels) logits
        batch = collate_tags([TagFeature(f.input_ids, None, f.word_ids, f.sentence) for f in feats], pad_id)
        logits = batch_logits(model, packed_to(batch, device)).cpu().numpy()
        return [logits[row, :len(f.input_ids)] for row, f in enumerate(feats)]

    out = [np.full((n, model.config.num_labels), np.nan, dtype=np.float32) for n in num_words]
    for f, logits in zip(features, predict_batches(model, features, run, batch_size, progress=progress)):
        for pos, w in enumerate(f.word_ids):
            if w is not None:
                out[f.sentence][w] = logits[pos]
    for n, a in enumerate(out):
        if np.isnan(a).any():
            raise RuntimeError(f"sentence {n}: some words were not predicted by any window")
    return out


def strict_scheme_of(names: Sequence[str], gold: Sequence[Sequence[str]]) -> str | None:
    """The strict scheme (seqeval's IOB2 / IOBES) the tags follow, if every gold entity is well formed in it:
    IOB1 data (CoNLL-2003 as first published: an entity may start with I-) has IOB2's tag set, but strict IOB2
    would drop those entities from gold and predictions alike and score the few left (seqeval would too)."""
    scheme = M.strict_scheme({*names, *(t for g in gold for t in g)})
    if scheme is None or any(M.get_entities(g, scheme) != M.get_entities(g) for g in gold):
        return None
    return scheme


def evaluate_tagging(model, features: Sequence[TagFeature], sentences: Sequence[TaggedSentence],
                     batch_size: int = 64) -> dict[str, Any]:
    """`tagging_scores` of `model` on the windows `features` of `sentences`."""
    if not sentences:
        raise ValueError("no evaluation sentences")
    names = model.config.label_names()
    logits = predict_word_logits(model, features, [len(s.tokens) for s in sentences], batch_size)
    return tagging_scores([[names[k] for k in a.argmax(-1)] for a in logits], [s.tags for s in sentences], names)


def tagging_scores(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]], names: Sequence[str]
                   ) -> dict[str, Any]:
    """Entity precision / recall / F1 (micro) and per type, word accuracy, and the number of sentences; the same
    three in seqeval's strict mode too (`strict_f1` ..., with the `scheme` the tag set follows) where one fits.
    `pred` and `gold`: each sentence's predicted and true tags; `names`: the model's tags."""
    ent = M.entity_f1(pred, gold)
    flat_p = [t for p in pred for t in p]
    flat_g = [t for g in gold for t in g]
    out = {"f1": ent["f1"], "precision": ent["precision"], "recall": ent["recall"],
           "accuracy": M.accuracy(flat_p, flat_g), "per_type": ent["per_type"], "n": len(gold)}
    scheme = strict_scheme_of(names, gold)
    if scheme is not None:
        strict = M.entity_f1(pred, gold, scheme)
        out.update({f"strict_{k}": strict[k] for k in ("f1", "precision", "recall")}, scheme=scheme)
    return out


def iter_word_logits(model, tok, sentences: Iterable[Sequence[str]], *, max_seq_length: int = 128, stride: int = 32,
                     batch_size: int = 64, progress: bool | None = None, total: int | None = None, source: str = ""
                     ) -> Iterator[list[np.ndarray]]:
    """`predict_word_logits` of the sentences (lists of words), chunk after chunk in input order
    (`classify.chunks`): each chunk's windows made, predicted and given back, so a big file costs one chunk's
    memory. One progress bar over all the sentences. With their `total`, `sentences` may be read as they are
    needed (a file streamed by `bertkit predict`; `classify.chunks_of`, whose errors name `source`)."""
    if total is None:
        sentences = list(sentences)
        total = len(sentences)
    max_seq_length = min(max_seq_length, model.config.max_position_embeddings)
    stride = min(stride, max_seq_length - 3)
    pieces: dict[str, list[int]] = {}   # the file's distinct words, each tokenized once (as unchunked)
    for some, shown in chunks_of(sentences, total, batch_size, progress, source):
        feats = encode_sentences(tok, some, None, max_seq_length, stride, pieces=pieces)
        yield predict_word_logits(model, feats, [len(s) for s in some], batch_size, tok.pad_token_id, shown)


def iter_predict_tags(model, tok, sentences: Iterable[Sequence[str]], *, max_seq_length: int = 128,
                      stride: int = 32, batch_size: int = 64, total: int | None = None, source: str = ""
                      ) -> Iterator[list[list[tuple[str, float]]]]:
    """`predict_tags`, a chunk of sentences at a time (`iter_word_logits`, which takes `total` and `source`):
    `bertkit predict` writes each chunk's lines as it comes."""
    names = model.config.label_names()
    for logits in iter_word_logits(model, tok, sentences, max_seq_length=max_seq_length, stride=stride,
                                   batch_size=batch_size, total=total, source=source):
        out = []
        for a in logits:
            p = torch.softmax(torch.from_numpy(a), dim=-1).numpy()
            out.append([(names[int(k)], float(q[k])) for k, q in zip(p.argmax(-1), p)])
        yield out


def predict_tags(model, tok, sentences: Sequence[Sequence[str]], *, max_seq_length: int = 128, stride: int = 32,
                 batch_size: int = 64) -> list[list[tuple[str, float]]]:
    """(tag, probability) for every word of every sentence (lists of words), in input order."""
    return [p for part in iter_predict_tags(model, tok, sentences, max_seq_length=max_seq_length, stride=stride,
                                            batch_size=batch_size) for p in part]


def iter_words(path: str | Path) -> Iterator[tuple[int, list[str], list[tuple[int, int]]]]:
    """Sentences of a plain text file for prediction, one a line, read a line at a time: (line, words, their
    character spans in the line), the words split at whitespace and punctuation as BERT's basic tokenizer splits
    them (and as CoNLL files hold them: "Rome." is "Rome" and ".")."""
    from tokenizers.pre_tokenizers import BertPreTokenizer
    split = BertPreTokenizer().pre_tokenize_str
    for n, row in iter_columns(path, {"text_column": 0}, format="text"):
        words = split(row["text_column"])
        if words:  # a line of control characters alone holds none
            yield n, [w for w, _ in words], [span for _, span in words]


def read_words(path: str | Path) -> list[tuple[int, list[str], list[tuple[int, int]]]]:
    """`iter_words`, every sentence in a list."""
    return list(iter_words(path))


def read_tokens(path: str | Path, token_column: int = 0, *, explicit: bool = False) -> list[tuple[int, list[str]]]:
    """`iter_tokens`, every sentence in a list."""
    return list(iter_tokens(path, token_column, explicit=explicit))


def iter_tokens(path: str | Path, token_column: int = 0, *, explicit: bool = False
                ) -> Iterator[tuple[int, list[str]]]:
    """Sentences of a CoNLL-style file for prediction, as (line of the first token, tokens): one token per line
    (column `token_column` of the tab- or whitespace-separated fields; other columns, e.g. tags, are ignored),
    blank lines between sentences, ``-DOCSTART-`` lines skipped: the file `evaluate` scores, read alike. Every line
    must have as many fields as the first: a file of sentences, one a line, would otherwise be read as one sentence
    of their first words; and a table of sentences ("text<TAB>label") is refused by `conll_blocks`, as is a file
    that may be a text file of equally long sentences unless `explicit` (--format conll). Read a line at a time."""
    path = Path(path)
    first: tuple[int, int] | None = None  # (line number, fields) of the first token line
    for block in conll_blocks(path, token_column, explicit):
        for n, line, fields in block:
            if not -len(fields) <= token_column < len(fields) or not fields[token_column]:
                raise ValueError(f"{path}:{n}: no token in column {token_column}: {line[:80]!r}")
            first = first or (n, len(fields))
            if len(fields) != first[1]:
                raise ValueError(f"{path}:{n}: {len(fields)} fields where line {first[0]} has {first[1]}; expected "
                                 f"a CoNLL file, one token a line (then any tags, the same columns on every "
                                 f"line; a text file, one sentence a line, is read with --format text): "
                                 f"{line[:80]!r}")
        yield block[0][0], [fields[token_column] for _, _, fields in block]
