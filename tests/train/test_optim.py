import copy
import numpy as np
import pytest
import torch
from torch import nn

from bertkit.modeling import BertForPreTraining
from bertkit.train.optim import Lamb, build_optimizer, global_grad_norm, linear_schedule, param_groups

from .tiny import PretrainObjective, TinySource, tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


def test_param_groups_no_decay_and_ties():
    model = BertForPreTraining(tiny_config())
    groups = param_groups(model, 0.01)
    by_name = {g["group_name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay"}
    assert by_name["decay"]["weight_decay"] == 0.01 and by_name["no_decay"]["weight_decay"] == 0.0
    decay, no_decay = by_name["decay"]["names"], by_name["no_decay"]["names"]
    # Every trainable tensor exactly once, ties included (decoder.weight is the word embeddings).
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    assert "bert.embeddings.word_embeddings.weight" in decay
    assert not any(n.endswith("decoder.weight") or n.endswith("decoder.bias") for n in decay + no_decay)
    assert sum(n.endswith("predictions.bias") for n in no_decay) == 1
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay)
    assert all(p.dim() == 1 for p in by_name["no_decay"]["params"])
    assert all(p.dim() == 2 for p in by_name["decay"]["params"])
    assert any("LayerNorm.weight" in n for n in no_decay)
    # Frozen parameters are left out.
    model.bert.pooler.dense.weight.requires_grad_(False)
    names = [n for g in param_groups(model, 0.01) for n in g["names"]]
    assert "bert.pooler.dense.weight" not in names


def test_linear_schedule_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = linear_schedule(opt, warmup_steps=4, total_steps=10)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == 0.0                      # warm-up starts at 0
    assert seen[2] == pytest.approx(1.0)       # half-way up
    assert seen[4] == pytest.approx(2.0)       # peak at the end of warm-up
    assert seen[7] == pytest.approx(1.0)       # half-way down
    assert seen[10] == 0.0 and seen[11] == 0.0  # zero at the end, never negative
    assert all(a <= b for a, b in zip(seen[:5], seen[1:5]))
    with pytest.raises(ValueError, match=r"warmup_steps \(11\) > total_steps \(10\)"):
        linear_schedule(opt, 11, 10)
    with pytest.raises(ValueError, match="total_steps >= 1, got 0 and 0"):
        linear_schedule(opt, 0, 0)


@pytest.mark.parametrize("warmup, total", [(4, 4), (0, 5), (3, 10), (1, 1), (0, 1)])
def test_linear_schedule_equals_transformers(warmup, total):
    """Every step's rate, past the end too, as `get_linear_schedule_with_warmup` (warm-up over all steps, or
    none, included)."""
    from transformers import get_linear_schedule_with_warmup

    rates = []
    for make in (linear_schedule, get_linear_schedule_with_warmup):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
        sched = make(opt, warmup, total)
        seen = []
        for _ in range(total + 3):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        rates.append(seen)
    assert rates[0] == rates[1]


def test_linear_schedule_refuses_a_negative_warmup():
    from bertkit.train.optim import linear_schedule

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"^linear_schedule: need warmup_steps >= 0 and total_steps >= 1, got -1 "
                                         r"and 10$"):
        linear_schedule(opt, -1, 10)


def test_global_grad_norm_is_the_norm_clipping_uses():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(2, 2))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert float(global_grad_norm([a, b])) == 5.0
    assert float(torch.nn.utils.clip_grad_norm_([a, b], 1e9)) == 5.0
    assert float(global_grad_norm([nn.Parameter(torch.ones(1))])) == 0.0  # no gradients yet


def test_global_grad_norm_of_half_precision_gradients_is_taken_in_float32():
    """Two float16 gradients of norm 6e4 each (below float16's max, 65504): the global norm 8.49e4 is above it,
    and comes back in float32 rather than as float16's inf."""
    from bertkit.train.optim import global_grad_norm

    a, b = nn.Parameter(torch.zeros(1, dtype=torch.float16)), nn.Parameter(torch.zeros(1, dtype=torch.float16))
    a.grad, b.grad = torch.tensor([6e4], dtype=torch.float16), torch.tensor([-6e4], dtype=torch.float16)
    norm = global_grad_norm([a, b])
    assert norm.dtype == torch.float32
    expected = 2 ** 0.5 * float(torch.tensor(6e4, dtype=torch.float16))
    assert float(norm) == pytest.approx(expected, rel=1e-6)


