"""Behaviour of bertkit.hub and bertkit.io that a mutation audit found no test pinning: each test here failed on a
plausible one-line bug (a mutant) that the rest of the suite let pass."""
import json
import os
from pathlib import Path

import pytest
import torch

from bertkit import hub, modeling
from bertkit.config import CONFIG_NAME, BertConfig

from tests import test_hub

TINY = dict(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
CONFIG_BYTES = json.dumps(BertConfig(**TINY).to_dict()).encode()
homes = test_hub.homes  # the fixture: caches in tmp_path


def snapshot(hub_dir, repo, commit, files):
    """One cached snapshot, laid out as huggingface_hub lays it out (plain files suffice here)."""
    snap = hub_dir / ("models--" + repo.replace("/", "--")) / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


# ---------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------

def test_a_hash_prefix_shorter_than_seven_is_not_a_revision(homes):
    """A revision counts as a commit-hash prefix from 7 hex characters (git's shortest abbreviation): a shorter
    one that happens to prefix a cached snapshot (and names no ref) is not found, not guessed."""
    commit = "abcd" + "e" * 36
    snap = snapshot(homes / "hub", "acme/short", commit, {CONFIG_NAME: CONFIG_BYTES})
    assert hub.resolve_model_dir("acme/short", revision=commit[:7]) == str(snap)
    for short in (commit[:4], commit[:6]):
        with pytest.raises(FileNotFoundError, match=rf"^model 'acme/short': revision '{short}' is not in the hub "
                                                    r"cache .*cached snapshots: " + commit + "$"):
            hub.resolve_model_dir("acme/short", revision=short)


def test_a_bertkit_home_folder_without_the_files_falls_through_to_the_hub_cache(homes):
    """$BERTKIT_HOME/<name> counts only when it holds a required file: a leftover folder (a README, a tokenizer
    alone) does not hide the model cached in the hub cache."""
    (homes / "bertkit" / "acme" / "bert").mkdir(parents=True)
    (homes / "bertkit" / "acme" / "bert" / "README.md").write_text("notes")
    snap = snapshot(homes / "hub", "acme/bert", "a" * 40, {CONFIG_NAME: CONFIG_BYTES})
    (homes / "hub" / "models--acme--bert" / "refs").mkdir()
    (homes / "hub" / "models--acme--bert" / "refs" / "main").write_text("a" * 40)
    assert hub.resolve_model_dir("acme/bert") == str(snap)


# ---------------------------------------------------------------------------------------------
# Reading weights
# ---------------------------------------------------------------------------------------------

def tiny_model():
    torch.manual_seed(0)
    return modeling.BertModel(BertConfig(**TINY))


def test_a_training_checkpoint_loads_its_model_entry(tmp_path):
    """An NVIDIA DeepLearningExamples training checkpoint keeps the weights under "model" beside the optimizer's
    state: loading reads that entry, every tensor as stored."""
    model = tiny_model()
    state = hub.state_dict_for_saving(model)
    BertConfig(**TINY).save_pretrained(tmp_path)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
               tmp_path / hub.PT_WEIGHTS_NAME)
    assert set(hub.load_state_dict(tmp_path)) == set(state)
    loaded = modeling.BertModel.from_pretrained(tmp_path)
    assert loaded.load_report.clean
    for name, t in loaded.state_dict().items():
        if name in state:
            assert torch.equal(t, state[name]), name


def test_an_index_naming_tensors_its_shards_lack_is_refused(tmp_path):
    """A shard index that lists a tensor none of its shards holds (a shard from another save) is a ValueError
    naming the index and the tensor, not a load that silently lacks it."""
    tiny_model().save_pretrained(tmp_path, max_shard_size=2000)
    index_path = tmp_path / hub.SAFE_WEIGHTS_INDEX_NAME
    index = json.loads(index_path.read_text())
    assert len(set(index["weight_map"].values())) > 1
    index["weight_map"]["encoder.layer.0.output.extra"] = next(iter(index["weight_map"].values()))
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError) as e:
        hub.load_state_dict(tmp_path)
    assert str(e.value) == f"{index_path}: 1 indexed tensors absent from the shards: encoder.layer.0.output.extra"


