"""What only a CUDA device can show: a plan and random states that live on it, and the model run there against
transformers in fp32 and against itself in bf16 (the varlen kernel's path). Each test takes a `device`: its CPU
run checks the test itself, its CUDA run (skipped without a GPU) is the last step of bench/gpu_session.sh."""
from __future__ import annotations

import pytest
import torch

from bertkit.modeling import packing as P
from bertkit.train import checkpoint as C

from tests.test_modeling import padded_inputs, pair, tiny_config

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 comparisons in fp32: TF32 matmuls would be 1e-3 apart."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("device", DEVICES)
def test_a_selection_plan_is_made_on_the_cpu_and_lands_on_the_packings_device(device):
    """Packed rows: sequence 0 is rows 0-2, 1 is rows 3-6, 2 is rows 7-8. Rows 5, 1, 8 and each first token are
    selected, two per sequence."""
    packing = P.pack(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]), device=device)
    plan = P.select(packing, torch.tensor([5, 1, 8], device=device))
    assert plan.rows.device.type == plan.cu_seqlens.device.type == device
    assert plan.rows.tolist() == [0, 1, 3, 5, 7, 8] and plan.cu_seqlens.tolist() == [0, 2, 4, 6]
    assert plan.cu_seqlens.dtype == torch.int32 and plan.max_seqlen == 2 and plan.counts == (2, 2, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_the_random_state_of_the_device_comes_back_from_a_saved_checkpoint(device, tmp_path):
    """A resume draws the dropout masks the uninterrupted run would have drawn: the CUDA generators' states are
    saved (one per GPU) and restored through a weights_only load."""
    torch.manual_seed(0)
    state = C.rng_state()
    assert len(state["cuda"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    first = torch.rand(5, device=device)
    torch.save(state, tmp_path / "rng.pt")
    torch.rand(7, device=device)  # the run goes on, then crashes
    C.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(5, device=device), first)


@pytest.mark.parametrize("device", DEVICES)
def test_the_model_on_the_device_matches_transformers_and_bf16_stays_close(device):
    """fp32: transformers' numbers on the real tokens of a padded batch. bf16 autocast (on CUDA, the packed
    batch through the variable-length kernel): within bf16's rounding of the fp32 output."""
    ours, theirs = pair("BertModel", tiny_config())
    ours, theirs = ours.to(device), theirs.to(device)
    inputs = {k: v.to(device) for k, v in padded_inputs().items()}
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        got = ours(**inputs).last_hidden_state
        want = theirs(**inputs).last_hidden_state
        with torch.autocast(device, dtype=torch.bfloat16):
            low = ours(**inputs).last_hidden_state
    assert (got[real] - want[real]).abs().max().item() < 1e-4
    gap = (low.float()[real] - got[real]).abs().max().item()
    assert 0 < gap < 0.1 * got[real].abs().max().item()  # not 0: the matmuls did run in bf16
