"""`lmstack prepare` end to end against datatrove's equivalent pipeline, on the same documents and cores.

The documents are ../shared/data's real ones plus planted near-duplicates (copies with about 1% of words
changed) up to --docs, in 8 gzip JSONL files. Both sides: read -> Gopher quality and repetition, C4, FineWeb
(language ID off in both) -> exact + MinHash dedup -> tokenize with the same tokenizer (trained once here,
before the timing). lmstack runs with `local` and `ray`, 1 and 2 workers; datatrove's LocalPipelineExecutor
(in its own venv: --datatrove-python) with --workers. Prints docs/s end to end, CPU utilisation, peak memory
of the largest process, and the share of documents on which the two sides decide alike (kept or removed).

    python benchmarks/prepare_end_to_end.py --docs 20000 --datatrove-python /path/to/dt-venv/bin/python
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import tempfile
from pathlib import Path

from prepare_throughput import load_documents

from lmstack.config.store import compose
from lmstack.data.curate.pipeline import run_prepare
from lmstack.data.tokenizer import train_bpe


def lmstack_run(src: Path, out: Path, tokenizer: Path, executor: str, workers: int) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose("prepare", []).prepare, resolve=True)
    cfg["filters"]["language"] = None
    cfg.update(executor=executor, num_workers=workers)
    cfg["tokenize"].update(tokenizer=str(tokenizer), seq_len=2048)
    stats = run_prepare([str(src / "*.jsonl.gz")], str(out), cfg)
    t = json.loads((out / "timing.json").read_text())
    with gzip.open(out / "documents.jsonl.gz", "rt") as f:
        kept = [json.loads(line)["id"] for line in f]
    read = t["stages"]["read"]
    return {
        "seconds": t["seconds"],
        "docs_per_second": stats["docs_in"] / t["seconds"],
        "cpu_utilisation": t["cpu_utilisation"],
        "read_cpu_utilisation": read["cpu"] / read["wall"] / workers,
        "peak_mb": max(t["driver_peak_mb"], *(s.get("peak_mb", 0) for s in t["stages"].values())),
        "kept": kept,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--datatrove-python", help="python of a venv with datatrove (its side is skipped without it)")
    args = p.parse_args()
    rows, planted = load_documents(args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for k in range(8):
            with gzip.open(src / f"part{k}.jsonl.gz", "wt") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows[k::8])
        tokenizer = Path(tmp) / "tokenizer.json"
        train_bpe([r["text"] for r in rows[:3000]], 4096, 2).save(str(tokenizer))
        print(f"{len(rows):,} documents ({len(planted):,} planted near-duplicates), 8 files; language ID off")
        results = {}
        if args.datatrove_python:
            res = subprocess.run(
                [
                    args.datatrove_python,
                    str(Path(__file__).with_name("datatrove_end_to_end.py")),
                    str(src),
                    f"{tmp}/dt",
                    str(tokenizer),
                    str(args.workers),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            dt = json.loads(res.stdout.strip().splitlines()[-1])
            dt["docs_per_second"] = len(rows) / dt["seconds"]
            dt["cpu_utilisation"] = dt["cpu"] / dt["seconds"] / args.workers
            results[f"datatrove local x{args.workers}"] = dt
        for executor in ("local", "ray"):
            for workers in (1, 2):
                results[f"lmstack {executor} x{workers}"] = lmstack_run(
                    src, Path(tmp) / f"{executor}{workers}", tokenizer, executor, workers
                )
    ids = [r["id"] for r in rows]
    theirs = set(results[f"datatrove local x{args.workers}"]["kept"]) if args.datatrove_python else None
    print(
        f"\n{'run':<22}{'s':>8}{'docs/s':>9}{'CPU use':>9}{'read CPU':>10}{'peak MB':>9}{'kept':>8}{'same as dt':>12}"
    )
    for name, r in results.items():
        mine = set(r["kept"])
        same = sum((i in mine) == (i in theirs) for i in ids) / len(ids) if theirs is not None else None
        read = f"{r['read_cpu_utilisation']:.0%}" if "read_cpu_utilisation" in r else ""
        print(
            f"{name:<22}{r['seconds']:>8.1f}{r['docs_per_second']:>9,.0f}{r['cpu_utilisation']:>9.0%}{read:>10}"
            f"{r['peak_mb']:>9,.0f}{len(r['kept']):>8,}" + (f"{same:>12.2%}" if same is not None else "")
        )
    if theirs is not None:
        dt_rate = results[f"datatrove local x{args.workers}"]["docs_per_second"]
        for name, r in results.items():
            if name.startswith("lmstack"):
                print(f"{name}: {r['docs_per_second'] / dt_rate:.1f}x datatrove's docs/s")
        one, two = results["lmstack local x1"], results["lmstack local x2"]
        print(f"lmstack local: 2 workers {two['docs_per_second'] / one['docs_per_second']:.2f}x 1 worker")


if __name__ == "__main__":
    main()
