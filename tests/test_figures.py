"""The evaluation figures as a reader sees them: laid out (drawn on the Agg canvas), every label measured by its
window extent: inside the figure, not over its neighbour, not over a map; counts inside their cells; a colour scale
with its colorbar. Hermetic: made-up matrices, scores and attention weights, no model."""
import numpy as np
import pytest
import torch

from bertkit import figures


def _boxes(texts):
    return [t.get_window_extent() for t in texts if t.get_visible() and t.get_text()]


def _overlapping(texts):
    """The pairs of texts whose drawn boxes overlap."""
    boxes = _boxes(texts)
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def _apart(ax, texts, n):
    """Whether a row of tick labels keeps apart: level or upright ones by their boxes; slanted ones (whose boxes
    are squares that overlap anyway) by the distance between neighbours across their slant against their height."""
    rotation = texts[0].get_rotation()
    if rotation in (0.0, 90.0):
        return not _overlapping(texts)
    across = ax.get_window_extent().width / n * np.sin(np.radians(rotation))
    return across >= max(t.get_fontsize() for t in texts) * ax.figure.dpi / 72


def _outside(fig, texts):
    """The texts reaching beyond the figure's edges (cut off in the PNG)."""
    w, h = fig.bbox.width, fig.bbox.height
    return [b for b in _boxes(texts) if b.x0 < -1 or b.y0 < -1 or b.x1 > w + 1 or b.y1 > h + 1]


def _ticks(ax):
    return ax.get_xticklabels() + ax.get_yticklabels()


def _matrix(n, diagonal, off):
    m = np.full((n, n), off, dtype=np.int64)
    np.fill_diagonal(m, diagonal)
    return m.tolist()


@pytest.mark.parametrize("labels", [
    ["not_duplicate_question_pair", "duplicate_question_pair"],
    ["entailment_of_the_hypothesis", "neutral_relation_between", "contradiction_of_the_premise"],
    ["business_and_finance", "science_and_technology", "sports_and_recreation", "world_news_politics"],
    [f"alarm_set_recurring_reminder_{i}" for i in range(20)]])
def test_confusion_of_long_names_keeps_them_apart_and_inside(labels, tmp_path, drawn):
    """Two to four labels were written level under their columns: long names ran into each other, and the
    true labels on the left were cut at the figure's edge."""
    figures.confusion(_matrix(len(labels), 21_000, 1_300), labels, tmp_path / "cm.png", title="dev")
    fig = drawn[0]
    ax = fig.axes[0]
    assert _apart(ax, ax.get_xticklabels(), len(labels))
    assert not _outside(fig, _ticks(ax) + [ax.title, ax.xaxis.label, ax.yaxis.label])


def test_confusion_of_short_names_stays_level(tmp_path, drawn):
    figures.confusion(_matrix(3, 2500, 90), ["entailment", "neutral", "contradiction"], tmp_path / "cm.png")
    ax = drawn[0].axes[0]
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {0.0}
    assert not _overlapping(ax.get_xticklabels())


def test_confusion_of_77_labels_has_readable_ticks(tmp_path, drawn):
    """banking77's intents: at 45 degrees and 10 points, the names on the x axis were drawn over each other."""
    labels = [f"card_payment_wrong_exchange_rate_{i}" for i in range(77)]
    figures.confusion(_matrix(77, 300, 4), labels, tmp_path / "cm.png")
    fig = drawn[0]
    ax = fig.axes[0]
    assert _apart(ax, ax.get_xticklabels(), 77)
    assert not _overlapping(ax.get_yticklabels())
    assert not _outside(fig, _ticks(ax))


def test_confusion_counts_stay_inside_their_cells(tmp_path, drawn):
    """Nine-digit counts at 8 points spilled into the neighbouring cells of a 20-label matrix."""
    figures.confusion(_matrix(20, 987_654_321, 12_345_678), [f"l{i}" for i in range(20)], tmp_path / "cm.png")
    ax = drawn[0].axes[0]
    cell = ax.get_window_extent().width / 20
    counts = [t for t in ax.texts if "\n" in t.get_text()]
    assert len(counts) == 400
    assert max(b.width for b in _boxes(counts)) <= cell


