"""What a run shows and leaves behind: a progress bar, `metrics.jsonl`, TensorBoard scalars, learning curves.

`metrics.jsonl` holds one JSON object per line, appended as the run goes:

    {"split": "train", "step": 100, "lr": 9.9e-05, "loss": 7.2, "loss_mlm": 6.5, "loss_nsp": 0.69,
     "acc_mlm": 0.05, "acc_nsp": 0.51, "grad_norm": 1.3, "tokens_per_s": 51234.0, "elapsed": 12.5}
    {"split": "eval", "step": 100, "mlm_accuracy": 0.06, "mlm_loss": 6.4, "perplexity": 601.8, ...}

Only rank 0 writes. TensorBoard scalars (`<run>/tensorboard/`, tags `train/loss` ...) are written when the
`tensorboard` package is installed (decided once, explicitly: `tensorboard_available()`); matplotlib draws
`plot_run` / `plot_runs` with the Agg backend (no display needed).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import textwrap
import time
from typing import Any, Iterable

from ..io import write_text_atomic
from ..warn import warn

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def tensorboard_available() -> bool:
    """True when both `tensorboard` and `torch.utils.tensorboard` can be imported."""
    return (importlib.util.find_spec("tensorboard") is not None
            and importlib.util.find_spec("torch.utils.tensorboard") is not None)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # 0-d tensors / numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Infinity; keep it readable
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _set_aside(path: str, why: str) -> None:
    """A fresh run starts a fresh log. The metrics.jsonl or tensorboard/ already there (an attempt killed before
    its first checkpoint, or something that is not a run's at all) is renamed, not removed, to a name no earlier
    one holds, and the user told where it went: a fresh run in a directory holding other files is allowed,
    removing or silently moving one is not."""
    aside, n = path + ".old", 1
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}.old.{n}"
    os.replace(path, aside)
    warn(f"{path}: {why}; the one there was renamed to {os.path.basename(aside)}")


class Tracker:
    """Progress bar + metrics.jsonl + TensorBoard for one run.

    `enabled=False` (the trainer passes `is_main()`) makes every method a no-op, so all ranks can call it.
    `resume_step`: the run continues from that checkpoint step; lines logged after it by the interrupted run
    are dropped from metrics.jsonl, so each step appears once; otherwise a metrics.jsonl (and, logging to
    TensorBoard, a tensorboard/ folder) already there is renamed (`_set_aside`). `tensorboard`: None = when available.
    """

    def __init__(self, run_dir: str | os.PathLike, total_steps: int, *, initial_step: int = 0,
                 enabled: bool = True, progress: bool = True, tensorboard: bool | None = None,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, METRICS_NAME)
        self._bar = None
        self._tb = None
        self._postfix: dict[str, str] = {}
        self._total = total_steps
        self._lines = False   # progress without a terminal: a plain line per logged step, not a bar's redraws
        if not enabled:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif os.path.exists(self.path):
            _set_aside(self.path, f"a fresh run starts a new {METRICS_NAME}")
        if tensorboard is None:
            tensorboard = tensorboard_available()
        if tensorboard:
            if not tensorboard_available():
                raise RuntimeError("tensorboard=True but the tensorboard package is not installed "
                                   "(pip install tensorboard)")
            from torch.utils.tensorboard import SummaryWriter
            log_dir = os.path.join(self.run_dir, TENSORBOARD_DIR)
            if resume_step is None and os.path.lexists(log_dir):  # else its curves and this run's would mix
                _set_aside(log_dir, f"a fresh run starts a new {TENSORBOARD_DIR}/ folder")
            self._tb = SummaryWriter(log_dir=log_dir,
                                     purge_step=resume_step + 1 if resume_step is not None else None)
        if progress and sys.stderr.isatty():
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr, mininterval=0.5, smoothing=0.1)
        else:
            self._lines = progress

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        keep = []
        with open(self.path, encoding="utf-8", errors="replace") as f:  # a crash may cut a character
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the crash
                if rec.get("step", 0) <= step:
                    keep.append(json.dumps(rec))
        write_text_atomic(self.path, "".join(k + "\n" for k in keep))

    def advance(self, n: int = 1) -> None:
        """Move the progress bar by `n` steps."""
        if self._bar is not None:
            self._bar.update(n)

    def log(self, step: int, metrics: dict[str, Any], split: str = "train") -> dict[str, Any]:
        """Append one line to metrics.jsonl, write TensorBoard scalars, refresh the bar. Returns the record."""
        record = {"split": split, "step": int(step)}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        if not self.enabled:
            return record
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("split", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
            self._tb.flush()
        if self._bar is not None or self._lines:
            prefix = "" if split == "train" else f"{split}_"
            shown = {}
            for k, v in record.items():
                if _shown(k, split):
                    name = "tok/s" if k == "tokens_per_s" else prefix + k
                    shown[name] = f"{v:,.0f}" if k == "tokens_per_s" and isinstance(v, float) else _fmt(v)
            self._postfix.update(shown)
            if self._bar is not None:
                self._bar.set_postfix(self._postfix, refresh=True)
            elif shown:   # this record's own figures (an evaluation's without the training ones)
                print(f"step {step}/{self._total} " + " ".join(f"{k}={v}" for k, v in shown.items()),
                      file=sys.stderr, flush=True)
        return record

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar (rank 0 only)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressLines:
    """Progress of a long loop in a log file, where a bar's redraws would be noise: every `every_s` seconds a
    line `<desc>: 1,024/50,000 examples (2%), 85.3 examples/s`, and a closing one if any was printed (so a
    short loop prints nothing). A log should not stay silent for the first `every_s` of a long loop, though: at
    the first update after `first_s` seconds, a loop whose pace so far makes it last `LONG` intervals or more
    says at once that it started, and how big it is. Has tqdm's `update` / `close`, so callers hold either."""

    LONG = 2   # a loop projected to last fewer intervals prints at most one line before its closing one

    def __init__(self, total: int, desc: str, unit: str, every_s: float = 30.0, first_s: float = 5.0):
        self.total, self.desc, self.unit, self.every_s, self.first_s = total, desc, unit, every_s, first_s
        self.n = 0
        self._start = self._last = time.monotonic()
        self._printed = False

    def _line(self, now: float) -> None:
        rate = self.n / max(now - self._start, 1e-9)
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}s{share}, {rate:,.1f} {self.unit}s/s",
              file=sys.stderr, flush=True)
        self._last, self._printed = now, True

    def _long(self, now: float) -> bool:
        """Before any line: has the loop run `first_s`, at a pace that makes it last `LONG` intervals or more?"""
        elapsed = now - self._start
        return (not self._printed and elapsed >= self.first_s and 0 < self.n
                and elapsed * self.total >= self.LONG * self.every_s * self.n)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n < self.total and (now - self._last >= self.every_s or self._long(now)):
            self._line(now)

    def close(self) -> None:
        if self._printed:
            self._line(time.monotonic())
            self._printed = False


