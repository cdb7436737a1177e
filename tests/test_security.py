"""Untrusted inputs: loading never runs pickled code, names inside files never point outside their directory, and
small files cannot make bertkit allocate the sizes they claim. Each attack is a real crafted file."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from bertkit import AutoModel, BertConfig, tf_bundle
from bertkit.convert import convert
from bertkit.data.pretraining import FORMAT, PretrainingDataset
from bertkit.data.readers import read_squad
from bertkit.modeling import BertModel
from bertkit.train.checkpoint import load_training_state

GOOGLE = Path(__file__).parent / "fixtures" / "original" / "google"


class _Payload:
    """Unpickling it runs `touch <path>`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def model_dir(tmp_path):
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _one_line(e):
    assert "\n" not in str(e.value)
    return str(e.value)


def _pickled_model(tmp_path, model_dir, kind, marker):
    d = tmp_path / kind
    d.mkdir()
    shutil.copy(model_dir / "config.json", d / ("bert_config.json" if kind == "convert" else "config.json"))
    if kind == "bin":
        torch.save({"embeddings.word_embeddings.weight": _Payload(marker)}, d / "pytorch_model.bin")
    elif kind == "sharded_bin":
        torch.save({"w": _Payload(marker)}, d / "pytorch_model-00001-of-00001.bin")
        (d / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}}))
    elif kind == "convert":  # an NVIDIA training checkpoint: weights under "model", beside its optimizer
        torch.save({"model": {"w": _Payload(marker)}, "optimizer": _Payload(marker)}, d / "ckpt.pt")
    else:  # a training checkpoint directory's state, optimizer included
        torch.save({"step": 1, "optimizer": _Payload(marker)}, d / "training_state.pt")
    return d


@pytest.mark.parametrize("kind", ["bin", "sharded_bin", "convert", "training_state"])
def test_pickled_code_is_refused_on_every_loading_path(tmp_path, model_dir, kind):
    marker = tmp_path / f"pwned-{kind}"
    d = _pickled_model(tmp_path, model_dir, kind, marker)
    load = {"bin": lambda: AutoModel.from_pretrained(d), "sharded_bin": lambda: AutoModel.from_pretrained(d),
            "convert": lambda: convert(d, tmp_path / "out"), "training_state": lambda: load_training_state(d)}[kind]
    with pytest.raises(ValueError, match=r"refused to load: it pickles a posix\.system, which loading would have "
                                         r"to run") as e:
        load()
    _one_line(e)
    assert not marker.exists()
    torch.load(next(p for p in d.iterdir() if p.suffix in (".bin", ".pt")), weights_only=False)  # the payload
    assert marker.exists()                                                                        # is real


@pytest.mark.parametrize("shard", ["../victim/model.safetensors", "{victim}/model.safetensors"])
def test_a_shard_index_naming_a_file_elsewhere_is_refused(tmp_path, model_dir, shard):
    """transformers 5 loads the other directory's weights; bertkit names the entry instead."""
    victim = tmp_path / "victim"
    shutil.copytree(model_dir, victim)
    d = tmp_path / "crafted"
    d.mkdir()
    shutil.copy(model_dir / "config.json", d)
    shard = shard.format(victim=victim)
    keys = safetensors.torch.load_file(model_dir / "model.safetensors").keys()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in keys}}))
    with pytest.raises(ValueError) as e:
        AutoModel.from_pretrained(d)
    assert _one_line(e) == (f"{d / 'model.safetensors.index.json'}: weight_map names the shard {shard!r}; expected a "
                            f"file name in {d} (no path separators or '..')")


def test_a_safetensors_index_listing_a_pickle_is_refused(tmp_path, model_dir):
    d = tmp_path / "crafted"
    shutil.copytree(model_dir, d)
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    torch.save(safetensors.torch.load_file(d / "model-00001-of-00001.safetensors"), d / "weights.bin")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "weights.bin"}}))
    with pytest.raises(ValueError, match=r"names the shard 'weights\.bin'; a safetensors index lists \.safetensors "
                                         r"files only"):
        AutoModel.from_pretrained(d, use_safetensors=True)


@pytest.mark.parametrize("field, value, shape", [("vocab_size", 10**12, [10**12, 32]),
                                                 ("hidden_size", 2**20, [100, 2**20]),
                                                 ("intermediate_size", 10**11, [10**11, 32])])
