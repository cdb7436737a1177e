"""Packed (unpadded) execution: remove padding once, run the layers on real tokens, put it back where asked.

Real batches are mostly padding, so the encoder works on a `(tokens, hidden)` matrix that holds only the
real tokens of every sequence, back to back. Linear layers, GELU and LayerNorm act per token and do not care;
only attention needs to know where each sequence starts, which `cu_seqlens` (cumulative lengths) records.
That is exactly the layout of variable-length attention kernels (FlashAttention's varlen API): on CUDA in
fp16/bf16, `attention()` hands the packed tensors to that kernel in one call (see `use_varlen`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class _Plan:
    """What the two plans below share: tensors moved or pinned together, and `cu_seqlens`-delimited rows."""

    cu_seqlens: torch.Tensor
    _tensors: tuple[str, ...] = ()  # the fields holding tensors

    @property
    def first_tokens(self) -> torch.Tensor:
        """Row of each sequence's first token (the [CLS] the pooler reads)."""
        return self.cu_seqlens[:-1].long()

    def to(self, device: torch.device | str):
        """The plan with its tensors on `device` (non-blocking copies)."""
        return dataclasses.replace(self, **{f: getattr(self, f).to(device, non_blocking=True) for f in self._tensors
                                            if getattr(self, f) is not None})

    def pin(self):
        """The plan with its CPU tensors in page-locked memory, for asynchronous copies to a GPU."""
        if self.cu_seqlens.device.type != "cpu":
            return self
        return dataclasses.replace(self, **{f: getattr(self, f).pin_memory() for f in self._tensors
                                            if getattr(self, f) is not None})


@dataclass(frozen=True)
class Packing(_Plan):
    """Where the real tokens of a padded `(batch, seqlen)` grid live once packed."""

    indices: torch.Tensor     # (tokens,) flat index into batch * seqlen of each real token, in order
    cu_seqlens: torch.Tensor  # (batch + 1,) int32, sequence b is packed rows cu_seqlens[b]:cu_seqlens[b+1]
    max_seqlen: int
    batch: int
    seqlen: int
    # Runs of consecutive sequences with the same length, as (first packed row, sequences, length):
    # each run is one dense batched attention call on the CPU.
    runs: tuple[tuple[int, int, int], ...]
    # Only in a plan that keeps the padding (`pack_padded`): (batch, seqlen) bool, True at real tokens.
    key_mask: torch.Tensor | None = None
    _tensors = ("indices", "cu_seqlens", "key_mask")

    @property
    def first_tokens(self) -> torch.Tensor:
        """Row of each sequence's first real token (the [CLS] the pooler reads): past column 0 under left
        padding when the plan keeps the padding (`pack_padded`), found without reading the device."""
        if self.key_mask is None:
            return super().first_tokens
        batch, seqlen = self.key_mask.shape
        first = self.key_mask.to(torch.int32).argmax(1)                  # (batch,) first True of each row
        return torch.arange(batch, device=first.device) * seqlen + first  # (batch,) rows of the padded grid

    @property
    def is_dense(self) -> bool:
        """True when every position is a row (nothing is padding, or the plan keeps it): packing is a reshape."""
        return len(self.runs) == 1 and self.runs[0][2] == self.seqlen


def pack(attention_mask: torch.Tensor, device: torch.device | str | None = None) -> Packing:
    """Plan the packing for a `(batch, seqlen)` mask of 1 (real token) and 0 (padding).

    The plan is made on the CPU: the lengths must become Python ints anyway (the runs, `max_seqlen`), and
    `nonzero` on a GPU is a host sync of its own. A CUDA mask is therefore copied over once (the one host
    sync of a forward); a CPU mask costs none, so a training loop that packs its CPU batch before moving it
    (`device=`) never waits for the GPU. The plan's tensors land on `device` (default: the mask's)."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (batch, seqlen), got {tuple(attention_mask.shape)}")
    device = attention_mask.device if device is None else torch.device(device)
    batch, seqlen = attention_mask.shape
    if batch == 0 or seqlen == 0:
        raise ValueError(f"an empty batch: the inputs have shape {(batch, seqlen)}; give at least one token")
    mask = attention_mask.detach().to("cpu").bool()
    lengths = mask.sum(dim=1, dtype=torch.int32)                         # (batch,)
    lengths_list = lengths.tolist()
    if 0 in lengths_list:
        raise ValueError(f"attention_mask row {lengths_list.index(0)} has no real token (all zeros)")
    cu_seqlens = F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))  # (batch + 1,)
    if sum(lengths_list) == batch * seqlen:
        indices = torch.arange(batch * seqlen)
    else:
        indices = torch.nonzero(mask.flatten(), as_tuple=True)[0]       # (tokens,)
    runs, start, b = [], 0, 0
    while b < batch:
        n = 1
        while b + n < batch and lengths_list[b + n] == lengths_list[b]:
            n += 1
        runs.append((start, n, lengths_list[b]))
        start += n * lengths_list[b]
        b += n
    plan = Packing(indices, cu_seqlens, max(lengths_list), batch, seqlen, tuple(runs))
    return plan if device.type == "cpu" else plan.pin().to(device)


def pack_padded(attention_mask: torch.Tensor) -> Packing:
    """A plan that keeps the padding: every position is a row, one run, and attention masks the padded keys.

    Nothing is read back from the device and no shape depends on the mask's values, so the forward traces
    with symbolic batch and sequence sizes: what torch.export, ONNX export and torch.jit.trace need
    (`BertModel.encode` takes this plan while they run). The padded rows are computed (attending to the
    real keys) and `repad` sets them to zero, so outputs equal those of `pack`'s plan."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (batch, seqlen), got {tuple(attention_mask.shape)}")
    batch, seqlen = attention_mask.shape
    device = attention_mask.device
    cu_seqlens = torch.arange(batch + 1, dtype=torch.int32, device=device) * seqlen   # (batch + 1,)
    return Packing(torch.arange(batch * seqlen, device=device), cu_seqlens, seqlen, batch, seqlen,
                   ((0, batch, seqlen),), key_mask=attention_mask.bool())


