"""The GPU fast path of the trainer, checked on the CPU: torch.compile, the prefetch thread, counts from the
CPU batch, and the pre-training objective's CPU-side `prepare`."""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from bertkit.modeling import BertForPreTraining
from bertkit.modeling import packing as P
from bertkit.modeling.bert import BertLayer
from bertkit.tasks.pretrain_objective import PreTrainingObjective
from bertkit.train import TrainConfig, Trainer, read_metrics
from bertkit.train.trainer import Prefetcher, _as_number

from .tiny import TinySource, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 5


def _train(out, steps=STEPS, dropout=0.0, **cfg_kw):
    torch.manual_seed(1234)
    model = BertForPreTraining(tiny_config(dropout=dropout))
    source = TinySource(4, seed=7)
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, seed=11,
                      output_dir=str(out), tensorboard=False, progress=False, **cfg_kw)
    trainer = Trainer(PreTrainingObjective(model), model, source, cfg)
    trainer.train()
    assert (getattr(model.bert.encoder, "_compiled_call_impl", None) is not None) == cfg.compile
    losses = [m["loss"] for m in read_metrics(out) if m.get("split") == "train"]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, source


def test_compile_trains_like_eager(tmp_path):
    """compile=True (inductor, the embeddings and the layer stack) follows eager's losses: the same function,
    fused kernels."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on the CPU needs a C compiler")
    eager, w_eager, _ = _train(tmp_path / "eager")
    compiled, w_compiled, _ = _train(tmp_path / "compiled", compile=True)
    assert len(eager) == len(compiled) == STEPS
    assert eager[0] > eager[-1]  # it learns
    for a, b in zip(eager, compiled):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    assert max((w_eager[k] - w_compiled[k]).abs().max().item() for k in w_eager) < 1e-4
    # the checkpoint names are those of the plain model (nn.Module.compile, no _orig_mod prefix)
    assert set(w_compiled) == set(w_eager)


def test_prefetch_thread_gives_the_same_run_and_exact_data_position(tmp_path):
    plain, w_plain, src_plain = _train(tmp_path / "plain", prefetch=0, save_every=2, keep_last=5)
    pre, w_pre, src_pre = _train(tmp_path / "pre", prefetch=2, save_every=2, keep_last=5)
    assert pre == plain
    assert all(torch.equal(w_plain[k], w_pre[k]) for k in w_plain)
    assert src_pre.served[:STEPS] == list(range(STEPS))   # in order; the thread may have run ahead
    assert src_pre.state_dict() == src_plain.state_dict() == {"pos": STEPS}  # rewound after the run
    # checkpoints record the position after the last *consumed* batch, not the source's (ahead) position
    for step in (2, 4):
        a = torch.load(tmp_path / "plain" / f"step-{step:06d}" / "training_state.pt", weights_only=False)
        b = torch.load(tmp_path / "pre" / f"step-{step:06d}" / "training_state.pt", weights_only=False)
        assert a["data"] == b["data"] == [{"pos": step}]


def test_prefetcher_order_state_errors_and_close():
    position = {"n": 0}

    def source():
        for i in range(5):
            position["n"] = i + 1  # the source's own position moves as it yields
            yield i
        raise ValueError("source broke")

    pf = Prefetcher(source(), lambda x: x * 10, depth=2, state_fn=lambda: position["n"])
    got = [next(pf) for _ in range(5)]
    assert got == [(0, 1), (10, 2), (20, 3), (30, 4), (40, 5)]
    with pytest.raises(ValueError, match="source broke"):
        next(pf)
    endless = Prefetcher(iter(int, 1), lambda x: x, depth=1)  # iter(int, 1): zeros forever
    assert next(endless) == (0, None)
    endless.close()
    assert not endless._thread.is_alive()
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(iter([]), lambda x: x, depth=0)


def test_counts_must_come_from_the_cpu_batch():
    assert _as_number(torch.tensor(3)) == 3.0 and _as_number(7) == 7.0
    with pytest.raises(ValueError, match="CPU batch"):
        _as_number(torch.tensor(3, device="meta"))
    with pytest.raises(ValueError, match="prefetch"):
        TrainConfig(prefetch=-1)


def test_pretraining_prepare_equals_plain_forward():
    """`prepare` (the CPU-side packing plan and masked rows) changes nothing in the loss or counts."""
    torch.manual_seed(0)
    objective = PreTrainingObjective(BertForPreTraining(tiny_config(dropout=0.0))).eval()
    batch = next(TinySource(4, seed=3))
    prepared = objective.prepare(batch)
    assert isinstance(prepared["packing"], P.Packing)
    assert objective.counts(prepared) == objective.counts(batch)
    assert objective.counts(batch)["mlm"] == int((batch["labels"] != -100).sum())
    with torch.no_grad():
        (s1, t1), (s2, t2) = objective(batch), objective(prepared)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k])
    assert all(torch.equal(t1[k], t2[k]) for k in t1)


SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique",
            "aten._unique2", "aten.repeat_interleave")
# Indexing ops that sync only with a boolean mask among the indices (`x[keep]`: its nonzero runs inside
# the kernel, below the dispatch mode, so it must be recognised by its arguments).
MASK_INDEX_OPS = ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_")


def syncing_ops_in_main_thread(out, steps, build=None):
    """Ops that would make the host wait for a GPU (reading a value back, data-dependent shapes), seen in
    the training thread of a `steps`-step run that logs at its last step only. The CPU-side work runs in
    the prefetch thread (dispatch modes are per thread) and the optimizer is left out: on CUDA it is fused
    AdamW, sync-free, while the CPU AdamW reads its step count with .item(). `build()` -> (objective, batch
    source of 4-sequence batches), called after seeding: the run to watch (default: the tiny pre-training);
    the run writes under `out`."""
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if name.startswith(SYNC_OPS):
                seen.append(name)
            elif name in MASK_INDEX_OPS and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                                for i in args[1]):
                seen.append(f"{name} (boolean mask)")
            return func(*args, **(kwargs or {}))

    torch.manual_seed(1234)
    if build is None:
        objective, source = PreTrainingObjective(BertForPreTraining(tiny_config(dropout=0.1))), TinySource(4, seed=7)
    else:
        objective, source = build()
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-3, log_every=steps, seed=11, prefetch=2,
                      save_final=False, output_dir=str(out / f"s{steps}"), tensorboard=False, progress=False)
    trainer = Trainer(objective, objective.model, source, cfg)
    step = trainer.optimizer.step

    def unrecorded_step(*a, **kw):
        with _disable_current_modes():
            return step(*a, **kw)

    trainer.optimizer.step = unrecorded_step
    with Record():
        trainer.train()
    return seen


def test_training_steps_read_nothing_back_from_the_device(tmp_path):
    few = syncing_ops_in_main_thread(tmp_path, 2)
    many = syncing_ops_in_main_thread(tmp_path, 6)
    assert few == many               # only the one log step reads values back, however many steps run
    assert "aten.nonzero" not in many and "aten.masked_select" not in many


def test_pretrain_cli_compile_flag_reaches_the_job():
    from bertkit.cli import _job_args, build_parser
    from bertkit.tasks.pretrain import PretrainArgs

    assert _job_args(PretrainArgs, build_parser().parse_args(["pretrain", "--compile"])).compile is True
    assert _job_args(PretrainArgs, build_parser().parse_args(["pretrain"])).compile is False


def _recording_backend():
    """A torch.compile backend that runs each graph as traced and keeps it: (the graphs, the backend)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    return graphs, backend


