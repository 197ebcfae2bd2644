"""MoE against dense at the same active parameters per token, on the same prose, for the same tokens.

`tiny` (dense SwiGLU of hidden 384) against `moe-tiny` (8 experts of hidden 192, top-2: the same 384 hidden
units active per token, 4x the feed-forward parameters), both trained by `python train.py` on the Brown +
nlp-corpus mix with the same seed, batches and schedule, one after the other in this process. Prints
tokens/s of each, validation bpb at equal tokens (the end of both runs) and at equal wall time (each run's
validation curve at the shorter run's duration, interpolated), and the active/total parameter counts.

    python benchmarks/moe_vs_dense.py --tokens 800000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf


def train(model: str, tokens: int, out: Path, extra: list[str]) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmstack.config.store import compose
    from lmstack.run import run

    overrides = [f"model={model}", "data_mix=prose", f"train.max_tokens={tokens}", "train.val_every_steps=20"]
    cfg = compose("train", [*overrides, "train.sample_tokens=0", "trainer.enable_progress_bar=false", *extra])
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(out / model)
    result = run(cfg)
    events = EventAccumulator(str(next((out / model).rglob("events.out.tfevents*")).parent)).Reload()
    loss = events.Scalars("train/loss")
    start = loss[0].wall_time
    val = [(e.wall_time - start, e.step, e.value) for e in events.Scalars("val/bpb") if e.step > 0]
    tps = [e.value for e in events.Scalars("perf/tokens_per_s")]
    return {"result": result, "val": val, "tokens_per_s": float(np.median(tps)), "train_s": loss[-1].wall_time - start}


def bpb_at(run: dict, seconds: float) -> float:
    t, _, v = zip(*run["val"])
    return float(np.interp(seconds, t, v))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=float, default=800_000)
    p.add_argument("--out", default=None)
    p.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for both runs")
    args = p.parse_args()
    from lmstack.model import ModelConfig

    out = Path(args.out or tempfile.mkdtemp(prefix="moe-vs-dense-"))
    runs = {m: train(m, int(args.tokens), out, args.extra) for m in ("tiny", "moe-tiny")}
    dense, moe = runs["tiny"], runs["moe-tiny"]
    same_time = min(dense["val"][-1][0], moe["val"][-1][0])
    print(f"\n{int(args.tokens):,} tokens each on the prose mix; run folders under {out}")
    print(
        "| model | active / total non-embedding params | tokens/s (median) | train s | val bpb at equal tokens "
        f"| val bpb at {same_time:.0f} s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        cfg = yaml.safe_load((out / name / "config.yaml").read_text())["model"]
        mc = ModelConfig(**{k: v for k, v in cfg.items() if k in ModelConfig.__dataclass_fields__ and v is not None})
        print(
            f"| {name} | {mc.non_embedding_params(active=True) / 1e6:.2f}M / {mc.non_embedding_params() / 1e6:.2f}M "
            f"| {r['tokens_per_s']:,.0f} | {r['train_s']:.0f} | {r['result']['val/bpb']:.4f} "
            f"| {bpb_at(r, same_time):.4f} |"
        )
    print(
        f"\nthroughput ratio moe/dense: {moe['tokens_per_s'] / dense['tokens_per_s']:.2f}; "
        f"bpb difference at equal tokens (moe - dense): {moe['result']['val/bpb'] - dense['result']['val/bpb']:+.4f}; "
        f"at equal time: {bpb_at(moe, same_time) - bpb_at(dense, same_time):+.4f}"
    )


if __name__ == "__main__":
    main()
