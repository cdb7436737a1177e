import json

import numpy as np
import pytest
import torch

from bertkit.train import tracking
from bertkit.train.tracking import ProgressLines, Tracker, plot_run, plot_runs, read_metrics


def _fake_run(run_dir, steps=30, scale=1.0, progress=False, resume_step=None):
    tr = Tracker(run_dir, total_steps=steps, progress=progress, tensorboard=False, resume_step=resume_step)
    start = resume_step or 0
    for step in range(start + 1, steps + 1):
        tr.advance()
        tr.log(step, {"lr": 1e-4 * min(1, step / 5), "loss": scale * (8 - step / 10), "loss_mlm": 7 - step / 10,
                      "loss_nsp": 0.7, "acc_mlm": step / 100, "acc_nsp": 0.5, "tokens_per_s": 1000.0,
                      "elapsed": step * 0.1})
        if step % 10 == 0:
            tr.log(step, {"loss": 7.5 - step / 20, "acc_mlm": step / 90}, split="eval")
    tr.close()


def test_metrics_jsonl_lines_and_resume_truncation(tmp_path):
    _fake_run(tmp_path, steps=12)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 13
    assert records[0]["split"] == "train" and records[0]["step"] == 1 and records[0]["lr"] == pytest.approx(2e-5)
    assert {"loss", "loss_mlm", "loss_nsp", "acc_mlm", "acc_nsp", "tokens_per_s", "elapsed"} <= set(records[0])
    assert [r["step"] for r in records if r["split"] == "eval"] == [10]

    # A resumed run drops what the interrupted one logged after its checkpoint, then appends.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 13, "lo')  # the line a crash cut in half
    _fake_run(tmp_path, steps=14, resume_step=8)
    steps = [(r["split"], r["step"]) for r in read_metrics(tmp_path)]
    assert [s for sp, s in steps if sp == "train"] == list(range(1, 15))
    assert [s for sp, s in steps if sp == "eval"] == [10]

    # A fresh run in the same directory starts a fresh log and keeps the old one aside, saying so.
    with pytest.warns(UserWarning, match=r"renamed to metrics\.jsonl\.old$"):
        _fake_run(tmp_path, steps=2)
    assert len(read_metrics(tmp_path)) == 2 and (tmp_path / "metrics.jsonl.old").exists()