def test_config_sizes_the_checkpoint_lacks_are_refused_before_the_model_is_allocated(tmp_path, model_dir, field,
                                                                                      value, shape):
    """10**12 rows of 32 floats are 128 TB: without the check the allocator fails (terabytes) or, for sizes within
    the machine's memory, fills it before the mis-shaped key is found."""
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, field: value}))
    key = "encoder.layer.0.intermediate.dense.weight" if field == "intermediate_size" else \
        "embeddings.word_embeddings.weight"
    held = [64, 32] if field == "intermediate_size" else [100, 32]
    with pytest.raises(ValueError) as e:
        AutoModel.from_pretrained(model_dir)
    assert _one_line(e) == (f"{model_dir / 'model.safetensors'}: mis-shaped key: {key} (checkpoint {held}, model "
                            f"{shape}): {field} {value} in {model_dir / 'config.json'}, not this checkpoint's config "
                            "(refused before building that model)")
    src = tmp_path / "original"
    src.mkdir()
    shutil.copy(model_dir / "model.safetensors", src)
    shutil.copy(model_dir / "config.json", src / "bert_config.json")
    with pytest.raises(ValueError, match=rf"mis-shaped key: {key} .*: {field} {value} in .*bert_config\.json, "):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_more_layers_than_the_checkpoint_holds_are_refused_before_building(tmp_path, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**7}))
    with pytest.raises(ValueError, match=r"model\.safetensors: 2 layers, but num_hidden_layers 10000000 in "
                                         r".*config\.json: not this checkpoint's config"):
        AutoModel.from_pretrained(model_dir)
    with pytest.raises(ValueError, match=r": vocab_size 5 in .*config\.json \(given\), not this checkpoint's"):
        AutoModel.from_pretrained(model_dir, vocab_size=5, num_hidden_layers=2)
    model = AutoModel.from_pretrained(model_dir, num_hidden_layers=2)
    assert len(model.encoder.layer) == 2


def test_num_labels_in_a_tiny_config_cannot_ask_for_gigabytes(tmp_path):
    """transformers builds LABEL_0..LABEL_{n-1} for any n: 10**9 would be about 190 GB of names."""
    path = tmp_path / "config.json"
    path.write_text('{"num_labels": 1000000000}')
    with pytest.raises(ValueError) as e:
        BertConfig.from_json_file(path)
    assert _one_line(e) == (f"{path}: BertConfig field 'num_labels' must be an integer from 1 to 1,000,000, "
                            "got 1000000000")
    assert BertConfig(num_labels=5).label_names()[-1] == "LABEL_4"


def test_a_tensorflow_variable_claiming_more_bytes_than_its_data_file_is_refused_before_reading():
    """A 4 TB claim was a bare MemoryError (the read buffer), with no file named."""
    num_shards, entries = tf_bundle.read_index(GOOGLE / "bert_model.ckpt")
    name = "bert/pooler/dense/bias"
    huge = {**entries[name], "shape": (10**6, 10**6), "size": 4 * 10**12}
    with pytest.raises(ValueError) as e:
        tf_bundle.read_variables(GOOGLE / "bert_model.ckpt", num_shards, {name: huge})
    assert _one_line(e) == f"{GOOGLE / 'bert_model.ckpt'}.data-00000-of-00001: variable {name!r} runs past the end " \
                           "of the file"


@pytest.mark.parametrize("pointer", ["{elsewhere}/bert_model.ckpt", "../elsewhere/bert_model.ckpt"])
def test_a_tensorflow_checkpoint_file_names_a_checkpoint_inside_its_directory(tmp_path, pointer):
    """Its model_checkpoint_path is read as a name in the directory: a path elsewhere reads nothing there."""
    elsewhere, run = tmp_path / "elsewhere", tmp_path / "run"
    shutil.copytree(GOOGLE, elsewhere)
    run.mkdir()
    shutil.copy(GOOGLE / "bert_config.json", run)
    (run / "checkpoint").write_text(f'model_checkpoint_path: "{pointer.format(elsewhere=elsewhere)}"\n')
    with pytest.raises(FileNotFoundError, match=r"run/bert_model\.ckpt\.index"):
        convert(run, tmp_path / "out")
    for suffix in (".index", ".data-00000-of-00001"):  # moved beside it, as after a copy off the training machine
        shutil.copy(elsewhere / ("bert_model.ckpt" + suffix), run)
    assert convert(run, tmp_path / "out").source == str(run / "bert_model.ckpt.index")


