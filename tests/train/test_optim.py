import copy
import numpy as np
import pytest
import torch
from torch import nn

from bertkit.modeling import BertForPreTraining
from bertkit.train.optim import Lamb, build_optimizer, global_grad_norm, linear_schedule, param_groups

from .tiny import tiny_config


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
    with pytest.raises(ValueError):
        linear_schedule(opt, 11, 10)
    with pytest.raises(ValueError, match="total_steps >= 1, got 0 and 0"):
        linear_schedule(opt, 0, 0)


@pytest.mark.parametrize("warmup, total", [(4, 4), (0, 5), (3, 10), (1, 1)])
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


def test_global_grad_norm_is_the_norm_clipping_uses():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(2, 2))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert float(global_grad_norm([a, b])) == 5.0
    assert float(torch.nn.utils.clip_grad_norm_([a, b], 1e9)) == 5.0
    assert float(global_grad_norm([nn.Parameter(torch.ones(1))])) == 0.0  # no gradients yet


def _lamb_reference(w, grads, lr, wd, betas, eps, trust):
    """The LAMB update by hand, in float64."""
    b1, b2 = betas
    w = np.array(w, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = np.array(g, dtype=np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * w
        wn, un = np.linalg.norm(w), np.linalg.norm(u)
        r = wn / un if trust and wn > 0 and un > 0 else 1.0
        w = w - lr * r * u
    return w


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
    expected = _lamb_reference(w0, grads, lr, wd, betas, eps, trust=wd != 0)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=1e-12)
    # The trust ratio matters here: a plain Adam step lands elsewhere.
    if wd and any(w0):
        plain = _lamb_reference(w0, grads, lr, wd, betas, eps, trust=False)
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


def test_a_bias_or_norm_weight_is_not_decayed_whatever_its_shape():
    m = nn.Module()
    m.proj = nn.Linear(2, 2)
    m.proj.bias = nn.Parameter(torch.zeros(2, 2))  # a 2-D bias, as some adapters have
    m.norm = nn.Module()
    m.norm.weight = nn.Parameter(torch.ones(2, 2))
    groups = {g["group_name"]: g["names"] for g in param_groups(m, 0.01)}
    assert groups == {"decay": ["proj.weight"], "no_decay": ["proj.bias", "norm.weight"]}
