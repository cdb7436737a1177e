"""bench/gpu.py in its --smoke mode (tiny config on the CPU): every section and contender runs, the JSON
holds the figures, and one failing contender is reported without stopping the others."""
import contextlib
import json
import re
from unittest import mock

import pytest
import torch

pytest.importorskip("transformers")

from bench import gpu  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_runs_every_code_path(tmp_path, capsys):
    out = tmp_path / "smoke.json"
    res = gpu.main(["--smoke", "--out", str(out)])
    # compiled pre-training contenders: bertkit's at every shape first, so no compile at 128 delays its 512
    printed = re.findall(r"^  pretrain seq (\d+) x (\d+) +(.+?) \+ compile ", capsys.readouterr().out, re.M)
    assert printed == [(str(s), str(b), kind) for kind in gpu.COMPILED_ORDER for s, b in gpu.SMOKE["pretrain"]
                       if kind + " + compile" not in gpu.OPT_IN]   # opt-in contenders run only when named
    saved = json.loads(out.read_text())
    assert saved["failed"] == [] and res["failed"] == []
    assert saved["compile_backend"] == "aot_eager"
    num = saved["numerics"]
    assert num["ok"] and num["attention_path"] == "per-run" and num["ok_within_bf16_tolerance"]
    assert num["encoder_max_abs_error_vs_fp32"]["fp32_bertkit_vs_transformers"] < 1e-4
    for seq, batch in gpu.SMOKE["pretrain"]:
        contenders = saved[f"pretrain_{seq}x{batch}"]["contenders"]
        assert set(contenders) == {"bertkit", "transformers", "bertkit Trainer", "bertkit + compile",
                                   "transformers + compile", "bertkit Trainer + compile"}
        for c in contenders.values():
            assert c["sequences_per_s"] > 0 and torch.isfinite(torch.tensor(c["last_loss"]))
        # the Trainer trains the same model on the same batches as the bench's own bertkit step loop
        for trainer in ("bertkit Trainer", "bertkit Trainer + compile"):
            assert contenders[trainer]["last_loss"] == pytest.approx(contenders["bertkit"]["last_loss"], rel=0.2)
        assert contenders["bertkit"]["ratio_vs_transformers_sdpa"] > 0
        for name in ("bertkit", "transformers"):   # on the CPU the host does the work: queued ~ done
            c = contenders[name]
            assert 0 < c["host_ms_per_step"] <= c["step_ms"] and c["host_ms_per_step"] > 0.5 * c["step_ms"]
    names = {n for k, v in saved.items() if isinstance(v, dict) and "contenders" in v for n in v["contenders"]}
    assert names == set(gpu.CONTENDERS)   # the names --contenders checks against: every one, and no other
    inf = saved["inference"]
    assert inf["real_tokens"] == sum(gpu.lognormal_lengths(gpu.SMOKE["n_infer"], 12, gpu.SMOKE["infer_cap"], seed=2))
    assert len(inf["contenders"]) == 7
    for name, c in inf["contenders"].items():   # each bertkit way computes what eager bertkit does
        assert name.startswith("transformers") or c["max_abs_diff_vs_bertkit_eager"] < 1e-4, (name, c)
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


