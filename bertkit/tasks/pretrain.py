"""The pre-training job: corpus -> vocabulary -> NSP shards -> MLM + NSP training -> a pre-trained BERT.

Run directory layout (everything a resume needs is here):
    tokenizer/          the WordPiece vocabulary (trained here unless one is given)
    data/train/         memory-mapped NSP instances (data/heldout/ for evaluation)
    step-000100/ ...    checkpoints (config.json, model.safetensors, vocab.txt, training_state.pt)
    config.json, model.safetensors, vocab.txt ...   the final model, loadable with AutoModelForPreTraining
    metrics.jsonl, curves.png
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checks import field_defaults
from ..config import BertConfig, config_file
from ..data.corpus import (WIKITEXT_SECTION, WIKITEXT_TITLE, hard_wrap_width, iter_documents,
                           python_docs_corpus)
from ..data.masking import MaskingCollator, PretrainingBatches
from ..data.pretraining import MIN_SEQ_LENGTH, CorpusProgress, PretrainingDataset, build_shards
from ..hub import LoadWarning, resolve_model_dir
from ..io import check_ours, file_id, read_json, write_text_atomic
from ..modeling import BertForPreTraining
from ..tokenizer import SAVED_FILES, BertTokenizer
from ..train import distributed as dist
from ..train.checkpoint import LATEST_NAME, check_resumed_settings, find_latest
from ..train.trainer import TrainConfig, Trainer, run_lock
from ..train.tracking import plot_run
from ..warn import warn
from .fill_mask import fill_mask
from .flags import check_ints, check_numbers
from .pretrain_objective import PreTrainingObjective, evaluate_pretraining

DOC_BOUNDARIES = {"blank": None, "wikitext": WIKITEXT_TITLE}
# lines dropped with a named boundary: WikiText's section headings (BERT's data had text passages only)
HEADINGS = {"wikitext": WIKITEXT_SECTION}


@dataclass
class PretrainArgs:
    corpus: list[str] = field(default_factory=list)  # empty: the English docs shipped with Python
    output: str = "runs/pretrain"
    tokenizer: str | None = None       # a tokenizer directory; None: train one on the corpus
    vocab_size: int = 8192
    cased: bool = False
    config: str | None = None          # a config.json; overrides model_size
    init_from: str | None = None       # start from this model (name or directory) instead of random weights
    model_size: str = "tiny"
    doc_boundary: str = "blank"        # "blank", "wikitext" or a regex for heading lines
    wrapped: bool = False              # hard-wrapped text (books): blank lines end paragraphs, not documents
    eval_corpus: list[str] = field(default_factory=list)  # empty: hold out every 20th document
    max_steps: int = 400
    batch_size: int = 32
    grad_accum: int = 1
    seq_len: int = 128
    dupe_factor: int = 1               # passes over the training corpus, each with its own NSP pairs and lengths
    short_seq_prob: float = 0.1        # share of instances given a random shorter target length
    max_predictions: int | None = None  # None: 15% of seq_len, rounded up (20 at 128, 77 at 512)
    whole_word: bool = False
    lr: float = 1e-3
    warmup_steps: int | None = None   # None: 10% of max_steps, rounded up (as fine-tuning's --warmup 0.1)
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-6         # google-research/bert's
    optimizer: str = "adamw"
    precision: str = "auto"
    save_every: int = 0
    eval_every: int = 0
    log_every: int = 10
    keep_last: int = 2
    eval_batches: int = 20
    seed: int = 0
    resume: bool = False
    compile: bool = False              # torch.compile the embeddings and the layer stack
    gradient_checkpointing: bool = False  # recompute layer activations in the backward (less memory)
    fsdp: bool = False                 # under torchrun: shard the model and optimizer state (FSDP2), not DDP

    def __post_init__(self):
        """Checked here, before the run trains a vocabulary or builds its data (minutes on a big corpus)."""
        from ..config import SIZES
        from ..train.optim import OPTIMIZERS
        from ..train.trainer import PRECISIONS
        check_ints(self, ("vocab_size", "max_steps", "batch_size", "grad_accum", "seq_len", "dupe_factor",
                          "log_every", "keep_last", "eval_batches"))
        check_ints(self, ("max_predictions",), optional=True)
        if self.seq_len < MIN_SEQ_LENGTH:
            raise ValueError(f"--seq-len must be at least {MIN_SEQ_LENGTH} ([CLS] A [SEP] B [SEP] with a token in A "
                             f"and in B), got {self.seq_len}")
        if self.max_predictions is None:  # google-research/bert's max_predictions_per_seq: 15% of the length
            self.max_predictions = -(-15 * self.seq_len // 100)  # rounded up, in integers (0.15 * 100 > 15)
        if self.max_predictions > self.seq_len - 3:
            raise ValueError(f"--max-predictions {self.max_predictions} exceeds the {self.seq_len - 3} tokens a "
                             f"sequence of --seq-len {self.seq_len} holds besides [CLS] and its two [SEP]")
        check_ints(self, ("save_every", "eval_every"), least=0)
        check_ints(self, ("warmup_steps",), least=0, optional=True)
        if self.warmup_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(f"--warmup-steps ({self.warmup_steps}) exceeds --max-steps ({self.max_steps})")
        check_numbers(self, ("lr", "adam_epsilon"), positive=True)
        if self.short_seq_prob > 1:
            raise ValueError(f"--short-seq-prob is a probability, at most 1, got {self.short_seq_prob!r}")
        check_numbers(self, ("weight_decay", "short_seq_prob"), positive=False)
        for name, allowed in (("optimizer", OPTIMIZERS), ("precision", PRECISIONS), ("model_size", SIZES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.tokenizer or self.init_from:  # the vocabulary is given, not trained: its flags would do nothing
            defaults = field_defaults(type(self))
            ignored = [f"--{name.replace('_', '-')}" for name in ("cased", "vocab_size")
                       if getattr(self, name) != defaults[name]]
            if ignored:
                raise ValueError(f"{' and '.join(ignored)} shape a vocabulary trained on the corpus; with "
                                 f"{'--tokenizer' if self.tokenizer else '--init-from'} the given one is used: drop "
                                 f"{'them' if len(ignored) > 1 else 'it'}")
        try:
            re.compile(_boundary(self.doc_boundary) or "")
        except re.error as e:
            raise ValueError(f"--doc-boundary {self.doc_boundary!r} is not a valid regular expression ({e})") from None
        if self.wrapped and self.doc_boundary == "wikitext":
            raise ValueError("--wrapped joins the lines of a paragraph, but WikiText (--doc-boundary wikitext) has a "
                             "paragraph a line: drop --wrapped")


def _boundary(name: str):
    return DOC_BOUNDARIES.get(name, name)


DATA_SOURCE = "source.json"  # in data/: what the shards were built from
SHARD_FILE = re.compile(r"shard_\d+\.\w+\.npy")   # in data/train and data/heldout, with meta.json


def _data_source(args: PretrainArgs, tok: BertTokenizer) -> dict:
    """Everything the shards depend on: the corpus files, how they are cut, and the vocabulary."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return {"corpus": [file_id(p) for p in args.corpus], "eval_corpus": [file_id(p) for p in args.eval_corpus],
            "doc_boundary": args.doc_boundary, "wrapped": args.wrapped, "seq_len": args.seq_len, "seed": args.seed,
            "dupe_factor": args.dupe_factor, "short_seq_prob": args.short_seq_prob,
            "vocabulary": hashlib.sha256("\n".join(t for t, _ in vocab).encode()).hexdigest()}


