"""Tiny pieces for the training tests: a synthetic resumable batch source, an MLM + NSP objective over
BertForPreTraining, and a command line that trains (alone or under torchrun) and saves the final weights.

    python tests/train/tiny.py --out RUN --steps 8 [--resume] [--kill-at POS] [--dropout 0.1] ...
    python -m torch.distributed.run --nproc-per-node 2 tests/train/tiny.py --out RUN ...
"""
from __future__ import annotations

import argparse
import json
import os
import signal

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.config import BertConfig
from bertkit.modeling import BertForPreTraining

VOCAB = 99
CLS, SEP, MASK = 2, 3, 4


def tiny_config(dropout: float = 0.1) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                      attention_probs_dropout_prob=dropout)


def example(seed: int, index: int, max_len: int = 16) -> dict[str, torch.Tensor]:
    """Example `index` of the synthetic corpus: a deterministic function of (seed, index) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    n = int(torch.randint(6, max_len + 1, (1,), generator=g))
    ids = torch.randint(5, VOCAB, (n,), generator=g)
    ids[0], ids[-1] = CLS, SEP
    types = torch.zeros(n, dtype=torch.long)
    types[n // 2:] = 1
    labels = torch.full((n,), -100, dtype=torch.long)
    masked = torch.rand(n, generator=g) < 0.3
    masked[0] = masked[-1] = False
    masked[1] = True  # at least one label
    labels[masked] = ids[masked]
    ids = ids.masked_fill(masked, MASK)
    nsp = torch.randint(0, 2, (1,), generator=g)
    return {"input_ids": ids, "token_type_ids": types, "labels": labels, "next_sentence_label": nsp}


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    width = max(e["input_ids"].numel() for e in examples)
    out = {"input_ids": torch.zeros(len(examples), width, dtype=torch.long),
           "token_type_ids": torch.zeros(len(examples), width, dtype=torch.long),
           "attention_mask": torch.zeros(len(examples), width, dtype=torch.long),
           "labels": torch.full((len(examples), width), -100, dtype=torch.long),
           "next_sentence_label": torch.cat([e["next_sentence_label"] for e in examples])}
    for i, e in enumerate(examples):
        n = e["input_ids"].numel()
        out["input_ids"][i, :n] = e["input_ids"]
        out["token_type_ids"][i, :n] = e["token_type_ids"]
        out["attention_mask"][i, :n] = 1
        out["labels"][i, :n] = e["labels"]
    return out


class TinySource:
    """Yields batches forever. Global batch `pos` holds examples pos*G .. pos*G+G-1 (G = batch_size * world);
    rank r takes items r::world of it. Resumable through state_dict / load_state_dict. `kill_at`: SIGKILL
    this process when asked for batch `kill_at`. `served` records the positions handed out."""

    def __init__(self, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 kill_at: int | None = None):
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.kill_at = kill_at
        self.pos = 0
        self.served: list[int] = []

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.kill_at is not None and self.pos == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        g = self.batch_size * self.world
        items = list(range(self.pos * g, (self.pos + 1) * g))[self.rank::self.world]
        self.served.append(self.pos)
        self.pos += 1
        return collate([example(self.seed, i) for i in items])

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


class PretrainObjective(nn.Module):
    """MLM + NSP loss sums and correct-prediction counts from BertForPreTraining's outputs."""

    def __init__(self, model: BertForPreTraining):
        super().__init__()
        self.model = model

    def counts(self, batch):
        return {"mlm": (batch["labels"] != -100).sum(), "nsp": batch["next_sentence_label"].numel()}

    def forward(self, batch):
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"])
        sel = batch["labels"] != -100
        logits = out.prediction_logits[sel].float()
        labels = batch["labels"][sel]
        nsp_logits = out.seq_relationship_logits.float()
        nsp_labels = batch["next_sentence_label"]
        sums = {"mlm": F.cross_entropy(logits, labels, reduction="sum"),
                "nsp": F.cross_entropy(nsp_logits, nsp_labels, reduction="sum")}
        stats = {"acc_mlm": (logits.argmax(-1) == labels).sum(),
                 "acc_nsp": (nsp_logits.argmax(-1) == nsp_labels).sum()}
        return sums, stats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--kill-at", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--split-check", action="store_true", help="only record what split_map hands each rank")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from bertkit.train import TrainConfig, Trainer, distributed

    info = distributed.setup()
    if args.split_check:
        seen = []

        def work(items):
            seen.extend(items)
            return [(x, info.rank) for x in items]

        alone = distributed.split_map(work, list(range(5)))  # outside together(): all of it here
        seen_alone, seen[:] = list(seen), []
        with distributed.together():
            shared = distributed.split_map(work, list(range(5)))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"split-{info.rank}.json"), "w") as f:
            json.dump({"alone": alone, "seen_alone": seen_alone, "shared": shared, "seen": seen}, f)
        distributed.cleanup()
        return
    torch.manual_seed(1234 + info.rank)  # the initial weights: DDP and FSDP take rank 0's
    model = BertForPreTraining(tiny_config(args.dropout))
    source = TinySource(args.batch, info.rank, info.world_size, seed=7, kill_at=args.kill_at)
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, grad_accum=args.accum, lr=args.lr,
                      warmup_steps=2, optimizer=args.optimizer, log_every=1, save_every=args.save_every,
                      keep_last=2, seed=11, output_dir=args.out, tensorboard=False, progress=False,
                      gradient_checkpointing=args.gradient_checkpointing, fsdp=args.fsdp,
                      precision=args.precision, compile=args.compile)
    trainer = Trainer(PretrainObjective(model), model, source, cfg)
    used = set()  # the dtype of the weights the first encoder layer computes with (FSDP's own hook, which
    # gathers them, ran first: it was registered when the Trainer sharded the model)
    model.bert.encoder.layer[0].register_forward_pre_hook(
        lambda module, _: used.add(str(next(module.parameters()).dtype)))
    metrics = trainer.train(resume=args.resume)
    weights = distributed.full_state_dict(model)  # collective under FSDP
    local = sum((p.to_local() if distributed.is_sharded(model) else p).numel() for p in model.parameters())
    if distributed.is_main():
        torch.save({k: v.detach().clone() for k, v in weights.items()}, os.path.join(args.out, "final_weights.pt"))
        print("RESULT " + json.dumps({"metrics": metrics, "served": source.served, "world": info.world_size,
                                      "sharded": distributed.is_sharded(model), "local_params": local,
                                      "forward_weight_dtypes": sorted(used),
                                      "compiled": [bertkit_class(m) for m in model.modules()
                                                   if getattr(m, "_compiled_call_impl", None) is not None],
                                      "params": sum(p.numel() for p in model.parameters())}), flush=True)
    distributed.cleanup()


def bertkit_class(module) -> str:
    """The module's bertkit class name (FSDP2 makes each sharded module an instance of a subclass of its own)."""
    return next(c.__name__ for c in type(module).__mro__ if c.__module__.startswith("bertkit"))


if __name__ == "__main__":
    main()