def test_a_fresh_run_renames_a_metrics_file_already_there_without_overwriting_one_renamed_before(tmp_path):
    """A metrics.jsonl in the directory of a fresh run (a killed attempt's, or not a run's at all) was renamed to
    metrics.jsonl.old without a word, replacing any metrics.jsonl.old there: now it goes to a free name, and a
    one-line warning names the file and its new name."""
    (tmp_path / "metrics.jsonl").write_text('{"mine": 3}\n')
    (tmp_path / "metrics.jsonl.old").write_text('{"mine": 1}\n')
    (tmp_path / "metrics.jsonl.old.2").write_text('{"mine": 2}\n')
    with pytest.warns(UserWarning) as caught:
        _fake_run(tmp_path, steps=2)
    assert [str(w.message) for w in caught] == [f"{tmp_path / 'metrics.jsonl'}: a fresh run starts a new "
                                                "metrics.jsonl; the one there was renamed to metrics.jsonl.old.3"]
    assert [json.loads((tmp_path / name).read_text()) for name in ("metrics.jsonl.old", "metrics.jsonl.old.2",
                                                                   "metrics.jsonl.old.3")] == [
        {"mine": 1}, {"mine": 2}, {"mine": 3}]
    assert [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"] == [1, 2]


def test_nan_is_written_as_valid_json(tmp_path):
    tr = Tracker(tmp_path, total_steps=1, progress=False, tensorboard=False)
    tr.log(1, {"loss": float("nan")})
    tr.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == "nan"


def test_tensor_and_numpy_values_are_logged_as_plain_numbers(tmp_path):
    """The trainer logs 0-d tensors and numpy scalars: metrics.jsonl holds their numbers, not a failure to
    serialise them."""
    tr = Tracker(tmp_path, total_steps=1, progress=False, tensorboard=False)
    record = tr.log(1, {"loss": torch.tensor(2.5), "acc": np.float32(0.75), "n": np.int64(3)})
    tr.close()
    assert record == {"split": "train", "step": 1, "loss": 2.5, "acc": 0.75, "n": 3}
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == record and line.startswith('{"split": "train", "step": 1, ')   # as documented


def test_resuming_from_step_0_truncates_the_log_instead_of_setting_it_aside(tmp_path):
    """`resume_step=0` is a resume like any other: what was logged after step 0 is dropped, with no warning and
    no metrics.jsonl.old."""
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "step": 0, "loss": 9.0}\n'
                                             '{"split": "train", "step": 1, "loss": 8.0}\n')
    Tracker(tmp_path, total_steps=2, progress=False, tensorboard=False, resume_step=0).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_read_metrics_keeps_the_later_of_two_records_and_train_before_eval(tmp_path):
    """A step logged twice (a resumed run's redo) counts once, the later record; at one step the training record
    comes before the evaluation; lines without a step are not records."""
    lines = [{"split": "eval", "step": 2, "loss": 5.0}, {"split": "train", "step": 2, "loss": 4.0},
             {"split": "train", "step": 1, "loss": 9.0}, {"loss": 1.0}, {"split": "train", "step": 1, "loss": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [(r["split"], r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        ("train", 1, 3.0), ("train", 2, 4.0), ("eval", 2, 5.0)]


def test_progress_without_a_tty_is_a_line_per_logged_step(tmp_path, capsys):
    """In a log file (no terminal): one plain line per logged step, not a bar's carriage-return redraws."""
    _fake_run(tmp_path, steps=5, progress=True)
    Tracker(tmp_path / "off", total_steps=3, enabled=False).log(1, {"loss": 1.0})  # other ranks: no-ops
    assert not (tmp_path / "off").exists()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split()[1] for line in lines] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert lines[-1] == "step 5/5 loss=7.5 acc_mlm=0.05 acc_nsp=0.5 tok/s=1,000"
    tr = Tracker(tmp_path / "e", total_steps=5, progress=True, tensorboard=False)
    tr.log(5, {"loss": 2.0, "acc": 0.5}, split="eval")
    tr.log(5, {"perplexity": 9.0}, split="eval")   # nothing the line shows: no line
    tr.log(5, {"exact": 50.0, "f1": 62.5, "HasAns_f1": 70.0}, split="eval")  # held-out scores, the main ones
    tr.log(5, {"pearson": 0.8, "mse": 0.25, "loss_x": 1.0}, split="eval")
    tr.log(5, {"f1": 0.5, "mse": 1.0})  # in training, only loss, accuracies, tokens/s and fp16's skipped steps
    tr.log(5, {"loss": 3.0, "skipped_steps": 2, "loss_scale": 32768.0})
    assert capsys.readouterr().err == ("step 5/5 eval_loss=2 eval_acc=0.5\nstep 5/5 eval_exact=50 eval_f1=62.5\n"
                                       "step 5/5 eval_pearson=0.8 eval_mse=0.25\nstep 5/5 loss=3 skipped_steps=2\n")


def test_progress_lines_for_long_loops(capsys, monkeypatch):
    """A line every `every_s` seconds and a closing one; a loop shorter than that prints nothing."""
    quiet = tracking.ProgressLines(100, "predicting", "example", every_s=30.0)
    quiet.update(60)
    quiet.update(40)
    quiet.close()
    assert capsys.readouterr().err == ""
    clock = iter([0.0, 10.0, 31.0, 45.0, 62.0, 70.0])
    monkeypatch.setattr(tracking.time, "monotonic", lambda: next(clock))
    lines = tracking.ProgressLines(2000, "predicting", "example", every_s=30.0)   # starts at 0 s
    for n, _ in zip((500, 500, 500, 500), range(4)):   # at 10, 31 (a line), 45, 62 (a line) seconds
        lines.update(n)
    lines.close()                                        # at 70 s
    assert capsys.readouterr().err.splitlines() == [
        "predicting: 1,000/2,000 examples (50%), 32.3 examples/s",
        "predicting: 2,000/2,000 examples (100%), 28.6 examples/s"]


def test_progress_line_numbers(tmp_path, capsys):
    """Zero is "0" and 0.001 is "0.001" (4 significant digits); below 1e-3 a number is shown in e notation."""
    tr = Tracker(tmp_path, total_steps=3, progress=True, tensorboard=False)
    tr.log(1, {"loss": 0.0, "acc": 0.001, "acc_nsp": 0.0005, "acc_x": 0.0123456})
    tr.close()
    assert capsys.readouterr().err == "step 1/3 loss=0 acc=0.001 acc_nsp=5.00e-04 acc_x=0.01235\n"


def test_progress_off_prints_nothing(tmp_path, capsys):
    tr = Tracker(tmp_path, total_steps=3, progress=False, tensorboard=False)
    tr.log(1, {"loss": 1.0})
    tr.close()
    assert capsys.readouterr().err == ""


def test_progress_lines_close_once(capsys, monkeypatch):
    """A second `close` (a caller's finally after its own) prints no second closing line."""
    clock = iter([0.0, 40.0, 50.0, 60.0])
    monkeypatch.setattr(tracking.time, "monotonic", lambda: next(clock))
    lines = ProgressLines(100, "scoring", "example", every_s=30.0)
    lines.update(10)   # at 40 s: a line
    lines.close()      # at 50 s: the closing line
    lines.close()
    assert capsys.readouterr().err.splitlines() == ["scoring: 10/100 examples (10%), 0.2 examples/s",
                                                    "scoring: 10/100 examples (10%), 0.2 examples/s"]


def test_a_loop_projected_to_last_exactly_long_intervals_says_at_once_that_it_started(capsys, monkeypatch):
    """10 of 100 examples in the first 6 s: a 60 s loop, exactly `LONG` (2) intervals of 30 s, which is "LONG
    intervals or more": a line at once, not after 30 s of silence."""
    clock = iter([0.0, 6.0])
    monkeypatch.setattr(tracking.time, "monotonic", lambda: next(clock))
    lines = ProgressLines(100, "scoring", "example", every_s=30.0, first_s=5.0)
    lines.update(10)
    assert capsys.readouterr().err == "scoring: 10/100 examples (10%), 1.7 examples/s\n"


def test_plot_run_and_plot_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_run(a)
    _fake_run(b, scale=0.9)
    png = plot_run(a)
    assert png == str(a / "curves.png")
    data = open(png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    both = plot_runs([a, b], ["baseline", "variant"], tmp_path / "cmp.png")
    assert open(both, "rb").read()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="labels"):
        plot_runs([a, b], ["one"], tmp_path / "x.png")


def test_fine_tuning_scores_get_their_own_panel(tmp_path):
    """Dev F1 / MCC (classification, tagging) and SQuAD's exact match are drawn, not only accuracy and loss."""
    tr = Tracker(tmp_path, total_steps=4, progress=False)
    for step in (2, 4):
        tr.log(step, {"loss": 1.0 / step, "lr": 1e-4})
        tr.log(step, {"loss": 0.9 / step, "accuracy": 0.5 + step / 10, "f1": 0.4 + step / 10, "mcc": 0.1 * step,
                      "n": 40, "per_type": {"PER": {"f1": 0.5}}}, split="eval")
    tr.close()
    runs = [tracking.read_metrics(tmp_path)]
    assert tracking._panels(runs) == ["train loss", "eval loss", "accuracy", "dev scores", "learning rate"]
    assert tracking._keys(runs[0], "eval", tracking._is_score) == ["f1", "mcc"]
    qa = [{"split": "eval", "step": 1, "exact": 50.0, "f1": 60.0, "HasAns_exact": 40.0, "HasAns_total": 3}]
    assert tracking._keys(qa, "eval", tracking._is_score) == ["exact", "f1", "HasAns_exact"]
    assert open(plot_run(tmp_path), "rb").read()[:4] == b"\x89PNG"


def test_pre_training_evaluations_are_drawn(tmp_path):
    """Pre-training's held-out lines name their terms mlm_loss / mlm_accuracy (no total loss): they fill the
    eval loss and accuracy panels."""
    tr = Tracker(tmp_path, total_steps=4, progress=False)
    tr.log(4, {"loss": 7.0, "loss_mlm": 6.3, "loss_nsp": 0.7, "acc_mlm": 0.05, "acc_nsp": 0.5, "lr": 1e-4})
    tr.log(4, {"mlm_accuracy": 0.06, "mlm_loss": 6.2, "perplexity": 493.0, "nsp_accuracy": 0.55,
               "nsp_loss": 0.69}, split="eval")
    tr.close()
    runs = [tracking.read_metrics(tmp_path)]
    assert tracking._panels(runs) == ["train loss", "eval loss", "accuracy", "learning rate"]
    assert tracking._keys(runs[0], "eval", tracking._is_loss_term) == ["mlm_loss", "nsp_loss"]
    assert tracking._keys(runs[0], "eval", tracking._is_accuracy) == ["mlm_accuracy", "nsp_accuracy"]
    assert open(plot_run(tmp_path), "rb").read()[:4] == b"\x89PNG"


def test_a_run_logged_once_and_a_regression_are_drawn(tmp_path, monkeypatch):
    """A series of one point gets a marker (a line of one point draws nothing); a regression's dev "mse" is its
    eval loss; the PNG of a metrics.jsonl named directly goes beside it."""
    from bertkit import figures
    tr = Tracker(tmp_path, total_steps=4, progress=False)
    tr.log(4, {"loss": 0.5, "lr": 1e-4, "acc_cls": 0.75})
    tr.log(4, {"mse": 0.3, "pearson": 0.8}, split="eval")
    tr.close()
    assert tracking._panels([tracking.read_metrics(tmp_path)]) == [
        "train loss", "eval loss", "accuracy", "dev scores", "learning rate"]
    drawn = {}
    real_save = figures.save
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.setdefault("fig", fig) and real_save(fig, path))
    assert plot_run(tmp_path / "metrics.jsonl") == str(tmp_path / "curves.png")
    lines = [line for ax in drawn["fig"].axes for line in ax.get_lines()]
    assert {line.get_label() for line in lines} >= {"loss", "mse", "train acc_cls", "lr", "pearson"}
    assert all(line.get_marker() not in (None, "None", "") for line in lines)  # every series of one point shows


@pytest.mark.skipif(not tracking.tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_scalars(tmp_path):
    tr = Tracker(tmp_path, total_steps=2, progress=False, tensorboard=True)
    tr.log(1, {"loss": 2.0, "lr": 1e-4})
    tr.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.skipif(not tracking.tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_gets_numbers_but_not_flags_or_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tr = Tracker(tmp_path, total_steps=1, progress=False, tensorboard=True)
    tr.log(1, {"loss": 2.0, "n": 3, "skipped": True, "note": "x"})
    tr.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/n"]


def test_nothing_to_plot_names_the_file_and_what_was_expected(tmp_path):
    """A metrics.jsonl that is empty, or holds no train or eval records with a step (another split, lines without
    a step): one line naming the file, and what a plot needs; for plot_run and plot_runs alike."""
    expected = ("nothing to plot; expected train or eval records with a step and a loss, accuracy, score or "
                "learning rate")
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (empty / "metrics.jsonl").write_text("")
    (other / "metrics.jsonl").write_text('{"split": "test", "step": 1, "loss": 2.0}\n{"loss": 1.0}\n')
    cases = [(lambda: plot_run(empty), f"{empty / 'metrics.jsonl'} (empty): {expected}"),
             (lambda: plot_run(empty / "metrics.jsonl"), f"{empty / 'metrics.jsonl'} (empty): {expected}"),
             (lambda: plot_run(other), f"{other / 'metrics.jsonl'}: {expected}"),
             (lambda: plot_runs([empty, other], out_png=tmp_path / "x.png"),
              f"{empty / 'metrics.jsonl'}, {other / 'metrics.jsonl'}: {expected}")]
    for call, message in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.skipif(not tracking.tensorboard_available(), reason="tensorboard is not installed")
def test_a_fresh_run_sets_an_old_tensorboard_folder_aside(tmp_path):
    """A fresh run logging to TensorBoard in a directory holding a tensorboard/ folder (an attempt killed before
    its first checkpoint) appended to it, mixing two runs' curves: now the folder goes to a free name with a
    one-line warning, and the new one holds this run's scalars alone. A resumed run keeps appending (TensorBoard's
    purge_step drops the steps it redoes); a run not logging to TensorBoard leaves the folder alone."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def run(loss, **kw):
        tr = Tracker(tmp_path, total_steps=2, progress=False, **kw)
        for step in (1, 2):
            tr.log(step, {"loss": loss + step})
        tr.close()

    def losses(folder):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars("train/loss")]
    run(10.0, tensorboard=True)
    (tmp_path / "tensorboard.old").mkdir()  # set aside by an earlier run: not replaced
    with pytest.warns(UserWarning) as caught:
        run(20.0, tensorboard=True)
    tb = tmp_path / "tensorboard"
    assert [str(w.message) for w in caught if "tensorboard" in str(w.message)] == [
        f"{tb}: a fresh run starts a new tensorboard/ folder; the one there was renamed to tensorboard.old.2"]
    assert losses(tb) == [(1, 21.0), (2, 22.0)]
    assert losses(tmp_path / "tensorboard.old.2") == [(1, 11.0), (2, 12.0)]
    assert not list((tmp_path / "tensorboard.old").iterdir())

    tr = Tracker(tmp_path, total_steps=3, progress=False, tensorboard=True, resume_step=2)
    tr.log(3, {"loss": 23.0})
    tr.close()
    assert losses(tb) == [(1, 21.0), (2, 22.0), (3, 23.0)]
    with pytest.warns(UserWarning, match="metrics.jsonl"):
        run(30.0, tensorboard=False)
    assert losses(tb) == [(1, 21.0), (2, 22.0), (3, 23.0)]
    assert sorted(p.name for p in tmp_path.glob("tensorboard*")) == ["tensorboard", "tensorboard.old",
                                                                     "tensorboard.old.2"]


# ------------------------------------------------------------------------------ the curves as a reader sees them
def _write(run_dir, records):
    """A hand-written metrics.jsonl (json.dumps writes a float NaN as NaN, as any other writer's may)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def _panel(fig, title):
    (ax,) = [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith(title)]
    return ax


def test_a_loss_spanning_decades_is_drawn_on_a_log_scale(tmp_path, drawn):
    """A fine-tuning loss from 0.69 to 0.001 was a flat line at zero for the second half of the run; a
    pre-training loss from 10.5 to 1.8 stays linear."""
    import math
    fine = _write(tmp_path / "fine", [{"split": "train", "step": s, "loss": 0.69 * math.exp(-s / 300) + 1e-3}
                                      for s in range(10, 3001, 10)])
    pre = _write(tmp_path / "pre", [{"split": "train", "step": s, "loss": 1.8 + 8.7 * math.exp(-s / 8000)}
                                    for s in range(100, 100_001, 100)])
    plot_run(fine)
    plot_run(pre)
    log, linear = (_panel(fig, "train loss") for fig in drawn)
    assert log.get_yscale() == "log" and log.get_title() == "train loss (log scale)"
    assert linear.get_yscale() == "linear" and linear.get_title() == "train loss"


def test_values_that_are_not_finite_are_marked_where_they_happened(tmp_path, drawn):
    """A NaN or inf loss (the Tracker's "nan" string, or json's NaN / Infinity) drew nothing: a run that diverged
    at its end looked finished, and the Tracker's strings were skipped, the line joined over them."""
    records = [{"split": "train", "step": s, "loss": 2.0 - s / 1000, "lr": 1e-4} for s in range(10, 201, 10)]
    records[4]["loss"] = "nan"            # step 50, as Tracker writes it
    records[9]["loss"] = float("inf")     # step 100, as json.dumps writes it
    records[-1]["loss"] = float("nan")    # step 200: the run ends diverged
    plot_run(_write(tmp_path / "run", records))
    ax = _panel(drawn[0], "train loss")
    marks = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert sorted(x for line in marks for x in line.get_xdata()) == [50, 100, 200]   # a red cross at each
    assert {line.get_color() for line in marks} == {"red"}
    (loss,) = [line for line in ax.get_lines() if line.get_label() == "loss"]
    assert list(loss.get_xdata()) == list(range(10, 201, 10))     # the line breaks at the NaN, not joined over
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "not finite (NaN / inf)"]


def _pretraining_runs(tmp_path, names):
    import math
    dirs = []
    for i, name in enumerate(names):
        mlm = [10 * math.exp(-s / 4000) + 1.9 for s in range(100, 20_001 + i * 3000, 100)]
        dirs.append(_write(tmp_path / name, [
            {"split": "train", "step": 100 * (k + 1), "loss": m + 0.1, "loss_mlm": m, "loss_nsp": 0.05 + m / 100,
             "lr": 1e-4} for k, m in enumerate(mlm)]))
    return dirs


def test_a_legend_that_would_hide_the_curves_goes_beside_its_panel(tmp_path, drawn):
    """Five runs' loss terms (15 entries), or four runs of long names: the legend covered the curves' ends; beside
    the panel it covers nothing, and the figure widens so the panel keeps its width."""
    plot_runs(_pretraining_runs(tmp_path, [f"seed{i}" for i in range(5)]), out_png=tmp_path / "a.png")
    plot_runs(_pretraining_runs(tmp_path, [f"bert-base-uncased-mnli-lr2e-5-bs32-warmup0.1-seed{i}" for i in range(4)]),
              out_png=tmp_path / "b.png")
    for fig in drawn:
        ax = _panel(fig, "train loss")
        assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
        assert ax.get_window_extent().width / fig.dpi >= 4.5
        assert not [t for t in fig.texts + [ax.title, ax.get_legend()]
                    if t.get_window_extent().x1 > fig.bbox.width + 1 or t.get_window_extent().x0 < -1]


def test_a_few_runs_of_short_names_keep_their_legend_inside(tmp_path, drawn):
    plot_runs(_pretraining_runs(tmp_path, ["a", "b"]), out_png=tmp_path / "a.png")
    ax = _panel(drawn[0], "train loss")
    assert ax.get_window_extent().contains(*ax.get_legend().get_window_extent().p0)


def test_long_run_names_in_the_title_are_wrapped_inside_the_figure(tmp_path, drawn):
    """Four runs named by their directories: the title ran off both edges of the figure."""
    dirs = _pretraining_runs(tmp_path, [f"bert-base-uncased-mnli-lr2e-5-bs32-warmup0.1-seed{i}" for i in range(4)])
    plot_runs(dirs, out_png=tmp_path / "a.png")
    fig = drawn[0]
    title = fig._suptitle.get_window_extent()
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width
    lines = fig._suptitle.get_text().split("\n")
    assert len(lines) > 1 and all(any(d.name in line for line in lines) for d in dirs)   # no name cut in two


def test_the_step_axis_reads_as_steps(tmp_path, drawn):
    """200,000 steps: "125000 150000" ran together (2 pixels apart), now 125k, 150k; three steps 10, 20, 30: no
    tick at step 12.5, and the three points are drawn as points, not passed off as a curve."""
    long = _write(tmp_path / "long", [{"split": "train", "step": s, "loss": 2.0} for s in range(100, 200_001, 100)])
    three = _write(tmp_path / "three", [{"split": "train", "step": s, "loss": 0.7 - s / 100} for s in (10, 20, 30)])
    plot_run(long)
    plot_run(three)
    for fig, last in zip(drawn, ("200k", "30")):
        ax = _panel(fig, "train loss")
        lo, hi = ax.get_xlim()
        texts = [t for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= x <= hi]
        assert texts[-1].get_text() == last
        assert all("." not in t.get_text() for t in texts)
        boxes = [t.get_window_extent() for t in texts]
        assert min(b.x0 - a.x1 for a, b in zip(boxes, boxes[1:])) >= 8   # pixels between neighbours
    (line,) = _panel(drawn[1], "train loss").get_lines()
    assert line.get_marker() == "o"


def test_flags_are_not_plotted_as_numbers():
    records = [{"split": "train", "step": 1, "loss": True}, {"split": "train", "step": 2, "loss": 2},
               {"split": "train", "step": 3, "loss": "Infinity"}]
    xs, ys = tracking._series(records, "train", "loss")
    assert xs == [2, 3] and ys[0] == 2.0 and ys[1] != ys[1]   # the string's infinity as NaN, where the line breaks


def test_squads_no_answer_scores_are_dev_scores():
    assert [k for k in ("NoAns_f1", "NoAns_exact", "NoAns_total", "HasAns_total", "loss") if tracking._is_score(k)] \
        == ["NoAns_f1", "NoAns_exact"]


@pytest.mark.parametrize("step, label", [(9999, "9999"), (10_000, "10k"), (25_000, "25k"), (150_000, "150k"),
                                         (1_000_000, "1M"), (1_500_000, "1.5M")])
def test_step_labels(step, label):
    assert tracking._step_label(step) == label


def _train_losses(run_dir, losses, **extra):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"split": "train", "step": 10 * (i + 1), "loss": v, **extra}) + "\n" for i, v in enumerate(losses)))
    return run_dir