def _prepare_data(args: PretrainArgs, run: Path, tok: BertTokenizer) -> None:
    """Rank 0 builds the shards once; a resumed run reuses them, and only them: data built from other input
    (another corpus, --seq-len, --seed, vocabulary) is an error on --resume and rebuilt otherwise."""
    train_dir, heldout_dir = run / "data" / "train", run / "data" / "heldout"
    source, source_file = _data_source(args, tok), run / "data" / DATA_SOURCE
    if train_dir.is_dir() and heldout_dir.is_dir():
        # a key the file lacks (added to bertkit since) counts as its default
        defaults = {k: v for k, v in field_defaults(PretrainArgs).items()
                    if k in ("dupe_factor", "short_seq_prob", "wrapped")}
        built = {**defaults, **read_json(source_file)} if source_file.is_file() else source
        changed = [k for k in source if built.get(k) != source[k]]
        if not changed:
            return
        if args.resume:
            raise ValueError(f"{run / 'data'} was built from other input ({', '.join(changed)} differ); --resume "
                             "needs the corpus, --doc-boundary, --wrapped, --seq-len, --seed, --dupe-factor, "
                             "--short-seq-prob and tokenizer of the run it continues")
        print(f"{run / 'data'}: built from other input ({', '.join(changed)} differ); building it again")
    for d in (train_dir, heldout_dir):
        check_ours(d, lambda name: name == "meta.json" or SHARD_FILE.fullmatch(name), "a pre-training run")
    for d in (train_dir, heldout_dir, source_file):
        if d.is_dir():
            shutil.rmtree(d)
        elif d.exists():
            d.unlink()
    _build_data(args, train_dir, heldout_dir, tok)
    write_text_atomic(source_file, json.dumps(source, indent=2) + "\n")