# ---------------------------------------------------------------------------------------------
# Reading and plotting
# ---------------------------------------------------------------------------------------------

def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of `<run_dir>/metrics.jsonl` (or of that file itself), in order; for a (split, step)
    logged twice, the later record wins. Damaged lines are skipped."""
    records: dict[tuple[str, int], dict] = {}
    with open(_metrics_file(run_dir), encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                key = (rec.get("split", "train"), rec["step"])
                records.pop(key, None)
                records[key] = rec
    return sorted(records.values(), key=lambda r: (r["step"], r.get("split", "train") != "train"))


def _metrics_file(run_dir: str | os.PathLike) -> str:
    """A run directory's metrics.jsonl, or the file given."""
    path = os.fspath(run_dir)
    return os.path.join(path, METRICS_NAME) if os.path.isdir(path) else path


def _nothing_to_plot(run_dirs: list[str]) -> ValueError:
    """Which files held nothing to draw, and what a plot needs (an empty file said so: a run killed at once)."""
    files = [_metrics_file(d) for d in run_dirs]
    empty = " (empty)" if len(files) == 1 and os.path.getsize(files[0]) == 0 else ""
    return ValueError(f"{', '.join(files)}{empty}: nothing to plot; expected train or eval records with a step and "
                      "a loss, accuracy, score or learning rate")