def test_a_misspelt_contender_stops_the_run_before_it_starts(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--smoke", "--contenders", "bertkit+compile", "--out", str(tmp_path / "b.json")])
    assert "--contenders: no contender 'bertkit+compile'; there are 'bertkit', " in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_compiled_contenders_are_skipped_past_the_budget(tmp_path):
    res = gpu.main(["--smoke", "--only", "inference", "--budget-s", "0", "--out", str(tmp_path / "b.json")])
    contenders = res["inference"]["contenders"]
    assert "skipped" in contenders["bertkit + compile, arrival order"]["error"]
    assert contenders["bertkit, arrival order"]["real_tokens_per_s"] > 0


def test_profile_smoke_prices_every_contender_and_ablation(tmp_path):
    from bench import gpu_profile
    res = gpu_profile.main(["--smoke", "--steps", "1", "--tuned", "--all-ablations", "--out", str(tmp_path / "p.json")])
    assert set(res["contenders"]) == {"bertkit", "bertkit + compile", "transformers"}
    for r in res["contenders"].values():
        assert r["kernel_ms_per_step"] == pytest.approx(sum(r["by_kind_ms"].values()))  # by construction; and:
        assert r["kernel_ms_per_step"] > 0 and all(ms >= 0 for ms in r["by_kind_ms"].values())
        assert sum(k["ms_per_step"] for k in r["top_kernels"]) <= r["kernel_ms_per_step"] + 1e-9
        assert r["wall_ms_per_step"] > 0 and r["top_kernels"]
    eager = {k["name"] for k in res["contenders"]["bertkit"]["top_kernels"]}
    assert eager & {"aten::linear", "aten::addmm", "aten::mm"}   # the matrix products are among the heaviest
    assert set(res["ablations_ms_per_step"]) == {"bertkit eager", "no dropout", "forward + backward only", "compiled",
                                                 "eager, last layer on every row",
                                                 "compiled, last layer on every row",
                                                 "compiled, no attention dropout", "compiled, bf16 residual stream",
                                                 "compiled, eager embeddings", "compiled, MLM head too",
                                                 "compiled, layer by layer",
                                                 "compiled, CUDA graphs (4 batch shapes)",
                                                 "compiled, C++ wrapper", "compiled, clipping inside fused AdamW",
                                                 "compiled, C++ wrapper + clipping inside fused AdamW",
                                                 "compiled, coordinate-descent tuning", "compiled, max-autotune",
                                                 "compiled, attention as matmuls"}
    assert all(ms > 0 for ms in res["ablations_ms_per_step"].values())
    assert json.loads((tmp_path / "p.json").read_text())["seq"] == 32


def test_clipping_inside_fused_adamw_makes_the_same_update(monkeypatch):
    """bench/gpu.py's candidate step: the clipping's scale given to fused AdamW as its grad_scale gives the
    weights clip_grad_norm_ + AdamW gives, to fp32 rounding. The norm is above 1 at these steps, so the clipping
    acts: without it the weights land elsewhere."""
    from bertkit.config import BertConfig
    from bertkit.modeling import BertForPreTraining

    cfg = BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    batches = gpu.pretraining_batches(3, 16, 4, cfg.vocab_size, seed=0)

    def trained(candidate: bool):
        torch.manual_seed(0)
        model = BertForPreTraining(cfg)
        step = gpu.bertkit_step(model, torch.device("cpu"), torch.float32, False, lr=1e-3,
                                clip_in_optimizer=candidate)
        return model, [float(step(b)) for b in batches]

    (ours, ours_losses), (theirs, theirs_losses) = trained(False), trained(True)
    assert ours_losses == pytest.approx(theirs_losses, rel=1e-6)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    # the norm was above 1: the clipping was in force, not a no-op on both sides
    torch.manual_seed(0)
    model = BertForPreTraining(cfg)
    model(**batches[0]).loss.backward()
    assert float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])) > 1
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: None)
    unclipped, _ = trained(False)
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(unclipped.parameters(),
                                                                             ours.parameters()))


def test_a_failing_ablation_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    """A lever that fails on the machine (say, the C++ wrapper without a compiler) costs its own figure only."""
    import contextlib

    from bench import gpu_profile

    @contextlib.contextmanager
    def broken():
        raise RuntimeError("no C++ compiler\nsecond line")
        yield

    monkeypatch.setattr(gpu_profile, "mlm_head_compiled", broken)
    res = gpu_profile.main(["--smoke", "--steps", "1", "--no-contenders", "--ablation", "compiled, MLM head too",
                            "--ablation", "compiled", "--out", str(tmp_path / "p.json")])
    assert res["ablation_errors"] == {"compiled, MLM head too": "RuntimeError: no C++ compiler"}
    assert set(res["ablations_ms_per_step"]) == {"compiled"}


def test_the_cpp_wrappers_prerequisites_are_named_when_missing(monkeypatch, tmp_path):
    """Checked in a second before a compile: a missing C++ compiler and missing CUDA headers are named; without a
    toolkit, Triton's bundled headers stand in when it has them."""
    import shutil

    import torch.utils.cpp_extension as ext

    from bench import gpu_profile

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(ext, "CUDA_HOME", None)
    monkeypatch.setenv("CXX", "no-such-c++")
    fake_triton = tmp_path / "triton"
    monkeypatch.setitem(__import__("sys").modules, "triton", type("M", (), {"__file__": str(fake_triton / "x.py")}))
    with pytest.raises(RuntimeError, match=r"needs a C\+\+ compiler \(no-such-c\+\+\), .*CUDA's headers"):
        gpu_profile.cpp_wrapper_prerequisites()
    (fake_triton / "backends" / "nvidia" / "include").mkdir(parents=True)
    (fake_triton / "backends" / "nvidia" / "include" / "cuda.h").write_text("")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    gpu_profile.cpp_wrapper_prerequisites()   # Python.h is here (the venv's interpreter has its headers)
    assert ext.CUDA_HOME == str(fake_triton / "backends" / "nvidia")
    monkeypatch.delenv("CUDA_HOME", raising=False)


