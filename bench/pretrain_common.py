"""Shared setup of the pre-training races: bertkit vs transformers, MLM + NSP from the same start.

Data (built once, cached under `--work`, default /tmp/bertkit-bench-pretrain):
  * tokenizer: uncased WordPiece, vocabulary 8192, trained with bertkit on the training file only;
  * training shards: WikiText-2 raw *test* split (`wikitext-2-raw.test.raw`, CRLF), one document per
    article (` = Title = ` lines, `WIKITEXT_TITLE`), NSP pairs of up to 128 tokens, seed 0;
  * held-out shards: WikiText-2 *valid* split (`wikitext-2.valid.tokens`: other articles; its `<unk>`
    becomes `<`, `unk`, `>` pieces), same rule.
The data is read from `<repo>/../shared/data/pretrain` (or `--data`) and never copied into the repository.

Models: `bertkit.modeling.BertForPreTraining(config)` under `torch.manual_seed(seed)`, and
`transformers.BertForPreTraining(transformers.BertConfig(**config.to_dict()))` (attention "sdpa") given the
same weights; `make_pair` checks every transformers parameter (the tied decoder weight and bias included)
equals bertkit's bit for bit. Both get AdamW over `bertkit.train.optim.param_groups` (weight decay on
matrices and embeddings only), the same peak learning rate, linear warm-up then linear decay, and
global-norm gradient clipping.

One training step (`Contender.step`), both sides in their normal usage:
  * bertkit:      sums, stats = PreTrainingObjective(model)(batch);
                  loss = sums["mlm"] / counts["mlm"] + sums["nsp"] / counts["nsp"]   (MLM head at masked rows)
  * transformers: loss = model(**batch).loss      (labels + next_sentence_label: the full-vocabulary head)
then backward, clip to 1.0, AdamW step, schedule step, zero_grad. `seconds` covers exactly that; the extra
statistics transformers does not return (the MLM/NSP terms, accuracies) are computed afterwards from its
logits, outside the timed region.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from bertkit.config import BertConfig
from bertkit.data.corpus import WIKITEXT_TITLE
from bertkit.data.masking import MaskingCollator, PretrainingBatches
from bertkit.data.pretraining import PretrainingDataset, build_shards
from bertkit.modeling import BertForPreTraining
from bertkit.tasks.pretrain_objective import PreTrainingObjective, evaluate_pretraining
from bertkit.tokenizer import BertTokenizer
from bertkit.train.optim import build_optimizer, linear_schedule, param_groups

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data" / "pretrain"
TRAIN_FILE = "wikitext-2-raw.test.raw"
HELDOUT_FILE = "wikitext-2.valid.tokens"
DEFAULT_WORK = "/tmp/bertkit-bench-pretrain"
VOCAB_SIZE = 8192
SEQ_LEN = 128
MAX_PREDICTIONS = 20
KINDS = ("bertkit", "transformers")


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--work", default=DEFAULT_WORK, help="cache for the tokenizer and shards (default %(default)s)")
    ap.add_argument("--data", default=str(DATA_DIR), help="directory holding the WikiText files (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="initial weights, shards and masks")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Data:
    tokenizer: BertTokenizer
    train: PretrainingDataset
    heldout: PretrainingDataset
    collator: MaskingCollator

    def train_batches(self, batch_size: int, seed: int = 0) -> PretrainingBatches:
        """Training batches (masked on the fly), forever; the same seed gives the same batches."""
        return PretrainingBatches(self.train, batch_size, self.collator, seed=seed)

    def heldout_batches(self, n: int, batch_size: int, seed: int = 1) -> list[dict]:
        """`n` fixed held-out batches (masks drawn once: evaluate both models on this very list)."""
        source = PretrainingBatches(self.heldout, min(batch_size, len(self.heldout)), self.collator, seed=seed)
        n = min(n, source.batches_per_epoch)
        it = iter(source)
        return [next(it) for _ in range(n)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_dir(target: Path, build) -> None:
    """Build into a private temporary directory, then rename it to `target` (a concurrent builder's
    finished copy wins)."""
    tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_data(work: str | os.PathLike = DEFAULT_WORK, data_dir: str | os.PathLike = DATA_DIR, *,
                 vocab_size: int = VOCAB_SIZE, seq_len: int = SEQ_LEN, seed: int = 0,
                 max_predictions: int = MAX_PREDICTIONS, log=print) -> Data:
    """The WikiText tokenizer and shards, built on first use under `work` and reused afterwards.

    The cache directory is named after the settings and records the SHA-256 of the two input files; when
    those differ (other data), it is rebuilt."""
    data_dir = Path(data_dir)
    train_file, heldout_file = data_dir / TRAIN_FILE, data_dir / HELDOUT_FILE
    for f in (train_file, heldout_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing (see shared/data/SOURCES.md; --data points elsewhere)")
    sources = {TRAIN_FILE: _sha256(train_file), HELDOUT_FILE: _sha256(heldout_file)}
    root = Path(work) / f"wikitext2-uncased-v{vocab_size}"
    stamp = root / "sources.json"
    if root.is_dir() and (not stamp.is_file() or json.loads(stamp.read_text()) != sources):
        log(f"{root}: built from other data; rebuilding")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(sources, indent=2) + "\n")

    tok_dir = root / "tokenizer"
    if not tok_dir.is_dir():
        t0 = time.perf_counter()
        _atomic_dir(tok_dir, lambda d: BertTokenizer.train([str(train_file)], vocab_size,
                                                           lowercase=True).save_pretrained(d))
        log(f"trained the tokenizer in {time.perf_counter() - t0:.1f} s -> {tok_dir}")
    tok = BertTokenizer.from_pretrained(tok_dir)
    shards = {}
    for split, path in (("train", train_file), ("heldout", heldout_file)):
        out = root / f"{split}-len{seq_len}-seed{seed}"
        if not out.is_dir():
            t0 = time.perf_counter()
            try:
                build_shards(str(path), tok, out, max_seq_length=seq_len, seed=seed, doc_boundary=WIKITEXT_TITLE)
            except FileExistsError:  # another process finished it first
                pass
            log(f"built the {split} shards in {time.perf_counter() - t0:.1f} s -> {out}")
        shards[split] = PretrainingDataset(out)
    collator = MaskingCollator.from_tokenizer(tok, max_predictions_per_seq=max_predictions)
    return Data(tok, shards["train"], shards["heldout"], collator)


def describe(data: Data) -> str:
    m = data.train.meta
    return (f"WikiText-2 raw test split ({m['num_documents']} articles) -> {len(data.train):,} training "
            f"instances; valid split ({data.heldout.meta['num_documents']} other articles) -> "
            f"{len(data.heldout):,} held-out; uncased WordPiece vocabulary {len(data.tokenizer):,}; "
            f"max {m['max_seq_length']} tokens, <= {data.collator.max_predictions_per_seq} masked per sequence")


# ---------------------------------------------------------------------------------------------- models
def make_config(tokenizer, size: str = "mini", dropout: float = 0.1, **overrides) -> BertConfig:
    """The bertkit config of `size` ("mini": 4 layers, hidden 256, 4 heads, feed-forward 1024) for the
    tokenizer's vocabulary, with both dropouts set to `dropout`."""
    cfg = BertConfig.from_size(size, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                               **overrides)
    cfg.vocab_size = len(tokenizer)
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.validate()
    return cfg