def _build_data(args: PretrainArgs, train_dir: Path, heldout_dir: Path, tok: BertTokenizer) -> None:
    print(f"building the pre-training examples of {', '.join(args.corpus)} (sequences of {args.seq_len} tokens, "
          f"NSP pairs, under {train_dir.parent})", flush=True)  # a big corpus takes minutes: say what happens
    _warn_if_hard_wrapped(args)
    boundary, skip = _boundary(args.doc_boundary), HEADINGS.get(args.doc_boundary)
    common = dict(max_seq_length=args.seq_len, short_seq_prob=args.short_seq_prob, seed=args.seed,
                  report=functools.partial(print, flush=True))
    train = dict(common, dupe_factor=args.dupe_factor)  # held-out text once: its loss is an average anyway
    if args.eval_corpus:
        reading = dict(doc_boundary=boundary, wrapped=args.wrapped, skip=skip, progress=True)
        build_shards(args.corpus, tok, train_dir, **reading, **train)
        build_shards(args.eval_corpus, tok, heldout_dir, **reading, **common)
        return
    # every 20th document held out; the corpus is streamed once, and only the held-out twentieth kept in memory
    read, heldout = 0, []   # documents read so far; the held-out ones
    bar = CorpusProgress(args.corpus, train_dir.name)   # all the bytes read, the held-out documents' too

    def training_documents():
        nonlocal read
        for i, doc in enumerate(iter_documents(args.corpus, boundary, wrapped=args.wrapped, skip=skip,
                                               progress=bar.count)):
            read = i + 1
            if i % 20:
                yield doc
            else:
                heldout.append(doc)

    def too_few() -> ValueError:
        files = " (with --wrapped and no --doc-boundary regex, a file is a document)" \
            if args.wrapped and boundary is None else ""
        return ValueError(f"{', '.join(args.corpus)}: only {read} document{'' if read == 1 else 's'}{files}; "
                          "holding out every 20th needs at least 40 (or give --eval-corpus)")
    try:
        with contextlib.closing(bar):
            build_shards(training_documents(), tok, train_dir, progress=bar, **train)
    except ValueError:
        if 0 < read < 40:  # too few documents to draw random next sentences from: say what to do
            raise too_few() from None
        raise
    if read < 40:
        raise too_few()
    build_shards(heldout, tok, heldout_dir, **common)


def _warn_if_hard_wrapped(args: PretrainArgs) -> None:
    """Without --wrapped a hard-wrapped book is read a line at a time: its sentences become fragments, and its
    NSP pairs fragments of them, with no error. Said once, for all the files that look so."""
    if args.wrapped or args.doc_boundary == "wikitext":  # (--wrapped is refused with WikiText's layout)
        return
    files = dict.fromkeys([*args.corpus, *args.eval_corpus])  # a missing file is iter_documents' error
    widths = {p: hard_wrap_width(p) for p in files if Path(p).is_file()}
    wrapped = [f"{p} ({w} columns)" for p, w in widths.items() if w]
    if wrapped:
        warn(f"{', '.join(wrapped)}: lines hard-wrapped mid-sentence, read one at a time without --wrapped, so "
             "sentences become fragments: pass --wrapped (and --doc-boundary REGEX for the headings that start "
             "a document)")


