"""Decontamination (prepare.decontaminate): real eval questions and answers planted in real prose are removed
as `decontamination/<task>` with the matched n-gram kept in removed/; clean documents stay; `lmstack overlap`
reports the same overlap of an existing corpus without changing it."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from lmstack.data.curate.decontaminate import EvalNgrams, eval_items, words
from lmstack.data.curate.pipeline import run_prepare

from .helpers import SHARED_DATA, prepare_cfg

EVALS = SHARED_DATA / "evals"


def item_text(task: str, index: int) -> tuple[str, str]:
    """(native id, question and right answer as plain text) of a real eval item, as a web page would quote it."""
    ids = [i for i, q, a in eval_items(str(EVALS / task)) if len(q) + len(a) >= 13]
    item = next(r for r in eval_items(str(EVALS / task)) if r[0] == ids[index])
    return item[0], " ".join(item[1]).capitalize() + "? " + " ".join(item[2]) + "."


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """120 Brown documents; into 4 of them a real question with its right answer is planted mid-text (one of
    arc_easy, one of sciq, two of piqa)."""
    root = tmp_path_factory.mktemp("decont")
    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f][:120]
    plants = {docs[10]["id"]: ("arc_easy", 0), docs[40]["id"]: ("sciq", 3), docs[70]["id"]: ("piqa", 5)}
    plants[docs[100]["id"]] = ("piqa", 9)
    where = {}
    for d in docs:
        if d["id"] in plants:
            task, k = plants[d["id"]]
            item, text = item_text(task, k)
            half = len(d["text"]) // 2
            cut = d["text"].index(" ", half)
            d["text"] = d["text"][:cut] + " " + text + " " + d["text"][cut:]
            where[d["id"]] = (task, item)
    (root / "prose.jsonl").write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs))
    return root, where


def prepare(root: Path, out: Path, **extra) -> dict:
    cfg = prepare_cfg("prose", **{"tokenize": "null", "keep_removed": "true", "dedup.minhash": "null", **extra})
    return run_prepare([str(root / "prose.jsonl")], str(out), cfg)


def kept_ids(out: Path) -> set[str]:
    with gzip.open(out / "documents.jsonl.gz", "rt") as f:
        return {json.loads(line)["id"] for line in f}


@pytest.mark.slow
def test_planted_questions_are_removed_with_the_match_and_clean_documents_stay(planted, tmp_path, capsys):
    root, where = planted
    tasks = ",".join(str(EVALS / t) for t in ("arc_easy", "sciq", "piqa", "copa"))
    clean = prepare(root, tmp_path / "plain")
    stats = prepare(root, tmp_path / "decont", **{"decontaminate.tasks": f"[{tasks}]"})
    removed = kept_ids(tmp_path / "plain") - kept_ids(tmp_path / "decont")
    assert removed == set(where)  # exactly the planted documents, every other one kept
    counts = {r: n for r, n in stats["removed"].items() if r.startswith("decontamination/")}
    assert counts == {"decontamination/arc_easy": 1, "decontamination/sciq": 1, "decontamination/piqa": 2}
    assert stats["docs_out"] == clean["docs_out"] - 4
    rows = []
    for task in ("arc_easy", "sciq", "piqa"):
        with gzip.open(tmp_path / "decont" / "removed" / f"decontamination.{task}.jsonl.gz", "rt") as f:
            rows += [json.loads(line) for line in f]
    template = EvalNgrams(tasks.split(",")).template
    for row in rows:
        task, item = where[row["id"]]
        assert row["matched"]["task"] == task and row["matched"]["item"] == item
        ngram = row["matched"]["ngram"].split()  # as the document has it: 13 words, or a shorter question alone
        assert 8 <= len([w for w in ngram if w not in template]) <= 13
        assert " ".join(ngram) in " ".join(words(row["text"]))

    # the same check on the prepared corpus without decontamination: reported, nothing changed
    from lmstack.cli import main

    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "plain").rglob("*") if p.is_file()}
    report = tmp_path / "overlap.json"
    main(["overlap", f"corpus=[{tmp_path / 'plain'}]", "tasks=[arc_easy,sciq,piqa,copa]", f"out={report}"])
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "plain").rglob("*") if p.is_file()}
    assert after == before
    found = json.loads(report.read_text())
    assert found["documents"] == clean["docs_out"]
    assert {t: r["documents"] for t, r in found["tasks"].items()} == {"arc_easy": 1, "sciq": 1, "piqa": 2, "copa": 0}
    assert {e["document"] for r in found["tasks"].values() for e in r["examples"]} == set(where)
    assert "| piqa | 1,838 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists"):  # the report goes only to a new file
        main(["overlap", f"corpus=[{tmp_path / 'plain'}]", "tasks=[copa]", f"out={report}"])


def test_eval_items_lose_their_template_and_short_items_are_matched_whole(tmp_path):
    first = eval_items(str(EVALS / "arc_easy"))[0]
    assert first[1] == ["which", "technology", "was", "developed", "most", "recently"]  # no Question: / Answer:
    assert first[2] == ["cellular", "telephone"]
    table = EvalNgrams([str(EVALS / "arc_easy")])
    assert table.summary["arc_easy"]["items"] == 570  # one per question, not per request (unconditional too)
    assert table.find("Which technology was developed most recently: the cellular telephone") is None
    assert table.find("So, which technology was developed most recently? Cellular telephone!")["item"] == first[0]
    rows = tmp_path / "mine.jsonl"
    rows.write_text(json.dumps({"id": "q1", "question": "How many legs does a spider have", "answer": "eight"}) + "\n")
    mine = EvalNgrams([str(rows)], ngram=13, min_words=8)
    assert mine.summary["mine"] == {"items": 1, "too_short": 0, "path": str(rows)}
    assert (
        mine.find("how many legs does a spider have? eight, of course")["ngram"]
        == "how many legs does a spider have eight"
    )
    assert EvalNgrams([str(rows)], min_words=9).summary["mine"]["too_short"] == 1
    with pytest.raises(ValueError, match="min_words"):
        EvalNgrams([str(rows)], ngram=5, min_words=8)
    with pytest.raises(FileNotFoundError, match="neither a task folder nor a file"):
        EvalNgrams([str(tmp_path / "missing")])


def leaks(question: str, answer: str, choices: list[str], context: str) -> dict[str, str]:
    """One held-out item pasted into text the ways a leak looks: labelled, unlabelled, with its choices listed
    and the answer given as a letter, and labelled in the middle of a longer real document."""
    letters = "ABCDEFGH"
    listed = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
    half = context.index(" ", len(context) // 2)
    return {
        "labelled": f"Question: {question}\nAnswer: {answer}",
        "unlabelled": f"{question} {answer}",
        "choices": f"Question: {question}\n{listed}\nAnswer: {letters[choices.index(answer)]}",
        "inside": f"{context[:half]} Question: {question} Answer: {answer} {context[half:]}",
    }


@pytest.mark.parametrize("task", ["arc_easy", "sciq"])
def test_labelled_leaks_of_short_questions_are_found_as_a_leak_looks(task):
    """Held-out questions shorter than the 13-gram (from min_words up) are found in every leak shape; the
    question with its answer is found whatever its length; real prose with no leak stays clean."""
    from lmstack.eval.multiple_choice import load_requests

    table = EvalNgrams([str(EVALS / task)])
    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f:
        prose = [json.loads(line)["text"] for line, _ in zip(f, range(300))]
    questions = load_requests(EVALS / task / "requests.jsonl.gz")
    asked = [(q, re.sub(r"^Question:\s*|\s*Answer:\s*$", "", q.context)) for q in questions]
    short = [(q, text) for q, text in asked if 8 <= len(words(text)) < 13][:40]
    assert len(short) >= 20
    for k, (q, question) in enumerate(short):
        choices = [c.strip() for c in q.choices]
        for shape, text in leaks(question, choices[q.gold], choices, prose[k]).items():
            found = table.find(text)
            assert found is not None and found["item"] == str(q.doc_id), (shape, text)
    assert [t for t in prose if table.find(t)] == []  # no false positives on 300 Brown documents
