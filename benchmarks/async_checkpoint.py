"""How long training stalls per checkpoint: synchronous sharded checkpoints against `train.async_checkpoint=true`.

Both runs train the same model with FSDP2 on 2 processes (gloo on CPU) through `python train.py`, with a
checkpoint every `--every` steps (each followed by last.ckpt, a hard-linked copy of it), and read the stall
of every save from the CSV log (`checkpoint/stall_s`, rank 0). Prints per run each save's stall (step
checkpoint, last.ckpt, ...), the checkpoint size and the run's wall time; the two runs' val/bpb must agree.

    python benchmarks/async_checkpoint.py --model 60m --steps 12 --every 4
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, args, async_checkpoint: bool) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"model={args.model}",
        "strategy=fsdp",
        "trainer.devices=2",
        "logger=csv",
        f"run_dir={out}",
        f"hydra.run.dir={out}",
        f"data.seq_len={args.seq_len}",
        f"data.batch_size={args.batch_size}",
        f"train.max_tokens={args.steps * 2 * args.seq_len * args.batch_size}",
        f"train.ckpt_every_steps={args.every}",
        f"train.val_every_steps={args.steps}",
        "data.val_max_blocks=32",
        "train.sample_tokens=0",
        f"train.async_checkpoint={str(async_checkpoint).lower()}",
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    with open(out / "csv" / "metrics.csv") as f:
        stalls = [float(r["checkpoint/stall_s"]) for r in csv.DictReader(f) if r.get("checkpoint/stall_s")]
    bpb = float(re.search(r"after: ([0-9.]+)", done.stdout).group(1))
    size = sum(p.stat().st_size for p in (out / "checkpoints" / "last.ckpt").rglob("*") if p.is_file())
    return {"stalls": stalls, "wall_s": wall, "bpb": bpb, "size_mb": size / 1e6}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="60m")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {kind: run(Path(tmp) / kind, args, kind == "async") for kind in ("sync", "async")}
    print(f"model {args.model}, FSDP2 on 2 CPU processes, {args.steps} steps, a checkpoint every {args.every}")
    for kind, r in results.items():
        print(
            f"{kind:>5}: checkpoints of {r['size_mb']:.0f} MB; training stalled "
            f"[{', '.join(f'{x:.3f}' for x in r['stalls'])}] s, median of the writes "
            f"{statistics.median(r['stalls'][::2]):.3f} s, total {sum(r['stalls']):.2f} s; "
            f"run {r['wall_s']:.1f} s; val/bpb {r['bpb']:.4f}"
        )
    ratio = sum(results["sync"]["stalls"]) / max(sum(results["async"]["stalls"]), 1e-9)
    print(f"total stall: sync / async = {ratio:.1f}x")
    if abs(results["sync"]["bpb"] - results["async"]["bpb"]) > 1e-4:
        raise SystemExit("the two runs' val/bpb differ: the async checkpoints changed training")


if __name__ == "__main__":
    main()
