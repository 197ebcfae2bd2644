"""Hugging Face sequence-classification folders as quality models (FineWeb-Edu's classifier is one: a BERT
encoder with a one-output regression head whose value is the educational score, 0 to 5).

A folder is read by path only (`local_files_only`: nothing downloads) and checked from its `config.json`
before any work: a folder that is not a sequence classifier is refused naming it. A regression head (one
output) gives its value as the score, so a threshold is on that scale (FineWeb-Edu keeps >= 3); a classifier
gives the softmax probability of `label`, by default the second of two classes. Texts are truncated to the
model's length, as FineWeb-Edu's annotation script does. Needs transformers (`pip install 'lmstack[hf]'`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Optional

import numpy as np


def folder_info(path: str) -> dict:
    """What `config.json` says of a classifier folder: `regression` and its `labels` in class order; a folder
    that is not a Hugging Face sequence classifier is refused naming it."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ValueError(f"quality model {path} is a folder without config.json: not a Hugging Face model")
    with open(config) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"quality model {path} is not a Hugging Face sequence-classification model "
                         f"(config.json architectures: {archs})")  # fmt: skip
    id2label = {int(k): v for k, v in (cfg.get("id2label") or {}).items()}
    n = int(cfg.get("num_labels") or len(id2label) or 2)
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(f"quality model {path} is a Hugging Face folder: pip install 'lmstack[hf]'")
    regression = cfg.get("problem_type") == "regression" or n == 1
    return {"regression": regression, "labels": [id2label.get(i, f"LABEL_{i}") for i in range(n)]}


def resolve_label(path: str, info: dict, label: Optional[str]) -> Optional[str]:
    """The class whose probability is the score (None for a regression head), refused naming the model's own
    labels when it is not one of them or when there is no obvious positive class."""
    if info["regression"]:
        if label is not None:
            raise ValueError(f"quality model {path} has a regression head (its value is the score): give no label")
        return None
    if label is None:
        if len(info["labels"]) != 2:
            raise ValueError(f"quality model {path} has {len(info['labels'])} classes {info['labels']}: "
                             "name the one to score with label=")  # fmt: skip
        return info["labels"][1]
    if label not in info["labels"]:
        raise ValueError(f"quality model {path} has no label {label!r}; its labels are {info['labels']}")
    return label


class HFClassifier:
    """A sequence-classification folder, loaded once per process, scoring texts in small batches."""

    batch_size = 16

    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()  # its "Loading weights" bar in every task would break prepare's one bar
        self.path, self.info = path, folder_info(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()
        self.model.to(torch.float32)
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None)]
        self.max_length = min((int(x) for x in limits if x and x < 10**6), default=512)  # 1e30: "no limit"
        self.labels = self.info["labels"]

    def probs(self, texts: list[str], label: Optional[str] = None) -> np.ndarray:
        """The regression head's value, or the probability of `label`, for each text."""
        import torch

        label = resolve_label(self.path, self.info, label)
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i : i + self.batch_size], truncation=True, max_length=self.max_length,
                                     padding=True, return_tensors="pt")  # fmt: skip
                logits = self.model(**enc).logits.float()
                if label is None:
                    out.append(logits[:, 0])
                else:
                    out.append(torch.softmax(logits, dim=-1)[:, self.labels.index(label)])
        return torch.cat(out).double().numpy() if out else np.zeros(0)
