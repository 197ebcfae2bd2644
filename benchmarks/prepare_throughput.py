"""Data preparation: lmstack's filters and MinHash against datatrove's, on the same real documents.

The documents are ../shared/data's (web, Brown, nlp-corpus) repeated with planted near-duplicates (copies
with about 1% of the words changed) up to --docs. Each filter runs on its own over every document, in one
process, timed in CPU seconds. Prints docs/s per core for each side, the ratio, the share of identical
keep/remove decisions per filter, MinHash precision and recall on the planted copies, and the CPU
utilisation of a whole `lmstack prepare` run with 2 workers.

    python benchmarks/prepare_throughput.py --docs 20000 --datatrove-python /path/to/dt-venv/bin/python
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

from lmstack.data.curate.dedup import MinHashDedup, signatures
from lmstack.data.curate.filters import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from lmstack.data.curate.readers import Document

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_documents(n: int, seed: int = 0) -> tuple[list[dict], set[int]]:
    base = []
    for path in sorted((SHARED / "web").glob("*.json*.gz")) + sorted((SHARED / "prose").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            base += [json.loads(line)["text"] for line in f]
    rng = random.Random(seed)
    rows, planted = [{"id": f"d{i}", "text": t} for i, t in enumerate(base)], set()
    while len(rows) < n:
        words = rng.choice(base).split(" ")
        for _ in range(max(1, len(words) // 100)):
            words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        planted.add(len(rows))
        rows.append({"id": f"d{len(rows)}", "text": " ".join(words)})
    return rows, planted


def lmstack_side(rows: list[dict]) -> dict:
    out = {}
    for name, f in {
        "gopher_quality": GopherQuality(),
        "gopher_repetition": GopherRepetition(),
        "c4": C4Quality(),
        "fineweb": FineWebQuality(),
    }.items():
        docs = [Document(r["id"], r["text"], "bench") for r in rows]
        t = time.process_time()
        out[name] = {"keep": [f(d) is None for d in docs]}
        out[name]["seconds"] = time.process_time() - t
    t = time.process_time()
    signatures([r["text"] for r in rows])
    out["minhash_signatures"] = {"seconds": time.process_time() - t}
    return out


def whole_prepare_utilisation(rows: list[dict], workers: int) -> dict:
    from omegaconf import OmegaConf

    from lmstack.data.curate.pipeline import run_prepare

    with tempfile.TemporaryDirectory() as tmp:
        for k in range(8):  # 8 input files, so the workers have files to share
            with gzip.open(f"{tmp}/part{k}.jsonl.gz", "wt") as f:
                for r in rows[k::8]:
                    f.write(json.dumps(r) + "\n")
        cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/prepare/web.yaml"))
        cfg.update(num_workers=workers, tokenize=None)
        stats = run_prepare([f"{tmp}/part*.jsonl.gz"], f"{tmp}/out", cfg)
        timing = json.loads(Path(f"{tmp}/out/timing.json").read_text())
    return {k: stats[k] for k in ("docs_in", "docs_out")} | {
        k: timing[k] for k in ("seconds", "docs_per_second", "cpu_utilisation")
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument(
        "--datatrove-python", help="python of a venv with datatrove installed (its side is skipped without it)"
    )
    args = p.parse_args()
    rows, planted = load_documents(args.docs)
    print(
        f"{len(rows):,} documents ({len(planted):,} planted near-duplicates), "
        f"{sum(len(r['text']) for r in rows) / 1e6:.1f} MB"
    )
    ours = lmstack_side(copy.deepcopy(rows))
    theirs = None
    if args.datatrove_python:
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        res = subprocess.run(
            [args.datatrove_python, str(Path(__file__).with_name("datatrove_side.py")), f.name],
            capture_output=True,
            text=True,
            check=True,
        )
        theirs = json.loads(res.stdout)
    print(f"\n{'step':<20}{'lmstack docs/s':>16}{'datatrove docs/s':>18}{'ratio':>8}{'same decisions':>16}")
    for name, mine in ours.items():
        rate = len(rows) / mine["seconds"]
        line = f"{name:<20}{rate:>16,.0f}"
        if theirs:
            other = len(rows) / theirs[name]["seconds"]
            line += f"{other:>18,.0f}{rate / other:>8.1f}"
            if "keep" in mine:
                same = sum(a == b for a, b in zip(mine["keep"], theirs[name]["keep"])) / len(rows)
                line += f"{same:>16.2%}"
        print(line)
    for name, mine in ours.items():
        if "keep" in mine:
            print(
                f"  {name}: lmstack keeps {sum(mine['keep']) / len(rows):.1%}"
                + (f", datatrove keeps {sum(theirs[name]['keep']) / len(rows):.1%}" if theirs else "")
            )
    dup = set(MinHashDedup().duplicates([r["text"] for r in rows]).tolist())
    recall = len(dup & planted) / max(len(planted), 1)
    precision = len(dup & planted) / max(len(dup), 1)
    print(
        f"\nMinHash (14 bands x 8 rows, word 5-grams): removed {len(dup):,}; planted {len(planted):,}; "
        f"recall {recall:.4f}, precision {precision:.4f}"
    )
    print("whole lmstack prepare (web filters + dedup), 2 workers:", whole_prepare_utilisation(rows, 2))


if __name__ == "__main__":
    main()
