"""Checks of `bertkit` subcommands and the pre-training job that a mutation audit of bertkit/cli.py and
bertkit/tasks/pretrain.py found unpinned: flag bounds at their edges, defaults the help promises, exit codes and
the pre-training run's settings as the trainer receives them."""
import json

import pytest
import torch

from bertkit.cli import build_parser, main
from bertkit.tasks.pretrain import PretrainArgs

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the a of red green blue city king river what who color is was old new ?".split()


def _tiny_model(directory, head: str) -> None:
    """A random 1-layer model with `head` (a class of bertkit.modeling.heads) and a toy vocabulary, saved with its
    tokenizer: what `evaluate` / `predict` dispatch on."""
    from bertkit.config import BertConfig
    from bertkit.modeling import heads
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS)})
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=20, max_position_embeddings=64)
    getattr(heads, head)(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"bertkit {command}: error: "), err
    return err.removeprefix(f"bertkit {command}: error: ")


# ------------------------------------------------------------------------------------------- tokenizer train
@pytest.mark.parametrize("flags, said", [
    (["--vocab-size", "0"], "got 0 and 2"),            # the default --min-frequency is 2, as its help says
    (["--min-frequency", "-1"], "got 30522 and -1"),   # and the default --vocab-size BERT's 30522
])
def test_tokenizer_train_refuses_sizes_below_their_bounds(tmp_path, capsys, flags, said):
    (tmp_path / "c.txt").write_text("the red king\n" * 20)
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "c.txt"), "--output", str(tmp_path / "tok"),
                 *flags]) == 2
    assert _one_line_error(capsys, "tokenizer train") == (
        f"--vocab-size must be a positive integer and --min-frequency >= 0, {said}")
    assert not (tmp_path / "tok").exists()


def test_tokenizer_train_takes_a_min_frequency_of_0(tmp_path, capsys):
    """0 is the bound itself (every pair may merge), not below it."""
    (tmp_path / "c.txt").write_text("the red king of the old city\n" * 20)
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "c.txt"), "--output", str(tmp_path / "tok"),
                 "--vocab-size", "60", "--min-frequency", "0"]) == 0
    assert (tmp_path / "tok" / "vocab.txt").is_file()


# ------------------------------------------------------------------------------------------------------ plot
def _run_with_metrics(directory) -> None:
    from bertkit.train.tracking import Tracker
    tr = Tracker(directory, total_steps=2, progress=False)
    for step in (1, 2):
        tr.log(step, {"loss": 1.0 / step, "lr": 1e-4})
    tr.close()


def test_plot_takes_a_png_suffix_in_any_case_and_refuses_another(tmp_path, capsys):
    _run_with_metrics(tmp_path / "a")
    assert main(["plot", str(tmp_path / "a"), "--output", str(tmp_path / "Curves.PNG")]) == 0
    assert (tmp_path / "Curves.PNG").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "a"), "--output", str(tmp_path / "curves.jpg")]) == 2
    assert _one_line_error(capsys, "plot") == (
        f"--output {tmp_path / 'curves.jpg'}: the picture is a PNG; expected a name ending in .png")


# ----------------------------------------------------------------------------------------- evaluate, predict
def test_predict_refuses_a_max_seq_length_of_2(tmp_path, capsys):
    """3 is the least ([CLS], a token, [SEP]); 2 is below it."""
    _tiny_model(tmp_path / "m", "BertForQuestionAnswering")
    (tmp_path / "q.json").write_text('{"data": []}')
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "q.json"),
                 "--output", str(tmp_path / "p.json"), "--max-seq-length", "2"]) == 2
    assert _one_line_error(capsys, "predict") == "--max-seq-length must be at least 3 ([CLS], a token, [SEP]), got 2"


def test_a_qa_model_given_a_table_with_an_upper_case_suffix_is_told_it_reads_squad_json(tmp_path, capsys):
    _tiny_model(tmp_path / "m", "BertForQuestionAnswering")
    (tmp_path / "d.CSV").write_text("text\nthe king\n")
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.CSV"),
                 "--output", str(tmp_path / "p.json")]) == 2
    assert _one_line_error(capsys, "predict") == (
        f"{tmp_path / 'd.CSV'}: {tmp_path / 'm'} is a question answering model (BertForQuestionAnswering), which "
        "reads SQuAD JSON, not a CSV file")


