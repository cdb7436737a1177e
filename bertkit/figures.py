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
    (the label's recall on the diagonal) and, for up to 20 labels, annotated with its count. The figure grows
    with the labels' length, so long names are neither cut at its edge nor written over each other."""
    import numpy as np
    plt = pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    n = len(labels)
    side = min(14.0, 3.0 + 0.45 * n)
    name_in = 0.085 * max((len(str(label)) for label in labels), default=1)  # a label's length at 10 points
    rotation = 0 if n <= 4 and name_in < 0.8 * side / n else 45 if n <= 20 else 90
    extra = max(0.0, name_in - 0.7)   # beyond what short names (up to 8 characters) find in the margins
    down = extra * (0.72 if rotation == 45 else 1.0) if rotation else 0.0
    fig, ax = plt.subplots(figsize=(side + 1.2 + extra, side + down))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true label's examples")
    ax.set_xticks(range(n), labels, rotation=rotation, ha="right" if rotation == 45 else "center",
                  rotation_mode="anchor" if rotation == 45 else "default")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    cells = []
    if n <= 20:
        for i in range(n):
            for j in range(n):
                cells.append(ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                                     fontsize=8, color="white" if share[i, j] > 0.5 else "black"))
    total = int(counts.sum())
    correct = int(np.trace(counts))
    ax.set_title((f"{title}\n" if title else "") + f"{correct} of {total} correct ({correct / max(total, 1):.1%})")
    fig.tight_layout()
    _fit_to_cells(fig, ax, n, cells)
    return save(fig, path)


def _fit_to_cells(fig, ax, n: int, cells: list) -> None:
    """Shrink the tick labels to the rows' pitch (many labels would overlap) and the counts to the cells' width
    (six digits would spill into the next cell), measured on the laid-out figure."""
    fig.canvas.draw()
    pitch = ax.get_window_extent().height / max(n, 1) * 72 / fig.dpi   # points
    if pitch < 12.5:
        for label in ax.get_xticklabels() + ax.get_yticklabels():
            label.set_fontsize(max(4.0, 0.8 * pitch))
        fig.tight_layout()
        fig.canvas.draw()
    cell = ax.get_window_extent().width / max(n, 1)
    widest = max((t.get_window_extent().width for t in cells), default=0.0)
    if widest > 0.85 * cell:
        for t in cells:
            t.set_fontsize(8 * 0.85 * cell / widest)


