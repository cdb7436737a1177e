"""`finetune ... --resume`: a fine-tuning run interrupted mid-way and resumed ends bit for bit where an
uninterrupted run ends (weights, best/, eval_results.json, dev metrics), and finished seeds are skipped."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_classify import finetune, toy  # noqa: F401  (toy is the module's fixture too)

from bertkit.cli import main
from bertkit.tasks.classify import ClassificationBatches
from bertkit.train.checkpoint import list_checkpoints
from bertkit.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ("--max-steps", "20", "--eval-every", "5")


def interrupt(monkeypatch, where: str, at: int):
    """Make the run fail: at the `at`-th training batch ("batches"), or in the checkpoint save of step `at` right
    after its evaluation has written best/ ("save")."""
    if where == "batches":
        calls = {"n": 0}
        collate = ClassificationBatches.collate

        def failing(self, features):
            calls["n"] += 1
            if calls["n"] == at:
                raise RuntimeError("injected failure in the batch source")
            return collate(self, features)
        monkeypatch.setattr(ClassificationBatches, "collate", failing)
    else:
        save = Trainer.save

        def failing(self, step=None):
            if self.step == at:
                raise RuntimeError("injected failure before the checkpoint")
            return save(self, step)
        monkeypatch.setattr(Trainer, "save", failing)


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def assert_same_run(a, b):
    assert json.loads((a / "eval_results.json").read_text()) == json.loads((b / "eval_results.json").read_text())
    for wa, wb in [(weights(a / "best"), weights(b / "best")),
                   (weights(list_checkpoints(a)[-1][1]), weights(list_checkpoints(b)[-1][1]))]:
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    def evals(run):
        return [{k: v for k, v in json.loads(line).items()}
                for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals(a) == evals(b)


@pytest.fixture(scope="module")
def uninterrupted(toy):  # noqa: F811
    out = toy["dir"] / "resume-ref"
    assert finetune(toy, out, *RUN, "--seed", "4") == 0
    return out


@pytest.mark.parametrize("where, at", [("batches", 13), ("save", 10)])
def test_an_interrupted_run_resumes_to_the_same_weights_and_results(toy, uninterrupted, tmp_path, monkeypatch,  # noqa: F811
                                                                    where, at, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt(m, where, at)
        with pytest.raises(RuntimeError, match="injected"):
            finetune(toy, out, *RUN, "--seed", "4")
    assert not (out / "eval_results.json").exists()
    assert [s for s, _ in list_checkpoints(out)] == [10 if where == "batches" else 5]
    assert finetune(toy, out, *RUN, "--seed", "4", "--resume") == 0
    assert f"(step {10 if where == 'batches' else 5})" in capsys.readouterr().out
    assert [s for s, _ in list_checkpoints(out)] == [20]  # keep-last: only the newest
    assert_same_run(out, uninterrupted)
    # resuming a finished run changes nothing
    before = (out / "eval_results.json").read_text()
    assert finetune(toy, out, *RUN, "--seed", "4", "--resume") == 0
    assert (out / "eval_results.json").read_text() == before and "the run is complete" in capsys.readouterr().out
    # ...and asking it for more steps is refused, not silently a no-op
    assert finetune(toy, out, "--max-steps", "30", "--eval-every", "5", "--seed", "4", "--resume") == 2
    assert capsys.readouterr().err == (f"bertkit finetune classify: error: {out / 'eval_results.json'}: the run "
                                       "finished after 20 steps; --max-steps 30 would extend it, which a finished "
                                       "run cannot be (its learning rate has decayed to 0): start a new run\n")
    assert (out / "eval_results.json").read_text() == before


def test_seeds_resume_skips_finished_seeds(toy, tmp_path, monkeypatch, capsys):  # noqa: F811
    ref, out = tmp_path / "ref", tmp_path / "run"
    seeds = ("--max-steps", "10", "--eval-every", "5", "--seeds", "1,2")
    assert finetune(toy, ref, *seeds) == 0
    with monkeypatch.context() as m:
        interrupt(m, "batches", 10 + 7)  # seed 1 takes 10 batches; fail in seed 2's step 7
        with pytest.raises(RuntimeError, match="injected"):
            finetune(toy, out, *seeds)
    done = (out / "seed-1" / "eval_results.json").stat().st_mtime_ns
    assert not (out / "seed-2" / "eval_results.json").exists()
    capsys.readouterr()
    assert finetune(toy, out, *seeds, "--resume") == 0
    printed = capsys.readouterr().out
    assert "seed 1: complete (resume)" in printed and "resume: " in printed
    assert (out / "seed-1" / "eval_results.json").stat().st_mtime_ns == done
    assert json.loads((out / "eval_results.json").read_text()) == json.loads((ref / "eval_results.json").read_text())
    assert_same_run(out / "seed-2", ref / "seed-2")


def test_a_fresh_run_refuses_a_finished_one(toy, tmp_path, capsys):  # noqa: F811
    """Its best model and results would go: refused, as pre-training refuses a directory that holds a run."""
    out = tmp_path / "run"
    assert finetune(toy, out, "--max-steps", "10", "--eval-every", "5") == 0
    before = (out / "eval_results.json").read_text()
    capsys.readouterr()
    assert finetune(toy, out, "--max-steps", "5", "--eval-every", "5") == 2  # not --resume
    assert capsys.readouterr().err == (f"bertkit finetune classify: error: {out} holds a finished run "
                                       "(eval_results.json, best/); choose another --output, or remove it to start "
                                       "over\n")
    assert [s for s, _ in list_checkpoints(out)] == [10] and (out / "eval_results.json").read_text() == before
    # a best/ with no run around it (killed before its first checkpoint) is removed by a fresh run, unless it
    # holds files no run writes: the user's, kept
    mine = tmp_path / "mine"
    (mine / "best").mkdir(parents=True)
    (mine / "best" / "notes.txt").write_text("keep me")
    (mine / "best" / "config.json").write_text("{}")
    assert finetune(toy, mine, "--max-steps", "5", "--eval-every", "5") == 2
    assert capsys.readouterr().err.endswith(f"{mine / 'best'} holds files a fine-tuning run does not write "
                                            "(notes.txt), and it would remove them; choose another --output\n")
    assert (mine / "best" / "notes.txt").read_text() == "keep me"


def test_a_sigkilled_process_resumes_to_the_same_weights_and_results(toy, tmp_path):  # noqa: F811
    """A real `kill -9` of `python -m bertkit finetune classify` after its first checkpoint, then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = ["--max-steps", "120", "--eval-every", "10", "--seed", "5", "--batch-size", "16", "--lr", "1e-2",
            "--max-seq-length", "16", "--model", str(toy["encoder"]), "--train", str(toy["train"]),
            "--dev", str(toy["dev"])]

    def run(out, *extra):
        return subprocess.Popen([sys.executable, "-m", "bertkit", "finetune", "classify", *args, "--output",
                                 str(out), *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ref, out = tmp_path / "ref", tmp_path / "run"
    proc = run(out)
    deadline = time.monotonic() + 120
    while not list_checkpoints(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "eval_results.json").exists()
    killed_at = list_checkpoints(out)[-1][0]
    assert killed_at < 120
    for p in (run(out, "--resume"), run(ref)):
        assert p.wait() == 0, p.stderr.read().decode()
    assert_same_run(out, ref)


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_an_unfinished_one(toy, tmp_path, monkeypatch,  # noqa: F811
                                                                                 capsys):
    """--resume continues the run as it started: another --lr (which the optimizer's saved state would silently
    override), --seed or training file is refused by name, before anything is written; more steps are allowed.
    And a fresh run does not delete an unfinished run's checkpoints."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt(m, "batches", 8)
        with pytest.raises(RuntimeError, match="injected failure"):
            finetune(toy, out, "--max-steps", "10", "--eval-every", "5", "--seed", "4")
    assert [s for s, _ in list_checkpoints(out)] == [5]
    assert {"vocab.txt", "tokenizer.json"} <= {p.name for p in (out / "step-000005").iterdir()}  # loads on its own
    args_before = (out / "finetune_args.json").read_text()
    capsys.readouterr()
    assert finetune(toy, out, "--max-steps", "10", "--eval-every", "5", "--seed", "9", "--lr", "0.1",
                    "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"bertkit finetune classify: error: {out / 'finetune_args.json'}")
    assert "--lr 0.1 (the run's: 0.01), --seed 9 (the run's: 4)" in err
    assert (out / "finetune_args.json").read_text() == args_before
    assert finetune(toy, out, "--max-steps", "10", "--eval-every", "5", "--seed", "4", train="dev", dev="dev",
                    ) == 2  # not --resume: the unfinished run stays
    assert "holds an unfinished run (its newest checkpoint is" in capsys.readouterr().err
    assert [s for s, _ in list_checkpoints(out)] == [5]
    first = tmp_path / "first"   # a first run given --resume (a preemptible job's script) records its settings
    assert finetune(toy, first, "--max-steps", "2", "--seed", "4", "--resume") == 0
    assert json.loads((first / "finetune_args.json").read_text())["seed"] == 4
    capsys.readouterr()
    assert finetune(toy, first, "--max-steps", "4", "--seed", "5", "--resume") == 2
    assert "these differ: --seed 5 (the run's: 4)" in capsys.readouterr().err
    other = tmp_path / "pretrained"   # a pre-training run's directory: not a run --resume could continue
    shutil.copytree(out, other)
    (other / "step-000005" / "best_state.json").unlink()
    (other / "pretrain_args.json").write_text("{}")
    assert finetune(toy, other, "--max-steps", "10", "--eval-every", "5", "--seed", "4") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{other} holds a pre-training run (its checkpoint {other / 'step-000005'} was not written "
                        "by fine-tuning); choose another --output (to fine-tune that model, give its directory as "
                        "--model)") and len(err.splitlines()) == 1
    assert finetune(toy, out, "--max-steps", "15", "--eval-every", "5", "--seed", "4", "--resume") == 0
    printed = capsys.readouterr().out
    assert (f"resume: the learning-rate schedule changes (max_steps 10 -> 15, warmup_steps 1 -> 2): the run goes "
            f"on from {out}") in printed  # --warmup 0.1 of 15 steps rounds up, as transformers'
    results = json.loads((out / "eval_results.json").read_text())
    assert results["max_steps"] == 15 and results["best_step"] in (5, 10, 15)


def ctrl_c(monkeypatch, at: int):
    """Ctrl-C at the `at`-th training batch."""
    calls = {"n": 0}
    collate = ClassificationBatches.collate

    def interrupted(self, features):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return collate(self, features)
    monkeypatch.setattr(ClassificationBatches, "collate", interrupted)


@pytest.mark.parametrize("failure", ["bad data", "no weights", "ctrl-c", "ctrl-c in seed 1"])
def test_a_first_run_failing_before_its_first_checkpoint_leaves_no_directory(toy, tmp_path, monkeypatch,  # noqa: F811
                                                                            failure, capsys):
    """A first run that fails before any checkpoint removes the directory it made (as `pretrain` does), so the
    same command, fixed, runs as a first run; and a --resume of it (a preemptible job's script passes it every
    time) is not bound by the settings of the attempt that failed."""
    out, data, model = tmp_path / "run", tmp_path / "data", tmp_path / "model"
    data.mkdir()
    shutil.copytree(toy["encoder"], model)
    train = data / "train.tsv"
    shutil.copy(toy["train"], train)
    seeds = ("--seeds", "1,2") if "seed" in failure else ()

    def run(*extra):
        return main(["finetune", "classify", "--model", str(model), "--train", str(train), "--dev", str(toy["dev"]),
                     "--output", str(out), "--batch-size", "16", "--lr", "1e-2", "--max-seq-length", "16",
                     "--max-steps", "10", "--eval-every", "5", *seeds, *extra])
    if failure == "bad data":
        train.write_text(train.read_text() + "a row without its label\n")
        assert run() == 2
        assert f"{train}:82: expected 2 tab-separated fields" in capsys.readouterr().err
        shutil.copy(toy["train"], train)
    elif failure == "no weights":
        (model / "model.safetensors").rename(tmp_path / "weights")
        assert run() == 2
        assert capsys.readouterr().err.endswith(f"error: {model}: no weights file; expected one of model.safetensors, "
                                                "model.safetensors.index.json, pytorch_model.bin, "
                                                "pytorch_model.bin.index.json\n")
        (tmp_path / "weights").rename(model / "model.safetensors")
    else:
        with monkeypatch.context() as m:
            ctrl_c(m, 3)
            assert run() == 130
    assert not out.exists()
    assert run() == 0   # the same command, not --resume
    assert json.loads((out / "eval_results.json").read_text())["metric"] == "accuracy"
    # a --resume after a failed first attempt starts afresh, with the settings it is given
    shutil.rmtree(out)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "__init__", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no memory")))
        with pytest.raises(RuntimeError, match="no memory"):
            run("--lr", "1e-3")
    assert not out.exists()
    out.mkdir()   # as a killed (SIGKILL) attempt leaves it: its finetune_args.json, with other settings
    (out / "finetune_args.json").write_text(json.dumps({"lr": 1e-3, "seed": 7}))
    assert run("--resume") == 0
    assert "resume: no checkpoint in" in capsys.readouterr().out
    assert json.loads((out / "finetune_args.json").read_text())["lr"] == 1e-2


def test_a_failure_keeps_a_directory_with_a_checkpoint_or_made_by_the_user(toy, tmp_path, monkeypatch,  # noqa: F811
                                                                           capsys):
    """Only a directory the failed run made and that holds no checkpoint goes: seed 1's finished run keeps its
    directory when seed 2 fails before its own first checkpoint (and --resume finishes the job), and a directory
    the user made is kept with their files."""
    ref, out, mine = tmp_path / "ref", tmp_path / "run", tmp_path / "mine"
    seeds = ("--max-steps", "10", "--eval-every", "5", "--seeds", "1,2")
    assert finetune(toy, ref, *seeds) == 0
    with monkeypatch.context() as m:
        ctrl_c(m, 10 + 3)  # seed 1 takes 10 batches; stop seed 2 before its first checkpoint (step 5)
        assert finetune(toy, out, *seeds) == 130
    assert [s for s, _ in list_checkpoints(out / "seed-1")] == [10] and not list_checkpoints(out / "seed-2")
    assert finetune(toy, out, *seeds, "--resume") == 0
    assert json.loads((out / "eval_results.json").read_text()) == json.loads((ref / "eval_results.json").read_text())
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for steps in (("--max-steps", "10", "--eval-every", "5"), seeds):
        with monkeypatch.context() as m:
            ctrl_c(m, 2)
            assert finetune(toy, mine, *steps) == 130
        assert (mine / "notes.txt").read_text() == "keep me"


def test_resume_refuses_training_or_dev_data_changed_since_the_run_started(toy, tmp_path, monkeypatch,  # noqa: F811
                                                                         capsys):
    """The checkpoint's data position and best-so-far dev metric refer to the files the run started on: a resume
    on an edited --train or --dev would silently continue on other data. Refused, naming the file."""
    out, train = tmp_path / "run", tmp_path / "train.tsv"
    shutil.copy(toy["train"], train)
    toy = {**toy, "mine": train}
    with monkeypatch.context() as m:
        interrupt(m, "batches", 8)
        with pytest.raises(RuntimeError, match="injected"):
            finetune(toy, out, "--max-steps", "10", "--eval-every", "5", train="mine")
    args_before = (out / "finetune_args.json").read_text()
    train.write_text(train.read_text().replace("\tpos\n", "\tneg\n", 1))  # one label fixed: same size
    capsys.readouterr()
    assert finetune(toy, out, "--max-steps", "10", "--eval-every", "5", "--resume", train="mine") == 2
    assert capsys.readouterr().err == (f"bertkit finetune classify: error: {out / 'finetune_args.json'}: --train "
                                       f"{train} changed since the run started (size or content); --resume "
                                       "continues the run on the data it started with. Start a new run (another "
                                       "--output) to train on the new data\n")
    assert (out / "finetune_args.json").read_text() == args_before
    assert [s for s, _ in list_checkpoints(out)] == [5]
    # the data it started on, moved elsewhere: the same data (compared by content, as pretrain's corpus)
    moved = tmp_path / "elsewhere" / "train.tsv"
    moved.parent.mkdir()
    shutil.copy(toy["train"], moved)
    assert finetune({**toy, "moved": moved}, out, "--max-steps", "10", "--eval-every", "5", "--resume",
                    train="moved") == 0
    assert [s for s, _ in list_checkpoints(out)][-1] == 10


def test_an_output_that_is_a_file_fails_before_the_data_is_read(toy, tmp_path, capsys):  # noqa: F811
    (tmp_path / "afile").write_text("mine")
    assert main(["finetune", "classify", "--model", str(toy["encoder"]), "--train", str(tmp_path / "nope.tsv"),
                 "--dev", str(tmp_path / "nope.tsv"), "--output", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err == f"bertkit finetune classify: error: {tmp_path / 'afile'}: Not a directory\n"
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_second_job_in_a_running_jobs_directory_is_refused_and_changes_nothing(toy, tmp_path, capsys,  # noqa: F811
                                                                                   another_job):
    """As another process training there holds the lock: refused before writing, and the directory (which the
    refused job saw missing, were the other job just starting) is not removed."""
    out = tmp_path / "run"
    with another_job(out):
        assert finetune(toy, out, "--max-steps", "5") == 2
    assert capsys.readouterr().err == (f"bertkit finetune classify: error: {out}: another process is training "
                                       "there (pid 4242); let it finish or stop it first\n")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_resume_may_add_seeds_but_not_drop_or_replace_them(toy, tmp_path, capsys):  # noqa: F811
    """--seeds on --resume: another list would silently average other runs than the directory's (seed 2 dropped,
    seed 3 in its place), and no --seeds would read the per-seed summary as one run's results. Refused by name, as
    other settings are; added seeds run (the finished ones are skipped) and are recorded, so that a later resume
    cannot drop them; a single run is not turned into one per seed."""
    out, single = tmp_path / "run", tmp_path / "single"
    short = ("--max-steps", "5", "--eval-every", "5")
    assert finetune(toy, out, *short, "--seeds", "1,2") == 0
    before = json.loads((out / "eval_results.json").read_text())
    capsys.readouterr()

    def refused(run, given, saved):
        return (f"bertkit finetune classify: error: {run / 'finetune_args.json'}: --resume continues the run with the "
                f"seeds it started with: --seeds {given} (the run's: {saved}); seeds may be added, not dropped or "
                "replaced. Start a new run (another --output) to change them\n")
    assert finetune(toy, out, *short, "--seeds", "1,3", "--resume") == 2
    assert capsys.readouterr().err == refused(out, "'1,3'", "'1,2'")
    assert finetune(toy, out, *short, "--resume") == 2
    assert capsys.readouterr().err == refused(out, "none (one run, --seed)", "'1,2'")
    assert json.loads((out / "eval_results.json").read_text()) == before and not (out / "seed-3").exists()
    assert finetune(toy, out, *short, "--seeds", "1,2,3", "--resume") == 0
    assert "seed 1: complete (resume)" in capsys.readouterr().out
    after = json.loads((out / "eval_results.json").read_text())
    assert after["seeds"] == [1, 2, 3] and {k: after["per_seed"][k] for k in ("1", "2")} == before["per_seed"]
    assert json.loads((out / "finetune_args.json").read_text())["seeds"] == "1,2,3"
    assert finetune(toy, out, *short, "--seeds", "1,2", "--resume") == 2
    assert capsys.readouterr().err == refused(out, "'1,2'", "'1,2,3'")
    assert finetune(toy, single, *short, "--seed", "1") == 0
    capsys.readouterr()
    assert finetune(toy, single, *short, "--seed", "1", "--seeds", "1,2", "--resume") == 2
    assert capsys.readouterr().err == refused(single, "'1,2'", "none (one run, --seed)")
    assert not (single / "seed-1").exists()
