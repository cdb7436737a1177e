import json

import pytest

from bertkit.train import tracking
from bertkit.train.tracking import Tracker, plot_run, plot_runs, read_metrics


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
    tr.log(5, {"f1": 0.5, "mse": 1.0})  # in training, only loss, accuracies, tokens/s
    assert capsys.readouterr().err == ("step 5/5 eval_loss=2 eval_acc=0.5\nstep 5/5 eval_exact=50 eval_f1=62.5\n"
                                       "step 5/5 eval_pearson=0.8 eval_mse=0.25\n")


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