def test_a_failing_op_origins_pass_is_recorded_and_the_ablations_run(tmp_path, monkeypatch):
    from bench import gpu_profile

    def broken(*args, **kwargs):
        raise RuntimeError("!stack.empty() INTERNAL ASSERT FAILED\nmore")

    monkeypatch.setattr(gpu_profile, "origins_of", broken)
    res = gpu_profile.main(["--smoke", "--steps", "1", "--contender", "bertkit + compile", "--op-origins",
                            "aten::sum", "--ablation", "compiled", "--out", str(tmp_path / "p.json")])
    r = res["contenders"]["bertkit + compile"]
    assert r["op_origins_error"] == "RuntimeError: !stack.empty() INTERNAL ASSERT FAILED"
    assert r["wall_ms_per_step"] > 0 and set(res["ablations_ms_per_step"]) == {"compiled"}


def test_op_origins_names_the_caller_of_each_operator():
    """gpu_profile's --op-origins on a CPU trace: each aten::sum is counted under the Python frames (or the
    backward node) that ran it, per step."""
    from bench import gpu_profile

    lin = torch.nn.Linear(4, 4)

    def step(batch):
        lin(batch).sum().backward()          # the forward's sum, and addmm's backward sums the bias gradient

    res = gpu_profile.origins_of(step, [torch.randn(3, 4)], 2, torch.device("cpu"), {"aten::sum"})
    places = {o["from"]: o["calls_per_step"] for o in res["aten::sum"]}
    assert sum(places.values()) == 2.0
    assert any("step" in where for where in places)                    # the forward's, from `step`
    assert any("AddmmBackward0" in where for where in places)          # the bias gradient's


def test_profile_levers_change_what_compile_layers_compiles():
    """The ablation contexts patch the bench's compile_layers: as shipped the embeddings and the layer stack
    are compiled (and each layer, for checkpointing); "eager embeddings" leaves the embeddings' call
    uncompiled, "MLM head too" compiles the head that the forward calls, "layer by layer" compiles each
    layer but not the stack, and "CUDA graphs" passes mode="reduce-overhead" on."""
    import bench.gpu as bench_gpu
    from bench.gpu_profile import cuda_graphs_compiled, eager_embeddings, layer_by_layer_compiled, mlm_head_compiled
    from bertkit.modeling import BertForPreTraining
    from bertkit.modeling.bert import BertLayer

    def compiled(module):
        return module._compiled_call_impl is not None

    for context, stack, embeddings, head in ((contextlib.nullcontext, True, True, False),
                                             (eager_embeddings, True, False, False),
                                             (mlm_head_compiled, True, True, True),
                                             (layer_by_layer_compiled, False, True, False)):
        model = BertForPreTraining(gpu.make_config("tiny", 512))
        with context():
            bench_gpu.compile_layers(model, backend="eager")
        assert {compiled(m) for m in model.modules() if isinstance(m, BertLayer)} == {True}
        assert (compiled(model.bert.embeddings), compiled(model.cls.predictions)) == (embeddings, head)
        assert compiled(model.bert.encoder) == stack
    seen = []
    with cuda_graphs_compiled(), mock.patch("torch.nn.Module.compile", lambda self, **kw: seen.append(kw)):
        bench_gpu.compile_layers(BertForPreTraining(gpu.make_config("tiny", 512)), backend="eager")
    assert seen and all(kw["mode"] == "reduce-overhead" and kw["backend"] == "eager" for kw in seen)
    from bertkit.modeling import bert
    assert bench_gpu.compile_layers is bert.compile_layers   # each context restored it


