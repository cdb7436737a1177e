"""The commands that README.md and docs/PERFORMANCE.md give parse as written, the bench scripts' and bertkit's
own: a flag renamed or dropped shows here, not when a reader (or a session with a GPU for ten minutes) copies
the command."""
from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/PERFORMANCE.md")


def _code(text: str) -> list[str]:
    """The lines of the code blocks (continued lines joined, comments dropped) and the inline code spans (which
    may wrap across lines), each with its whitespace collapsed."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        found += [" ".join(line.split(" #")[0].split()) for line in block.replace("\\\n", " ").splitlines()]
    return found + [" ".join(span.split())
                    for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))]


def _commands(text: str) -> list[str]:
    """`python bench/...` commands, up to a redirection or pipe; usage lines ([--flag N]) left out."""
    commands = []
    for c in _code(text):
        if "python bench/" in c and "[" not in c:
            c = c[c.index("python bench/"):]
            commands.append(re.split(r"\s(?:\d?>|\|)", c)[0].strip())
    return commands


def _cli_commands(text: str) -> list[list[str]]:
    """The arguments of each `bertkit ...` command (also `python -m bertkit`, `torchrun ... -m bertkit`)."""
    commands = []
    for c in _code(text):
        m = re.search(r"(?:^|\s)bertkit ([a-z].*)", c)
        if m and not m.group(1).startswith("import ") and "[" not in c:
            commands.append(shlex.split(m.group(1)))
    return commands


def _all_commands() -> list[str]:
    return sorted({c for doc in DOCS for c in _commands((ROOT / doc).read_text(encoding="utf-8"))})


class _Parsed(Exception):
    pass


def test_the_docs_give_bench_commands():
    commands = _all_commands()
    assert len(commands) >= 30, commands  # the extraction itself works
    assert "python bench/infer_cpu.py" in commands and "python bench/cold_start.py --repeats 5" in commands
    assert _commands("x `python bench/a.py --b 1\n --c` y\n```bash\npython bench/d.py \\\n  --e  # note\n```\n"
                     "`python bench/f.py [--g N]` `python bench/h.py 2> log.txt`") == [
        "python bench/d.py --e", "python bench/a.py --b 1 --c", "python bench/h.py"]


@pytest.mark.parametrize("command", _all_commands())
def test_a_bench_command_of_the_docs_parses(command, monkeypatch):
    script, *args = shlex.split(command)[1:]
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        parse(self, argv, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
    monkeypatch.syspath_prepend(str(ROOT))
    threads, environ = torch.get_num_threads(), dict(os.environ)  # a script may set them as it is imported
    try:
        with pytest.raises(_Parsed):  # an unknown or missing flag exits with argparse's error (SystemExit) instead
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)


def test_the_readme_gives_cli_commands():
    commands = _cli_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(commands) >= 20 and ["demo"] in commands, commands
    assert _cli_commands("`torchrun --nproc-per-node 2 -m bertkit pretrain --lr 1` `from bertkit import X`") == [
        ["pretrain", "--lr", "1"]]


@pytest.mark.parametrize("args", _cli_commands((ROOT / "README.md").read_text(encoding="utf-8")), ids=" ".join)
def test_a_cli_command_of_the_readme_parses(args):
    """Whole commands parse as given; one abridged with "..." has each of its flags known to its subcommand (a
    command named alone, `predict`, is a mention: nothing to parse)."""
    from bertkit.cli import build_parser
    parser = build_parser()
    words = next(" ".join(args[:n]) for n in (2, 1) if " ".join(args[:n]) in parser.commands)
    if "..." not in args and len(args) > len(words.split()):
        parsed, unknown = parser.parse_known_args(args)
        assert not unknown
        return
    known = parser.commands[words]._option_string_actions
    assert [a for a in args if a.startswith("--") and a.split("=")[0] not in known] == []
