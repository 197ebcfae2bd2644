"""GPU check (not part of the tests or CI): short bf16 FSDP2 runs of the 150m and 1b presets on one GPU,
with sdpa (and flash-attn when it imports), with and without torch.compile, with optimizer=muon (sdpa,
its Newton-Schulz in bfloat16 on a gathered matrix per FSDP2 shard), and a LoRA SFT stage (stage.lora, rank
16) from each model's first checkpoint; prints tokens/s, MFU and peak memory of each run, read back from its
TensorBoard events (the Throughput plugin's perf/* scalars).

    python scripts/gpu_check.py [--steps 30] [--models 150m 1b] [--out /tmp/gpu_check]
    python scripts/gpu_check.py --cpu-smoke   # the same path on CPU with `tiny`, to check the script itself
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def last_scalars(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = acc.Scalars(tag)[-1].value
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--models", nargs="+", default=["150m", "1b"])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="/tmp/gpu_check")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args()
    backends = ["sdpa"] + (["flash_attn"] if importlib.util.find_spec("flash_attn") else [])
    if args.cpu_smoke:
        args.models, args.seq_len, args.batch, args.steps = ["tiny"], 64, 4, 4
        hw = ["trainer=cpu", "strategy=fsdp", "trainer.devices=1"]
    else:
        hw = ["trainer=gpu", "trainer.devices=1", "trainer.precision=32-true", "strategy=fsdp"]  # FSDP2 casts to bf16
    rows = []
    runs = [(*r, "adamw") for r in itertools.product(args.models, backends, [False, True])]
    runs += [(m, "sdpa", c, "muon") for m, c in itertools.product(args.models, [False, True])]
    runs += [(m, "sdpa", False, "lora") for m in args.models]
    for model, backend, compile_, optimizer in runs:
        name = f"{model}-{backend}-{'compile' if compile_ else 'eager'}" + (
            "" if optimizer == "adamw" else f"-{optimizer}"
        )
        run_dir = Path(args.out) / name
        tokens = args.steps * args.seq_len * args.batch
        stage = [f"train.max_tokens={tokens}", f"optimizer={optimizer}"]
        if optimizer == "lora":  # ~20-token conversations packed into seq_len rows: about args.steps steps
            base = Path(args.out) / f"{model}-sdpa-eager" / "checkpoints" / "last.ckpt"
            examples = args.steps * args.batch * args.seq_len // 20
            stage = ["stage=sft", f"init_from={base}", "stage.lora={rank: 16}", "optimizer=adamw",
                     f"stage.train_examples={examples}", "stage.test_examples=20", "stage.epochs=1"]  # fmt: skip
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            f"model={model}",
            *hw,
            f"model.attention.backend={backend}",
            *stage,
            f"data.seq_len={args.seq_len}",
            f"data.batch_size={args.batch}",
            f"train.compile={str(compile_).lower()}",
            "train.val_every_steps=100000",
            "train.sample_tokens=0",
            "data.val_max_blocks=8",
            f"callbacks.throughput.every_n_steps={max(1, min(10, args.steps // 2))}",
            "callbacks.stability.every_n_steps=1000",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ]
        if backend == "flash_attn":
            cmd.append("imports=[lmstack.plugins.attention.flash_attn]")
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode:
            rows.append((name, "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]))
            continue
        s = last_scalars(run_dir)
        rows.append(
            (
                name,
                f"{s.get('perf/tokens_per_s', float('nan')):>10,.0f} tok/s  "
                f"MFU {s.get('perf/mfu', float('nan')):6.1%}  "
                f"peak mem {s.get('perf/peak_memory_gb', float('nan')):6.1f} GB  wall {wall:5.0f} s",
            )
        )
        print(name, rows[-1][1], flush=True)
    print("\n| run | result |\n| --- | --- |")
    for name, result in rows:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    main()
