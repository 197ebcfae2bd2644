"""Careless and hostile inputs: lmstack never destroys what it did not create, never runs code from a
file, never lets one bad record stop a run, and never reports stale results as new."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from lmstack.data.curate.pipeline import run_prepare

from .helpers import SHARED_DATA, TINY_LLAMA_CONFIG, interrupt_prepare_at, prepare_cfg

ROOT = Path(__file__).resolve().parents[1]
C4 = SHARED_DATA / "web" / "c4-sample.01.json.gz"
NO_TOKENIZE = {"tokenize": "null"}


def identity(stats: dict) -> bool:
    return stats["docs_in"] == stats["docs_out"] + sum(stats["removed"].values()) + stats["rejected"]


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "rejects.jsonl")]


def cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "lmstack.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def c4_rows(n=10) -> list[dict]:
    with gzip.open(C4, "rt") as f:
        return [json.loads(line) for line in f][:n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- data loss ---------------------------------------------------------------------------------------
def test_prepare_refuses_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(Exception, match="not written by lmstack"):
        run_prepare([str(C4)], str(out), prepare_cfg(**NO_TOKENIZE))
    assert (out / "thesis.tex").read_text() == "years of work" and sorted(os.listdir(out)) == ["thesis.tex"]


@pytest.mark.parametrize("where", ["same", "dotdot", "parent"])
def test_prepare_refuses_an_output_that_overlaps_its_inputs(tmp_path, where):
    data = tmp_path / "data"
    data.mkdir()
    src = write_jsonl(data / "in.jsonl", c4_rows())
    out = {"same": data, "dotdot": tmp_path / "data" / ".." / "data", "parent": tmp_path}[where]
    with pytest.raises(Exception, match="input"):
        run_prepare([str(src)], str(out), prepare_cfg(**NO_TOKENIZE))
    assert src.read_text() and len(src.read_text().splitlines()) == 10


def test_prepare_leaves_a_sibling_tmp_folder_alone_and_writes_a_marker(tmp_path):
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / "keep.txt").write_text("mine")
    run_prepare([str(C4)], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE))
    assert (tmp_path / "out.tmp" / "keep.txt").read_text() == "mine"
    marker = json.loads((tmp_path / "out" / ".lmstack.json").read_text())
    assert marker["writer"] == "lmstack" and marker["kind"] == "prepare" and marker["status"] == "complete"
    assert marker["inputs"] == [str(C4.resolve())] and marker["host"] and marker["created"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name not in ("out", "out.tmp")]  # no temporary sibling


def test_corpus_cache_leaves_foreign_folders_alone(tmp_path):
    from lmstack.data.corpus_cache import corpus_key, prepare_corpus

    src = write_jsonl(tmp_path / "docs.jsonl", [{"id": str(i), "text": r["text"]} for i, r in enumerate(c4_rows())])
    sources = [{"name": "c4", "paths": [str(src)]}]
    args = dict(seq_len=32, val_fraction=0.1, vocab_size=300)
    tok = {"vocab_size": 300, "min_frequency": 2, "train_bytes": 20_000_000}
    key = corpus_key(sources + [{"max_docs": None}], tok, 32, 0.1)
    corpora = tmp_path / "cache" / "corpora"
    (corpora / f"{key}.tmp").mkdir(parents=True)
    (corpora / f"{key}.tmp" / "keep.txt").write_text("mine")
    (corpora / key).mkdir()
    (corpora / key / "notes.txt").write_text("also mine")
    with pytest.raises(Exception, match="not written by lmstack"):
        prepare_corpus(sources, str(tmp_path / "cache"), **args)
    assert (corpora / key / "notes.txt").read_text() == "also mine"
    (corpora / key / "notes.txt").unlink()
    corpus = prepare_corpus(sources, str(tmp_path / "cache"), **args)  # an empty folder is claimed
    assert (corpus.root / "meta.json").exists() and (corpora / f"{key}.tmp" / "keep.txt").read_text() == "mine"


# ---- code execution ---------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs `open(path, "w")`: a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted_checkpoint(path: Path, witness: Path) -> Path:
    import torch

    torch.save({"hyper_parameters": {"model_cfg": {}}, "state_dict": {}, "x": _Payload(str(witness))}, path)
    return path


@pytest.mark.slow
def test_a_crafted_checkpoint_runs_no_code(tmp_path, small_cfg):
    witness = tmp_path / "pwned"
    ckpt = crafted_checkpoint(tmp_path / "evil.ckpt", witness)
    for cmd in (
        ["generate", f"ckpt={ckpt}", "prompt=x"],
        ["export", f"ckpt={ckpt}", f"out={tmp_path / 'hf'}"],
        ["eval", f"ckpt={ckpt}", "tasks=[arc_easy]", f"out={tmp_path / 'ev'}"],
    ):
        out = cli(*cmd)
        assert out.returncode != 0 and "refused" in out.stderr, (cmd, out.stderr[-500:])
        assert "Traceback" not in out.stderr
    assert not witness.exists()
    from lmstack.run import run

    with pytest.raises(ValueError, match="refused"):
        run(small_cfg(f"init_from={ckpt}"))
    assert not witness.exists()


def test_a_crafted_sharded_checkpoint_runs_no_code(tmp_path):
    import pickle

    import torch
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "sharded.ckpt"
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore")
        dcp.save({"state_dict": {"w": torch.ones(2)}}, checkpoint_id=str(folder))
    torch.save({"hyper_parameters": {"model_cfg": {}}}, folder / "meta.pt")
    witness = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(_Payload(str(witness))))
    out = cli("generate", f"ckpt={folder}", "prompt=x")
    assert out.returncode != 0 and "manifest" in out.stderr and not witness.exists()
    from lmstack.checkpoint import CheckpointError, read_checkpoint, write_manifest

    write_manifest(folder)  # even with a manifest that matches, the pickle may name DCP's classes only
    with pytest.raises(CheckpointError, match="refused global"):
        read_checkpoint(folder)
    assert not witness.exists()


def test_token_blocks_that_name_the_pickle_serializer_are_refused(tmp_path, prepared_dir):
    import shutil

    from lmstack.data.dataset import BlockDataset

    folder = tmp_path / "web"
    shutil.copytree(prepared_dir, folder)
    index = folder / "web" / "train" / "index.json"
    meta = json.loads(index.read_text())
    meta["config"]["data_format"] = ["pickle", "no_header_numpy:2"]
    index.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="serializer 'pickle' refused"):
        BlockDataset([str(folder / "web" / "train")])
    assert len(BlockDataset([str(prepared_dir / "web" / "train")])) > 0


@pytest.mark.slow
def test_import_hf_reads_only_its_folder_and_names_bad_config_keys(tmp_path):
    import torch
    from safetensors.torch import save_file

    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    base = dict(TINY_LLAMA_CONFIG)
    (hf / "config.json").write_text(json.dumps(base))
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    out = cli("import-hf", f"dir={hf}", f"out={tmp_path / 'x.ckpt'}")
    assert out.returncode != 0 and "leads outside the folder" in out.stderr
    for bad, key in [
        ({"hidden_size": "64"}, "hidden_size"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"vocab_size": None}, "vocab_size"),
        ({"num_attention_heads": 5}, "num_attention_heads"),
    ]:
        (hf / "config.json").write_text(json.dumps({**base, **bad}))
        out = cli("import-hf", f"dir={hf}", f"out={tmp_path / 'x.ckpt'}")
        assert out.returncode != 0 and key in out.stderr and "Traceback" not in out.stderr, out.stderr[-400:]
    assert not (tmp_path / "x.ckpt").exists()


# ---- one bad record ---------------------------------------------------------------------------------
def test_an_unpaired_surrogate_is_one_reject(tmp_path):
    rows = c4_rows(10)
    rows[1]["text"] = rows[1]["text"][:200] + "\ud800" + rows[1]["text"][200:]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))  # ensure_ascii: valid JSON, "\\ud800" escaped
    small = {
        "tokenize.vocab_size": 300,
        "tokenize.seq_len": 16,
        "tokenize.val_fraction": 0.3,
        **{f"filters.{f}": "null" for f in ("gopher_quality", "gopher_repetition", "c4", "fineweb")},
    }
    stats = run_prepare([str(src)], str(tmp_path / "web"), prepare_cfg(**small))  # language ID, then tokenizer
    assert stats["rejected"] == 1 and identity(stats)
    (r,) = rejects(tmp_path / "web")
    assert r["line"] == 2 and "surrogate" in r["reason"]
    stats = run_prepare([str(src)], str(tmp_path / "tok"), prepare_cfg(**small, **{"filters.language": "null"}))
    assert stats["rejected"] == 1 and identity(stats) and (tmp_path / "tok" / "meta.json").exists()


def test_a_folder_named_like_a_text_file_is_skipped(tmp_path):
    src = tmp_path / "texts"
    (src / "chapter.txt").mkdir(parents=True)
    (src / "a.txt").write_text(c4_rows(1)[0]["text"])
    stats = run_prepare([str(src)], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE, **{"filters.language": "null"}))
    assert stats["docs_in"] == 1 and identity(stats)


def test_dangling_links_pipes_and_bad_checkpoint_fields_are_refused_cleanly(tmp_path):
    src = tmp_path / "in"
    (src / "texts").mkdir(parents=True)
    os.symlink(tmp_path / "nowhere.jsonl", src / "gone.jsonl")
    os.mkfifo(src / "pipe.jsonl")  # reading it would block forever
    os.mkfifo(src / "texts" / "p.txt")
    write_jsonl(src / "c4.jsonl", c4_rows())
    stats = run_prepare([str(src / "*.jsonl"), str(src / "texts")], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE))
    assert stats["rejected"] == 3 and stats["docs_in"] == 13 and identity(stats)
    assert all("not a regular file" in r["reason"] for r in rejects(tmp_path / "out"))
    import torch

    torch.save({"hyper_parameters": {"model_cfg": {"evil": 1}}, "state_dict": {}}, tmp_path / "bad.ckpt")
    out = cli("generate", f"ckpt={tmp_path / 'bad.ckpt'}", "prompt=x")
    assert out.returncode != 0 and "not a loadable lmstack checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_a_file_that_is_not_a_warc_is_a_reject(tmp_path):
    fake = tmp_path / "fake.warc"
    fake.write_text("this is not a web archive\n")
    stats = run_prepare([str(fake), str(C4)], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE))
    assert stats["rejected"] == 1 and stats["docs_in"] == 11 and identity(stats)
    assert "not a WARC" in rejects(tmp_path / "out")[0]["reason"]


def test_a_truncated_warc_says_what_was_lost(tmp_path):
    whole = (SHARED_DATA / "web" / "cc-sample-0000.warc.gz").read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(whole[:100_000])
    stats = run_prepare([str(cut)], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE))
    truncated = [r for r in rejects(tmp_path / "out") if "truncated" in r["reason"]]
    assert len(truncated) == 1 and truncated[0]["file"] == str(cut) and identity(stats)
    plain = tmp_path / "cut.warc"
    plain.write_bytes(gzip.decompress(whole)[:600_000])
    run_prepare([str(plain)], str(tmp_path / "plain"), prepare_cfg(**NO_TOKENIZE))
    assert any("truncated record" in r["reason"] for r in rejects(tmp_path / "plain"))


# ---- stale results ----------------------------------------------------------------------------------
def test_resume_recomputes_an_input_that_changed(tmp_path, monkeypatch):
    rows = c4_rows(10)
    a, b = write_jsonl(tmp_path / "a.jsonl", rows[:5]), write_jsonl(tmp_path / "b.jsonl", rows[5:])
    cfg = prepare_cfg(**NO_TOKENIZE)
    interrupt_prepare_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_prepare([str(a), str(b)], str(tmp_path / "out"), cfg)
    monkeypatch.undo()
    write_jsonl(a, [{**r, "id": f"new-{i}"} for i, r in enumerate(rows[:5])])  # a changed meanwhile
    run_prepare([str(a), str(b)], str(tmp_path / "out"), cfg)
    ids = [json.loads(x)["id"] for x in gzip.open(tmp_path / "out" / "documents.jsonl.gz", "rt")]
    assert ids and all(not i.startswith(f"{a.name}:") for i in ids)  # a's documents are the new ones
    assert any(i.startswith("new-") for i in ids)


def test_a_finished_output_with_other_inputs_is_prepared_again(tmp_path):
    rows = c4_rows(10)
    src = write_jsonl(tmp_path / "a.jsonl", rows[:5])
    first = run_prepare([str(src)], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE))
    second = run_prepare(
        [str(src), str(write_jsonl(tmp_path / "b.jsonl", rows[5:]))], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE)
    )
    assert (first["docs_in"], second["docs_in"]) == (5, 10)
    (tmp_path / "out" / "my_notes.txt").write_text("mine")  # a user's file in lmstack's folder stays
    third = run_prepare([str(src)], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE, **{"filters.c4": "null"}))
    assert third["docs_in"] == 5 and not any(k.startswith("c4/") for k in third["removed"])
    assert (tmp_path / "out" / "my_notes.txt").read_text() == "mine"
    (tmp_path / "out" / "removed").mkdir()  # ... and one in the way of a result is not overwritten
    (tmp_path / "out" / "removed" / "mine.txt").write_text("mine")
    short = write_jsonl(tmp_path / "c.jsonl", [{"text": "Too short to keep."}])  # so that removed/ is written
    with pytest.raises(Exception, match="not written by lmstack"):
        run_prepare([str(src), str(short)], str(tmp_path / "out"), prepare_cfg(**NO_TOKENIZE, keep_removed="true"))
    assert (tmp_path / "out" / "removed" / "mine.txt").read_text() == "mine"
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["docs_in"] == 5


def test_a_changed_blocklist_file_is_a_changed_input(tmp_path):
    rows = c4_rows(10)
    src = write_jsonl(tmp_path / "a.jsonl", [{**r, "id": f"doc{i}"} for i, r in enumerate(rows)])
    ids = tmp_path / "ids.txt"
    ids.write_text("doc0\n")
    cfg = prepare_cfg(**NO_TOKENIZE, **{"filters.id_blocklist": "{files: [%s]}" % ids})
    first = run_prepare([str(src)], str(tmp_path / "out"), cfg)
    ids.write_text("doc0\ndoc1\ndoc2\n")
    second = run_prepare([str(src)], str(tmp_path / "out"), cfg)
    assert second["removed"].get("id_blocklist/listed", 0) == first["removed"].get("id_blocklist/listed", 0) + 2


@pytest.mark.slow
def test_a_second_run_on_the_same_output_refuses_at_once(tmp_path):
    brown = str(SHARED_DATA / "prose" / "brown.jsonl.gz")
    args = ["prepare", f"inputs=[{brown}]", f"output_dir={tmp_path / 'out'}", "prepare=prose", "prepare.tokenize=null"]
    first = subprocess.Popen(
        [sys.executable, "-m", "lmstack.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.time() + 60
    while not (tmp_path / "out" / ".work").exists() and time.time() < deadline:
        time.sleep(0.05)
    t0 = time.time()
    second = cli(*args)
    assert second.returncode != 0 and f"in use by pid {first.pid}" in second.stderr, second.stderr[-400:]
    assert time.time() - t0 < 30
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-400:]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["docs_in"] == 500


# ---- input expansion --------------------------------------------------------------------------------
def test_globs_survive_symlink_loops_and_list_each_file_once(tmp_path):
    from lmstack.data.curate.inputs import expand_inputs

    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    for p in ("x.jsonl", "a/y.jsonl", "a/b/z.jsonl"):
        (root / p).write_text("{}\n")
    os.symlink(root, root / "a" / "b" / "loop")
    os.symlink(root / "a", root / "again")
    files = expand_inputs([str(root / "**" / "*.jsonl")])
    assert sorted(os.path.realpath(f) for f in files) == sorted(
        str((root / p).resolve()) for p in ("x.jsonl", "a/y.jsonl", "a/b/z.jsonl")
    )
    assert len(expand_inputs([str(root / "x.jsonl"), str(root / "*.jsonl")])) == 1
    nested = expand_inputs([str(root / "**" / "b" / "**" / "*.jsonl")])  # under b: z, and x and y through the loop
    assert sorted(os.path.realpath(f) for f in nested) == sorted(os.path.realpath(f) for f in files)


def test_a_sweep_report_never_overwrites_a_file_it_did_not_write(tmp_path):
    from lmstack.sweep.report import write_report

    (tmp_path / "0" / ".hydra").mkdir(parents=True)  # a sweep folder with one job that has not started
    (tmp_path / "report.md").write_text("my own report")
    with pytest.raises(ValueError, match="not written by lmstack report"):
        write_report(str(tmp_path))
    assert (tmp_path / "report.md").read_text() == "my own report"
    (tmp_path / "report.md").unlink()
    write_report(str(tmp_path))
    write_report(str(tmp_path))  # its own files it rewrites
    assert (tmp_path / "report.md").read_text().startswith("# Sweep report")
