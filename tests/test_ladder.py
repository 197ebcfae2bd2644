"""Model ladder fits (`lmstack.sweep.ladder`): both steps recover a known law from noisy synthetic rungs, the
held-out rung and the interval are computed, and too few rungs fail with a message."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lmstack.sweep.ladder import LossLaw, Sigmoid, fit_ladder, fit_loss, fit_sigmoid, fit_task, rungs
from lmstack.sweep.report import Job

LAW = LossLaw(E=0.9, A=40.0, alpha=0.3, B=30.0, beta=0.35)  # task losses from about 3.0 down to 1.3
SIGMOID = Sigmoid(a=0.55, k=-4.0, L0=2.0, b=0.25)
SIZES = [5e4, 1e5, 2e5, 4e5, 8e5]
RATIOS = [5, 10, 20, 40]


def synthetic_jobs(noise: float, sizes=SIZES, seed: int = 0) -> list[Job]:
    """A ladder's jobs as `lmstack report` reads them: the task's bpb and acc at 4 evaluations each, from LAW
    and SIGMOID with relative noise on the loss and absolute noise on the accuracy."""
    rng = np.random.default_rng(seed)
    jobs = []
    for n in sizes:
        for r in RATIOS:
            d = r * n
            steps = [1, 2, 3, 4]
            losses = [float(LAW(n, d * s / 4)) * (1 + noise * rng.standard_normal()) for s in steps]
            accs = [float(SIGMOID(v)) + noise * rng.standard_normal() for v in losses]
            jobs.append(
                Job(
                    name=f"{int(n)}x{r}",
                    path=Path("."),
                    overrides={"ladder.params": str(n), "ladder.tokens_per_param": str(r)},
                    status="completed",
                    curves={"eval/arc_easy/bpb": list(zip(steps, losses)), "eval/arc_easy/acc": list(zip(steps, accs))},
                    result={"non_embedding_params": n, "tokens": d},
                )
            )
    return jobs


def test_step_one_recovers_the_law_from_noisy_rungs():
    points = rungs(synthetic_jobs(noise=0.005), "arc_easy")
    law = fit_loss([p.n for p in points], [p.d for p in points], [p.loss for p in points])
    assert law.E == pytest.approx(LAW.E, rel=0.1)
    assert law.alpha == pytest.approx(LAW.alpha, abs=0.06) and law.beta == pytest.approx(LAW.beta, abs=0.06)
    grid_n, grid_d = np.geomspace(5e4, 8e6, 7), np.geomspace(2.5e5, 3e8, 7)
    assert np.allclose(law(grid_n, grid_d), LAW(grid_n, grid_d), rtol=0.02)  # 10x past the largest rung


def test_step_two_recovers_the_sigmoid():
    loss = np.linspace(1.0, 2.4, 60)
    acc = SIGMOID(loss) + 0.005 * np.random.default_rng(1).standard_normal(60)
    sig = fit_sigmoid(loss, acc)
    assert (sig.a, sig.k, sig.L0, sig.b) == pytest.approx((SIGMOID.a, SIGMOID.k, SIGMOID.L0, SIGMOID.b), rel=0.1)


def test_the_ladder_predicts_the_held_out_rung_and_a_target_with_an_interval():
    d = fit_ladder(synthetic_jobs(noise=0.005), target_n=8e6, target_d=1.6e8, draws=60)
    task = d["tasks"]["arc_easy"]
    held = [h for h in task["held_out"] if "loss_error" in h]
    assert len(held) == len(RATIOS) and all(h["n"] == 8e5 for h in held)  # every job of the largest size
    assert max(abs(h["loss_error"]) for h in held) < 0.03 and max(abs(h["acc_error"]) for h in held) < 0.03
    p = task["prediction"]
    truth = float(LAW(8e6, 1.6e8))
    assert p["loss"] == pytest.approx(truth, rel=0.03)
    lo, hi = p["loss_interval"]
    assert lo <= p["loss"] <= hi and hi - lo < 0.2 * truth
    assert p["acc"] == pytest.approx(float(SIGMOID(truth)), abs=0.03) and p["draws"] == 60


def test_too_few_rungs_fail_with_a_message():
    with pytest.raises(ValueError, match="at least 3 model sizes; found 2"):
        fit_task(rungs(synthetic_jobs(0.005, sizes=SIZES[:2]), "arc_easy"), 1e7, 2e8)
    with pytest.raises(ValueError, match="at least 5 rungs"):
        fit_loss([1e5, 2e5, 4e5], [1e6, 2e6, 4e6], [2.0, 1.9, 1.8])
    d = fit_ladder(synthetic_jobs(0.005, sizes=SIZES[:2]), 1e7, 2e8)  # the report says so per task
    assert d["tasks"]["arc_easy"] == {"error": "a ladder needs at least 3 model sizes; found 2"}
    assert math.isfinite(LAW(1e5, 1e6))
