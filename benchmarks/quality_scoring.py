"""Quality scoring speed: lmstack's prepare.quality step against datatrove's FastTextClassifierFilter, the same
fastText model on the same documents, side by side in one run (CPU seconds of one process: docs/s per core),
with how often the two keep the same documents; then the step's share of a whole `lmstack prepare`.

    python benchmarks/quality_scoring.py --docs 20000 --datatrove-python /path/to/datatrove-venv/bin/python

The datatrove venv needs `datatrove` and `fasttext-numpy2-wheel`; its fastText trains the benchmark's model
(Brown Corpus against nlp-corpus, DCLM's options), in fastText's own file format, which both sides read.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

DATATROVE_SIDE = r"""
import json, sys, time
import fasttext
from datatrove.data import Document
from datatrove.pipeline.filters import FastTextClassifierFilter
if sys.argv[1] == "train":
    m = fasttext.train_supervised(input=sys.argv[2], epoch=25, wordNgrams=2, bucket=100000, thread=1, seed=0, verbose=0)
    m.save_model(sys.argv[3])
    sys.exit()
rows = [json.loads(line) for line in open(sys.argv[2])]
f = FastTextClassifierFilter(model_url=sys.argv[3], keep_labels=("hq", 0.5), newline_replacement=" ")
f.model  # loaded before the clock starts, as lmstack's model is
docs = [Document(text=r["text"], id=r["id"]) for r in rows]
t = time.process_time()
keep = [bool(f.filter(d)) for d in docs]
json.dump({"seconds": time.process_time() - t, "keep": keep}, sys.stdout)
"""


def documents(n: int) -> list[dict]:
    """The shared prose and web documents, repeated to n (each copy its own id)."""
    base = []
    for path in [SHARED / "prose" / "brown.jsonl.gz", SHARED / "prose" / "nlp-corpus.jsonl.gz"]:
        with gzip.open(path, "rt") as f:
            base += [json.loads(line)["text"] for line in f]
    for path in sorted((SHARED / "web").glob("*.json*.gz")):
        with gzip.open(path, "rt") as f:
            base += [json.loads(line)["text"] for line in f]
    return [{"id": f"d{i}", "text": base[i % len(base)]} for i in range(n)]


def train_file(out: Path) -> Path:
    """quality-train's example lines for Brown (hq) against nlp-corpus (cc), balanced, every document."""
    import hashlib
    from types import SimpleNamespace

    from lmstack.data.curate import quality_train as qt
    from lmstack.data.curate.quality import NEGATIVE, POSITIVE, fasttext_line

    a = SimpleNamespace(min_docs=20, max_ratio=3.0, balance=True, unit="document", held_out=0.0, min_chars=100)
    pos = qt.read_side([str(SHARED / "prose" / "brown.jsonl.gz")], "positives", "text")
    neg = qt.read_side([str(SHARED / "prose" / "nlp-corpus.jsonl.gz")], "negatives", "text")
    pos, neg = qt.check_sides(pos, neg, a)
    lines = qt.examples(pos, POSITIVE, a)[0] + qt.examples(neg, NEGATIVE, a)[0]
    lines.sort(key=lambda x: hashlib.sha256(x[1].encode()).digest())
    out.write_text("".join(f"{label} {fasttext_line(text)}\n" for label, text in lines))
    return out


def lmstack_side(rows: list[dict], model: Path) -> dict:
    from lmstack.data.curate.quality import QualityClassifier, QualityScore, load_model
    from lmstack.data.curate.readers import Document

    step = QualityScore([QualityClassifier("hq", str(model), threshold=0.5)])
    load_model(str(model))
    docs = [Document(r["id"], r["text"], "bench") for r in rows]
    t = time.process_time()
    keep = [step(d) is None for d in docs]
    return {"seconds": time.process_time() - t, "keep": keep}


def prepare_share(rows: list[dict], model: Path, tmp: Path) -> dict:
    """A whole `lmstack prepare` (the web pipeline, one worker, no tokenizer) with and without the step."""
    from omegaconf import OmegaConf

    from lmstack.config.store import compose
    from lmstack.data.curate.pipeline import run_prepare

    src = tmp / "docs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for name, extra in (("without", []), ("with", [f"+prepare.quality.hq={{model: '{model}', threshold: 0.5}}"])):
        cfg = compose("prepare", ["prepare=web", "prepare.tokenize=null", *extra])
        t = time.time()
        run_prepare([str(src)], str(tmp / name), OmegaConf.to_container(cfg.prepare, resolve=True))
        out[name] = time.time() - t
    out["share"] = 1 - out["without"] / out["with"]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--datatrove-python", required=True)
    args = p.parse_args()
    rows = documents(args.docs)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        side = tmp / "datatrove_side.py"
        side.write_text(DATATROVE_SIDE)
        model = tmp / "model.bin"
        subprocess.run([args.datatrove_python, str(side), "train", str(train_file(tmp / "train.txt")), str(model)],
                       check=True)  # fmt: skip
        (tmp / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ours = lmstack_side(rows, model)
        cmd = [args.datatrove_python, str(side), "score", str(tmp / "docs.jsonl"), str(model)]
        theirs = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        agree = sum(a == b for a, b in zip(ours["keep"], theirs["keep"])) / len(rows)
        print(f"{len(rows):,} documents, one process each, the same fastText model (threshold 0.5 on __label__hq)")
        for name, r in (("lmstack prepare.quality", ours), ("datatrove FastTextClassifierFilter", theirs)):
            print(f"  {name:36s} {len(rows) / r['seconds']:10,.0f} docs/s per core  keeps {sum(r['keep']):,}")
        speed = theirs["seconds"] / ours["seconds"]
        print(f"  speed: lmstack / datatrove = {speed:.2f}x; the same decision on {agree:.2%} of the documents")
        share = prepare_share(rows, model, tmp)
        print(f"  a whole lmstack prepare (web pipeline, 1 worker): {share['without']:.1f} s without the step, "
              f"{share['with']:.1f} s with it: the step is {share['share']:.1%} of the job")  # fmt: skip


if __name__ == "__main__":
    main()