def tracing() -> bool:
    """True while torch.export (and so ONNX export) or torch.jit.trace records the model: plans must then
    not depend on the mask's values (`pack_padded`)."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


@dataclass(frozen=True)
class Selection(_Plan):
    """Some packed rows of every sequence whose final hidden state is wanted, e.g. the masked tokens and the
    [CLS] of pre-training. The last layer computes only these rows: its other outputs feed nothing, so
    skipping them changes no result. In attention they are the queries (keys and values stay all tokens),
    laid out like a packing: ascending, sequence by sequence, each sequence's first token included (so
    `first_tokens` is its position in the selection)."""

    rows: torch.Tensor        # (selected,) packed rows, ascending
    cu_seqlens: torch.Tensor  # (batch + 1,) int32, sequence b's selected rows are rows[cu_seqlens[b]:cu_seqlens[b+1]]
    max_seqlen: int           # most rows selected in one sequence
    counts: tuple[int, ...]   # rows selected in each sequence (for the per-run path, without reading the device)
    _tensors = ("rows", "cu_seqlens")


def select(packing: Packing, rows: torch.Tensor) -> Selection:
    """Plan a Selection of the packed `rows` (any order; each sequence's first token is added) on the CPU.

    Like `pack`, the plan needs Python ints, so device tensors are copied back (a host sync); a training
    loop plans on the CPU batch. Find where a row landed with `torch.searchsorted(selection.rows, row)`."""
    device = packing.cu_seqlens.device
    cu = packing.cu_seqlens.to("cpu")
    tokens = int(cu[-1])
    keep = torch.zeros(tokens, dtype=torch.bool)
    keep[rows.to("cpu")] = True
    keep[cu[:-1].long()] = True
    chosen = torch.nonzero(keep, as_tuple=True)[0]                       # (selected,)
    per_seq = torch.diff(torch.searchsorted(chosen, cu.long()))          # (batch,) rows chosen per sequence
    cu_sel = F.pad(torch.cumsum(per_seq, dim=0, dtype=torch.int32), (1, 0))  # (batch + 1,)
    plan = Selection(chosen, cu_sel, int(per_seq.max()), tuple(per_seq.tolist()))
    return plan if device.type == "cpu" else plan.pin().to(device)


def select_first_tokens(packing: Packing) -> Selection:
    """The Selection of each sequence's first token alone (what a pooled-[CLS] head reads); no host sync."""
    cu = torch.arange(packing.batch + 1, dtype=torch.int32, device=packing.cu_seqlens.device)
    return Selection(packing.first_tokens, cu, 1, (1,) * packing.batch)


def unpad(x: torch.Tensor, packing: Packing, name: str | None = None) -> torch.Tensor:
    """(batch, seqlen, ...) -> (tokens, ...). A `name` (a caller's argument, e.g. "labels") is checked to be of the
    batch's shape first, so a wrong one is an error naming it rather than torch's reshape error."""
    if name is not None and tuple(x.shape[:2]) != (packing.batch, packing.seqlen):
        raise ValueError(f"{name} must have shape (batch, seqlen) = ({packing.batch}, {packing.seqlen}) like the "
                         f"inputs, got {tuple(x.shape)}")
    flat = x.reshape(packing.batch * packing.seqlen, *x.shape[2:])      # (batch * seqlen, ...)
    if not packing.is_dense:
        return flat.index_select(0, packing.indices)
    if torch.is_inference_mode_enabled() and not flat.is_inference():
        # a view of the caller's tensor, where a padded batch gives a new inference tensor: compiled code guards
        # on the difference and would compile again for the first batch without padding (a batch of one, say)
        return flat.clone()
    return flat


def repad(x: torch.Tensor, packing: Packing, fill: float = 0.0) -> torch.Tensor:
    """(tokens, ...) -> (batch, seqlen, ...), padding positions set to `fill`."""
    if packing.key_mask is not None:                                    # the padded rows were computed
        out = x.reshape(packing.batch, packing.seqlen, *x.shape[1:])    # (batch, seqlen, ...)
        keep = packing.key_mask.view(packing.batch, packing.seqlen, *[1] * (x.dim() - 1))  # (batch, seqlen, 1...)
        return out.masked_fill(~keep, fill)
    if packing.is_dense:
        return x.reshape(packing.batch, packing.seqlen, *x.shape[1:])   # (batch, seqlen, ...)
    out = x.new_full((packing.batch * packing.seqlen, *x.shape[1:]), fill)
    out.index_copy_(0, packing.indices, x)
    return out.view(packing.batch, packing.seqlen, *x.shape[1:])        # (batch, seqlen, ...)


def use_varlen(device_type: str, dtype: torch.dtype, need_weights: bool) -> bool:
    """The condition for the fused variable-length kernel: a CUDA tensor in fp16 or bf16 (FlashAttention's
    dtypes) and no attention probabilities requested (the kernel never materialises them). Anything else
    (the CPU, fp32 on a GPU, `output_attentions=True`) takes the per-run path. FlashAttention needs an
    Ampere or newer GPU (compute capability 8.0+); on an older one, run the model in fp32."""
    return device_type == "cuda" and dtype in (torch.float16, torch.bfloat16) and not need_weights


def _varlen_kernel(q, k, v, cu_q, cu_k, max_q: int, max_k: int, dropout_p: float) -> torch.Tensor:
    """FlashAttention over packed sequences: q (queries, heads, head_dim), k and v (tokens, heads, head_dim),
    out like q. Queries and keys are packed the same way unless a Selection picked some queries.

    Without dropout: the public `torch.nn.attention.varlen.varlen_attn` (measured in docs/PERFORMANCE.md).
    It has no dropout argument, so training with attention dropout calls the ATen op it wraps,
    `_flash_attention_forward`, whose autograd formula (derivatives.yaml) replays the same dropout mask."""
    if dropout_p > 0.0:
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, False, False)[0]
    from torch.nn.attention.varlen import varlen_attn
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing,
              dropout_p: float = 0.0, need_weights: bool = False, selection: Selection | None = None):
    """Attention of each packed sequence over itself.

    q, k, v: (tokens, heads, head_dim). Returns (tokens, heads, head_dim) and, when `need_weights`,
    one (sequences, heads, length, length) probability tensor per run (for visualisation).
    When `use_varlen` holds (CUDA, fp16/bf16, no probabilities), one FlashAttention varlen call takes
    (q, k, v, cu_seqlens, max_seqlen) directly; otherwise each run of equal-length sequences is one dense call.
    `selection`: q holds only the selected rows, (selected, heads, head_dim), and so does the output; keys
    and values are every token's.
    """
    if selection is not None and need_weights:
        raise ValueError("attention probabilities need every query; run without a selection")
    if packing.key_mask is not None:  # a plan that keeps the padding: one masked dense call, in the graph
        if selection is not None:
            raise ValueError("a plan that keeps the padding (pack_padded) takes no selection")
        return _attention_runs(q, k, v, packing, dropout_p, need_weights)
    if use_varlen(q.device.type, q.dtype, need_weights):
        cu, most = packing.cu_seqlens, packing.max_seqlen
        if selection is None:
            return _varlen_kernel(q, k, v, cu, cu, most, most, dropout_p), []
        return _varlen_kernel(q, k, v, selection.cu_seqlens, cu, selection.max_seqlen, most, dropout_p), []
    compiling = _runs_outside_graphs is not None and torch.compiler.is_compiling()
    if selection is not None:
        return (_selected_outside_graphs if compiling else _selected_runs)(q, k, v, packing, selection, dropout_p), []
    return (_runs_outside_graphs if compiling else _attention_runs)(q, k, v, packing, dropout_p, need_weights)


