"""Model ladders (Bhagia et al., arXiv 2412.04403): predict a larger run's task accuracy from small runs in two
steps.

Step 1 fits a task's loss, the correct answer's bits per byte (`eval/<task>/bpb`), as
L(N, D) = E + A / N^alpha + B / D^beta over the rungs (N non-embedding parameters, D tokens), minimising the
squared relative error (least squares in log L from several starting points). Step 2 maps task loss to accuracy
with a sigmoid, acc(L) = a / (1 + exp(-k (L - L0))) + b (k < 0: accuracy falls as loss rises), fitted on every
evaluation of every rung. The prediction chains both.

The check: both steps fitted without the largest rung (every job of the largest N), then its jobs predicted.
The interval: the 5th to 95th percentile of predictions refitted on rungs drawn with replacement (a resample
with fewer than 3 sizes is drawn again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .report import Job

INTERVAL = (5, 95)


@dataclass
class LossLaw:
    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def __call__(self, n, d):
        n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
        return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

    def __str__(self) -> str:
        return f"L(N, D) = {self.E:.4f} + {self.A:.4g} / N^{self.alpha:.4f} + {self.B:.4g} / D^{self.beta:.4f}"


@dataclass
class Sigmoid:
    a: float
    k: float
    L0: float
    b: float

    def __call__(self, loss):
        z = np.clip(-self.k * (np.asarray(loss, dtype=np.float64) - self.L0), -500, 500)
        return self.a / (1 + np.exp(z)) + self.b

    def __str__(self) -> str:
        return f"acc(L) = {self.a:.4f} / (1 + exp({-self.k:+.4f} (L - {self.L0:.4f}))) + {self.b:.4f}"


def fit_loss(n, d, loss, start: LossLaw | None = None) -> LossLaw:
    """Step 1 over points (N, D, task loss): E, A, alpha, B, beta >= 0; from a grid of starting points, or from
    `start` alone (a bootstrap refit starts from the full fit)."""
    from scipy.optimize import least_squares

    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (n, d, loss))
    if len(loss) < 5:
        raise ValueError(f"step 1 fits 5 parameters: it needs at least 5 rungs' points, got {len(loss)}")
    if np.any(n <= 0) or np.any(d <= 0) or not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise ValueError("step 1 needs positive N, D and finite, positive task losses")
    ln, ld, ll = np.log(n), np.log(d), np.log(loss)

    def residual(p):  # p = log E, log A, alpha, log B, beta
        pred = np.exp(p[0]) + np.exp(p[1] - p[2] * ln) + np.exp(p[3] - p[4] * ld)
        return np.log(pred) - ll

    if start is not None:
        starts = [[math.log(max(start.E, 1e-8)), math.log(max(start.A, 1e-8)), start.alpha,
                   math.log(max(start.B, 1e-8)), start.beta]]  # fmt: skip
    else:
        starts = [[math.log(e * loss.min()), math.log(loss.max()) + alpha * ln.mean(), alpha,
                   math.log(loss.max()) + beta * ld.mean(), beta]
                  for e in (0.3, 0.7, 0.9) for alpha in (0.1, 0.3, 0.6) for beta in (0.1, 0.3, 0.6)]  # fmt: skip
    best = None
    for x0 in starts:
        x0 = np.clip(x0, [-20, -20, 0, -20, 0], [10, 60, 3, 60, 3])
        fit = least_squares(residual, x0, bounds=([-20, -20, 0, -20, 0], [10, 60, 3, 60, 3]))
        if best is None or fit.cost < best.cost:
            best = fit
    p = best.x
    return LossLaw(math.exp(p[0]), math.exp(p[1]), p[2], math.exp(p[3]), p[4])


def fit_sigmoid(loss, acc, start: Sigmoid | None = None) -> Sigmoid:
    """Step 2 over points (task loss, accuracy), a and b in [0, 1]; from a grid of starting points or `start`."""
    from scipy.optimize import least_squares

    loss, acc = np.asarray(loss, dtype=np.float64), np.asarray(acc, dtype=np.float64)
    if len(loss) < 4:
        raise ValueError(f"step 2 fits 4 parameters: it needs at least 4 points, got {len(loss)}")
    spread = max(float(loss.max() - loss.min()), 1e-3)

    def residual(p):
        return Sigmoid(*p)(loss) - acc

    if start is not None:
        starts = [[start.a, start.k, start.L0, start.b]]
    else:
        starts = [[max(float(acc.max() - acc.min()), 0.05), k / spread, float(l0), float(acc.min())]
                  for k in (-1.0, -4.0, -16.0) for l0 in np.quantile(loss, [0.25, 0.5, 0.75])]  # fmt: skip
    best = None
    for x0 in starts:
        x0 = np.clip(x0, [0, -1e3, 0, 0], [1, -1e-6, 100, 1])
        fit = least_squares(residual, x0, bounds=([0, -1e3, 0, 0], [1, 0, 100, 1]))
        if best is None or fit.cost < best.cost:
            best = fit
    return Sigmoid(*best.x)


@dataclass
class Rung:
    job: str
    n: float
    d: float
    loss: float  # the task loss at the end
    acc: float  # the task accuracy at the end
    curve: list[tuple[float, float]]  # (task loss, accuracy) at every evaluation: step 2's points


def rungs(jobs: list[Job], task: str, accuracy: str = "acc") -> list[Rung]:
    out = []
    for j in jobs:
        loss, acc = j.curves.get(f"eval/{task}/bpb"), j.curves.get(f"eval/{task}/{accuracy}")
        n = j.result.get("non_embedding_params")
        if j.status != "completed" or j.diverged or not loss or not acc or not n:
            continue
        by_step = dict(acc)
        curve = [(v, by_step[s]) for s, v in loss if s in by_step and math.isfinite(v)]
        out.append(Rung(j.name, float(n), float(j.tokens), loss[-1][1], acc[-1][1], curve))
    return out


def tasks_of(jobs: list[Job]) -> list[str]:
    return sorted({t.split("/")[1] for j in jobs for t in j.curves if t.startswith("eval/") and t.endswith("/bpb")
                   and f"eval/{t.split('/')[1]}/acc" in j.curves})  # fmt: skip


def fit_both(points: list[Rung], start: tuple[LossLaw, Sigmoid] | None = None) -> tuple[LossLaw, Sigmoid]:
    law = fit_loss([r.n for r in points], [r.d for r in points], [r.loss for r in points], start and start[0])
    curve = [p for r in points for p in r.curve]
    return law, fit_sigmoid([p[0] for p in curve], [p[1] for p in curve], start and start[1])


def fit_task(points: list[Rung], target_n: float, target_d: float, draws: int = 200, seed: int = 0) -> dict:
    """Both steps on a task's rungs: the fits, the held-out largest rung's errors, and the prediction at
    (target_n, target_d) with its bootstrap interval."""
    sizes = sorted({r.n for r in points})
    if len(sizes) < 3:
        raise ValueError(f"a ladder needs at least 3 model sizes; found {len(sizes)}")
    law, sig = fit_both(points)
    train = [r for r in points if r.n < sizes[-1]]
    held = []
    try:
        law_h, sig_h = fit_both(train)
        for r in (r for r in points if r.n == sizes[-1]):
            loss = float(law_h(r.n, r.d))
            held.append({"job": r.job, "n": r.n, "d": r.d, "loss": r.loss, "predicted_loss": loss,
                         "loss_error": (loss - r.loss) / r.loss, "acc": r.acc,
                         "predicted_acc": float(sig_h(loss)), "acc_error": float(sig_h(loss)) - r.acc})  # fmt: skip
    except ValueError as e:  # too few points without the largest rung
        held = [{"error": str(e)}]
    rng = np.random.default_rng(seed)
    losses, accs = [], []
    for _ in range(draws * 3):
        if len(losses) == draws:
            break
        drawn = rng.choice(sizes, size=len(sizes), replace=True)
        if len(set(drawn)) < 3:
            continue
        sample = [r for s in drawn for r in points if r.n == s]
        try:
            lb, sb = fit_both(sample, (law, sig))
        except ValueError:
            continue
        losses.append(float(lb(target_n, target_d)))
        accs.append(float(sb(losses[-1])))
    loss = float(law(target_n, target_d))
    return {
        "step1": vars(law) | {"formula": str(law)},
        "step2": vars(sig) | {"formula": str(sig)},
        "held_out": held,
        "prediction": {
            "target_params": target_n,
            "target_tokens": target_d,
            "loss": loss,
            "acc": float(sig(loss)),
            "loss_interval": [float(np.percentile(losses, q)) for q in INTERVAL] if losses else None,
            "acc_interval": [float(np.percentile(accs, q)) for q in INTERVAL] if accs else None,
            "draws": len(losses),
        },
        "rungs": [vars(r) for r in points],
    }


def fit_ladder(jobs: list[Job], target_n: float, target_d: float, accuracy: str = "acc", draws: int = 200) -> dict:
    """ladder.json's content: per task with both a bpb and an accuracy curve, `fit_task` (or why it failed)."""
    out = {}
    for task in tasks_of(jobs):
        try:
            out[task] = fit_task(rungs(jobs, task, accuracy), target_n, target_d, draws)
        except ValueError as e:
            out[task] = {"error": str(e)}
    if not out:
        raise ValueError("no job has in-loop task evals (eval/<task>/bpb and eval/<task>/acc): run sweep=ladder")
    return {"accuracy": accuracy, "tasks": out}


