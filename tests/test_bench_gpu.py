"""bench/gpu.py in its --smoke mode (tiny config on the CPU): every section and contender runs, the JSON
holds the figures, and one failing contender is reported without stopping the others."""
import json

import pytest
import torch

pytest.importorskip("transformers")

from bench import gpu  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_runs_every_code_path(tmp_path):
    out = tmp_path / "smoke.json"
    res = gpu.main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["failed"] == [] and res["failed"] == []
    assert saved["compile_backend"] == "aot_eager"
    num = saved["numerics"]
    assert num["ok"] and num["attention_path"] == "per-run" and num["ok_within_bf16_tolerance"]
    assert num["encoder_max_abs_error_vs_fp32"]["fp32_bertkit_vs_transformers"] < 1e-4
    for seq, batch in gpu.SMOKE["pretrain"]:
        contenders = saved[f"pretrain_{seq}x{batch}"]["contenders"]
        assert set(contenders) == {"bertkit", "transformers", "bertkit Trainer", "bertkit + compile",
                                   "transformers + compile"}
        for c in contenders.values():
            assert c["sequences_per_s"] > 0 and torch.isfinite(torch.tensor(c["last_loss"]))
        # the Trainer trains the same model on the same batches as the bench's own bertkit step loop
        assert contenders["bertkit Trainer"]["last_loss"] == pytest.approx(contenders["bertkit"]["last_loss"],
                                                                           rel=0.2)
        assert contenders["bertkit"]["ratio_vs_transformers_sdpa"] > 0
    inf = saved["inference"]
    assert inf["real_tokens"] == sum(gpu.lognormal_lengths(gpu.SMOKE["n_infer"], 12, gpu.SMOKE["infer_cap"], seed=2))
    assert len(inf["contenders"]) == 6
    assert all(c["real_tokens_per_s"] > 0 for c in inf["contenders"].values())


def test_a_failing_contender_is_reported_and_the_rest_runs(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated compile failure")

    monkeypatch.setattr(gpu, "transformers_step", broken)
    res = gpu.main(["--smoke", "--no-compile", "--only", "pretrain", "--out", str(tmp_path / "r.json")])
    seq, batch = gpu.SMOKE["pretrain"][0]
    contenders = res[f"pretrain_{seq}x{batch}"]["contenders"]
    assert "simulated compile failure" in contenders["transformers"]["error"]
    assert contenders["bertkit"]["sequences_per_s"] > 0
    assert f"pretrain_{seq}x{batch}/transformers" in res["failed"]


def test_workloads_are_the_documented_ones():
    lengths = gpu.lognormal_lengths(8192, 67, 512)
    assert 60 <= sorted(lengths)[4096] <= 74 and max(lengths) <= 512 and min(lengths) >= 2
    batches = gpu.pretraining_batches(2, 128, 256, 30522)
    for b in batches:
        real = b["attention_mask"].sum(1)
        assert 0.8 < (real == 128).float().mean() < 0.97          # ~90% full length
        masked = (b["labels"] != -100).sum(1)
        assert masked.max() <= 20 and masked.min() >= 1
        assert ((b["labels"] != -100) & (b["attention_mask"] == 0)).sum() == 0
        assert (b["input_ids"][b["labels"] != -100] == 4).all()


def test_compiled_contenders_are_skipped_past_the_budget(tmp_path):
    res = gpu.main(["--smoke", "--only", "inference", "--budget-s", "0", "--out", str(tmp_path / "b.json")])
    contenders = res["inference"]["contenders"]
    assert "skipped" in contenders["bertkit + compile, arrival order"]["error"]
    assert contenders["bertkit, arrival order"]["real_tokens_per_s"] > 0
