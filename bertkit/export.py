"""ONNX export of a model directory, for serving without PyTorch (onnxruntime, TensorRT, ...).

The output directory holds `model.onnx` beside `config.json` and the tokenizer files, the layout of
optimum's exports. Inputs are `input_ids`, `attention_mask` and `token_type_ids`, int64, with dynamic batch
and sequence axes (and a choices axis for multiple choice), named as optimum names them; outputs are the head's
fields (`last_hidden_state` and `pooler_output` (none for an encoder saved without a pooler), `logits`,
`start_logits` and `end_logits`, ...), padding positions zero as in PyTorch. The model is traced by
torch.export, during which the encoder keeps the padding in its plan (`packing.pack_padded`) so that no shape
depends on the mask. Before the directory is written, onnxruntime runs the exported model on other inputs and
its outputs are compared with PyTorch's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import modeling
from .config import BertConfig
from .convert import ARCHITECTURES
from .hub import LoadWarning, resolve_model_dir
from .io import atomic_directory, check_new_directory

ONNX_NAME = "model.onnx"
MIN_OPSET = 17  # the first with LayerNormalization
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SKIPPED_OUTPUTS = ("loss", "hidden_states", "attentions")
# texts to trace with and, of other lengths and count, to check with
TRACE_TEXTS = ["the quick brown fox", "jumps over the lazy dog near the river bank"]
CHECK_TEXTS = ["a", "a somewhat longer sentence, to check other shapes and more padding", "three texts"]


@dataclass
class Export:
    output: str
    architecture: str
    outputs: list[str]
    max_abs_diff: float  # onnxruntime against PyTorch on CHECK_TEXTS
    seconds: float = 0.0  # the export and its check, from the model's loading on

    def __str__(self) -> str:
        return (f"{self.architecture} -> {os.path.join(self.output, ONNX_NAME)} ({self.seconds:.0f} s)\n"
                f"inputs: {', '.join(INPUTS)} (batch and sequence axes dynamic); outputs: {', '.join(self.outputs)}\n"
                f"onnxruntime vs PyTorch on other inputs: max |diff| {self.max_abs_diff:.2e}")


def _missing_packages() -> list[str]:
    return [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]


def _inputs(tokenizer, texts: list[str], choices: bool) -> dict[str, torch.Tensor]:
    """A padded batch of `texts`; for multiple choice, each text with every other one as its choices."""
    if not choices:
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        return {k: enc[k] for k in INPUTS}
    pairs = [(a, b) for a in texts for b in texts if a != b]                  # len(texts) - 1 choices each
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    return {k: enc[k].view(len(texts), len(texts) - 1, -1) for k in INPUTS}  # (batch, choices, seqlen)


def _outputs(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs)
    return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)
            if f.name not in SKIPPED_OUTPUTS and getattr(out, f.name) is not None}


def export_onnx(model_dir: str | os.PathLike, output: str | os.PathLike, *, opset: int | None = None,
                report: Callable[[str], None] | None = None) -> Export:
    """Export the model in `model_dir` (a directory or a cached name, as for `from_pretrained`; its head from
    config.json's `architectures`, else the bare encoder) to `output`, a new directory written whole or not
    at all. `report` (the command: `print`) is told when the tracing starts, which takes tens of seconds (23 s for
    all-MiniLM-L6-v2's 6 layers on a busy 2-core CPU, more with more layers) and says nothing itself."""
    from .tokenizer import BertTokenizer
    model_dir, output = os.fspath(model_dir), os.fspath(output)
    missing = _missing_packages()
    if missing:
        raise ValueError(f"ONNX export needs the {' and '.join(missing)} package{'s' * (len(missing) > 1)}: "
                         "pip install onnx onnxscript onnxruntime (bertkit's [onnx] extra)")
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: BERT's layer norm is an ONNX LayerNormalization, which needs opset "
                         f"{MIN_OPSET} or newer")
    check_new_directory(output)
    started = time.monotonic()
    model_dir = resolve_model_dir(model_dir)  # a directory, or a name in the local caches (as from_pretrained)
    config = BertConfig.from_pretrained(model_dir)
    arch = (config.architectures or ["BertModel"])[0]
    if arch not in ARCHITECTURES:  # a name looked up in `modeling`: its model classes only, not any attribute
        raise ValueError(f"{model_dir}: config.json names the architecture {arch!r}, which bertkit does not build "
                         f"(expected one of {', '.join(ARCHITECTURES)})")
    with warnings.catch_warnings():  # what the checkpoint lacks is dealt with below, not warned about
        warnings.simplefilter("ignore", LoadWarning)
        model = getattr(modeling, arch).from_pretrained(model_dir).eval()
    fresh = model.load_report.newly_initialized
    if arch == "BertModel" and fresh and all(k.startswith("pooler.") for k in fresh):
        model.pooler, fresh = None, []  # an encoder saved without a pooler: no pooler_output, not a random one
    if fresh:
        raise ValueError(f"{model_dir}: no weights for {', '.join(fresh[:4])}{', ...' * (len(fresh) > 4)} in the "
                         f"checkpoint: the exported {arch} would hold random ones")
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    choices = arch == "BertForMultipleChoice"
    example = _inputs(tokenizer, TRACE_TEXTS + ["a third text"] * choices, choices)
    names = list(_outputs(model, example))
    if report is not None:
        layers = config.num_hidden_layers
        report(f"exporting {arch} ({layers} layer{'s' * (layers != 1)}, {model.num_parameters():,} parameters) of "
               f"{model_dir} to ONNX with torch.export (tens of seconds, more with more layers), then checking it "
               "with onnxruntime")
    # the ONNX file's axis names: optimum's
    axes = {0: torch.export.Dim("batch_size", max=1 << 20)}
    if choices:
        axes[1] = torch.export.Dim("num_choices", max=1 << 10)
    axes[len(axes)] = torch.export.Dim("sequence_length", max=config.max_position_embeddings)
    with atomic_directory(output) as staging, _quiet_exporter():
        program = torch.onnx.export(model, (), kwargs=example, input_names=list(INPUTS), output_names=names,
                                    dynamic_shapes={k: axes for k in INPUTS}, opset_version=opset, dynamo=True,
                                    verbose=False)
        program.save(os.path.join(staging, ONNX_NAME))
        written = _opset(os.path.join(staging, ONNX_NAME))
        if opset is not None and written != opset:  # torch converts down where it can, and keeps its own if not
            raise ValueError(f"opset {opset}: torch's exporter could only write opset {written}; pass that, or "
                             "leave --opset out")
        diff = _check(os.path.join(staging, ONNX_NAME), model, _inputs(tokenizer, CHECK_TEXTS, choices), names)
        config.dtype = model.dtype   # model.onnx's (fp32: loaded so), not a bf16 checkpoint's
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Export(output, arch, names, diff, time.monotonic() - started)


@contextlib.contextmanager
def _quiet_exporter():
    """Mute what torch's exporter says that asks nothing of the user: that torchvision's operators are not
    registered, that the inputs share their axis names (they do, on purpose: the model's axes are named
    batch_size and sequence_length), a deprecation inside torch's own pytree code, and the version converter's
    traceback (a file of another opset than asked is an error of its own)."""
    quiet = {"torch.onnx._internal.exporter._registration": logging.ERROR,
             "onnxscript.version_converter": logging.CRITICAL}  # its traceback when it cannot convert: we say so
    loggers = [logging.getLogger(name) for name in quiet]
    levels = [logger.level for logger in loggers]
    for logger, level in zip(loggers, quiet.values()):
        logger.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _opset(path: str) -> int:
    import onnx
    imports = onnx.load(path, load_external_data=False).opset_import
    return next(o.version for o in imports if o.domain in ("", "ai.onnx"))  # the default domain's


def _check(path: str, model, inputs: dict[str, torch.Tensor], names: list[str]) -> float:
    """Largest difference between onnxruntime's outputs and PyTorch's on `inputs`."""
    import onnxruntime
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(names, {k: v.numpy() for k, v in inputs.items()})
    except Exception as e:  # onnxruntime's own exception classes: a model it cannot load or run
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"onnxruntime could not run the exported model (opset {_opset(path)}): {why}") from None
    want = _outputs(model, inputs)
    return max(float(abs(torch.from_numpy(g) - want[n]).max()) for g, n in zip(got, names))