def test_profile_runs_the_named_ablations_alone(tmp_path):
    from bench import gpu_profile
    res = gpu_profile.main(["--smoke", "--steps", "1", "--no-contenders", "--ablation", "forward + backward only",
                            "--ablation", "bertkit eager", "--profile-ablation", "forward + backward only",
                            "--out", str(tmp_path / "p.json")])
    # run in the order given (the list's own order is the other way round)
    assert res["contenders"] == {} and list(res["ablations_ms_per_step"]) == ["forward + backward only",
                                                                              "bertkit eager"]
    (profiled,) = json.loads((tmp_path / "p.json").read_text())["ablation_profiles"].values()
    assert profiled["wall_ms_per_step"] > 0 and profiled["top_kernels"]
    res = gpu_profile.main(["--smoke", "--steps", "1", "--no-ablations", "--contender", "bertkit",
                            "--out", str(tmp_path / "c.json")])
    assert set(res["contenders"]) == {"bertkit"}
    with pytest.raises(SystemExit, match="--contender: no contender 'bertkit \\+ compile' with these flags"):
        gpu_profile.main(["--smoke", "--no-compile", "--contender", "bertkit + compile",
                          "--out", str(tmp_path / "d.json")])
    with pytest.raises(SystemExit, match="--profile-ablation: 'compiled' is not among the ablations to run"):
        gpu_profile.main(["--smoke", "--no-compile", "--profile-ablation", "compiled",
                          "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()   # stopped before profiling anything
    with pytest.raises(SystemExit, match="--ablation: no ablation 'compiled' with these flags; there are "
                                         "'bertkit eager', 'forward \\+ backward only'"):
        gpu_profile.main(["--smoke", "--no-compile", "--ablation", "compiled", "--out", str(tmp_path / "q.json")])
    assert not (tmp_path / "q.json").exists()


def test_profile_other_shapes_without_ablations(tmp_path):
    from bench import gpu_profile
    res = gpu_profile.main(["--smoke", "--steps", "1", "--seq", "16", "--batch", "3", "--no-compile",
                            "--no-ablations", "--out", str(tmp_path / "p.json")])
    saved = json.loads((tmp_path / "p.json").read_text())
    assert (saved["seq"], saved["batch"]) == (16, 3) and saved["ablations_ms_per_step"] == {}
    assert set(res["contenders"]) == {"bertkit", "transformers"}


@pytest.mark.parametrize("name, kind", [
    ("nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_splitK_NTN", "GEMM"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_bf16_256x128_64x3_tn_align2>", "GEMM"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<...>", "attention"),
    ("triton_per_fused_add_native_dropout_native_layer_norm_native_layer_norm_backward_9", "layer norm"),
    ("triton_poi_fused_gelu_gelu_backward_4", "fused (Triton)"),
    ("void at::native::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata>", "optimizer"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::GeluCUDAKernelImpl>", "elementwise"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, false>(int, float",
     "layer norm"),
    ("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernelTemplate<float, float, 32u>", "layer norm"),
    ("void at::native::multi_tensor_apply_kernel<TensorListMetadata<1>, at::native::LpNormFunctor<float>>",
     "optimizer"),
    ("void at::native::unrolled_elementwise_kernel<at::native::CUDAFunctor_add<float>, memory::StoreWithCast<1>>",
     "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda>", "copy / cast"),
])
def test_profile_sorts_kernels_by_kind(name, kind):
    from bench.gpu_profile import kind_of
    assert kind_of(name) == kind


def test_bf16_residual_what_if_changes_the_stream_dtype_only_inside_its_context():
    from bench.gpu_profile import bf16_residual_stream
    from bertkit.config import BertConfig
    from bertkit.modeling import BertModel
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=20, max_position_embeddings=16)).eval()
    ids = torch.randint(5, 50, (2, 7))

    def out_dtype():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(ids).last_hidden_state.dtype
    assert out_dtype() == torch.float32          # bertkit, like transformers: LayerNorm's fp32 under autocast
    with bf16_residual_stream():
        assert out_dtype() == torch.bfloat16
    assert out_dtype() == torch.float32


def test_attention_as_matmuls_computes_what_the_model_does_and_only_inside_its_context():
    """The lever's attention on the padded grid gives the packed path's outputs and gradients (fp32, no
    dropout), keeps the last layer's selection on the original path, and is undone after the block."""
    from bench.gpu_profile import attention_as_matmuls
    from bertkit.config import BertConfig
    from bertkit.modeling import BertForPreTraining, packing
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=20, max_position_embeddings=16)).eval()
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] * 7 + [0] * 2])

    def run():
        model.zero_grad()
        out = model.bert(ids, attention_mask=mask).last_hidden_state
        (out * mask[..., None]).square().sum().backward()
        return out.detach(), model.bert.encoder.layer[0].attention.self.query.weight.grad.clone()
    original = packing.attention
    want, want_grad = run()
    with attention_as_matmuls(), mock.patch.object(packing, "_attention_runs", wraps=packing._attention_runs) as runs:
        got, got_grad = run()
    assert runs.call_count == 0   # the packed path's dense calls were not made: the lever's matrix products were
    assert packing.attention is original
    assert (got - want).abs().max() < 1e-5 and (got_grad - want_grad).abs().max() < 1e-5


