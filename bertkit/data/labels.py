"""What an ignored label is. A batch row whose labels are all ignored weighs nothing: the losses skip it and the
trainer's counts leave it out. Batch sources give such a row to a rank that an epoch's last, smaller global batch
leaves without one, so that every rank still takes part in the step's collectives."""
from __future__ import annotations

import math

import torch

IGNORE = -100  # a class id, token label, span position or NSP label that the losses and counts leave out
LABEL_KEYS = ("labels", "start_positions", "end_positions", "next_sentence_label")


def void_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`batch` with every label ignored: ids IGNORE, regression targets nan."""
    out = dict(batch)
    for key in LABEL_KEYS:
        if key in out:
            out[key] = torch.full_like(out[key], math.nan if out[key].is_floating_point() else IGNORE)
    return out


def labelled(labels: torch.Tensor) -> torch.Tensor:
    """Where `labels` hold a label (not IGNORE, not a nan regression target)."""
    return ~labels.isnan() if labels.is_floating_point() else labels != IGNORE
