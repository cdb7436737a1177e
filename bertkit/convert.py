"""Checkpoints of the original implementations, converted to bertkit's (and HuggingFace's) layout.

Sources read:
- google-research/bert: a TensorFlow checkpoint (`bert_model.ckpt.index` + `.data-*`), `bert_config.json`
  and `vocab.txt`, as in Google's released zips and as its run_pretraining.py, run_classifier.py and
  run_squad.py save them (optimizer slots are dropped);
- NVIDIA DeepLearningExamples (PyTorch): a `.pt` training checkpoint whose "model" entry holds the
  weights, with `bert_config.json` (its fused `dense_act` layers are renamed by `hub.LEGACY_NAMES`);
- any other BERT state dict (`.bin`, `.pt`, `.safetensors`) with a config file.

`convert` writes a directory with config.json, model.safetensors and the tokenizer files, which bertkit
and transformers load by path. The model class is the one asked for, else the config's `architectures`, else
the one the checkpoint's heads point to (`architecture`).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

import torch

from . import modeling
from .config import BertConfig
from .hub import WEIGHTS_NAMES, check_config_sizes, read_weights, legacy_name, load_state, save_pretrained
from .io import atomic_directory, check_new_directory
from .tf_bundle import index_path, read_index, read_variables

CONFIG_FILES = ("bert_config.json", "config.json")
# beside a vocab.txt, files that make a HuggingFace tokenizer directory: its settings, added and special tokens
HF_TOKENIZER_SETTINGS = ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")

# TensorFlow variables that are training state, not weights: optimizer slots and counters
# (AdamWeightDecayOptimizer's adam_m/adam_v, tf.train.AdamOptimizer's Adam/Adam_1, NVIDIA's LAMB lamb_m/lamb_v
# and loss-scaling variables).
TF_TRAINING_STATE = re.compile(
    r"(^|/)(global_step|adam_m|adam_v|lamb_m|lamb_v|Adam|Adam_1|AdamWeightDecayOptimizer|AdamWeightDecayOptimizer_1|"
    r"Momentum|beta1_power|beta2_power|"
    r"loss_scale|current_loss_scale|good_steps|bad_steps)$")
TF2_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"  # present in TF2 object-based (Keras, Model Garden) checkpoints
# Last component of a TensorFlow variable name -> last component of the checkpoint key.
TF_LEAVES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
             "output_weights": "weight", "output_bias": "bias"}
# Heads google-research/bert's fine-tuning scripts create outside the `bert/` and `cls/predictions` scopes.
TF_HEADS = {"cls/squad/": "qa_outputs/",  # run_squad.py: cls/squad/output_weights, (2, hidden)
            "output_": "classifier/output_"}  # run_classifier.py: output_weights, (num_labels, hidden)


def tf_key(name: str) -> tuple[str, bool]:
    """The checkpoint key of TensorFlow variable `name`, and whether to transpose it: a TensorFlow
    dense kernel is (in, out), a torch Linear weight (out, in); embeddings and `output_weights` are
    stored (rows, hidden) in both."""
    original = name
    for prefix, new in TF_HEADS.items():
        if name.startswith(prefix):
            name = new + name[len(prefix):]
    *scopes, leaf = name.split("/")
    parts = []
    for scope in scopes:
        m = re.fullmatch(r"layer_(\d+)", scope)
        parts += ["layer", m[1]] if m else [scope]
    if leaf.endswith("_embeddings"):
        parts += [leaf, "weight"]
    elif leaf in TF_LEAVES:
        parts.append(TF_LEAVES[leaf])
    else:
        raise ValueError(f"TensorFlow variable {original!r} is not a BERT weight this converter knows")
    return ".".join(parts), leaf == "kernel"


def tf_state_dict(prefix: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights of a google-research/bert TensorFlow checkpoint under their checkpoint keys, and the
    names of the training-state variables left out."""
    num_shards, entries = read_index(prefix)
    if TF2_OBJECT_GRAPH in entries:
        raise ValueError(f"{prefix}: a TensorFlow 2 object-based checkpoint (Keras / TF Model Garden); only the "
                         "name-based checkpoints of google-research/bert and NVIDIA's TensorFlow BERT are read")
    skipped = sorted(n for n in entries if TF_TRAINING_STATE.search(n))  # never read
    weights = {n: e for n, e in entries.items() if not TF_TRAINING_STATE.search(n)}
    keys, unknown = {}, []
    for name in sorted(weights):  # every name is checked before gigabytes are read
        try:
            keys[name] = tf_key(name)
        except ValueError:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{index_path(prefix)}: {len(unknown)} variables are not BERT weights this converter knows: "
                         f"{', '.join(map(repr, unknown[:4]))}{', ...' * (len(unknown) > 4)}")
    state = {}
    for name, tensor in read_variables(prefix, num_shards, weights).items():
        key, transpose = keys[name]
        state[key] = tensor.t().contiguous() if transpose else tensor
    return state, skipped