# ------------------------------------------------------------------------------------------------- pretrain
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 documents of 6 sentences: enough to hold out every 20th."""
    import random
    words = "river stone cloud garden lamp window forest bridge engine letter market violin".split()
    rng = random.Random(0)
    docs = ["\n".join(f"The {rng.choice(words)} is near the {rng.choice(words)} and the {rng.choice(words)}."
                      for _ in range(6)) for _ in range(60)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def _pretrain_argv(corpus, out, *extra) -> list[str]:
    return ["pretrain", "--corpus", str(corpus), "--output", str(out), "--model-size", "tiny", "--vocab-size", "80",
            "--seq-len", "32", "--seed", "3", *extra]


class _Stop(Exception):
    """Raised by a stand-in Trainer: the set-up is done, no training needed."""


def test_the_trainer_gets_a_rounded_up_warmup_and_one_evaluation_at_the_end(corpus, tmp_path, monkeypatch):
    """--warmup-steps defaults to 10% of --max-steps rounded up (5 steps: 1, not 0), --eval-every 0 means one
    held-out evaluation at the last step; --cased trains a cased vocabulary."""
    from bertkit.tasks import pretrain as job
    seen = {}

    def trainer(objective, model, batches, cfg, **kwargs):
        seen["cfg"] = cfg
        raise _Stop
    monkeypatch.setattr(job, "Trainer", trainer)
    with pytest.raises(_Stop):
        main(_pretrain_argv(corpus, tmp_path / "run", "--max-steps", "5", "--batch-size", "4", "--cased"))
    cfg = seen["cfg"]
    assert (cfg.warmup_steps, cfg.eval_every, cfg.max_steps) == (1, 5, 5)
    saved = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer_config.json").read_text())
    assert saved["do_lower_case"] is False


def test_held_out_batches_are_global_batches_run_in_micro_batches(corpus, tmp_path, monkeypatch, capsys):
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
    assert main(_pretrain_argv(corpus, tmp_path / "run", "--max-steps", "1", "--batch-size", "2", "--grad-accum", "2",
                               "--eval-batches", "50", "--log-every", "1")) == 0
    out = capsys.readouterr().out
    heldout = len(PretrainingDataset(tmp_path / "run" / "data" / "heldout"))
    n_eval = heldout // min(4, heldout)
    assert f"held-out ({n_eval} batch{'es' * (n_eval != 1)})" in out and n_eval < 50
    assert cut and all(whole == min(4, heldout) and sum(sizes) == whole and max(sizes) <= 2
                       for sizes, whole in cut)
    assert len(cut) % n_eval == 0


def test_predict_and_evaluate_default_to_the_batch_size_their_help_gives():
    for command in ("predict", "evaluate"):
        parser = build_parser().commands[command]
        assert "(default 64)" in parser.format_help()
        assert parser.parse_args(["--model", "m", "--data", "d", "--output", "o"]).batch_size == 64


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


def test_the_model_pads_with_the_tokenizers_pad_id(tmp_path):
    """A given vocabulary whose [PAD] is not id 0: the model's pad_token_id follows it (the embeddings' padding
    row, and the attention mask of ids read back)."""
    from bertkit.tasks.pretrain import _model_config
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer({t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "."] + WORDS)})
    cfg = _model_config(PretrainArgs(tokenizer="given", seq_len=32), tok)
    assert (cfg.pad_token_id, cfg.vocab_size) == (4, len(tok))


def _heldout(unknown: int, of: int) -> list:
    """Held-out instances as PretrainingDataset gives them, (ids, token types, random next): one sequence of `of`
    real tokens (ids 5..), `unknown` of them [UNK] (id 1), between [CLS] (2) and [SEP] (3)."""
    ids = [2] + [1] * unknown + [5 + i for i in range(of - unknown)] + [3]
    return [(torch.tensor(ids), torch.zeros(len(ids), dtype=torch.long), False)]


@pytest.mark.parametrize("unknown, warned", [(3, True), (2, False)])
def test_held_out_text_a_quarter_unknown_is_warned_about(tmp_path, unknown, warned):
    import warnings

    from bertkit.tasks.pretrain import _check_heldout
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _check_heldout(_heldout(unknown, 10), tok, tmp_path)
    assert [str(w.message) for w in said] == ([
        f"{tmp_path}: {unknown / 10:.0%} of the held-out tokens are [UNK]: the vocabulary does not fit this text "
        "well (MLM never masks [UNK])"] if warned else [])


def test_an_empty_corpus_is_said_so_not_counted_as_too_few_documents(corpus, tmp_path, capsys):
    from bertkit.tokenizer import BertTokenizer
    BertTokenizer.train([str(corpus)], 80).save_pretrained(tmp_path / "tok")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(["pretrain", "--corpus", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "run"),
                 "--tokenizer", str(tmp_path / "tok"), "--seq-len", "32"]) == 2
    assert _one_line_error(capsys, "pretrain") == f"empty corpus: no text in {tmp_path / 'empty.txt'}"


def test_evaluate_version_2_with_negative_scores_v1_data_as_v2(tmp_path, capsys):
    """The flag reaches the QA job: v1.1 data scored as SQuAD v2.0 (HasAns_* metrics); without it, as v1.1."""
    _tiny_model(tmp_path / "m", "BertForQuestionAnswering")
    context = "the old king was red ."
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "who was red ?",
         "answers": [{"text": "the old king", "answer_start": 0}]}]}]}]}
    (tmp_path / "dev.json").write_text(json.dumps(squad))
    for flags, name in (([], "v1.json"), (["--version-2-with-negative"], "v2.json")):
        assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "dev.json"),
                     "--output", str(tmp_path / name), "--max-seq-length", "32", "--doc-stride", "8", *flags]) == 0
    assert "HasAns_total" not in json.loads((tmp_path / "v1.json").read_text())
    assert json.loads((tmp_path / "v2.json").read_text())["HasAns_total"] == 1


def test_predict_no_header_reads_the_first_row_as_a_text(tmp_path, capsys):
    """--no-header reaches the classifier's reader: every row is predicted, the first too, each with its line."""
    _tiny_model(tmp_path / "m", "BertForSequenceClassification")
    (tmp_path / "d.csv").write_text("the old king\nthe red city\nwho was new\n")
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.csv"),
                 "--output", str(tmp_path / "p.jsonl"), "--no-header", "--text-column", "0"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3] and all(set(r) == {"line", "label", "score"} for r in rows)
    # label and score: the arg-max class and its softmax probability, as transformers computes them
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        probs = ref(**tok(["the old king", "the red city", "who was new"], padding=True,
                          return_tensors="pt")).logits.softmax(-1)
    assert [r["label"] for r in rows] == [ref.config.id2label[int(i)] for i in probs.argmax(-1)]
    assert [r["score"] for r in rows] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_data_whose_source_predates_wrapped_is_reused_as_unwrapped(corpus, tmp_path, capsys):
    """data/source.json written before --wrapped existed lacks the key: it counts as the default (False), so the
    shards are reused, not rebuilt (minutes on a big corpus) nor refused on --resume."""
    from bertkit.tasks.pretrain import DATA_SOURCE, _prepare_data
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer.train([str(corpus)], 80)
    args = PretrainArgs(corpus=[str(corpus)], tokenizer="given", seq_len=32, seed=3, resume=True)
    run = tmp_path / "run"
    _prepare_data(args, run, tok)
    source = run / "data" / DATA_SOURCE
    old = json.loads(source.read_text())
    del old["wrapped"]
    source.write_text(json.dumps(old))
    capsys.readouterr()
    _prepare_data(args, run, tok)   # would raise "built from other input (wrapped differ)" on --resume
    assert capsys.readouterr().out == ""