def transformers_model(config: BertConfig):
    import transformers

    hf_config = transformers.BertConfig(**config.to_dict())
    hf_config._attn_implementation = "sdpa"  # transformers' default for BERT; said explicitly
    return transformers.BertForPreTraining(hf_config)


def copy_weights(ours: BertForPreTraining, hf) -> None:
    """Load bertkit's weights into the transformers model and check every parameter and buffer that both
    name (the tied decoder included) now holds the same values; raise otherwise."""
    ours_sd = ours.state_dict()
    result = hf.load_state_dict(ours_sd, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.endswith(("position_ids", "token_type_ids"))]
    if unexpected or missing:
        raise RuntimeError(f"weights do not map: missing in bertkit {missing}, unknown to transformers {unexpected}")
    for name, p in hf.named_parameters(remove_duplicate=False):
        if name not in ours_sd:
            raise RuntimeError(f"transformers parameter {name} has no bertkit counterpart")
        if p.shape != ours_sd[name].shape or not torch.equal(p.detach(), ours_sd[name]):
            raise RuntimeError(f"transformers parameter {name} differs from bertkit's after loading")
    emb = hf.bert.embeddings.word_embeddings.weight
    if hf.cls.predictions.decoder.weight.data_ptr() != emb.data_ptr():
        raise RuntimeError("transformers' MLM decoder is no longer tied to its word embeddings")


def max_weight_difference(ours: BertForPreTraining, hf) -> float:
    """The largest |difference| over every transformers parameter name (tied names included)."""
    ours_sd = ours.state_dict()
    return max(float((p.detach() - ours_sd[n]).abs().max()) for n, p in hf.named_parameters(remove_duplicate=False))


# ------------------------------------------------------------------------------------------- training
@dataclass
class StepResult:
    seconds: float     # forward + backward + clip + optimizer/schedule step
    loss: float
    loss_mlm: float
    loss_nsp: float
    correct_mlm: int
    n_mlm: int
    correct_nsp: int
    n_nsp: int
    grad_norm: float   # before clipping
    lr: float          # the learning rate this step used


