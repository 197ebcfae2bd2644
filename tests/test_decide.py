"""Data decisions (`lmstack.sweep.decide`, `lmstack report decide=true`): a planted difference is decided with
high confidence, seeds of one recipe are not, SNR and decision accuracy are what their definitions give; and on
real runs, a recipe whose training text is shuffled into noise loses to the real text on every metric that
separates them, while one recipe's seeds split in two decide nothing."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lmstack.sweep.decide import decide, decision_accuracy, recipes
from lmstack.sweep.report import Job, find_jobs

from .helpers import ROOT, SHARED_DATA, SMALL, clean_env, compose_cfg


def job(name: str, overrides: dict, curves: dict) -> Job:
    return Job(name, Path("."), overrides, "completed", curves, {"tokens": 1000})


def synthetic(means: dict[str, float], seeds: int, seed_sd: float, step_sd: float, rng) -> list[Job]:
    """Jobs of recipes with the given true means of a lower-is-better metric: each seed moves the job's level
    by seed_sd, each of its last 4 evaluations by step_sd."""
    jobs = []
    for recipe, mean in means.items():
        for s in range(seeds):
            level = mean + seed_sd * rng.standard_normal()
            points = [(step, level + step_sd * rng.standard_normal()) for step in (10, 20, 30, 40)]
            jobs.append(job(f"{recipe}-{s}", {"data_mix": recipe, "seed": str(s)}, {"eval/c4/bpb": points}))
    return jobs


def test_a_planted_difference_is_decided_and_noise_is_not():
    rng = np.random.default_rng(0)
    d = decide(synthetic({"good": 2.0, "bad": 2.3}, 3, 0.02, 0.01, rng))
    call = d["metrics"]["eval/c4/bpb"]["pairs"][0]
    assert call["better"] == "data_mix=good" and call["confidence"] > 0.999 and call["decided"]
    same = decide(synthetic({"a": 2.0, "b": 2.0}, 3, 0.02, 0.01, rng))["metrics"]["eval/c4/bpb"]
    assert not same["pairs"][0]["decided"] and same["snr"] < 2


def test_signal_noise_and_snr_follow_their_definitions():
    curves = lambda a, b: {"eval/c4/bpb": [(1, a), (2, b)], "val/bpb": [(1, a), (2, b)]}  # noqa: E731
    jobs = [
        job("a0", {"data_mix": "a", "seed": "0"}, curves(1.0, 1.2)),
        job("a1", {"data_mix": "a", "seed": "1"}, curves(1.2, 1.4)),
        job("b0", {"data_mix": "b", "seed": "0"}, curves(2.0, 2.2)),
        job("b1", {"data_mix": "b", "seed": "1"}, curves(2.2, 2.4)),
    ]
    d = decide(jobs, last=2)
    assert list(d["metrics"]) == ["eval/c4/bpb"]  # val/bpb: each recipe's own held-out text, not compared
    m = d["metrics"]["eval/c4/bpb"]
    assert m["recipes"]["data_mix=a"]["mean"] == pytest.approx(1.2)
    assert m["recipes"]["data_mix=b"]["seed_sd"] == pytest.approx(np.std([2.1, 2.3], ddof=1))
    scale = (1.2 + 2.2) / 2
    assert m["signal"] == pytest.approx(1.0 / scale)
    step, seed = np.std([1.0, 1.2], ddof=1) / scale, np.std([1.1, 1.3], ddof=1) / scale
    assert m["noise"] == pytest.approx({"step": step, "seed": seed, "total": np.hypot(step, seed)})
    assert m["snr"] == pytest.approx(m["signal"] / np.hypot(step, seed))


def test_decision_accuracy_counts_the_pairs_ordered_as_the_larger_scale_orders_them():
    def sweep(order: dict[str, float]) -> dict:
        jobs = [
            job(r, {"data_mix": r}, {"eval/c4/bpb": [(1, v)], "eval/arc_easy/acc": [(1, -v)]}) for r, v in order.items()
        ]
        return decide(jobs, last=1)

    small = sweep({"a": 1.0, "b": 2.0, "c": 3.0})
    large = sweep({"a": 1.0, "b": 3.0, "c": 2.0})  # b and c swap at scale: 2 of 3 pairs agree
    assert decision_accuracy(small, large) == pytest.approx({"eval/c4/bpb": 2 / 3, "eval/arc_easy/acc": 2 / 3})
    assert decision_accuracy(small, large, target="eval/c4/bpb")["eval/arc_easy/acc"] == pytest.approx(2 / 3)


def test_too_few_recipes_are_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="at least 2 recipes"):
        decide(synthetic({"only": 2.0}, 3, 0.02, 0.01, rng))


def shuffled_into_noise(src: Path, out: Path) -> Path:
    """The Brown Corpus sample with each document's characters shuffled: the same characters, no language."""
    rng = random.Random(0)
    with gzip.open(src, "rt") as f, gzip.open(out, "wt") as g:
        for line in f:
            doc = json.loads(line)
            chars = list(doc["text"])
            rng.shuffle(chars)
            g.write(json.dumps({**doc, "text": "".join(chars)}) + "\n")
    return out


