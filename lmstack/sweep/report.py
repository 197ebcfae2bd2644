"""`lmstack report dir=SWEEP_DIR`: every job of a sweep (finished, running or cut off) from its folder: the
overrides it ran with (.hydra/overrides.yaml), how it ended (result.json), and its metrics from its
TensorBoard events. Writes report.md (jobs ranked by the final metric, the overrides that differ between
jobs, tokens, wall time, diverged or not), report.csv and loss_curves.png (the metric against tokens).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RUNNING_WINDOW_S = 300  # a job without result.json that wrote events this recently is still running


@dataclass
class Job:
    name: str
    path: Path
    overrides: dict[str, str]
    status: str  # completed | diverged | failed | running | interrupted | not started
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # tag -> [(step, value)]
    result: dict = field(default_factory=dict)
    tokens_per_step: int = 0
    wall_s: float | None = None

    def final(self, metric: str) -> float | None:
        points = self.curves.get(metric)
        if points:
            return points[-1][1]
        value = self.result.get(metric)
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def tokens(self) -> int:
        if "tokens" in self.result:
            return int(self.result["tokens"])
        steps = max((s for pts in self.curves.values() for s, _ in pts), default=0)
        return steps * self.tokens_per_step

    @property
    def diverged(self) -> bool:
        if self.status == "diverged":
            return True
        values = [v for tag in ("val/bpb", "train/loss") for _, v in self.curves.get(tag, [])]
        return any(not math.isfinite(v) for v in values)


def _scalars(job_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], float | None, float | None]:
    """tag -> [(step, value)] over every event file of the job, and the first and last event times."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    first = last = None
    dirs = sorted({os.path.dirname(p) for p in glob.glob(str(job_dir / "**" / "events.out.tfevents*"), recursive=True)})
    for d in dirs:
        acc = EventAccumulator(d, size_guidance={"scalars": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                curves.setdefault(tag, {})[e.step] = e.value
                first = e.wall_time if first is None else min(first, e.wall_time)
                last = e.wall_time if last is None else max(last, e.wall_time)
    return {t: sorted(v.items()) for t, v in curves.items()}, first, last


def _tokens_per_step(job_dir: Path) -> int:
    cfg_file = job_dir / "config.yaml"
    if not cfg_file.exists():
        return 0
    from lmstack.config.schema import DataSection
    from lmstack.config.validate import to_dataclass

    saved = yaml.safe_load(cfg_file.read_text())  # the job's config as it ran
    data = to_dataclass(DataSection, saved["data"], "data")
    trainer = saved["trainer"] if "trainer" in saved else {}  # Lightning's own arguments, with Lightning's defaults
    devices = trainer.get("devices", 1)
    world = devices if isinstance(devices, int) and devices > 0 else 1
    return data.seq_len * data.batch_size * trainer.get("accumulate_grad_batches", 1) * world


def _started_at(job_dir: Path) -> float | None:
    """When the job's training process last updated its run-directory marker (status running), if it did."""
    from lmstack.ownership import read_marker

    marker = read_marker(job_dir) or {}
    if marker.get("status") != "running":
        return None
    return float(marker.get("updated") or marker.get("created") or 0.0)


def read_job(job_dir: Path) -> Job:
    over_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = {}
    for item in (yaml.safe_load(over_file.read_text()) or []) if over_file.exists() else []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    result = json.loads((job_dir / "result.json").read_text()) if (job_dir / "result.json").exists() else {}
    curves, first, last = _scalars(job_dir)
    started = _started_at(job_dir)  # the run claimed its folder: it began, events or not
    if result.get("status"):
        status = result["status"]
    elif last is not None or started is not None:
        recent = max(t for t in (last, started) if t is not None)
        status = "running" if time.time() - recent < RUNNING_WINDOW_S else "interrupted"
    else:
        status = "not started"
    wall = result.get("wall_s") or ((last - first) if first is not None and last is not None else None)
    return Job(job_dir.name, job_dir, overrides, status, curves, result, _tokens_per_step(job_dir), wall)


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Job folders of a sweep: subfolders with Hydra's record of the job's overrides, or a run's config."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep folder at {sweep_dir}")
    dirs = [d for d in sweep_dir.iterdir() if d.is_dir() and ((d / ".hydra").is_dir() or (d / "config.yaml").exists())]
    if not dirs:
        raise FileNotFoundError(f"{sweep_dir} holds no sweep jobs (folders with .hydra/ or config.yaml)")
    return [read_job(d) for d in sorted(dirs, key=lambda d: (len(d.name), d.name))]


def differing(jobs: list[Job]) -> list[str]:
    """Override keys whose values are not the same in every job."""
    keys = sorted({k for j in jobs for k in j.overrides})
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def ranked(jobs: list[Job], metric: str) -> list[Job]:
    def key(j: Job):
        v = j.final(metric)
        ok = j.status == "completed" and not j.diverged and v is not None and math.isfinite(v)
        return (0 if ok else 1, v if ok else math.inf, j.name)

    return sorted(jobs, key=key)


def _fmt(v, digits=4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return str(v)


def write_report(sweep_dir: str, metric: str = "val/bpb") -> tuple[list[Job], Path]:
    """report.md, report.csv and loss_curves.png in the sweep folder; returns the ranked jobs. The sweep
    folder is Hydra's: a file of those names that an earlier report did not write is never overwritten."""
    root = Path(sweep_dir)
    jobs = ranked(find_jobs(root), metric)
    check_report_files(root)
    keys = differing(jobs)
    header = ["rank", "job", *keys, metric, "tokens", "wall_s", "status", "diverged"]
    rows = []
    for i, j in enumerate(jobs, 1):
        wall = None if j.wall_s is None else round(j.wall_s)
        rows.append(
            [
                i,
                j.name,
                *[j.overrides.get(k, "") for k in keys],
                j.final(metric),
                j.tokens,
                wall,
                j.status,
                "yes" if j.diverged else "no",
            ]
        )
    with open(root / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*header, "overrides"])
        for row, j in zip(rows, jobs):
            w.writerow([*row, " ".join(f"{k}={v}" for k, v in j.overrides.items())])
    common = {k: v for k, v in (jobs[0].overrides.items() if jobs else []) if k not in keys}
    lines = [
        f"# Sweep report: {root}",
        "",
        f"{len(jobs)} jobs, ranked by final `{metric}` (lower is better); "
        f"{sum(j.status == 'completed' for j in jobs)} completed, {sum(j.diverged for j in jobs)} diverged, "
        f"{sum(j.status == 'failed' for j in jobs)} failed, "
        f"{sum(j.status in ('running', 'interrupted', 'not started') for j in jobs)} unfinished.",
        "",
        "Shared overrides: " + (" ".join(f"`{k}={v}`" for k, v in common.items()) or "none"),
        "",
        "| " + " | ".join(map(str, header)) + " |",
        "|" + " --- |" * len(header),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    plot = _plot(jobs, keys, metric, root / "loss_curves.png")
    lines += ["", f"![{metric} against tokens]({plot.name})" if plot else "(no curves yet)", ""]
    (root / "report.md").write_text("\n".join(lines))
    claim(root, ["report.md", "report.csv", "loss_curves.png"])
    return jobs, root / "report.md"


# every file `lmstack report` may write in a sweep folder (decide=true and fit=ladder add the last three)
REPORT_FILES = ("report.md", "report.csv", "loss_curves.png", "decisions.json", "ladder.json", "ladder.png")
REPORT_MARKER = ".lmstack-report.json"  # which files in the sweep folder lmstack's report wrote


def claim(root: Path, names: list[str]) -> None:
    """Record files the report wrote in the folder's marker (so a later report may replace them)."""
    try:
        ours = set(json.loads((root / REPORT_MARKER).read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        ours = set()
    (root / REPORT_MARKER).write_text(json.dumps({"writer": "lmstack report", "files": sorted(ours | set(names))}))


def check_report_files(root: Path) -> None:
    try:
        ours = set(json.loads((root / REPORT_MARKER).read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        ours = set()
    foreign = [n for n in REPORT_FILES if (root / n).exists() and n not in ours]
    if foreign:
        raise ValueError(f"{root / foreign[0]} was not written by lmstack report; it would be overwritten (move it)")


def _plot(jobs: list[Job], keys: list[str], metric: str, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = False
    fig, ax = plt.subplots(figsize=(8, 5))
    for j in jobs:
        points = [(s * j.tokens_per_step, v) for s, v in j.curves.get(metric, []) if math.isfinite(v)]
        if not points:
            continue
        label = " ".join(f"{k}={j.overrides.get(k, '')}" for k in keys) or j.name
        ax.plot(*zip(*points), marker=".", linestyle="--" if j.diverged else "-", label=f"{j.name}: {label}")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("tokens")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def fit_report(jobs: list[Job], metric: str = "val/bpb", predict_flops: float | None = None) -> str:
    """Fit the final metric against training compute C = 6 N D over the completed jobs (a sweep of sizes),
    check it on the largest held-out runs, and predict a larger run."""
    from .fit import fit_power_law, held_out_check

    points = [
        (6.0 * j.result["non_embedding_params"] * j.tokens, j.final(metric))
        for j in jobs
        if j.status == "completed"
        and not j.diverged
        and j.result.get("non_embedding_params")
        and j.final(metric) is not None
    ]
    if len(points) < 4:
        raise ValueError(f"a scaling fit needs at least 4 completed jobs with different compute; found {len(points)}")
    compute, loss = zip(*points)
    law, held = held_out_check(compute, loss)
    lines = [f"fit on the {len(points) - len(held)} smallest runs: {law}"]
    for c, actual, predicted in held:
        lines.append(
            f"held out C={c:.3g}: actual {actual:.4f}, predicted {predicted:.4f} "
            f"(error {(predicted - actual) / actual:+.2%})"
        )
    full = fit_power_law(compute, loss)
    target = predict_flops or 10 * max(compute)
    lines += [
        f"fit on all {len(points)} runs: {full} (relative RMSE {full.rel_rmse:.2%})",
        f"predicted {metric} at C={target:.3g}: {float(full(target)):.4f}",
    ]
    return "\n".join(lines)