def _micro_batches(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """A collated batch cut into batches of at most `size` rows."""
    n = len(batch["input_ids"])
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _load_or_train_tokenizer(args: PretrainArgs, run: Path) -> BertTokenizer:
    saved = run / "tokenizer"
    if args.tokenizer:
        return BertTokenizer.from_pretrained(args.tokenizer)

    def train():  # rank 0; the others wait, and get its error if it fails
        if saved.is_dir() and not args.resume:  # left by a run that never checkpointed: it may be of another corpus
            check_ours(saved, SAVED_FILES.__contains__, "a pre-training run")
            shutil.rmtree(saved)
        if not saved.is_dir():
            print(f"training a WordPiece vocabulary of {args.vocab_size} on {', '.join(args.corpus)}", flush=True)
            BertTokenizer.train(args.corpus, args.vocab_size, lowercase=not args.cased,
                                show_progress=True).save_pretrained(saved)
    dist.on_main(train)
    return BertTokenizer.from_pretrained(saved)


def _model_config(args: PretrainArgs, tok: BertTokenizer) -> BertConfig:
    cfg = BertConfig.from_json_file(args.config) if args.config else BertConfig.from_size(args.model_size)
    if args.config and cfg.vocab_size != tok.num_ids:
        dist.print0(f"--config {args.config}: vocab_size {cfg.vocab_size} replaced by the tokenizer's {tok.num_ids}")
    cfg.vocab_size = tok.num_ids
    cfg.pad_token_id = tok.pad_token_id
    cfg.validate()
    _check_seq_len(args, cfg)
    return cfg


def _check_seq_len(args: PretrainArgs, cfg: BertConfig) -> None:
    if args.seq_len > cfg.max_position_embeddings:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's max_position_embeddings "
                         f"({cfg.max_position_embeddings})")


def _check_init_from(args: PretrainArgs) -> tuple[str, BertTokenizer]:
    """`--init-from`'s flags and tokenizer against its config.json alone, before its weights are read (a large
    model's take a while) and before anything is written: a --seq-len beyond its positions, or a vocabulary of
    another size, fails at once. Returns the model's directory, resolved here once (a hub name resolved again
    warns again, and could find another snapshot), and the tokenizer."""
    if args.config or args.model_size != PretrainArgs.model_size:
        raise ValueError("--init-from takes the model's own configuration; drop --config / --model-size")
    model_dir = resolve_model_dir(args.init_from)
    path = config_file(model_dir)
    cfg = BertConfig.from_json_file(path)
    if args.seq_len > cfg.max_position_embeddings:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the max_position_embeddings of the --init-from model "
                         f"({cfg.max_position_embeddings}, in {path})")
    tok = _init_from_tokenizer(args, model_dir)
    if cfg.vocab_size != tok.num_ids:
        source = (f"--tokenizer {_tokenizer_file(args.tokenizer)}" if args.tokenizer
                  else f"its tokenizer {_tokenizer_file(model_dir)}")
        advice = "use the model's own tokenizer" if args.tokenizer else "the model and its tokenizer do not match"
        raise ValueError(f"--init-from {args.init_from}: vocab_size {cfg.vocab_size} in {path}, but {source} has "
                         f"{tok.num_ids} ids; {advice}")
    return model_dir, tok


def _init_from_tokenizer(args: PretrainArgs, model_dir: str) -> BertTokenizer:
    """--tokenizer, else the model's own vocabulary, read from its directory as resolved (not the name again)."""
    if args.tokenizer:
        return BertTokenizer.from_pretrained(args.tokenizer)
    try:
        return BertTokenizer.from_pretrained(model_dir)
    except (FileNotFoundError, OSError) as e:
        raise ValueError(f"--init-from {args.init_from}: no tokenizer found with the model ({e}); "
                         "pass --tokenizer") from None


