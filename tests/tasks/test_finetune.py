"""bertkit.tasks.finetune without a full run: the best checkpoint, --seeds, eval files and the schedule (the
full runs and their resume: test_classify.py, test_finetune_resume.py)."""
import json
import warnings

import numpy as np
import pytest

from bertkit.hub import LoadWarning
from bertkit.tasks import finetune as FT
from tests.tasks.tiny import tiny_model, words_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return words_tokenizer()


def test_a_tie_or_a_nan_keeps_the_earlier_best():
    """As transformers' Trainer (np.greater): only a strictly higher metric replaces the best checkpoint; a nan
    (a constant prediction's correlation) never does, except as the first."""
    assert FT._better(0.5, None) and FT._better(0.6, 0.5)
    assert not FT._better(0.5, 0.5)
    assert not FT._better(float("nan"), 0.5) and FT._better(float("nan"), None)
    assert FT._better(0.1, float("nan"))


def test_repeated_seeds_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^--seeds must list distinct integers, got '1,2,1'$"):
        FT.FinetuneArgs(seeds="1,2,1", output=str(tmp_path / "o"))


@pytest.mark.parametrize("name", ["dev.tsv.bz2", "dev.tsv.xz"])  # (.zip and .gz: tests/test_cli.py)
def test_evaluate_writes_eval_named_after_the_data_less_compression(tmp_path, name, capsys):
    FT.write_eval({"accuracy": 1.0, "n": 3}, str(tmp_path), f"data/{name}", None, "rows")
    assert json.loads((tmp_path / "eval_dev.json").read_text()) == {"model": str(tmp_path), "data": f"data/{name}",
                                                                    "accuracy": 1.0, "n": 3}


def test_a_fraction_of_an_epoch_rounds_the_steps_up(tok, tmp_path, monkeypatch):
    """As transformers' Trainer: max_steps = ceil(epochs * steps per epoch); 10 rows in batches of 4 are 3 steps
    an epoch, so half an epoch is 2 steps (not 1)."""
    from bertkit.modeling import BertModel
    enc = tmp_path / "enc"
    tok.save_pretrained(enc)
    tiny_model(BertModel, tok).save_pretrained(enc)
    rows = "".join(f"{'a lovely film' if i % 2 else 'the plot was bad'}\t{'pos' if i % 2 else 'neg'}\n"
                   for i in range(10))
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + rows, encoding="utf-8")
    args = FT.FinetuneClassifyArgs(model=str(enc), train=str(tmp_path / "t.tsv"), dev=str(tmp_path / "t.tsv"),
                                   output=str(tmp_path / "run"), epochs=0.5, batch_size=4, max_seq_length=16,
                                   progress=False)
    seen = {}

    class Stop(Exception):
        pass

    def trainer(objective, model, batches, cfg, **kw):  # the schedule is all this test needs: no training
        seen["max_steps"], seen["per_epoch"] = cfg.max_steps, batches.steps_per_epoch
        raise Stop

    monkeypatch.setattr(FT, "Trainer", trainer)
    with warnings.catch_warnings(), pytest.raises(Stop):
        warnings.simplefilter("ignore", LoadWarning)  # the fresh classifier head
        FT.run_finetune_classify(args)
    assert seen == {"max_steps": 2, "per_epoch": 3}


def test_seeds_report_the_mean_and_sample_sd_of_each_metric(tmp_path, monkeypatch, capsys):
    """Over seeds, eval_results.json holds each metric's mean and SAMPLE standard deviation (n - 1), for seeds
    whose metrics differ (the end-to-end test's two seeds often tie, where every sd is 0)."""
    data = tmp_path / "d.tsv"
    data.write_text("text\tlabel\na\tx\n", encoding="utf-8")
    args = FT.FinetuneArgs(train=str(data), dev=str(data), output=str(tmp_path / "run"), seeds="1,2,3")
    best = {1: {"accuracy": 0.5, "f1": 0.25, "n": 4}, 2: {"accuracy": 0.75, "f1": 0.5, "n": 4},
            3: {"accuracy": 1.0, "f1": 1.0, "n": 4}}

    def run_one(seed, out):  # a finished seed, without training
        return {"best": best[seed], "best_step": 1}

    monkeypatch.setattr(FT, "plot_runs", lambda *a, **k: None)
    res = FT.run_seeds(args, tmp_path / "run", run_one, "accuracy", {})
    assert res["mean"] == pytest.approx({"accuracy": 0.75, "f1": 1.75 / 3})
    assert res["sd"] == pytest.approx({"accuracy": 0.25, "f1": float(np.std([0.25, 0.5, 1.0], ddof=1))})
    assert json.loads((tmp_path / "run" / "eval_results.json").read_text())["sd"] == res["sd"]
