"""bench/pretrain_common: both models start from identical weights and take identical steps.

Hermetic: a tiny WikiText-like corpus written here, a tokenizer trained here, a tiny BERT."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

pytest.importorskip("transformers")

from bench import pretrain_common as pc  # noqa: E402

WORDS = ("the a river city king army song light stone north old new first great small green people war "
         "house road music night water field tower bridge village ship iron gold winter summer").split()
VERBS = "built found crossed sang held lost opened named carried followed".split()


def _article(rng: random.Random, title: str, paragraphs: int) -> list[str]:
    lines = [f" = {title} = "]
    for p in range(paragraphs):
        if p == paragraphs // 2:
            lines.append(" = = History = = ")
        sentences = []
        for _ in range(rng.randint(2, 4)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
            words.insert(rng.randint(1, len(words) - 1), rng.choice(VERBS))
            sentences.append(" ".join(words).capitalize() + " .")
        lines.append(" " + " ".join(sentences) + " ")
    return lines


def _write_corpus(directory: Path) -> None:
    rng = random.Random(0)
    train = [line for i in range(6) for line in _article(rng, f"Article {i}", 6)]
    heldout = [line for i in range(4) for line in _article(rng, f"Other {i}", 5) + [""]]
    (directory / pc.TRAIN_FILE).write_bytes("\r\n".join(train).encode() + b"\r\n")  # CRLF, like the raw file
    (directory / pc.HELDOUT_FILE).write_text("\n".join(heldout) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_pretrain")
    (root / "data").mkdir()
    _write_corpus(root / "data")
    # a fixed vocabulary: the WordPiece trainer breaks ties differently from run to run (tokenizers' hash order),
    # so a trained one gave other data each run, and some of those one AdamW step apart by 1.3e-5 (float noise on
    # near-zero gradients, scaled to lr by Adam) where others agree to 1e-6: the check below would flake
    words = sorted(set(" ".join((root / "data" / pc.TRAIN_FILE).read_text().split()).lower().split()))
    letters = sorted({c for w in words for c in w})
    tok_dir = root / "work" / "wikitext2-uncased-v200" / "tokenizer"
    tok_dir.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters),
             *(w for w in words if len(w) > 1)]
    (tok_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tok_dir.parent / "sources.json").write_text(json.dumps(
        {f: pc._sha256(root / "data" / f) for f in (pc.TRAIN_FILE, pc.HELDOUT_FILE)}, indent=2) + "\n")
    data = pc.prepare_data(root / "work", root / "data", vocab_size=200, seq_len=32, max_predictions=5,
                           log=lambda *a: None)
    config = pc.make_config(data.tokenizer, "tiny", dropout=0.0, hidden_size=32, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=32)
    return root, data, config


def test_data_is_built_once_and_reused(setup):
    root, data, _ = setup
    assert len(data.train) >= 8 and len(data.heldout) >= 4
    assert data.train.meta["num_documents"] == 6  # one per " = Title = " line, sections stay inside
    again = pc.prepare_data(root / "work", root / "data", vocab_size=200, seq_len=32,
                            log=lambda *a: pytest.fail(f"rebuilt: {a}"))
    assert len(again.train) == len(data.train) and len(again.tokenizer) == len(data.tokenizer)


def test_identical_initial_weights(setup):
    _, _, config = setup
    pair = pc.make_pair(config, seed=3)
    ours, hf = pair["bertkit"].model, pair["transformers"].model
    ours_sd = ours.state_dict()
    names = [n for n, _ in hf.named_parameters(remove_duplicate=False)]
    assert "cls.predictions.decoder.weight" in names and "cls.predictions.bias" in names
    for name, p in hf.named_parameters(remove_duplicate=False):
        assert torch.equal(p.detach(), ours_sd[name]), name
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    assert len(pair["bertkit"].params) == len(pair["transformers"].params)  # ties counted once on both sides
    # the seed decides the weights
    other = pc.make_pair(config, seed=4)["bertkit"].model.state_dict()
    assert not torch.equal(other["bert.encoder.layer.0.attention.self.query.weight"],
                           ours_sd["bert.encoder.layer.0.attention.self.query.weight"])


def test_one_step_gives_the_same_loss_and_weights(setup):
    _, data, config = setup
    pair = pc.make_pair(config, seed=3, lr=1e-2, warmup_steps=0, total_steps=10)
    before = {k: v.clone() for k, v in pair["bertkit"].model.state_dict().items()}
    batch = next(iter(data.train_batches(8, seed=0)))
    assert (batch["attention_mask"] == 0).any(), "want padding in the batch"
    res = {kind: pair[kind].step(batch) for kind in pc.KINDS}
    a, b = res["bertkit"], res["transformers"]
    assert abs(a.loss - b.loss) < 1e-5
    assert abs(a.loss_mlm - b.loss_mlm) < 1e-5 and abs(a.loss_nsp - b.loss_nsp) < 1e-5
    assert abs(a.grad_norm - b.grad_norm) < 1e-5 * max(1.0, a.grad_norm)
    assert (a.correct_mlm, a.n_mlm, a.correct_nsp, a.n_nsp) == (b.correct_mlm, b.n_mlm, b.correct_nsp, b.n_nsp)
    assert a.lr == b.lr == 1e-2
    ours, hf = pair["bertkit"].model, pair["transformers"].model
    assert pc.max_weight_difference(ours, hf) < 1e-5
    moved = max(float((v - before[k]).abs().max()) for k, v in ours.state_dict().items())
    assert moved > 1e-3  # the step did change the weights
    # held-out metrics agree as well
    heldout = data.heldout_batches(2, 4)
    ea, eb = pair["bertkit"].evaluate(heldout), pair["transformers"].evaluate(heldout)
    assert ea.keys() == eb.keys()
    for key in ea:
        assert abs(ea[key] - eb[key]) < 1e-4 * max(1.0, abs(ea[key])), key