# How a value that is not finite reaches metrics.jsonl: as the Tracker's string, or json.dumps's NaN / Infinity.
NOT_FINITE = ("nan", "inf", "-inf", "infinity", "-infinity")


def _value(v: Any) -> float | None:
    """A logged number as a float (NaN for a value that is not finite, however written), None for anything else."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v) if math.isfinite(v) else math.nan
    if isinstance(v, str) and v.strip().lower() in NOT_FINITE:
        return math.nan
    return None


def _series(records: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    """The steps and values of `key`; a value that is not finite is NaN, where the line breaks (not joined over)."""
    xs, ys = [], []
    for r in records:
        v = _value(r.get(key))
        if r.get("split", "train") == split and v is not None:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


NAN_LABEL, NAN_GID = "not finite (NaN / inf)", "not finite"
FEW = 20   # a series of up to this many points is drawn with markers


def _keys(records: list[dict], split: str, pred) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        if r.get("split", "train") == split:
            for k in r:
                if pred(k):
                    seen[k] = None
    return list(seen)


# Held-out scores fine-tuning logs besides accuracy and loss (classification, multi-label, regression, tagging, SQuAD).
SCORES = ("f1", "macro_f1", "precision", "recall", "mcc", "pearson", "spearman", "exact")


def _is_score(key: str) -> bool:
    return key in SCORES or (key.startswith(("HasAns_", "NoAns_")) and not key.endswith("_total"))


def _shown(key: str, split: str) -> bool:
    """What the bar or line shows: the loss, accuracies, tokens/s, fp16's skipped steps (an overflow changes no
    weight: worth seeing as it happens), and a held-out run's scores (the F1 that picks a tagger's best
    checkpoint, a regression's correlations and MSE, SQuAD's exact match and F1)."""
    if split == "train":
        return key in ("loss", "tokens_per_s", "skipped_steps") or _is_accuracy(key)
    return key in ("loss", "tokens_per_s", "mse", *SCORES) or _is_accuracy(key)


def _is_loss_term(key: str) -> bool:
    """A loss term: training's "loss_mlm", pre-training evaluation's "mlm_loss", a regression's dev "mse"."""
    return key.startswith("loss_") or key.endswith("_loss") or key == "mse"


def _is_accuracy(key: str) -> bool:
    """Training's "acc_mlm", fine-tuning evaluation's "accuracy", pre-training evaluation's "mlm_accuracy"."""
    return key.startswith("acc") or key.endswith("_accuracy")


def _panels(runs: list[list[dict]]) -> list[str]:
    """The panels the runs' records fill, in drawing order."""
    panels = []
    if any(_series(r, "train", "loss")[0] for r in runs):
        panels.append("train loss")
    if any(_series(r, "eval", "loss")[0] or _keys(r, "eval", _is_loss_term) for r in runs):
        panels.append("eval loss")
    if any(_keys(r, s, _is_accuracy) for r in runs for s in ("train", "eval")):
        panels.append("accuracy")
    if any(_keys(r, "eval", _is_score) for r in runs):
        panels.append("dev scores")
    if any(_series(r, "train", "lr")[0] for r in runs):
        panels.append("learning rate")
    return panels


TERM_STYLES = ("--", ":", "-.")   # a run's loss terms, or (several runs) its dev scores, one dash each
ACC_MARKERS = "osd^v<>"


def _run_labels(run_dirs: list[str], labels: Iterable[str] | None) -> list[str]:
    """One label per run: those given, else each run directory's name."""
    if not run_dirs:
        raise ValueError("plot_runs: no run directories given")
    labels = list(labels) if labels is not None else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"plot_runs: {len(run_dirs)} runs but {len(labels)} labels")
    return labels


