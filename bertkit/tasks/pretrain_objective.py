"""The pre-training objective: MLM at the masked positions only, plus NSP.

The MLM decoder is a (hidden x vocab) matrix: applied to every token it costs more than the whole encoder
of a small BERT. Only ~15% of the tokens carry a label, so the head runs on those rows alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.labels import labelled
from ..modeling import BertForPreTraining
from ..modeling import packing as P
from ..train import distributed as dist
from ..train.trainer import to_device


class PreTrainingObjective(nn.Module):
    """Loss sums and correct-prediction counts; the trainer divides by the global counts."""

    def __init__(self, model: BertForPreTraining):
        super().__init__()
        self.model = model

    @staticmethod
    def prepare(batch: dict[str, torch.Tensor]) -> dict:
        """CPU-side work, before the batch goes to the GPU: the packing plan, the selection of the rows the
        heads read (the masked tokens and each [CLS]: the last layer computes only those), where the masked
        tokens sit in it, and their targets. On the device each would be a host sync (`nonzero`)."""
        packing = P.pack(batch["attention_mask"])
        labels = P.unpad(batch["labels"], packing)                      # (tokens,)
        rows = torch.nonzero(labels != -100, as_tuple=True)[0]           # (masked,) packed rows
        selection = P.select(packing, rows)
        return {**batch, "packing": packing, "selection": selection,
                "mlm_positions": torch.searchsorted(selection.rows, rows.to(selection.rows.device)),
                "mlm_targets": labels.index_select(0, rows)}

    @staticmethod
    def counts(batch: dict[str, torch.Tensor]) -> dict[str, int]:
        mlm = batch["mlm_targets"].numel() if "mlm_targets" in batch else labelled(batch["labels"]).sum()
        return {"mlm": int(mlm), "nsp": int(labelled(batch["next_sentence_label"]).sum())}

    def forward(self, batch: dict):
        """`batch` as collated, or after `prepare` (then no host sync happens here)."""
        if "selection" not in batch:
            batch = self.prepare(batch)
        bert, heads = self.model.bert, self.model.cls
        enc = bert.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                          packing=batch["packing"], selection=batch["selection"])
        targets = batch["mlm_targets"]
        mlm_logits = heads.predictions(enc.hidden.index_select(0, batch["mlm_positions"])).float()  # (masked, vocab)
        nsp_logits = heads.seq_relationship(bert.pool(enc)).float()                            # (batch, 2)
        nsp_labels = batch["next_sentence_label"].view(-1)                                      # (batch,)
        sums = {"mlm": F.cross_entropy(mlm_logits, targets, reduction="sum"),
                "nsp": F.cross_entropy(nsp_logits, nsp_labels, reduction="sum")}
        with torch.no_grad():
            stats = {"acc_mlm": (mlm_logits.argmax(-1) == targets).sum(),
                     "acc_nsp": (nsp_logits.argmax(-1) == nsp_labels).sum()}
        return sums, stats


@torch.no_grad()
def evaluate_pretraining(objective: PreTrainingObjective, batches) -> dict[str, float]:
    """Held-out MLM accuracy, MLM loss and perplexity, NSP accuracy and loss over the given batches.

    `batches` is a finite iterable of collated batches with fixed masks (the same every evaluation). In the
    trainer's evaluation under torchrun the ranks share them (`distributed.split_map`)."""
    device = next(objective.parameters()).device

    def run(my_batches: list) -> list[dict[str, float]]:
        done = []
        for batch in my_batches:
            batch = objective.prepare(batch)             # the packing plan from the CPU mask, as in training
            counts = objective.counts(batch)
            sums, stats = objective(to_device(batch, device))
            done.append({k: float(v) for k, v in {**counts, **{f"loss_{k}": v for k, v in sums.items()},
                                                   **stats}.items()})
        return done

    was_training = objective.training
    objective.eval()
    try:
        per_batch = dist.split_map(run, list(batches))
    finally:
        objective.train(was_training)
    if not per_batch:
        raise ValueError("evaluate_pretraining: no batches")
    totals = {k: sum(d[k] for d in per_batch) for k in per_batch[0]}
    if not totals["mlm"] or not totals["nsp"]:
        raise ValueError(f"evaluate_pretraining: the batches hold {int(totals['mlm'])} masked tokens and "
                         f"{int(totals['nsp'])} NSP labels; each is needed")
    mlm_loss = totals["loss_mlm"] / totals["mlm"]
    return {"mlm_accuracy": totals["acc_mlm"] / totals["mlm"], "mlm_loss": mlm_loss,
            "perplexity": math.exp(mlm_loss), "nsp_accuracy": totals["acc_nsp"] / totals["nsp"],
            "nsp_loss": totals["loss_nsp"] / totals["nsp"]}
