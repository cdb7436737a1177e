"""Task heads on top of BertModel: each is `self.bert` + a small head; the loss only when labels are given.

Heads work on packed tokens and put padding back only in the logits they return. Token-level logits are 0
at padding positions (their labels are -100 anyway); QA logits there are the dtype's minimum, so a span
can never start or end on padding.

Every forward takes an optional trailing `packing=`: the plan of `attention_mask` made on the CPU, which spares
the forward its one host sync (copying a device mask back to plan the packing); see `BertModel.encode`.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BertConfig
from . import packing as P
from .bert import ACT, BertModel, BertPreTrainedModel, Encoded, IndexedOutput, _device, check_tensor, model_output


@model_output
class ClassifierOutput(IndexedOutput):
    """Logits of any classification-shaped head: sequence, token, masked LM, NSP, multiple choice."""

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("loss", "logits", "hidden_states", "attentions")

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class PreTrainingOutput(IndexedOutput):
    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("loss", "prediction_logits", "seq_relationship_logits",
                                               "hidden_states", "attentions")  # as transformers'; not the parts

    prediction_logits: torch.Tensor        # (batch, seqlen, vocab)
    seq_relationship_logits: torch.Tensor  # (batch, 2)
    loss: torch.Tensor | None = None       # MLM + NSP
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class QuestionAnsweringOutput(IndexedOutput):
    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("loss", "start_logits", "end_logits", "hidden_states", "attentions")

    start_logits: torch.Tensor  # (batch, seqlen)
    end_logits: torch.Tensor    # (batch, seqlen)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, device=_device())
        self.transform_act_fn = ACT[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=_device())

    def forward(self, x):
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, device=_device())
        self.bias = self.decoder.bias  # one bias, reachable under both checkpoint names

    def forward(self, x):
        h = self.transform(x)
        if h.is_cuda:
            return aligned_linear(h, self.decoder.weight, self.decoder.bias)
        return self.decoder(h)


def aligned_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """F.linear with the output width rounded up to `multiple` for the GEMM, the extra columns dropped.

    BERT's 30,522 words leave each logits row 2 elements off 16-byte alignment, which sends cuBLAS to old
    fallback kernels (about a third of the rate of the aligned ones in a profile on an H200); 30,528 columns
    cost nothing more. The extra columns are zero weight rows, sliced off before anyone sees them."""
    pad = -weight.shape[0] % multiple
    if pad == 0:
        return F.linear(x, weight, bias)
    w = F.pad(weight, (0, 0, 0, pad))                      # (out + pad, in)
    b = F.pad(bias, (0, pad))                              # (out + pad,)
    return F.linear(x, w, b)[..., :weight.shape[0]]        # (..., out)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class BertOnlyNSPHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2, device=_device())


class BertPreTrainingHeads(BertOnlyNSPHead):
    # transformers registers the MLM head first: a checkpoint without heads initialises them in that order (see
    # `BertPreTrainedModel.init_unloaded`); bertkit's registration order stays, as saved optimizer states follow it
    init_order = ("predictions", "seq_relationship")

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.predictions = BertLMPredictionHead(config)


class _BertHeadModel(BertPreTrainedModel):
    """Builds `self.bert`, lets the subclass add its head, then initialises the head only."""

    add_pooling_layer = True

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=self.add_pooling_layer)

    def _init_head(self, *modules: nn.Module) -> None:
        """BERT's initialisation of a new head; none while building for loading (see `_build_for_loading`)."""
        if _device() != "meta":
            for m in modules:
                m.apply(self._init_module)  # the MLM decoder's Linear init zeroes cls.predictions.bias
        self.tie_weights()

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                output_hidden_states, output_attentions, packing=None, pooled_only=False) -> Encoded:
        """`packing`: the plan of `attention_mask` made on the CPU (`packing.pack(cpu_mask)`, moved to the
        device with the batch), so the forward needs no host sync; None: planned here (see `BertModel.encode`).
        `pooled_only`: the head reads the [CLS] state alone, so the last layer computes only that row
        (unless hidden states or attentions are asked for, which need every row)."""
        cfg = self.config
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        selection = None
        if pooled_only and not (output_hidden_states or output_attentions):
            selection = P.select_first_tokens
        return self.bert.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                output_hidden_states, output_attentions, packing, selection)