@dataclass
class Contender:
    kind: str          # "bertkit" or "transformers"
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    max_grad_norm: float = 1.0
    objective: PreTrainingObjective | None = None
    params: list = field(default_factory=list)

    def __post_init__(self):
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # ties listed once
        if self.kind == "bertkit":
            self.objective = PreTrainingObjective(self.model)

    def step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        """One optimizer step on `batch`, timed; see the module docstring for what each side runs."""
        self.model.train()
        lr = self.scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        if self.kind == "bertkit":
            counts = self.objective.counts(batch)
            sums, stats = self.objective(batch)
            mlm, nsp = sums["mlm"] / counts["mlm"], sums["nsp"] / counts["nsp"]
            loss = mlm + nsp
        else:
            out = self.model(**batch)
            loss = out.loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        if self.kind == "bertkit":
            terms = (float(mlm.detach()), float(nsp.detach()))
            correct = (int(stats["acc_mlm"]), int(stats["acc_nsp"]))
            n = (counts["mlm"], counts["nsp"])
        else:  # what transformers does not return, from its logits, untimed
            with torch.no_grad():
                terms, correct, n = _hf_terms(out, batch)
                terms = tuple(t / k for t, k in zip(terms, n))
        return StepResult(seconds, float(loss.detach()), *terms, correct[0], n[0], correct[1], n[1], float(norm), lr)

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        """Held-out MLM accuracy / loss / perplexity and NSP accuracy / loss (dropout off)."""
        if self.kind == "bertkit":
            return evaluate_pretraining(self.objective, batches)
        was = self.model.training
        self.model.eval()
        # loss sums, correct predictions, counts: MLM then NSP
        loss_mlm = loss_nsp = correct_mlm = correct_nsp = n_mlm = n_nsp = 0.0
        for batch in batches:
            (lm, ln), (cm, cn), (km, kn) = _hf_terms(self.model(**batch), batch)
            loss_mlm, loss_nsp, n_mlm, n_nsp = loss_mlm + lm, loss_nsp + ln, n_mlm + km, n_nsp + kn
            correct_mlm, correct_nsp = correct_mlm + cm, correct_nsp + cn
        self.model.train(was)
        return {"mlm_accuracy": correct_mlm / n_mlm, "mlm_loss": loss_mlm / n_mlm,
                "perplexity": math.exp(loss_mlm / n_mlm), "nsp_accuracy": correct_nsp / n_nsp,
                "nsp_loss": loss_nsp / n_nsp}


def _hf_terms(out, batch):
    """(MLM loss sum, NSP loss sum), (MLM correct, NSP correct), (masked tokens, sequences) from the
    outputs of transformers' BertForPreTraining."""
    sel = batch["labels"] != -100
    logits = out.prediction_logits[sel].float()
    targets = batch["labels"][sel]
    nsp_logits = out.seq_relationship_logits.float()
    nsp_labels = batch["next_sentence_label"].view(-1)
    return ((float(F.cross_entropy(logits, targets, reduction="sum")),
             float(F.cross_entropy(nsp_logits, nsp_labels, reduction="sum"))),
            (int((logits.argmax(-1) == targets).sum()), int((nsp_logits.argmax(-1) == nsp_labels).sum())),
            (int(sel.sum()), int(nsp_labels.numel())))


def make_pair(config: BertConfig, *, seed: int = 0, lr: float = 5e-4, weight_decay: float = 0.01,
              warmup_steps: int = 0, total_steps: int = 1, max_grad_norm: float = 1.0) -> dict[str, Contender]:
    """bertkit and transformers BertForPreTraining with identical initial weights (checked), each with
    AdamW over the same parameter groups, the same linear warm-up/decay schedule and clipping."""
    torch.manual_seed(seed)
    ours = BertForPreTraining(config)
    hf = transformers_model(config)
    copy_weights(ours, hf)
    pair = {}
    for kind, model in (("bertkit", ours), ("transformers", hf)):
        model.train()
        groups = param_groups(model, weight_decay)
        opt = build_optimizer("adamw", groups, lr, weight_decay)
        pair[kind] = Contender(kind, model, opt, linear_schedule(opt, warmup_steps, total_steps), max_grad_norm)
    names = [[g["names"] for g in c.optimizer.param_groups] for c in pair.values()]
    if [sorted(n) for n in names[0]] != [sorted(n) for n in names[1]]:
        raise RuntimeError("the two models' weight-decay groups differ")
    return pair


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def versions() -> str:
    import transformers

    return (f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"{torch.get_num_threads()} threads, fp32 on CPU")
