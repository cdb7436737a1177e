"""Fill-mask: the model's top guesses for each [MASK] of a text."""
from __future__ import annotations

import torch

from .classify import packed_to


@torch.inference_mode()
def fill_mask(model, tokenizer, texts: list[str], top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
    """For each text, for each [MASK] in it, the `top_k` (token, probability) pairs, best first.

    `model` is a BertForMaskedLM or BertForPreTraining (anything whose output has MLM logits). The batch reaches
    the model's device with its packing planned on the CPU (`packed_to`) and the masks are found in the CPU ids,
    so on a GPU only the guesses are read back."""
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    batch = packed_to(enc, model.device)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"], packing=batch["packing"])
    logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits  # (batch, seqlen, vocab)
    results = []
    for i in range(len(texts)):
        rows = (enc["input_ids"][i] == tokenizer.mask_token_id).nonzero(as_tuple=True)[0]
        if len(rows) == 0:
            raise ValueError(f"text {i} has no {tokenizer.mask_token}: {texts[i]!r}")
        probs = logits[i, rows.to(logits.device)].float().softmax(-1)   # (masks, vocab)
        top = probs.topk(top_k, dim=-1)
        results.append([[(tokenizer.convert_ids_to_tokens(int(t)), float(p)) for t, p in zip(ids, ps)]
                        for ids, ps in zip(top.indices, top.values)])
    return results