def _draw(ax, xs, ys, marker=None, **style) -> None:
    """A line; a series of a few points gets markers (one point alone would not show; three joined pass for a
    curve). A step whose value is not finite (a diverged loss) gets a red cross at the panel's top: a NaN
    draws nothing at all."""
    ax.plot(xs, ys, marker=marker or ("o" if len(xs) <= FEW else None), ms=3, **style)
    bad = [x for x, y in zip(xs, ys) if math.isnan(y)]
    if bad:
        seen = any(line.get_label() == NAN_LABEL for line in ax.get_lines())
        ax.plot(bad, [0.97] * len(bad), transform=ax.get_xaxis_transform(), ls="", marker="x", ms=6,
                color="red", label="_" if seen else NAN_LABEL, gid=NAN_GID)


def _draw_losses(ax, records: list[dict], split: str, colour: str | None, tag: str) -> None:
    """The loss (solid) and its terms (dashed) of one split."""
    xs, ys = _series(records, split, "loss")
    if xs:
        _draw(ax, xs, ys, "o" if split == "eval" else None, color=colour, lw=1.8, label=f"{tag}loss")
    terms = _keys(records, split, _is_loss_term)
    for j, k in enumerate(terms if len(terms) > 1 or not xs else []):  # one term is the total again
        xs, ys = _series(records, split, k)
        _draw(ax, xs, ys, "o" if split == "eval" else None, color=colour, lw=1.0,
              ls=TERM_STYLES[j % len(TERM_STYLES)], label=f"{tag}{k}")
    ax.set_ylabel("loss")


def _draw_accuracies(ax, records: list[dict], colour: str | None, tag: str, multi: bool) -> None:
    """Accuracies: train dashed, eval solid; markers tell several runs' (or eval's) accuracies apart."""
    for split, ls in (("train", "--"), ("eval", "-")):
        for j, k in enumerate(_keys(records, split, _is_accuracy)):
            xs, ys = _series(records, split, k)
            marker = ACC_MARKERS[j % len(ACC_MARKERS)] if multi or split == "eval" else None
            _draw(ax, xs, ys, marker, color=colour, ls=ls, lw=1.3, markevery=max(1, len(xs) // 20),
                  label=f"{tag}{split} {k}")
    ax.set_ylabel("accuracy")


def _draw_scores(ax, records: list[dict], colour: str | None, tag: str, multi: bool) -> None:
    """Held-out scores; with several runs (one colour each) a dash tells the scores apart."""
    for j, k in enumerate(_keys(records, "eval", _is_score)):
        xs, ys = _series(records, "eval", k)
        _draw(ax, xs, ys, "o", color=colour, lw=1.3, ls=TERM_STYLES[j % len(TERM_STYLES)] if multi else "-",
              label=f"{tag}{k}")
    ax.set_ylabel("score")


def _draw_lr(ax, records: list[dict], colour: str, tag: str) -> None:
    xs, ys = _series(records, "train", "lr")
    _draw(ax, xs, ys, color=colour, label=f"{tag}lr")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


def _draw_run(ax, panel: str, records: list[dict], colour: str, tag: str, multi: bool) -> None:
    """One run's curves in `panel`: in the run's colour when there are several runs, else a colour per curve
    (the learning rate, one curve, always in the run's)."""
    line_colour = colour if multi else None
    if panel in ("train loss", "eval loss"):
        _draw_losses(ax, records, panel.split()[0], line_colour, tag)
    elif panel == "accuracy":
        _draw_accuracies(ax, records, line_colour, tag, multi)
    elif panel == "dev scores":
        _draw_scores(ax, records, line_colour, tag, multi)
    else:
        _draw_lr(ax, records, colour, tag)


def _finish_panel(ax, panel: str) -> None:
    """Scale, title and step axis of a drawn panel."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    if panel in ("train loss", "eval loss") and _spans_decades(ax):
        ax.set_yscale("log")
    ax.set_title(panel + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_xlabel("step")
    ax.tick_params(labelbottom=True)  # sharex hides them above the last row
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))  # no tick at step 12.5
    ax.xaxis.set_major_formatter(FuncFormatter(_step_label))
    ax.grid(True, alpha=0.3)


def _figure_title(labels: list[str], width: float) -> str:
    """The runs' labels, wrapped to the figure's `width` in inches (about 9 characters of 12-point text an inch):
    long run names ran off both edges; more than four runs are counted instead."""
    if len(labels) > 4:
        return f"{len(labels)} runs"
    return textwrap.fill(", ".join(labels), int(9 * width), break_on_hyphens=False, break_long_words=False)


def plot_runs(run_dirs: Iterable[str | os.PathLike], labels: Iterable[str] | None = None,
              out_png: str | os.PathLike = "curves.png") -> str:
    """Learning curves of one or more runs in one PNG: train loss (total solid, terms dashed), eval loss,
    accuracies (train dashed, eval solid), other held-out scores (F1, MCC, correlations, exact match) and the
    learning rate, against the step. One colour per run.
    Returns the PNG's path."""
    from ..figures import pyplot, save
    plt = pyplot()
    run_dirs = [os.fspath(d) for d in run_dirs]
    labels = _run_labels(run_dirs, labels)
    runs = [read_metrics(d) for d in run_dirs]
    multi = len(runs) > 1
    panels = _panels(runs)
    if not panels:
        raise _nothing_to_plot(run_dirs)

    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    # One step axis for every panel, so a dev point lines up with the training around it.
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.2 * nrows), squeeze=False, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    beside = [0.0] * ncols   # per column: the widest legend drawn beside a panel
    for n, (ax, panel) in enumerate(zip(axes.flat, panels)):
        for i, (records, label) in enumerate(zip(runs, labels)):
            _draw_run(ax, panel, records, colours[i % len(colours)], f"{label}: " if multi else "", multi)
        _finish_panel(ax, panel)
        beside[n % ncols] = max(beside[n % ncols], _legend(ax))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(_figure_title(labels, fig.get_figwidth()))
    fig.set_figwidth(fig.get_figwidth() + sum(beside))
    fig.tight_layout()
    return save(fig, out_png)