def _tokenizer_file(where: str) -> str:
    """The file a tokenizer was read from, as BertTokenizer.from_pretrained picks it (tokenizer.json first), for
    messages; a name resolved in the hub cache stays the name."""
    path = Path(where)
    if not path.is_dir():
        return where
    return str(path / ("tokenizer.json" if (path / "tokenizer.json").is_file() else "vocab.txt"))


def _initial_model(args: PretrainArgs, tok: BertTokenizer, model_dir: str | None) -> BertForPreTraining:
    """Random BERT weights of the configured size, or those of `--init-from` (continued pre-training on new
    text, or BERT's second phase at 512 tokens): its encoder, and its MLM / NSP heads where it has them.
    `model_dir`: --init-from's directory, resolved (and its config.json checked) by _check_init_from."""
    if not args.init_from:
        return BertForPreTraining(_model_config(args, tok))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)  # reported below, in one line
        model = BertForPreTraining.from_pretrained(model_dir)
    dist.print0(f"--init-from {model.load_report}")
    return model


def _instance_text(tok: BertTokenizer, ids: torch.Tensor, types: torch.Tensor, random_next: bool) -> str:
    """An instance's text of one document (segment A alone when B is another document's), each segment from its
    first whole word: pair truncation may cut a segment's front inside a word, and decoded after the segment
    before, that word's rest would join its last word ("remaining." then "##naeus": "remaining.naeus")."""
    special = set(tok.all_special_ids)
    texts = []
    for segment in (0,) if random_next else (0, 1):
        seg = [i for i in ids[types == segment].tolist() if i not in special]
        pieces = tok.convert_ids_to_tokens(seg)
        start = next((j for j, p in enumerate(pieces) if not p.startswith("##")), len(seg))
        texts.append(tok.decode(seg[start:]))
    return " ".join(t for t in texts if t)


def mask_examples(documents_dir: Path, tok: BertTokenizer, n: int = 4, seed: int = 0) -> list[tuple[str, str]]:
    """A few held-out sentences with one word masked: (masked text, the word). Text of one document: segment A
    alone where B was drawn from another document."""
    ds = PretrainingDataset(documents_dir)
    rng = random.Random(seed)
    out = []
    for i in rng.sample(range(len(ds)), min(len(ds), 200)):
        ids, types, random_next = ds[i]
        text = _instance_text(tok, ids, types, random_next)
        words = text.split()[:24]
        candidates = [j for j, w in enumerate(words) if re.fullmatch(r"[A-Za-z]{4,}", w)]
        if len(words) < 8 or not candidates:
            continue
        j = rng.choice(candidates)
        if len(tok.tokenize(words[j])) != 1:  # one [MASK] must stand for the whole word
            continue
        answer, words[j] = words[j], tok.mask_token
        out.append((" ".join(words), answer))
        if len(out) == n:
            break
    return out


# what the arguments check on --resume leaves alone: how the run is shown, saved or executed, not what it computes;
# its length (more steps); where the run directory is (--output, by any path); what the data check (_prepare_data)
# compares by content (the corpus and tokenizer paths, which may move) or refuses with its own message (doc_boundary,
# wrapped, seed), as the trainer does for the batch (a per-process batch may change with the number of processes, the
# global one may not). seq_len is checked here: --max-predictions follows it when not given, and the message should
# name the flag the user changed, not only the one that followed it
RESUME_FREE = frozenset({"resume", "compile", "gradient_checkpointing", "fsdp", "log_every", "keep_last", "save_every",
                         "eval_every", "eval_batches", "max_steps", "warmup_steps", "corpus", "eval_corpus",
                         "tokenizer", "doc_boundary", "wrapped", "seed", "batch_size", "grad_accum", "output"})


