"""Quality classifiers (lmstack quality-train, lmstack.data.curate.quality): a fastText model trained on a real
labelled split (the Brown Corpus's edited prose against nlp-corpus's mixed sentences) separates the held-out
documents; bad sides and bad model files are refused before any work, naming the problem."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest

from lmstack.cli import main

from .helpers import SHARED_DATA

BROWN, NLP = SHARED_DATA / "prose" / "brown.jsonl.gz", SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz"


@pytest.mark.slow
def test_a_classifier_trained_on_a_real_split_separates_held_out_documents(quality_model):
    from lmstack.data.curate.quality import load_model
    from lmstack.data.sources import is_validation

    m = json.loads((quality_model / "metrics.json").read_text())
    assert m["auc"] > 0.9 and m["accuracy"] > 0.8, m  # measured: 0.959 and 0.899
    assert m["documents"] == {"positive": 500, "negative": 500}  # balanced to the smaller side
    assert m["examples"]["positive"] + m["train"]["positive"] == 500  # every Brown document, once
    assert set(m["keep_fraction"]) == {"0.1", "0.25", "0.5"} and m["keep_fraction"]["0.1"]["precision"] > 0.9
    assert "ROC AUC" in (quality_model / "report.md").read_text()
    # the held-out Brown documents, scored again through the module the prepare step uses
    with gzip.open(BROWN, "rt") as f:
        held = [d["text"] for d in map(json.loads, f) if is_validation(f"positives/{d['id']}", 0.1)]
    scores = load_model(str(quality_model / "model.bin")).probs(held)
    assert len(held) == m["examples"]["positive"] and float(np.mean(scores >= 0.5)) > 0.8


def test_bad_sides_are_refused_before_any_work(tmp_path):
    rows = [json.dumps({"id": f"d{i}", "text": f"document number {i} says something"}) for i in range(30)]
    small, same = tmp_path / "small.jsonl", tmp_path / "same.jsonl"
    small.write_text("\n".join(rows[:5]) + "\n")
    same.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    cases = {
        "positives has 5 documents; need at least min_docs=20": [f"positives=[{small}]", f"negatives=[{NLP}]"],
        "30 document(s) on both sides, e.g. positive 'd0' is negative 'd0'": [
            f"positives=[{same}]",
            f"negatives=[{same}]",
        ],
        "negatives has 4000 documents, 8.0x the other side": [f"positives=[{BROWN}]", f"negatives=[{NLP}]"],
    }
    for message, sides in cases.items():
        with pytest.raises(SystemExit, match=re.escape(message)):
            main(["quality-train", *sides, f"out={out}"])
        assert not out.exists()  # nothing written


def test_a_file_that_is_not_a_fasttext_model_is_refused_naming_it(tmp_path):
    from lmstack.data.curate.quality import check_model_path

    with pytest.raises(ValueError, match=f"quality model {BROWN} is not a fastText model"):
        check_model_path(str(BROWN))
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_model_path(str(tmp_path / "missing.bin"))


def mixed_corpus(tmp_path) -> tuple:
    """40 Brown documents and 40 nlp-corpus ones, interleaved, as one JSONL input."""
    with gzip.open(BROWN, "rt") as f, gzip.open(NLP, "rt") as g:
        a = [json.loads(line) for line, _ in zip(f, range(40))]
        b = [json.loads(line) for line, _ in zip(g, range(40))]
    docs = [d for pair in zip(a, b) for d in pair]
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs))
    return src, docs


def rows(path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_threshold_and_keep_fraction_keep_exactly_what_a_direct_scoring_says(quality_model, tmp_path):
    from lmstack.data.curate.pipeline import run_prepare
    from lmstack.data.curate.quality import load_model

    from .helpers import prepare_cfg

    src, docs = mixed_corpus(tmp_path)
    model = quality_model / "model.bin"
    direct = load_model(str(model)).probs([d["text"] for d in docs])
    by_id = {d["id"]: s for d, s in zip(docs, direct)}
    best = sorted(range(len(docs)), key=lambda i: (-direct[i], i))  # the best first; ties: input order
    expected = {
        "threshold: 0.5": {d["id"] for d, s in zip(docs, direct) if s >= 0.5},
        "keep_fraction: 0.25": {docs[i]["id"] for i in best[:20]},
    }
    for option, kept_ids in expected.items():
        out = tmp_path / option.split(":")[0]
        cfg = prepare_cfg("prose", tokenize="null", keep_removed="true", filters="{}", dedup="{}",
                          **{"+quality.brown": f"{{model: '{model}', {option}}}"})  # fmt: skip
        stats = run_prepare([str(src)], str(out), cfg)
        kept = rows(out / "documents.jsonl.gz")
        assert {r["id"] for r in kept} == kept_ids, option
        assert 0 < len(kept_ids) < len(docs)
        assert stats["removed"] == {"quality/brown": len(docs) - len(kept_ids)}  # nothing else removed anything
        assert stats["docs_in"] == stats["docs_out"] + len(docs) - len(kept_ids) + stats["rejected"]
        removed = rows(out / "removed" / "quality.brown.jsonl.gz")
        assert {r["id"] for r in removed} == {d["id"] for d in docs} - kept_ids
        for r in kept:  # the score is in every kept document's metadata, and every removed one keeps it
            assert r["metadata"]["quality"]["brown"] == pytest.approx(by_id[r["id"]], abs=1e-7)
        assert all(r["quality"]["brown"] == pytest.approx(by_id[r["id"]], abs=1e-7) for r in removed)


def test_a_quality_model_that_is_not_a_fasttext_model_is_refused_before_work(tmp_path):
    from lmstack.data.curate.pipeline import run_prepare

    from .helpers import prepare_cfg

    out = tmp_path / "out"
    for option, message in (
        (f"{{model: '{BROWN}', threshold: 0.5}}", f"prepare.quality.q: quality model {BROWN} is not a fastText"),
        (
            f"{{model: '{BROWN}', threshold: 0.5, keep_fraction: 0.5}}",
            "prepare.quality.q: give threshold (a score) or keep_fraction (a share), not both",
        ),  # fmt: skip
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            run_prepare([str(BROWN)], str(out), prepare_cfg("prose", **{"+quality.q": option}))
        assert not out.exists()


@pytest.mark.slow
def test_buckets_split_the_corpus_at_job_wide_score_quantiles_and_a_mix_upsamples_one(
    quality_model, tmp_path, small_cfg, capsys
):
    """prepare.tokenize.buckets: one source per score range, cut at the quantiles of a direct scoring of the
    job's documents; a data mix that weights the best bucket up reports the passes over each bucket's blocks
    that the sampler really makes, and trains on them."""
    from lmstack.config.schema import DataSection, SourceSection
    from lmstack.data.curate.pipeline import run_prepare
    from lmstack.data.curate.quality import load_model
    from lmstack.data.datamodule import LMDataModule
    from lmstack.data.dataset import ResumableSampler
    from lmstack.run import run

    from .helpers import prepare_cfg

    src, docs = mixed_corpus(tmp_path)
    model = quality_model / "model.bin"
    direct = dict(zip([d["id"] for d in docs], load_model(str(model)).probs([d["text"] for d in docs])))
    out = tmp_path / "buckets"
    cfg = prepare_cfg("prose", filters="{}", dedup="{}", **{
        "+quality.brown": f"{{model: '{model}'}}",  # scores only: every document is kept
        "tokenize.buckets": "{by: brown, quantiles: [0.5]}", "tokenize.vocab_size": 512, "tokenize.seq_len": 64,
        "tokenize.val_fraction": 0.2, "source": "mixed",
    })  # fmt: skip
    stats = run_prepare([str(src)], str(out), cfg)
    assert stats["docs_out"] == len(docs)
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta["sources"]) == ["mixed_q0", "mixed_q1"]
    edge = float(np.quantile(list(direct.values()), 0.5))
    assert meta["sources"]["mixed_q1"]["bucket"] == {"by": "brown", "quantiles": [0.5, 1.0], "scores": [edge, None]}
    for name, low in (("mixed_q0", False), ("mixed_q1", True)):
        ids = {json.loads(line)["id"] for line in (out / name / "documents.jsonl").read_text().splitlines()}
        assert ids == {i for i, s in direct.items() if (s >= edge) == low}, name
        assert meta["sources"][name]["documents"] == len(ids) == 40
    # a mix drawing 90% of its samples from the best bucket: the sampler's own draws, per bucket
    sources = [SourceSection(name=n, prepared=str(out), part=f"mixed_q{k}", weight=w)
               for n, k, w in (("low", 0, 1.0), ("top", 1, 9.0))]  # fmt: skip
    dm = LMDataModule(DataSection(seq_len=64, batch_size=4), sources, str(tmp_path), total_micro_steps=1500)
    dm.setup()
    epochs = dm.epochs(world_size=1)
    drawn = np.bincount(np.searchsorted(dm.train_set.offsets, list(ResumableSampler(
        dm.train_set.lengths, dm.source_weights(), 4, 1500, 0, 0, 1, 0)), side="right") - 1, minlength=2)  # fmt: skip
    assert epochs == {n: d / b for n, d, b in zip(("low", "top"), drawn, dm.train_set.lengths)}
    blocks = dict(zip(("low", "top"), dm.train_set.lengths))
    assert epochs["top"] / epochs["low"] == pytest.approx(9 * blocks["low"] / blocks["top"], rel=0.15)
    assert epochs["top"] > 1.5  # the best bucket's documents repeat
    with pytest.raises(ValueError, match=r"has no source 'mixed_q7'; its sources are \['mixed_q0', 'mixed_q1'\]"):
        LMDataModule(DataSection(seq_len=64), [SourceSection(name="x", prepared=str(out), part="mixed_q7")],
                     str(tmp_path)).prepare_data()  # fmt: skip
    mix = f"data_mix.sources=[{{name: low, prepared: '{out}', part: mixed_q0, weight: 1}}, " \
          f"{{name: top, prepared: '{out}', part: mixed_q1, weight: 9}}]"  # fmt: skip
    result = run(small_cfg("data.seq_len=64", mix, "train.max_tokens=2048"))
    printed = capsys.readouterr().out
    assert result["steps"] == 8 and "epochs: low " in printed
    written = json.loads((tmp_path / "run" / "result.json").read_text())["epochs"]
    assert set(written) == {"low", "top"} and written["top"] > written["low"]


def test_buckets_name_a_configured_classifier_and_increasing_quantiles(quality_model, tmp_path):
    from lmstack.data.curate.pipeline import run_prepare

    from .helpers import prepare_cfg

    model = quality_model / "model.bin"
    out = tmp_path / "out"
    for buckets, message in (
        ("{by: edu, quantiles: [0.5]}", "prepare.tokenize.buckets.by='edu' names no prepare.quality classifier"),
        ("{by: brown, quantiles: [0.9, 0.5]}", "prepare.tokenize.buckets.quantiles=[0.9, 0.5]: increasing"),
        ("{by: brown, quantiles: [1.0]}", "prepare.tokenize.buckets.quantiles=[1.0]: increasing"),
    ):
        cfg = prepare_cfg("prose", **{"+quality.brown": f"{{model: '{model}'}}", "tokenize.buckets": buckets})
        with pytest.raises(ValueError, match=re.escape(message)):
            run_prepare([str(BROWN)], str(out), cfg)
        assert not out.exists()


def hf_classifier(folder, num_labels: int, docs: list) -> str:
    """A small BERT sequence classifier saved as a Hugging Face folder (FineWeb-Edu's shape with one output:
    a regression head), its WordPiece vocabulary the words of `docs`; random weights, seeded."""
    import collections

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir()
    words = collections.Counter(w for d in docs for w in re.findall(r"\w+|[^\w\s]", d["text"].lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(w for w, _ in words.most_common(3000))]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=96).save_pretrained(folder)
    labels = {0: "LABEL_0"} if num_labels == 1 else {0: "low", 1: "high"}
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.5, id2label=labels,
                        label2id={v: k for k, v in labels.items()},
                        problem_type="regression" if num_labels == 1 else None)  # fmt: skip
    torch.manual_seed(num_labels)
    BertForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


def direct_hf_scores(folder: str, texts: list[str], column=None) -> np.ndarray:
    """Each text scored alone as the model card shows: truncated to the tokenizer's length, the regression
    output itself or the softmax probability of a class."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            logits = model(**tok(t, return_tensors="pt", truncation=True)).logits[0]
            out.append(float(logits[0] if column is None else torch.softmax(logits, -1)[column]))
    return np.array(out)


