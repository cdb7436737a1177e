"""BertConfig: one dataclass with HuggingFace's field names, read from and written to config.json."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .checks import is_int
from .io import read_json, write_text_atomic
from .warn import warn

CONFIG_NAME = "config.json"

# The published BERT family (Turc et al. 2019, "Well-Read Students Learn Better"):
# name -> (layers, hidden size); heads = hidden / 64, feed-forward = 4 * hidden.
SIZES = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}

# transformers' labels of a config that names none; config.json leaves them out (transformers 5 writes only what
# differs from its defaults)
DEFAULT_ID2LABEL = {0: "LABEL_0", 1: "LABEL_1"}
DEFAULT_LABEL2ID = {"LABEL_0": 0, "LABEL_1": 1}

# num_labels builds the names LABEL_0..LABEL_{n-1} (as transformers): about 190 bytes a label, so a config.json of
# 26 bytes saying 10**9 would ask for 190 GB before anything else is read. A million labels (190 MB) is far past
# any task a linear head on BERT serves.
MAX_NUM_LABELS = 10**6

# transformers' decoder options, which bertkit lacks: false is taken (and not kept), true refused
DECODER_OPTIONS = ("is_decoder", "add_cross_attention")

# transformers' names of the activations bertkit has (modeling.bert.ACT holds the functions)
ACTIVATIONS = ("gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_accurate", "gelu_fast", "quick_gelu",
               "relu", "relu6", "silu", "swish", "mish", "tanh", "sigmoid", "linear")


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True
    model_type: str = "bert"
    architectures: list[str] | None = None
    # Task heads: label names travel with the checkpoint; none given: transformers' two, LABEL_0 and LABEL_1.
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    # What a forward returns when not told (transformers' config attributes of the same names).
    output_hidden_states: bool = False
    output_attentions: bool = False
    # Keys we do not model are kept verbatim and written back out.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    _name_or_path = ""  # not a field (no annotation): see name_or_path

    def __post_init__(self):
        if self.id2label is not None:
            self.id2label = {_label_id(k, "id2label"): str(v) for k, v in _mapping(self.id2label, "id2label")}
        if self.label2id is not None:
            self.label2id = {str(k): _label_id(v, "label2id") for k, v in _mapping(self.label2id, "label2id")}
            if self.id2label is None:  # names given one way only: the other way follows (validated as id2label)
                self.id2label = {i: name for name, i in self.label2id.items()}
                if len(self.id2label) != len(self.label2id):
                    raise ValueError(f"BertConfig field 'label2id' gives two labels one id: {self.label2id}")
        if self.id2label is None:
            self.id2label = dict(DEFAULT_ID2LABEL)
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.extra = _extra_as_transformers(self.extra)
        self.validate()

    def __getattr__(self, name: str) -> Any:
        """config.json keys bertkit keeps without using them (`use_cache`, `transformers_version`...) read as
        attributes, as on transformers' configs."""
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or config.json key {name!r}")

    # -- what transformers' configs carry besides config.json's fields ------------------------------
    @property
    def dtype(self) -> torch.dtype | None:
        """config.json's "dtype" as a torch.dtype, as transformers' config holds it (after from_pretrained, the
        dtype the model was loaded in); config.json keeps its name."""
        name = self.extra.get("dtype")
        return None if name is None else _torch_dtype(name)

    @dtype.setter
    def dtype(self, value: torch.dtype | str | None) -> None:
        if value is None:
            self.extra.pop("dtype", None)
        else:
            self.extra["dtype"] = _dtype_name(value)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """`dtype`'s older name (transformers 4's)."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: torch.dtype | str | None) -> None:
        self.dtype = value

    @property
    def name_or_path(self) -> str:
        """The model's name or directory, as transformers keeps it (a model's from_pretrained sets it, and
        AutoConfig's); not written to config.json."""
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = str(os.fspath(value))

    # -- labels ---------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    def label_name(self, i: int) -> str:
        """Output i's name: id2label's, or transformers' LABEL_i where there is none."""
        return (self.id2label or {}).get(i, f"LABEL_{i}")

    def label_names(self) -> list[str]:
        return [self.label_name(i) for i in range(self.num_labels)]

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if not is_int(n) or not 1 <= n <= MAX_NUM_LABELS:
            raise ValueError(f"BertConfig field 'num_labels' must be an integer from 1 to {MAX_NUM_LABELS:,}, "
                             f"got {n!r}")
        _check_problem_type(self.problem_type, n)
        if self.id2label is None or len(self.id2label) != n:
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"BertConfig field '{name}' must be a positive integer, got {v!r}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            positive_int(name)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig field 'hidden_size' ({self.hidden_size}) must be a multiple of "
                f"'num_attention_heads' ({self.num_attention_heads})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            v = getattr(self, name)
            if v is None and name == "classifier_dropout":
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
                raise ValueError(f"BertConfig field '{name}' must be a probability in [0, 1), got {v!r}")
        for name in ("initializer_range", "layer_norm_eps"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"BertConfig field '{name}' must be a positive number, got {v!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig field 'hidden_act' must be one of {', '.join(ACTIVATIONS)}; "
                             f"got {self.hidden_act!r}")
        if self.position_embedding_type != "absolute":
            raise ValueError("BertConfig field 'position_embedding_type' must be 'absolute' "
                             f"(the only kind bertkit implements), got {self.position_embedding_type!r}")
        if self.model_type != "bert":
            raise ValueError(f"BertConfig field 'model_type' must be 'bert', got {self.model_type!r}")
        for name in ("tie_word_embeddings", "output_hidden_states", "output_attentions"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"BertConfig field '{name}' must be true or false, got {getattr(self, name)!r}")
        if self.architectures is not None and not (
                isinstance(self.architectures, list) and all(isinstance(a, str) for a in self.architectures)):
            raise ValueError(f"BertConfig field 'architectures' must be a list of class names, "
                             f"got {self.architectures!r}")
        for name in DECODER_OPTIONS:
            if self.extra.get(name):
                raise ValueError(f"BertConfig field '{name}' is {self.extra[name]!r}: bertkit implements BERT's "
                                 "bidirectional encoder only")
        if self.pad_token_id is not None and (isinstance(self.pad_token_id, bool) or not (
                isinstance(self.pad_token_id, int) and 0 <= self.pad_token_id < self.vocab_size)):
            raise ValueError(f"BertConfig field 'pad_token_id' must be an id in [0, vocab_size), "
                             f"got {self.pad_token_id!r}")
        if self.id2label is not None and sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError("BertConfig field 'id2label' must map 0..n-1 to names, "
                             f"got keys {sorted(self.id2label)}")
        _check_problem_type(self.problem_type, self.num_labels)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a BERT config must be a JSON object, got {type(d).__name__}")
        if d.get("model_type", "bert") != "bert":  # before any other field: what is wrong is the whole file
            raise ValueError(f"model_type is {d['model_type']!r}; bertkit only reads 'bert' checkpoints")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        # kept and written back (other tools' fields), but a near-miss is likely a typo; "_name" keys are
        # transformers' own (its old `_num_labels`; `_name_or_path` becomes name_or_path)
        for key in (k for k in extra if not k.startswith("_")):
            close = difflib.get_close_matches(key, known | {"num_labels"}, n=1, cutoff=0.85)
            if close and close[0] != key:
                warn(f"BertConfig: unknown field {key!r} is kept but unused; did you mean {close[0]!r}?")
        num_labels = extra.pop("num_labels", None)
        name_or_path = extra.pop("_name_or_path", None)  # transformers 4 wrote it; 5 reads it, and leaves it out
        if "model_type" not in d:
            kwargs["model_type"] = "bert"
        cfg = cls(**kwargs, extra=extra)
        if name_or_path is not None:
            cfg.name_or_path = name_or_path
        if num_labels is not None and d.get("id2label") is None and d.get("label2id") is None:
            cfg.num_labels = num_labels
        elif num_labels is not None and num_labels != cfg.num_labels:   # as transformers: num_labels wins
            names = cfg.num_labels
            cfg.num_labels = num_labels    # checked by the setter
            warn(f"BertConfig: num_labels {num_labels} disagrees with the {names} names of id2label; taking "
                 f"num_labels, with the names LABEL_0..LABEL_{num_labels - 1}, as transformers does")
        return cfg

    @classmethod
    def from_size(cls, size: str, **overrides) -> "BertConfig":
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; expected one of {', '.join(SIZES)}")
        layers, hidden = SIZES[size]
        base = dict(num_hidden_layers=layers, hidden_size=hidden,
                    num_attention_heads=hidden // 64, intermediate_size=4 * hidden)
        return cls(**{**base, **overrides})

    def to_json_string(self) -> str:
        """What config.json holds (transformers' method of the same name, with every field)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if d["id2label"] in (None, DEFAULT_ID2LABEL) and d["label2id"] in (None, DEFAULT_LABEL2ID):
            d.pop("id2label"), d.pop("label2id")  # transformers' defaults: left out, as transformers writes
        else:
            if d["id2label"] and d["label2id"] == {f"LABEL_{i}": i for i in d["id2label"]}:
                d["label2id"] = {v: k for k, v in d["id2label"].items()}  # names set after construction
            d["id2label"] = {str(k): v for k, v in d["id2label"].items()}
        return {**self.extra, **d}

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        d = read_json(path)
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None

    def to_json_file(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, self.to_json_string())

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, /, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, subfolder: str = "",
                        return_unused_kwargs: bool = False, **overrides) -> "BertConfig":
        """From a config.json file, a directory or a model name, as transformers': `revision` picks a hub-cache
        snapshot of a name (ignored for a local file or directory), `cache_dir` another hub cache, `subfolder`
        a folder of the directory; `overrides` replace fields (or config.json keys bertkit keeps unused), `dtype`
        and `name_or_path` too, and with `return_unused_kwargs=True` the result is `(config, the overrides that
        are neither)`. As transformers' BertConfig (not its AutoConfig), name_or_path is not set to the name given
        unless passed so."""
        from .hub import NO_EFFECT_OPTIONS, _check_revision, apply_config_overrides, resolve_model_dir
        if revision is not None:
            _check_revision(revision)
        path = os.fspath(name_or_path)
        if not os.path.isfile(path):
            path = config_file(resolve_model_dir(path, revision=revision, cache_dir=cache_dir, subfolder=subfolder))
        config = cls.from_json_file(path)
        overrides = {k: v for k, v in overrides.items() if k not in NO_EFFECT_OPTIONS}
        dtype, given_name = _dtype_override(overrides), overrides.pop("name_or_path", None)
        unused = {k: v for k, v in overrides.items() if k not in config.field_names()} if return_unused_kwargs else {}
        named = config.name_or_path  # config.json's "_name_or_path", if any
        config = apply_config_overrides(config, {k: v for k, v in overrides.items() if k not in unused})
        if dtype is not None:
            config.dtype = dtype
        config.name_or_path = named if given_name is None else given_name
        return (config, unused) if return_unused_kwargs else config

    def field_names(self) -> set[str]:
        """What an override may set: the fields, `num_labels`, the config.json keys kept in `extra`, and the
        decoder options (refused unless false)."""
        return ({f.name for f in dataclasses.fields(self)} - {"extra"} | {"num_labels", *DECODER_OPTIONS}
                | set(self.extra))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(directory, CONFIG_NAME))


def check_config(config: Any, who: str) -> None:
    """A TypeError unless `config` is bertkit's BertConfig; a transformers config gets the conversion to use
    (the two classes share a name, so the message names their modules)."""
    if isinstance(config, BertConfig):
        return
    kind = f"{type(config).__module__}.{type(config).__qualname__}"
    hint = "; convert it with bertkit.BertConfig.from_dict(config.to_dict())" if hasattr(config, "to_dict") else ""
    raise TypeError(f"{who} expects a bertkit.BertConfig, got {kind}{hint}")


def _dtype_override(overrides: dict[str, Any]) -> torch.dtype | str | None:
    """from_pretrained's `dtype` (or `torch_dtype`), taken out of `overrides`; "auto" keeps config.json's."""
    if "dtype" in overrides and "torch_dtype" in overrides:
        raise TypeError("pass dtype or torch_dtype (its older name), not both")
    dtype = overrides.pop("dtype", overrides.pop("torch_dtype", None))
    return None if dtype == "auto" else dtype


def _extra_as_transformers(extra: dict[str, Any]) -> dict[str, Any]:
    """config.json's kept keys with the dtype as transformers 5 writes it: "dtype" (not its older name
    "torch_dtype", which gives way to it), torch's name of it, left out when null."""
    extra = dict(extra)
    old = extra.pop("torch_dtype", None)
    if extra.get("dtype") is None:
        extra["dtype"] = old
    if extra["dtype"] is None:
        del extra["dtype"]
    else:
        extra["dtype"] = _dtype_name(extra["dtype"])
    return extra