_runs_outside_graphs = _selected_outside_graphs = None


def keep_runs_out_of_graphs() -> None:
    """Make torch.compile treat the per-run paths as graph breaks: their Python loops over the runs differ
    from batch to batch and would otherwise recompile every time. Called by `compile_layers`; not done at
    import, because `torch.compiler.disable` imports torch._dynamo (1.8 s of cold start)."""
    global _runs_outside_graphs, _selected_outside_graphs
    if _runs_outside_graphs is None:
        _runs_outside_graphs = torch.compiler.disable(_attention_runs)
        _selected_outside_graphs = torch.compiler.disable(_selected_runs)


def _attention_runs(q, k, v, packing: Packing, dropout_p: float, need_weights: bool):
    """The per-run path: one dense SDPA per run of equal-length sequences."""
    outputs, weights = [], []
    # split, not slicing: the backward of one split is one concatenation, while each slice's backward
    # would fill and add a gradient the size of the whole packed tensor.
    sizes = [n * length for _, n, length in packing.runs]
    for (_, n, length), *qkv in zip(packing.runs, q.split(sizes), k.split(sizes), v.split(sizes)):
        # (n * length, heads, head_dim) -> (n, heads, length, head_dim)
        qs, ks, vs = (t.view(n, length, *t.shape[1:]).transpose(1, 2) for t in qkv)
        keys = None if packing.key_mask is None else packing.key_mask[:, None, None, :]  # (batch, 1, 1, seqlen)
        if need_weights:
            scores = (qs @ ks.transpose(-1, -2)) * qs.shape[-1] ** -0.5   # (n, heads, length, length)
            if keys is not None:
                scores = scores.masked_fill(~keys, float("-inf"))
            # under autocast, in fp32 as transformers' (its fp32 mask, added to the scores, promotes them)
            autocast = torch.is_autocast_enabled(scores.device.type)
            probs = scores.softmax(dim=-1, dtype=torch.float32 if autocast else None)
            if keys is not None:  # padded queries: zero, as where the padding is not computed
                probs = probs * packing.key_mask[:, None, :, None]  # mask (n, 1, length, 1): query rows
            weights.append(probs)
            o = F.dropout(probs, dropout_p) @ vs
        else:
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=keys, dropout_p=dropout_p)
        outputs.append(o.transpose(1, 2).reshape(n * length, *q.shape[1:]))  # (n * length, heads, head_dim)
    # a new tensor even for one run (where the output would be a view of SDPA's): compiled code after this graph
    # break guards on a view's base, and would compile again for the first batch of one length (a batch of one)
    return torch.cat(outputs), weights