def _fused_lamb(groups, grads, lr, betas, eps, max_grad_norm=None, trust_ratio=True, clip_eps=0.0,
                store=torch.float64):
    """NVIDIA apex FusedLAMB (apex/optimizers/fused_lamb.py `step`, csrc/multi_tensor_lamb.cu; adam_w_mode,
    bias_correction, grad_averaging, use_nvlamb=False) by hand. `groups`: [(weights, weight_decay)], `grads`: per
    step, one list of gradients per group (None: no gradient, the tensor is left alone but its group's step count
    still advances, as FusedLAMB counts steps per group). Stage 1 clips by the global norm of all gradients
    (g / (norm / max_grad_norm), only when above; `clip_eps` adds clip_grad_norm_'s 1e-6 to that norm), then
    u = m_hat / (sqrt(v_hat) + eps) + wd * w; stage 2: w -= lr * ||w|| / ||u|| * u (||w|| taken before the step)
    where wd != 0 and both norms are non-zero, else w -= lr * u. Like the kernel, the arithmetic is in float32
    (float64 when `store` is) while weights, moments and u are kept in `store`. Returns float64 numpy arrays."""
    b1, b2 = betas
    math = torch.float64 if store == torch.float64 else torch.float32
    ws = [[torch.as_tensor(np.asarray(w, dtype=np.float64)).to(store) for w in ws] for ws, _ in groups]
    ms = [[torch.zeros_like(w) for w in g] for g in ws]
    vs = [[torch.zeros_like(w) for w in g] for g in ws]
    steps = [0] * len(groups)
    for step_grads in grads:
        step_grads = [[None if g is None else torch.as_tensor(np.asarray(g, dtype=np.float64)).to(store)
                       for g in gs] for gs in step_grads]
        norm = float(sum((g.double() ** 2).sum() for gs in step_grads for g in gs if g is not None)) ** 0.5
        clip = (norm + clip_eps) / max_grad_norm if max_grad_norm is not None and norm > max_grad_norm else 1.0
        for k, ((_, wd), w_g, m_g, v_g, g_g) in enumerate(zip(groups, ws, ms, vs, step_grads)):
            steps[k] += 1
            t = steps[k]
            for i, g in enumerate(g_g):
                if g is None:
                    continue
                g = g.to(math) / clip
                m = b1 * m_g[i].to(math) + (1 - b1) * g
                v = b2 * v_g[i].to(math) + (1 - b2) * g * g
                m_g[i], v_g[i] = m.to(store), v.to(store)
                w = w_g[i].to(math)
                u = ((m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps) + wd * w).to(store).to(math)
                wn, un = float(torch.linalg.vector_norm(w)), float(torch.linalg.vector_norm(u))
                r = wn / un if trust_ratio and wd != 0 and wn != 0 and un != 0 else 1.0
                w_g[i] = (w - (lr * r) * u).to(store)
    return [[w.double().numpy() for w in g] for g in ws]


@pytest.mark.parametrize("w0, wd", [([1.0, -2.0, 0.5], 0.01),   # decay group: trust ratio
                                    ([1.0, -2.0, 0.5], 0.0),    # no-decay group: plain Adam step
                                    ([0.0, 0.0, 0.0], 0.01)])   # ||w|| = 0: ratio 1
def test_lamb_matches_hand_computed_update(w0, wd):
    grads = [[0.5, -1.0, 0.25], [0.1, 0.3, -0.2]]
    lr, betas, eps = 0.1, (0.9, 0.999), 1e-6
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = Lamb([p], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    [[expected]] = _fused_lamb([([w0], wd)], [[[g]] for g in grads], lr, betas, eps)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=1e-12)
    # The trust ratio matters here: a plain Adam step lands elsewhere.
    if wd and any(w0):
        [[plain]] = _fused_lamb([([w0], wd)], [[[g]] for g in grads], lr, betas, eps, trust_ratio=False)
        assert np.abs(plain - expected).max() > 1e-3


def test_lamb_state_is_weights_only_loadable(tmp_path):
    p = nn.Parameter(torch.ones(3))
    opt = build_optimizer("lamb", [p], lr=0.1, weight_decay=0.01)
    p.grad = torch.ones(3)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    state = torch.load(tmp_path / "o.pt", weights_only=True)
    opt2 = build_optimizer("lamb", [nn.Parameter(torch.ones(3))], lr=0.1, weight_decay=0.01)
    opt2.load_state_dict(state)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_adamw_decoupled_decay_only_on_decay_group():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        model[0].bias.fill_(3.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer("adamw", param_groups(model, 0.1), lr=0.5, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: the only change left is the decoupled decay
    opt.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - 0.5 * 0.1), atol=0, rtol=1e-6)
    for name in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[name], before[name]), name