def _torch_dtype(value: torch.dtype | str) -> torch.dtype:
    dtype = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"BertConfig field 'dtype' must be a torch dtype or its name, such as 'float32'; "
                         f"got {value!r}")
    return dtype


def _dtype_name(value: torch.dtype | str) -> str:
    """torch's name of a dtype ("bfloat16"; "half" is "float16"), what config.json holds."""
    return str(_torch_dtype(value)).removeprefix("torch.")


def _mapping(value, name: str):
    if not isinstance(value, dict):
        raise ValueError(f"BertConfig field '{name}' must be an object, got {value!r}")
    return value.items()


def _label_id(value, name: str) -> int:
    """A label id, as int or as the string of one (JSON object keys are strings)."""
    try:
        if isinstance(value, bool) or int(value) != float(value):
            raise ValueError
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        raise ValueError(f"BertConfig field '{name}' maps labels to integer ids; got {value!r}") from None


def _check_problem_type(problem_type: str | None, num_labels: int) -> None:
    if problem_type not in (None, "regression", "single_label_classification", "multi_label_classification"):
        raise ValueError("BertConfig field 'problem_type' must be regression, single_label_classification or "
                         f"multi_label_classification, got {problem_type!r}")
    if problem_type == "single_label_classification" and num_labels < 2:
        raise ValueError("BertConfig field 'problem_type' is single_label_classification, which needs num_labels "
                         f">= 2, got {num_labels} (a single output is a regression)")


