"""bench/cudnn_attention.py on the CPU: the custom ops' fake kernels, autograd and the swap into bertkit's
attention, with a reference of the ATen ops' contract standing in for cuDNN (which has no CPU kernel)."""
import pytest
import torch
import torch.nn.functional as F

from bench import cudnn_attention as C
from bertkit.config import BertConfig
from bertkit.modeling import BertForPreTraining
from bertkit.modeling import packing as P
from bertkit.modeling.bert import compile_layers

pytestmark = pytest.mark.usefixtures("one_thread")


def _per_sequence(q, k, v, cu_q, cu_k=None):
    """Each packed sequence's own attention: (tokens, heads, dim) in and out, lse (tokens, heads, 1)."""
    cu_k = cu_q if cu_k is None else cu_k
    outs, lses = [], []
    for a, b, c, d in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        qs = q[a:b].transpose(0, 1)                                             # (heads, queries, dim)
        ks, vs = (x[c:d].transpose(0, 1) for x in (k, v))                       # (heads, keys, dim)
        scores = qs @ ks.transpose(1, 2) / qs.shape[-1] ** 0.5                  # (heads, queries, keys)
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))                  # (n, heads, dim)
        lses.append(scores.logsumexp(-1).transpose(0, 1)[..., None].float())    # (n, heads, 1)
    return torch.cat(outs), torch.cat(lses)


def reference_forward(q, k, v, bias, cu_q, cu_k, max_q, max_k, lse, p, causal, debug, *, scale=None):
    """The op's contract without its dropout (only install's layout call asks for dropout): seed and offset
    tensors with dropout, none without (the wrapper makes them empty)."""
    assert bias is None and not causal
    out, logsumexp = _per_sequence(q, k, v, cu_q, cu_k)
    seed, offset = (torch.zeros(2, dtype=torch.long), torch.zeros((), dtype=torch.long)) if p else (None, None)
    return out, logsumexp, cu_q, cu_k, max_q, max_k, seed, offset, torch.empty(0)


def reference_backward(grad, q, k, v, out, lse, seed, offset, bias, cu_q, cu_k, max_q, max_k, p, causal):
    """Attention's gradients written out (a custom op's body runs below autograd)."""
    assert bias is None and p == 0.0 and seed.numel() == 0
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    scale = q.shape[-1] ** -0.5
    for a, b, c, d in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        qs, go = q[a:b].transpose(0, 1), grad[a:b].transpose(0, 1)             # (heads, queries, dim)
        ks, vs = (x[c:d].transpose(0, 1) for x in (k, v))                       # (heads, keys, dim)
        probs = (qs @ ks.transpose(1, 2) * scale).softmax(-1)                   # (heads, queries, keys)
        dprobs = go @ vs.transpose(1, 2)                                         # (heads, queries, keys)
        dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdim=True)) * scale
        dq[a:b] += (dscores @ ks).transpose(0, 1)
        dk[c:d] += (dscores.transpose(1, 2) @ qs).transpose(0, 1)
        dv[c:d] += (probs.transpose(1, 2) @ go).transpose(0, 1)
    return dq, dk, dv


@pytest.fixture
def cpu_cudnn(monkeypatch):
    monkeypatch.setattr(C, "FORWARD", reference_forward)
    monkeypatch.setattr(C, "BACKWARD", reference_backward)
    monkeypatch.setattr(C, "ORIGINAL", lambda q, k, v, cu_q, cu_k, mq, mk, p: _per_sequence(q, k, v, cu_q, cu_k)[0])
    monkeypatch.setattr(C, "_LAYOUT", {})