def _pretraining_dir(tmp_path, shards_dir=None, name="shard_00000"):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    where = shards_dir or data
    where.mkdir(exist_ok=True)
    arrays = {"tokens": np.array([2, 5, 3, 6, 3], np.uint16), "offsets": np.array([0, 5], np.int64),
              "a_lengths": np.array([1], np.int32), "is_random_next": np.array([0], np.uint8)}
    for key, a in arrays.items():
        np.save(where / f"shard_00000.{key}.npy", a)
    meta = {"format": FORMAT, "version": 1, "vocab_size": 100, "max_seq_length": 8,
            "shards": [{"name": name, "num_instances": 1, "num_tokens": 5}]}
    (data / "meta.json").write_text(json.dumps(meta))
    return data


@pytest.mark.parametrize("name", ["../elsewhere/shard_00000", "{elsewhere}/shard_00000"])
def test_pretraining_shard_names_stay_inside_the_data_directory(tmp_path, name):
    elsewhere = tmp_path / "elsewhere"  # the shard files are there, not in the data directory
    name = name.format(elsewhere=elsewhere)
    data = _pretraining_dir(tmp_path, elsewhere, name)
    with pytest.raises(ValueError) as e:
        PretrainingDataset(data)
    assert _one_line(e) == (f"{data / 'meta.json'}: not a valid pre-training meta.json (shard name {name!r} is not "
                            "a file name inside the data directory)")


@pytest.mark.parametrize("text, why", [("[1, 2]", "expected a JSON object, got list"),
                                       ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply")])
def test_a_pretraining_meta_json_that_is_not_an_object_is_one_line(tmp_path, text, why):
    data = _pretraining_dir(tmp_path)
    assert len(PretrainingDataset(data)) == 1
    (data / "meta.json").write_text(text)
    with pytest.raises(ValueError) as e:
        PretrainingDataset(data)
    assert _one_line(e) == f"{data / 'meta.json'}: not a valid pre-training meta.json ({why})"


def test_a_pickled_shard_array_is_refused(tmp_path):
    data = _pretraining_dir(tmp_path)
    marker = tmp_path / "pwned-npy"
    np.save(data / "shard_00000.tokens.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"shard_00000\.tokens\.npy: unreadable shard file") as e:
        PretrainingDataset(data)
    _one_line(e)
    assert not marker.exists()


@pytest.mark.parametrize("arch", ["bert", "heads", "BertPreTrainedModel"])
def test_export_takes_only_a_model_class_from_config_architectures(tmp_path, model_dir, arch):
    """config.json's name is looked up in bertkit.modeling: a submodule or the base class was an AttributeError
    from deep inside the export."""
    pytest.importorskip("onnxruntime")
    from bertkit.export import export_onnx
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "architectures": [arch]}))
    with pytest.raises(ValueError, match=rf"config\.json names the architecture '{arch}', which bertkit does not "
                                         r"build \(expected one of BertModel, BertForPreTraining, "):
        export_onnx(model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_json_nested_thousands_deep_is_one_line_naming_the_file(tmp_path):
    """A config.json (or tokenizer_config.json, an index...) of brackets nested 100,000 deep: json's parser raises
    RecursionError, which named nothing and reached the command line as a traceback."""
    from bertkit.io import read_json
    path = tmp_path / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError) as e:
        read_json(path)
    assert _one_line(e) == f"{path}: not valid JSON (nested too deeply)"
    squad = tmp_path / "s.json"
    squad.write_text('{"data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError) as e:
        read_squad(squad)
    assert _one_line(e) == f"{squad}: bad JSON (nested too deeply)"


def test_a_zipped_squad_file_saying_gigabytes_is_refused_before_reading(tmp_path, monkeypatch):
    """A zip bomb: gigabytes of spaces compress to a few megabytes, and the member's JSON would be read whole into
    memory. The limit (1 GiB) made 1 MiB here, so that the test writes 2 MiB, not 2 GiB."""
    import zipfile

    from bertkit.data import readers
    monkeypatch.setattr(readers, "MAX_ZIPPED_JSON", 1 << 20)
    path = tmp_path / "squad.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dev.json", b" " * (2 << 20))
    assert path.stat().st_size < 10_000
    with pytest.raises(ValueError) as e:
        read_squad(path)
    assert _one_line(e) == (f"{path}!dev.json: 2,097,152 bytes uncompressed, more than a SQuAD file holds "
                            f"(at most 1,048,576 read from a zip)")
