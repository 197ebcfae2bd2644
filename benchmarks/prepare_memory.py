"""Peak memory of `lmstack prepare` as the input grows: the largest process (the driver or any task) should
grow by much less than the input. Real documents from ../shared/data, cycled with planted near-duplicates
(about 1% of words changed) up to N documents, as JSONL files of 5,000 documents; the whole web pipeline
(filters, URL + exact + MinHash dedup with verification, tokenize) with 2 local workers.

    python benchmarks/prepare_memory.py --docs 5000 50000
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import tempfile
from pathlib import Path

from lmstack.config.store import compose
from lmstack.data.curate.pipeline import run_prepare

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_corpus(folder: Path, n: int, per_file: int = 5000, seed: int = 0) -> None:
    base = []
    for path in sorted((SHARED / "web").glob("*.json*.gz")) + sorted((SHARED / "prose").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            base += [json.loads(line)["text"] for line in f]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = base[i % len(base)].split(" ")
        if i >= len(base):  # past the real documents: near-duplicates of them
            for _ in range(max(1, len(words) // 100)):
                words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        rows.append({"id": f"d{i}", "text": " ".join(words)})
    for k in range(0, n, per_file):
        with open(folder / f"part{k // per_file:04d}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[k : k + per_file])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, nargs="+", default=[5000, 50000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--task-bytes", type=int, default=4_000_000)
    args = p.parse_args()
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(compose("prepare", []).prepare, resolve=True)
    base.update(num_workers=args.workers, task_bytes=args.task_bytes)
    base["tokenize"].update(vocab_size=4096, seq_len=256)
    head = f"{'documents':>10}{'MB in':>8}{'tasks':>7}{'docs out':>10}{'s':>8}{'docs/s':>8}"
    print(f"{head}{'driver MB':>11}{'largest task MB':>17}")
    for n in args.docs:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "in"
            folder.mkdir()
            write_corpus(folder, n)
            size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
            stats = run_prepare([str(folder / "*.jsonl")], f"{tmp}/out", base)
            t = json.loads((Path(tmp) / "out" / "timing.json").read_text())
            task_peak = max(s.get("peak_mb", 0) for s in t["stages"].values())
            print(
                f"{n:>10,}{size:>8.1f}{stats['tasks']:>7}{stats['docs_out']:>10,}{t['seconds']:>8.1f}"
                f"{t['docs_per_second']:>8,.0f}{t['driver_peak_mb']:>11,.0f}{task_peak:>17,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