@pytest.mark.slow
def test_hugging_face_folders_keep_exactly_what_a_direct_scoring_says(tmp_path):
    """A regression folder with keep_fraction (negative scores sort below positive ones) and a two-class
    folder with a threshold keep the documents the model card's own scoring says; FineWeb-Edu's kind of
    threshold (above 1) is a score on the regression scale, refused for a probability."""
    from lmstack.data.curate.pipeline import run_prepare

    from .helpers import prepare_cfg

    src, docs = mixed_corpus(tmp_path)
    texts = [d["text"] for d in docs]
    regression = hf_classifier(tmp_path / "edu", 1, docs)
    two_class = hf_classifier(tmp_path / "hq", 2, docs)
    reg_scores, cls_scores = direct_hf_scores(regression, texts), direct_hf_scores(two_class, texts, column=1)
    edge = float(np.median(cls_scores))
    best = sorted(range(len(docs)), key=lambda i: (-reg_scores[i], i))
    cases = {
        (regression, "keep_fraction: 0.5"): ({docs[i]["id"] for i in best[:40]}, reg_scores),
        (two_class, f"threshold: {edge}"): ({d["id"] for d, s in zip(docs, cls_scores) if s >= edge}, cls_scores),
    }
    for (model, option), (kept_ids, scores) in cases.items():
        out = tmp_path / option.split(":")[0]
        cfg = prepare_cfg("prose", tokenize="null", filters="{}", dedup="{}",
                          **{"+quality.q": f"{{model: '{model}', {option}}}"})  # fmt: skip
        stats = run_prepare([str(src)], str(out), cfg)
        kept = rows(out / "documents.jsonl.gz")
        assert {r["id"] for r in kept} == kept_ids and 0 < len(kept_ids) < len(docs), option
        assert stats["removed"] == {"quality/q": len(docs) - len(kept_ids)}
        by_id = {d["id"]: s for d, s in zip(docs, scores)}
        for r in kept:
            assert r["metadata"]["quality"]["q"] == pytest.approx(by_id[r["id"]], abs=1e-5)
    assert reg_scores.min() < 0 < reg_scores.max()  # the keys sort negative and positive scores alike
    # a threshold on the regression scale is taken as it is; for a probability it is refused
    from lmstack.data.curate.quality import QualityClassifier

    assert QualityClassifier("edu", regression, threshold=3.0).threshold == 3.0
    with pytest.raises(ValueError, match=r"prepare.quality.hq.threshold=3.0: a probability, 0 to 1"):
        QualityClassifier("hq", two_class, threshold=3.0)


def test_a_folder_that_is_not_a_sequence_classifier_is_refused_naming_it(tmp_path):
    from lmstack.data.curate.quality import QualityClassifier

    empty, encoder, hf = tmp_path / "empty", tmp_path / "encoder", tmp_path / "hq"
    empty.mkdir(), encoder.mkdir(), hf.mkdir()
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    (hf / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                               "id2label": {"0": "a", "1": "b", "2": "c"}}))  # fmt: skip
    for kw, message in (
        ({"model": str(empty)}, f"prepare.quality.q: quality model {empty} is a folder without config.json"),
        ({"model": str(encoder)}, f"quality model {encoder} is not a Hugging Face sequence-classification model "
                                  "(config.json architectures: ['BertModel'])"),
        ({"model": str(hf)}, f"quality model {hf} has 3 classes ['a', 'b', 'c']: name the one to score with label="),
        ({"model": str(hf), "label": "z"}, f"quality model {hf} has no label 'z'; its labels are ['a', 'b', 'c']"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(message)):
            QualityClassifier("q", **kw)
    assert QualityClassifier("q", str(hf), label="c").label == "c"