def test_adamw_is_fused_on_the_cpu_and_steps_like_the_reference():
    """The fused kernel on the CPU takes the same steps as torch's per-tensor AdamW (to rounding)."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3))
    b = copy.deepcopy(a)
    ours = build_optimizer("adamw", param_groups(a, 0.01), lr=1e-2, weight_decay=0.01)
    assert ours.defaults["fused"] is True
    reference = torch.optim.AdamW(param_groups(b, 0.01), lr=1e-2, betas=(0.9, 0.999), eps=1e-6,
                                  weight_decay=0.01, foreach=False)
    x = torch.randn(32, 8)
    for _ in range(5):
        for model, opt in ((a, ours), (b, reference)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_build_optimizer_rejects_unknown():
    with pytest.raises(ValueError, match="adamw, lamb"):
        build_optimizer("sgd", [nn.Parameter(torch.ones(1))], lr=0.1)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_build_optimizer_takes_betas_and_epsilon(name):
    opt = build_optimizer(name, [nn.Parameter(torch.ones(1))], lr=0.1, betas=(0.8, 0.95), eps=1e-8)
    group = opt.param_groups[0]
    assert (group["betas"], group["eps"], group["lr"]) == ((0.8, 0.95), 1e-8, 0.1)
    assert Lamb([nn.Parameter(torch.ones(1))], lr=0.0).param_groups[0]["lr"] == 0.0  # a frozen schedule's start


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_build_optimizer_defaults_are_google_bert_s(name):
    """Weight decay 0.01 and epsilon 1e-6 (google-research/bert's; transformers' are 0 and 1e-8), betas as Adam's."""
    from bertkit.train.optim import build_optimizer

    group = build_optimizer(name, [nn.Parameter(torch.ones(2))], lr=0.1).param_groups[0]
    assert (group["weight_decay"], group["eps"], tuple(group["betas"])) == (0.01, 1e-6, (0.9, 0.999))


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_build_optimizer_refuses_an_empty_parameter_list(name):
    """E.g. every parameter frozen: said plainly, not an IndexError from looking at the first one."""
    from bertkit.train.optim import build_optimizer

    with pytest.raises(ValueError, match="^build_optimizer: no parameters to optimize$"):
        build_optimizer(name, iter([]), lr=0.1)


def test_a_bias_or_norm_weight_is_not_decayed_whatever_its_shape():
    m = nn.Module()
    m.proj = nn.Linear(2, 2)
    m.proj.bias = nn.Parameter(torch.zeros(2, 2))  # a 2-D bias, as some adapters have
    m.norm = nn.Module()
    m.norm.weight = nn.Parameter(torch.ones(2, 2))
    groups = {g["group_name"]: g["names"] for g in param_groups(m, 0.01)}
    assert groups == {"decay": ["proj.weight"], "no_decay": ["proj.bias", "norm.weight"]}


def test_param_groups_decay_what_transformers_trainer_decays():
    """The decayed names are those of transformers' `Trainer.get_decay_parameter_names`, on every BERT head and
    on a module with the odd cases: a 1-D scale (decayed), an embedding named `*_bias` (not), a LayerNorm
    known by its type alone, `_norm` / `rmsnorm` names (not) and `normalizer` (`norm` not a component: decayed)."""
    import bertkit.modeling as M
    from transformers import Trainer

    odd = nn.Module()
    odd.proj, odd.attn_norm, odd.normalizer = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
    odd.scale = nn.Parameter(torch.ones(3))
    odd.relative_attention_bias = nn.Embedding(4, 3)
    odd.ln_f = nn.LayerNorm(3)
    odd.final_rmsnorm = nn.Module()
    odd.final_rmsnorm.weight = nn.Parameter(torch.ones(3))
    models = [getattr(M, name)(tiny_config()) for name in (
        "BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
        "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
        "BertForMultipleChoice")]
    for model in [*models, odd]:
        hf = set(Trainer.get_decay_parameter_names(None, model))
        expected = [n for n, _ in model.named_parameters() if n in hf]
        ours = {g["group_name"]: g["names"] for g in param_groups(model, 0.01)}
        assert ours["decay"] == expected, type(model).__name__
    assert ours["decay"] == ["scale", "proj.weight", "normalizer.weight"]