def test_idle_report_charges_each_device_gap_to_the_operator_that_launched_after_it():
    from bench.gpu_profile import idle_report

    def x(cat, name, ts, dur, corr=None, tid=1):
        e = {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid}
        if corr is not None:
            e["args"] = {"correlation": corr}
        return e
    trace = {"traceEvents": [
        x("cpu_op", "aten::linear", 0, 100), x("cpu_op", "aten::gelu", 85, 10),
        x("cuda_runtime", "cudaLaunchKernel", 10, 5, 1), x("cuda_runtime", "cudaLaunchKernel", 90, 2, 2),
        x("cpu_op", "aten::add", 104, 2), x("cuda_runtime", "cudaLaunchKernel", 105, 1, 3),
        x("cpu_op", "aten::copy_", 200, 60), x("cuda_runtime", "cudaStreamSynchronize", 210, 30),
        x("kernel", "gemm", 20, 30, 1, tid=7),       # busy 20-50
        x("kernel", "gelu", 100, 10, 2, tid=7),      # gap 50 after the gemm: launched at 90, after 50: host late
        x("kernel", "add", 150, 10, 3, tid=7),       # gap 40: launched at 105, before the device went idle at 110
        x("kernel", "overlapping", 152, 3, None, tid=8),
    ]}
    r = idle_report(trace, steps=2)
    assert r["gap_ms_per_step"] == pytest.approx((50 + 40) / 1000 / 2)
    assert r["busy_ms_per_step"] == pytest.approx((30 + 10 + 10) / 1000 / 2)   # the overlapping kernel once
    assert r["host_late_ms_per_step"] == pytest.approx(50 / 1000 / 2)
    gaps = {g["before"]: g["ms_per_step"] for g in r["largest_gaps"]}
    assert gaps == pytest.approx({"host late: aten::gelu": 0.025, "waiting: aten::add": 0.02})
    assert r["blocking_calls_ms_per_step"] == pytest.approx({"cudaStreamSynchronize": 0.015})

    from bench.gpu_profile import host_report
    h = host_report(trace, steps=2)
    selfs = {o["name"]: o["ms_per_step"] * 2000 for o in h["top_self_ms"]}   # back to microseconds in all
    # linear holds a launch and gelu (which holds a launch); copy_ holds the synchronisation; kernels are not host
    assert selfs == pytest.approx({"aten::linear": 85, "aten::gelu": 8, "cudaLaunchKernel": 8, "aten::add": 1,
                                   "aten::copy_": 30, "cudaStreamSynchronize": 30})
    assert {o["name"]: o["calls_per_step"] for o in h["top_self_ms"]}["cudaLaunchKernel"] == 1.5
    assert h["threads_busy_ms_per_step"] == pytest.approx([(100 + 2 + 60) / 1000 / 2])