class _TiedMLM:
    """Mixin: the MLM decoder shares the word embeddings (unless config.tie_word_embeddings is false) and its
    bias is cls.predictions.bias; after resize_token_embeddings both follow the new vocabulary size."""

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, decoder: nn.Linear) -> None:
        """Replace the decoder by another of the same shape, with a bias, which becomes cls.predictions.bias.
        As in transformers, a tied config ties its weight to the word embeddings only at the next
        `tie_weights()` (or resize_token_embeddings, or a save and reload); until then the logits use its own."""
        old = self.cls.predictions.decoder
        if not isinstance(decoder, nn.Linear) or decoder.weight.shape != old.weight.shape or decoder.bias is None:
            raise ValueError(f"set_output_embeddings needs an nn.Linear with a bias, of weight shape "
                             f"{tuple(old.weight.shape)}, got {decoder!r}")
        self.cls.predictions.decoder = decoder
        self.cls.predictions.bias = decoder.bias

    def untied_names(self) -> tuple[str, ...]:
        """Names of a shared parameter that transformers keeps as a parameter of their own: with
        tie_word_embeddings false its decoder has its own bias, which its forward reads, so saving writes both."""
        return () if self.config.tie_word_embeddings else ("cls.predictions.decoder.bias",)

    def _resize_output_embeddings(self, vocab_size: int, mean_resizing: bool) -> None:
        """An untied decoder's new rows and bias entries start at the mean of the old ones (`mean_resizing`,
        transformers' rule) or at N(0, initializer_range) and 0; a tied decoder's new bias entries at 0."""
        pred = self.cls.predictions
        untied = not self.config.tie_word_embeddings
        if untied:
            pred.decoder.weight = _resized(pred.decoder.weight, vocab_size, self.config.initializer_range,
                                           mean_resizing)
        pred.bias = _resized(pred.bias, vocab_size, 0.0, mean_resizing and untied)

    def tie_weights(self) -> None:
        pred = self.cls.predictions
        emb = self.bert.embeddings.word_embeddings
        if self.config.tie_word_embeddings:
            pred.decoder.weight = emb.weight
        pred.decoder.bias = pred.bias
        pred.decoder.out_features = emb.num_embeddings


def _resized(old: nn.Parameter, rows: int, std: float, mean: bool = False) -> nn.Parameter:
    """Keep the first rows of `old`; new rows are the mean of the old ones (`mean`), else N(0, std) (zeros when
    std is 0)."""
    if rows == old.shape[0]:
        return old
    new = old.new_zeros(rows, *old.shape[1:])
    n = min(rows, old.shape[0])
    if mean:
        new[n:] = old.data.float().mean(0).to(old.dtype)
    elif std > 0:
        nn.init.normal_(new, std=std)
    new[:n] = old.data[:n]
    return nn.Parameter(new, requires_grad=old.requires_grad)


def _for_loss(logits: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 logits in fp32 for the loss (as autocast would run it); fp32 and fp64 logits as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_for_loss(logits), labels, ignore_index=-100)


# Labels are checked before the forward (Python-level shape and dtype checks only, nothing read from the device),
# so a wrong one costs no encoder pass and its error names it rather than an argument of torch's losses.

def _class_indices(labels: torch.Tensor, name: str) -> torch.Tensor:
    """Class indices as cross_entropy takes them (torch.long, uint8); int32 is cast, since transformers' own rule
    reads torch.int labels as class indices (and its loss then refuses them)."""
    if labels.dtype == torch.int32:
        return labels.long()
    if labels.dtype not in (torch.long, torch.uint8):
        raise TypeError(f"{name} must hold class indices as an integer tensor (torch.long), got {labels.dtype}")
    return labels


