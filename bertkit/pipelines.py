"""`pipeline(task, model=...)`: text in, predictions out, with length-bucketed batching.

    from bertkit.pipelines import pipeline
    fill = pipeline("fill-mask", model="path/to/mlm")
    fill("Paris is the [MASK] of France.", top_k=5)   # [{"token_str", "score", "token", "sequence"}, ...]
    clf = pipeline("text-classification", model="path/to/classifier")
    clf(["great film", "dull film"])                 # [{"label", "score"}, {"label", "score"}]
    clf("great film")                                # [{"label", "score"}]: one text, a list, as transformers
    ner = pipeline("token-classification", model="path/to/tagger", aggregation_strategy="simple")
    ner("Ada Lovelace met Babbage.")                 # [{"entity_group", "score", "word", "start", "end"}]
    qa = pipeline("question-answering", model="path/to/qa")
    qa(question="Who met Babbage?", context="Ada Lovelace met Babbage.")   # {"score", "start", "end", "answer"}
    emb = pipeline("feature-extraction", model="sentence-transformers/all-MiniLM-L6-v2")
    emb(["a text", "another"], pooling="mean", normalize=True)   # (2, hidden) tensor

One input gives one result (for text-classification a str gives a list of one, as in transformers; a pair is a
(text, pair) tuple or {"text", "text_pair"}); a list gives a list (a tensor for feature-extraction). Many inputs
are sorted by tokenized length, run `batch_size` at a time and returned in the input order, so a batch holds
texts of similar length and the result of each input is the same as running it alone. Options given to
`pipeline(...)` are the defaults of every call; options given to a call override them.
"""
from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checks import is_int
from .auto import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    check_vocab_fits,
)
from .hub import LoadWarning, resolve_model_dir
from .io import read_json
from .modeling.bert import compile_layers
from .tasks.classify import packed_to
from .tasks.fill_mask import fill_mask
from .warn import warn

__all__ = ["pipeline", "Pipeline", "FillMaskPipeline", "TextClassificationPipeline",
           "TokenClassificationPipeline", "QuestionAnsweringPipeline", "FeatureExtractionPipeline", "TASKS"]


def _batch_size(n) -> int:
    if not is_int(n) or n < 1:
        raise ValueError(f"batch_size must be a positive int, got {n!r}")
    return n


def _device(device) -> torch.device:
    """A device as transformers' pipelines take it too: -1 the CPU, n >= 0 the n-th GPU."""
    if is_int(device):
        return torch.device("cpu") if device < 0 else torch.device("cuda", device)
    return torch.device(device)


