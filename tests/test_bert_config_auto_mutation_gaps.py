"""Behaviour of the encoder, BertConfig and the Auto classes that a mutation audit found unpinned: each test here
fails under a plausible one-line bug in bertkit/modeling/bert.py, bertkit/config.py or bertkit/auto.py that the rest
of the suite let through.

The oracle is transformers (its Auto mapping, its BertModel on the same weights, its configs) wherever it has the
behaviour; otherwise the published rule (Turc et al. 2019's model sizes) or the one-line error the code promises.
"""
from __future__ import annotations

import pytest
import torch

from bertkit import modeling
from bertkit.config import BertConfig

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------

def test_fresh_weights_follow_initializer_range_and_keep_the_padding_row_zero():
    """BERT's init draws N(0, initializer_range) (not a fixed 0.02), and the padding row of the word embeddings is
    zero, also after `init_weights()` re-initialises a model whose MLM decoder is tied to them (the decoder's
    init writes that row too), as in transformers."""
    cfg = BertConfig(**TINY, initializer_range=0.5, pad_token_id=5)
    torch.manual_seed(0)
    model = modeling.BertForMaskedLM(cfg)
    emb = model.get_input_embeddings().weight
    assert 0.45 < emb.std().item() < 0.55
    assert 0.45 < model.bert.encoder.layer[0].attention.self.query.weight.std().item() < 0.55
    model.init_weights()
    ref = transformers.BertForMaskedLM(transformers.BertConfig(**cfg.to_dict()))
    ref.init_weights()
    assert model.cls.predictions.decoder.weight is emb
    assert torch.count_nonzero(emb[5]) == torch.count_nonzero(ref.get_input_embeddings().weight[5]) == 0


# ---------------------------------------------------------------------------------------------
# Config presets
# ---------------------------------------------------------------------------------------------

# Turc et al. 2019 ("Well-Read Students Learn Better"), google-research/bert's 24 smaller models:
# size -> (layers L, hidden H, heads H/64, feed-forward 4H)
PUBLISHED = {"tiny": (2, 128, 2, 512), "mini": (4, 256, 4, 1024), "small": (4, 512, 8, 2048),
             "medium": (8, 512, 8, 2048), "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_size_presets_are_the_published_models(size):
    cfg = BertConfig.from_size(size)
    got = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size)
    assert got == PUBLISHED[size]


def test_from_size_overrides_win_over_the_preset():
    cfg = BertConfig.from_size("mini", num_hidden_layers=1, intermediate_size=100)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (1, 256, 100)


# ---------------------------------------------------------------------------------------------
# Config labels and dtype
# ---------------------------------------------------------------------------------------------

def test_setting_num_labels_to_the_count_it_has_keeps_the_label_names():
    """`config.num_labels = n` renames the labels LABEL_i only when n changes their count, as transformers' setter
    (a checkpoint's own names survive `from_pretrained(..., num_labels=3)` on a 3-label model)."""
    names = {0: "neg", 1: "neu", 2: "pos"}
    ours, ref = BertConfig(**TINY, id2label=names), transformers.BertConfig(**TINY, id2label=names)
    ours.num_labels = ref.num_labels = 3
    assert ours.id2label == ref.id2label == names
    assert ours.label2id == {"neg": 0, "neu": 1, "pos": 2}


def test_label_names_set_after_construction_are_written_to_config_json(tmp_path):
    """`config.id2label = {...}` on a config built without labels (as transformers code does before
    save_pretrained): config.json keeps the names, and both libraries read them back."""
    cfg = BertConfig(**TINY)
    cfg.id2label = {0: "neg", 1: "pos"}
    cfg.save_pretrained(tmp_path)
    assert BertConfig.from_pretrained(tmp_path).id2label == {0: "neg", 1: "pos"}
    assert transformers.BertConfig.from_pretrained(tmp_path).id2label == {0: "neg", 1: "pos"}
    # and the names' ids, which transformers writes as null: tagging looks tags up in label2id
    assert BertConfig.from_pretrained(tmp_path).label2id == {"neg": 0, "pos": 1}
    assert transformers.BertConfig.from_pretrained(tmp_path).label2id == {"neg": 0, "pos": 1}


@pytest.mark.parametrize("label2id", [{"a": 0, "b": 1.5}, {"a": 0, "b": "1.5"}])
def test_a_fractional_label_id_is_refused_naming_the_field(label2id):
    """A label id must be an integer (or the string of one): 1.5 is not read as label 1."""
    with pytest.raises(ValueError, match=r"^BertConfig field 'label2id' maps labels to integer ids; got '?1\.5'?$"):
        BertConfig(**TINY, label2id=label2id)


def test_dtype_wins_over_its_older_name_as_transformers():
    """Given both "dtype" and its older name "torch_dtype" (in config.json or to the constructor), "dtype" is kept,
    as transformers 5 keeps it."""
    d = {**TINY, "dtype": "bfloat16", "torch_dtype": "float16"}
    assert BertConfig.from_dict(d).dtype == transformers.BertConfig.from_dict(d).dtype == torch.bfloat16
    ours = BertConfig(**TINY, dtype="bfloat16", torch_dtype="float16")
    ref = transformers.BertConfig(**TINY, dtype="bfloat16", torch_dtype="float16")
    assert ours.dtype == ref.dtype == torch.bfloat16
    assert BertConfig(**TINY, torch_dtype="float16").dtype == torch.float16