def run_pretraining(args: PretrainArgs) -> dict:
    info = dist.setup()
    run = Path(args.output)
    with contextlib.ExitStack() as held:  # rank 0 holds the run directory's lock for the whole job
        tok, model, train_ds, heldout_ds = _set_up(args, run, held)
        return _train(args, info, run, tok, model, train_ds, heldout_ds)


def _set_up(args: PretrainArgs, run: Path, held: contextlib.ExitStack):
    """The checks, the vocabulary, the model and the data shards, before any training: a failure here leaves no
    run directory behind that this job created."""
    # a bad --config, or a --seq-len the model cannot hold, fails before any tokenizer or data is built
    model_dir = tok = None
    if args.init_from:  # its tokenizer too: one of another size fails before the weights are read
        model_dir, tok = _check_init_from(args)
    else:
        cfg = BertConfig.from_json_file(args.config) if args.config else BertConfig.from_size(args.model_size)
        _check_seq_len(args, cfg)
    docs_corpus = not args.corpus
    if docs_corpus:
        args.corpus = [str(run / "python-docs.txt")]
    ready = False  # until the set-up is done, a failure removes the run directory if this job made it

    def start():  # rank 0, the others waiting (and failing with its error)
        # a second job in this directory is refused before it changes anything (or removes what the first made)
        held.enter_context(run_lock(run, discard_new=lambda: not ready))
        # a checkpoint without `latest` too: a run killed between the checkpoint's rename and that file's write
        if not args.resume and ((run / LATEST_NAME).exists() or find_latest(run) is not None):
            raise ValueError(f"{run} already holds a run; pass --resume to continue it or choose another --output")
        if docs_corpus and not Path(args.corpus[0]).exists():
            print("no --corpus given: building one from the documentation shipped with Python")
            python_docs_corpus(args.corpus[0])
    dist.on_main(start)
    dist.check_shared_dir(run)  # every rank reads the vocabulary, data and checkpoints that rank 0 writes there
    if args.resume:
        dist.on_main(lambda: check_resumed_settings(run / "pretrain_args.json", args, RESUME_FREE))  # said once
    if tok is None:
        tok = _load_or_train_tokenizer(args, run)
    torch.manual_seed(args.seed)  # the random weights (with --init-from: of the parts it lacks)
    model = _initial_model(args, tok, model_dir)  # before the data: a config that does not fit fails first
    dist.on_main(lambda: _prepare_data(args, run, tok))
    data = PretrainingDataset(run / "data" / "train"), PretrainingDataset(run / "data" / "heldout")
    _check_heldout(data[1], tok, run / "data" / "heldout")
    step_batch = args.batch_size * args.grad_accum * dist.world_size()
    if step_batch > len(data[0]):   # here, not in the batch source: a new run's directory is then removed
        raise ValueError(f"--batch-size {args.batch_size} x --grad-accum {args.grad_accum} x "
                         f"{dist.world_size()} process(es) = {step_batch} sequences a step, more than the "
                         f"{len(data[0]):,} training instances of the corpus")
    ready = True  # from here a failure keeps the run directory: its data is built, a --resume uses it
    # the settings the run starts with; a resume keeps them (a first run given --resume, as a preemptible job's
    # script passes it every time, starts the run and writes them too)
    if dist.is_main() and not (args.resume and (run / "pretrain_args.json").is_file()):
        write_text_atomic(run / "pretrain_args.json", json.dumps(vars(args), indent=2) + "\n")
    return tok, model, *data


def _check_heldout(heldout: PretrainingDataset, tok: BertTokenizer, where: Path, sample: int = 2000) -> None:
    """Before training (its first `sample` sequences): the held-out text must hold tokens MLM can mask; text whose
    every token is [UNK] or special has none, and its evaluation would divide by zero after the whole run. A
    vocabulary that reads much of the text as [UNK] is said too."""
    special = np.asarray(sorted(set(tok.all_special_ids) - {tok.unk_token_id}))
    real = unknown = 0
    for i in range(min(len(heldout), sample)):
        ids = np.asarray(heldout[i][0])
        kept = ids[~np.isin(ids, special)]
        real += len(kept)
        unknown += int((kept == tok.unk_token_id).sum())
    maskable = real - unknown
    if not maskable:
        raise ValueError(f"{where}: the held-out sequences hold no token to mask ({unknown:,} of their {real:,} "
                         "tokens are [UNK], the rest special): does the vocabulary fit this text?")
    if unknown > real / 4:
        warn(f"{where}: {unknown / real:.0%} of the held-out tokens are [UNK]: the vocabulary does not fit this text "
             "well (MLM never masks [UNK])")