def regression(preds: Sequence[float], gold: Sequence[float], path: str | os.PathLike, title: str = "") -> str:
    """Predicted against true scores, with the line where they are equal. The markers fade as the points grow
    many (5,000 at full ink are one blot) and stay large when they are few; a pair that is not finite (a
    diverged model's NaN) is counted in the title, not dropped unsaid."""
    import numpy as np
    plt = pyplot()
    x, y = np.asarray(gold, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    n = len(x)
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    ax.scatter(x, y, s=float(np.clip(3000 / max(n, 1), 5, 30)), alpha=float(np.clip(250 / max(n, 1), 0.25, 0.8)),
               edgecolors="none")
    if n:
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="predicted = true")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted score")
    dropped = len(finite) - n
    ax.set_title((f"{title}\n" if title else "") + f"{len(finite)} examples"
                 + (f" ({dropped} not finite, not drawn)" if dropped else ""))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def entity_scores(per_type: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str = "",
                  support: str = "true entities of the type") -> str:
    """Precision, recall and F1 of each entity type (or label) as grouped bars, the type's `support` in its
    label. The figure widens for long names (a multi-label task's), so the bars keep their width."""
    plt = pyplot()
    types = sorted(per_type, key=lambda t: -per_type[t]["support"])
    names = [f"{t} ({per_type[t]['support']})" for t in types]
    beyond = max(0.0, 0.085 * max((len(name) for name in names), default=0) - 1.6)  # 19 characters fit
    fig, ax = plt.subplots(figsize=(7.0 + min(beyond, 9.0), 1.2 + 0.55 * max(len(types), 1)))
    height = 0.26
    for k, (key, colour) in enumerate((("precision", "#4c72b0"), ("recall", "#dd8452"), ("f1", "#55a868"))):
        ax.barh([i + (k - 1) * height for i in range(len(types))], [per_type[t][key] for t in types],
                height=height, color=colour, label=key)
    ax.set_yticks(range(len(types)), names)
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
    `layers` x `heads` grid is drawn (one head or one layer: up to 4 maps a row), with one colorbar for them all
    (one scale: 0 to 1). Token labels go on the maps while they stay readable: one layer's or one head's maps up
    to 32 tokens, a layers x heads grid while maps x tokens <= 128; the figure's size is bounded whatever the
    text's length."""
    plt = pyplot()
    grid = [(layer, head) for layer in layers for head in heads]
    full = len(layers) > 1 and len(heads) > 1   # a layers x heads grid: heads across, layers down
    cols = len(heads) if full else min(len(grid), 4)
    rows = -(-len(grid) // cols)
    n = len(tokens)
    labelled = (not full and n <= 32) or len(grid) * n <= 128
    cell = _attention_cell(n, len(grid), full, labelled)
    width = max(cell * cols + 0.6, 6.0)  # room for the title
    # constrained: a row's titles and labels get their room (tight_layout let them run into the row above)
    fig, axes = plt.subplots(rows, cols, figsize=(width + 0.8, cell * rows + 0.9), squeeze=False,
                             layout="constrained")
    size = min(8.0, max(5.0, 0.7 * 72 * 0.8 * cell / max(n, 1)))  # points: 70% of a token's pitch on the map
    for ax, (layer, head) in zip(axes.flat, grid):
        image = ax.imshow(weights[layer, head].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        _token_ticks(ax, tokens if labelled else None, size)
        _map_title(ax, layer, head, layers, heads, overview=full and not labelled, labelled=labelled)
    for ax in list(axes.flat)[len(grid):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=min(1.0, 4.0 / (cell * rows)) if len(grid) > 1 else 0.8,
                 label="attention weight")
    fig.suptitle(_attention_title(title, width), fontsize=9)
    return save(fig, path)


def _attention_cell(n: int, maps: int, full: bool, labelled: bool) -> float:
    """Inches per attention map."""
    if labelled:   # room for the labels, up to 6 a map where there are several
        return min(0.9 + 0.22 * n, 12.0 if maps == 1 else 6.0)
    # a layers x heads grid is an overview; one layer's or one head's maps are looked into
    return 6.0 if maps == 1 else 1.2 if full else 2.4


def _token_ticks(ax, tokens: Sequence[str] | None, size: float) -> None:
    """The tokens along both axes of a map, or no ticks at all (None) where they would not be readable."""
    if tokens is not None:
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=size)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def _map_title(ax, layer: int, head: int, layers: Sequence[int], heads: Sequence[int], overview: bool,
               labelled: bool) -> None:
    """An overview grid names each head above its top row and each layer beside its left column, saving the
    room of a title per map; other maps each carry their layer and head."""
    if overview:
        if layer == layers[0]:
            ax.set_title(f"head {head}", fontsize=8)
        if head == heads[0]:
            ax.set_ylabel(f"layer {layer}", fontsize=8)
    else:
        ax.set_title(f"layer {layer}, head {head}", fontsize=9 if labelled else 8)


def _attention_title(title: str, width: float) -> str:
    """The figure's title and how to read the maps, wrapped to the figure's width."""
    import textwrap
    chars = max(40, int(width * 11))  # what a line of 9-point text holds across the figure
    lines = [*(textwrap.wrap(title, chars) if title else []),
             *textwrap.wrap("rows: attending token, columns: token attended to (weight 0 to 1)", chars)]
    return "\n".join(lines)
