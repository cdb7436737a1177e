"""Masked-LM masking on the fly, and a resumable, rank-aware source of pre-training batches.

Masking rule (as in BERT)
-------------------------
Each sequence gets a budget of `round(mlm_probability * length)` predictions, where the length counts every
real token, [CLS] and [SEP] included (as google-research/bert's `create_pretraining_data.py` counts them;
rounding half to even, as its Python 3 `round`), at least one and at most `max_predictions_per_seq` (nor more
than there are candidates). That many of its non-special, non-padding tokens are chosen, uniformly at random. With
`whole_word=True` whole words are chosen instead (a token and the `##` pieces that follow it), in random
order, skipping a word that would overshoot the budget (as google-research/bert does); if no word fits, the
first word of that random order is taken when it fits `max_predictions_per_seq`. Each chosen position becomes
`[MASK]` with probability 0.8, a random token with probability 0.1, and stays unchanged with probability 0.1
(decided per token). The random token is drawn uniformly from the vocabulary *without* the special tokens
(the original draws from the whole vocabulary, specials and [unused] slots included; we never feed a stray
[CLS]/[SEP]/[PAD]). It may, rarely, equal the original token. Labels hold the original id at chosen positions
and -100 everywhere else.

Other deliberate differences from google-research/bert: with `MaskingCollator.from_tokenizer` [UNK] is a special
token, so it is never predicted (it still counts in the length; transformers' DataCollatorForLanguageModeling
skips it too, the original may pick it). A `##` piece right after a special token ([CLS], [SEP], [UNK]) starts
a word of its own; the original joins a `##` piece that opens B (after a front cut) to the last word of A,
across [SEP]. And masks are drawn afresh for every batch (as RoBERTa), not once per `dupe_factor` copy.

All randomness comes from the generator(s) passed in: one `torch.Generator` for the batch, or one per
example. Each example draws from its own real length only, so with per-example generators its masks do not
depend on the batch it is in, on padding, or on the number of processes.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..checks import is_int
from .labels import void_labels

__all__ = ["MaskingCollator", "PretrainingBatches", "example_seed"]

_MASK64 = (1 << 64) - 1


def example_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 steps), e.g. (seed, epoch, batch, example)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def _id_table(ids, vocab_size: int, name: str) -> torch.Tensor:
    """A bool lookup table of `vocab_size` from a set of ids or a bool array of that size."""
    if isinstance(ids, (np.ndarray, torch.Tensor)) and ids.dtype in (np.bool_, torch.bool):
        table = torch.as_tensor(np.asarray(ids) if isinstance(ids, np.ndarray) else ids).clone()
        if table.shape != (vocab_size,):
            raise ValueError(f"{name}: a bool array must have shape ({vocab_size},), got {tuple(table.shape)}")
        return table
    table = torch.zeros(vocab_size, dtype=torch.bool)
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"{name}: ids {bad[:5]} are outside the vocabulary of {vocab_size}")
    table[ids] = True
    return table


class MaskingCollator:
    """Pad a list of examples and mask them for MLM (rule in the module docstring).

    Examples are `(input_ids, token_type_ids, next_sentence_label)` tuples (as `PretrainingDataset` gives)
    or dicts with those keys. `collator(examples, generator)` returns long tensors: input_ids (padded to the
    longest example with `pad_id`), token_type_ids, attention_mask, labels and next_sentence_label.
    `generator` is a `torch.Generator` or a sequence of them, one per example.
    """

    def __init__(
        self,
        vocab_size: int,
        special_ids: Iterable[int],
        mask_id: int,
        pad_id: int,
        mlm_probability: float = 0.15,
        max_predictions_per_seq: int = 20,
        whole_word: bool = False,
        wordpiece_continuation=None,
    ):
        if not is_int(vocab_size) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability!r}")
        if not is_int(max_predictions_per_seq) or max_predictions_per_seq < 1:
            raise ValueError(f"max_predictions_per_seq must be an int >= 1, got {max_predictions_per_seq!r}")
        special_ids = {int(i) for i in special_ids} | {int(mask_id), int(pad_id)}
        self.vocab_size = vocab_size
        self.mask_id = int(mask_id)
        self.pad_id = int(pad_id)
        self.mlm_probability = float(mlm_probability)
        self.max_predictions_per_seq = max_predictions_per_seq
        self.whole_word = bool(whole_word)
        self.is_special = _id_table(special_ids, vocab_size, "special_ids")
        self.random_pool = torch.nonzero(~self.is_special).flatten()  # random replacements: non-special ids
        if len(self.random_pool) == 0:
            raise ValueError("every id is special: no token to draw random replacements from")
        if self.whole_word and wordpiece_continuation is None:
            raise ValueError("whole_word=True needs wordpiece_continuation (the ids of '##' tokens)")
        self.is_continuation = (None if wordpiece_continuation is None
                                else _id_table(wordpiece_continuation, vocab_size, "wordpiece_continuation"))

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> MaskingCollator:
        """Vocabulary size, special ids, [MASK], [PAD] and the '##' pieces from a `BertTokenizer`."""
        vocab = tokenizer.get_vocab()
        return cls(
            tokenizer.num_ids, tokenizer.all_special_ids, tokenizer.mask_token_id, tokenizer.pad_token_id,
            wordpiece_continuation={i for t, i in vocab.items() if t.startswith("##")}, **kwargs,
        )

    # ------------------------------------------------------------------------------------------------
    def __call__(self, examples: Sequence, generator: torch.Generator | Sequence[torch.Generator]) -> dict:
        if not len(examples):
            raise ValueError("no examples to collate")
        rows = [self._fields(e) for e in examples]
        lengths = [len(r[0]) for r in rows]
        batch, width = len(rows), max(lengths)
        ids = np.full((batch, width), self.pad_id, dtype=np.int64)
        types = np.zeros((batch, width), dtype=np.int64)
        for i, (input_ids, token_type_ids, _) in enumerate(rows):
            ids[i, :lengths[i]] = input_ids
            types[i, :lengths[i]] = token_type_ids
        ids = torch.from_numpy(ids)
        if int(ids.max()) >= self.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {int(ids.min())}..{int(ids.max())}")
        attention = torch.arange(width).expand(batch, width) < torch.tensor(lengths)[:, None]  # (batch, width)
        scores, decide, random_ids = self._draw(lengths, attention, generator)

        candidate = attention & ~self.is_special[ids]
        n_candidates = candidate.sum(1)
        budget = torch.round(torch.tensor(lengths, dtype=torch.float64) * self.mlm_probability).long()
        budget = budget.clamp(min=1, max=self.max_predictions_per_seq).minimum(n_candidates)
        if self.whole_word:
            selected = self._select_words(ids, candidate, scores, budget)
        else:
            # the `budget` lowest scores among the candidates (non-candidates score 2, above any candidate)
            k = int(budget.max())
            lowest = scores.masked_fill(~candidate, 2.0).topk(k, dim=1, largest=False, sorted=True).indices
            selected = torch.zeros(batch, width, dtype=torch.bool)
            selected.scatter_(1, lowest, torch.arange(k).expand(batch, k) < budget[:, None])  # first budget[b] of k

        labels = torch.where(selected, ids, torch.full_like(ids, -100))
        masked = ids.masked_fill(selected & (decide < 0.8), self.mask_id)
        randomised = selected & (decide >= 0.8) & (decide < 0.9)
        masked = torch.where(randomised, self.random_pool[random_ids], masked)
        return {
            "input_ids": masked,
            "token_type_ids": torch.from_numpy(types),
            "attention_mask": attention.long(),
            "labels": labels,
            "next_sentence_label": torch.tensor([r[2] for r in rows], dtype=torch.long),
        }

    @staticmethod
    def _fields(example):
        if isinstance(example, Mapping):
            return example["input_ids"], example["token_type_ids"], int(example["next_sentence_label"])
        input_ids, token_type_ids, label = example
        return input_ids, token_type_ids, int(label)

    def _draw(self, lengths: list[int], attention: torch.Tensor, generator):
        """Per real token: a selection score and a decision in [0, 1), and an index into the random-token
        pool; padded with 2, 1 and 0. One draw of shape (3, length) per example (or one of (3, total) for a
        single generator), so an example's randomness depends on its own length only."""
        if isinstance(generator, torch.Generator):
            u = torch.rand(3, sum(lengths), generator=generator, dtype=torch.float64)
        else:
            if len(generator) != len(lengths):
                raise ValueError(f"got {len(generator)} generators for {len(lengths)} examples")
            u = torch.cat([torch.rand(3, n, generator=g, dtype=torch.float64) for n, g in zip(lengths, generator)],
                          dim=1)
        pool = len(self.random_pool)
        values = (u[0], u[1], (u[2] * pool).long().clamp_(max=pool - 1))
        positions = attention.flatten().nonzero().flatten()  # row-major: the order of the draws
        out = []
        for value, fill in zip(values, (2.0, 1.0, 0)):
            padded = torch.full(attention.shape, fill, dtype=value.dtype)
            padded.view(-1).index_copy_(0, positions, value)  # (batch * width,) view: real positions filled
            out.append(padded)
        return out

    def _select_words(self, ids, candidate, scores, budget):
        """Whole words in random order (a word's score is its first token's), skipping words that would
        overshoot the budget; if none fits, the first word of that order when it fits the cap."""
        batch, width = ids.shape
        prev = torch.zeros_like(candidate)
        prev[:, 1:] = candidate[:, :-1]
        start = candidate & ~(self.is_continuation[ids] & prev)  # a '##' piece after a non-candidate starts a word
        word = (start.cumsum(1) - 1).clamp(min=0)  # word index of each candidate token
        word_len = torch.zeros(batch, width, dtype=torch.long).scatter_add_(1, word, candidate.long())
        word_score = torch.full((batch, width), 2.0, dtype=scores.dtype)
        rows, cols = start.nonzero(as_tuple=True)
        word_score[rows, word[rows, cols]] = scores[rows, cols]
        order = word_score.argsort(dim=1, stable=True)
        lengths = word_len.gather(1, order)  # word lengths in random order; 0 past the last word
        take = torch.zeros(batch, width, dtype=torch.bool)
        total = torch.zeros(batch, dtype=torch.long)
        n_words = start.sum(1)
        for k in range(int(n_words.max())):
            length = lengths[:, k]
            fits = (length > 0) & (total + length <= budget)
            take[:, k] = fits
            total += length * fits
            if bool(((total >= budget) | (n_words <= k + 1)).all()):
                break
        fallback = (total == 0) & (lengths[:, 0] > 0) & (lengths[:, 0] <= self.max_predictions_per_seq)
        take[:, 0] |= fallback
        chosen = torch.zeros_like(take).scatter_(1, order, take)
        return candidate & chosen.gather(1, word)