def _graphs_on_the_varlen_path(monkeypatch, compile_model) -> tuple[list, set]:
    """Four pre-training steps of a model on the GPU path (varlen attention; meta tensors stand in for CUDA
    ones), the last on a batch of one, compiled by `compile_model(model, backend)`: the graphs the backend
    received and the batch shapes."""
    from bertkit.train.trainer import to_device

    monkeypatch.setattr(P, "use_varlen", lambda device_type, dtype, need_weights: device_type == "meta")
    graphs, backend = _recording_backend()
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(dropout=0.1)).to("meta", torch.bfloat16)
    compile_model(model, backend)
    objective = PreTrainingObjective(model)
    source = TinySource(4, seed=5)
    shapes = set()
    for size in (4, 4, 4, 1):
        cpu_batch = {k: v[:size] for k, v in next(source).items()}
        batch = to_device(objective.prepare(cpu_batch), torch.device("meta"))
        shapes.add((batch["packing"].indices.numel(), batch["packing"].max_seqlen,
                    batch["selection"].rows.numel(), batch["selection"].max_seqlen))
        sums, _ = objective(batch)
        (sums["mlm"] + sums["nsp"]).backward()
    torch._dynamo.reset()
    return graphs, shapes


def test_compiled_stack_is_one_graph_on_the_varlen_path(monkeypatch):
    """On the GPU path `compile_layers` gives two graphs: the embeddings, and the whole layer stack with the
    last layer on the selected rows (masked tokens and [CLS]). No graph break, and no recompile for batches
    of other token counts, selected counts and longest lengths (dynamic sizes, symbolic max_seqlen), a batch
    of one included."""
    from bertkit.modeling.bert import compile_layers

    graphs, shapes = _graphs_on_the_varlen_path(monkeypatch, lambda model, backend: compile_layers(model,
                                                                                                 backend=backend))
    assert len(shapes) == 4 and len({s[2] for s in shapes}) > 1
    assert len(graphs) == 2
    embedding_graphs = [g for g in graphs if any("word_embeddings" in str(n.target) or "word_embeddings" in n.name
                                                 for n in g.graph.nodes)]
    assert len(embedding_graphs) == 1
    stack = next(g for g in graphs if g not in embedding_graphs)
    attention_calls = [n for n in stack.graph.nodes if "_flash_attention_forward" in str(n.target)]
    assert len(attention_calls) == tiny_config().num_hidden_layers


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_stack_on_the_cpu_equals_eager(checkpointing):
    """On the CPU (per-run attention: a graph break in each layer) the compiled stack gives eager's loss and
    gradients, with gradient checkpointing too (the layers' `checkpoint` calls inside the compiled stack)."""
    from bertkit.modeling.bert import compile_layers

    torch.manual_seed(0)
    eager = BertForPreTraining(tiny_config(dropout=0.0))
    compiled = BertForPreTraining(tiny_config(dropout=0.0))
    compiled.load_state_dict(eager.state_dict())
    compile_layers(compiled, backend="aot_eager")
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    if checkpointing:
        eager.gradient_checkpointing_enable()
        compiled.gradient_checkpointing_enable()
    source = TinySource(3, seed=9)
    for _ in range(2):   # batches of other shapes: the dynamic graphs run again
        b = PreTrainingObjective.prepare(next(source))   # the training path: last layer on the selected rows
        losses = []
        for m in (eager, compiled):
            sums, _ = PreTrainingObjective(m)(b)
            losses.append(sums["mlm"] + sums["nsp"])
        assert losses[0] > 0
        torch.testing.assert_close(losses[1], losses[0])
        for m, loss in zip((eager, compiled), losses):
            m.zero_grad()
            loss.backward()
        for (name, a), c in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(c.grad, a.grad, msg=name)
    # the compiled model really ran compiled graphs (equal numbers alone would not tell)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before
    torch._dynamo.reset()


