"""Behaviour of convert.py, export.py and tf_bundle.py that a mutation audit found no test pinned: the checkpoint's
head -> class rule, NVIDIA's padded vocabulary, the tokenizer of a bare vocab.txt, the TensorFlow training-state
names, the TF bundle's dtypes and damaged-file errors, and the ONNX export's outputs and check."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from bertkit import BertConfig, BertTokenizer, modeling, tf_bundle
from bertkit.convert import TF_TRAINING_STATE, architecture, convert, vocab_is_cased

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures" / "original"
GOOGLE = FIXTURES / "google"
TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32)


# --- convert.py ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ["BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
                                 "BertForQuestionAnswering", "BertModel"])
def test_the_class_guessed_from_a_transformers_state_dict_is_its_own(cls):
    """Each head's keys, as transformers names them, point to its class: NSP alone is not pre-training."""
    torch.manual_seed(0)
    hf = getattr(transformers, cls)(transformers.BertConfig(vocab_size=40, **TINY))
    assert architecture(hf.state_dict()) == cls


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


@pytest.mark.parametrize("name", ["beta1_power", "beta2_power", "bert/pooler/dense/kernel/Momentum",
                                  "current_loss_scale", "good_steps", "bad_steps", "loss_scale"])
def test_optimizer_and_loss_scaling_variables_are_training_state(name):
    """tf.train.AdamOptimizer's beta powers, MomentumOptimizer's slots and NVIDIA's AMP loss-scaling counters are
    left out of the weights (transformers' TensorFlow loader skips the same), not refused as unknown."""
    assert TF_TRAINING_STATE.search(name)
    assert not TF_TRAINING_STATE.search(name.replace("_", "") + "x")


def test_an_index_file_given_by_name_converts(tmp_path):
    done = convert(GOOGLE / "bert_model.ckpt.index", tmp_path / "out")
    assert done.source == str(GOOGLE / "bert_model.ckpt.index") and done.num_weights == 46


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


@pytest.mark.parametrize("pointer", [".", "..", "/data/run/.."])
def test_a_checkpoint_file_naming_a_directory_is_one_line(tmp_path, pointer):
    run = tmp_path / "run"
    shutil.copytree(GOOGLE, run)
    (run / "checkpoint").write_text(f'model_checkpoint_path: "{pointer}"\n')
    with pytest.raises(ValueError) as e:
        convert(run, tmp_path / "out")
    assert str(e.value) == f"{run / 'checkpoint'}: model_checkpoint_path {pointer!r} names no checkpoint"


# --- tf_bundle.py -------------------------------------------------------------------------------------------------

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


# --- export.py ----------------------------------------------------------------------------------------------------

EXPORT_CONFIG = dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32)


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


def test_two_missing_onnx_packages_are_named_in_the_plural(tmp_path, monkeypatch):
    from bertkit import export
    monkeypatch.setattr(export, "_missing_packages", lambda: ["onnx", "onnxruntime"])
    with pytest.raises(ValueError) as e:
        export.export_onnx(tmp_path / "m", tmp_path / "onnx")
    assert str(e.value) == ("ONNX export needs the onnx and onnxruntime packages: pip install onnx onnxscript "
                            "onnxruntime (bertkit's [onnx] extra)")


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