@pytest.mark.slow
def test_real_runs_decide_real_text_over_noise_and_seeds_decide_nothing(tmp_path, cache_dir):
    """Six real runs (real Brown text over 4 seeds, Brown shuffled into noise over 2), each a job folder as a
    sweep writes it; then `lmstack report decide=true`."""
    from lmstack.run import run

    noise = shuffled_into_noise(SHARED_DATA / "prose" / "brown.jsonl.gz", tmp_path / "noise.jsonl.gz")
    sweep = tmp_path / "sweep"
    recipes_ = {"real": SHARED_DATA / "prose" / "brown.jsonl.gz", "noise": noise}
    evals = ["evals=olmes", "evals.every_steps=4", "~evals.sets.cc", "evals.sets.c4.max_docs=10", "~evals.tasks.piqa",
             "~evals.tasks.copycolors_10way", "~evals.tasks.sciq", "~evals.tasks.arc_easy",
             "evals.tasks.copa.limit=40"]  # fmt: skip
    n = 0
    for name, path in recipes_.items():
        for seed in range(4 if name == "real" else 2):
            given = [f"data_mix.sources=[{{name: {name}, paths: ['{path}']}}]", f"seed={seed}"]
            out = sweep / str(n)
            overrides = [*given, *evals, "train.max_tokens=3072", "train.val_every_steps=4"]
            run(compose_cfg([*SMALL, *overrides], run_dir=out, cache_dir=cache_dir))
            (out / ".hydra").mkdir()
            (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+recipe={name}", f"seed={seed}"]))
            n += 1
    done = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "report", f"dir={sweep}", "decide=true", "last=3"],
        capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    d = json.loads((sweep / "decisions.json").read_text())
    assert d["recipes"] == {"recipe=noise": ["4", "5"], "recipe=real": ["0", "1", "2", "3"]}
    assert "## Decisions" in (sweep / "report.md").read_text()
    c4 = d["metrics"]["eval/c4/bpb"]
    assert c4["pairs"][0]["better"] == "recipe=real" and c4["pairs"][0]["confidence"] > 0.99
    assert d["trust"] is not None and d["metrics"][d["trust"]]["pairs"][0]["better"] == "recipe=real"
    # the real recipe's seeds split in two: no metric calls a winner with confidence
    real = [j for j in find_jobs(sweep) if j.overrides["recipe"] == "real"]
    halves = decide(real, last=3, group=lambda j: "seeds 0-1" if j.overrides["seed"] in ("0", "1") else "seeds 2-3")
    assert len(recipes(real, group=lambda j: j.overrides["seed"])) == 4
    undecided = [m for m, v in halves["metrics"].items() if not v["pairs"][0]["decided"]]
    assert len(undecided) >= len(halves["metrics"]) - 1, {m: v["pairs"][0] for m, v in halves["metrics"].items()}
