"""fastText quality classifiers: how a document is put to a model and the probability of the class a filter
keeps, the same for training's held-out figures and for scoring a corpus.

A document goes to the model as DCLM's enricher gives it: its lines joined by spaces (fastText reads one line
per example and splits words on whitespace). Text that spells a label (`__label__hq`) loses the prefix, so a
document cannot add labels to a training line. Any supervised fastText `.bin` is read by path (ours, DCLM's
`fasttext_oh_eli5.bin`, ...): its first bytes are checked before fastText opens it, so a file that is not a
fastText model is refused naming it, before any work.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

import numpy as np

POSITIVE, NEGATIVE = "__label__hq", "__label__cc"  # DCLM's labels: high quality, Common Crawl
MAGIC = (793712314).to_bytes(4, "little")  # fastText's file-format magic number, the first 4 bytes of a .bin
LABEL_PREFIX = re.compile(r"__label__")


def fasttext_line(text: str) -> str:
    """One example line: the document's lines joined by spaces, without label prefixes."""
    return LABEL_PREFIX.sub(" ", " ".join(text.strip().splitlines()))


def fasttext_module():
    try:
        import fasttext
    except ImportError:
        raise ImportError(
            "quality classifiers need fastText: pip install 'lmstack[quality]' (fasttext-numpy2-wheel)"
        ) from None
    return fasttext


def check_model_path(path: str) -> str:
    """The path of a fastText model file, refused naming it when it is missing or is not one."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"quality model {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise ValueError(f"quality model {path} is not a fastText model (its first bytes are not fastText's)")
    return path


@lru_cache(maxsize=4)
def load_model(path: str):
    """A supervised fastText model, once per process and path."""
    model = fasttext_module().load_model(check_model_path(path))
    if not model.get_labels():
        raise ValueError(f"quality model {path} has no labels: it is not a supervised (classifier) model")
    return model


def positive_probs(model, texts: list[str], label: str = POSITIVE) -> np.ndarray:
    """The model's probability of `label` for each text (0 where the model never predicts it)."""
    if label not in model.get_labels():
        raise ValueError(f"the quality model has no label {label!r}; its labels are {model.get_labels()}")
    labels, probs = model.predict([fasttext_line(t) for t in texts], k=-1)
    return np.array([dict(zip(ls, ps)).get(label, 0.0) for ls, ps in zip(labels, probs)], dtype=np.float64)