def test_no_decay_names_are_matched_case_blind_and_layernorm_prefixes_whole():
    """transformers' Trainer lower-cases each name before its patterns (so `Out.Bias` and a TF-style plain
    `LayerNorm` module's `gamma` are not decayed) and skips only what lies inside an `nn.LayerNorm` (`ln.`),
    not a sibling whose name merely starts the same (`ln2.weight` is decayed)."""
    from transformers import Trainer

    m = nn.Module()
    m.ln, m.ln2 = nn.LayerNorm(3), nn.Linear(3, 3, bias=False)
    m.Out = nn.Module()
    m.Out.Bias = nn.Parameter(torch.ones(3))
    m.TF = nn.Module()
    m.TF.LayerNorm = nn.Module()
    m.TF.LayerNorm.gamma = nn.Parameter(torch.ones(3))
    hf = set(Trainer.get_decay_parameter_names(None, m))
    assert hf == {"ln2.weight"}
    ours = {g["group_name"]: g["names"] for g in param_groups(m, 0.01)}
    assert ours == {"decay": ["ln2.weight"], "no_decay": ["ln.weight", "ln.bias", "Out.Bias", "TF.LayerNorm.gamma"]}


def test_a_model_without_biases_or_norms_gets_only_the_decay_group():
    """No empty `no_decay` group: the optimizer (and its state dict) holds only the groups that have tensors."""
    groups = param_groups(nn.Linear(3, 2, bias=False), 0.01)
    assert [(g["group_name"], g["names"], g["weight_decay"]) for g in groups] == [("decay", ["weight"], 0.01)]


