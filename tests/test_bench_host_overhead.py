"""bench/host_overhead.py in its --smoke mode: every contender runs the same steps, the bertkit ones on the
GPU attention path, and the table carries the ratios."""
import json

import pytest
import torch

pytest.importorskip("transformers")

from bench import host_overhead  # noqa: E402
from bertkit.modeling import packing as P  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_race_runs_every_contender(tmp_path, capsys):
    out = tmp_path / "r.json"
    res = host_overhead.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["contenders"].keys() == res["contenders"].keys() == set(host_overhead.CONTENDERS)
    c = res["contenders"]
    assert all(v["ms_per_step"] > 0 for v in c.values())
    # the same weights, batches and steps: each compiled contender ends where eager bertkit's first phase did
    first = res["phases"][0]["last_loss"]["bertkit"]
    for phase in res["phases"][1:]:
        (name, loss), = ((n, v) for n, v in phase["last_loss"].items() if "compile" in n)
        assert loss == pytest.approx(first, rel=1e-4) if name.startswith("bertkit") else loss > 0
    ms = res["phases"][0]["ms_per_step"]
    assert c["bertkit"]["ratio_vs_transformers"] == pytest.approx(ms["transformers"] / ms["bertkit"])
    phase = res["phases"][1]["ms_per_step"]
    assert c["bertkit + compile"]["speedup_vs_own_eager"] == pytest.approx(phase["bertkit"]
                                                                          / phase["bertkit + compile"])
    assert c["bertkit + compile"]["ratio_vs_transformers + compile"] == pytest.approx(
        c["transformers + compile"]["ms_per_step"] / c["bertkit + compile"]["ms_per_step"])
    printed = capsys.readouterr().out
    assert "| bertkit + compile |" in printed
    gemm = res["gemm_us"]   # the machine's bf16 products priced against fp32's, and said when slow
    assert gemm["bfloat16"] > 0 and gemm["float32"] > 0
    assert gemm["slow_bf16"] == (gemm["bfloat16"] > 3 * gemm["float32"])
    assert ("no fast bf16 products" in printed) == gemm["slow_bf16"]


def test_eager_bertkit_takes_the_varlen_branch_and_bad_rounds(monkeypatch):
    calls = []
    kernel = host_overhead.one_call_attention

    def counted(*args):
        calls.append(args[0].shape)
        return kernel(*args)

    monkeypatch.setattr(host_overhead, "one_call_attention", counted)
    res = host_overhead.main(["--smoke", "--no-compile", "--rounds", "1"])
    assert set(res["contenders"]) == {"bertkit", "transformers"}
    # one kernel call per layer per step (warm-up and timed), and the stand-in is gone after the race
    assert len(calls) == (host_overhead.SMOKE["warmup"] + 1) * host_overhead.SMOKE["layers"]
    assert P.use_varlen("cpu", torch.float32, False) is False
    with pytest.raises(SystemExit, match="--rounds must be at least 1, got 0"):
        host_overhead.main(["--smoke", "--rounds", "0"])
