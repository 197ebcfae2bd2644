"""`lmstack prepare` end to end on the real samples: accounting, report, dedup, bad input, restart."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lmstack.data.curate.dedup import MinHashDedup, threshold
from lmstack.data.curate.pipeline import run_prepare

from .helpers import SHARED_DATA, interrupt_prepare_at, prepare_cfg

ROOT = Path(__file__).resolve().parents[1]
ALL_REAL = [
    str(SHARED_DATA / "web" / "*.json*.gz"),
    str(SHARED_DATA / "web" / "*.warc.gz"),
    str(SHARED_DATA / "prose" / "*.jsonl.gz"),
]


def identity(stats: dict) -> bool:
    return stats["docs_in"] == stats["docs_out"] + sum(stats["removed"].values()) + stats["rejected"]


@pytest.mark.slow
def test_accounting_identity_and_report_on_all_real_inputs(tmp_path):
    out = tmp_path / "all"
    stats = run_prepare(ALL_REAL, str(out), prepare_cfg(**{"tokenize": "null", "keep_removed": "true"}))
    assert stats["docs_in"] == 50 + 22 + 500 + 4000
    assert identity(stats) and stats == json.loads((out / "stats.json").read_text())
    assert stats["docs_out"] < stats["docs_in"] and stats["removed"]
    stages = {s["name"]: s for s in stats["stages"]}
    assert stages["read"]["docs_in"] == stats["docs_in"]
    assert stages["minhash_dedup"]["docs_out"] == stats["docs_out"]
    for s in stats["stages"]:
        assert s["docs_out"] <= s["docs_in"] and s["bytes_out"] <= s["bytes_in"] + 1
    with gzip.open(out / "documents.jsonl.gz", "rt") as f:
        assert sum(1 for _ in f) == stats["docs_out"]
    for rule, n in stats["removed"].items():
        with gzip.open(out / "removed" / f"{rule.replace('/', '.')}.jsonl.gz", "rt") as f:
            assert sum(1 for _ in f) == n
    report = (out / "report.md").read_text()
    assert f"{stats['docs_in']:,} documents in, {stats['docs_out']:,} out" in report
    assert (out / "report.png").stat().st_size > 1000


def test_minhash_finds_planted_near_duplicates():
    with gzip.open(SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz", "rt") as f:
        texts = [json.loads(line)["text"] for line in f][:1500]
    rng = random.Random(0)
    planted = []
    for i in range(0, 1500, 10):
        words = texts[i].split()
        for _ in range(3):  # a few words changed: Jaccard on 5-grams stays well above the threshold
            words[rng.randrange(len(words))] = "altered"
        planted.append(" ".join(words))
    dup = set(MinHashDedup().duplicates(texts + planted).tolist())
    planted_idx = set(range(len(texts), len(texts) + len(planted)))
    recall = len(dup & planted_idx) / len(planted_idx)
    precision = len(dup & planted_idx) / max(len(dup), 1)
    assert recall >= 0.95 and precision >= 0.99, (recall, precision)
    assert 0.70 < threshold(14, 8) < 0.74


def test_copies_with_1_to_5_percent_of_words_replaced_are_found_and_distinct_documents_stay(tmp_path):
    """The default MinHash (28 x 4 bands proposing pairs, true Jaccard >= 0.6 deciding) finds >= 98% of
    planted copies of real documents with 1-5% of words replaced, and removes none of the real documents."""
    with gzip.open(SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz", "rt") as f:
        texts = list(dict.fromkeys(json.loads(line)["text"] for line in f))[:1500]
    rng = random.Random(0)
    rows = [{"id": f"real-{i}", "text": t} for i, t in enumerate(texts)]
    for i in range(0, len(texts), 5):
        words = texts[i].split(" ")
        for j in rng.sample(range(len(words)), max(1, round(rng.uniform(0.01, 0.05) * len(words)))):
            words[j] = rng.choice(["river", "stone", "glass", "paper", "cloud"])
        rows.append({"id": f"copy-{i}", "text": " ".join(words)})
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    no_filters = {f"filters.{f}": "null" for f in ("language", "gopher_quality", "gopher_repetition", "c4", "fineweb")}
    cfg = prepare_cfg(**{"tokenize": "null", **no_filters})
    assert cfg["dedup"]["minhash"] == {"ngram": 5, "bands": 28, "rows": 4, "jaccard": 0.6}
    stats = run_prepare([str(src)], str(tmp_path / "out"), cfg)
    kept = {json.loads(x)["id"] for x in gzip.open(tmp_path / "out" / "documents.jsonl.gz", "rt")}
    copies = [r["id"] for r in rows if r["id"].startswith("copy-")]
    recall = sum(c not in kept for c in copies) / len(copies)
    assert recall >= 0.98 and all(f"real-{i}" in kept for i in range(len(texts))), recall
    assert stats["removed"]["minhash_dedup/near_duplicate"] == len(copies) - sum(c in kept for c in copies)


def test_bad_inputs_are_rejected_and_the_run_goes_on(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.loads(gzip.open(SHARED_DATA / "web" / "c4-sample.01.json.gz", "rt").readline())
    bad.write_bytes(
        b"\n".join(
            [
                json.dumps(good).encode(),
                b"{oops",
                b'{"text": "\xff\xfe"}',
                json.dumps({"body": 1}).encode(),
                json.dumps({"text": ""}).encode(),
                json.dumps({"text": "word " * 11_000_000}).encode(),
            ]
        )
    )
    stats = run_prepare([str(bad)], str(tmp_path / "out"), prepare_cfg(tokenize="null"))
    rejects = [json.loads(line) for line in open(tmp_path / "out" / "rejects.jsonl")]
    assert [r["line"] for r in rejects] == [2, 3, 4, 5, 6]
    assert all(r["file"] == str(bad) and r["reason"] for r in rejects)
    assert "over max_doc_bytes" in rejects[-1]["reason"]
    assert stats["rejected"] == 5 and stats["docs_in"] == 6 and identity(stats)


def test_a_finished_run_is_not_redone_and_an_interrupted_one_resumes(tmp_path, monkeypatch):
    from lmstack.data.curate import stages

    inputs = [str(SHARED_DATA / "web" / "*.json*.gz")]  # 5 files
    cfg = prepare_cfg(**{"tokenize": "null", "keep_removed": "true"})
    first = run_prepare(inputs, str(tmp_path / "a"), cfg)
    mtime = (tmp_path / "a" / "documents.jsonl.gz").stat().st_mtime
    assert run_prepare(inputs, str(tmp_path / "a"), cfg)["docs_out"] == first["docs_out"]
    assert (tmp_path / "a" / "documents.jsonl.gz").stat().st_mtime == mtime

    real = stages.read_task
    calls = interrupt_prepare_at(monkeypatch, 3)
    try:
        run_prepare(inputs, str(tmp_path / "b"), cfg)
    except KeyboardInterrupt:
        pass
    assert not (tmp_path / "b" / "stats.json").exists()
    assert len(list((tmp_path / "b" / ".work" / "read").glob("*/result.json"))) == 2
    calls.clear()
    monkeypatch.setattr(stages, "read_task", lambda job: calls.append(job["task"].path) or real(job))
    second = run_prepare(inputs, str(tmp_path / "b"), cfg)
    assert len(calls) == 3  # the two finished files were not read again
    assert not (tmp_path / "b" / ".work").exists() and not list(tmp_path.glob("b.tmp*"))
    for name in ("documents.jsonl.gz", "removed/c4.too_few_sentences.jsonl.gz"):
        read = lambda p: gzip.open(p, "rt").read()  # noqa: E731
        assert read(tmp_path / "a" / name) == read(tmp_path / "b" / name)
    assert (tmp_path / "a" / "rejects.jsonl").read_text() == (tmp_path / "b" / "rejects.jsonl").read_text()
    assert first == second


@pytest.mark.slow
def test_cli_prepare_then_train_on_the_prepared_folder(tmp_path, prepared_dir, small_cfg):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmstack.cli",
            "prepare",
            f"inputs=[{SHARED_DATA}/web/*.json*.gz]",
            f"output_dir={tmp_path / 'cli'}",
            "prepare.tokenize=null",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "documents in" in out.stdout and (tmp_path / "cli" / "stats.json").exists()

    from lmstack.run import run

    meta = json.loads((prepared_dir / "meta.json").read_text())
    assert meta["seq_len"] == 64 and meta["sources"]["web"]["blocks"]["train"] > 0
    result = run(small_cfg("data_mix=prepared", f"data_mix.dir={prepared_dir}"))
    assert result["steps"] == 2 and result["val/bpb"] > 0


@pytest.mark.slow
def test_two_workers_give_the_same_output_as_one(tmp_path):
    def run_with(workers, name):
        cfg = prepare_cfg(**{"tokenize": "null", "num_workers": workers})
        stats = run_prepare(ALL_REAL[:2] + [str(SHARED_DATA / "prose" / "brown.jsonl.gz")], str(tmp_path / name), cfg)
        return stats, gzip.open(tmp_path / name / "documents.jsonl.gz", "rt").read()

    one, docs_one = run_with(1, "one")
    two, docs_two = run_with(2, "two")
    assert docs_one == docs_two
    for key in ("docs_in", "docs_out", "rejected", "removed", "stages"):
        assert one[key] == two[key], key
    timing = json.loads((tmp_path / "two" / "timing.json").read_text())
    assert (
        identity(two)
        and 0 < timing["cpu_utilisation"] <= 1.0
        and timing["stages"]["read"]["tasks_run"] == two["tasks"] == 7
    )


def planted_corpus(folder: Path, n: int = 300) -> tuple[Path, list[str]]:
    """Real prose in 6 files: files 3-5 repeat the documents of files 1, 2, 0, half exactly (other ids, the
    same text), half with one word changed; a last file joins a document of file 0 and an unseen one (whose
    texts are returned) as paragraphs of one document."""
    folder.mkdir()
    with gzip.open(SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f][: n + 20]
    size = n // 3
    for k in range(6):
        b = k if k < 3 else (k + 1) % 3
        with open(folder / f"part{k}.jsonl", "w") as f:
            for j, r in enumerate(rows[b * size : (b + 1) * size]):
                text = r["text"] if k < 3 or j % 2 else r["text"].replace(" the ", " a ", 1)
                f.write(json.dumps({"id": f"{k}-{r['id']}", "text": text}) + "\n")
    with open(folder / "part6.jsonl", "w") as f:
        for j in range(20):
            f.write(json.dumps({"id": f"mix-{j}", "text": rows[j]["text"] + "\n\n" + rows[n + j]["text"]}) + "\n")
    return folder, [r["text"] for r in rows[n:]]


@pytest.mark.parametrize("minhash", ["default", "{ngram: 5, bands: 14, rows: 8, jaccard: null}"])
def test_the_distributed_pipeline_keeps_what_one_process_keeps(tmp_path, minhash):
    """Across tasks (byte ranges of files, two workers) and hash partitions, URL, exact, paragraph and MinHash
    dedup keep exactly the documents, and the texts, of the one-process reference; an exact duplicate in
    another file is an exact duplicate (not a near one)."""
    from .helpers.prepare_reference import reference_prepare

    src, unseen = planted_corpus(tmp_path / "in")
    overrides = {"tokenize": "null", "filters.language": "null", "dedup.paragraph": "true", "task_bytes": 40000}
    if minhash != "default":  # the bands alone decide (no verification)
        overrides["dedup.minhash"] = minhash
    cfg = prepare_cfg(**overrides, num_workers=2)
    stats = run_prepare([str(src / "*.jsonl")], str(tmp_path / "out"), cfg)
    expected, removed = reference_prepare([str(src / "*.jsonl")], cfg)
    with gzip.open(tmp_path / "out" / "documents.jsonl.gz", "rt") as f:
        got = [(r["id"], r["text"]) for r in map(json.loads, f)]
    assert got == expected and stats["removed"] == removed and identity(stats)
    assert stats["tasks"] > 14 and stats["removed"]["exact_dedup/duplicate_text"] >= 90  # of 150 planted
    assert stats["removed"]["minhash_dedup/near_duplicate"] >= 100  # of 150 planted (some went to filters)
    mixed = [t for i, t in got if i.startswith("mix-")]
    assert sum(t.strip() in unseen for t in mixed) >= 5  # file 0's paragraph went, the unseen one stayed


def test_a_big_file_is_read_in_byte_ranges_with_the_same_lines(tmp_path):
    """A JSONL file cut into byte ranges (plain: at line starts; gzip: in its decompressed stream) gives the
    documents, ids and rejects (with their line numbers) of a whole-file read."""
    with gzip.open(SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f][:120]
    lines = []
    for j, r in enumerate(rows):
        lines.append(json.dumps({"text": r["text"]}))  # no id: the id is FILE:LINE
        if j % 25 == 0:
            lines += ["{oops", ""]
    plain = tmp_path / "big.jsonl"
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "big.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    base = {"tokenize": "null", "filters.language": "null"}
    whole = {}
    for path in (plain, packed):
        ref = run_prepare([str(path)], str(tmp_path / f"{path.name}-whole"), prepare_cfg(**base))
        cut = run_prepare([str(path)], str(tmp_path / f"{path.name}-cut"), prepare_cfg(**base, task_bytes=20000))
        assert cut["tasks"] >= 5 and ref["tasks"] == 1
        read = lambda d: gzip.open(tmp_path / d / "documents.jsonl.gz", "rt").read()  # noqa: E731
        assert read(f"{path.name}-cut") == read(f"{path.name}-whole")
        rejects = [json.loads(x) for x in open(tmp_path / f"{path.name}-cut" / "rejects.jsonl")]
        assert [r["line"] for r in rejects] == [2, 29, 56, 83, 110] and all("JSON" in r["reason"] for r in rejects)
        assert {k: v for k, v in cut.items() if k != "tasks"} == {k: v for k, v in ref.items() if k != "tasks"}
        whole[path.suffix] = read(f"{path.name}-whole").replace(packed.name, plain.name)
    assert whole[".gz"] == whole[".jsonl"]


def test_every_stage_counts_tokens_with_a_given_tokenizer(tmp_path, prepared_dir):
    """With a tokenizer given up front, each stage's tokens are counted as documents flow: what leaves a
    stage enters the next, and the read stage's count is the tokenizer's count on the documents read."""
    from tokenizers import Tokenizer

    from lmstack.data.curate.inputs import expand_inputs
    from lmstack.data.curate.readers import Document, read_inputs

    tok_path = prepared_dir / "tokenizer.json"
    web = [str(SHARED_DATA / "web" / "*.json*.gz")]
    cfg = prepare_cfg(**{"count_tokens": "true", "tokenize.tokenizer": str(tok_path), "tokenize.seq_len": 64})
    stats = run_prepare(web, str(tmp_path / "counted"), cfg)
    stages = stats["stages"]
    assert [s["name"] for s in stages][0] == "read" and stages[-1]["name"] == "tokenize"
    assert all(isinstance(s["tokens_in"], int) and not s["tokens_estimated"] for s in stages)
    for before, after in zip(stages, stages[1:]):
        assert before["tokens_out"] == after["tokens_in"], (before["name"], after["name"])
        assert before["docs_out"] == after["docs_in"]
    tok = Tokenizer.from_file(str(tok_path))
    read = [d for d in read_inputs(expand_inputs(web), "web") if isinstance(d, Document)]
    assert stages[0]["tokens_out"] == sum(len(tok.encode(d.text, add_special_tokens=False).ids) for d in read)
    assert stages[0]["tokens_out"] > stages[-1]["tokens_in"] > 0
    assert (tmp_path / "counted" / "tokenizer.json").read_bytes() == tok_path.read_bytes()  # reused, not trained
    plain = run_prepare(web, str(tmp_path / "plain"), {**cfg, "count_tokens": False})
    assert [(s["docs_in"], s["bytes_out"]) for s in plain["stages"]] == [(s["docs_in"], s["bytes_out"]) for s in stages]


def test_stage_tokens_are_estimated_when_the_tokenizer_is_trained_on_the_output(prepared_dir):
    stats = json.loads((prepared_dir / "stats.json").read_text())
    *before, tokenize = stats["stages"]
    assert not tokenize["tokens_estimated"] and tokenize["tokens_in"] > 0
    assert tokenize["tokens_out"] == json.loads((prepared_dir / "meta.json").read_text())["sources"]["web"]["tokens"]
    rate = tokenize["tokens_in"] / tokenize["bytes_in"]
    for s in before:
        assert s["tokens_estimated"] and s["tokens_in"] == round(s["bytes_in"] * rate)
    assert "~" in (prepared_dir / "report.md").read_text()


def test_count_tokens_without_a_tokenizer_is_refused(tmp_path):
    cfg = prepare_cfg(**{"count_tokens": "true"})
    with pytest.raises(ValueError, match="count_tokens=true .* set tokenize.tokenizer="):
        run_prepare([str(SHARED_DATA / "web" / "c4-sample.01.json.gz")], str(tmp_path / "x"), cfg)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_workers": 0}, "prepare.num_workers=0 is too small; it must be >= 1"),
        ({"tokenize.seq_len": "long"}, "prepare.tokenize.seq_len='long' has the wrong type; expected an integer"),
        (
            {"+dedupe": "true"},
            "unknown key prepare.dedupe; allowed keys in prepare: count_tokens, decontaminate, dedup,",
        ),
        ({"task_bytes": 0}, "prepare.task_bytes=0 is too small; it must be >= 1"),
        ({"dedup.minhash.jaccard": 1.5}, r"prepare.dedup.minhash.jaccard=1.5 must be in \(0, 1\]"),
    ],
)
def test_the_prepare_section_is_checked_like_every_section(tmp_path, overrides, message):
    """`prepare` is typed (lmstack/config/prepare.py): the same checks and messages as the training config,
    before any work (no output folder)."""
    from lmstack.config import ConfigError

    plain = {k: v for k, v in overrides.items() if not k.startswith("+")}
    cfg = prepare_cfg(**plain)
    for key, value in overrides.items():
        if key.startswith("+"):
            cfg[key[1:]] = value
    with pytest.raises((ConfigError, ValueError), match=message):
        run_prepare([str(SHARED_DATA / "web" / "c4-sample.01.json.gz")], str(tmp_path / "x"), cfg)
    assert not (tmp_path / "x").exists()