class Pipeline:
    """A model, its tokenizer and a task: call it on a text or a list of texts.

    Subclasses set `task`, `auto_class`, `head` (words for the error when the checkpoint lacks it),
    `options` (name -> default) and implement `_run_batch(items, opts) -> list of results`."""

    task = ""
    auto_class: Any = None
    head = ""
    options: dict[str, Any] = {}

    def __init__(self, model, tokenizer=None, *, batch_size: int = 32, device=None, compile: bool = False,
                 model_kwargs: Mapping[str, Any] | None = None, **task_options):
        self.batch_size = _batch_size(batch_size)
        Pipeline._check_options(self, task_options)   # the names before a load; values may need the tokenizer
        self.model_kwargs = _model_kwargs(model_kwargs, model)
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.model_dir = None  # the directory a model name or path resolved to
        if isinstance(model, (str, os.PathLike)):  # model_kwargs' hub options choose the one directory of both
            hub_options = {k: self.model_kwargs.pop(k) for k in ("revision", "cache_dir", "subfolder")
                           if k in self.model_kwargs}
            self.model_dir = resolve_model_dir(model, **hub_options)
            self.tokenizer = tokenizer if tokenizer is not None else self._load_tokenizer(model)
            self.model = self._load(model)
        elif isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError(f"{self.task}: a model object needs tokenizer=...; "
                                 "or pass model as a name or directory")
            self.tokenizer, self.model = tokenizer, model.eval()
        else:
            raise TypeError(f"{self.task}: model must be a name, a directory or a bertkit model, "
                            f"got {type(model).__name__}")
        check_vocab_fits(self.tokenizer, self.model.config, os.fspath(model) if self.model_dir else self.task)
        if device is not None:
            self.model.to(_device(device))
        self.defaults = {**self.options, **self._check_options(task_options)}
        self.device = self.model.device
        if compile:  # worth it on a GPU for many calls: the first ones pay minutes of compilation
            compile_layers(self.model)

    # ------------------------------------------------------------------------------------ loading
    def _load_tokenizer(self, name_or_path):
        """The tokenizer from `self.model_dir`, resolved once for both: a name is looked up (and warned about) once,
        and the tokenizer cannot come from another snapshot or cache than the model."""
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        tokenizer.name_or_path = os.fspath(name_or_path)  # the name asked for, as transformers keeps it
        return tokenizer

    def _load(self, name_or_path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LoadWarning)
            model = self.auto_class.from_pretrained(self.model_dir, **self.model_kwargs)
        model.name_or_path = os.fspath(name_or_path)
        fresh = [k for k in model.load_report.newly_initialized if self._needs(k)]
        if fresh:
            shown = ", ".join(fresh[:4]) + (", ..." if len(fresh) > 4 else "")
            raise ValueError(
                f"{self.task}: the checkpoint {str(name_or_path)!r} has no trained {self.head} "
                f"(these weights would be random: {shown}); fine-tune one first or pick a checkpoint with it")
        return model

    def _needs(self, key: str) -> bool:
        """Whether a freshly initialised weight makes this task's output meaningless."""
        return True

    # ------------------------------------------------------------------------------------ calling
    def _check_options(self, opts: dict) -> dict:
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            raise TypeError(f"{self.task}: unknown option(s) {', '.join(unknown)}; "
                            f"options: {', '.join(self.options) or 'none'}")
        return opts

    def _check_int(self, opts: dict, name: str, low: int = 1, allow_none: bool = False) -> None:
        """A ValueError naming the option unless `opts[name]` (when given) is an int >= `low` (or None)."""
        if name not in opts or (allow_none and opts[name] is None):
            return
        v = opts[name]
        if not is_int(v) or v < low:
            raise ValueError(f"{self.task}: {name} must be an int >= {low}{' or None' if allow_none else ''}, "
                             f"got {v!r}")

    def _check_tokenizer_kwargs(self, kwargs, name: str, keys=("truncation", "max_length", "padding")) -> None:
        """Tokenizer options as transformers' pipelines pass them on (`name`: what holds them): `truncation` and
        `padding` are accepted (texts are cut to the model's positions, and batches padded, either way);
        `max_length`, where the task takes it, cuts texts to n tokens."""
        if not isinstance(kwargs, Mapping) or set(kwargs) - set(keys):
            raise ValueError(f"{self.task}: {name} takes {', '.join(keys)}, got {kwargs!r:.80}")
        self._check_int(dict(kwargs), "max_length", allow_none=True)

    def _is_single(self, inputs) -> bool:
        return isinstance(inputs, str)

    def _label(self, index: int) -> str:
        """The model's name of label `index` (transformers' LABEL_i without an id2label)."""
        return self.model.config.label_name(index)

    def __call__(self, inputs, *, batch_size: int | None = None, **options):
        """`batch_size` overrides the pipeline's for this call."""
        opts = {**self.defaults, **self._check_options(options),
                "batch_size": self.batch_size if batch_size is None else _batch_size(batch_size)}
        single = self._is_single(inputs)
        if isinstance(inputs, Mapping) and not single:
            raise TypeError(f"{self.task}: inputs must be a str or a list of them, got a dict with the keys "
                            f"{', '.join(map(str, inputs))}")
        items = [inputs] if single else list(inputs)
        for i, item in enumerate(items):
            self._check_item(i, item)
        return self._finish(self._run(items, opts), single, inputs, opts)

    def _finish(self, results: list, single: bool, inputs, opts: dict):
        return results[0] if single else results

    def _check_item(self, i: int, item) -> None:
        if not isinstance(item, str):
            raise TypeError(f"{self.task}: input {i} must be a str, got {type(item).__name__}")

    @property
    def max_length(self) -> int:
        """Tokens a text keeps: the tokenizer's limit, but never more than the model has positions for (many
        hub tokenizers say "no limit")."""
        return min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)

    def _encode(self, items: list, max_length: int | None = None, **kwargs):
        """Tokenize `items` (all texts, or all (text, pair) tuples), cut to `max_length` tokens, never more than
        `self.max_length`."""
        max_length = min(max_length or self.max_length, self.max_length)
        if items and isinstance(items[0], tuple):
            return self.tokenizer([a for a, _ in items], [b for _, b in items], truncation=True,
                                  max_length=max_length, **kwargs)
        return self.tokenizer(items, truncation=True, max_length=max_length, **kwargs)

    def _kind(self, item) -> int:
        return 1 if isinstance(item, tuple) else 0

    @torch.inference_mode()
    def _run(self, items: list, opts: dict) -> list:
        """Sort by (kind, tokenized length), run batches, put the results back in input order."""
        if not items:
            return []
        lengths = [0] * len(items)
        for kind in {self._kind(x) for x in items}:
            idx = [i for i, x in enumerate(items) if self._kind(x) == kind]
            enc = self._encode([items[i] for i in idx])
            for i, ids in zip(idx, enc["input_ids"]):
                lengths[i] = len(ids)
        self._check_lengths(items, lengths, opts)
        order = sorted(range(len(items)), key=lambda i: (self._kind(items[i]), lengths[i]))
        results: list = [None] * len(items)
        start = 0
        while start < len(order):
            kind = self._kind(items[order[start]])
            stop = start
            while (stop < len(order) and stop - start < opts["batch_size"]
                   and self._kind(items[order[stop]]) == kind):
                stop += 1
            chunk = order[start:stop]
            for i, r in zip(chunk, self._run_batch([items[i] for i in chunk], opts)):
                results[i] = r
            start = stop
        return results

    def _check_lengths(self, items: list, lengths: list[int], opts: dict) -> None:
        pass

    def _inputs(self, enc) -> dict[str, Any]:
        """The model inputs of a batch tokenized on the CPU, on the model's device with their packing plan made
        from the CPU mask (`packed_to`): a forward planning from a GPU mask would wait for the GPU."""
        return packed_to({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, self.device)

    def _forward(self, batch):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"], packing=batch["packing"])

    def _run_batch(self, items: list, opts: dict) -> list:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(task={self.task!r}, model={type(self.model).__name__}, "
                f"batch_size={self.batch_size}, device={self.device}, options={self.defaults})")


class FillMaskPipeline(Pipeline):
    """`p(text, top_k=5)` -> [{"token_str", "score", "token", "sequence"}, ...], best first.

    A text with several masks gives one such list per mask (like transformers); a list of texts gives a
    list of results, except that a list of one text gives its result alone, as transformers' does. `sequence`
    is the text with the guess in place (special tokens dropped when the text has a single mask). `targets` (a
    word or a list) limits the guesses to those words, as in transformers: a word outside the vocabulary stands
    for its first sub-token (with a warning)."""

    task = "fill-mask"
    auto_class = AutoModelForMaskedLM
    head = "masked-LM head (cls.predictions)"
    options = {"top_k": 5, "targets": None, "tokenizer_kwargs": None}

    def _finish(self, results, single, inputs, opts):
        if isinstance(inputs, list) and len(inputs) == 1:
            return results[0]  # transformers' fill-mask unwraps a list of one text
        return super()._finish(results, single, inputs, opts)

    def _check_options(self, opts):
        opts = super()._check_options(opts)
        self._check_int(opts, "top_k")
        self._check_tokenizer_kwargs(opts.get("tokenizer_kwargs") or {}, "tokenizer_kwargs")
        if opts.get("targets") is not None:
            opts = {**opts, "targets": self._target_ids(opts["targets"])}
        return opts

    def _target_ids(self, targets) -> list[int]:
        """Token ids of the target words, each once: a word's own id, else its first sub-token's."""
        tok = self.tokenizer
        words = [targets] if isinstance(targets, str) else list(targets)
        vocab, ids = tok.get_vocab(), []
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"fill-mask: targets must be str, got {word!r}")
            if word in vocab:
                ids.append(vocab[word])
                continue
            pieces = tok(word, add_special_tokens=False)["input_ids"]
            if not pieces:
                warn(f"fill-mask: the target {word!r} is no token at all; left out")
                continue
            warn(f"fill-mask: the target {word!r} is not in the vocabulary; it stands for "
                 f"{tok.convert_ids_to_tokens(pieces[0])!r}")
            ids.append(pieces[0])
        if not ids:
            raise ValueError("fill-mask: targets holds no token")
        return sorted(set(ids))

    @staticmethod
    def _cut(opts) -> int | None:
        """The max_length of the call's tokenizer_kwargs (None: the model's positions)."""
        return (opts["tokenizer_kwargs"] or {}).get("max_length")

    def _check_lengths(self, items, lengths, opts):
        mask_id = self.tokenizer.mask_token_id
        enc = self._encode(items, self._cut(opts))
        for i, ids in enumerate(enc["input_ids"]):
            if mask_id not in ids:
                raise ValueError(f"fill-mask: input {i} has no {self.tokenizer.mask_token} "
                                 f"(within the first {len(ids)} tokens): {items[i]!r:.80}")

    def _run_batch(self, items, opts):
        top_k = min(opts["top_k"], self.model.config.vocab_size)
        guesses = fill_mask(self.model, self.tokenizer, items, top_k=top_k, targets=opts["targets"],
                            max_length=self._cut(opts))
        tok = self.tokenizer
        out = []
        for text, per_mask in zip(items, guesses):
            ids = self._encode([text], self._cut(opts))["input_ids"][0]
            where = [j for j, t in enumerate(ids) if t == tok.mask_token_id]
            single = len(where) == 1
            rows = []
            for pos, guesses_at in zip(where, per_mask):
                row = []
                for token, score in guesses_at:
                    token_id = tok.convert_tokens_to_ids(token)
                    filled = list(ids)
                    filled[pos] = token_id
                    row.append({"score": score, "token": token_id, "token_str": tok.decode([token_id]),
                                "sequence": tok.decode(filled, skip_special_tokens=single)})
                rows.append(row)
            out.append(rows[0] if single else rows)
        return out