def token_labels(labels: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """(batch, seqlen) class indices; transformers flattens them, so (batch * seqlen,) and (batch, seqlen, 1)
    are taken too."""
    check_tensor(labels, "labels")
    if tuple(labels.shape) in ((batch * seqlen,), (batch, seqlen, 1)):
        labels = labels.reshape(batch, seqlen)  # (batch * seqlen,) or (batch, seqlen, 1) -> (batch, seqlen)
    elif tuple(labels.shape) != (batch, seqlen):
        raise ValueError(f"labels must have shape (batch, seqlen) = ({batch}, {seqlen}) like the inputs, "
                         f"got {tuple(labels.shape)}")
    return _class_indices(labels, "labels")


def per_sequence_labels(labels: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """(batch,) class indices, one per sequence; transformers flattens them, so any shape of `batch` elements is
    taken ((batch, 1), say)."""
    check_tensor(labels, name)
    if labels.numel() != batch:
        raise ValueError(f"{name} must have shape (batch,) = ({batch},), got {tuple(labels.shape)}")
    return _class_indices(labels.reshape(-1), name)  # (batch, 1) or (batch,) -> (batch,)


class BertForPreTraining(_TiedMLM, _BertHeadModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.cls = BertPreTrainingHeads(config)
        self._init_head(self.cls)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, next_sentence_label=None,
                output_hidden_states=None, output_attentions=None, packing=None) -> PreTrainingOutput:
        if labels is not None or next_sentence_label is not None:
            batch, seqlen = self.bert.input_shape(input_ids, inputs_embeds)
            if labels is not None:
                labels = token_labels(labels, batch, seqlen)
            if next_sentence_label is not None:
                next_sentence_label = per_sequence_labels(next_sentence_label, batch, "next_sentence_label")
        enc = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states, output_attentions, packing)
        token_logits = self.cls.predictions(enc.hidden)          # (tokens, vocab)
        nsp_logits = self.cls.seq_relationship(self.bert.pool(enc))  # (batch, 2)
        mlm_loss = nsp_loss = loss = None
        if labels is not None:
            mlm_loss = _mlm_loss(token_logits, P.unpad(labels, enc.packing))
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(_for_loss(nsp_logits), next_sentence_label)  # labels (batch,)
        if mlm_loss is not None and nsp_loss is not None:
            loss = mlm_loss + nsp_loss
        return PreTrainingOutput(P.repad(token_logits, enc.packing), nsp_logits, loss, mlm_loss, nsp_loss,
                                 enc.hidden_states(), enc.attentions())


class BertForMaskedLM(_TiedMLM, _BertHeadModel):
    add_pooling_layer = False

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.cls = BertOnlyMLMHead(config)
        self._init_head(self.cls)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, packing=None) -> ClassifierOutput:
        if labels is not None:
            labels = token_labels(labels, *self.bert.input_shape(input_ids, inputs_embeds))
        enc = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states, output_attentions, packing)
        logits = self.cls.predictions(enc.hidden)                # (tokens, vocab)
        loss = _mlm_loss(logits, P.unpad(labels, enc.packing)) if labels is not None else None
        return ClassifierOutput(P.repad(logits, enc.packing), loss, enc.hidden_states(), enc.attentions())


class BertForNextSentencePrediction(_BertHeadModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.cls = BertOnlyNSPHead(config)
        self._init_head(self.cls)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, packing=None) -> ClassifierOutput:
        if labels is not None:
            labels = per_sequence_labels(labels, self.bert.input_shape(input_ids, inputs_embeds)[0], "labels")
        enc = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states, output_attentions, packing, pooled_only=True)
        logits = self.cls.seq_relationship(self.bert.pool(enc))  # (batch, 2)
        loss = F.cross_entropy(_for_loss(logits), labels) if labels is not None else None  # (batch,)
        return ClassifierOutput(logits, loss, enc.hidden_states(), enc.attentions())


def _dropout_p(config: BertConfig) -> float:
    return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout


def problem_type(config: BertConfig, labels: torch.Tensor) -> str:
    """The loss transformers' BertForSequenceClassification takes: the config's problem_type, else regression for
    one label, single-label classification for integer labels, multi-label for others (float 0/1 rows)."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if labels.dtype in (torch.long, torch.int) else "multi_label_classification"


def sequence_labels(labels: torch.Tensor, batch: int, config: BertConfig) -> torch.Tensor:
    """`labels` checked against the problem type: class indices (batch,) for single-label, (batch, num_labels)
    for multi-label, a shape that broadcasts with the logits for regression (as torch's MSE takes it)."""
    check_tensor(labels, "labels")
    problem = problem_type(config, labels)
    n, shape = config.num_labels, tuple(labels.shape)
    if problem == "single_label_classification":
        return per_sequence_labels(labels, batch, "labels")
    if problem == "multi_label_classification":
        if shape != (batch, n):
            guessed = ("; with num_labels > 1, labels that are not torch.long or torch.int are read as multi-label "
                       "targets (config.problem_type is unset): give class indices as torch.long"
                       if config.problem_type is None else "")
            raise ValueError(f"labels for multi_label_classification must have shape (batch, num_labels) = "
                             f"({batch}, {n}), got {shape}{guessed}")
        return labels
    # regression: torch's MSE broadcasts the labels to the logits; the shapes it would refuse are named here
    if n == 1:  # sequence_loss squeezes both, as transformers does: (batch, 1) logits to (batch,), or () for one
        pred, target = ((batch,) if batch > 1 else ()), tuple(labels.squeeze().shape)
    else:
        pred, target = (batch, n), shape
    try:
        torch.broadcast_shapes(pred, target)
    except RuntimeError:
        want = f"(batch, num_labels) = ({batch}, {n})" if n > 1 else f"(batch,) = ({batch},) or (batch, 1)"
        raise ValueError(f"labels for regression must have shape {want}, got {shape}") from None
    return labels


def sequence_loss(logits: torch.Tensor, labels: torch.Tensor, config: BertConfig) -> torch.Tensor:
    """Regression, single-label or multi-label classification, as `problem_type` says."""
    problem = problem_type(config, labels)
    logits = _for_loss(logits)
    if problem == "regression":
        if config.num_labels == 1:
            # (batch, 1) logits and (batch,) or (batch, 1) labels both to (batch,), a batch of one to scalars,
            # as transformers does
            return F.mse_loss(logits.squeeze(), labels.to(logits.dtype).squeeze())
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))  # (batch, labels), (batch,)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class _Classifier:
    @property
    def num_labels(self) -> int:
        """transformers' attribute (set from the config there): the classifier's outputs."""
        return self.classifier.out_features


class BertForSequenceClassification(_Classifier, _BertHeadModel):
    """Classification or regression (num_labels == 1) from the pooled [CLS] state."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(_dropout_p(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels, device=_device())
        self._init_head(self.classifier)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, packing=None) -> ClassifierOutput:
        if labels is not None:
            labels = sequence_labels(labels, self.bert.input_shape(input_ids, inputs_embeds)[0], self.config)
        enc = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states, output_attentions, packing, pooled_only=True)
        logits = self.classifier(self.dropout(self.bert.pool(enc)))  # (batch, labels)
        loss = sequence_loss(logits, labels, self.config) if labels is not None else None
        return ClassifierOutput(logits, loss, enc.hidden_states(), enc.attentions())


class BertForTokenClassification(_Classifier, _BertHeadModel):
    add_pooling_layer = False

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(_dropout_p(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels, device=_device())
        self._init_head(self.classifier)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, packing=None) -> ClassifierOutput:
        if labels is not None:
            labels = token_labels(labels, *self.bert.input_shape(input_ids, inputs_embeds))
        enc = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states, output_attentions, packing)
        logits = self.classifier(self.dropout(enc.hidden))            # (tokens, labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(_for_loss(logits), P.unpad(labels, enc.packing), ignore_index=-100)
        return ClassifierOutput(P.repad(logits, enc.packing), loss, enc.hidden_states(), enc.attentions())


class BertForQuestionAnswering(_BertHeadModel):
    """Extractive QA: a start and an end score for every token."""

    add_pooling_layer = False

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2, device=_device())
        self._init_head(self.qa_outputs)

    @property
    def num_labels(self) -> int:
        """transformers' attribute: a start and an end score."""
        return self.qa_outputs.out_features

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_hidden_states=None,
                output_attentions=None, packing=None) -> QuestionAnsweringOutput:
        if start_positions is not None and end_positions is not None:
            batch = self.bert.input_shape(input_ids, inputs_embeds)[0]
            start_positions = _positions(start_positions, batch, "start_positions")
            end_positions = _positions(end_positions, batch, "end_positions")
        enc = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states, output_attentions, packing)
        logits = self.qa_outputs(enc.hidden)                          # (tokens, 2)
        logits = P.repad(logits, enc.packing, fill=torch.finfo(logits.dtype).min)  # (batch, seqlen, 2)
        start_logits, end_logits = logits.unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence (an answer cut off by a window) or on its padding are ignored, so a
            # window's loss is what it would be alone, whatever the batch's padding.
            real = P.repad(torch.ones(len(enc.hidden), dtype=torch.bool, device=logits.device), enc.packing,
                           fill=False)                                # (batch, seqlen)
            start, end = (_answer_index(p, real) for p in (start_positions, end_positions))
            seqlen = real.shape[1]
            loss = (F.cross_entropy(_for_loss(start_logits), start, ignore_index=seqlen)
                    + F.cross_entropy(_for_loss(end_logits), end, ignore_index=seqlen)) / 2
        return QuestionAnsweringOutput(start_logits, end_logits, loss, enc.hidden_states(), enc.attentions())


