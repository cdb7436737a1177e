"""Fill-mask: the model's top guesses for each [MASK] of a text."""
from __future__ import annotations

import torch

from ..modeling import packing as P
from ..train.trainer import pin, to_device


@torch.inference_mode()
def fill_mask(model, tokenizer, texts: list[str], top_k: int = 5, targets: list[int] | None = None,
              max_length: int | None = None) -> list[list[list[tuple[str, float]]]]:
    """For each text, for each [MASK] in it, the `top_k` (token, probability) pairs, best first; with `targets`
    (token ids), the best of those only (their probabilities over the whole vocabulary).

    `model` is a BertForMaskedLM or BertForPreTraining (`model.bert` + `model.cls.predictions`). Only the
    [MASK] rows are scored: the last layer computes just them (a `packing.Selection`) and the decoder over
    the vocabulary, which costs more than the encoder in a small BERT, sees no other token. The plan comes
    from the CPU ids, so on a GPU only the guesses are read back. Texts are cut to `max_length` tokens, never
    more than the model has positions for."""
    limit = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    max_length = min(max_length or limit, limit)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    is_mask = enc["input_ids"] == tokenizer.mask_token_id                    # (batch, seqlen)
    for i, row in enumerate(is_mask):
        if not row.any():
            raise ValueError(f"text {i} has no {tokenizer.mask_token}: {texts[i]!r}")
    packing = P.pack(enc["attention_mask"])
    rows = torch.nonzero(P.unpad(is_mask, packing), as_tuple=True)[0]       # (masks,) packed rows
    selection = P.select(packing, rows)
    positions = torch.searchsorted(selection.rows, rows)                     # (masks,) rows of the selection
    batch = {**enc, "packing": packing, "selection": selection, "positions": positions}
    batch = to_device(pin(batch) if model.device.type == "cuda" else batch, model.device)
    hidden = model.bert.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               packing=batch["packing"], selection=batch["selection"]).hidden
    logits = model.cls.predictions(hidden.index_select(0, batch["positions"]))  # (masks, vocab)
    probs = logits.float().softmax(-1)                                       # (masks, vocab)
    if targets is not None:
        probs = probs[:, targets]                                              # (masks, targets)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    indices, values = top.indices.tolist(), top.values.tolist()
    if targets is not None:
        indices = [[targets[i] for i in row] for row in indices]
    per_text = is_mask.sum(dim=1).tolist()
    results, k = [], 0
    for n in per_text:
        results.append([[(tokenizer.convert_ids_to_tokens(t), p) for t, p in zip(indices[j], values[j])]
                        for j in range(k, k + n)])
        k += n
    return results