class PretrainingBatches:
    """Masked batches from a dataset, forever (epoch after epoch), resumable and split across processes.

    Epoch e visits the dataset in the order `torch.randperm(len(dataset), generator=Generator().manual_seed(
    seed + e))`, cut into global batches of `batch_size * world_size`; rank r takes items r, r + world_size,
    ... of each global batch. The masks of the item at position j of global batch b of epoch e come from a
    generator seeded with `example_seed(seed, e, b, j)`, so a run on 2 processes sees exactly the batches of a
    1-process run with twice the batch size. With `drop_last=False` the last, smaller global batch is kept,
    split unevenly; a rank it leaves without an item gets one with void labels (`labels.void_labels`), which
    weighs nothing. `state_dict()` is the position of the next batch; `load_state_dict` resumes there. Iterators
    share this object's position.
    """

    def __init__(self, dataset, batch_size: int, collator, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True):
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (is_int(world_size) and is_int(rank)) or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collator = collator
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.global_batch_size = batch_size * world_size
        n = len(dataset)
        self.batches_per_epoch = n // self.global_batch_size if drop_last else -(-n // self.global_batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {n} instances, fewer than one global batch of {self.global_batch_size} "
                "(batch_size * world_size); use a smaller batch or drop_last=False"
            )
        self.epoch = 0
        self.batch = 0
        self._order: tuple[int, torch.Tensor] | None = None

    def state_dict(self) -> dict:
        """{"epoch", "batch"}: where the next batch comes from."""
        if self.batch >= self.batches_per_epoch:
            return {"epoch": self.epoch + 1, "batch": 0}
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: Mapping) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch < self.batches_per_epoch:
            raise ValueError(f"state {dict(state)} is outside epochs of {self.batches_per_epoch} batches")
        self.epoch, self.batch = epoch, batch

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(len(self.dataset), generator=generator))
        return self._order[1]

    def __iter__(self) -> Iterator[dict]:
        while True:
            if self.batch >= self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            epoch, batch = self.epoch, self.batch
            order = self._epoch_order(epoch)
            items = order[batch * self.global_batch_size:(batch + 1) * self.global_batch_size]
            positions = range(self.rank, len(items), self.world_size)
            void = not positions  # left without an item: the epoch's first, weighing nothing
            if void:
                items, positions = order[:1], range(1)
            examples = [self.dataset[int(items[j])] for j in positions]
            generators = [torch.Generator().manual_seed(example_seed(self.seed, epoch, batch, j)) for j in positions]
            out = self.collator(examples, generators)
            self.batch = batch + 1
            yield void_labels(out) if void else out
