"""The zoo of public BERT checkpoints: their config.json files (sizes shrunk, odd fields kept) and the layouts their
repositories store, built with transformers at random weights, loaded by bertkit's Auto classes and compared with
transformers' loading of the same directory."""
import json
import os
import re
import warnings

import pytest
import safetensors.torch
import torch

from bertkit import auto
from bertkit.hub import LoadWarning

transformers = pytest.importorskip("transformers")

# -- config.json of public checkpoints (source: the repository's config.json on the HuggingFace hub) -------------
_BASE = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
         "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 512,
         "num_attention_heads": 12, "num_hidden_layers": 12, "type_vocab_size": 2}
_V4 = {"layer_norm_eps": 1e-12, "model_type": "bert", "pad_token_id": 0, "position_embedding_type": "absolute",
       "gradient_checkpointing": False, "use_cache": True}
_POOLER = {"directionality": "bidi", "pooler_fc_size": 768, "pooler_num_attention_heads": 12,
           "pooler_num_fc_layers": 3, "pooler_size_per_head": 128, "pooler_type": "first_token_transform"}
_TURC = {"hidden_size": 128, "hidden_act": "gelu", "initializer_range": 0.02, "vocab_size": 30522,
         "hidden_dropout_prob": 0.1, "num_attention_heads": 2, "type_vocab_size": 2, "max_position_embeddings": 512,
         "num_hidden_layers": 2, "intermediate_size": 512, "attention_probs_dropout_prob": 0.1}
_MINILM = {"architectures": ["BertModel"], **_BASE, **_V4, "hidden_size": 384, "intermediate_size": 1536,
           "num_hidden_layers": 6, "transformers_version": "4.8.2", "vocab_size": 30522}
_UNCASED = {"architectures": ["BertForMaskedLM"], **_BASE, **_V4, "transformers_version": "4.6.0.dev0",
            "vocab_size": 30522}

