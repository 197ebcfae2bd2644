"""Per-sequence loss anomalies: the broken document that a batch-level spike detector cannot see.

One bad sequence among 16 moves the batch loss by less than its normal step-to-step spread, so spike
detection passes it. Here every sequence of every step is scored against a rolling window of the mean
losses of the sequences before it, robustly (median and MAD, so the outliers themselves do not widen the
band): a sequence's score is the higher of its mean loss and the mean loss of any document in it with at
least `min_doc_tokens` predicted tokens (a broken document sharing a block with good ones). A score whose
robust z, (score - median) / (1.4826 MAD), is above `threshold` is an anomaly: it is written to
`RUN_DIR/anomalies.jsonl` with its step, rank, row, loss, z and documents (id, source, mean loss, tokens,
preview, worst first), and its worst document's id goes to `spike_blocklist.txt`, the blocklist spike
detection writes (`data.blocklist`, `prepare.filters.id_blocklist` read it).

Modes: `log` records only; `drop` also leaves the sequence out of that step's loss (decided before backward,
on each rank from the window every rank shares). The window is built from all ranks' sequences (one
all-gather of two numbers per sequence a step), anomalies left out, and saved in checkpoints. Its own cost
is logged as perf/anomalies_ms_per_step (benchmarks/loss_anomalies.py sets it against the step time).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path

import lightning as L
import torch
from lmstack.plugins.callbacks import log_metrics

from lmstack.data.document_index import DocumentIndex
from lmstack.train.forensics import append_blocklist, describe, gather, step_documents
from lmstack.train.hooks import StepHooks, StepRecord

log = logging.getLogger("lmstack")
MODES = ("log", "drop")


def sequence_scores(batch: dict, token_losses: torch.Tensor, min_doc_tokens: int) -> torch.Tensor:
    """float64 [rows, 2]: each sequence's mean loss over its predicted tokens and its score (the higher of
    that and its documents' means over >= min_doc_tokens tokens); NaN for a sequence with nothing to predict."""
    losses = token_losses.detach().double().cpu()
    learned = batch["labels"].cpu() >= 0
    ordinals = batch["doc"].cpu()
    n = learned.sum(1)
    mean = torch.where(n > 0, (losses * learned).sum(1) / n.clamp(min=1), torch.nan)
    score = mean.clone()
    for row in torch.nonzero(n >= min_doc_tokens).flatten().tolist():
        docs, which = ordinals[row][learned[row]].unique(return_inverse=True)
        if len(docs) > 1:  # several documents: each long enough one on its own
            sums = torch.zeros(len(docs), dtype=torch.float64).index_add_(0, which, losses[row][learned[row]])
            counts = torch.bincount(which, minlength=len(docs))
            long_enough = counts >= min_doc_tokens
            if long_enough.any():
                score[row] = max(float(score[row]), float((sums[long_enough] / counts[long_enough]).max()))
    return torch.stack([mean, score], 1)


