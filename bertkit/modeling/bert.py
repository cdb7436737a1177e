"""The BERT encoder. Attribute names equal HuggingFace checkpoint keys, so loading needs no remapping.

Every layer runs on packed tokens (see packing.py): padding is removed once after the embeddings.
"""
from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checks import is_int
from ..config import BertConfig, check_config
from . import packing as P


_BUILD = threading.local()


def _device() -> str | None:
    """Where the layers below put their parameters: "meta" while `_build_for_loading` builds a model whose
    weights a checkpoint will overwrite (torch's default initialisation is then free), else the default."""
    return "meta" if getattr(_BUILD, "meta", False) else None


def _embedding(num: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    """nn.Embedding, left uninitialised while building for loading (`normal_` on the meta device would
    import torch's Python decompositions, half a second)."""
    if _device() == "meta":
        return nn.Embedding(num, dim, padding_idx=padding_idx, _weight=torch.empty(num, dim))
    return nn.Embedding(num, dim, padding_idx=padding_idx)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def gelu_accurate(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


ACT = {  # the names of config.ACTIVATIONS
    "gelu": F.gelu,
    "gelu_python": F.gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_accurate": gelu_accurate,
    "gelu_fast": gelu_fast,
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": identity,
}


def _split_selection(selection, packing: P.Packing) -> tuple[P.Selection | None, P.Selection | None]:
    """(the selection the last layer computes, the rows to take after it). A plan that keeps the padding runs
    every row through the last layer and takes the selected ones after; a function of the plan (the [CLS]
    rows, say) is dropped there, as `first_tokens` finds them among all rows, and called here otherwise."""
    if packing.key_mask is not None and selection is not None:
        return None, (None if callable(selection) else selection)
    return (selection(packing) if callable(selection) else selection), None


def _as_grid(x: torch.Tensor, batch: int, seqlen: int, name: str) -> torch.Tensor:
    """`x` as a (batch, seqlen) grid. Any shape of at most two dimensions that broadcasts to it ((1, seqlen),
    (seqlen,), (batch, 1), a scalar) is expanded, as transformers' sum of embeddings broadcasts it; else an
    error naming it."""
    fits = x.dim() <= 2 and all(n in (1, want) for n, want in zip(reversed(x.shape), (seqlen, batch)))
    if not fits:
        raise ValueError(f"{name} must have shape (batch, seqlen) = ({batch}, {seqlen}) or one that broadcasts to "
                         f"it, got {tuple(x.shape)}")
    return x.expand(batch, seqlen)


def check_tensor(x: object, name: str) -> None:
    """A TypeError naming `name` unless `x` is a tensor (a tokenizer called without return_tensors="pt" gives
    lists, which would fail later on a missing attribute)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__} (tokenizers give tensors with "
                        f"return_tensors='pt')")


def _check_index_dtype(x: torch.Tensor, name: str) -> None:
    """Embedding lookups take int64 or int32 ids only (as in transformers); anything else is a TypeError naming
    the argument rather than torch's about 'indices'."""
    if x.dtype not in (torch.long, torch.int32):
        raise TypeError(f"{name} must be an integer tensor of torch.long or torch.int32, got {x.dtype}")


def _name_bad_ids(lookups) -> None:
    """Called once an embedding lookup has raised torch's IndexError ('index out of range in self', which names
    no argument): an IndexError naming the argument whose (packed) ids fall outside their table. `lookups`:
    (ids or None, table size, argument, config field). Only then are values read, so a forward reads none; and
    only CPU tensors, the ones whose lookup raises (on a GPU a bad id is a device-side assert, not an exception)."""
    for ids, high, name, field in lookups:
        if ids is None or ids.device.type != "cpu" or ids.numel() == 0:
            continue
        low, top = (int(v) for v in torch.aminmax(ids))
        if low < 0 or top >= high:
            message = f"{name} must be in [0, {high}) (config.{field}), got values from {low} to {top}"
            raise IndexError(message) from None


class IndexedOutput:
    """Indexing as on transformers' outputs, so code written for them runs: `out[0]` is the first field that is
    set, in transformers' order (the loss first, when there is one), `out["logits"]` a field by name (KeyError
    when unset), `out.to_tuple()` every field set."""

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_tuple(self) -> tuple:
        return tuple(v for v in (getattr(self, f) for f in self.TUPLE_FIELDS) if v is not None)

    def __getitem__(self, key: int | slice | str):
        if isinstance(key, str):
            value = getattr(self, key, None) if key in self.__dataclass_fields__ else None
            if value is None:
                raise KeyError(key)
            return value
        return self.to_tuple()[key]

    def keys(self) -> list[str]:
        """The names of the fields that are set, in `to_tuple`'s order (`"loss" in out`, `len(out)`, `out.get`)."""
        return [f for f in self.TUPLE_FIELDS if getattr(self, f) is not None]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self):  # the names, as a dict's (transformers' outputs iterate their keys)
        return iter(self.keys())

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default

    def values(self) -> list:
        return [getattr(self, f) for f in self.keys()]

    def items(self) -> list[tuple[str, object]]:
        return [(f, getattr(self, f)) for f in self.keys()]


def model_output(cls):
    """Decorator of the output classes: a dataclass, registered as a pytree node so that torch.export (and
    ONNX export) can return it, as transformers registers its ModelOutput."""
    cls = dataclass(cls)
    pytree.register_dataclass(cls, serialized_type_name=f"bertkit.{cls.__name__}")
    return cls


@model_output
class BertModelOutput(IndexedOutput):
    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")

    last_hidden_state: torch.Tensor             # (batch, seqlen, hidden), zero at padding
    pooler_output: torch.Tensor | None = None   # (batch, hidden)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + every layer, each (batch, seqlen, hidden)
    attentions: tuple[torch.Tensor, ...] | None = None     # every layer, (batch, heads, seqlen, seqlen)


@dataclass
class Encoded:
    """What the encoder hands to heads: packed tokens, so heads pay only for real tokens."""

    hidden: torch.Tensor                 # (tokens, hidden), or (selected, hidden) with a selection
    packing: P.Packing
    all_hidden: list[torch.Tensor] | None  # packed, embeddings first
    all_weights: list[list[torch.Tensor]] | None
    selection: P.Selection | None = None   # the rows `hidden` holds, when not all tokens

    @property
    def first_tokens(self) -> torch.Tensor:
        """Row of `hidden` holding each sequence's first token."""
        return (self.packing if self.selection is None else self.selection).first_tokens

    def hidden_states(self) -> tuple[torch.Tensor, ...] | None:
        if self.all_hidden is None:
            return None
        return tuple(P.repad(h, self.packing) for h in self.all_hidden)

    def attentions(self) -> tuple[torch.Tensor, ...] | None:
        if self.all_weights is None:
            return None
        return tuple(P.repad_attention(w, self.packing) for w in self.all_weights)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = _embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position_embeddings = _embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = _embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=_device())
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None) -> torch.Tensor:
        """The encoder passes packed `(tokens,)` ids (or `(tokens, hidden)` embeddings) with their token types and
        positions. Called as transformers' module is (Captum's attributions, say), on padded `(batch, seqlen)` ids
        or `(batch, seqlen, hidden)` embeddings, missing token types are 0 and positions count from 0."""
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if token_type_ids is None or position_ids is None:
            token_type_ids, position_ids = _padded_defaults(x, token_type_ids, position_ids)
        x = x + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


