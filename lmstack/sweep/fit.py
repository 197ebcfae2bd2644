"""Loss against compute as a power law with an irreducible term, L(C) = E + A * C^(-alpha).

For a fixed E the law is a straight line in log(L - E) against log(C), so the fit searches E alone (a grid
over [0, min L), then golden-section refinement) and solves A and alpha by least squares at each E. The
objective is the squared relative error of L, so large and small losses weigh alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class PowerLaw:
    E: float
    A: float
    alpha: float
    rel_rmse: float  # on the points it was fitted to

    def __call__(self, c):
        return self.E + self.A * np.asarray(c, dtype=np.float64) ** (-self.alpha)

    def __str__(self) -> str:
        return f"L(C) = {self.E:.4f} + {self.A:.4g} * C^(-{self.alpha:.4f})"


def _at(e: float, x: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """(relative SSE, A, alpha) for irreducible loss e."""
    slope, intercept = np.polyfit(x, np.log(loss - e), 1)
    pred = e + np.exp(intercept + slope * x)
    return float(np.sum(((pred - loss) / loss) ** 2)), float(math.exp(intercept)), float(-slope)


def fit_power_law(compute, loss) -> PowerLaw:
    c, loss = np.asarray(compute, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    if len(c) < 3:
        raise ValueError(f"a fit of E, A and alpha needs at least 3 points, got {len(c)}")
    if np.any(c <= 0) or not np.all(np.isfinite(loss)):
        raise ValueError("compute must be positive and losses finite")
    x = np.log(c)
    top = float(loss.min()) * (1 - 1e-9)
    grid = np.linspace(0.0, top, 400, endpoint=False)
    errs = [_at(e, x, loss)[0] for e in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[i + 1] if i + 1 < len(grid) else top
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(100):
        if _at(a, x, loss)[0] < _at(b, x, loss)[0]:
            hi, b = b, a
            a = hi - g * (hi - lo)
        else:
            lo, a = a, b
            b = lo + g * (hi - lo)
    e = (lo + hi) / 2
    sse, amp, alpha = _at(e, x, loss)
    return PowerLaw(e, amp, alpha, math.sqrt(sse / len(c)))


def held_out_check(compute, loss, n_held: int | None = None) -> tuple[PowerLaw, list[tuple[float, float, float]]]:
    """Fit on all but the n_held largest-compute points and predict those: the law and, per held-out point,
    (compute, actual, predicted)."""
    order = np.argsort(np.asarray(compute, dtype=np.float64))
    c, loss = np.asarray(compute, dtype=np.float64)[order], np.asarray(loss, dtype=np.float64)[order]
    n_held = n_held if n_held is not None else max(1, len(c) // 4)
    if len(c) - n_held < 3:
        raise ValueError(f"{len(c)} points: a held-out check needs at least {3 + n_held}")
    law = fit_power_law(c[:-n_held], loss[:-n_held])
    return law, [(float(ci), float(li), float(law(ci))) for ci, li in zip(c[-n_held:], loss[-n_held:])]
