"""Behaviour of bertkit/train/optim.py that the other optimizer tests left unpinned (found by mutation testing)."""
import pytest
import torch
from torch import nn

from bertkit.train.optim import Lamb, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_build_optimizer_defaults_are_google_bert_s(name):
    """Weight decay 0.01 and epsilon 1e-6 (google-research/bert's; transformers' are 0 and 1e-8), betas as Adam's."""
    from bertkit.train.optim import build_optimizer

    group = build_optimizer(name, [nn.Parameter(torch.ones(2))], lr=0.1).param_groups[0]
    assert (group["weight_decay"], group["eps"], tuple(group["betas"])) == (0.01, 1e-6, (0.9, 0.999))


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


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_build_optimizer_refuses_an_empty_parameter_list(name):
    """E.g. every parameter frozen: said plainly, not an IndexError from looking at the first one."""
    from bertkit.train.optim import build_optimizer

    with pytest.raises(ValueError, match="^build_optimizer: no parameters to optimize$"):
        build_optimizer(name, iter([]), lr=0.1)


def test_lamb_refuses_a_sparse_gradient():
    """A sparse embedding gradient (`nn.Embedding(sparse=True)`): refused by name, as torch's AdamW does."""
    emb = nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 3])).sum().backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="^Lamb does not support sparse gradients$"):
        Lamb(emb.parameters(), lr=0.1).step()


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


def test_linear_schedule_refuses_a_negative_warmup():
    from bertkit.train.optim import linear_schedule

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"^linear_schedule: need warmup_steps >= 0 and total_steps >= 1, got -1 "
                                         r"and 10$"):
        linear_schedule(opt, -1, 10)