def _padded_defaults(x: torch.Tensor, token_type_ids, position_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Token types 0 and positions 0..seqlen-1 for padded `x` (batch, seqlen, hidden), as transformers' embeddings
    default them; packed tokens have no sequence to number, so they must come with both."""
    if x.dim() != 3:
        raise ValueError(f"BertEmbeddings: without position_ids and token_type_ids the ids must be padded, shape "
                         f"(batch, seqlen) (or inputs_embeds (batch, seqlen, hidden)), got {tuple(x.shape[:-1])}")
    seqlen = x.shape[1]
    if position_ids is None:
        position_ids = torch.arange(seqlen, device=x.device).unsqueeze(0)    # (1, seqlen)
    if token_type_ids is None:
        token_type_ids = torch.zeros(1, seqlen, dtype=torch.long, device=x.device)
    return token_type_ids, position_ids


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size, device=_device())
        self.key = nn.Linear(config.hidden_size, config.hidden_size, device=_device())
        self.value = nn.Linear(config.hidden_size, config.hidden_size, device=_device())
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, packing: P.Packing, need_weights: bool = False,
                selection: P.Selection | None = None):
        tokens = x.shape[0]
        if selection is None:
            # One GEMM for q, k and v: (tokens, hidden) @ (hidden, 3 * hidden)
            w = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            b = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            qkv = F.linear(x, w, b).view(tokens, 3, self.num_heads, self.head_dim)  # (tokens, 3, heads, head_dim)
            q, k, v = qkv.unbind(1)                                                  # each (tokens, heads, head_dim)
        else:  # queries of the selected rows only; keys and values of every token
            q = self.query(x.index_select(0, selection.rows))
            q = q.view(q.shape[0], self.num_heads, self.head_dim)                   # (selected, heads, head_dim)
            w = torch.cat([self.key.weight, self.value.weight])
            b = torch.cat([self.key.bias, self.value.bias])
            k, v = F.linear(x, w, b).view(tokens, 2, self.num_heads, self.head_dim).unbind(1)  # (tokens, heads, hd)
        p = self.dropout_p if self.training else 0.0
        out, weights = P.attention(q, k, v, packing, p, need_weights, selection)  # (tokens or selected, heads, hd)
        return out.flatten(1), weights                                           # (tokens or selected, hidden)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, device=_device())
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=_device())
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x, packing, need_weights=False, selection=None):
        a, weights = self.self(x, packing, need_weights, selection)
        residual = x if selection is None else x.index_select(0, selection.rows)  # (selected, hidden)
        return self.output(a, residual), weights


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size, device=_device())
        self.act = ACT[config.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class BertOutput(BertSelfOutput):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size, device=_device())


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x, packing, need_weights=False, selection=None):
        """`selection`: compute only those rows (see packing.Selection); the output is (selected, hidden)."""
        a, weights = self.attention(x, packing, need_weights, selection)
        return self.output(self.intermediate(a), a), weights


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False  # see BertPreTrainedModel.gradient_checkpointing_enable
        self.checkpoint_every = 1            # recompute layers 0, n, 2n, ... (every_n_layers)
        self.checkpoint_offload = False      # their saved inputs in pinned host memory (offload)

    def forward(self, h: torch.Tensor, packing: P.Packing, output_hidden_states: bool = False,
                output_attentions: bool = False, selection: P.Selection | None = None):
        """h: packed (tokens, hidden). Returns the last layer's output ((selected, hidden) with a selection),
        and the lists of every layer's input and output states and attention weights when asked for (else None)."""
        all_hidden = [h] if output_hidden_states else None
        all_weights = [] if output_attentions else None
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            rows = selection if i == last else None
            if recompute and i % self.checkpoint_every == 0:
                h, weights = (_checkpointed_outside_graphs or _checkpointed)(layer, self.checkpoint_offload, h,
                                                                             packing, output_attentions, rows)
            else:
                h, weights = layer(h, packing, output_attentions, rows)
            if output_hidden_states:
                all_hidden.append(h)
            if output_attentions:
                all_weights.append(weights)
        return h, all_hidden, all_weights


def _checkpointed(layer: BertLayer, offload: bool, *args):
    """The layer run under non-reentrant `torch.utils.checkpoint` (its dropout masks replayed in the recompute).
    `offload`: what the checkpoint keeps (the layer's inputs) waits in pinned host memory, as transformers'
    `offload=True`; a CPU model's is there already."""
    device = args[0].device.type
    if not offload or device == "cpu":
        return checkpoint(layer, *args, use_reentrant=False)
    with torch.autograd.graph.save_on_cpu(pin_memory=True, device_type=device):
        return checkpoint(layer, *args, use_reentrant=False)


_checkpointed_outside_graphs = None


def compile_layers(model: nn.Module, **kwargs) -> nn.Module:
    """torch.compile the embeddings and the encoder's layer stack in place (`nn.Module.compile`: parameter names
    and checkpoints are unchanged), with a dynamic token count since every packed batch has its own.

    Not the whole model: the packing plan and the heads are Python-heavy and would break the graph or
    recompile. On CUDA the stack is one graph (the varlen kernel traces; the last layer's selected rows
    included); on the CPU the per-run attention is a graph break in each layer. Linear + GELU and dropout +
    residual + LayerNorm fuse. One graph for the stack rather than one per layer, because each compiled
    call costs the host guards and runtime wrappers, forward and backward: where a step's GPU work is short
    (512 x 32) the GPU waited on them (`python bench/host_overhead.py`; session 9's H100 profile, where the
    compiled layers behind eager embeddings left the GPU idle a third of each step).
    With gradient checkpointing each checkpointed layer is a graph break in the stack and runs as its own
    compiled graph, so the recompute replays that graph's dropout masks. Returns `model`."""
    global _checkpointed_outside_graphs
    kwargs.setdefault("dynamic", True)
    P.keep_runs_out_of_graphs()
    if _checkpointed_outside_graphs is None:
        _checkpointed_outside_graphs = torch.compiler.disable(_checkpointed)
    modules = [m for m in model.modules() if isinstance(m, (BertEmbeddings, BertEncoder, BertLayer))]
    if not any(isinstance(m, BertEncoder) for m in modules):
        raise ValueError(f"{type(model).__name__} has no BertEncoder to compile")
    for module in modules:
        module.compile(**kwargs)
    return model


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, device=_device())
        self.activation = nn.Tanh()

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        """first_token: (batch, hidden), the [CLS] state of each sequence. Given padded (batch, seqlen, hidden)
        states (`model.pooler(out.hidden_states[-2])`), it pools their first position, as transformers' pooler."""
        if first_token.dim() == 3:
            first_token = first_token[:, 0]                                   # (batch, hidden)
        return self.activation(self.dense(first_token))