def test_adamw_steps_as_transformers_trainer_optimizer():
    """20 steps of the tiny BERT: bertkit's groups, AdamW, clipping (the trainer's `clip_grad_norm_` at 1.0) and
    linear schedule (3 warm-up steps) against the optimizer transformers' Trainer builds for the same settings
    (`create_optimizer`: its decay names, `get_optimizer_cls_and_kwargs` with the default `optim`, fused AdamW on
    torch >= 2.8) and `get_linear_schedule_with_warmup`. (TrainingArguments' defaults are read off the class:
    an instance needs accelerate.)"""
    from types import SimpleNamespace

    from transformers import Trainer, TrainingArguments as A, get_linear_schedule_with_warmup

    assert (A.lr_scheduler_type, A.max_grad_norm, A.adam_beta1, A.adam_beta2) == ("linear", 1.0, 0.9, 0.999)
    args = SimpleNamespace(optim=A.optim, learning_rate=1e-3, adam_beta1=A.adam_beta1, adam_beta2=A.adam_beta2,
                           adam_epsilon=1e-6, optim_args=A.optim_args)
    torch.manual_seed(0)
    ours_model = BertForPreTraining(tiny_config(0.0))
    hf_model = copy.deepcopy(ours_model)
    start = ours_model.bert.pooler.dense.weight.detach().clone()
    ours = build_optimizer("adamw", param_groups(ours_model, 0.01), 1e-3, 0.01, (0.9, 0.999), 1e-6)
    decay = set(Trainer.get_decay_parameter_names(None, hf_model))
    named = list(hf_model.named_parameters())
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, hf_model)
    hf = cls([{"params": [p for n, p in named if n in decay], "weight_decay": 0.01},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}], **kwargs)
    assert type(ours) is type(hf) and ours.defaults["fused"] == hf.defaults.get("fused")
    runs = [(ours_model, ours, linear_schedule(ours, 3, 20)),
            (hf_model, hf, get_linear_schedule_with_warmup(hf, 3, 20))]
    ids = torch.randint(5, 99, (4, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        for model, opt, sched in runs:
            out = model(input_ids=ids)
            (out.prediction_logits.logsumexp(-1).mean() + out.seq_relationship_logits.square().mean()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    assert ours.param_groups[0]["lr"] == hf.param_groups[0]["lr"] == 0.0
    for (name, a), b in zip(ours_model.named_parameters(), hf_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)
    assert (ours_model.bert.pooler.dense.weight - start).abs().max() > 1e-3  # it did train


def test_lamb_with_the_trainers_clipping_is_fused_lamb():
    """Several tensors in the decay and no-decay groups, gradients above the clipping norm: `clip_grad_norm_` at
    1.0 then `Lamb.step` (the trainer's order) lands where FusedLAMB(max_grad_norm=1.0), re-done by hand, does."""
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (5,)], [(3,), (2, 2)]
    weights = [[rng.normal(size=s) for s in g] for g in shapes]
    grads = [[[3 * rng.normal(size=s) for s in g] for g in shapes] for _ in range(4)]
    params = [[nn.Parameter(torch.tensor(w)) for w in g] for g in weights]
    opt = Lamb([{"params": params[0], "weight_decay": 0.01}, {"params": params[1], "weight_decay": 0.0}],
               lr=0.05, eps=1e-6)
    for step_grads in grads:
        for ps, gs in zip(params, step_grads):
            for p, g in zip(ps, gs):
                p.grad = torch.tensor(g)
        assert torch.nn.utils.clip_grad_norm_([p for g in params for p in g], 1.0) > 1.0
        opt.step()
    expected = _fused_lamb([(weights[0], 0.01), (weights[1], 0.0)], grads, 0.05, (0.9, 0.999), 1e-6,
                           max_grad_norm=1.0)
    for ps, es in zip(params, expected):
        for p, e in zip(ps, es):
            np.testing.assert_allclose(p.detach().numpy(), e, rtol=0, atol=1e-9)


class _Gated(nn.Module):
    """A decay group (two matrices, one of them zero at the start, and a matrix behind a gate) and a no-decay
    group (biases, LayerNorm). While the second matrix is zero the first layer and the LayerNorm get zero
    gradients; while the gate is shut so does `gated`."""

    def __init__(self):
        super().__init__()
        self.lin1, self.norm, self.lin2 = nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)
        self.gated = nn.Parameter(torch.randn(6, 3))
        with torch.no_grad():
            self.lin2.weight.zero_()  # ||w|| = 0: trust ratio 1 on its first step

    def forward(self, x, gate):
        return self.lin2(self.norm(self.lin1(x))) + gate * (x @ self.gated)


def _train_gated_with_lamb(dtype, steps=20, lr=0.05):
    """`steps` steps of `_Gated` in `dtype` as the trainer takes them (`clip_grad_norm_` at 1.0, then
    `Lamb.step`), the global gradient norm below 1 every third step and above it otherwise. Returns the
    starting weights and each step's raw gradients (group by group, as `_fused_lamb` takes them), the
    global norms and the model."""
    torch.manual_seed(0)
    model = _Gated().to(dtype)
    groups = param_groups(model, 0.01)
    start = [([p.detach().double().numpy().copy() for p in g["params"]], g["weight_decay"]) for g in groups]
    opt = Lamb(groups, lr=lr, eps=1e-6, weight_decay=0.01)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads, norms = [], []
    for s in range(steps):
        gate = 0.0 if 5 <= s < 9 else 1.0
        scale = 0.05 if s % 3 == 0 else 20.0
        (scale * model(x + 0.1 * s, gate).float().square().mean()).backward()
        grads.append([[p.grad.detach().double().numpy().copy() for p in g["params"]] for g in groups])
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return start, grads, norms, groups


def test_lamb_with_the_trainers_clipping_over_20_steps_of_a_small_model_is_fused_lamb():
    """20 steps of `_Gated` in float32: global norms below and above 1, a weight starting at zero, gradients
    that are zero for some steps in both groups. bertkit lands where FusedLAMB (re-done in float64) does, to
    float32 rounding."""
    start, grads, norms, groups = _train_gated_with_lamb(torch.float32)
    assert min(norms) < 1.0 < max(norms)
    by_name = {n: i for i, n in enumerate(groups[0]["names"])}
    assert not grads[0][0][by_name["lin1.weight"]].any()  # lin2.weight starts at zero
    assert not grads[6][0][by_name["gated"]].any() and grads[4][0][by_name["gated"]].any()
    assert groups[1]["names"] == ["lin1.bias", "norm.weight", "norm.bias", "lin2.bias"]
    expected = _fused_lamb(start, grads, 0.05, (0.9, 0.999), 1e-6, max_grad_norm=1.0)
    for g, es, (ws, _) in zip(groups, expected, start):
        for name, p, e, w0 in zip(g["names"], g["params"], es, ws):
            assert np.abs(e - w0).max() > 0.05, name  # it moved
            np.testing.assert_allclose(p.detach().double().numpy(), e, rtol=0, atol=5e-7, err_msg=name)


def test_the_trainers_clipping_differs_from_fused_lambs_only_by_its_epsilon():
    """In float64: `clip_grad_norm_` divides by norm + 1e-6 where FusedLAMB divides by the norm. With that
    epsilon put into the reference the two agree to 1e-12; without it they differ (the scale differs by a
    factor 1 - 1e-6 / norm that changes from step to step, so Adam's normalisation does not cancel it), by less
    than float32 rounding: 4e-8 relative here."""
    start, grads, _, groups = _train_gated_with_lamb(torch.float64)
    same = _fused_lamb(start, grads, 0.05, (0.9, 0.999), 1e-6, max_grad_norm=1.0, clip_eps=1e-6)
    fused = _fused_lamb(start, grads, 0.05, (0.9, 0.999), 1e-6, max_grad_norm=1.0)
    worst = 0.0
    for g, es, fs in zip(groups, same, fused):
        for name, p, e, f in zip(g["names"], g["params"], es, fs):
            np.testing.assert_allclose(p.detach().numpy(), e, rtol=0, atol=1e-12, err_msg=name)
            worst = max(worst, np.abs(p.detach().numpy() - f).max() / np.abs(f).max())
    assert 1e-12 < worst < 1e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lamb_on_half_precision_parameters_computes_in_float32_as_fused_lamb(dtype):
    """Parameters (so gradients and moments) in float16 / bfloat16, 20 steps with the trainer's clipping: the
    weights are FusedLAMB's (float32 arithmetic, weights, moments and update kept in `dtype`) to 2 units in the
    last place of each tensor's largest weight. In float16 arithmetic (1 - b2) g^2 underflows to 0, and the first
    step of a weight with |g| < 8e-3 was lr * m / eps, about 1000 lr (the LayerNorm weight moved 12.7 here, not
    0.06)."""
    start, grads, norms, groups = _train_gated_with_lamb(dtype, lr=1e-3)
    assert min(norms) < 1.0 < max(norms)
    expected = _fused_lamb(start, grads, 1e-3, (0.9, 0.999), 1e-6, max_grad_norm=1.0, store=dtype)
    for g, es in zip(groups, expected):
        for name, p, e in zip(g["names"], g["params"], es):
            ulp = torch.finfo(dtype).eps * np.abs(e).max()
            assert np.abs(p.detach().double().numpy() - e).max() <= 2 * ulp, name


def test_lamb_counts_steps_per_tensor_where_fused_lamb_counts_per_group():
    """The documented difference: a tensor with no gradient (None) for 3 steps then takes its first step with
    bias correction t = 1 here and t = 4 in FusedLAMB, whose step is 0.58 times as long; the tensor that had
    gradients all along steps the same in both."""
    a = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    late = nn.Parameter(torch.tensor([0.5, -0.5], dtype=torch.float64))
    opt = Lamb([{"params": [a, late], "weight_decay": 0.0}], lr=0.1)
    grads = [[[[0.3, -0.2], None]]] * 3 + [[[[0.3, -0.2], [0.4, 0.1]]]]
    for [[ga, gl]] in grads:
        a.grad = torch.tensor(ga, dtype=torch.float64)
        late.grad = None if gl is None else torch.tensor(gl, dtype=torch.float64)
        opt.step()
    [[ref_a, ref_late]] = _fused_lamb([([[1.0, 2.0], [0.5, -0.5]], 0.0)], grads, 0.1, (0.9, 0.999), 1e-6)
    np.testing.assert_allclose(a.detach().numpy(), ref_a, rtol=0, atol=1e-12)
    ours, fused = late.detach().numpy() - [0.5, -0.5], ref_late - [0.5, -0.5]
    np.testing.assert_allclose(ours, [-0.1, -0.1], rtol=1e-5)  # a first Adam step: lr * sign(g)
    np.testing.assert_allclose(fused / ours, 0.1 / (1 - 0.9 ** 4) / (0.001 / (1 - 0.999 ** 4)) ** 0.5, rtol=1e-5)
    assert abs(fused[0] / ours[0] - 0.58) < 0.01


class _OnTheGpu(torch.Tensor):
    """A CPU tensor that says it lives on the GPU: a step as `torch.load(..., map_location="cuda")` gives it
    (no GPU here; the meta device holds no value to bring back)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_lamb_keeps_its_step_counts_on_the_cpu():
    """`Lamb` reads each tensor's step with `.item()`; that is free only while the step lives on the CPU. It is
    created there whatever the parameter's device (the meta device standing in for a GPU). torch's
    `Optimizer.load_state_dict` leaves `step` where the loaded dict has it (its device policy exempts the key
    unless the group is fused or capturable: Adam's step below stays on the meta device), so a checkpoint read
    with `map_location="cuda"` would put it on the GPU and every step would wait for the device once per tensor;
    some checkpoints hold a plain int (DeepLearningExamples' run_pretraining writes `state["step"] = global_step`).
    After `Lamb.load_state_dict` the step is a plain float32 CPU tensor again, and the run goes on as an
    uninterrupted one."""
    far = nn.Parameter(torch.ones(3, device="meta"))
    far.grad = torch.ones(3, device="meta")
    opt = Lamb([far], lr=0.1)
    opt.step()
    assert opt.state[far]["step"].device.type == "cpu"

    adam = torch.optim.Adam([nn.Parameter(torch.ones(1))], foreach=False)
    adam.param_groups[0]["params"][0].grad = torch.ones(1)
    adam.step()
    sd = adam.state_dict()
    sd["state"][0]["step"] = sd["state"][0]["step"].to("meta")
    adam.load_state_dict(sd)
    assert adam.state[adam.param_groups[0]["params"][0]]["step"].device.type == "meta"  # torch's rule

    grads = [torch.tensor([0.5, -1.0, 0.25]), torch.tensor([0.1, 0.3, -0.2]), torch.tensor([-0.4, 0.2, 0.1])]
    whole = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Lamb([whole], lr=0.1)
    for i, g in enumerate(grads):
        whole.grad = g.clone()
        opt.step()
        if i == 1:
            after_two, sd = whole.detach().clone(), copy.deepcopy(opt.state_dict())
    on_gpu = sd["state"][0]["step"].clone().as_subclass(_OnTheGpu)
    assert on_gpu.device.type == "cuda"
    for saved_step in (on_gpu, 2):
        resumed = nn.Parameter(after_two.clone())
        opt = Lamb([resumed], lr=0.1)
        saved = copy.deepcopy(sd)  # torch's loader keeps the dict's tensors (the moments are stepped in place)
        saved["state"][0]["step"] = saved_step
        opt.load_state_dict(saved)
        step = opt.state[resumed]["step"]
        assert type(step) is torch.Tensor, type(step)
        assert (step.device.type, step.dtype, float(step)) == ("cpu", torch.float32, 2.0)
        resumed.grad = grads[2].clone()
        opt.step()
        assert torch.equal(resumed, whole)


@pytest.mark.parametrize("kwargs, message", [
    ({"betas": (0.9, 1.0)}, r"Lamb: betas must be in \[0, 1\), got \(0.9, 1.0\)"),
    ({"betas": (1.0, 0.999)}, r"Lamb: betas must be in \[0, 1\), got \(1.0, 0.999\)"),
    ({"betas": (-0.1, 0.999)}, r"Lamb: betas must be in \[0, 1\)"),
    ({"eps": 0.0}, "Lamb: eps must be > 0, got 0.0"),
    ({"lr": -1e-3}, "Lamb: lr must be >= 0, got -0.001"),
    ({"weight_decay": -0.01}, "Lamb: weight_decay must be >= 0, got -0.01"),
])
def test_lamb_refuses_hyperparameters_outside_their_range(kwargs, message):
    """beta = 1 never forgets (and 1 - beta^t = 0 divides by zero); eps = 0 divides by zero where v = 0."""
    with pytest.raises(ValueError, match=message):
        Lamb([nn.Parameter(torch.ones(2))], **kwargs)
    Lamb([nn.Parameter(torch.ones(2))], weight_decay=0.0, betas=(0.0, 0.0))  # the edges that are allowed


def test_lamb_refuses_a_sparse_gradient():
    """A sparse embedding gradient (`nn.Embedding(sparse=True)`): refused by name, as torch's AdamW does."""
    emb = nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 3])).sum().backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="^Lamb does not support sparse gradients$"):
        Lamb(emb.parameters(), lr=0.1).step()