def ladder_markdown(d: dict) -> str:
    lines = ["## Ladder", "", f"Accuracy metric: `{d['accuracy']}`; task loss: the correct answer's bits per byte.", ""]
    lines += ["| task | step 1 | step 2 | held-out loss error | held-out acc error | predicted loss | predicted acc |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for task, t in d["tasks"].items():
        if "error" in t:
            lines.append(f"| {task} | {t['error']} | | | | | |")
            continue
        held = [h for h in t["held_out"] if "loss_error" in h]
        le = ", ".join(f"{h['loss_error']:+.1%}" for h in held) or "—"
        ae = ", ".join(f"{h['acc_error']:+.3f}" for h in held) or "—"
        p = t["prediction"]
        li = p["loss_interval"] and f" [{p['loss_interval'][0]:.3f}, {p['loss_interval'][1]:.3f}]"
        ai = p["acc_interval"] and f" [{p['acc_interval'][0]:.3f}, {p['acc_interval'][1]:.3f}]"
        lines.append(
            f"| {task} | `{t['step1']['formula']}` | `{t['step2']['formula']}` | {le} | {ae} | "
            f"{p['loss']:.4f}{li or ''} | {p['acc']:.4f}{ai or ''} |"
        )
    return "\n".join(lines) + "\n"


def plot_ladder(d: dict, out) -> None:
    """Both steps per task: task loss against N (one line per token multiple, with the fit), and accuracy
    against task loss (every evaluation, with the sigmoid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, v in d["tasks"].items() if "error" not in v]
    if not tasks:
        return
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        t = d["tasks"][task]
        law, sig = (
            LossLaw(*(t["step1"][k] for k in "E A alpha B beta".split())),
            Sigmoid(*(t["step2"][k] for k in ("a", "k", "L0", "b"))),
        )
        by_ratio: dict[float, list] = {}
        for r in t["rungs"]:
            by_ratio.setdefault(round(r["d"] / r["n"]), []).append(r)
        for ratio, rs in sorted(by_ratio.items()):
            rs.sort(key=lambda r: r["n"])
            line = row[0].plot([r["n"] for r in rs], [r["loss"] for r in rs], "o", label=f"D = {ratio} N")[0]
            grid = np.geomspace(rs[0]["n"], t["prediction"]["target_params"], 50)
            row[0].plot(grid, law(grid, ratio * grid), "-", color=line.get_color(), alpha=0.6)
        row[0].plot([t["prediction"]["target_params"]], [t["prediction"]["loss"]], "k*", label="prediction")
        row[0].set(xscale="log", xlabel="non-embedding parameters", ylabel=f"{task} bpb (correct answer)")
        row[0].legend(fontsize=7)
        pts = np.asarray([p for r in t["rungs"] for p in r["curve"]])
        row[1].plot(pts[:, 0], pts[:, 1], ".", alpha=0.6)
        grid = np.linspace(min(pts[:, 0].min(), t["prediction"]["loss"]), pts[:, 0].max(), 100)
        row[1].plot(grid, sig(grid), "-")
        row[1].plot([t["prediction"]["loss"]], [t["prediction"]["acc"]], "k*")
        row[1].set(xlabel=f"{task} bpb (correct answer)", ylabel=f"{task} {d['accuracy']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