def _init_walk(module: nn.Module):
    """`module` and its descendants, parents first, children in the order transformers' heads register them: that of
    `module.init_order` (names) when it has one, else bertkit's."""
    yield module
    names = list(getattr(module, "init_order", ()))
    names += [n for n in module._modules if n not in names]
    for name in names:
        child = module._modules[name]
        if child is not None:
            yield from _init_walk(child)


class BertPreTrainedModel(nn.Module):
    """Weight initialisation, embedding resizing and the checkpoint entry points shared by all models."""

    base_model_prefix = "bert"

    @property
    def name_or_path(self) -> str:
        """What `from_pretrained` was given (a name or a directory), kept in the config as transformers keeps it
        (so `model.config.name_or_path` says it too)."""
        return self.config.name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self.config.name_or_path = os.fspath(value)

    def __init__(self, config: BertConfig):
        super().__init__()
        check_config(config, type(self).__name__)
        self.config = config

    @property
    def base_model(self) -> "BertModel":
        return getattr(self, self.base_model_prefix, self)

    def _init_module(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            for name, p in module.named_parameters(recurse=False):
                self._init_parameter(module, name, p)

    @torch.no_grad()
    def _init_parameter(self, module: nn.Module, name: str, p: nn.Parameter) -> None:
        """BERT's initialisation of one parameter of `module`: N(0, initializer_range) for Linear and Embedding
        weights (an Embedding's padding row 0), 1 for LayerNorm weights, 0 for biases and raw parameters."""
        if isinstance(module, nn.Embedding) or (isinstance(module, nn.Linear) and name == "weight"):
            nn.init.normal_(p, std=self.config.initializer_range)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                p[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm) and name == "weight":
            nn.init.ones_(p)
        else:
            nn.init.zeros_(p)

    def init_unloaded(self, loaded: set[int]) -> None:
        """Initialise the parameters whose id is not in `loaded` (those a checkpoint did not provide), module by
        module in transformers' order, drawing from torch's RNG for them alone. As in transformers 5, loading a
        complete checkpoint then draws nothing, and a fresh head after `torch.manual_seed(s)` gets the values
        transformers gives it (a user comparing the two, or a run's shuffling after the load, sees the same)."""
        done = set(loaded)
        for module in _init_walk(self):
            for name, p in module.named_parameters(recurse=False):
                if id(p) not in done:
                    done.add(id(p))
                    self._init_parameter(module, name, p)

    def init_weights(self) -> None:
        """Random initialisation as in BERT: N(0, initializer_range), zero biases, unit LayerNorm."""
        if _device() == "meta":  # building for loading: `_build_for_loading` initialises once at the end
            return
        self.apply(self._init_module)
        emb = self.get_input_embeddings()
        if emb.padding_idx is not None:  # a tied decoder's init may have overwritten the padding row
            with torch.no_grad():
                emb.weight[emb.padding_idx].zero_()
        self.tie_weights()

    def tie_weights(self) -> None:
        """Heads whose decoder shares the word embeddings re-establish the tie here."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Linear | None:
        """The vocabulary decoder of a masked-LM head (None without one), as in transformers."""
        return None

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        """Replace the word embeddings by others of the same shape; to change the vocabulary size,
        `resize_token_embeddings`. As in transformers, a tied MLM decoder keeps the old weights (and the logits
        with it) until `tie_weights()` (or resize_token_embeddings) ties it to the new ones: code written for
        transformers gets the same logits. Saved in between, the checkpoint reloads untied, with a warning."""
        old = self.get_input_embeddings()
        if not isinstance(embeddings, nn.Embedding) or embeddings.weight.shape != old.weight.shape:
            raise ValueError(f"set_input_embeddings needs an nn.Embedding of shape {tuple(old.weight.shape)}, got "
                             f"{embeddings!r}; resize_token_embeddings changes the vocabulary size")
        self.base_model.embeddings.word_embeddings = embeddings

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted once each (a tied decoder shares the word embeddings), as transformers counts."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and not (exclude_embeddings and id(p) in embeddings))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None,
                                      every_n_layers: int = 1, offload: bool = False) -> None:
        """Trade compute for memory in training: each encoder layer keeps only its input for the backward
        and runs its forward again there (non-reentrant `torch.utils.checkpoint`, with the dropout masks
        replayed, so the gradients are those of a plain step). Costs about one more forward per step.
        `gradient_checkpointing_kwargs` as transformers takes it (its Trainer passes {"use_reentrant": ...}):
        the gradients are the same either way, so use_reentrant is accepted and the non-reentrant form runs.
        `every_n_layers` and `offload` as transformers 5's (its Trainer passes both): only layers 0, n, 2n, ...
        recompute; `offload=True` keeps what they save in pinned host memory."""
        self._enable_checkpointing("gradient_checkpointing_kwargs", gradient_checkpointing_kwargs, every_n_layers,
                                   offload)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """transformers 5's name of `gradient_checkpointing_enable`, the one its Trainer calls."""
        self._enable_checkpointing("activation_checkpointing_kwargs", activation_checkpointing_kwargs,
                                   every_n_layers, offload)

    def _enable_checkpointing(self, kwargs_name: str, kwargs: dict | None, every_n_layers: int,
                              offload: bool) -> None:
        unknown = sorted(set(kwargs or {}) - {"use_reentrant"})
        if unknown:
            raise ValueError(f"{kwargs_name}: only use_reentrant is accepted, got {unknown}")
        if not is_int(every_n_layers) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be a positive int, got {every_n_layers!r}")
        encoder = self.base_model.encoder
        encoder.gradient_checkpointing = True
        encoder.checkpoint_every = every_n_layers
        encoder.checkpoint_offload = bool(offload)

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.encoder.gradient_checkpointing = False

    def activation_checkpointing_disable(self) -> None:
        """transformers 5's name of `gradient_checkpointing_disable`."""
        self.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.base_model.encoder.gradient_checkpointing

    @property
    def is_activation_checkpointing(self) -> bool:
        """transformers 5's name of `is_gradient_checkpointing`."""
        return self.is_gradient_checkpointing

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Grow or shrink the vocabulary (after `tokenizer.add_tokens`) to `new_num_tokens` (None: as it is),
        rounded up to a multiple of `pad_to_multiple_of` when given. New rows start at the mean of the old
        ones, as transformers' default (`mean_resizing`; it adds noise of about 1e-6), so that a new token does
        not pull the model's outputs far off at first (an untied MLM decoder's rows and bias too; a tied decoder's
        new bias entries are 0, as in transformers); `mean_resizing=False`: N(0, initializer_range)."""
        old = self.get_input_embeddings()
        vocab_size = old.num_embeddings if new_num_tokens is None else new_num_tokens
        for name, v in (("new_num_tokens", vocab_size), ("pad_to_multiple_of", pad_to_multiple_of)):
            if v is not None and (not is_int(v) or v < 1):
                raise ValueError(f"resize_token_embeddings: {name} must be a positive int, got {v!r}")
        if pad_to_multiple_of is not None:
            vocab_size = -(-vocab_size // pad_to_multiple_of) * pad_to_multiple_of
        if vocab_size == old.num_embeddings:
            return old
        if old.padding_idx is not None and old.padding_idx >= vocab_size:
            raise ValueError(f"resize_token_embeddings: {vocab_size} tokens would drop the padding token, id "
                             f"{old.padding_idx} (config.pad_token_id); keep at least {old.padding_idx + 1}")
        new = nn.Embedding(vocab_size, old.embedding_dim, padding_idx=old.padding_idx,
                           device=old.weight.device, dtype=old.weight.dtype)
        self._init_module(new)
        keep = min(vocab_size, old.num_embeddings)
        with torch.no_grad():
            new.weight[:keep] = old.weight[:keep]
            if mean_resizing and vocab_size > keep:
                new.weight[keep:] = old.weight.float().mean(0).to(old.weight.dtype)
        new.weight.requires_grad_(old.weight.requires_grad)  # frozen embeddings stay frozen
        self.base_model.embeddings.word_embeddings = new
        self.config.vocab_size = vocab_size
        self._resize_output_embeddings(vocab_size, mean_resizing)
        self.tie_weights()
        return new

    def _resize_output_embeddings(self, vocab_size: int, mean_resizing: bool) -> None:
        """Heads with an output vocabulary (the MLM decoder) follow `resize_token_embeddings` here."""

    @classmethod
    def from_config(cls, config: BertConfig):
        return cls(config)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, revision: str | None = None, **kwargs):
        """Load a directory or model name; see `bertkit.hub.load_pretrained` for the options.
        `add_pooling_layer` goes to the constructor, as in transformers (BertModel's only)."""
        from ..hub import load_pretrained
        build = cls._build_for_loading
        if "add_pooling_layer" in kwargs:
            build = functools.partial(build, add_pooling_layer=kwargs.pop("add_pooling_layer"))
        return load_pretrained(build, name_or_path, revision=revision, **kwargs)

    @classmethod
    def _build_for_loading(cls, config: BertConfig, **model_kwargs):
        """`cls(config)` for a checkpoint to be loaded into: the layers are built on the meta device, so
        torch's default initialisation costs nothing and draws no random numbers, then every parameter gets
        memory, left uninitialised: loading (`hub.load_state`) copies the checkpoint in and initialises the rest
        (`init_unloaded`). Not `with torch.device("meta")` nor `to_empty`: they import torch._dynamo or the
        Python decompositions (0.5-1.8 s of cold start)."""
        _BUILD.meta = True
        try:
            model = cls(config, **model_kwargs)
        finally:
            _BUILD.meta = False
        for module in model.modules():  # meta parameters are never shared: each layer owns its own
            for name, p in list(module._parameters.items()):
                if p is not None and p.is_meta:
                    module._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                            requires_grad=p.requires_grad)
        model.tie_weights()
        return model

    def save_pretrained(self, directory: str | os.PathLike, is_main_process: bool = True,
                        state_dict: dict[str, torch.Tensor] | None = None, *, safe_serialization: bool = True,
                        push_to_hub: bool = False, max_shard_size: int | str | None = None) -> None:
        """`config.json` and `model.safetensors` (transformers' options accepted where they ask for that).
        As there, `state_dict` is written instead of the model's own (accelerate's gathered one, say; tied
        parameters once), `is_main_process=False` writes nothing (the other processes of a distributed run), and
        weights larger than `max_shard_size` are written as shards `model-00001-of-0000N.safetensors` with
        `model.safetensors.index.json` (see `hub.save_pretrained`); None: transformers' default, "50GB"."""
        if not safe_serialization:
            raise ValueError("save_pretrained: bertkit writes safetensors only (safe_serialization=False would "
                             "write a pickled .bin, which loading must not execute)")
        if push_to_hub:
            raise ValueError("save_pretrained: push_to_hub is not supported (bertkit reads and writes local files "
                             "only); upload the directory with huggingface_hub")
        from ..hub import DEFAULT_MAX_SHARD_SIZE, save_pretrained, shard_size_in_bytes
        limit = DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else shard_size_in_bytes(max_shard_size)
        if not is_main_process:
            return
        save_pretrained(self, directory, state_dict, max_shard_size=limit)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class BertModel(BertPreTrainedModel):
    """Embeddings, a stack of encoder layers, and the [CLS] pooler."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def encode(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
               inputs_embeds=None, output_hidden_states=None, output_attentions=None,
               packing: P.Packing | None = None,
               selection: P.Selection | Callable[[P.Packing], P.Selection] | None = None) -> Encoded:
        """Run the encoder on packed tokens; the inputs are padded `(batch, seqlen)` tensors as usual.

        `packing`: the plan of `attention_mask`, made beforehand with `packing.pack(cpu_mask, device)` so the
        forward needs no host sync (the training loop does this on the CPU batch); None: planned here.
        `selection`: the rows whose final state is wanted (`packing.select`); the last layer computes only
        those and `hidden` holds them, in the selection's order (pre-training's masked tokens, a
        classifier's [CLS]: the same numbers, a fraction of the last layer's work). A function of the
        packing is called with it (`packing.select_first_tokens` for the [CLS] alone)."""
        # not asked: the config's default (transformers' config attributes), except for a caller that selects rows
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states and selection is None
        if output_attentions is None:
            output_attentions = self.config.output_attentions and selection is None
        batch, seqlen = self.input_shape(input_ids, inputs_embeds)
        ref = input_ids if input_ids is not None else inputs_embeds
        attention_mask, grids = self._checked_grids(attention_mask, token_type_ids, position_ids, batch, seqlen,
                                                    "input_ids" if input_ids is not None else "inputs_embeds",
                                                    ref.device)
        if packing is None:
            packing = P.pack_padded(attention_mask) if P.tracing() else P.pack(attention_mask)
        elif (packing.batch, packing.seqlen) != (batch, seqlen):
            raise ValueError(f"the packing plans a ({packing.batch}, {packing.seqlen}) batch, "
                             f"the inputs are ({batch}, {seqlen})")
        if selection is not None and (output_hidden_states or output_attentions):
            raise ValueError("a selection keeps only some rows of the last layer; ask for hidden states or "
                             "attentions without one")
        selection, take = _split_selection(selection, packing)

        if position_ids is None and packing.key_mask is not None:       # every position is a row
            positions = torch.arange(seqlen, device=ref.device).repeat(batch)  # (batch * seqlen,)
        elif position_ids is None:
            positions = packing.indices % seqlen                         # (tokens,)
        else:
            positions = P.unpad(grids["position_ids"], packing)
        if token_type_ids is None:
            types = torch.zeros_like(positions)
        else:
            types = P.unpad(grids["token_type_ids"], packing)
        ids = P.unpad(input_ids, packing) if input_ids is not None else None  # real tokens: padding is not looked up
        embeds = P.unpad(inputs_embeds, packing) if inputs_embeds is not None else None
        try:
            h = self.embeddings(ids, types, positions, embeds)           # (tokens, hidden)
        except IndexError:
            cfg = self.config
            _name_bad_ids(((ids, cfg.vocab_size, "input_ids", "vocab_size"),
                           (types, cfg.type_vocab_size, "token_type_ids", "type_vocab_size"),
                           (positions, cfg.max_position_embeddings, "position_ids", "max_position_embeddings")))
            raise
        h, all_hidden, all_weights = self.encoder(h, packing, output_hidden_states, output_attentions, selection)
        if take is not None:
            h, selection = h.index_select(0, take.rows), take                 # (selected, hidden)
        return Encoded(h, packing, all_hidden, all_weights, selection)

    def _checked_grids(self, attention_mask, token_type_ids, position_ids, batch: int, seqlen: int, given: str,
                       device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The attention mask (all ones when not given) and the token types / positions given, as (batch,
        seqlen) grids, checked before the plan (on a GPU, the forward's one host sync); (1, seqlen) types
        apply to every sequence, as transformers broadcasts them. `given`: the input that set the shape."""
        if seqlen > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seqlen} exceeds max_position_embeddings "
                             f"({self.config.max_position_embeddings}); truncate the input")
        if attention_mask is None:
            attention_mask = torch.ones(batch, seqlen, dtype=torch.long, device=device)
        else:
            check_tensor(attention_mask, "attention_mask")
            if attention_mask.shape != (batch, seqlen):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                                 f"expected {(batch, seqlen)} like {given}")
        grids = {}
        for name, x in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            if x is not None:
                check_tensor(x, name)
                _check_index_dtype(x, name)
                grids[name] = _as_grid(x, batch, seqlen, name)
        return attention_mask, grids

    def input_shape(self, input_ids=None, inputs_embeds=None) -> tuple[int, int]:
        """(batch, seqlen) of the one of `input_ids` (batch, seqlen) and `inputs_embeds` (batch, seqlen, hidden)
        given, after checking its type, dtype and shape: Python-level checks only, which read nothing from the
        device (heads call this to check their labels before the forward)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            check_tensor(input_ids, "input_ids")
            _check_index_dtype(input_ids, "input_ids")
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, seqlen), got {tuple(input_ids.shape)}")
            return tuple(input_ids.shape)
        check_tensor(inputs_embeds, "inputs_embeds")
        hidden = self.config.hidden_size
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden:
            raise ValueError(f"inputs_embeds must have shape (batch, seqlen, hidden_size) = (batch, seqlen, {hidden}), "
                             f"got {tuple(inputs_embeds.shape)}")
        return tuple(inputs_embeds.shape[:2])

    def pool(self, enc: Encoded) -> torch.Tensor:
        if self.pooler is None:
            raise ValueError("this model was built without a pooler (add_pooling_layer=False)")
        return self.pooler(enc.hidden.index_select(0, enc.first_tokens))  # (batch, hidden)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states=None, output_attentions=None,
                packing: P.Packing | None = None) -> BertModelOutput:
        """`packing`: see `encode` (a plan made on the CPU spares the forward its one host sync)."""
        enc = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                          output_hidden_states, output_attentions, packing)
        return BertModelOutput(
            last_hidden_state=P.repad(enc.hidden, enc.packing),
            pooler_output=self.pool(enc) if self.pooler is not None else None,
            hidden_states=enc.hidden_states(),
            attentions=enc.attentions(),
        )