# ---------------------------------------------------------------------------------------------
# Auto classes
# ---------------------------------------------------------------------------------------------

AUTO_NAMES = ["AutoModel", "AutoModelForPreTraining", "AutoModelForMaskedLM", "AutoModelForNextSentencePrediction",
              "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
              "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice"]


@pytest.mark.parametrize("auto_name", AUTO_NAMES)
def test_each_auto_class_builds_the_class_transformers_picks_for_bert(auto_name):
    """transformers' Auto mapping for model_type "bert" is the oracle: the same class name (token and sequence
    classifiers share a head shape, so only the class tells them apart)."""
    from bertkit import auto
    cfg = BertConfig(**TINY)
    with torch.device("meta"):  # the class is the question, not the weights
        ref = getattr(transformers, auto_name).from_config(transformers.BertConfig(**TINY))
    assert type(getattr(auto, auto_name).from_config(cfg)).__name__ == type(ref).__name__


def test_auto_from_config_refuses_a_transformers_config_naming_itself():
    from bertkit import auto
    with pytest.raises(TypeError, match=r"^AutoModelForTokenClassification\.from_config expects a bertkit\.BertConfig, "
                                        r"got transformers\..*BertConfig; convert it with "
                                        r"bertkit\.BertConfig\.from_dict\(config\.to_dict\(\)\)$"):
        auto.AutoModelForTokenClassification.from_config(transformers.BertConfig(**TINY))


TOY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]


def test_auto_tokenizer_reads_a_config_json_without_model_type_as_bert(tmp_path):
    """A config.json with no model_type is a BERT one (transformers' BertConfig default), so AutoTokenizer loads the
    directory's tokenizer rather than refusing it."""
    import json

    from bertkit import auto
    (tmp_path / "vocab.txt").write_text("\n".join(TOY_VOCAB) + "\n", encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "vocab_size": len(TOY_VOCAB)}), encoding="utf-8")
    tok = auto.AutoTokenizer.from_pretrained(tmp_path)
    ref = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(TOY_VOCAB)})
    assert tok("hello worlds")["input_ids"] == ref("hello worlds")["input_ids"] == [2, 5, 6, 7, 3]


def test_vocab_fit_warns_only_past_the_embeddings():
    """A tokenizer exactly as large as the embeddings fits (no warning); one token more warns, naming it."""
    import warnings

    from bertkit import BertTokenizer
    from bertkit.auto import check_vocab_fits
    tok = BertTokenizer({t: i for i, t in enumerate(TOY_VOCAB)})
    cfg = BertConfig(**{**TINY, "vocab_size": len(TOY_VOCAB)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_vocab_fits(tok, cfg, "here")
    tok.add_tokens(["zebra"])
    with pytest.warns(UserWarning, match=r"^here: the tokenizer has 9 tokens but the model's embeddings hold 8 "
                                         r"\(config vocab_size\), so a text holding a token of id >= 8 \('zebra'\)"):
        check_vocab_fits(tok, cfg, "here")


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------

def hf_pair(cfg: BertConfig, seed: int = 0):
    """(bertkit BertModel, transformers BertModel) with the same random weights (far from BERT's init), eval mode."""
    theirs = transformers.BertModel(transformers.BertConfig(**cfg.to_dict(), attn_implementation="eager"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.dim() > 1 else 5))
    ours = modeling.BertModel(cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.eval(), theirs.eval()


def test_selected_rows_ignore_the_configs_output_flags():
    """A model whose config.json says output_hidden_states / output_attentions (some hub checkpoints do) still
    encodes a selection of rows, as pre-training and fill-mask ask for: the flags are defaults for a forward,
    not a request that a selection cannot meet. The rows are transformers' states there."""
    from bertkit.modeling import packing as P
    cfg = BertConfig(**TINY, output_hidden_states=True, output_attentions=True)
    ours, theirs = hf_pair(cfg, seed=1)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        enc = ours.encode(ids, mask, selection=P.select_first_tokens)
        want = theirs(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    assert enc.all_hidden is None and enc.all_weights is None
    torch.testing.assert_close(enc.hidden, want, atol=1e-5, rtol=1e-5)


def test_resizing_to_exactly_the_padding_id_is_refused_in_one_line():
    """Shrinking to `pad_token_id` tokens drops the padding row too (ids run 0..n-1): the same one-line error as
    shrinking further, not torch's assertion from nn.Embedding."""
    model = modeling.BertModel(BertConfig(**TINY, pad_token_id=5))
    with pytest.raises(ValueError, match=r"^resize_token_embeddings: 5 tokens would drop the padding token, id 5 "
                                         r"\(config.pad_token_id\); keep at least 6$"):
        model.resize_token_embeddings(5)
    assert model.config.vocab_size == 99 and model.get_input_embeddings().num_embeddings == 99
    assert model.resize_token_embeddings(6).num_embeddings == 6