def _lamb_sd_after(steps_a: int, steps_b: int) -> tuple[dict, list[nn.Parameter]]:
    """Lamb's state dict where tensor `a` took `steps_a` steps and `b` took `steps_b` (gradient None otherwise)."""
    a, b = nn.Parameter(torch.tensor([1.0, -2.0])), nn.Parameter(torch.tensor([0.5, 0.25]))
    opt = Lamb([{"params": [a, b], "weight_decay": 0.0}], lr=0.1)
    for s in range(max(steps_a, steps_b)):
        a.grad = torch.tensor([0.3, -0.1]) if s < steps_a else None
        b.grad = torch.tensor([0.2, 0.4]) if s < steps_b else None
        opt.step()
    return opt.state_dict(), [a, b]


def test_a_tensors_own_step_wins_over_its_groups():
    """A state dict with both (a per-tensor `step` and a group `step`, as a Lamb dict that passed through code
    adding FusedLAMB's group keys): each tensor keeps its own count, the group's is only for tensors without."""
    sd, params = _lamb_sd_after(3, 1)
    sd["param_groups"][0]["step"] = 5
    opt = Lamb([{"params": [nn.Parameter(p.detach().clone()) for p in params], "weight_decay": 0.0}], lr=0.1)
    opt.load_state_dict(sd)
    assert [float(opt.state[p]["step"]) for p in opt.param_groups[0]["params"]] == [3.0, 1.0]


