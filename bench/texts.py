"""A fixed mix of real texts from ../shared/data, in a fixed "arrival order", for races and parity tests.

Short texts (reviews, SMS, questions) arrive interleaved with long ones (SQuAD contexts, Wikipedia and
novel paragraphs), as a service sees them; batched in this order, most tokens of a padded batch are padding.
"""
from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _tsv_column(path: Path, column: str) -> list[str]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    idx = lines[0].split("\t").index(column)
    return [row.split("\t")[idx] for row in lines[1:] if row.count("\t") >= idx]


def _paragraphs(path: Path, min_words: int = 8) -> list[str]:
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    paras = [" ".join(p.split()) for p in text.split("\n\n")] if "\n\n" in text else text.splitlines()
    return [p.strip() for p in paras if len(p.split()) >= min_words and not p.strip().startswith("=")]


def sources(data: Path = DATA) -> dict[str, list[str]]:
    """Each source's texts, in file order."""
    squad = json.loads(zipfile.ZipFile(data / "qa/squad/dev-v1.1.json.zip").read("dev-v1.1.json"))
    contexts = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    questions = [q["question"] for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]]
    return {
        "sst2": _tsv_column(data / "classification/sst2/dev.tsv", "sentence"),
        "sms": [line.split("\t", 1)[1] for line in
                (data / "classification/sms_spam/SMSSpamCollection").read_text(encoding="utf-8").splitlines()],
        "mrpc": _tsv_column(data / "classification/mrpc/dev.tsv", "#1 String"),
        "rte": _tsv_column(data / "classification/rte/dev.tsv", "sentence1"),
        "qnli": _tsv_column(data / "classification/qnli/dev.tsv", "sentence"),
        "squad_question": questions,
        "squad_context": contexts,
        "wikitext": _paragraphs(data / "pretrain/wikitext-2-raw.test.raw"),
        "austen": _paragraphs(data / "pretrain/pride-and-prejudice.pg1342.txt"),
    }


def mixed_texts(n: int, seed: int = 0, data: Path = DATA) -> list[str]:
    """`n` texts drawn from the sources in a seeded random interleaving (each source read in order)."""
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: the shared data sets are not here")
    srcs = sources(data)
    names = sorted(srcs)
    pos = dict.fromkeys(names, 0)
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        name = rng.choice(names)
        texts = srcs[name]
        out.append(texts[pos[name] % len(texts)])
        pos[name] += 1
    return out