class LossAnomalies(StepHooks, L.Callback):
    pretraining_only = True  # it traces pretraining documents

    def __init__(
        self,
        mode: str = "log",
        window: int = 2048,
        threshold: float = 6.0,
        min_history: int = 256,
        min_doc_tokens: int = 32,
        preview_chars: int = 200,
    ):
        if mode not in MODES:
            raise ValueError(f"loss anomalies mode={mode!r}; allowed: {', '.join(MODES)}")
        if min_history < 2 or window < min_history:
            raise ValueError(f"loss anomalies need 2 <= min_history ({min_history}) <= window ({window})")
        self.mode, self.threshold, self.min_history = mode, threshold, min_history
        self.min_doc_tokens, self.preview_chars = min_doc_tokens, preview_chars
        self.window: deque = deque(maxlen=window)  # mean losses of earlier sequences, all ranks
        self.center: tuple[float, float] | None = None  # (median, 1.4826 MAD) of the window, once ready
        self.pending: list[torch.Tensor] = []  # this step's micro-batches' scores, this rank
        self.found = 0
        self.seconds, self.steps = 0.0, 0  # time spent here and steps seen: perf/anomalies_ms_per_step
        self._documents: DocumentIndex | None = None

    def z(self, scores: torch.Tensor) -> torch.Tensor:
        """Robust z of scores against the window (zeros before min_history; NaN scores give 0)."""
        if self.center is None:
            return torch.zeros_like(scores)
        median, scale = self.center
        return torch.nan_to_num((scores - median) / scale, nan=0.0)

    def _recenter(self) -> None:
        if len(self.window) < self.min_history:
            self.center = None
            return
        values = torch.tensor(list(self.window), dtype=torch.float64)
        median = float(values.median())
        mad = float((values - median).abs().median())
        self.center = (median, max(1.4826 * mad, 1e-6))

    # ---- before backward: score this micro-batch (and drop its anomalies in mode=drop) -----------
    def on_token_losses(self, trainer, module, batch, token_losses):
        t0 = time.perf_counter()
        scores = sequence_scores(batch, token_losses, self.min_doc_tokens)
        self.pending.append(scores)
        drop = self.z(scores[:, 1]) > self.threshold
        self.seconds += time.perf_counter() - t0
        return drop.to(token_losses.device) if self.mode == "drop" and bool(drop.any()) else None

    # ---- after backward: share the step's scores, record anomalies, move the window -------------
    def on_step_stats(self, trainer, module, record: StepRecord) -> bool:
        t0 = time.perf_counter()
        local = torch.cat(self.pending) if self.pending else torch.zeros((0, 2), dtype=torch.float64)
        rows = [(m, r) for m, s in enumerate(self.pending) for r in range(len(s))]
        self.pending = []
        every = local
        if trainer.world_size > 1:  # every rank gets every rank's scores: the same window everywhere
            every = trainer.strategy.all_gather(local.to(module.device)).reshape(-1, 2).cpu()
        z = self.z(every[:, 1])
        flagged = z > self.threshold
        if bool(flagged.any()):
            self._record(trainer, record, local, rows, self.z(local[:, 1]))
            self.found += int(flagged.sum())
            log_metrics(trainer, {"train/loss_anomalies": float(self.found)})
        if record.finite:
            kept = every[:, 0][~flagged & ~every[:, 0].isnan()]
            self.window.extend(kept.tolist())
            self._recenter()
        self.seconds += time.perf_counter() - t0
        self.steps += 1
        if self.steps % 10 == 0:
            log_metrics(trainer, {"perf/anomalies_ms_per_step": 1000 * self.seconds / self.steps})
        return False  # the update is taken (mode=drop has already left the anomalies out of it)

    def _record(self, trainer, step_record: StepRecord, local, rows, z: torch.Tensor) -> None:
        """Every rank describes its own anomalies; rank 0 writes them all."""
        found = []
        for j in torch.nonzero(z > self.threshold).flatten().tolist():
            pieces = step_documents(step_record.micro_batches, rows=[rows[j]])
            found.append({"row": rows[j], "loss": float(local[j, 0]), "score": float(local[j, 1]), "z": float(z[j])})
            found[-1]["pieces"] = pieces
        everything = [(rank, a) for rank, mine in enumerate(gather(trainer, found)) for a in mine]
        if not trainer.is_global_zero:
            return
        if self._documents is None or self._documents.files != [str(f) for f in step_record.document_files]:
            self._documents = DocumentIndex(step_record.document_files)
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        median, scale = self.center
        action = "dropped" if self.mode == "drop" else "logged"
        with open(run_dir / "anomalies.jsonl", "a") as f:
            for rank, a in everything:
                docs = describe(a.pop("pieces"), self._documents, step_record.tokenizer_json, self.preview_chars)
                micro, row = a.pop("row")
                entry = {"step": step_record.step, "rank": rank, "micro_batch": micro, "row": row, **a}
                entry.update(median=median, scale=scale, action=action, documents=docs)
                f.write(json.dumps(entry) + "\n")
                header = f"step {step_record.step}: sequence loss {a['score']:.4f}, robust z {a['z']:.1f}"
                append_blocklist(run_dir, header, [d["id"] for d in docs[:1]])
                log.warning(
                    "loss anomaly at step %d: a sequence of loss %.3f (robust z %.1f, median %.3f), worst document "
                    "%s; %s",
                    step_record.step,
                    a["score"],
                    a["z"],
                    median,
                    docs[0]["id"] if docs else "-",
                    action,
                )

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"window": list(self.window), "found": self.found}

    def load_state_dict(self, state: dict) -> None:
        self.window.extend(state.get("window", []))
        self.found = max(self.found, state.get("found", 0))
        self._recenter()