def _selected_runs(q, k, v, packing: Packing, selection: Selection, dropout_p: float) -> torch.Tensor:
    """The per-run path for a selection's queries: in each run of equal-length sequences, every sequence's
    selected queries padded to the run's most (with copies of its first one), one dense SDPA over the run's
    keys, the padding rows dropped. q: (selected, heads, head_dim), k and v: (tokens, heads, head_dim)."""
    outputs, b, start = [], 0, 0
    sizes = [n * length for _, n, length in packing.runs]
    for (_, n, length), ks, vs in zip(packing.runs, k.split(sizes), v.split(sizes)):
        counts = selection.counts[b:b + n]
        most, total = max(counts), sum(counts)
        slots, keep, offset = [], [], 0                  # slot -> query row in the run; the real slots
        for i, c in enumerate(counts):
            slots += [*range(offset, offset + c), *[offset] * (most - c)]
            keep += range(i * most, i * most + c)
            offset += c
        qs = q[start:start + total]
        if most * n != total:
            qs = qs.index_select(0, torch.tensor(slots, device=q.device))
        qs = qs.view(n, most, *q.shape[1:]).transpose(1, 2)                 # (n, heads, most, head_dim)
        ks, vs = (t.view(n, length, *t.shape[1:]).transpose(1, 2) for t in (ks, vs))  # (n, heads, length, head_dim)
        o = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p)
        o = o.transpose(1, 2).reshape(n * most, *q.shape[1:])               # (n * most, heads, head_dim)
        outputs.append(o if most * n == total else o.index_select(0, torch.tensor(keep, device=q.device)))
        b, start = b + n, start + total
    return torch.cat(outputs)   # a new tensor even for one run, as in _attention_runs


def repad_attention(weights: list[torch.Tensor], packing: Packing) -> torch.Tensor:
    """Per-run probabilities -> (batch, heads, seqlen, seqlen), zero where a query or key is padding."""
    heads = weights[0].shape[1]
    out = weights[0].new_zeros(packing.batch, heads, packing.seqlen, packing.seqlen)
    positions = packing.indices % packing.seqlen                          # (tokens,) column of each token
    b = 0
    for (start, n, length), probs in zip(packing.runs, weights):
        for i in range(n):
            pos = positions[start + i * length:start + (i + 1) * length]
            out[b, :, pos[:, None], pos[None, :]] = probs[i]  # (heads, length, length) at rows x columns pos
            b += 1
    return out
