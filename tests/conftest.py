"""Shared test setup: the repository root on sys.path (tests import `bench`), repeatable property tests, and the
one-thread and torchrun fixtures."""
import contextlib
import fcntl
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Property tests draw the same examples on every run (seeded from each test), so a red run always points at a
# change; HYPOTHESIS_PROFILE=explore draws new ones, to search for failures on purpose.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two threads on shared, busy cores are up to 100x slower.
    Module-scoped, so that a module's `pytestmark = pytest.mark.usefixtures("one_thread")` is in force
    before its module-scoped fixtures (which often train the tiny model) are set up."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def torchrun():
    """`torchrun(*args, wait=True)`: `torchrun --standalone --nproc-per-node 2 *args` on this machine (gloo,
    one thread a rank), as a user would launch it. Returns the finished run's CompletedProcess (text output), or with
    `wait=False` the running Popen, for a test that works meanwhile. A run still going at a timeout or at the
    test's end is stopped with its ranks, so that none is left to slow the next tests."""
    import subprocess

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    launched = []

    def stop(proc):
        """SIGTERM, which torchrun passes to its ranks (each in a session of its own: a SIGKILL of torchrun, or
        of its process group, would leave them running)."""
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def launch(*args, wait: bool = True):
        # --standalone: torchrun's own rendezvous on a port it binds itself (a port probed here and closed
        # before torchrun binds it could be taken meanwhile)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *map(str, args)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        launched.append(proc)
        if not wait:
            return proc
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    yield launch
    for proc in launched:
        if proc.poll() is None:  # a test that failed before it waited for its run
            stop(proc)


@pytest.fixture
def another_job():
    """`with another_job(run):` holds `run`'s lock as another process training there does (pid 4242 written in
    it), making the directory first unless it exists."""
    @contextlib.contextmanager
    def hold(run: Path):
        run.mkdir(parents=True, exist_ok=True)
        with open(run / ".lock", "a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            held.write("4242\n")
            held.flush()
            yield
    return hold


@pytest.fixture
def slow_rank_0(tmp_path):
    """A script to launch instead of `-m bertkit` under `torchrun`: the same CLI, but rank 0 pauses 2 s before
    each write to stderr. A test of "rank 0 alone says why" then fails when another rank's early exit lets
    torchrun kill rank 0 before it has spoken (a race that a busy machine loses now and then)."""
    script = tmp_path / "slow_rank_0.py"
    script.write_text("import os, sys, time\n"
                      "class Slow:\n"
                      "    def __init__(self, f):\n"
                      "        self.f = f\n"
                      "    def write(self, text):\n"
                      "        time.sleep(2)\n"
                      "        return self.f.write(text)\n"
                      "    def __getattr__(self, name):\n"
                      "        return getattr(self.f, name)\n"
                      "if os.environ['RANK'] == '0':\n"
                      "    sys.stderr = Slow(sys.stderr)\n"
                      "from bertkit.cli import main\n"
                      "sys.exit(main(sys.argv[1:]))\n", encoding="utf-8")
    return script


@pytest.fixture
def drawn(monkeypatch):
    """The figures `figures.save` is given, laid out on the canvas and kept open to be measured (a figure saved and
    closed measures its texts at the savefig's resolution, not the canvas's)."""
    from bertkit import figures
    figs = []

    def keep(fig, path):
        fig.canvas.draw()
        figs.append(fig)
        return str(path)
    monkeypatch.setattr(figures, "save", keep)
    yield figs
    for fig in figs:
        figures.pyplot().close(fig)