@pytest.mark.parametrize("bad, shown", [
    (torch.tensor([-1], dtype=torch.int32), r"a torch\.int32 tensor of shape \(1,\)"),
    (torch.tensor([3, 3]), r"a torch\.int64 tensor of shape \(2,\)"),
], ids=["negative_tensor", "two_elements"])
def test_a_group_step_tensor_that_is_no_single_count_is_refused(bad, shown):
    """FusedLAMBAMP keeps its count as a one-element int tensor; a negative or multi-element one is no count."""
    sd, params = _lamb_sd_after(2, 2)
    for state in sd["state"].values():
        del state["step"]
    sd["param_groups"][0]["step"] = bad
    opt = Lamb([{"params": params, "weight_decay": 0.0}], lr=0.1)
    with pytest.raises(ValueError, match=rf"^Lamb\.load_state_dict: parameter 0 \(group 0\): its param group's "
                                         rf"'step' is {shown}; expected a non-negative integer"):
        opt.load_state_dict(sd)


def test_a_transposed_moment_is_refused():
    """A (2, 3) moment for a (3, 2) matrix has the right number of elements but not the parameter's shape."""
    w = nn.Parameter(torch.ones(3, 2))
    opt = Lamb([w], lr=0.1)
    w.grad = torch.ones(3, 2)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].t().contiguous()
    fresh = Lamb([nn.Parameter(torch.ones(3, 2))], lr=0.1)
    with pytest.raises(ValueError, match=r"^Lamb\.load_state_dict: parameter 0 \(group 0\): 'exp_avg' is of shape "
                                         r"\(2, 3\); expected a tensor of the parameter's shape \(3, 2\)$"):
        fresh.load_state_dict(sd)


