"""Shared test setup: the repository root on sys.path (tests import `bench`), and the one-thread fixture."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two threads on shared, busy cores are up to 100x slower.
    Module-scoped, so that a module's `pytestmark = pytest.mark.usefixtures("one_thread")` is in force
    before its module-scoped fixtures (which often train the tiny model) are set up."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