def _has_pooler(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("pooler.", "bert.pooler.")) for k in state)


def architecture(state: dict[str, torch.Tensor]) -> str:
    """The bertkit class a checkpoint's heads point to (keys as `legacy_name` returns them). A classifier
    without a pooler is a tagger (transformers' BertForTokenClassification has none); one with a pooler is taken
    for a sequence classifier, which a tagger or multiple-choice model saved with a pooler also looks like
    (`convert`'s `architecture` argument names those)."""
    if any(k.startswith("qa_outputs.") for k in state):
        return "BertForQuestionAnswering"
    if any(k.startswith("classifier.") for k in state):
        return "BertForSequenceClassification" if _has_pooler(state) else "BertForTokenClassification"
    mlm = any(k.startswith("cls.predictions.") for k in state)
    nsp = any(k.startswith("cls.seq_relationship.") for k in state)
    if mlm and nsp:
        return "BertForPreTraining"
    return "BertForMaskedLM" if mlm else "BertForNextSentencePrediction" if nsp else "BertModel"


def vocab_is_cased(vocab_file: str | os.PathLike) -> bool:
    """Whether a vocabulary was built from cased text: an uncased one (built from lower-cased text) has no
    letter that lower-casing changes outside its bracketed special tokens. (It may have upper-case
    letters without a lower-case form: Google's uncased vocabulary holds "ℝ".)"""
    with open(vocab_file, encoding="utf-8") as f:
        for line in f:
            token = line.rstrip("\n")
            if not (token.startswith("[") and token.endswith("]")) and token.lower() != token:
                return True
    return False


def _tf_index(directory: str) -> str | None:
    """The TensorFlow checkpoint in `directory`: the one its `checkpoint` file names, else its only index.

    The name is taken inside `directory` only: a training machine writes its own absolute (or gs://) path there,
    which on another machine names nothing, or, in a directory from elsewhere, someone else's files."""
    pointer = os.path.join(directory, "checkpoint")
    if os.path.isfile(pointer):
        with open(pointer, encoding="utf-8") as f:
            m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', f.read(), re.M)
        if m:
            name = m[1].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
            if name in ("", ".", ".."):
                raise ValueError(f"{pointer}: model_checkpoint_path {m[1]!r} names no checkpoint")
            return os.path.join(directory, name) + ".index"
    indexes = sorted(glob.glob(os.path.join(directory, "*.index")))
    if len(indexes) > 1:
        names = ", ".join(os.path.basename(p)[: -len(".index")] for p in indexes)
        raise ValueError(f"{directory}: {len(indexes)} TensorFlow checkpoints ({names}) and no `checkpoint` "
                         "file naming one; pass one prefix, e.g. DIR/model.ckpt-1000")
    return indexes[0] if indexes else None


def _torch_file(directory: str) -> str | None:
    for name in WEIGHTS_NAMES:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    files = sorted(p for s in TORCH_SUFFIXES for p in glob.glob(os.path.join(directory, "*" + s)))
    if len(files) > 1:
        raise ValueError(f"{directory}: {len(files)} weight files ({', '.join(map(os.path.basename, files))}); "
                         "name one")
    return files[0] if files else None


def find_weights(source: str | os.PathLike) -> tuple[str, str]:
    """(path, "tf" or "torch") of the weights at `source`: a directory, a TensorFlow checkpoint prefix
    or index, or a PyTorch / safetensors file."""
    source = os.fspath(source)
    if os.path.isdir(source):
        found = _tf_index(source)
        if found:
            return found, "tf"
        found = _torch_file(source)
        if found:
            return found, "torch"
        raise FileNotFoundError(f"{source}: no weights: expected a TensorFlow checkpoint (*.index + *.data-*) "
                                f"or one of {', '.join(WEIGHTS_NAMES)}, *.pt, *.bin")
    data_file = re.fullmatch(r"(.+)\.data-\d{5}-of-\d{5}", source)  # a shard of a TensorFlow checkpoint
    if data_file and os.path.isfile(data_file[1] + ".index"):
        source = data_file[1]
    if source.endswith(".index") or os.path.isfile(source + ".index"):
        return (source if source.endswith(".index") else source + ".index"), "tf"
    if os.path.isfile(source):
        return source, "torch"
    raise FileNotFoundError(f"{source}: no such file, directory or TensorFlow checkpoint prefix")


