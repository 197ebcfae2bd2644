"""Accounting for every document: what came in, what each rule removed, what was rejected, what is left.

The identity `docs_in == docs_out + sum(removed.values()) + rejected` holds by construction: a document
leaves only through `remove` or `reject`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageStats:
    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    tokens_in: int | None = None  # None: not counted (no tokenizer while the stage ran)
    tokens_out: int | None = None
    tokens_estimated: bool = False  # True: tokens are bytes x the output's measured tokens per byte

    def add(self, other: "StageStats") -> None:
        for k in ("docs_in", "docs_out", "bytes_in", "bytes_out", "tokens_in", "tokens_out"):
            a, b = getattr(self, k), getattr(other, k)
            setattr(self, k, None if a is None and b is None else (a or 0) + (b or 0))

    def count_in(self, size: tuple[int, int | None]) -> None:
        self.docs_in += 1
        self.bytes_in += size[0]
        if size[1] is not None:
            self.tokens_in = (self.tokens_in or 0) + size[1]

    def count_out(self, size: tuple[int, int | None]) -> None:
        self.docs_out += 1
        self.bytes_out += size[0]
        if size[1] is not None:
            self.tokens_out = (self.tokens_out or 0) + size[1]


@dataclass
class Accounting:
    docs_in: int = 0
    rejected: int = 0
    removed: Counter = field(default_factory=Counter)
    stages: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def docs_out(self) -> int:
        return self.docs_in - self.rejected - sum(self.removed.values())

    def to_dict(self) -> dict:
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "rejected": self.rejected,
            "removed": dict(sorted(self.removed.items(), key=lambda kv: -kv[1])),
            "reduction": round(self.docs_in / max(self.docs_out, 1), 3),
            "stages": [vars(s) for s in self.stages],
            **self.extra,
        }

    def write(self, out_dir: Path, timing: dict | None = None) -> None:
        """stats.json (what the run produced: the same for the same inputs and config), timing.json (how the
        run went), report.md and report.png."""
        d = self.to_dict()
        assert d["docs_in"] == d["docs_out"] + sum(d["removed"].values()) + d["rejected"]
        (out_dir / "stats.json").write_text(json.dumps(d, indent=2))
        if timing is not None:
            (out_dir / "timing.json").write_text(json.dumps(timing, indent=2))
        (out_dir / "report.md").write_text(report_markdown(d, timing))
        plot(d, out_dir / "report.png")


def estimate_tokens(acct: Accounting) -> None:
    """Stages that ran before a tokenizer existed get tokens estimated from their bytes, at the tokens per
    byte measured on the output (and marked as estimated)."""
    tok = next((s for s in acct.stages if s.name == "tokenize"), None)
    if tok is None or not tok.bytes_in:
        return
    rate = tok.tokens_in / tok.bytes_in
    for s in acct.stages:
        if s.tokens_in is None:
            s.tokens_in, s.tokens_out = round(s.bytes_in * rate), round(s.bytes_out * rate)
            s.tokens_estimated = True


def report_markdown(d: dict, timing: dict | None = None) -> str:
    lines = [
        "# Data preparation report",
        "",
        f"{d['docs_in']:,} documents in, {d['docs_out']:,} out ({d['reduction']}x fewer); "
        f"{d['rejected']:,} rejected as unreadable (see rejects.jsonl).",
        "",
        "| stage | docs in | docs out | MB in | MB out | tokens in | tokens out |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in d["stages"]:
        approx = "~" if s.get("tokens_estimated") else ""
        tok = [f"{approx}{s[k]:,}" if s.get(k) is not None else "" for k in ("tokens_in", "tokens_out")]
        lines.append(
            f"| {s['name']} | {s['docs_in']:,} | {s['docs_out']:,} | {s['bytes_in'] / 1e6:.2f} | "
            f"{s['bytes_out'] / 1e6:.2f} | {tok[0]} | {tok[1]} |"
        )
    if any(s.get("tokens_estimated") for s in d["stages"]):
        lines += [
            "",
            "~: estimated from bytes with the output's tokens per byte (the tokenizer was trained on "
            "the output; give `tokenize.tokenizer` and `count_tokens=true` to count every stage).",
        ]
    lines += ["", "| rule | documents removed | share of input |", "| --- | ---: | ---: |"]
    for rule, n in d["removed"].items():
        lines.append(f"| {rule} | {n:,} | {n / max(d['docs_in'], 1):.1%} |")
    if timing:
        lines += [
            "",
            f"{timing['seconds']:,} s with {timing['workers']} worker(s) ({timing['executor']}), "
            f"{timing['docs_per_second']:,} documents/s; peak memory of the driver {timing['driver_peak_mb']:,.0f} MB.",
            "",
            "| stage | tasks | run now | wall s | CPU s | CPU use | peak MB of a task |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, t in timing["stages"].items():
            use = t.get("cpu", 0) / max(t["wall"], 1e-9) / max(timing["workers"], 1)
            lines.append(
                f"| {name} | {t.get('tasks', '')} | {t.get('tasks_run', '')} | {t['wall']:.2f} | "
                f"{t.get('cpu', 0):.2f} | {use:.0%} | {t.get('peak_mb', 0):,.0f} |"
            )
    return "\n".join(lines) + "\n"


def console_table(d: dict, rules: int = 8) -> str:
    """The closing table `lmstack prepare` prints: documents and megabytes through each stage, and the rules
    that removed most (report.md has every rule, the tokens and the timing)."""
    rows = [("stage", "docs in", "docs out", "MB out")]
    rows += [
        (s["name"], f"{s['docs_in']:,}", f"{s['docs_out']:,}", f"{s['bytes_out'] / 1e6:,.2f}") for s in d["stages"]
    ]
    top = list(d["removed"].items())[:rules]
    if top:
        rows += [("", "", "", ""), ("removed by", "docs", "share", "")]
        rows += [(rule, f"{n:,}", f"{n / max(d['docs_in'], 1):.1%}", "") for rule, n in top]
    if len(d["removed"]) > rules:
        rows.append((f"(and {len(d['removed']) - rules} more rules: report.md)", "", "", ""))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join([r[0].ljust(width[0]), *(c.rjust(w) for c, w in zip(r[1:], width[1:]))]).rstrip() for r in rows
    )


def plot(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("kept", d["docs_out"]), ("rejected", d["rejected"]), *d["removed"].items()]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh([r for r, _ in rows][::-1], [n for _, n in rows][::-1], color="tab:blue")
    ax.set_xlabel("documents")
    ax.set_title(f"{d['docs_in']:,} in, {d['docs_out']:,} kept: {d['reduction']}x reduction")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