def test_a_config_with_more_layers_than_the_weights_is_refused_before_building(tmp_path):
    """config.json saying 2 layers beside 1-layer weights: refused by the size check, before the model is built,
    with the counts from each side."""
    tiny_model().save_pretrained(tmp_path)
    BertConfig(**{**TINY, "num_hidden_layers": 2}).save_pretrained(tmp_path)
    weights = tmp_path / hub.SAFE_WEIGHTS_NAME
    with pytest.raises(ValueError) as e:
        modeling.BertModel.from_pretrained(tmp_path)
    assert str(e.value) == (f"{weights}: 1 layers, but num_hidden_layers 2 in {tmp_path / CONFIG_NAME}: not this "
                            "checkpoint's config (refused before building that model)")


def test_the_size_check_reads_legacy_names(tmp_path):
    """A checkpoint saved from inside DDP (`module.` names): config.json's wrong vocab_size is caught by the size
    check too, naming the field, before the model is built."""
    state = {"module." + k: v for k, v in hub.state_dict_for_saving(tiny_model()).items()}
    BertConfig(**{**TINY, "vocab_size": 30}).save_pretrained(tmp_path)
    torch.save(state, tmp_path / hub.PT_WEIGHTS_NAME)
    with pytest.raises(ValueError) as e:
        modeling.BertModel.from_pretrained(tmp_path)
    assert str(e.value) == (f"{tmp_path / hub.PT_WEIGHTS_NAME}: mis-shaped key: embeddings.word_embeddings.weight "
                            f"(checkpoint [20, 8], model [30, 8]): vocab_size 30 in {tmp_path / CONFIG_NAME}, not "
                            "this checkpoint's config (refused before building that model)")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

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


def test_distinct_parameters_sharing_memory_are_saved_each(tmp_path):
    """Two parameters (not a tie: distinct Parameter objects) that happen to share one storage are each written,
    as copies: safetensors refuses tensors that share memory, and both load back with their values."""
    model = tiny_model()
    shared = torch.arange(8, dtype=torch.float32)
    model.pooler.dense.bias = torch.nn.Parameter(shared)
    model.embeddings.LayerNorm.bias = torch.nn.Parameter(shared)
    model.save_pretrained(tmp_path)
    loaded = modeling.BertModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.pooler.dense.bias, shared)
    assert torch.equal(loaded.embeddings.LayerNorm.bias, shared)


def test_new_id2label_replaces_the_checkpoints_label2id(tmp_path):
    """from_pretrained(id2label=...) without label2id: label2id is the new names' inverse, not the checkpoint's old
    names (which no longer name any id). transformers 5.24 keeps the old label2id here; bertkit deliberately not."""
    config = BertConfig(**TINY, id2label={0: "a", 1: "b"})
    modeling.BertForSequenceClassification(config).save_pretrained(tmp_path)
    new = {0: "neg", 1: "pos"}
    ours = modeling.BertForSequenceClassification.from_pretrained(tmp_path, id2label=new)
    assert ours.config.id2label == new
    assert ours.config.label2id == {"neg": 0, "pos": 1}