def test_the_loss_scale_turns_log_at_one_and_a_half_decades(tmp_path, drawn):
    """A loss from 4.0 to 0.1 (40 times, 1.6 decades) is drawn on a log scale; one reaching exactly 0 stays
    linear (a log axis has no 0)."""
    tracking.plot_run(_train_losses(tmp_path / "a", [4.0, 1.0, 0.1]))
    tracking.plot_run(_train_losses(tmp_path / "b", [4.0, 1.0, 0.0]))
    scales = [[ax.get_yscale() for ax in fig.axes if ax.get_title().startswith("train loss")] for fig in drawn]
    assert scales == [["log"], ["linear"]]


def test_a_single_loss_term_is_not_drawn_again_beside_the_total(tmp_path, drawn):
    """Fine-tuning logs "loss" and one term equal to it: the panel shows the total alone; two terms are drawn."""
    tracking.plot_run(_train_losses(tmp_path / "one", [2.0, 1.5], loss_cls=1.0))
    tracking.plot_run(_train_losses(tmp_path / "two", [2.0, 1.5], loss_mlm=1.0, loss_nsp=0.5))
    panels = [[ax for ax in fig.axes if ax.get_title().startswith("train loss")] for fig in drawn]
    labels = [[line.get_label() for ax in axes for line in ax.get_lines()] for axes in panels]
    assert labels == [["loss"], ["loss", "loss_mlm", "loss_nsp"]]