def test_graphed_encoder_buckets_compute_what_the_model_does():
    """The CUDA-graph what-if pads the packed tokens to a bucket and adds a dummy sequence over the
    padding rows; off CUDA the same bucketed computation runs eagerly and must equal the model's forward."""
    from bench.graphed_encoder import GraphedEncoder
    from bertkit.config import BertConfig
    from bertkit.modeling import BertModel
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=24, max_position_embeddings=32), add_pooling_layer=False).eval()
    enc = GraphedEncoder(model, granule=8, max_batch=4)
    assert not enc.use_graphs
    g = torch.Generator().manual_seed(1)
    for lengths in ([5, 9, 9, 3], [8, 8], [1], [32, 31, 2]):   # 26 tokens -> 32; 16 -> 16 (no dummy); ...
        mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
        ids = torch.randint(1, 60, mask.shape, generator=g) * mask
        with torch.no_grad():
            expected = model(ids, mask).last_hidden_state
        got = enc(ids, mask)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert (got[mask == 0] == 0).all()
    plan, padded, inputs = enc._inputs(ids, mask)
    assert padded == 72 and inputs["ids"].shape == (72,) and inputs["cu_seqlens"].tolist() == [0, 32, 63, 65, 72, 72]
    with pytest.raises(ValueError, match="max_batch=4"):
        enc(torch.ones(5, 3, dtype=torch.long), torch.ones(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="granule"):
        GraphedEncoder(model, granule=64)


def test_the_cudnn_attention_contender_runs_only_when_named_and_fails_in_one_line_off_cuda(tmp_path):
    """"bertkit cuDNN attention + compile" is opt-in; on the CPU (no cuDNN kernel) it is reported as failed in
    one line, and the contenders named with it still run."""
    res = gpu.main(["--smoke", "--only", "pretrain", "--contenders", "bertkit + compile",
                    "bertkit cuDNN attention + compile", "--out", str(tmp_path / "r.json")])
    seq, batch = gpu.SMOKE["pretrain"][0]
    contenders = res[f"pretrain_{seq}x{batch}"]["contenders"]
    assert set(contenders) == {"bertkit + compile", "bertkit cuDNN attention + compile"}
    assert contenders["bertkit + compile"]["sequences_per_s"] > 0
    error = contenders["bertkit cuDNN attention + compile"]["error"]
    assert error.startswith("NotImplementedError: Could not run 'aten::_cudnn_attention_forward'")
    assert gpu.P._varlen_kernel is gpu.cudnn_attention.ORIGINAL   # the shipped kernel again


def test_contenders_option_runs_only_the_named(tmp_path):
    res = gpu.main(["--smoke", "--only", "pretrain", "--no-compile", "--contenders", "bertkit",
                    "--out", str(tmp_path / "g.json")])
    for seq, batch in gpu.SMOKE["pretrain"]:
        assert set(res[f"pretrain_{seq}x{batch}"]["contenders"]) == {"bertkit"}
    assert res["failed"] == [] and "inference" not in res


def test_a_contender_too_slow_after_its_warm_up_is_reported_not_timed(tmp_path):
    """One broken contender must not eat a GPU session: past --max-step-s its error is recorded and the run
    goes on (here every step is too slow for the limit)."""
    res = gpu.main(["--smoke", "--only", "pretrain", "inference", "--no-compile", "--contenders", "bertkit",
                    "bertkit, arrival order", "--max-step-s", "1e-6", "--out", str(tmp_path / "g.json")])
    for seq, batch in gpu.SMOKE["pretrain"]:
        error = res[f"pretrain_{seq}x{batch}"]["contenders"]["bertkit"]["error"]
        assert error.startswith("TooSlow: a training step took ") and "(limit 1e-06 s): not timed" in error
    assert res["inference"]["contenders"]["bertkit, arrival order"]["error"].startswith("TooSlow: a batch took ")
    from bench import gpu_profile
    prof = gpu_profile.main(["--smoke", "--steps", "1", "--no-compile", "--max-step-s", "1e-6",
                             "--out", str(tmp_path / "p.json")])
    assert prof["ablations_ms_per_step"] == {}
    assert set(prof["ablation_errors"]) == {"bertkit eager", "forward + backward only"}


def test_session_script_calls_each_bench_with_flags_they_accept(tmp_path):
    """bench/gpu_session.sh, run with a recording stand-in for `python` (and `nvidia-smi`): the benches in
    order, each command line accepted by that bench's own parser, every output under $OUT, in both the real
    and the SMOKE mode; the benches share one fresh compile cache outside $OUT, removed at the end."""
    import os
    import shlex
    import subprocess
    from pathlib import Path

    from bench import gpu_cli_check, gpu_profile

    repo = Path(__file__).resolve().parents[1]
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.txt"
    for name in ("python", "nvidia-smi"):
        (fake / name).write_text(f'#!/bin/bash\ncase "$1" in bench/*|-m) ;; *) exit 0;; esac\n'   # the benches, pytest
                                 f'printf "%q " "$0" "$@" >> {shlex.quote(str(log))}\n'
                                 f'printf "%q\\n" "$TORCHINDUCTOR_CACHE_DIR" >> {shlex.quote(str(log))}\n')
        (fake / name).chmod(0o755)
    parsers = {"bench/gpu.py": gpu.build_parser(), "bench/gpu_profile.py": gpu_profile.build_parser(),
               "bench/gpu_cli_check.py": gpu_cli_check.build_parser()}
    for smoke in ("0", "1"):
        log.write_text("")
        out = tmp_path / f"out{smoke}"
        env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "OUT": str(out), "SMOKE": smoke}
        subprocess.run(["bash", str(repo / "bench" / "gpu_session.sh")], env=env, check=True,
                       capture_output=True, text=True)
        lines = [shlex.split(line) for line in log.read_text().splitlines() if line.split()[0].endswith("python")]
        calls = [c[1:-1] for c in lines if c[1].startswith("bench/")]  # the last word: the compile cache
        caches = [c[-1] for c in lines if c[1].startswith("bench/")]
        scripts = [c[0] for c in calls]
        assert scripts == ["bench/gpu.py", "bench/gpu_profile.py", "bench/gpu_profile.py", "bench/gpu_cli_check.py"]
        tests = [c[1:-1] for c in lines if c[1] == "-m"]   # the GPU-only tests, before the CLI check
        assert tests == [["-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-rs",
                          "tests/test_cuda.py"]]
        assert [c[1] for c in lines].index("-m") == 3
        args = [parsers[c[0]].parse_args(c[1:]) for c in calls]   # SystemExit on a flag the bench lacks
        for a in args:
            assert Path(a.out).parent == out and a.smoke == (smoke == "1")
        race, long, short = args[:3]
        assert race.only is None and race.contenders is None and race.budget_s == 300
        assert (long.seq, long.batch) == ((48, 3) if smoke == "1" else (512, 32))
        assert long.contenders and long.only_contenders == ["bertkit + compile"]
        assert long.op_origins == ["aten::sum", "aten::copy_", "aten::fill_"]
        levers = ["compiled", "compiled, clipping inside fused AdamW", "compiled, C++ wrapper"]
        both = "compiled, C++ wrapper + clipping inside fused AdamW"
        assert long.only_ablations == levers + [both] and not long.profile_ablations
        matmuls = "compiled, attention as matmuls"   # kernel-bound 128 x 256: no C++ wrapper, attention profiled
        assert (short.seq, short.batch) == (None, None) and not short.contenders
        assert short.only_ablations == ["compiled", matmuls]
        assert short.profile_ablations == [matmuls]
        # each ablation's name is one gpu_profile has (it stops before any GPU time on an unknown one)
        names = gpu_profile.main.__code__.co_consts
        assert all(any(lever == c for c in names if isinstance(c, str)) for lever in levers + [both, matmuls])
        # the device tool returns 8 files per call: one JSON per bench run, and the script's own two
        assert sorted(f.name for f in out.iterdir()) == ["machine.txt", "session.log"]
        assert len(calls) + 2 <= 8
        cache = caches[0]   # one fresh cache for all, removed at the end, outside $OUT
        assert caches == [cache] * len(calls)
        assert not Path(cache).exists() and out not in Path(cache).parents
        assert (out / "machine.txt").is_file()