def _train(args: PretrainArgs, info, run: Path, tok: BertTokenizer, model: BertForPreTraining,
           train_ds: PretrainingDataset, heldout_ds: PretrainingDataset) -> dict:
    dist.print0(f"corpus: {len(train_ds):,} training and {len(heldout_ds):,} held-out instances "
                f"of up to {args.seq_len} tokens; vocabulary {len(tok):,}")

    objective = PreTrainingObjective(model)
    collator = MaskingCollator.from_tokenizer(tok, max_predictions_per_seq=args.max_predictions,
                                              whole_word=args.whole_word)
    batches = PretrainingBatches(train_ds, args.batch_size, collator, seed=args.seed, rank=info.rank,
                                 world_size=info.world_size)
    # held-out batches of the global batch size, so that the held-out set and its masks do not depend on how
    # a run splits it into processes and micro-batches; each runs in micro-batches of --batch-size
    global_batch = args.batch_size * args.grad_accum * info.world_size
    heldout = PretrainingBatches(heldout_ds, min(global_batch, len(heldout_ds)), collator, seed=args.seed + 1)
    n_eval = min(args.eval_batches, heldout.batches_per_epoch)

    def evaluate(_model):
        heldout.load_state_dict({"epoch": 0, "batch": 0})  # the same masks every time
        it = iter(heldout)
        return evaluate_pretraining(objective, (micro for _ in range(n_eval)
                                                for micro in _micro_batches(next(it), args.batch_size)))

    warmup = -(-args.max_steps // 10) if args.warmup_steps is None else args.warmup_steps  # 10%, rounded up
    cfg = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      lr=args.lr, warmup_steps=warmup, weight_decay=args.weight_decay, eps=args.adam_epsilon,
                      optimizer=args.optimizer, precision=args.precision, log_every=args.log_every,
                      eval_every=args.eval_every or args.max_steps, save_every=args.save_every,
                      keep_last=args.keep_last, seed=args.seed, output_dir=str(run), compile=args.compile,
                      gradient_checkpointing=args.gradient_checkpointing, fsdp=args.fsdp)
    trainer = Trainer(objective, model, batches, cfg, evaluate=evaluate, save_extra=tok.save_pretrained)
    result = trainer.train(resume=args.resume)
    if not any(k.startswith("eval_") for k in result):  # resumed at max_steps: no step ran, none was logged
        result.update({f"eval_{k}": v for k, v in trainer.run_evaluation().items()})

    dist.save_pretrained(model, run)  # collective under FSDP
    if dist.is_main():
        if dist.is_sharded(model):  # the demo below runs on rank 0 alone: a whole copy
            model = BertForPreTraining.from_pretrained(run)
        tok.save_pretrained(run)
        png = plot_run(run)
        ev = {k[5:]: v for k, v in result.items() if k.startswith("eval_")}
        print(f"\nheld-out ({n_eval} batch{'es' * (n_eval != 1)}): MLM accuracy {ev['mlm_accuracy']:.3f}, "
              f"perplexity {ev['perplexity']:.1f}, NSP accuracy {ev['nsp_accuracy']:.3f}")
        examples = mask_examples(run / "data" / "heldout", tok, seed=args.seed)
        if examples:
            model.eval()
            print("fill-mask on held-out text:")
            for (text, answer), (guesses,) in zip(examples, fill_mask(model, tok, [t for t, _ in examples])):
                shown = ", ".join(f"{t} {p:.2f}" for t, p in guesses)
                print(f"  {text}\n    answer: {answer}   model: {shown}")
        print(f"model, tokenizer and curves ({os.path.basename(png)}) in {run}")
    dist.cleanup()
    return result