def test_install_records_the_ops_layout(cpu_cudnn):
    C.install("cpu", torch.float32)
    assert C._LAYOUT[True] == {"lse": ("T", "H", 1), "seed": ((2,), torch.int64, True),
                               "offset": ((), torch.int64, True)}
    q = torch.empty(40, 12, 64, device="meta")
    out, lse, seed, offset = C._fwd_fake(q, q, q, None, None, 9, 9, 0.1)
    assert out.shape == (40, 12, 64) and lse.shape == (40, 12, 1) and lse.dtype == torch.float32
    assert seed.shape == (2,) and offset.shape == ()
    assert C._LAYOUT[False]["seed"] == ((0,), torch.int64, True)   # none without dropout: empty stand-ins


def test_fake_kernels_refuse_to_trace_before_install(cpu_cudnn):
    q = torch.empty(4, 12, 64, device="meta")
    with pytest.raises(RuntimeError, match=r"install\(\) must run"):
        C._fwd_fake(q, q, q, None, None, 4, 4, 0.0)


@pytest.mark.parametrize("compiled", [None, "aot_eager", "inductor"])
def test_varlen_output_and_gradients_equal_per_sequence_attention(cpu_cudnn, compiled):
    """Eager and traced (aot_eager: the fake kernels and the autograd formula): the custom ops give each
    sequence's own attention and its gradients, from q/k/v that are views of one projection."""
    C.install("cpu", torch.float32)
    lengths = [7, 3, 11]
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(sum(lengths), 3, 12, 64, generator=g)                     # (tokens, 3, heads, dim)
    w = torch.randn(sum(lengths), 12, 64, generator=g)

    def loss(kernel, x):
        return (kernel(*x.unbind(1), cu, cu, max(lengths), max(lengths), 0.0) * w).sum()

    got_leaf, want_leaf = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    run = torch.compile(loss, backend=compiled, fullgraph=True) if compiled else loss
    got = run(C.varlen, got_leaf)
    want = loss(lambda q, k, v, cq, ck, mq, mk, p: _per_sequence(q, k, v, cq)[0], want_leaf)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_leaf.grad, want_leaf.grad)


def test_installed_swaps_bertkit_attention_and_restores_it(cpu_cudnn, monkeypatch):
    """A tiny pre-training model, its layer stack compiled (aot_eager), with bertkit's varlen call forced on
    the CPU: inside the block it runs through the custom ops and trains as the shipped path's reference does;
    after it, packing's kernel is the shipped one again. A disagreeing kernel is refused."""
    monkeypatch.setattr(P, "use_varlen", lambda device_type, dtype, need_weights: not need_weights)
    cfg = BertConfig(vocab_size=64, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    ids = torch.randint(5, 64, (3, 10), generator=torch.Generator().manual_seed(0)) * mask
    calls = []
    forward = C.FORWARD
    monkeypatch.setattr(C, "FORWARD", lambda *a, **k: calls.append(a[0].shape) or forward(*a, **k))

    def grads(model):
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100),
                    next_sentence_label=torch.tensor([0, 1, 0]))
        out.loss.backward()
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    shipped = C.ORIGINAL    # the per-sequence reference, as FlashAttention's stand-in
    monkeypatch.setattr(P, "_varlen_kernel", shipped)
    torch.manual_seed(0)
    want_loss, want = grads(BertForPreTraining(cfg))
    torch.manual_seed(0)
    model = BertForPreTraining(cfg)
    compile_layers(model, backend="aot_eager")
    with C.installed("cpu", torch.float32) as agreement:
        assert P._varlen_kernel is C.varlen and agreement["out"] < 1e-5
        got_loss, got = grads(model)
    assert P._varlen_kernel is shipped
    # install's two layout calls and the agreement check, then one call per layer: (tokens, heads, head_dim)
    assert calls[3:] == [(26, 2, 12)] * cfg.num_hidden_layers
    torch.testing.assert_close(got_loss, want_loss)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)

    monkeypatch.setattr(C, "ORIGINAL", lambda q, k, v, *rest: F.dropout(_per_sequence(q, k, v, rest[0])[0], 0.5))
    with pytest.raises(RuntimeError, match="disagrees with FlashAttention"):
        with C.installed("cpu", torch.float32):
            pass
    assert P._varlen_kernel is shipped
