"""What `lmstack report` adds to a sweep's report.md beyond the ranking: data decisions (decide=true:
decisions.json) and a model ladder's fits (fit=ladder: ladder.json and ladder.png)."""

from __future__ import annotations

import json
from pathlib import Path

from .report import Job, claim, find_jobs


def write_decisions(a, jobs: list[Job], md: Path) -> dict:
    """decisions.json beside report.md and its section appended; with `a.against`, the decision accuracy of
    this sweep's metrics against the larger sweep's (written into both the file and the section)."""
    from .decide import decide, decision_accuracy, decisions_markdown

    d = decide(jobs, last=a.last, confidence=a.confidence)
    accuracy = None
    if a.against:
        large = decide(find_jobs(Path(a.against)), last=a.last, confidence=a.confidence)
        accuracy = decision_accuracy(d, large, a.target)
        d["against"] = {"dir": a.against, "target": a.target, "decision_accuracy": accuracy}
    root = md.parent
    (root / "decisions.json").write_text(json.dumps(d, indent=2))
    claim(root, ["decisions.json"])
    with open(md, "a") as f:
        f.write("\n" + decisions_markdown(d, accuracy))
    return d


def write_ladder(a, jobs: list[Job], md: Path) -> dict:
    """ladder.json and ladder.png beside report.md, and the ladder's section appended. The target defaults to
    10x the largest rung's parameters at 20 tokens per parameter."""
    from .ladder import fit_ladder, ladder_markdown, plot_ladder

    sizes = [float(j.result["non_embedding_params"]) for j in jobs if j.result.get("non_embedding_params")]
    if not sizes:
        raise ValueError(f"{md.parent}: no finished job records its parameters (result.json); run sweep=ladder")
    target_n = a.target_params or 10 * max(sizes)
    target_d = a.target_tokens or 20 * target_n
    d = fit_ladder(jobs, target_n, target_d, a.accuracy)
    root = md.parent
    (root / "ladder.json").write_text(json.dumps(d, indent=2))
    plot_ladder(d, root / "ladder.png")
    claim(root, ["ladder.json", "ladder.png"])
    with open(md, "a") as f:
        f.write("\n" + ladder_markdown(d) + "\n![the ladder's two steps](ladder.png)\n")
    return d