def test_a_non_float_config_dtype_is_not_a_load_dtype(tmp_path):
    """dtype="auto" takes config.json's dtype only when it names a floating-point one; "int64" there (a bad
    config.json) leaves the checkpoint's own float32, not a model cast to integers."""
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["dtype"] = "int64"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    model = modeling.BertModel.from_pretrained(tmp_path, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ---------------------------------------------------------------------------------------------
# bertkit.io: decoding and line reading
# ---------------------------------------------------------------------------------------------

def test_a_byte_order_mark_is_dropped_from_text_and_json(tmp_path):
    """A UTF-8 BOM (Notepad's) is not content: read_text drops it as Python's "utf-8-sig" does, and a JSON file
    that starts with one parses."""
    from bertkit.io import read_json, read_text
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\n')
    assert read_text(path) == path.read_text(encoding="utf-8-sig") == '{"a": 1}\n'
    assert read_json(path) == {"a": 1}


def test_a_bad_byte_after_a_bom_is_named_at_its_offset_in_the_file(tmp_path):
    """The offset an error names is the bad byte's in the file, the BOM's three bytes counted, and the byte named
    is that one."""
    from bertkit.io import read_text
    raw = b"\xef\xbb\xbfab\ncd\xffe\n"
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(ValueError) as e:
        read_text(path)
    offset = raw.index(b"\xff")
    assert str(e.value) == f"{path}:2: not valid UTF-8 (byte 0xff) at offset {offset}; save it as UTF-8"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_files_of_either_byte_order_are_named_as_such(tmp_path, encoding):
    """A UTF-16 file, little- or big-endian (its BOM FF FE or FE FF), is named as UTF-16 by both readers, not
    reported as a bad byte."""
    from bertkit.io import UTF16, read_lines, read_text
    bom = b"\xff\xfe" if encoding == "utf-16-le" else b"\xfe\xff"
    path = tmp_path / "excel.txt"
    path.write_bytes(bom + "label\tcafé\n".encode(encoding))
    with pytest.raises(ValueError) as e:
        read_text(path)
    assert str(e.value) == f"{path}: {UTF16}"
    with pytest.raises(ValueError) as e:
        list(read_lines(path))
    assert str(e.value) == f"{path}: {UTF16}"


def test_read_lines_names_a_bad_bytes_column_in_bytes(tmp_path):
    """The column of a bad byte counts bytes (an editor's byte column, and what `cut -b` takes): "café " is 6 bytes,
    so the byte after it is at column 7, not 6."""
    from bertkit.io import read_lines
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\ncaf\xc3\xa9 \xff!\n")
    with pytest.raises(ValueError) as e:
        list(read_lines(path))
    assert str(e.value) == f"{path}:2: not valid UTF-8 (byte 0xff at column 7); save it as UTF-8"


def test_read_lines_yields_lines_as_python_splits_them(tmp_path):
    """Lines without their endings (\\n, \\r\\n, lone \\r), the BOM dropped from the first line only: a U+FEFF
    starting a later line is content (a zero-width no-break space), kept as Python's "utf-8-sig" keeps it."""
    from bertkit.io import read_lines
    raw = b"\xef\xbb\xbfa\r\n\xef\xbb\xbfb\rc\n\r\nd"
    path = tmp_path / "mixed.txt"
    path.write_bytes(raw)
    expected = raw.decode("utf-8-sig").splitlines()
    assert expected == ["a", "\ufeffb", "c", "", "d"]
    assert list(read_lines(path)) == list(enumerate(expected, 1))


def test_read_json_refuses_another_top_level_type(tmp_path):
    """A config file that is a JSON list (or a number) where an object is expected: a ValueError naming the file
    and both types; expect=None takes anything."""
    from bertkit.io import read_json
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError) as e:
        read_json(path)
    assert str(e.value) == f"{path}: expected a JSON object, got list"
    with pytest.raises(ValueError) as e:
        read_json(path, expect=str)
    assert str(e.value) == f"{path}: expected a JSON str, got list"
    assert read_json(path, expect=None) == [1, 2]


# ---------------------------------------------------------------------------------------------
# bertkit.io: atomic writes
# ---------------------------------------------------------------------------------------------

def test_a_failed_atomic_write_names_the_file_asked_for(tmp_path):
    """An error while writing the temporary twin (here: its folder is missing) names the file asked for, not
    `<name>.tmp<pid>`, and leaves nothing behind."""
    from bertkit.io import atomic_path
    target = tmp_path / "missing" / "out.json"
    with pytest.raises(FileNotFoundError) as e:
        with atomic_path(target) as tmp:
            open(tmp, "w").close()
    assert e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_process_we_may_not_signal_are_kept(tmp_path, monkeypatch):
    """A pid that kill(pid, 0) answers with EPERM is a live process of another user (a shared machine): its
    temporary files are not removed as a dead job's."""
    from bertkit import io
    other = 4_000_000  # no such pid here; os.kill is made to answer as for another user's process

    def kill(pid, signal):
        if pid == other:
            raise PermissionError(1, "Operation not permitted")
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(io.os, "kill", kill)
    assert io.pid_alive(other)
    (tmp_path / f"out.json.tmp{other}").write_text("half")
    (tmp_path / f"out.json.tmp{other + 1}").write_text("half")   # a dead job's
    io.write_text_atomic(tmp_path / "out.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", f"out.json.tmp{other}"]


