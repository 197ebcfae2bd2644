"""Data decisions from a sweep with a known confidence (DataDecide, arXiv 2504.11393; Signal and Noise, arXiv
2508.13144): which recipe is better on each metric, how sure the sweep is of each call, and which metric to trust.

A *recipe* is a job's overrides without its seed (`seed=`), so `python train.py -m sweep=data seed=0,1,2` gives
each recipe three jobs. A job's score on a metric is the mean of its last `last` evaluations (the in-loop evals
at the last checkpoints); those evaluations give the step-to-step noise, the seeds the seed-to-seed noise.

Per metric (its direction read from its name: `bpb` and `loss` are lower-is-better, the rest higher):
- each recipe's mean over its jobs and the spread (standard deviation) over seeds;
- signal: the largest difference between two recipes' means, relative to the mean of the recipes' means
  (Signal and Noise's relative dispersion); noise: the step-to-step and seed-to-seed standard deviations,
  relative to the same mean and added in quadrature; SNR = signal / noise. The metric with the largest SNR is
  the one to trust.
- every pair of recipes: the better one and the confidence of that call, the share of `draws` bootstrap
  resamples (seeds drawn with replacement within each recipe, then one of each drawn job's last evaluations)
  in which it is still the better one. A call is `decided` at `confidence` or above.

Given a second sweep of the same recipes at a larger scale (`against`), the decision accuracy of each small-scale
metric: the share of recipe pairs it orders as the large sweep's `target` metric does (DataDecide's measure).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .report import Job

SEED_KEYS = ("seed",)  # overrides that do not make a recipe
LOWER_IS_BETTER = ("bpb", "loss", "perplexity")


@dataclass
class Recipe:
    name: str
    jobs: list[Job]


def lower_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].split("_")[0] in LOWER_IS_BETTER or metric.endswith(LOWER_IS_BETTER)


def recipes(jobs: list[Job], seed_keys: tuple[str, ...] = SEED_KEYS, group=None) -> list[Recipe]:
    """The completed jobs grouped by their overrides without the seed, named by what differs between groups;
    or by `group(job) -> name` when given (e.g. one recipe's seeds split in two, to see what noise alone decides)."""
    done = [j for j in jobs if j.status == "completed" and not j.diverged]
    if group is not None:
        named: dict[str, list[Job]] = {}
        for j in done:
            named.setdefault(group(j), []).append(j)
        return [Recipe(name, sorted(g, key=lambda j: (len(j.name), j.name))) for name, g in sorted(named.items())]
    keys = sorted({k for j in done for k in j.overrides if k not in seed_keys})
    keys = [k for k in keys if len({j.overrides.get(k) for j in done}) > 1]
    groups: dict[str, list[Job]] = {}
    for j in done:
        groups.setdefault(" ".join(f"{k}={j.overrides.get(k, '')}" for k in keys) or "all", []).append(j)
    return [Recipe(name, sorted(g, key=lambda j: (len(j.name), j.name))) for name, g in sorted(groups.items())]


def last_values(job: Job, metric: str, last: int) -> np.ndarray:
    points = [v for _, v in job.curves.get(metric, [])][-last:]
    if not points and isinstance(job.result.get(metric), (int, float)):
        points = [float(job.result[metric])]
    return np.asarray([v for v in points if math.isfinite(v)], dtype=np.float64)


def metrics_of(jobs: list[Job]) -> list[str]:
    """The in-loop evals every completed job measured (eval/<name>/<metric>): the same text and questions for
    every recipe. Not val/bpb: each data recipe holds out its own text, in its own tokenizer's tokens."""
    done = [j for j in jobs if j.status == "completed" and not j.diverged]
    tags = set.intersection(*(set(j.curves) for j in done)) if done else set()
    return sorted(t for t in tags if t.startswith("eval/") and t.count("/") == 2)


def bootstrap_better(a: list[np.ndarray], b: list[np.ndarray], lower: bool, draws: int, rng) -> float:
    """The share of resamples in which recipe a scores better than b (ties count half). a and b: per job, its
    last evaluations."""

    def resample(jobs: list[np.ndarray]) -> np.ndarray:
        width = max(len(v) for v in jobs)
        table = np.stack([np.pad(v, (0, width - len(v)), constant_values=np.nan) for v in jobs])
        lengths = np.asarray([len(v) for v in jobs])
        job = rng.integers(0, len(jobs), size=(draws, len(jobs)))  # seeds, with replacement
        step = (rng.random(size=job.shape) * lengths[job]).astype(int)  # then one of that job's evaluations
        return table[job, step].mean(1)

    x, y = resample(a), resample(b)
    better = (x < y) if lower else (x > y)
    return float(better.mean() + 0.5 * (x == y).mean())


def decide_metric(groups: list[Recipe], metric: str, last: int, draws: int, confidence: float, seed: int) -> dict:
    lower = lower_is_better(metric)
    values = {r.name: [v for v in (last_values(j, metric, last) for j in r.jobs) if len(v)] for r in groups}
    values = {name: v for name, v in values.items() if v}
    per_recipe, step_sd, seed_sd = {}, [], []
    for name, jobs in values.items():
        scores = np.asarray([v.mean() for v in jobs])
        per_recipe[name] = {
            "mean": float(scores.mean()),
            "seed_sd": float(scores.std(ddof=1)) if len(scores) > 1 else None,
            "jobs": len(scores),
            "scores": [float(s) for s in scores],
        }
        step_sd += [float(v.std(ddof=1)) for v in jobs if len(v) > 1]
        if len(scores) > 1:
            seed_sd.append(float(scores.std(ddof=1)))
    means = np.asarray([r["mean"] for r in per_recipe.values()])
    scale = float(np.abs(means).mean()) if len(means) else 0.0
    signal = float(means.max() - means.min()) / scale if len(means) > 1 and scale > 0 else 0.0
    step = float(np.mean(step_sd)) / scale if step_sd and scale > 0 else 0.0
    seeds = float(np.mean(seed_sd)) / scale if seed_sd and scale > 0 else 0.0
    noise = math.hypot(step, seeds)
    rng = np.random.default_rng(seed)
    pairs = []
    for a, b in itertools.combinations(sorted(values), 2):
        p = bootstrap_better(values[a], values[b], lower, draws, rng)
        better, conf = (a, p) if p >= 0.5 else (b, 1 - p)
        pairs.append({"a": a, "b": b, "better": better, "confidence": conf, "decided": conf >= confidence})
    return {
        "lower_is_better": lower,
        "recipes": per_recipe,
        "signal": signal,
        "noise": {"step": step, "seed": seeds, "total": noise},
        "snr": signal / noise if noise > 0 else (math.inf if signal > 0 else 0.0),
        "pairs": pairs,
    }


def decide(
    jobs: list[Job], last: int = 3, draws: int = 2000, confidence: float = 0.95, seed: int = 0, group=None
) -> dict:
    """decisions.json's content: per metric, the recipes, signal, noise, SNR and pairwise calls; the metric to
    trust (the largest finite SNR among metrics every recipe measured). `group`: see `recipes`."""
    groups = recipes(jobs, group=group)
    if len(groups) < 2:
        raise ValueError(f"a decision needs at least 2 recipes of completed jobs; found {len(groups)}")
    out = {m: decide_metric(groups, m, last, draws, confidence, seed) for m in metrics_of(jobs)}
    if not out:
        raise ValueError(
            "the completed jobs share no in-loop eval (eval/<name>/<metric>) to decide on: run with evals="
        )
    full = {m: d for m, d in out.items() if len(d["recipes"]) == len(groups)}
    trust = max(full, key=lambda m: (min(full[m]["snr"], 1e12), m)) if full else None
    return {
        "recipes": {r.name: [j.name for j in r.jobs] for r in groups},
        "last": last,
        "confidence": confidence,
        "trust": trust,
        "metrics": out,
    }


def decision_accuracy(small: dict, large: dict, target: str | None = None) -> dict[str, float | None]:
    """Per metric of the small sweep: the share of recipe pairs it orders as the large sweep orders them on
    `target` (each metric against itself when None). Recipes are matched by name (their overrides)."""
    out = {}
    for metric, d in small["metrics"].items():
        ref = large["metrics"].get(target or metric)
        if ref is None:
            out[metric] = None
            continue
        means, truth = d["recipes"], ref["recipes"]
        names = sorted(set(means) & set(truth))
        agree = total = 0
        for a, b in itertools.combinations(names, 2):
            small_says = (means[a]["mean"] < means[b]["mean"]) == d["lower_is_better"]
            large_says = (truth[a]["mean"] < truth[b]["mean"]) == ref["lower_is_better"]
            agree += small_says == large_says
            total += 1
        out[metric] = agree / total if total else None
    return out


def decisions_markdown(d: dict, accuracy: dict | None = None) -> str:
    lines = [
        "## Decisions",
        "",
        f"Recipes: {', '.join(f'`{name}` ({len(jobs)} jobs)' for name, jobs in d['recipes'].items())}. A job's "
        f"score is the mean of its last {d['last']} evaluations; a call is decided at confidence "
        f"{d['confidence']:.0%} or above (bootstrap over seeds and checkpoints).",
        "",
        f"Metric to trust (largest signal-to-noise ratio): `{d['trust']}`.",
        "",
        "| metric | better | signal | noise (step) | noise (seed) | SNR | decided pairs |"
        + (" decision accuracy |" if accuracy else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if accuracy else ""),
    ]
    for metric, m in sorted(d["metrics"].items(), key=lambda kv: -min(kv[1]["snr"], 1e12)):
        decided = sum(p["decided"] for p in m["pairs"])
        acc = ""
        if accuracy:
            acc = " — |" if accuracy.get(metric) is None else f" {accuracy[metric]:.0%} |"
        lines.append(
            f"| `{metric}` | {'lower' if m['lower_is_better'] else 'higher'} | {m['signal']:.4f} | "
            f"{m['noise']['step']:.4f} | {m['noise']['seed']:.4f} | {m['snr']:.2f} | {decided}/{len(m['pairs'])} |"
            + acc
        )
    if d["trust"]:
        m = d["metrics"][d["trust"]]
        lines += ["", f"### `{d['trust']}`", "", "| recipe | mean | seed sd | jobs |", "| --- | ---: | ---: | ---: |"]
        for name, r in sorted(m["recipes"].items(), key=lambda kv: kv[1]["mean"], reverse=not m["lower_is_better"]):
            sd = "" if r["seed_sd"] is None else f"{r['seed_sd']:.4f}"
            lines.append(f"| `{name}` | {r['mean']:.4f} | {sd} | {r['jobs']} |")
        lines += ["", "| a | b | better | confidence | decided |", "| --- | --- | --- | ---: | --- |"]
        for p in m["pairs"]:
            lines.append(
                f"| `{p['a']}` | `{p['b']}` | `{p['better']}` | {p['confidence']:.3f} | "
                f"{'yes' if p['decided'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"
