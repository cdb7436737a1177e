"""A toy tokenizer and tiny untrained task models, shared by the task tests that check metrics, encoding,
prediction and evaluation without training."""
import torch

from bertkit.config import BertConfig
from bertkit.tokenizer import BertTokenizer

WORDS = "the movie was good and plot bad a lovely film story actor really quite nice".split()


def words_tokenizer() -> BertTokenizer:
    return BertTokenizer.train_from_iterator([" ".join(WORDS)] * 3, vocab_size=80)


def tiny_model(cls, tok, **kw):
    """`cls` (a bertkit model class) at one layer of width 16, seeded, untrained; `kw` are config fields."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=20, max_position_embeddings=16, **kw)
    return cls(cfg)