class TextClassificationPipeline(Pipeline):
    """`p(text)` -> [{"label", "score"}] (a list, as transformers gives for one str), `p([texts])` -> one
    {"label", "score"} per text; a pair, as {"text": ..., "text_pair": ...} or a (text, pair) tuple, gives one
    dict. With top_k given (to the call or the pipeline) each input gives a list, best first, as in
    transformers: the k best, or every label for top_k=None (top_k=1: a list of one).

    Scores are, as in transformers, a softmax over the labels; a sigmoid per label when config.problem_type is
    "multi_label_classification" or the model has one label and no problem_type (a cross-encoder's relevance
    score); the raw outputs for regression (problem_type "regression", as bertkit's regression fine-tuning
    saves it), each target ranked by its value. `function_to_apply` ("softmax", "sigmoid" or "none")
    overrides that choice."""

    task = "text-classification"
    auto_class = AutoModelForSequenceClassification
    head = "classifier head (bert.pooler and classifier)"
    # top_k "": not given (transformers' marker too); the tokenizer options transformers passes on
    options = {"top_k": "", "function_to_apply": None, "truncation": True, "max_length": None, "padding": False}

    def _check_options(self, opts):
        opts = super()._check_options(opts)
        self._check_tokenizer_kwargs({k: v for k, v in opts.items() if k in ("truncation", "max_length", "padding")},
                                     "its tokenizer options")
        if opts.get("top_k") != "":
            self._check_int(opts, "top_k", low=0, allow_none=True)   # 0: no labels, as transformers
        if isinstance(opts.get("function_to_apply"), str):            # any case, as transformers reads it
            opts = {**opts, "function_to_apply": opts["function_to_apply"].lower()}
        if opts.get("function_to_apply") not in (None, "softmax", "sigmoid", "none"):
            raise ValueError("text-classification: function_to_apply must be 'softmax', 'sigmoid' or 'none', "
                             f"got {opts['function_to_apply']!r}")
        return opts

    def __call__(self, inputs, **options):
        return super().__call__(self._as_pairs(inputs), **options)

    @staticmethod
    def _as_pairs(inputs):
        """{"text", "text_pair"} dicts (transformers' form of a pair) as (text, pair) tuples."""
        def one(x):
            if isinstance(x, dict) and set(x) <= {"text", "text_pair"} and "text" in x:
                return x["text"] if x.get("text_pair") is None else (x["text"], x["text_pair"])  # None: no pair
            if isinstance(x, dict):
                raise TypeError(f"text-classification: a dict input needs the keys text and text_pair, "
                                f"got {sorted(x)}")
            return x
        return one(inputs) if isinstance(inputs, (str, tuple, dict)) else [one(x) for x in inputs]

    def _is_single(self, inputs):
        return isinstance(inputs, (str, tuple))

    def _finish(self, results, single, inputs, opts):
        if single and isinstance(inputs, str) and isinstance(results[0], dict):
            return results  # one text: a list of one result, as transformers gives
        return super()._finish(results, single, inputs, opts)

    def _check_item(self, i, item):
        if isinstance(item, tuple):
            if len(item) != 2 or not all(isinstance(s, str) for s in item):
                raise TypeError(f"text-classification: input {i} must be a str or a (text, pair) tuple "
                                f"of two str, got {item!r}")
        elif not isinstance(item, str):
            raise TypeError(f"text-classification: input {i} must be a str or a (text, pair) tuple, "
                            f"got {type(item).__name__}")

    def _default_function(self) -> str:
        """transformers' rule, so that the same checkpoint scores the same in both."""
        cfg = self.model.config
        if cfg.problem_type == "regression":
            return "none"
        if cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def _run_batch(self, items, opts):
        enc = self._encode(items, opts["max_length"], padding=True, return_tensors="pt")
        logits = self._forward(self._inputs(enc)).logits.float().cpu()
        function = opts["function_to_apply"] or self._default_function()
        apply = {"softmax": lambda t: t.softmax(-1), "sigmoid": torch.sigmoid, "none": lambda t: t}[function]
        top_k = 1 if opts["top_k"] == "" else opts["top_k"]
        out = []
        for scores in apply(logits):   # a regression's targets too, ranked by value as transformers does
            top = scores.topk(len(scores) if top_k is None else min(top_k, len(scores)))
            best = [{"label": self._label(int(j)), "score": float(s)} for s, j in zip(top.values, top.indices)]
            out.append(best[0] if opts["top_k"] == "" else best)
        return out


