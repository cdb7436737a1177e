"""Pictures of an evaluation, where a picture says more than the numbers beside it: a classifier's confusion
matrix, a regression's predicted against true scores, a tagger's scores per entity type. Each is one PNG,
written atomically; `tracking.plot_runs` draws learning curves with the same helpers."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from .io import atomic_path


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, never a window (runs on servers and in tests)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: str | os.PathLike) -> str:
    """Write `fig` to the PNG `path` (its folder made if needed) atomically, close it; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return path


def confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike,
              title: str = "") -> str:
    """The confusion matrix (rows: true label, columns: predicted), each cell coloured by its share of its row
    (the label's recall on the diagonal) and, for up to 20 labels, annotated with its count."""
    import numpy as np
    plt = pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    n = len(labels)
    side = min(14.0, 3.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true label's examples")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    total = int(counts.sum())
    correct = int(np.trace(counts))
    ax.set_title((f"{title}\n" if title else "") + f"{correct} of {total} correct ({correct / max(total, 1):.1%})")
    fig.tight_layout()
    return save(fig, path)


def regression(preds: Sequence[float], gold: Sequence[float], path: str | os.PathLike, title: str = "") -> str:
    """Predicted against true scores, with the line where they are equal."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    ax.scatter(gold, preds, s=10, alpha=0.5)
    lo, hi = min(min(gold), min(preds)), max(max(gold), max(preds))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="predicted = true")
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted score")
    ax.set_title((f"{title}\n" if title else "") + f"{len(gold)} examples")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def entity_scores(per_type: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str = "",
                  support: str = "true entities of the type") -> str:
    """Precision, recall and F1 of each entity type (or label) as grouped bars, the type's `support` in its
    label."""
    plt = pyplot()
    types = sorted(per_type, key=lambda t: -per_type[t]["support"])
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.55 * max(len(types), 1)))
    height = 0.26
    for k, (key, colour) in enumerate((("precision", "#4c72b0"), ("recall", "#dd8452"), ("f1", "#55a868"))):
        ax.barh([i + (k - 1) * height for i in range(len(types))], [per_type[t][key] for t in types],
                height=height, color=colour, label=key)
    ax.set_yticks(range(len(types)), [f"{t} ({per_type[t]['support']})" for t in types])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"score (support: {support})")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: bars reach any length
    fig.tight_layout()
    return save(fig, path)


def attention(tokens: Sequence[str], weights, path: str | os.PathLike, layers: Sequence[int],
              heads: Sequence[int], title: str = "") -> str:
    """Attention weights as heatmaps, one per (layer, head): rows are the attending tokens (queries), columns
    the tokens attended to (keys). `weights` is (layers, heads, tokens, tokens) for every layer and head; the
    `layers` x `heads` grid is drawn (one head or one layer: up to 4 maps a row). Token labels go on the maps
    while they stay readable: one layer's or one head's maps up to 32 tokens, a layers x heads grid while maps x
    tokens <= 128; the figure's size is bounded whatever the text's length."""
    import textwrap
    plt = pyplot()
    grid = [(layer, head) for layer in layers for head in heads]
    full = len(layers) > 1 and len(heads) > 1   # a layers x heads grid: heads across, layers down
    cols = len(heads) if full else min(len(grid), 4)
    rows = -(-len(grid) // cols)
    n = len(tokens)
    labelled = (not full and n <= 32) or len(grid) * n <= 128
    if labelled:   # inches per map: room for the labels, up to 6 a map where there are several
        cell = min(0.9 + 0.22 * n, 12.0 if len(grid) == 1 else 6.0)
    else:
        cell = 6.0 if len(grid) == 1 else 1.2
    width = max(cell * cols + 0.6, 6.0)  # room for the title
    fig, axes = plt.subplots(rows, cols, figsize=(width, cell * rows + 0.9), squeeze=False)
    for ax, (layer, head) in zip(axes.flat, grid):
        image = ax.imshow(weights[layer, head].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        if len(grid) == 1:
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if labelled:
            size = 7 if n <= 48 else 5
            ax.set_xticks(range(n), tokens, rotation=90, fontsize=size)
            ax.set_yticks(range(n), tokens, fontsize=size)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if full and not labelled:
            if layer == layers[0]:
                ax.set_title(f"head {head}", fontsize=8)
            if head == heads[0]:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
        else:
            ax.set_title(f"layer {layer}, head {head}", fontsize=9 if labelled else 8)
    for ax in list(axes.flat)[len(grid):]:
        ax.set_visible(False)
    chars = max(40, int(width * 11))  # what a line of 9-point text holds across the figure
    lines = [*(textwrap.wrap(title, chars) if title else []),
             *textwrap.wrap("rows: attending token, columns: token attended to (weight 0 to 1)", chars)]
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.tight_layout()
    return save(fig, path)