def _positions(positions: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """(batch,) answer token indices as torch.long, from any integer or bool dtype (transformers takes uint8 and
    bool; int32 would fail in its loss) and any shape of `batch` elements ((batch, 1), say)."""
    check_tensor(positions, name)
    if positions.is_floating_point() or positions.is_complex():
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {positions.dtype}")
    if positions.numel() != batch:
        raise ValueError(f"{name} must have shape (batch,) = ({batch},), got {tuple(positions.shape)}")
    return positions.reshape(-1).long()  # (batch, 1) or (batch,) -> (batch,)


def _answer_index(positions: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(batch,) answer token indices, or seqlen (the ignored index) for one outside the sequence or on padding."""
    seqlen = real.shape[1]
    pos = positions.reshape(-1).clamp(0, seqlen)                        # (batch,)
    on_real = real.gather(1, pos.clamp(max=seqlen - 1).unsqueeze(1)).squeeze(1)  # (batch, 1) -> (batch,)
    return torch.where(on_real & (pos < seqlen), pos, seqlen)


class BertForMultipleChoice(_BertHeadModel):
    """Each (batch, choices, seqlen) input is scored from its pooled [CLS]; softmax across choices.

    The encoder sees the choices as one (batch * choices, seqlen) batch, so a `packing` plan is that of the
    flattened mask: `pack(attention_mask.reshape(-1, seqlen))`."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(_dropout_p(config))
        self.classifier = nn.Linear(config.hidden_size, 1, device=_device())
        self._init_head(self.classifier)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, packing=None) -> ClassifierOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        name, ref, rank = ("input_ids", input_ids, 3) if input_ids is not None else ("inputs_embeds", inputs_embeds, 4)
        check_tensor(ref, name)
        if ref.dim() != rank:
            dims = "batch, choices, seqlen" + (", hidden" if rank == 4 else "")
            raise ValueError(f"multiple choice {name} must have shape ({dims}), got {tuple(ref.shape)}")
        batch, choices = ref.shape[:2]
        if labels is not None:
            labels = _choice_labels(labels, batch, choices)

        def flat(t, trailing=1):  # (batch, choices, seqlen[, hidden]) -> (batch * choices, seqlen[, hidden]);
            # broadcast (1, 1, seqlen) ids -> (1, seqlen), as transformers takes them; not a tensor: encode says so
            return t.reshape(-1, *t.shape[-trailing:]) if isinstance(t, torch.Tensor) and t.dim() else t

        enc = self._encode(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                           flat(inputs_embeds, 2), output_hidden_states, output_attentions, packing,
                           pooled_only=True)
        logits = self.classifier(self.dropout(self.bert.pool(enc)))   # (batch * choices, 1)
        logits = logits.view(batch, choices)                           # (batch, choices)
        loss = None
        if labels is not None:  # (batch,) indices or (batch, choices) probabilities
            scores = _for_loss(logits)
            loss = F.cross_entropy(scores, labels.to(scores.dtype) if labels.is_floating_point() else labels)
        return ClassifierOutput(logits, loss, enc.hidden_states(), enc.attentions())


def _choice_labels(labels: torch.Tensor, batch: int, choices: int) -> torch.Tensor:
    """(batch,) indices of the right choice, or (batch, choices) float probabilities, which transformers'
    cross-entropy takes too (it does not flatten multiple-choice labels)."""
    check_tensor(labels, "labels")
    if labels.is_floating_point() and tuple(labels.shape) == (batch, choices):
        return labels
    return per_sequence_labels(labels, batch, "labels")