@dataclass(frozen=True)
class SplitWords:
    """A token-classification input given as words (`is_split_into_words=True`): results point into `text`,
    the words joined by the delimiter, as transformers' do."""

    words: tuple[str, ...]
    text: str
    starts: tuple[int, ...]   # each word's first character in text

    @classmethod
    def join(cls, words, delimiter: str) -> "SplitWords":
        starts, at = [], 0
        for w in words:
            starts.append(at)
            at += len(w) + len(delimiter)
        return cls(tuple(words), delimiter.join(words), tuple(starts))


class TokenClassificationPipeline(Pipeline):
    """`p(text)` -> [{"entity", "score", "index", "word", "start", "end"}, ...], or with an aggregation
    strategy [{"entity_group", "score", "word", "start", "end"}, ...]; transformers' names, defaults, rules
    and results.

    "none" (the default): one dict per sub-token not labelled "O"; `index` is the token position ([CLS] being
    0), `word` the sub-token ("##lace"). The others build entities from units: "simple" from sub-tokens,
    "first", "average" and "max" from words (a token and the "##" pieces after it, by transformers' rule: see
    `_word_numbers`), whose label and score come from the first sub-token's probabilities, their mean, or the
    sub-token with the highest probability.
    Adjacent units form one entity while their labels share a type and the later one is not B- (labels without
    a B-/I- prefix count as I-); the entity is named after its first unit's label without the prefix, its
    `score` is the mean over its units, and "O" entities are dropped. `start`/`end` are character offsets
    into the text; `word` is the entity's tokens decoded, as transformers gives it (lower-cased by an uncased
    tokenizer, an [UNK] standing for its text): text[start:end] has the original. `ignore_labels` (default
    ["O"]) are the labels (entity groups) left out of the results.

    Text beyond the tokenizer's max length is not tagged, unless `stride=n` (with an aggregation strategy):
    then the text is read in windows of max length tokens, each sharing n tokens with the next, every window's
    entities are found on its own, and where entities of two windows overlap the longer one stays (the more
    confident one of equal lengths), as in transformers. `is_split_into_words=True` takes each input as a
    list of words (one list gives a list of one result, as in transformers); offsets then point into the words
    joined by `delimiter` (default " ")."""

    task = "token-classification"
    auto_class = AutoModelForTokenClassification
    head = "token classifier head (classifier)"
    options = {"aggregation_strategy": "none", "ignore_labels": ("O",), "stride": None,
               "is_split_into_words": False, "delimiter": " "}
    strategies = ("none", "simple", "first", "average", "max")

    def _check_options(self, opts):
        opts = super()._check_options(opts)
        if isinstance(opts.get("aggregation_strategy"), str):         # any case, as transformers reads it
            opts = {**opts, "aggregation_strategy": opts["aggregation_strategy"].lower()}
        if opts.get("aggregation_strategy", "none") not in self.strategies:
            raise ValueError(f"token-classification: aggregation_strategy must be one of "
                             f"{', '.join(self.strategies)}, got {opts['aggregation_strategy']!r}")
        self._check_int(opts, "stride", low=0, allow_none=True)
        if not isinstance(opts.get("is_split_into_words", False), bool):
            raise ValueError(f"token-classification: is_split_into_words must be True or False, "
                             f"got {opts['is_split_into_words']!r}")
        if not isinstance(opts.get("delimiter", " "), str):
            raise ValueError(f"token-classification: delimiter must be a str, got {opts['delimiter']!r}")
        if "ignore_labels" in opts and opts["ignore_labels"] is None:   # transformers' None: the default
            opts = {**opts, "ignore_labels": self.options["ignore_labels"]}
        return opts

    def __call__(self, inputs, *, batch_size: int | None = None, **options):
        opts = {**self.defaults, **self._check_options(options)}
        if opts["stride"] is not None:
            if opts["aggregation_strategy"] == "none":
                raise ValueError('token-classification: stride needs an aggregation_strategy other than "none" '
                                 "(the entities of overlapping windows are merged), as in transformers")
            room = self.max_length - self.tokenizer.num_special_tokens_to_add()
            if opts["stride"] >= room:
                raise ValueError(f"token-classification: stride={opts['stride']} must be smaller than the "
                                 f"{room} text tokens a window holds")
        if opts["is_split_into_words"]:
            inputs = self._split_inputs(inputs, opts["delimiter"])
        return super().__call__(inputs, batch_size=batch_size, **options)

    def _split_inputs(self, inputs, delimiter: str):
        """A list of words -> one SplitWords; a list of such lists -> a list of them."""
        def words(x) -> bool:
            return isinstance(x, (list, tuple)) and all(isinstance(w, str) for w in x)

        if words(inputs) and inputs:
            return SplitWords.join(inputs, delimiter)
        if isinstance(inputs, (list, tuple)) and all(words(x) for x in inputs):
            return [SplitWords.join(x, delimiter) for x in inputs]
        raise TypeError("token-classification: with is_split_into_words=True an input is a list of words (str), "
                        f"and many inputs a list of such lists; got {inputs!r:.80}")

    def _is_single(self, inputs):
        return isinstance(inputs, (str, SplitWords))

    def _finish(self, results, single, inputs, opts):
        """One list of words gives a list of one result, as transformers gives."""
        return [results[0]] if single and isinstance(inputs, SplitWords) else super()._finish(results, single,
                                                                                             inputs, opts)

    def _check_item(self, i, item):
        if not isinstance(item, SplitWords):
            super()._check_item(i, item)

    def _encode(self, items, **kwargs):
        if items and isinstance(items[0], SplitWords):
            return self.tokenizer([list(x.words) for x in items], is_split_into_words=True, truncation=True,
                                  max_length=self.max_length, **kwargs)
        return super()._encode(items, **kwargs)

    def _needs(self, key):
        return "pooler" not in key  # the token classifier does not use the pooler

    def _run_batch(self, items, opts):
        windows = {} if opts["stride"] is None else {"stride": opts["stride"], "return_overflowing_tokens": True}
        enc = self._encode(items, padding=True, return_offsets_mapping=True, return_tensors="pt", **windows)
        item_of = enc["overflow_to_sample_mapping"].tolist() if windows else range(len(items))
        probs = self._probs(enc, opts["batch_size"])  # (rows, seqlen, labels)
        top, best = (t.tolist() for t in probs.max(-1))  # each token's own label and probability
        offsets, ids = enc["offset_mapping"].tolist(), enc["input_ids"].tolist()
        out: list[list] = [[] for _ in items]
        counts = [0] * len(items)
        for row, n in enumerate(item_of):
            item, word_ids = items[n], enc.word_ids(row)
            if isinstance(item, SplitWords):  # offsets within each word -> into the joined text
                text = item.text
                spans = [(a + item.starts[w], b + item.starts[w]) if w is not None else None
                         for w, (a, b) in zip(word_ids, offsets[row])]
            else:
                text, spans = item, offsets[row]
            real = [pos for pos, w in enumerate(word_ids) if w is not None]  # not special, not padding
            pieces = self.tokenizer.convert_ids_to_tokens(ids[row])  # once per row, for both uses
            # (position, word number, start, end) of each real token; see _word_numbers
            numbers = self._word_numbers(ids[row], pieces, spans, real)
            tokens = [(pos, k, *spans[pos]) for pos, k in zip(real, numbers)]
            found = self._entities(text, tokens, ids[row], pieces, probs[row], top[row], best[row], opts)
            out[n].extend(found)
            counts[n] += 1
        return [self._resolve_overlaps(found) if k > 1 else found for found, k in zip(out, counts)]

    def _probs(self, enc, batch_size: int) -> torch.Tensor:
        """Label probabilities of the encoded rows, `batch_size` rows per forward (a long text's windows may
        outnumber the batch)."""
        keys = ("input_ids", "attention_mask", "token_type_ids")
        parts = [self._forward(self._inputs({k: enc[k][s:s + batch_size] for k in keys})).logits.float()
                 .softmax(-1).cpu() for s in range(0, len(enc["input_ids"]), batch_size)]
        return torch.cat(parts)

    def _word_numbers(self, ids: list[int], pieces: list[str], spans: list, positions: list[int]) -> list[int]:
        """The word of each token at `positions`, by transformers' rule for a tokenizer with "##" pieces: a token
        continues the word before it when it is not as long as its text ("##lace" for "lace"; an [UNK] never
        does). So "new-york" given as one word is three, and, as in transformers, a token that lost combining
        accents of its text (decomposed "e\u0301" read "e") joins the word before it."""
        unk = self.tokenizer.unk_token_id
        numbers: list[int] = []
        for pos in positions:
            a, b = spans[pos]
            starts = ids[pos] == unk or len(pieces[pos]) == b - a
            numbers.append(numbers[-1] + starts if numbers else 0)
        return numbers

    def _entities(self, text, tokens, ids, pieces, probs, top, best, opts) -> list[dict]:
        """The results of one row: `tokens` as (position, word number, start, end), `pieces` the row's token
        strings, `probs` (seqlen, labels) with each position's `top` probability and `best` label."""
        strategy = opts["aggregation_strategy"]
        unk = self.tokenizer.unk_token_id
        # a token's word: its piece ("##lace"), or for an [UNK] the text it stands for, as in transformers
        piece = {pos: text[a:b] if ids[pos] == unk else pieces[pos] for pos, _, a, b in tokens}
        if strategy == "none":
            found = [{"entity": self._label(best[pos]), "score": top[pos], "index": pos, "word": piece[pos],
                      "start": a, "end": b}
                     for pos, _, a, b in tokens]
            return [e for e in found if e["entity"] not in opts["ignore_labels"]]
        if strategy == "simple":
            units = [(self._label(best[pos]), top[pos], a, b, piece[pos]) for pos, _, a, b in tokens]
        else:
            units = []
            for word in self._words(tokens):
                if strategy == "first" or len(word) == 1:  # the first sub-token's own label: no tensor op
                    j, score = best[word[0][0]], top[word[0][0]]
                else:
                    p = self._word_probs(strategy, probs[[t[0] for t in word]])  # (labels,)
                    j = int(p.argmax())
                    score = float(p[j])
                decoded = self.tokenizer.convert_tokens_to_string([piece[t[0]] for t in word])
                units.append((self._label(j), score, word[0][2], word[-1][3], decoded))
        return self._group(units, opts["ignore_labels"])

    @staticmethod
    def _resolve_overlaps(entities: list[dict]) -> list[dict]:
        """Entities of overlapping windows, by start: of two that overlap, the longer stays, or of equal
        lengths the one with the higher score (transformers' rule)."""
        kept: list[dict] = []
        for e in sorted(entities, key=lambda e: e["start"]):
            prev = kept[-1] if kept else None
            if prev is not None and prev["start"] <= e["start"] < prev["end"]:
                longer = e["end"] - e["start"] - (prev["end"] - prev["start"])
                if longer > 0 or longer == 0 and e["score"] > prev["score"]:
                    kept[-1] = e
            else:
                kept.append(e)
        return kept

    @staticmethod
    def _words(tokens):
        """The tokens grouped by word, in order."""
        words, last = [], None
        for t in tokens:
            if t[1] == last:
                words[-1].append(t)
            else:
                words.append([t])
                last = t[1]
        return words

    @staticmethod
    def _word_probs(strategy: str, probs: torch.Tensor) -> torch.Tensor:
        """A word's label probabilities from its sub-tokens' (sub-tokens, labels), as transformers'
        aggregate_word: their mean ("average"), or those of the most confident sub-token ("max"; the first of
        ties: argmax returns the first maximum). ("first" takes the first sub-token's label, read directly.)"""
        if strategy == "average":
            return probs.mean(0)
        return probs[int(probs.max(-1).values.argmax())]

    def _group(self, units, ignore):
        """Entities from (label, score, start, end, word) units: see the class docstring. An entity's word is
        its units' words decoded together, as transformers' group_sub_entities."""
        def tag(label):
            return (label[0], label[2:]) if label[:2] in ("B-", "I-") else ("I", label)

        groups = []  # [name, [scores], start, end, [words]]
        prev = None
        for label, score, a, b, word in units:
            bi, typ = tag(label)
            if groups and typ == prev and bi != "B":
                groups[-1][1].append(score)
                groups[-1][3] = b
                groups[-1][4].append(word)
            else:
                groups.append([label.split("-", 1)[-1], [score], a, b, [word]])
            prev = typ
        return [{"entity_group": name, "score": sum(ss) / len(ss),
                 "word": self.tokenizer.convert_tokens_to_string(words), "start": a, "end": b}
                for name, ss, a, b, words in groups if name not in ignore]


