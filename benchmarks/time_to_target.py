"""Time to a target loss: the main job (`python train.py`: `tiny` on the Python standard library, 1,024,000
tokens) with AdamW against Muon, each at a few peak learning rates, the runs alternating between the two
optimizers. The target is the final val/bpb of the main job as it stood before Muon became its default
(AdamW at 3e-3), measured in the same run. For every run: the tokens and the wall time until its validation
first reaches the target (validation every `--val-every` steps; the wall time counts from the run's first
training step, validation included alike), and its final val/bpb. Each optimizer is scored by its best
learning rate.

    python benchmarks/time_to_target.py --lrs 1.5e-3,3e-3,6e-3 --out /tmp/ttt
    python benchmarks/time_to_target.py --report /tmp/ttt/time_to_target.json --out /tmp/ttt   # the table again
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def curve(run_dir: Path) -> tuple[list[tuple[int, float, float]], float]:
    """[(step, val/bpb, wall time)] and the wall time of the first training step, from the run's events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points, start = {}, None
    for d in sorted({os.path.dirname(p) for p in glob.glob(str(run_dir / "**" / "events.out*"), recursive=True)}):
        acc = EventAccumulator(d, size_guidance={"scalars": 0}).Reload()
        tags = acc.Tags()["scalars"]
        for e in acc.Scalars("val/bpb") if "val/bpb" in tags else []:
            points[e.step] = (e.step, e.value, e.wall_time)
        for e in acc.Scalars("train/loss") if "train/loss" in tags else []:
            start = e.wall_time if start is None else min(start, e.wall_time)
    return [points[s] for s in sorted(points)], start


def train(name: str, out: Path, optimizer: str, lr: float, val_every: int) -> dict:
    run_dir = out / name
    cmd = [sys.executable, "train.py", f"optimizer={optimizer}", f"optimizer.lr={lr}", f"hydra.run.dir={run_dir}",
           f"train.val_every_steps={val_every}", "train.sample_tokens=0",
           "trainer.enable_progress_bar=false"]  # fmt: skip
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads((run_dir / "result.json").read_text())
    points, start = curve(run_dir)
    return {"name": name, "optimizer": optimizer, "lr": lr, "final": result["val/bpb"], "tokens": result["tokens"],
            "steps": result["steps"], "points": points, "start": start, "process_s": time.time() - t0}  # fmt: skip


def to_target(run: dict, target: float) -> tuple[int | None, float | None]:
    """(tokens, seconds from the first training step) at the first validation at or below the target (the
    events hold float32 values: equal to the target within its rounding counts; an event of step s is logged
    after s + 1 optimizer steps)."""
    per_step = run["tokens"] / run["steps"]
    for step, value, wall in run["points"]:
        if value <= target + 1e-6:
            return int((step + 1) * per_step), wall - run["start"]
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", default="1.5e-3,3e-3,6e-3")
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--out", default="/tmp/lmstack-time-to-target")
    ap.add_argument("--report", help="print the table of an earlier run's time_to_target.json instead")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = json.loads(Path(args.report).read_text())["runs"] if args.report else []
    for lr in [] if args.report else [float(x) for x in args.lrs.split(",")]:  # alternating: AdamW, then Muon
        for opt in ("adamw", "muon"):
            runs.append(train(f"{opt}-{lr:g}", out, opt, lr, args.val_every))
            print(f"{runs[-1]['name']}: final val/bpb {runs[-1]['final']:.4f}", flush=True)
    main_job = next(r for r in runs if r["optimizer"] == "adamw" and r["lr"] == 3e-3)
    target = main_job["final"]
    print(f"\ntarget: val/bpb {target:.4f} (the main job's final, AdamW at 3e-3, in this run)\n")
    print("| run | final val/bpb | tokens to target | wall s to target | training wall s |")
    print("| --- | --- | --- | --- | --- |")
    best = {}
    for r in runs:
        tokens, wall = to_target(r, target)
        r["to_target"] = {"tokens": tokens, "seconds": wall}
        shown = (f"{tokens:,}", f"{wall:.1f}") if tokens is not None else ("not reached", "-")
        total = r["points"][-1][2] - r["start"]
        print(f"| {r['name']} | {r['final']:.4f} | {shown[0]} | {shown[1]} | {total:.1f} |")
        if tokens is not None and (r["optimizer"] not in best or wall < best[r["optimizer"]]["to_target"]["seconds"]):
            best[r["optimizer"]] = r
    if {"adamw", "muon"} <= set(best):
        a, m = best["adamw"]["to_target"], best["muon"]["to_target"]
        print(f"\nbest AdamW: {best['adamw']['name']}; best Muon: {best['muon']['name']}")
        print(f"Muon / AdamW: tokens {m['tokens'] / a['tokens']:.2f}x, wall time {m['seconds'] / a['seconds']:.2f}x")
    (out / "time_to_target.json").write_text(json.dumps({"target": target, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
