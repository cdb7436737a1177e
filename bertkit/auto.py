"""Auto classes: `AutoModelForX.from_pretrained(name_or_path)` for BERT checkpoints.

Every checkpoint bertkit reads is a BERT, so each Auto class maps to one bertkit class; what they
add is name resolution and a clear refusal of a config.json describing another architecture.
"""
from __future__ import annotations

import os

from .config import CONFIG_NAME, BertConfig, check_config, config_file
from .hub import resolve_model_dir
from .io import read_json
from .warn import warn


def check_model_type(directory: str) -> None:
    """Refuse a directory whose config.json names another model_type (a missing model_type means BERT)."""
    path = config_file(directory)
    model_type = read_json(path).get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"{path}: model_type is {model_type!r}; bertkit only reads 'bert' checkpoints")


def check_vocab_fits(tokenizer, config, where: str) -> None:
    """Warn, once at load, when `tokenizer` can give ids that the model's embeddings do not hold (tokens added
    without `resize_token_embeddings`): on the CPU a text holding one fails with an IndexError naming the
    argument, but on a GPU with a device-side assert that stops the process without saying why."""
    if len(tokenizer) <= config.vocab_size:
        return
    extra = tokenizer.convert_ids_to_tokens(list(range(config.vocab_size, min(len(tokenizer), config.vocab_size + 3))))
    warn(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings hold {config.vocab_size} "
         f"(config vocab_size), so a text holding a token of id >= {config.vocab_size} "
         f"({', '.join(map(repr, extra))}{', ...' if len(tokenizer) > config.vocab_size + 3 else ''}) cannot run; "
         f"call model.resize_token_embeddings(len(tokenizer)) and fine-tune, or load the tokenizer saved with "
         f"this model")


class AutoConfig:
    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **kwargs) -> BertConfig:
        """`BertConfig.from_pretrained`: a config.json describing another model_type is refused there. The config
        keeps the name asked for in `name_or_path`, as transformers' AutoConfig sets it (its BertConfig does not)."""
        options = {**_without_auto_options(kwargs), "name_or_path": name_or_path}
        return BertConfig.from_pretrained(name_or_path, **options)


class AutoTokenizer:
    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, subfolder: str = "", config=None,
                        tokenizer_type: str | None = None, mistral_format: bool | None = None, **kwargs):
        """The directory is found as BertTokenizer finds it (`tokenizer_dir`), its config.json (if any) checked
        for a BERT model type, and BertTokenizer loads it (dropping transformers' no-effect options).

        transformers' choices of the tokenizer class are checked, not ignored: `tokenizer_type` must be "bert"
        (then config.json is not read, as there), a `config` object, read instead of config.json, must have
        model_type "bert", and `mistral_format=True` (Mistral's own tokenizer) is refused."""
        from .tokenizer import BertTokenizer, tokenizer_dir
        _check_tokenizer_choice(config, tokenizer_type, mistral_format)
        directory = tokenizer_dir(name_or_path, revision=revision, cache_dir=cache_dir, subfolder=subfolder)
        if tokenizer_type is None and config is None and os.path.isfile(os.path.join(directory, CONFIG_NAME)):
            check_model_type(directory)
        tok = BertTokenizer.from_pretrained(directory, **_without_auto_options(kwargs))
        tok.name_or_path = os.fspath(name_or_path)  # the name asked for, not its snapshot, as in transformers
        return tok


def _check_tokenizer_choice(config, tokenizer_type: str | None, mistral_format: bool | None) -> None:
    """A one-line ValueError for an AutoTokenizer option of transformers that picks a tokenizer other than BERT's
    WordPiece. As there, `tokenizer_type` decides before `config`."""
    if mistral_format:
        raise ValueError("mistral_format=True: bertkit reads BERT WordPiece tokenizers only, not Mistral's format")
    if tokenizer_type is not None:
        if tokenizer_type != "bert":
            raise ValueError(f"tokenizer_type {tokenizer_type!r}: bertkit reads BERT WordPiece tokenizers only; "
                             "expected 'bert'")
        return
    model_type = getattr(config, "model_type", None)
    if config is not None and model_type != "bert":
        raise ValueError(f"config: model_type is {model_type!r}; bertkit only reads 'bert' tokenizers")


# Options transformers' Auto classes take (and its model classes do not), with no effect here: `code_revision` is the
# revision of a repository's own code, which bertkit never runs.
AUTO_NO_EFFECT_OPTIONS = frozenset({"code_revision"})


def _without_auto_options(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in AUTO_NO_EFFECT_OPTIONS}


class _AutoModel:
    """Base of the AutoModel classes; `target` names the bertkit.modeling class built."""

    target = ""

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is not instantiated: use "
                        f"{type(self).__name__}.from_pretrained(name_or_path) or .from_config(config)")

    @classmethod
    def model_class(cls):
        from . import modeling
        return getattr(modeling, cls.target)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, subfolder: str = "", **kwargs):
        directory = resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir, subfolder=subfolder)
        # its config refuses another model_type
        loaded = cls.model_class().from_pretrained(directory, **_without_auto_options(kwargs))
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info=True
        model.name_or_path = os.fspath(name_or_path)  # the name asked for, not its snapshot, as in transformers
        return loaded

    @classmethod
    def from_config(cls, config: BertConfig):
        check_config(config, f"{cls.__name__}.from_config")
        return cls.model_class()(config)


def _auto(name: str, target: str) -> type:
    return type(name, (_AutoModel,), {"target": target, "__module__": __name__,
                                      "__doc__": f"Builds a bertkit `{target}`."})


AutoModel = _auto("AutoModel", "BertModel")
AutoModelForPreTraining = _auto("AutoModelForPreTraining", "BertForPreTraining")
AutoModelForMaskedLM = _auto("AutoModelForMaskedLM", "BertForMaskedLM")
AutoModelForNextSentencePrediction = _auto("AutoModelForNextSentencePrediction", "BertForNextSentencePrediction")
AutoModelForSequenceClassification = _auto("AutoModelForSequenceClassification", "BertForSequenceClassification")
AutoModelForTokenClassification = _auto("AutoModelForTokenClassification", "BertForTokenClassification")
AutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering", "BertForQuestionAnswering")
AutoModelForMultipleChoice = _auto("AutoModelForMultipleChoice", "BertForMultipleChoice")

__all__ = ["AutoConfig", "AutoTokenizer", "AutoModel", "AutoModelForPreTraining", "AutoModelForMaskedLM",
           "AutoModelForNextSentencePrediction", "AutoModelForSequenceClassification",
           "AutoModelForTokenClassification", "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice"]
