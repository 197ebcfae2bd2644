"""`lmstack quality-train`: a fastText quality classifier from positive and negative documents, DCLM's recipe
(its training script's defaults with word bigrams, as its OH-2.5 + ELI5 classifier), with held-out figures;
trained by floret (fastText's supervised training, `lmstack.data.curate.quality.trainer_module`).

The held-out split is by document (a hash of side and id, `lmstack.data.sources.is_validation`), so the
paragraphs of one document never sit on both sides of it. Refused before any work, naming the problem: a side
with fewer than `min_docs` documents, a document (the same text to exact dedup) on both sides, and a class more
than `max_ratio` times the other without `balance=true` (which keeps as many of the larger side, chosen by a
hash of their ids, as the smaller has). The output folder gets `model.bin`, `metrics.json` and `report.md`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict

import numpy as np

from lmstack.data.sources import is_validation

from .dedup import ExactDedup
from .partitions import PARAGRAPH
from .quality import NEGATIVE, POSITIVE, FastTextModel, fasttext_line, trainer_module

KEEP_FRACTIONS = (0.1, 0.25, 0.5)


def read_side(paths: list[str], side: str, text_field: str) -> list:
    """The documents of one side (rejects left out, counted by the reader's rules)."""
    from .inputs import expand_inputs
    from .readers import Document, read_inputs

    docs = [d for d in read_inputs(expand_inputs(paths), side, text_field) if isinstance(d, Document)]
    return [d for d in docs if d.text.strip()]


def check_sides(pos: list, neg: list, a) -> tuple[list, list]:
    """The two sides as they will be trained on, or a clear refusal (see the module docstring)."""
    for name, docs in (("positives", pos), ("negatives", neg)):
        if len(docs) < a.min_docs:
            raise ValueError(f"quality-train: {name} has {len(docs)} documents; need at least min_docs={a.min_docs}")
    same = ExactDedup().key  # the same text as exact dedup tells it (case, punctuation and spacing aside)
    seen = {same(d): d for d in pos}
    both = [(seen[h], d) for d in neg if (h := same(d)) in seen]
    if both:
        p, n = both[0]
        raise ValueError(
            f"quality-train: {len(both)} document(s) on both sides, e.g. positive {p.id!r} is negative {n.id!r}; "
            "a document can teach only one class"
        )
    small, large = sorted((pos, neg), key=len)
    if len(large) > a.max_ratio * len(small):
        if not a.balance:
            which = "negatives" if large is neg else "positives"
            raise ValueError(
                f"quality-train: {which} has {len(large)} documents, {len(large) / len(small):.1f}x the other "
                f"side (more than max_ratio={a.max_ratio}); pass balance=true to keep {len(small)} of them"
            )
        salted = lambda d: hashlib.sha256(f"balance/{d.source}/{d.id}".encode()).digest()  # noqa: E731 (not the split's hash)
        kept = sorted(large, key=salted)[: len(small)]
        pos, neg = (kept, neg) if large is pos else (pos, kept)
    return pos, neg


def examples(docs: list, label: str, a) -> tuple[list, list]:
    """(train, held-out) lists of (label, text) for one side, in document or paragraph units."""
    train, held = [], []
    for d in docs:
        units = [d.text] if a.unit == "document" else [p for p in PARAGRAPH.split(d.text) if len(p) >= a.min_chars]
        (held if is_validation(f"{d.source}/{d.id}", a.held_out) else train).extend((label, u) for u in units)
    return train, held


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def held_out_metrics(scores: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy at 0.5, ROC AUC, and per keep fraction the precision (positives among the kept) and recall."""
    order = np.argsort(-scores, kind="stable")
    at = {}
    for f in KEEP_FRACTIONS:
        kept = truth[order[: max(1, round(f * len(scores)))]]
        at[str(f)] = {"precision": float(kept.mean()), "recall": float(kept.sum() / max(truth.sum(), 1))}
    return {
        "accuracy": float(((scores >= 0.5) == truth).mean()),
        "auc": auc(scores, truth),
        "keep_fraction": at,
        "examples": {"positive": int(truth.sum()), "negative": int((~truth).sum())},
    }


def report_md(metrics: dict) -> str:
    rows = "\n".join(f"| {f} | {v['precision']:.3f} | {v['recall']:.3f} |" for f, v in metrics["keep_fraction"].items())
    h = metrics["examples"]
    return (
        "# Quality classifier\n\n"
        f"fastText, {metrics['params']['wordNgrams']}-gram words, dim {metrics['params']['dim']}, "
        f"{metrics['params']['epoch']} epochs; unit: {metrics['unit']}. Trained on "
        f"{metrics['train']['positive']:,} positive and {metrics['train']['negative']:,} negative examples; "
        f"held out (by document): {h['positive']:,} and {h['negative']:,}.\n\n"
        f"Held-out accuracy {metrics['accuracy']:.3f}, ROC AUC {metrics['auc']:.3f}.\n\n"
        "| keep fraction | precision | recall |\n| ---: | ---: | ---: |\n" + rows + "\n"
    )


def train_quality(a) -> dict:
    """Train, evaluate on the held-out documents and publish the folder; returns metrics.json's content."""
    from lmstack.ownership import OwnedFolder

    ft = trainer_module()
    pos, neg = check_sides(read_side(a.positives, "positives", a.text_field),
                           read_side(a.negatives, "negatives", a.text_field), a)  # fmt: skip
    (pos_train, pos_held), (neg_train, neg_held) = examples(pos, POSITIVE, a), examples(neg, NEGATIVE, a)
    if not (pos_train and neg_train and pos_held and neg_held):
        raise ValueError("quality-train: a side has no training or no held-out examples; add documents or "
                         f"change held_out={a.held_out} (unit={a.unit}, min_chars={a.min_chars})")  # fmt: skip
    params = {"lr": a.lr, "dim": a.dim, "epoch": a.epoch, "wordNgrams": a.word_ngrams, "minCount": a.min_count,
              "bucket": a.bucket}  # fmt: skip
    train = sorted(pos_train + neg_train, key=lambda x: hashlib.sha256(x[1].encode()).digest())  # mixed, fixed
    with OwnedFolder(a.out, "quality-model", [*a.positives, *a.negatives]) as owned:
        staging = owned.staging()
        lines = os.path.join(staging, "train.txt")
        with open(lines, "w", encoding="utf-8") as f:
            f.writelines(f"{label} {fasttext_line(text)}\n" for label, text in train)
        model = ft.train_supervised(input=lines, thread=a.threads, seed=a.seed, verbose=0, **params)
        os.remove(lines)
        model.save_model(os.path.join(staging, "model.bin"))
        held = pos_held + neg_held
        scores = FastTextModel(model, "floret").probs([t for _, t in held])
        metrics = {
            **held_out_metrics(scores, np.array([label == POSITIVE for label, _ in held])),
            "train": {"positive": len(pos_train), "negative": len(neg_train)},
            "documents": {"positive": len(pos), "negative": len(neg)},
            "unit": a.unit,
            "labels": {"positive": POSITIVE, "negative": NEGATIVE},
            "params": params,
            "args": asdict(a),
        }
        with open(os.path.join(staging, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        with open(os.path.join(staging, "report.md"), "w") as f:
            f.write(report_md(metrics))
        owned.publish(staging, last="model.bin")
    return metrics