class QuestionAnsweringPipeline(Pipeline):
    """`p(question=..., context=...)`, `p({"question", "context"})` or a list of such dicts ->
    {"score", "start", "end", "answer"}: the answer span in characters of the context; top_k=k > 1 gives the k best
    as a list.

    The semantics of transformers' (4.x) question-answering pipeline: the context is cut into windows of
    `max_seq_len` tokens (default: as fine-tuned by bertkit, else min(tokenizer max length, 384)) sharing
    `doc_stride` tokens (default: as fine-tuned when the window is the fine-tuned one, else min(max_seq_len // 2,
    128)); in each window the start and end logits go through a softmax over [CLS] and the context tokens, a span
    scores p(start) * p(end) (end >= start, at most `max_answer_len` tokens, [CLS] excluded) and is widened to whole
    words (as the tokenizer splits words); the best spans of all windows compete. With `handle_impossible_answer`,
    the smallest [CLS] p(start) * p(end) over the windows competes too, as {"answer": "", "start": 0, "end": 0}. Two
    deliberate differences: the question keeps its first `max_question_len` tokens (transformers' fast path ignores
    that option), and a span of characters found more than once (in two overlapping windows, or by token spans
    widened to the same words) is listed once, with its best score (transformers adds the scores of answers with the
    same text). `align_to_words=False` keeps token spans. A context with no tokens answers "" with score 0, as
    there. Windows of all inputs run `batch_size` at a time, sorted by length; several questions may share one
    context (`question=[...]`, `context="..."`)."""

    task = "question-answering"
    auto_class = AutoModelForQuestionAnswering
    head = "question-answering head (qa_outputs)"
    options = {"top_k": 1, "doc_stride": None, "max_answer_len": 15, "max_seq_len": None, "max_question_len": 64,
               "handle_impossible_answer": False, "align_to_words": True}

    def _check_options(self, opts):
        opts = super()._check_options(opts)
        for name in ("top_k", "max_answer_len", "max_question_len"):
            self._check_int(opts, name)
        self._check_int(opts, "max_seq_len", allow_none=True)
        self._check_int(opts, "doc_stride", low=0, allow_none=True)
        return opts

    def __call__(self, inputs=None, context=None, *, question=None, **options):
        if isinstance(inputs, (str, list, tuple)) and context is not None and question is None:
            inputs, question = None, inputs  # qa(question, context), positionally, as transformers 4 took it
        if question is not None or context is not None:
            if inputs is not None:
                raise TypeError("question-answering: pass either inputs or question=/context=, not both")
            if isinstance(question, str) and isinstance(context, str):
                inputs = {"question": question, "context": context}
            elif isinstance(question, (list, tuple)) and isinstance(context, str):  # one context, many questions
                inputs = [{"question": q, "context": context} for q in question]
            elif isinstance(question, (list, tuple)) and isinstance(context, (list, tuple)) \
                    and len(question) == len(context):
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
            else:
                raise TypeError("question-answering: question= and context= must be two str, a list of questions "
                                "and one context, or two lists of the same length")
        elif inputs is None:
            raise TypeError("question-answering: pass question= and context=, a dict with both, or a list of dicts")
        return super().__call__(inputs, **options)

    def _is_single(self, inputs):
        return isinstance(inputs, dict)

    def _check_item(self, i, item):
        if not isinstance(item, dict) or set(item) != {"question", "context"}:
            raise TypeError(f"question-answering: input {i} must be a dict with the keys question and context, "
                            f"got {item!r:.80}")
        for key in ("question", "context"):
            if not isinstance(item[key], str) or not item[key].strip():
                raise ValueError(f"question-answering: input {i}: {key} must be a non-empty str, "
                                 f"got {item[key]!r:.80}")

    def _run(self, items, opts):
        from .data.readers import SquadExample
        from .tasks.qa import encode_qa, predict_qa_logits
        if not items:
            return []
        from .tasks.finetune import saved_settings
        saved = saved_settings(self.model)   # a model fine-tuned by bertkit: its own window settings
        max_len = opts["max_seq_len"] or saved.get("max_seq_length") or min(self.tokenizer.model_max_length, 384)
        max_len = min(max_len, self.model.config.max_position_embeddings)
        stride = opts["doc_stride"]
        if stride is None:   # the fine-tuned stride goes with the fine-tuned window only
            own = opts["max_seq_len"] in (None, saved.get("max_seq_length")) and "doc_stride" in saved
            stride = saved["doc_stride"] if own else min(max_len // 2, 128)
        examples = [SquadExample(f"input {i}", x["question"], x["context"]) for i, x in enumerate(items)]
        try:
            feats = encode_qa(self.tokenizer, examples, max_len, stride, opts["max_question_len"], labels=False)
        except ValueError as e:
            why = str(e).replace("question input", "input")
            for name, option in (("max_seq_length", "max_seq_len"), ("max_query_length", "max_question_len")):
                why = why.replace(name, option)   # the encoder's words for the pipeline's own options
            raise ValueError(f"question-answering: {why}") from None
        logits = predict_qa_logits(self.model, feats, opts["batch_size"], self.tokenizer.pad_token_id,
                                   progress=False)
        windows: list[list[int]] = [[] for _ in items]
        for i, f in enumerate(feats):
            windows[f.example].append(i)
        return [self._answers(x["context"], [(feats[i], *logits[i]) for i in windows[n]], opts)
                for n, x in enumerate(items)]

    @staticmethod
    def _answers(context, windows, opts):
        top_k, max_len = opts["top_k"], opts["max_answer_len"]
        best: dict[tuple[int, int], float] = {}
        null = 1e6
        for f, start, end in windows:
            n = len(f.offsets)
            keep = np.r_[0, f.offset:f.offset + n]      # [CLS] and the context tokens
            ps = np.exp(start[keep] - start[keep].max())
            ps /= ps.sum()
            pe = np.exp(end[keep] - end[keep].max())
            pe /= pe.sum()
            null = min(null, float(ps[0] * pe[0]))
            a_all, b_all = _span_pairs(n, max_len)   # best first below (scores may underflow to 0)
            scores = ps[1:][a_all] * pe[1:][b_all]
            found: set[tuple[int, int]] = set()
            for j in np.argsort(-scores, kind="stable"):
                a, b = a_all[j], b_all[j]
                if opts["align_to_words"]:  # widened to whole words of this window
                    span = (int(f.offsets[f.words == f.words[a], 0].min()),
                            int(f.offsets[f.words == f.words[b], 1].max()))
                else:
                    span = (int(f.offsets[a, 0]), int(f.offsets[b, 1]))
                best[span] = max(best.get(span, 0.0), float(scores[j]))
                found.add(span)
                if len(found) == top_k:  # this window's k best distinct spans: enough for the k best overall
                    break
        out = [{"score": sc, "start": a, "end": b, "answer": context[a:b]} for (a, b), sc in best.items()]
        if opts["handle_impossible_answer"] or not out:  # no span at all: a context without tokens
            out.append({"score": null if out else 0.0, "start": 0, "end": 0, "answer": ""})
        out.sort(key=lambda r: -r["score"])
        return out[0] if top_k == 1 else out[:top_k]


@functools.lru_cache(maxsize=64)
def _span_pairs(n: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Every valid (start, end) of a window of n context tokens: end >= start, at most max_len tokens; cached,
    as windows mostly share a few lengths."""
    pairs = np.nonzero(np.triu(np.tril(np.ones((n, n), dtype=bool), max_len - 1)))
    for index in pairs:
        index.flags.writeable = False  # shared between calls
    return pairs


# sentence-transformers' old pooling flags (1_Pooling/config.json), in the order its Pooling concatenates them
_ST_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                     "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len_tokens")


def sentence_transformers_settings(directory: str, check_pooling: bool = True) -> tuple[dict[str, Any], int | None]:
    """What sentence-transformers' `encode()` does with the model in `directory`, read from its files:
    ({"pooling", "normalize"}, max_seq_length), or ({}, None) for a directory without modules.json.

    A pooling mode bertkit lacks (weightedmean, lasttoken, several concatenated) is a ValueError unless not
    `check_pooling` (the caller chose a pooling). Steps bertkit does not take (a Dense, LayerNorm, ... module,
    do_lower_case, a default prompt) are named in a warning: the embeddings then differ from encode()'s.
    `include_prompt` changes nothing without a prompt, so it is not read."""
    path = os.path.join(directory, "modules.json")
    if not os.path.isfile(path):
        return {}, None
    settings: dict[str, Any] = {"normalize": False}
    max_len, skipped = None, []
    for i, module in enumerate(read_json(path, list)):
        if not isinstance(module, dict) or not isinstance(module.get("type"), str):
            raise ValueError(f"{path}: entry {i} must be an object with a \"type\", got {module!r:.80}")
        kind, folder = module["type"].rsplit(".", 1)[-1], os.path.join(directory, module.get("path") or "")
        if kind == "Transformer":
            max_len, lower_case = _st_transformer(folder)
            if lower_case:
                skipped.append("do_lower_case")
        elif kind == "Pooling":
            settings["pooling"] = _st_pooling(folder, check_pooling)
        elif kind == "Normalize":
            settings["normalize"] = True
        else:
            skipped.append(f"its {kind} module")
    prompt = _st_default_prompt(directory)
    if prompt:
        skipped.append(f"its default prompt {prompt!r}")
    if skipped:
        warn(f"feature-extraction: {directory}: bertkit does not apply {', '.join(skipped)}; "
             "its embeddings differ from sentence-transformers' encode()")
    return settings, max_len


def _st_transformer(folder: str) -> tuple[int | None, bool]:
    """A Transformer module's (max_seq_length, do_lower_case), from its sentence_bert_config.json if any."""
    file = os.path.join(folder, "sentence_bert_config.json")
    cfg = read_json(file) if os.path.isfile(file) else {}
    max_len = cfg.get("max_seq_length")
    if max_len is not None and (not is_int(max_len) or max_len < 1):
        raise ValueError(f"{file}: max_seq_length must be an int >= 1 or null, got {max_len!r}")
    return max_len, bool(cfg.get("do_lower_case"))


def _st_pooling(folder: str, check_pooling: bool) -> Any:
    """A Pooling module's mode: `pooling_mode`, else its flags (one mode, or a list of several), else mean."""
    file = os.path.join(folder, "config.json")
    cfg = read_json(file)
    mode = cfg.get("pooling_mode") or [m for k, m in _ST_POOLING_FLAGS.items() if cfg.get(k)] or "mean"
    mode = mode[0] if isinstance(mode, list) and len(mode) == 1 else mode
    if check_pooling and mode not in POOLINGS:
        raise ValueError(f"feature-extraction: {file}: pooling {mode!r} is not one bertkit computes "
                         f"({', '.join(POOLINGS)}); pass pooling=... to choose one")
    return mode


def _st_default_prompt(directory: str) -> Any:
    """The default_prompt_name of config_sentence_transformers.json (encode() prepends that prompt), if any."""
    file = os.path.join(directory, "config_sentence_transformers.json")
    return read_json(file).get("default_prompt_name") if os.path.isfile(file) else None


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, tokens, hidden) -> (batch, hidden) over the real tokens, as sentence-transformers' Pooling
    (padding is on the right, so [CLS] is token 0)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(1).values
    count = m.sum(1).clamp(min=1e-9)
    return (hidden * m).sum(1) / (count if mode == "mean" else count.sqrt())


class FeatureExtractionPipeline(Pipeline):
    """`p(texts)` -> (n, hidden) float tensor of sentence embeddings (a (hidden,) vector for one str).

    A model directory of sentence-transformers (modules.json) sets the defaults to what its `encode()` does:
    the pooling of 1_Pooling/config.json, unit length when it lists a Normalize module, and texts cut to
    sentence_bert_config.json's max_seq_length (all-MiniLM-L6-v2: mean, normalized, 256 tokens, where its BERT
    config allows 512). Otherwise (and for a model object) the defaults are pooling="mean", normalize=False, texts
    cut to the model's positions. Options and `tokenize_kwargs={"max_length": n}` override either.
    pooling: "mean" averages the real tokens' last hidden states, "cls" takes [CLS]'s, "max" the maximum of each
    feature, "mean_sqrt_len_tokens" the sum over the square root of the count; normalize=True scales each to unit
    length. pooling="none" gives what transformers' feature-extraction pipeline gives (texts cut to the model's
    positions, not to max_seq_length): each text's last hidden states, as nested lists of shape (1, tokens, hidden)
    (a list of those for a list of texts), or tensors with return_tensors=True. `truncation` (also in
    tokenize_kwargs) is accepted; texts are cut either way, never refused for their length."""

    task = "feature-extraction"
    auto_class = AutoModel
    head = "encoder"
    options = {"pooling": "mean", "normalize": False, "return_tensors": False, "truncation": True,
               "tokenize_kwargs": None}

    def __init__(self, model, tokenizer=None, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        self.max_seq_length = None  # sentence-transformers' cut of pooled embeddings
        if isinstance(model, (str, os.PathLike)):
            settings, self.max_seq_length = sentence_transformers_settings(self.model_dir,
                                                                           check_pooling="pooling" not in kwargs)
            self.defaults = {**self.options, **settings,
                             **{k: v for k, v in self.defaults.items() if k in kwargs}}  # the caller's win

    def _check_options(self, opts):
        opts = super()._check_options(opts)
        # (padding would change transformers' pooling="none" output: refused)
        self._check_tokenizer_kwargs(opts.get("tokenize_kwargs") or {}, "tokenize_kwargs", ("truncation", "max_length"))
        if opts.get("pooling", "mean") not in (*POOLINGS, "none"):
            raise ValueError(f"feature-extraction: pooling must be one of {', '.join(POOLINGS)} or 'none', "
                             f"got {opts['pooling']!r}")
        if opts.get("pooling") == "none" and opts.get("normalize"):
            raise ValueError(f"feature-extraction: normalize=True needs pooling {', '.join(POOLINGS)}, not 'none'")
        return opts

    def _needs(self, key):
        return "pooler" not in key  # embeddings come from the hidden states, not the pooler

    def _run_batch(self, items, opts):
        max_length = (opts["tokenize_kwargs"] or {}).get("max_length")
        if max_length is None and opts["pooling"] != "none":
            max_length = self.max_seq_length
        batch = self._inputs(self._encode(items, max_length, padding=True, return_tensors="pt"))
        hidden = self._forward(batch).last_hidden_state.float()
        if opts["pooling"] == "none":  # (1, tokens, hidden) per text, as transformers
            lengths = batch["attention_mask"].sum(-1).tolist()
            rows = [hidden[i:i + 1, :n].cpu() for i, n in enumerate(lengths)]
            return [r.clone() for r in rows] if opts["return_tensors"] else [r.tolist() for r in rows]
        vec = _pool(hidden, batch["attention_mask"], opts["pooling"])
        if opts["normalize"]:
            vec = F.normalize(vec, dim=-1)
        return list(vec.cpu())

    def _finish(self, results, single, inputs, opts):
        if opts["pooling"] == "none":
            return results[0] if single else results
        if single:
            return results[0].clone()  # a plain tensor, not an inference-mode view
        if not results:
            return torch.empty(0, self.model.config.hidden_size)
        return torch.stack(results)


TASKS: dict[str, type[Pipeline]] = {
    "feature-extraction": FeatureExtractionPipeline,
    "fill-mask": FillMaskPipeline,
    "question-answering": QuestionAnsweringPipeline,
    "text-classification": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
}

# transformers' other names of the same tasks
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}


def pipeline(task: str, model=None, *, tokenizer=None, batch_size: int = 32, device=None, compile: bool = False,
             dtype=None, torch_dtype=None, model_kwargs: Mapping[str, Any] | None = None,
             **task_options) -> Pipeline:
    """A callable for `task` (one of TASKS, or an alias in TASK_ALIASES) with the checkpoint `model` (a name or
    directory; or a loaded bertkit model together with `tokenizer=`). `task_options` are the defaults of each
    call (e.g. top_k=3, pooling="cls"). `compile=True` runs the embeddings and encoder layers through
    torch.compile. A checkpoint without the task's trained head is refused with a ValueError.
    As in transformers, `model_kwargs` go to the model's from_pretrained, and `dtype` (`torch_dtype`, its older
    name) is model_kwargs' dtype (torch.bfloat16 or "auto"); they apply to a model loaded by name only."""
    model_kwargs = _with_dtype(model_kwargs, dtype, torch_dtype)
    task = TASK_ALIASES.get(task, task)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(sorted(TASKS))} (aliases: "
                         f"{', '.join(f'{a} = {t}' for a, t in sorted(TASK_ALIASES.items()))})")
    if model is None:
        raise ValueError(f"{task}: pass model=NAME_OR_PATH (there is no default model)")
    return TASKS[task](model, tokenizer, batch_size=batch_size, device=device, compile=compile,
                       model_kwargs=model_kwargs, **task_options)