ZOO = {
    "google-bert/bert-base-uncased": _UNCASED,
    "google-bert/bert-base-cased": {**_UNCASED, "vocab_size": 28996},
    "google-bert/bert-large-uncased": {**_UNCASED, "hidden_size": 1024, "intermediate_size": 4096,
                                       "num_attention_heads": 16, "num_hidden_layers": 24},
    "google-bert/bert-base-multilingual-cased": {"architectures": ["BertForMaskedLM"], **_BASE, **_POOLER, **_V4,
                                                 "vocab_size": 119547},
    "google-bert/bert-base-chinese": {"architectures": ["BertForMaskedLM"], **_BASE, **_POOLER, **_V4,
                                      "vocab_size": 21128},
    "google/bert_uncased_L-2_H-128_A-2": _TURC,  # no model_type: transformers 4.0's older format
    "prajjwal1/bert-tiny": _TURC,
    "huawei-noah/TinyBERT_General_4L_312D": {
        "attention_probs_dropout_prob": 0.1, "cell": {}, "emb_size": 312, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 312, "initializer_range": 0.02, "intermediate_size": 1200,
        "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 4, "pre_trained": "",
        "structure": [], "type_vocab_size": 2, "vocab_size": 30522},  # 12 heads of 26
    "nreimers/MiniLM-L6-H384-uncased": _MINILM,
    "sentence-transformers/all-MiniLM-L6-v2": {"_name_or_path": "nreimers/MiniLM-L6-H384-uncased", **_MINILM,
                                               "torch_dtype": "float32"},
    "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2": {
        "_name_or_path": "old_models/paraphrase-multilingual-MiniLM-L12-v2/0_Transformer", **_MINILM,
        "num_hidden_layers": 12, "vocab_size": 250037, "transformers_version": "4.7.0"},
    "cross-encoder/ms-marco-MiniLM-L-6-v2": {
        **_MINILM, "architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0}, "sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"},
    "dslim/bert-base-NER": {
        "_num_labels": 9, "architectures": ["BertForTokenClassification"], **_BASE, **_V4, "output_past": True,
        "id2label": {"0": "O", "1": "B-MISC", "2": "I-MISC", "3": "B-PER", "4": "I-PER", "5": "B-ORG",
                     "6": "I-ORG", "7": "B-LOC", "8": "I-LOC"},
        "label2id": {"B-LOC": 7, "B-MISC": 1, "B-ORG": 5, "B-PER": 3, "I-LOC": 8, "I-MISC": 2, "I-ORG": 6,
                     "I-PER": 4, "O": 0}, "vocab_size": 28996},
    "deepset/bert-base-cased-squad2": {"architectures": ["BertForQuestionAnswering"], **_BASE, **_V4,
                                       "language": "english", "name": "Bert", "vocab_size": 28996},
    "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext": {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", **_BASE, "vocab_size": 30522},
    "dmis-lab/biobert-v1.1": {**_BASE, "vocab_size": 28996},
    "allenai/scibert_scivocab_uncased": {**_BASE, "vocab_size": 31090},
    "hfl/chinese-bert-wwm-ext": {"architectures": ["BertForMaskedLM"], **_BASE, **_POOLER, **_V4,
                                 "output_past": True, "vocab_size": 21128},
    "cl-tohoku/bert-base-japanese": {"architectures": ["BertForMaskedLM"], **_BASE, "layer_norm_eps": 1e-12,
                                     "model_type": "bert", "pad_token_id": 0,
                                     "tokenizer_class": "BertJapaneseTokenizer", "vocab_size": 32000},
    "setu4993/LaBSE": {"architectures": ["BertModel"], **_BASE, **_V4, "vocab_size": 501153},
    "DeepPavlov/rubert-base-cased": {**_BASE, **_POOLER, "output_past": True, "vocab_size": 119547},
    "GroNLP/bert-base-dutch-cased": {"_name_or_path": "bert-base-dutch-cased", "architectures": ["BertForMaskedLM"],
                                     **_BASE, **_V4, "pad_token_id": 3, "vocab_size": 30073},
    "monologg/kobert": {"architectures": ["BertModel"], **_BASE, "layer_norm_eps": 1e-12, "model_type": "bert",
                        "pad_token_id": 1, "vocab_size": 8002},
    "peterchou/ernie-gram": {  # layer_norm_eps 1e-5, and ERNIE's own fields
        "attention_probs_dropout_prob": 0.1, "emb_size": 768, "out_emb_size": 128, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "max_position_embeddings": 512,
        "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 12, "sent_type_vocab_size": 2,
        "task_type_vocab_size": 3, "vocab_size": 18018, "layer_norm_eps": 1e-05, "type_vocab_size": 2,
        "intermediate_size": 3072},
    # fields of other checkpoints, on bert-base-uncased's config
    "hidden_act gelu_new": {**_UNCASED, "hidden_act": "gelu_new"},
    "hidden_act relu": {**_UNCASED, "hidden_act": "relu"},
    "hidden_act gelu_pytorch_tanh": {**_UNCASED, "hidden_act": "gelu_pytorch_tanh"},
    "hidden_act silu": {**_UNCASED, "hidden_act": "silu"},
    "type_vocab_size 1": {**_UNCASED, "type_vocab_size": 1},
    "type_vocab_size 16": {**_UNCASED, "type_vocab_size": 16},
    "classifier_dropout": {**_UNCASED, "architectures": ["BertForSequenceClassification"], "classifier_dropout": 0.3},
    "chunk_size_feed_forward": {**_UNCASED, "chunk_size_feed_forward": 3},
    "gradient_checkpointing true": {**_UNCASED, "gradient_checkpointing": True},
    "pad_token_id null": {**_BASE, "vocab_size": 30522, "pad_token_id": None},
    "tie_word_embeddings false": {**_UNCASED, "tie_word_embeddings": False},
}

HEAD_AUTO = {"BertModel": "AutoModel", "BertForMaskedLM": "AutoModelForMaskedLM",
             "BertForPreTraining": "AutoModelForPreTraining",
             "BertForSequenceClassification": "AutoModelForSequenceClassification",
             "BertForTokenClassification": "AutoModelForTokenClassification",
             "BertForQuestionAnswering": "AutoModelForQuestionAnswering"}
FIELDS = ("last_hidden_state", "pooler_output", "logits", "prediction_logits", "seq_relationship_logits",
          "start_logits", "end_logits")


def shrunk(config: dict) -> dict:
    """The config at test size: 2 layers, vocabulary 211, head size 8 (TinyBERT's 12 heads of 26 kept), the rest
    (activations, eps, type vocabulary, pad id, labels, unknown fields) as published."""
    c = dict(config)
    if c.get("hidden_size", 768) > 320:
        c["num_attention_heads"] = min(c.get("num_attention_heads", 12), 4)
        c["hidden_size"] = 8 * c["num_attention_heads"]
    c["intermediate_size"] = min(c.get("intermediate_size", 3072), 4 * c["hidden_size"] + 3)
    c["num_hidden_layers"] = min(c.get("num_hidden_layers", 12), 2)
    c["vocab_size"] = min(c.get("vocab_size", 30522), 211)
    c["max_position_embeddings"] = min(c.get("max_position_embeddings", 512), 64)
    return c


def build(tmp_path, config: dict, arch: str, mutate=None, pickle: bool = False):
    """A directory as the repository holds it: config.json verbatim, the weights of a random `arch` (LayerNorms and
    biases moved off their initial values), renamed by `mutate`, in model.safetensors or pytorch_model.bin."""
    torch.manual_seed(0)
    hf_config = transformers.BertConfig.from_dict({"model_type": "bert", **config})
    model = getattr(transformers, arch)(hf_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    state = safetensors.torch.load_file(tmp_path / "model.safetensors")
    state = mutate(state) if mutate else state
    os.remove(tmp_path / "model.safetensors")
    if pickle:
        torch.save(state, tmp_path / "pytorch_model.bin")
    else:
        safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    return tmp_path


def inputs(config: dict) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config["vocab_size"], (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:], mask[2, 7:] = 0, 0
    return dict(input_ids=ids, token_type_ids=torch.randint(0, config.get("type_vocab_size", 2), (3, 9), generator=g),
                attention_mask=mask)


def assert_same(directory, auto_name: str, config: dict, skip=()):
    """bertkit's Auto class against transformers' class of the same head on `directory`, real tokens only."""
    hf_class = getattr(transformers, next(k for k, v in HEAD_AUTO.items() if v == auto_name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = hf_class.from_pretrained(directory).eval()
        ours = getattr(auto, auto_name).from_pretrained(directory)
    x = inputs(config)
    with torch.no_grad():
        a, b = theirs(**x), ours(**x)
    real = x["attention_mask"].bool()
    compared = 0
    for name in FIELDS:
        t = getattr(a, name, None)
        if t is None or name in skip:
            continue
        o = getattr(b, name)
        if t.shape[:2] == real.shape:
            t, o = t[real], o[real]
        torch.testing.assert_close(o, t, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        compared += 1
    assert compared


@pytest.mark.parametrize("name", sorted(ZOO))
def test_public_config_loads_as_transformers(tmp_path, name):
    """Each config as published (shrunk), its architecture saved by transformers, read by AutoModel and by the Auto
    class of its head: the same outputs."""
    config = shrunk(ZOO[name])
    arch = (config.get("architectures") or ["BertForPreTraining"])[0]
    directory = build(tmp_path, config, arch)
    head = HEAD_AUTO[arch]
    no_pooler = arch in ("BertForMaskedLM", "BertForTokenClassification", "BertForQuestionAnswering")
    assert_same(directory, "AutoModel", config, skip=("pooler_output",) if no_pooler else ())
    if head != "AutoModel":
        assert_same(directory, head, config)


# -- layouts of the weights files ---------------------------------------------------------------------------------
def _original_names(state):
    """The 2018 conversion of Google's TF checkpoints (bert-base-uncased's pytorch_model.bin): LayerNorm gamma/beta,
    the decoder weight stored beside the embeddings, no decoder bias."""
    state = dict(state)
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state.pop("cls.predictions.decoder.bias", None)
    return {re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", k)): v
            for k, v in state.items()}


def _with_fit_denses(state):
    """TinyBERT's general distillation checkpoints store their projections to the teacher's width beside `bert.`."""
    state, width = dict(state), state["bert.embeddings.word_embeddings.weight"].shape[1]
    for i in range(5):
        state[f"fit_denses.{i}.weight"], state[f"fit_denses.{i}.bias"] = torch.randn(768, width), torch.randn(768)
    return state


def _prefixed(state):
    return {f"bert.{k}": v for k, v in state.items()}


def _unprefixed(state):
    return {k.removeprefix("bert."): v for k, v in state.items()}


def _with_position_ids(state):
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    return {**state, f"{prefix}embeddings.position_ids": torch.arange(64)[None]}


LAYOUTS = [  # (case, config, architecture saved, rename, pickle, Auto classes that read it, outputs skipped)
    ("bert-base-uncased pytorch_model.bin, gamma/beta", "google-bert/bert-base-uncased", "BertForPreTraining",
     _original_names, True, ("AutoModel", "AutoModelForPreTraining", "AutoModelForMaskedLM"), ()),
    ("bert-tiny pytorch_model.bin, gamma/beta, no model_type", "prajjwal1/bert-tiny", "BertForPreTraining",
     _original_names, True, ("AutoModel", "AutoModelForPreTraining"), ()),
    ("TinyBERT fit_denses beside bert.", "huawei-noah/TinyBERT_General_4L_312D", "BertForPreTraining",
     _with_fit_denses, True, ("AutoModel", "AutoModelForPreTraining"), ()),
    ("base model saved with bert. prefix", "dmis-lab/biobert-v1.1", "BertModel", _prefixed, True, ("AutoModel",), ()),
    ("sentence-transformers, position_ids buffer", "sentence-transformers/all-MiniLM-L6-v2", "BertModel",
     _with_position_ids, True, ("AutoModel",), ()),
    ("token classifier saved without bert. prefix", "dslim/bert-base-NER", "BertForTokenClassification",
     _unprefixed, True, ("AutoModelForTokenClassification", "AutoModel"), ("pooler_output",)),
    ("cross-encoder, one label", "cross-encoder/ms-marco-MiniLM-L-6-v2", "BertForSequenceClassification",
     _with_position_ids, True, ("AutoModelForSequenceClassification",), ()),
]


@pytest.mark.parametrize("case", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_checkpoint_layout_loads_as_transformers(tmp_path, case):
    _, name, arch, mutate, pickle, autos, skip = case
    config = shrunk(ZOO[name])
    directory = build(tmp_path, config, arch, mutate, pickle)
    for auto_name in autos:
        assert_same(directory, auto_name, config, skip)


def test_parts_beside_the_bert_prefix_are_unused_not_refused(tmp_path):
    """TinyBERT's `fit_denses.N` (outside `bert.`) are left unused and reported, as transformers does; an unknown key
    inside `bert.` is still refused."""
    config = shrunk(ZOO["huawei-noah/TinyBERT_General_4L_312D"])
    directory = build(tmp_path / "tiny", config, "BertForPreTraining", _with_fit_denses, pickle=True)
    with pytest.warns(LoadWarning, match=r"unused checkpoint weights: .*fit_denses\.0\.weight"):
        model, info = auto.AutoModel.from_pretrained(directory, output_loading_info=True)
    assert {f"fit_denses.{i}.bias" for i in range(5)} <= info["unexpected_keys"]

    def inside(state):
        return {**state, "bert.encoder.extra.weight": torch.zeros(2)}
    directory = build(tmp_path / "inside", config, "BertForPreTraining", inside, pickle=True)
    with pytest.raises(ValueError, match=r"1 unexpected key: encoder\.extra\.weight"):
        auto.AutoModel.from_pretrained(directory)


@pytest.mark.parametrize("kind", ["relative_key", "relative_key_query"])
def test_relative_position_embeddings_are_refused_in_one_line(tmp_path, kind):
    """zhiheng-huang/bert-base-uncased-embedding-relative-key(-query): not implemented; the refusal names the file
    and the field."""
    config = shrunk({**ZOO["google-bert/bert-base-uncased"], "position_embedding_type": kind})
    directory = build(tmp_path, config, "BertForMaskedLM")
    with pytest.raises(ValueError) as e:
        auto.AutoModelForMaskedLM.from_pretrained(directory)
    assert "\n" not in str(e.value)
    assert str(e.value) == (f"{directory / 'config.json'}: BertConfig field 'position_embedding_type' must be "
                            f"'absolute' (the only kind bertkit implements), got '{kind}'")


# -- tokenizer files ----------------------------------------------------------------------------------------------
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "The", "cafe", "café", "naive", "naïve", "hello",
         "Hello", "world", "World", "##s", "中", "国", "人", "東", "京", "語", "!", ".", "über", "uber", "Über",
         "Straße", "strasse", "à"]
TEXTS = ["Hello World!", "The café is naïve.", "Über Straße à", "中国人 東京語", "  hello\tthe\u00a0world  "]


def tokenizer_dir(tmp_path, tokenizer_config=None, tokenizer_json=None, config_json=True):
    """vocab.txt, and as asked a tokenizer_config.json, a tokenizer.json written with the normalizer settings
    `tokenizer_json`, and a BERT config.json (which makes transformers pick its BertTokenizer)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    if config_json:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(VOCAB)}))
    if tokenizer_config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if tokenizer_json is not None:
        written = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, **tokenizer_json)
        written.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


TOKENIZER_FILES = {  # (tokenizer_config.json, tokenizer.json's normalizer, config.json)
    "vocab.txt alone (dmis-lab/biobert-v1.1)": (None, None, True),
    "do_lower_case false (bert-base-cased)": ({"do_lower_case": False}, None, True),
    "sentence-transformers/all-MiniLM-L6-v2": (
        {"do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": "[MASK]", "tokenize_chinese_chars": True, "strip_accents": None, "do_basic_tokenize": True,
         "never_split": None, "tokenizer_class": "BertTokenizer", "model_max_length": 512}, {}, True),
    "tokenize_chinese_chars false, strip_accents false": (
        {"do_lower_case": True, "tokenize_chinese_chars": False, "strip_accents": False}, None, True),
    "never_split (ignored by the fast tokenizers)": ({"do_lower_case": True, "never_split": ["[foo]"]}, None, True),
    "cased tokenizer.json, no tokenizer_config.json": (None, {"do_lower_case": False}, True),
    "cased tokenizer.json, config without do_lower_case": ({"tokenizer_class": "BertTokenizer"},
                                                           {"do_lower_case": False}, True),
    "tokenizer.json without chinese chars, config silent": ({"do_lower_case": False},
                                                            {"do_lower_case": False, "tokenize_chinese_chars": False},
                                                            True),
    "tokenizer.json alone, no class to pick": (None, {"do_lower_case": False, "tokenize_chinese_chars": False}, False),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_FILES))
def test_tokenizer_files_read_as_transformers(tmp_path, case):
    """AutoTokenizer on the files a repository holds: transformers' ids and decoded text. Where transformers picks
    its BertTokenizer (a BERT config.json, or tokenizer_class), the normalizer is tokenizer_config.json's settings or
    their defaults, whatever tokenizer.json's normalizer says."""
    directory = tokenizer_dir(tmp_path, *TOKENIZER_FILES[case])
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    ours = auto.AutoTokenizer.from_pretrained(str(directory))
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    assert [ours.decode(i) for i in ours(TEXTS)["input_ids"]] == [theirs.decode(i) for i in theirs(TEXTS)["input_ids"]]


@pytest.mark.parametrize("where", ["tokenizer_config.json", "config.json"])
def test_japanese_mecab_tokenizer_is_refused_in_one_line(tmp_path, where):
    """cl-tohoku/bert-base-japanese names BertJapaneseTokenizer (MeCab word splitting, then WordPiece) in both files:
    WordPiece alone would give other ids, so bertkit refuses, naming the file."""
    directory = tokenizer_dir(tmp_path)
    data = {"do_lower_case": False, "word_tokenizer_type": "mecab", "subword_tokenizer_type": "wordpiece",
            "tokenizer_class": "BertJapaneseTokenizer"}
    if where == "config.json":
        data = {**ZOO["cl-tohoku/bert-base-japanese"], "vocab_size": len(VOCAB)}
    (directory / where).write_text(json.dumps(data), encoding="utf-8")
    words = "'mecab'" if where == "tokenizer_config.json" else "'basic'"
    with pytest.raises(ValueError) as e:
        auto.AutoTokenizer.from_pretrained(str(directory))
    assert str(e.value) == (f"{directory / where}: tokenizer_class is 'BertJapaneseTokenizer' (Japanese word "
                            f"splitting, word_tokenizer_type {words}, before WordPiece): bertkit reads BERT WordPiece "
                            "tokenizers only, whose ids would differ")