def test_regression_markers_suit_the_number_of_points(tmp_path, drawn):
    """5,000 points at half ink were one blot hiding the density; 3 points were specks."""
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 5000)
    figures.regression((gold + rng.normal(0, 0.6, 5000)).tolist(), gold.tolist(), tmp_path / "many.png")
    figures.regression([1.0, 2.5, 4.2], [1.2, 2.0, 4.8], tmp_path / "few.png")
    many, few = (fig.axes[0].collections[0] for fig in drawn)
    assert many.get_alpha() <= 0.3 and few.get_alpha() >= 0.8
    assert few.get_sizes()[0] >= 3 * many.get_sizes()[0]


def test_regression_counts_predictions_that_are_not_finite(tmp_path, drawn):
    """A diverged model's NaN was dropped unsaid, and as the first prediction it took the diagonal with it."""
    figures.regression([float("nan"), 2.0, 3.0], [1.0, 2.0, 3.0], tmp_path / "r.png")
    ax = drawn[0].axes[0]
    assert ax.get_title() == "3 examples (1 not finite, not drawn)"
    (diagonal,) = ax.get_lines()
    assert list(diagonal.get_xdata()) == [2.0, 3.0]


def test_entity_scores_with_long_names_keep_their_bars_wide(tmp_path, drawn):
    """A multi-label task's 45-character names squeezed the bars into a 1.8-inch strip of a 7-inch figure."""
    per = {f"a rather long multi-label category name number {i}": {"precision": 0.8, "recall": 0.7, "f1": 0.75,
                                                                    "support": 100 * i + 3} for i in range(6)}
    figures.entity_scores(per, tmp_path / "e.png", support="rows with the label")
    fig = drawn[0]
    ax = fig.axes[0]
    assert ax.get_window_extent().width / fig.dpi >= 4.0
    assert not _outside(fig, _ticks(ax))


def _weights(layers=6, heads=12, n=60):
    torch.manual_seed(0)
    return torch.softmax(torch.randn(layers, heads, n, n) * 3, dim=-1)


def _maps(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


@pytest.mark.parametrize("layers,heads", [([2], list(range(12))), (list(range(6)), list(range(12))),
                                          (list(range(6)), [0]), ([2], [5])])
def test_every_attention_figure_has_its_colorbar(layers, heads, tmp_path, drawn):
    """One map had a colorbar; a layer's twelve maps, or the 6 x 12 grid, had none to read a colour by."""
    tokens = [f"t{i}" for i in range(60)]
    figures.attention(tokens, _weights(), tmp_path / "a.png", layers, heads)
    fig = drawn[0]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "attention weight"
    assert len(_maps(fig)) == len(layers) * len(heads)


@pytest.mark.parametrize("n", [60, 5])
def test_attention_titles_stay_off_the_row_above(n, tmp_path, drawn):
    """One head across six layers of 60 tokens: the second row's titles ("layer 4, head 0") touched the first
    row's maps (0.6 pixels apart); each title now keeps 4 pixels (3 points) from the maps and labels above."""
    from matplotlib.transforms import Bbox
    tokens = [f"tok{i}" for i in range(n)]
    figures.attention(tokens, _weights(n=n), tmp_path / "a.png", list(range(6)), [0])
    fig = drawn[0]
    maps = _maps(fig)
    for ax in maps:
        t = ax.title.get_window_extent()
        title = Bbox.from_extents(t.x0, t.y0, t.x1, t.y1 + 4)
        others = [o for o in maps if o is not ax]
        assert not any(title.overlaps(o.get_window_extent()) for o in others)
        assert not any(title.overlaps(b) for o in others for b in _boxes(o.get_xticklabels()))
    assert not _outside(fig, [t for ax in maps for t in _ticks(ax) + [ax.title]])


def test_one_layer_of_a_long_pair_is_drawn_large_enough_to_look_into(tmp_path, drawn):
    """A layer's twelve heads over 60 tokens were 1.2-inch maps: two pixels a token."""
    figures.attention([f"t{i}" for i in range(60)], _weights(), tmp_path / "a.png", [2], list(range(12)))
    fig = drawn[0]
    assert min(ax.get_window_extent().width for ax in _maps(fig)) / fig.dpi >= 2.0


def test_one_head_of_60_tokens_has_labels_of_a_readable_size(tmp_path, drawn):
    """At 60 tokens the labels of a single map dropped to 5 points though each token had 11 points of room."""
    tokens = [f"word{i}" for i in range(60)]
    figures.attention(tokens, _weights(), tmp_path / "a.png", [2], [5])
    (ax,) = _maps(drawn[0])
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert min(t.get_fontsize() for t in _ticks(ax)) >= 7
    assert not _overlapping(ax.get_xticklabels()) and not _overlapping(ax.get_yticklabels())