def test_a_folder_that_cannot_be_entered_is_not_writable(tmp_path, monkeypatch):
    """Writing into a folder needs search (x) as well as write permission: a folder granting write only is a
    PermissionError naming the output, before the work. (os.access is made to answer so: the tests run as root,
    which any mode lets in.)"""
    from bertkit import io
    monkeypatch.setattr(io.os, "access", lambda path, mode: mode == os.W_OK)
    with pytest.raises(PermissionError) as e:
        io.check_writable(tmp_path / "out.json")
    assert e.value.filename == str(tmp_path / "out.json")


def test_an_output_directory_must_be_new_or_empty(tmp_path):
    """check_new_directory (and atomic_directory) refuse a directory holding files: the run would replace them."""
    from bertkit.io import atomic_directory, check_new_directory
    (tmp_path / "empty").mkdir()
    check_new_directory(tmp_path / "empty")
    check_new_directory(tmp_path / "new")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for check in (check_new_directory, lambda p: atomic_directory(p).__enter__()):
        with pytest.raises(ValueError) as e:
            check(tmp_path / "full")
        assert str(e.value) == f"{tmp_path / 'full'}: already exists and is not an empty directory"
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_atomic_directory_makes_an_ordinary_directory_or_none(tmp_path):
    """The directory made has the mode of any new directory (not mkdtemp's private 0700); a failure inside the
    block leaves no staging directory behind."""
    from bertkit.io import atomic_directory, umask
    with atomic_directory(tmp_path / "out") as staging:
        (Path(staging) / "f.txt").write_text("x")
    assert (tmp_path / "out" / "f.txt").read_text() == "x"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask()
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(tmp_path / "failed"):
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nvidia_fused_dense_act_names_load_as_dense(tmp_path):
    """NVIDIA DeepLearningExamples names the Linear of its fused Linear+activation `dense_act`: such a checkpoint
    loads every tensor into the `dense` layer, the renames reported."""
    torch.manual_seed(0)
    model = modeling.BertForPreTraining(BertConfig(**TINY))
    state = hub.state_dict_for_saving(model)
    fused = {k.replace("pooler.dense.", "pooler.dense_act.").replace("transform.dense.", "transform.dense_act."): v
             for k, v in state.items()}
    assert len(set(fused) - set(state)) == 4
    BertConfig(**TINY).save_pretrained(tmp_path)
    torch.save(fused, tmp_path / hub.PT_WEIGHTS_NAME)
    loaded = modeling.BertForPreTraining.from_pretrained(tmp_path)
    assert loaded.load_report.clean
    assert sorted(loaded.load_report.renamed) == sorted((k, k.replace("dense_act", "dense")) for k in fused
                                                       if "dense_act" in k)
    for name, t in loaded.state_dict().items():
        if name in state:
            assert torch.equal(t, state[name]), name


def test_a_shard_name_with_a_backslash_is_refused(tmp_path):
    """A shard index names files beside it: a backslash (Windows' separator) in a shard's name is refused like a
    slash, naming the index and the shard."""
    tiny_model().save_pretrained(tmp_path, max_shard_size=2000)
    index_path = tmp_path / hub.SAFE_WEIGHTS_INDEX_NAME
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "..\\other\\model.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError) as e:
        hub.load_state_dict(tmp_path)
    assert str(e.value) == (f"{index_path}: weight_map names the shard '..\\\\other\\\\model.safetensors'; expected "
                            f"a file name in {tmp_path} (no path separators or '..')")