def _step_label(step: float, _pos=None) -> str:
    """A step on the axis: 25k, 1.5M (a 200,000-step run's "125000 150000" ran together; "1e6" was a riddle)."""
    if abs(step) >= 1e6:
        return f"{step / 1e6:g}M"
    if abs(step) >= 1e4:
        return f"{step / 1e3:g}k"
    return f"{step:g}"


def _spans_decades(ax, decades: float = 1.5) -> bool:
    """Whether the panel's values are all positive and span `decades` powers of ten (30 times): a fine-tuning
    loss from 0.7 to 0.001, or an NSP term beside an MLM one, is a flat line at zero on a linear scale."""
    ys = [y for line in ax.get_lines() if line.get_gid() != NAN_GID for y in line.get_ydata() if math.isfinite(y)]
    return bool(ys) and min(ys) > 0 and max(ys) / min(ys) >= 10 ** decades


def _legend(ax, most_inside: int = 6) -> float:
    """The panel's legend: where it hides least inside the panel, or beside it when it holds more entries (several
    runs' terms) or is wider (long run names) than fits over the curves without hiding them. Returns the inches
    a legend beside the panel takes (0 inside), which the figure widens by, so the panel keeps its width."""
    if not ax.get_legend_handles_labels()[0]:
        return 0.0
    legend = ax.legend(fontsize=8, loc="best")
    renderer = ax.figure.canvas.get_renderer()
    if (len(legend.get_texts()) <= most_inside
            and legend.get_window_extent(renderer).width <= 0.5 * ax.get_window_extent(renderer).width):
        return 0.0
    legend.remove()
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return legend.get_window_extent(renderer).width / ax.figure.dpi + 0.1


def plot_run(run_dir: str | os.PathLike, out_png: str | os.PathLike | None = None) -> str:
    """Learning curves of one run (its directory, or its metrics.jsonl); the PNG goes to `<run_dir>/curves.png`
    unless `out_png` says otherwise."""
    run_dir = os.fspath(run_dir)
    where = (os.path.dirname(run_dir) or ".") if os.path.isfile(run_dir) else run_dir
    return plot_runs([run_dir], out_png=out_png or os.path.join(where, "curves.png"))