def _rates(opt, sched, n):
    seen = []
    for _ in range(n):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_schedule_resumed_mid_warmup_goes_on_as_the_uninterrupted_one(tmp_path):
    """Optimizer and scheduler state dicts saved after 2 of 3 warm-up steps (through a file, weights only, as a
    checkpoint holds them) and loaded into a fresh optimizer and schedule: the same rates as one run."""
    def fresh():
        opt = build_optimizer("adamw", [nn.Parameter(torch.zeros(2))], lr=1e-3)
        return opt, linear_schedule(opt, 3, 10)

    whole = _rates(*fresh(), 12)
    opt, sched = fresh()
    first = _rates(opt, sched, 2)
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    opt, sched = fresh()
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    assert first + _rates(opt, sched, 10) == whole
    assert whole[:5] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3 * 6 / 7])


def test_the_trainer_logs_the_rate_each_step_was_taken_with(tmp_path):
    """metrics.jsonl's `lr` at (1-based) step s is the rate step s used, `get_linear_schedule_with_warmup`'s at
    s - 1 (transformers' Trainer logs the following step's instead, `get_last_lr()` after `scheduler.step()`)."""
    from transformers.optimization import _get_linear_schedule_with_warmup_lr_lambda as hf_factor

    from bertkit.train import TrainConfig, Trainer, read_metrics

    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(0.0))
    cfg = TrainConfig(max_steps=5, warmup_steps=3, batch_size=2, lr=1e-3, log_every=1, save_final=False,
                      output_dir=str(tmp_path), tensorboard=False, progress=False)
    Trainer(PretrainObjective(model), model, TinySource(2, seed=1), cfg).train()
    logged = [r["lr"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    used = [1e-3 * hf_factor(s, num_warmup_steps=3, num_training_steps=5) for s in range(5)]
    assert logged == pytest.approx(used, rel=1e-12, abs=0) and logged[0] == 0.0