def test_cli_check_smoke_compares_two_predict_runs(tmp_path):
    """bench/gpu_cli_check.py --smoke: `bertkit predict` twice through the command line (fp32, then bf16
    autocast, both on the CPU here): the labels of a random classifier agree, the scores within bf16 rounding."""
    from bench import gpu_cli_check

    result = gpu_cli_check.main(["--smoke", "--out", str(tmp_path / "cli.json")])
    assert result["texts"] == 512 and result["second_run"] == "--device cpu --precision bf16"
    assert result["label_agreement"] >= 0.99 and 0 < result["max_score_diff"] < 0.02
    assert json.loads((tmp_path / "cli.json").read_text()) == result


def test_trainer_race_smoke(tmp_path, capsys):
    """bench/gpu_trainer_prefetch.py --smoke: the Trainer with the prefetch thread and inline, and the bench's
    own loop, alternating; prefetching changes when a batch is prepared, not what is trained."""
    from bench import gpu_trainer_prefetch
    out = tmp_path / "p.json"
    res = gpu_trainer_prefetch.main(["--smoke", "--no-compile", "--with-loop", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    names = ["bench loop", "Trainer, prefetch 2, log every 1", "Trainer, prefetch 0, log every 1"]
    assert [(r["round"], r["variant"]) for r in res["runs"]] == [(i, n) for i in range(2) for n in names]
    assert all(r["sequences_per_s"] > 0 and torch.isfinite(torch.tensor(r["last_loss"])) for r in res["runs"])
    trainer = [r for r in res["runs"] if r["variant"] != "bench loop"]
    assert len({r["last_loss"] for r in trainer}) == 1
    for r in trainer:   # one window per log line after the warm-up's; equal windows average to the step
        assert len(r["window_step_ms"]) == gpu.SMOKE["steps"] // gpu.SMOKE["warmup"]
        assert sum(r["window_step_ms"]) / len(r["window_step_ms"]) == pytest.approx(r["step_ms"])
    assert re.search(r"^Trainer, prefetch 0, log every 1: ms/step \d", capsys.readouterr().out, re.M)


def test_trainer_race_logs_as_often_as_asked(tmp_path):
    """--log-every: each interval is also the warm-up, and the timed steps are --steps rounded up to it."""
    from bench import gpu_trainer_prefetch
    res = gpu_trainer_prefetch.main(["--smoke", "--no-compile", "--rounds", "1", "--prefetch", "0",
                                     "--log-every", "1", "3", "--out", str(tmp_path / "p.json")])
    assert [(r["log_every"], len(r["window_step_ms"])) for r in res["runs"]] == [(1, 2), (3, 1)]


def test_trainer_race_counts_ops(tmp_path, capsys):
    """--count-ops: a Trainer step that does not log runs the bench loop's operations and only the window's
    bookkeeping besides (casts and sums of the step's losses and gradient norm, the CPU batch's counts)."""
    from bench import gpu_trainer_prefetch
    res = gpu_trainer_prefetch.main(["--count-ops", "--smoke", "--out", str(tmp_path / "ops.json")])
    assert json.loads((tmp_path / "ops.json").read_text()) == res
    assert res["layers"] == 2 and res["extra_in_loop"] == {}
    extra = res["extra_in_trainer"]
    assert set(extra) <= {"aten.detach.default", "aten._to_copy.default", "aten.add.Tensor", "aten.lift_fresh.default",
                          "aten.sum.default", "aten._local_scalar_dense.default"}, extra
    # 21 in session 20; isolating the random streams on every step (up to session 19) took 3 more
    assert res["trainer_plain_ops"] == res["loop_ops"] + sum(extra.values()) and sum(extra.values()) <= 21
    assert all(n > res["trainer_plain_ops"] for n in res["trainer_log_ops"])
    assert "only in the Trainer's step: {'aten." in capsys.readouterr().out


def test_probe_summarizes_the_generated_calls_per_compile(tmp_path, capsys):
    """bench/probe_bias_grad.py --summarize: the extern and ATen calls of each compile's generated code, and
    the source nodes of its aten.sum calls; Triton kernel sources and comments are not calls."""
    from bench import probe_bias_grad

    tag = "V1128 graph.py:2722] [0/0] [__output_code]"
    log = tmp_path / "code.log"
    log.write_text("\n".join([
        "=== addmm (shipped)",
        f"{tag}         # Topologically Sorted Source Nodes: [sum_3], Original ATen: [aten.sum]",
        f"{tag}         buf7 = aten.sum.dim_IntList(buf6, [0])",
        f"{tag}         # Topologically Sorted Source Nodes: [sum_3], Original ATen: [aten.sum]",
        f"{tag}         buf9 = aten.sum.dim_IntList(buf8, [0])",
        f"{tag}         extern_kernels.mm(buf6, permute_2, out=buf7)",
        f"{tag}     tmp0 = tl.sum(x, 1)",
        "=== matmul + bias add",
        f"{tag}         extern_kernels.mm(buf1, buf2, out=buf3)",
        f"{tag}         extern_kernels.mm(buf1, buf2, out=buf4)",
    ]) + "\n")
    probe_bias_grad.main(["--summarize", str(log)])
    assert capsys.readouterr().out.splitlines() == [
        "--- addmm (shipped): aten.sum.dim_IntList x2, extern_kernels.mm x1",
        "    sum x2 from [sum_3], Original ATen: [aten.sum]",
        "--- matmul + bias add: extern_kernels.mm x2"]


def test_probe_smoke_times_both_ways_of_writing_a_linear(capsys):
    from bench import probe_bias_grad

    probe_bias_grad.main(["--smoke"])
    out = capsys.readouterr().out
    assert "round 0 addmm (shipped)" in out and "round 0 matmul + bias add" in out
    import torch.nn.functional as F
    assert F.linear is probe_bias_grad._linear   # restored


def test_attention_probe_smoke_records_each_variant(tmp_path, capsys):
    """bench/probe_attention.py --smoke: every variant at every dropout gets a time or its one-line reason (the
    fused kernels have no CPU implementation), the ops' schemas and kernels are listed, and the JSON is what
    main returns; the lengths are bench/gpu.py's first pre-training batch's."""
    from bench import probe_attention

    res = probe_attention.main(["--smoke", "--out", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == res
    assert "Autograd" in res["ops"]["_cudnn_attention_forward"]["kernels"]
    (shape,) = res["shapes"]
    lengths = probe_attention.pretraining_lengths(16, 3)
    assert shape["tokens"] == sum(lengths) and max(lengths) == 16
    names = ["flash varlen (shipped)", "cudnn varlen", "padded sdpa, cudnn"]
    for p in (0.1, 0.0):
        for name in names:
            value = shape[f"{name}, dropout {p}"]
            assert (isinstance(value, float) and value > 0) or (isinstance(value, str) and "\n" not in value)
    assert "NotImplementedError" in shape["cudnn varlen, dropout 0.1"]
    assert "cudnn vs flash, no dropout:" in capsys.readouterr().out


def test_attention_probe_pads_as_transformers_does():
    """The padded variants see the packed sequences at their rows, zeros after, and a mask of the real keys:
    padded SDPA (math on the CPU) then equals each sequence's own attention."""
    import torch.nn.functional as F

    from bench import probe_attention
    lengths = [5, 3, 5]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), probe_attention.HEADS, probe_attention.HEAD_DIM, generator=g)
               for _ in range(3))
    pq, pk, pv, mask = probe_attention.padded_inputs(q, k, v, lengths)
    assert pq.shape == (3, probe_attention.HEADS, 5, probe_attention.HEAD_DIM) and pq.requires_grad
    assert mask[:, 0, 0].tolist() == [[True] * 5, [True] * 3 + [False] * 2, [True] * 5]
    out = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=mask)
    start = 0
    for i, n in enumerate(lengths):
        one = F.scaled_dot_product_attention(*(x[start:start + n].transpose(0, 1) for x in (q, k, v)))
        torch.testing.assert_close(out[i, :, :n], one)
        start += n
    assert probe_attention.padded_inputs(q[:10], k[:10], v[:10], [5, 5])[3] is None
