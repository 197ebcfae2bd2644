"""Object storage end to end over HTTP: `lmstack prepare` reads its inputs from and writes its outputs to an
S3 server (moto's standalone server, the emulator s3fs tests against, started and stopped here), with the
same outputs as on local files; training then streams the prepared corpus from the bucket."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmstack.data.curate.pipeline import run_prepare
from lmstack.ownership import OwnershipError

from .helpers import SHARED_DATA, prepare_cfg

BASE = {"tokenize.vocab_size": 512, "tokenize.seq_len": 64, "filters.language": "null", "task_bytes": 30000}


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on localhost, the environment that points clients at it, and an s3fs file system."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("lmstack-test")
        yield fs
    finally:
        mp.undo()
        server.terminate()
        server.wait(timeout=30)


def inputs(folder: Path) -> list[Path]:
    """The web samples and one plain JSONL file big enough to be read as several byte ranges."""
    plain = folder / "prose.jsonl"
    with gzip.open(SHARED_DATA / "prose" / "nlp-corpus.jsonl.gz", "rt") as f:
        plain.write_text("".join(next(f) for _ in range(60)))
    return [*sorted((SHARED_DATA / "web").glob("*.json*.gz")), plain]


def test_prepare_from_and_to_s3_writes_what_a_local_run_writes(tmp_path, s3):
    files = inputs(tmp_path)
    for f in files:
        s3.put_file(str(f), f"lmstack-test/in/{f.name}")
    local = run_prepare([str(f) for f in files], str(tmp_path / "local"), prepare_cfg(**BASE))
    cfg = prepare_cfg(**BASE, work_dir=str(tmp_path / "work"))
    remote = run_prepare([f"s3://lmstack-test/in/{f.name}" for f in files], "s3://lmstack-test/out", cfg)
    assert remote == local and remote["tasks"] > len(files)
    names = sorted(s3.find("lmstack-test/out"))
    assert "lmstack-test/out/.lmstack.json" in names and "lmstack-test/out/web/train/index.json" in names
    for name in ("documents.jsonl.gz", "stats.json", "meta.json", "tokenizer.json", "web/train/index.json"):
        assert s3.cat_file(f"lmstack-test/out/{name}") == (tmp_path / "local" / name).read_bytes(), name
    marker = json.loads(s3.cat_file("lmstack-test/out/.lmstack.json"))
    assert marker["status"] == "complete" and "documents.jsonl.gz" in marker["files"]
    mtime = s3.info("lmstack-test/out/documents.jsonl.gz")["LastModified"]
    assert run_prepare([f"s3://lmstack-test/in/{f.name}" for f in files], "s3://lmstack-test/out", cfg) == local
    assert s3.info("lmstack-test/out/documents.jsonl.gz")["LastModified"] == mtime  # finished: not uploaded again


def test_a_prefix_holding_other_objects_is_refused_and_left_alone(tmp_path, s3):
    s3.pipe_file("lmstack-test/theirs/notes.txt", b"mine")
    src = SHARED_DATA / "web" / "c4-sample.01.json.gz"
    with pytest.raises(OwnershipError, match="not written by lmstack"):
        run_prepare([str(src)], "s3://lmstack-test/theirs", prepare_cfg(**BASE, work_dir=str(tmp_path / "w")))
    assert s3.find("lmstack-test/theirs") == ["lmstack-test/theirs/notes.txt"] and not (tmp_path / "w").exists()
    with pytest.raises(OwnershipError, match="overlaps the input"):
        run_prepare(["s3://lmstack-test/in/*.json.gz"], "s3://lmstack-test/in", prepare_cfg(**BASE))


def test_training_streams_a_prepared_corpus_from_s3(tmp_path, s3, small_cfg):
    from lmstack.run import run

    files = inputs(tmp_path)
    run_prepare([str(f) for f in files], "s3://lmstack-test/corpus", prepare_cfg(**BASE, work_dir=str(tmp_path / "w")))
    result = run(small_cfg("data_mix=prepared", "data_mix.dir=s3://lmstack-test/corpus"))
    assert result["steps"] == 2 and result["val/bpb"] > 0