def _beside(source: str, names: tuple[str, ...], given: str | None, what: str) -> str | None:
    if given is not None:
        if not os.path.isfile(given):
            raise FileNotFoundError(f"{given}: {what} not found")
        return given
    directory = source if os.path.isdir(source) else os.path.dirname(source) or "."
    return next((os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n))), None)


@dataclass
class Conversion:
    """What `convert` read and wrote."""

    source: str                      # the weights file read
    output: str
    architecture: str
    num_weights: int
    skipped: list[str] = field(default_factory=list)  # TensorFlow training state left out
    lowercase: bool | None = None    # the tokenizer's do_lower_case; None when no tokenizer was found
    notes: list[str] = field(default_factory=list)    # what was read other than the config says

    def __str__(self) -> str:
        lines = [f"read {self.num_weights} weights from {self.source}"
                 + (f" (left out {len(self.skipped)} optimizer/step variables)" if self.skipped else ""),
                 f"wrote {self.architecture} to {self.output}", *self.notes]
        if self.lowercase is None:
            lines.append("no vocab.txt or tokenizer.json found: no tokenizer written (pass --vocab)")
        else:
            lines.append(f"tokenizer: {'uncased (lower-cases text)' if self.lowercase else 'cased'}")
        return "\n".join(lines)


ARCHITECTURES = tuple(n for n in modeling.__all__ if n == "BertModel" or n.startswith("BertFor"))


