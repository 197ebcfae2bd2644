"""The cost of per-sequence loss anomaly detection (callbacks.anomalies), measured in real training runs.

The default run's model and corpus (`tiny` on the Python standard library, 16 sequences of 256 tokens a
step), trained with the plugin on and off in alternating rounds, the same seed and batches. Prints the
plugin's own time per step (perf/anomalies_ms_per_step, timed inside it), the median tokens/s of each
setting (perf/tokens_per_s), and the anomalies the default corpus itself gave.

    python benchmarks/loss_anomalies.py --tokens 400000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from omegaconf import OmegaConf


def train(out: Path, tokens: int, on: bool) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmstack.config.store import compose
    from lmstack.run import run

    overrides = [f"train.max_tokens={tokens}", "train.sample_tokens=0", "trainer.enable_progress_bar=false"]
    cfg = compose("train", [*overrides, *([] if on else ["~callbacks.anomalies"])])
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(out)
    result = run(cfg)
    events = EventAccumulator(str(next(out.rglob("events.out.tfevents*")).parent)).Reload()
    scalar = lambda name: [e.value for e in events.Scalars(name)] if name in events.Tags()["scalars"] else []  # noqa: E731
    found = out / "anomalies.jsonl"
    return {
        "tokens_per_s": statistics.median(scalar("perf/tokens_per_s")),
        "ms": (scalar("perf/anomalies_ms_per_step") or [float("nan")])[-1],
        "anomalies": [json.loads(line) for line in found.read_text().splitlines()] if found.exists() else [],
        "steps": result["steps"],
        "tokens_per_step": cfg.data.batch_size * cfg.data.seq_len,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=400_000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="loss-anomalies-"))
    runs = {"on": [], "off": []}
    for r in range(args.rounds):
        for setting in ("on", "off"):
            runs[setting].append(train(root / f"{setting}{r}", args.tokens, setting == "on"))
    on, off = runs["on"], runs["off"]
    tps_on = statistics.median(x["tokens_per_s"] for x in on)
    tps_off = statistics.median(x["tokens_per_s"] for x in off)
    step_ms = 1000 * on[0]["tokens_per_step"] / tps_on
    ms = statistics.median(x["ms"] for x in on)
    steps, per_step = on[0]["steps"], on[0]["tokens_per_step"]
    print(f"tiny on the default corpus, {steps} steps of {per_step:,} tokens, {args.rounds} rounds")
    own = f"the plugin's own time {ms:.2f} ms a step = {ms / step_ms:.2%} of {step_ms:.0f} ms"
    print(f"plugin on : {tps_on:,.0f} tokens/s (median); {own}")
    print(f"plugin off: {tps_off:,.0f} tokens/s (median); on / off = {tps_on / tps_off:.3f}")
    found = on[0]["anomalies"]
    print(f"anomalies in the default corpus (round 0): {len(found)}")
    for a in found[:8]:
        d = a["documents"][0] if a["documents"] else {}
        preview = d.get("preview", "")[:70].replace("\n", " ")
        where = f"step {a['step']}: loss {a['score']:.2f} (median {a['median']:.2f}, z {a['z']:.1f})"
        print(f"  {where} {d.get('id', '-')}: {preview!r}")


if __name__ == "__main__":
    main()