_fields_init = BertConfig.__init__


@functools.wraps(_fields_init)
def _init_with_num_labels(self, *args, num_labels: int | None = None, dtype: torch.dtype | str | None = None,
                          torch_dtype: torch.dtype | str | None = None, name_or_path: str | os.PathLike = "",
                          **kwargs):
    """BertConfig(..., num_labels=3), as transformers' config takes it: labels LABEL_0..LABEL_2; and its `dtype`
    (or older `torch_dtype`; given both, `dtype` is kept, as there) and `name_or_path`; is_decoder=False and
    add_cross_attention=False, which change nothing (true ones are refused by validate, as in config.json)."""
    decoder = {k: kwargs.pop(k) for k in DECODER_OPTIONS if k in kwargs}
    if any(decoder.values()):
        kwargs["extra"] = {**kwargs.get("extra", {}), **{k: v for k, v in decoder.items() if v}}
    _fields_init(self, *args, **kwargs)
    if num_labels is not None:
        self.num_labels = num_labels
    if dtype is not None or torch_dtype is not None:
        self.dtype = torch_dtype if dtype is None else dtype
    if name_or_path:
        self.name_or_path = name_or_path


BertConfig.__init__ = _init_with_num_labels  # the dataclass's own __init__ plus num_labels


def config_file(directory: str | os.PathLike) -> str:
    """`directory`'s config.json; a clear error when it is missing, pointing an original Google or NVIDIA
    checkpoint (bert_config.json) to `bertkit convert`."""
    path = os.path.join(directory, CONFIG_NAME)
    if os.path.isfile(path):
        return path
    if os.path.isfile(os.path.join(directory, "bert_config.json")):
        raise FileNotFoundError(f"{directory}: no config.json, but a bert_config.json: an original "
                                f"google-research/bert or NVIDIA checkpoint; convert it first with "
                                f"`bertkit convert {directory} --output NEW_DIR`")
    best = os.path.join(directory, "best")
    if os.path.isfile(os.path.join(best, CONFIG_NAME)):  # a fine-tuning run's directory
        raise FileNotFoundError(f"{directory}: no config.json; a fine-tuning run: its model is {best}")
    if os.path.isfile(os.path.join(directory, "latest")):  # a pre-training run that has not finished
        raise FileNotFoundError(f"{directory}: no config.json; a pre-training run without its final model yet: "
                                "load a checkpoint of it (step-N/)")
    raise FileNotFoundError(f"{directory}: no config.json")