def _padded_vocab(config: BertConfig, state: dict[str, torch.Tensor]) -> str | None:
    """NVIDIA's run_pretraining.py rounds vocab_size up to a multiple of 8 before building the model, while its
    bert_config.json keeps the real size: take the checkpoint's rows then (the extra ones are never produced by
    the tokenizer). Returns a note, or None."""
    rows = next((t.shape[0] for k, t in state.items() if k.endswith("embeddings.word_embeddings.weight")), None)
    if rows is None or rows == config.vocab_size or rows != -(-config.vocab_size // 8) * 8:
        return None
    note = f"vocab_size {config.vocab_size} -> {rows}: the checkpoint's embeddings are padded to a multiple of 8"
    config.vocab_size = rows
    return note


def convert(source: str | os.PathLike, output: str | os.PathLike, *, config_file: str | None = None,
            vocab_file: str | None = None, lowercase: bool | None = None,
            architecture_name: str | None = None) -> Conversion:
    """Convert the checkpoint at `source` into the directory `output` (which must not exist or be empty).

    The config is `config_file`, else bert_config.json or config.json beside the weights; the tokenizer
    `vocab_file` (a vocab.txt or tokenizer.json), else the one beside them: a HuggingFace directory's
    (tokenizer.json, or vocab.txt with tokenizer_config.json, added_tokens.json or special_tokens_map.json: read
    as transformers reads it; transformers 5 writes no vocab.txt), else vocab.txt. `lowercase=None` keeps the
    HuggingFace files' casing and reads a bare vocab.txt's from the vocabulary (`vocab_is_cased`). The model
    class is `architecture_name`, else the config's `architectures`, else `architecture(weights)`. Every weight
    of that class must be in the checkpoint (a bare encoder's pooler may be absent), and the directory appears
    whole or not at all.
    """
    source, output = os.fspath(source), os.fspath(output)
    if architecture_name is not None and architecture_name not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture_name!r}: expected one of {', '.join(ARCHITECTURES)}")
    check_new_directory(output)
    path, kind = find_weights(source)
    where = source if os.path.isdir(source) else os.path.dirname(path) or "."
    config, config_path = _read_config(where, config_file)
    state, skipped = _read_state(path, kind)
    notes = [n for n in (_padded_vocab(config, state),) if n]
    check_config_sizes(config, state, path, config_path)  # before the model it describes is allocated
    arch = _architecture(config, state, architecture_name)
    model = _load_model(arch, config, state, path, architecture_name, notes)
    tokenizer = _checked_tokenizer(where, vocab_file, lowercase, config, config_path)
    with atomic_directory(output) as staging:
        save_pretrained(model, staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return Conversion(source=path, output=output, architecture=arch, num_weights=len(state), skipped=skipped,
                      lowercase=tokenizer.do_lower_case if tokenizer is not None else None, notes=notes)


def _read_config(where: str, config_file: str | None) -> tuple[BertConfig, str]:
    """The config `convert` reads (see there) and its path."""
    config_path = _beside(where, CONFIG_FILES, config_file, "config file")
    if config_path is None:
        raise FileNotFoundError(f"{where}: no bert_config.json or config.json; pass --config FILE")
    return BertConfig.from_json_file(config_path), config_path


def _read_state(path: str, kind: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The checkpoint's weights under bertkit's names, and the TensorFlow training state left out."""
    if kind == "tf":
        return tf_state_dict(path)
    return {legacy_name(k): t for k, t in read_weights(path).items()}, []


def _architecture(config: BertConfig, state: dict[str, torch.Tensor], architecture_name: str | None) -> str:
    """The model class `convert` writes: the one named, else the config's `architectures`, else the weights'."""
    named = next((a for a in config.architectures or () if a in ARCHITECTURES), None)
    return architecture_name or named or architecture(state)


def _load_model(arch: str, config: BertConfig, state: dict[str, torch.Tensor], path: str,
                architecture_name: str | None, notes: list[str]):
    """`arch` with the checkpoint's weights, every one of the class's there. Weights it has no place for are
    left out, with a note appended to `notes`."""
    if arch in ("BertForSequenceClassification", "BertForTokenClassification") and "classifier.weight" in state:
        config.num_labels = state["classifier.weight"].shape[0]
    model = modeling.BertModel(config, add_pooling_layer=_has_pooler(state)) if arch == "BertModel" else \
        getattr(modeling, arch)(config)
    model = load_state(model, state, path)
    if model.load_report.newly_initialized:
        raise ValueError(f"{path}: incomplete checkpoint for {arch}: no "
                         f"{', '.join(model.load_report.newly_initialized[:4])}"
                         + ("" if architecture_name else "; name the model class with --architecture"))
    if model.load_report.unused:
        notes.append(f"left out {len(model.load_report.unused)} weights {arch} has no place for: "
                     f"{', '.join(model.load_report.unused[:4])}")
    return model


def _checked_tokenizer(where: str, vocab_file: str | None, lowercase: bool | None, config: BertConfig,
                       config_path: str):
    """The tokenizer `convert` writes, or None; one with more ids than the embeddings have rows is refused (its
    last ids would fail at run time)."""
    tokenizer, tokenizer_path = _tokenizer(where, vocab_file, lowercase, config.max_position_embeddings)
    if tokenizer is not None and tokenizer.num_ids > config.vocab_size:
        raise ValueError(f"{tokenizer_path}: {tokenizer.num_ids} token ids, but the checkpoint's word embeddings "
                         f"have {config.vocab_size} rows (vocab_size in {config_path}): not the vocabulary this "
                         "model was trained with; pass the right one with --vocab")
    return tokenizer


def _tokenizer(where: str, vocab_file: str | None, lowercase: bool | None, max_length: int):
    """The tokenizer `convert` writes (see there) and the file or directory it was read from; (None, None) when
    there is none to read."""
    from .tokenizer import BertTokenizer
    casing = {} if lowercase is None else {"do_lower_case": lowercase}
    found = {n for n in ("tokenizer.json", "vocab.txt", *HF_TOKENIZER_SETTINGS)
             if os.path.isfile(os.path.join(where, n))}
    huggingface = "tokenizer.json" in found or "vocab.txt" in found and found & set(HF_TOKENIZER_SETTINGS)
    if vocab_file is None and huggingface:
        return BertTokenizer.from_pretrained(where, **casing), where
    path = _beside(where, ("vocab.txt",), vocab_file, "vocabulary")
    if path is None:
        return None, None
    if path.endswith(".json"):  # a tokenizer.json alone does not hold the max length: the model's positions
        return BertTokenizer.from_pretrained(path, model_max_length=max_length, **casing), path
    casing.setdefault("do_lower_case", not vocab_is_cased(path))
    return BertTokenizer(path, model_max_length=max_length, **casing), path


