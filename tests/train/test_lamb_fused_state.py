"""`Lamb.load_state_dict` on apex FusedLAMB's state dict (NVIDIA's BERT recipe checkpoints
`optimizer.state_dict()`): one step count per param group (`group["step"]`, raised before each update, so the
count of steps taken), `exp_avg` and `exp_avg_sq` per tensor and no per-tensor step."""
import copy

import pytest
import torch
from torch import nn

from bertkit.train.optim import Lamb

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(3, 2), (2,), (4,)]  # a decayed matrix, then a bias and a LayerNorm weight (no decay)
FUSED_GROUP_KEYS = {"bias_correction": True, "grad_averaging": True, "max_grad_norm": 1.0}  # FusedLAMB's defaults


def _params(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _lamb(params) -> Lamb:
    return Lamb([{"params": params[:1], "weight_decay": 0.01}, {"params": params[1:], "weight_decay": 0.0}],
                lr=0.05, eps=1e-6)


def _grads(n: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(n)]


def _run(opt: Lamb, params, grads) -> None:
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()


def _as_fused(sd: dict, group_step) -> dict:
    """Lamb's state dict in FusedLAMB's layout: no per-tensor step, the count in each group (with FusedLAMB's
    other group keys)."""
    sd = copy.deepcopy(sd)
    for state in sd["state"].values():
        del state["step"]
    for group in sd["param_groups"]:
        group.update(FUSED_GROUP_KEYS, step=copy.deepcopy(group_step))
    return sd


def _resumed(sd: dict, at: list[torch.Tensor]) -> tuple[Lamb, list[nn.Parameter]]:
    params = [nn.Parameter(w.clone()) for w in at]
    opt = _lamb(params)
    opt.load_state_dict(sd)
    return opt, params


def _uninterrupted(total: int):
    """A run of `total` steps, with its weights and state dict after the first 3 (where a resume starts)."""
    grads = _grads(total)
    whole = _params()
    opt = _lamb(whole)
    _run(opt, whole, grads[:3])
    at, sd = [p.detach().clone() for p in whole], copy.deepcopy(opt.state_dict())
    _run(opt, whole, grads[3:])
    return grads, whole, at, sd


# apex FusedLAMB keeps an int; DeepLearningExamples' FusedLAMBAMP a one-element int32 tensor (on the GPU there)
@pytest.mark.parametrize("group_step", [3, torch.tensor([3], dtype=torch.int32)], ids=["int", "int32_tensor"])
def test_lamb_resumed_from_fused_lambs_layout_steps_as_the_uninterrupted_run(tmp_path, group_step):
    """3 steps, the state dict turned into FusedLAMB's layout (through a weights-only file, as a checkpoint
    holds it), loaded into a fresh Lamb: the next 4 steps equal the uninterrupted run's bit for bit (fp32, CPU).
    Each tensor's step is then a float32 CPU count and the group's count is gone (it would go stale)."""
    grads, whole, at, sd = _uninterrupted(7)

    torch.save(_as_fused(sd, group_step), tmp_path / "fused.pt")
    fused = torch.load(tmp_path / "fused.pt", weights_only=True)
    assert all("step" not in s for s in fused["state"].values())
    resumed_opt, resumed = _resumed(fused, at)
    for p in resumed:
        step = resumed_opt.state[p]["step"]
        assert (type(step), step.device.type, step.dtype, float(step)) == (torch.Tensor, "cpu", torch.float32, 3.0)
    assert all("step" not in g for g in resumed_opt.param_groups)
    _run(resumed_opt, resumed, grads[3:])
    for ours, theirs in zip(resumed, whole):
        assert torch.equal(ours, theirs), (ours, theirs)
    assert [float(resumed_opt.state[p]["step"]) for p in resumed] == [7.0] * 3


def test_a_wrong_group_step_would_not_continue_the_run():
    """The test above has teeth: the same resume with the group's count off by one lands elsewhere (the
    bias corrections differ), so equality there means the group's step was taken as each tensor's."""
    grads, whole, at, sd = _uninterrupted(4)
    resumed_opt, resumed = _resumed(_as_fused(sd, 2), at)
    _run(resumed_opt, resumed, grads[3:])
    assert not torch.equal(resumed[1], whole[1])


def test_a_plain_lamb_state_dict_round_trips_unchanged():
    """Lamb's own layout (a step per tensor, none in the groups) loads as before: the fresh optimizer's state
    dict equals the saved one, steps and moments included."""
    params = _params()
    opt = _lamb(params)
    _run(opt, params, _grads(2))
    sd = copy.deepcopy(opt.state_dict())
    fresh = _lamb(_params(seed=5))
    fresh.load_state_dict(sd)
    again = fresh.state_dict()
    assert again["param_groups"] == sd["param_groups"]
    assert again["state"].keys() == sd["state"].keys()
    for k, state in sd["state"].items():
        assert again["state"][k].keys() == state.keys()
        for name, value in state.items():
            assert torch.equal(again["state"][k][name], value), (k, name)


def _fused_state() -> tuple[dict, list[nn.Parameter]]:
    params = _params()
    opt = _lamb(params)
    _run(opt, params, _grads(2))
    return _as_fused(opt.state_dict(), 2), params


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq"])
def test_a_fused_state_missing_a_moment_is_refused_before_anything_loads(key):
    sd, params = _fused_state()
    del sd["state"][1][key]
    opt = _lamb(params)
    with pytest.raises(ValueError) as err:
        opt.load_state_dict(sd)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (f"Lamb.load_state_dict: parameter 1 (group 1): '{key}' is missing; expected a tensor of the "
                   f"parameter's shape (2,)")
    assert not opt.state and all("step" not in g for g in opt.param_groups)  # nothing was loaded


def test_a_misshapen_moment_is_refused():
    """torch's loader casts the moments without looking at their shapes; a (2,) moment on a (4,) parameter
    would fail (or broadcast) only at the next step."""
    sd, params = _fused_state()
    sd["state"][2]["exp_avg_sq"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"^Lamb\.load_state_dict: parameter 2 \(group 1\): 'exp_avg_sq' is of "
                                         r"shape \(2,\); expected a tensor of the parameter's shape \(4,\)$"):
        _lamb(params).load_state_dict(sd)


def test_the_error_names_the_parameter_when_the_group_has_names():
    sd, params = _fused_state()
    del sd["state"][0]["exp_avg"]
    opt = Lamb([{"params": params[:1], "names": ["encoder.w"], "weight_decay": 0.01},
                {"params": params[1:], "names": ["encoder.b", "norm.weight"], "weight_decay": 0.0}])
    with pytest.raises(ValueError, match=r"^Lamb\.load_state_dict: parameter 0 \(group 0, encoder\.w\): "
                                         r"'exp_avg' is missing"):
        opt.load_state_dict(sd)


def test_a_state_with_no_step_anywhere_is_refused():
    """Neither a per-tensor step nor a group one: without the fix it loaded and the first step raised
    KeyError('step')."""
    sd, params = _fused_state()
    for group in sd["param_groups"]:
        del group["step"]
    with pytest.raises(ValueError) as err:
        _lamb(params).load_state_dict(sd)
    assert "\n" not in str(err.value)
    assert str(err.value) == ("Lamb.load_state_dict: parameter 0 (group 0) has no 'step' and neither has its "
                              "param group; expected a per-tensor 'step' (Lamb, torch's optimizers) or a group "
                              "'step' (apex FusedLAMB)")


@pytest.mark.parametrize("bad", [2.5, -1, True, torch.tensor([2.0])], ids=["float", "negative", "bool", "float_t"])
def test_a_group_step_that_is_no_count_is_refused(bad):
    sd, params = _fused_state()
    sd["param_groups"][0]["step"] = bad
    with pytest.raises(ValueError, match=r"^Lamb\.load_state_dict: parameter 0 \(group 0\): its param group's "
                                         r"'step' is .*; expected a non-negative integer"):
        _lamb(params).load_state_dict(sd)


@pytest.mark.parametrize("key", ["bias_correction", "grad_averaging"])
def test_fused_lamb_switches_lamb_cannot_follow_are_refused(key):
    """FusedLAMB(bias_correction=False) or (grad_averaging=False) updates differently; going on with Lamb's
    arithmetic would silently change the run."""
    sd, params = _fused_state()
    sd["param_groups"][1][key] = False
    with pytest.raises(ValueError, match=rf"^Lamb\.load_state_dict: param group 1 has {key}=False \(apex "
                                         rf"FusedLAMB\); Lamb always uses {key}=True$"):
        _lamb(params).load_state_dict(sd)