def test_a_step_of_exactly_every_training_instance_is_taken(corpus, tmp_path, monkeypatch, capsys):
    """--batch-size x --grad-accum x processes may equal the training instances (one step, one pass); one more
    is refused, naming both numbers."""
    from bertkit.data.pretraining import PretrainingDataset
    from bertkit.tasks import pretrain as job
    from bertkit.tokenizer import BertTokenizer
    BertTokenizer.train([str(corpus)], 80).save_pretrained(tmp_path / "tok")
    tok = BertTokenizer.from_pretrained(tmp_path / "tok")
    job._prepare_data(PretrainArgs(corpus=[str(corpus)], tokenizer="given", seq_len=32, seed=3), tmp_path / "probe",
                      tok)
    n = len(PretrainingDataset(tmp_path / "probe" / "data" / "train"))
    monkeypatch.setattr(job, "plot_run", lambda run: str(run / "curves.png"))  # drawing is not tested here
    argv = ["pretrain", "--corpus", str(corpus), "--tokenizer", str(tmp_path / "tok"), "--model-size", "tiny",
            "--seq-len", "32", "--seed", "3", "--max-steps", "1", "--eval-batches", "1"]
    assert main([*argv, "--output", str(tmp_path / "run"), "--batch-size", str(n)]) == 0
    capsys.readouterr()
    assert main([*argv, "--output", str(tmp_path / "more"), "--batch-size", str(n + 1)]) == 2
    assert _one_line_error(capsys, "pretrain") == (
        f"--batch-size {n + 1} x --grad-accum 1 x 1 process(es) = {n + 1} sequences a step, more than the {n:,} "
        "training instances of the corpus")


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


def test_a_checkpoint_without_latest_still_needs_resume(corpus, tmp_path, monkeypatch, capsys):
    """A run killed between a checkpoint's rename and the write of `latest` holds a checkpoint all the same: a new
    run there without --resume is refused, not started over it."""
    from bertkit.tasks import pretrain as job
    monkeypatch.setattr(job, "plot_run", lambda run: str(run / "curves.png"))  # drawing is not tested here
    argv = _pretrain_argv(corpus, tmp_path / "run", "--max-steps", "2", "--save-every", "2", "--batch-size", "4",
                          "--eval-batches", "1")
    assert main(argv) == 0
    assert (tmp_path / "run" / "step-000002").is_dir()
    (tmp_path / "run" / "latest").unlink()
    capsys.readouterr()
    assert main(argv) == 2
    assert _one_line_error(capsys, "pretrain") == (
        f"{tmp_path / 'run'} already holds a run; pass --resume to continue it or choose another --output")