def test_compiled_inference_equals_eager():
    """compile_layers on a model in eval mode (inductor on the CPU): the same hidden states as eager for
    batches of different shapes, and checkpoint names unchanged."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on the CPU needs a C compiler")
    from bertkit.modeling import BertModel
    from bertkit.modeling.bert import compile_layers

    torch.manual_seed(0)
    eager = BertModel(tiny_config(dropout=0.0)).eval()
    compiled = BertModel(tiny_config(dropout=0.0)).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_layers(compiled)
    assert set(compiled.state_dict()) == set(eager.state_dict())
    source = TinySource(3, seed=9)
    with torch.inference_mode():
        for _ in range(3):
            b = next(source)
            a = eager(b["input_ids"], b["attention_mask"]).last_hidden_state
            c = compiled(b["input_ids"], b["attention_mask"]).last_hidden_state
            torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "train"])
def test_compiled_model_does_not_recompile_for_a_batch_of_one(mode):
    """A batch of one (no padding, one run of one length) after a padded batch of several lengths compiles no
    new graph. Two causes did: under inference_mode the packed ids of a batch without padding were a view of
    the caller's ids, not an inference tensor as a padded batch's are; and with one run the per-run attention
    (a graph break on the CPU) returned a view of SDPA's output, and compiled code guards on a view's base."""
    from bertkit.modeling import BertModel
    from bertkit.modeling.bert import compile_layers

    graphs, backend = _recording_backend()
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = BertModel(tiny_config(dropout=0.0)).train(mode == "train")
    model = BertModel(tiny_config(dropout=0.0)).train(mode == "train")
    model.load_state_dict(eager.state_dict())
    compile_layers(model, backend=backend)
    ids = torch.randint(5, 90, (3, 9))
    padded = (torch.arange(9)[None, :] < torch.tensor([9, 4, 6])[:, None]).long()   # (3, 9): three runs
    context = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "train": torch.enable_grad}[mode]
    with context():
        for i, (batch, mask) in enumerate([(ids, padded), (ids[:1], padded[:1]), (ids[1:], padded[1:])]):
            out = model(batch, mask, token_type_ids=torch.zeros_like(batch)).last_hidden_state
            if mode == "train":
                out.sum().backward()
            torch.testing.assert_close(out, eager(batch, mask).last_hidden_state)
            if i == 0:
                first = len(graphs)
    torch._dynamo.reset()
    assert first >= 1 and len(graphs) == first


def test_finetune_compile_flag_and_compiled_pipeline_equals_eager():
    """`--compile` reaches every fine-tuning job's arguments; `pipeline(..., compile=True)` compiles the layer
    stack and gives eager's embeddings."""
    from bertkit import BertTokenizer, pipeline
    from bertkit.cli import _job_args, build_parser
    from bertkit.modeling import BertModel
    from bertkit.tasks.finetune import FinetuneClassifyArgs

    argv = ["finetune", "classify", "--model", "m", "--train", "t.tsv", "--dev", "d.tsv", "--output", "o"]
    assert _job_args(FinetuneClassifyArgs, build_parser().parse_args(argv + ["--compile"])).compile is True
    assert _job_args(FinetuneClassifyArgs, build_parser().parse_args(argv)).compile is False
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on the CPU needs a C compiler")
    texts = ["the cat sat on the mat", "a dog ran", "the bird sang a long song in the tree"]
    tok = BertTokenizer.train_from_iterator(texts * 10, vocab_size=120)
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config(dropout=0.0), vocab_size=len(tok))
    model = BertModel(config).eval()
    eager = pipeline("feature-extraction", model=model, tokenizer=tok)(texts)
    compiled_model = BertModel(config)
    compiled_model.load_state_dict(model.state_dict())
    embed = pipeline("feature-extraction", model=compiled_model, tokenizer=tok, compile=True)
    assert compiled_model.encoder._compiled_call_impl is not None
    torch.testing.assert_close(torch.as_tensor(embed(texts)), torch.as_tensor(eager), atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(monkeypatch):
    """Dropout on: checkpointing replays the masks, so the gradients are those of the plain step, while
    each layer's forward runs twice (once more in the backward); eval and no_grad run it once."""
    cfg = tiny_config()
    assert cfg.hidden_dropout_prob > 0 and cfg.attention_probs_dropout_prob > 0
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).train()
    calls = []
    forward = BertLayer.forward  # counted by patching: the recompute does not pass through module hooks

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(BertLayer, "forward", counted)
    batch = next(iter(TinySource(4, seed=3)))
    objective = PreTrainingObjective(model)

    def grads(checkpointing: bool):
        (model.gradient_checkpointing_enable if checkpointing else model.gradient_checkpointing_disable)()
        model.zero_grad(set_to_none=True)
        calls.clear()
        torch.manual_seed(5)
        sums, _ = objective(objective.prepare(batch))
        (sums["mlm"] + sums["nsp"]).backward()
        return len(calls), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    n_plain, plain = grads(False)
    n_ckpt, ckpt = grads(True)
    assert model.is_gradient_checkpointing
    layers = cfg.num_hidden_layers
    assert (n_plain, n_ckpt) == (layers, 2 * layers)
    assert set(plain) == set(ckpt)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    calls.clear()
    with torch.no_grad():
        objective(objective.prepare(batch))
    model.eval()
    objective(objective.prepare(batch))
    assert len(calls) == 2 * layers   # one forward each time: nothing to recompute