def _with_dtype(model_kwargs: Mapping[str, Any] | None, dtype, torch_dtype) -> dict[str, Any]:
    """`model_kwargs` with pipeline()'s `dtype` / `torch_dtype` in it as `dtype`: the model's dtype given once."""
    merged = _model_kwargs(model_kwargs, None)
    given = [f"{k}=" for k, v in (("dtype", dtype), ("torch_dtype", torch_dtype)) if v is not None]
    given += [f"model_kwargs[{k!r}]" for k in ("dtype", "torch_dtype") if k in merged]
    if len(given) > 1:
        raise ValueError(f"the model's dtype is given {len(given)} times ({', '.join(given)}); give it once")
    if dtype is not None or torch_dtype is not None:
        merged["dtype"] = torch_dtype if dtype is None else dtype
    return merged


def _model_kwargs(model_kwargs: Mapping[str, Any] | None, model) -> dict[str, Any]:
    """from_pretrained's options as a dict; refused for a model object (not None), which nothing loads (transformers
    ignores them there, so a dtype asked for would silently not be the model's)."""
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(f"model_kwargs must be a dict of from_pretrained options, got {type(model_kwargs).__name__}")
    if model_kwargs and model is not None and not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model_kwargs / dtype ({', '.join(model_kwargs)}) apply to a model loaded by name or "
                         "directory; convert a model object yourself (model.to(torch.bfloat16))")
    return dict(model_kwargs or {})