def test_gradient_checkpointing_trains_like_the_plain_run(tmp_path):
    plain, w_plain, _ = _train(tmp_path / "plain", dropout=0.1)
    ckpt, w_ckpt, _ = _train(tmp_path / "ckpt", dropout=0.1, gradient_checkpointing=True)
    assert ckpt == pytest.approx(plain, rel=1e-5)
    assert max((w_plain[k] - w_ckpt[k]).abs().max().item() for k in w_plain) < 1e-5


def test_gradient_checkpointing_under_compile_replays_the_compiled_dropout(tmp_path):
    """Checkpointing wraps the compiled layers: the recompute replays the compiled kernels' dropout masks,
    so the run equals compile alone, step for step."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on the CPU needs a C compiler")
    compiled, w_compiled, _ = _train(tmp_path / "compiled", steps=3, dropout=0.1, compile=True)
    both, w_both, _ = _train(tmp_path / "both", steps=3, dropout=0.1, compile=True, gradient_checkpointing=True)
    assert both == pytest.approx(compiled, rel=1e-6)
    assert max((w_compiled[k] - w_both[k]).abs().max().item() for k in w_compiled) < 1e-6


def test_gradient_checkpointing_saves_only_layer_inputs_for_the_backward():
    """What the backward keeps (tensors saved by autograd, parameters aside): with checkpointing each
    layer's input instead of all its activations."""
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).train()
    objective = PreTrainingObjective(model)
    batch = objective.prepare(next(iter(TinySource(8, seed=3))))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes() -> int:
        seen: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            objective(batch)
        return sum(seen.values())
    plain = saved_bytes()
    model.gradient_checkpointing_enable()
    assert saved_bytes() < plain / 3
