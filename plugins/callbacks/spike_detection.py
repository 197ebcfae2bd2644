"""Loss-spike detection that says which data caused the spike, and can skip or undo the update.

A rolling window (OLMo-core's defaults: 128 steps, 6 sigma, one-sided, no decision before half a window)
over the loss and the gradient norm, both reduced over ranks first, so every rank decides the same.
For each spike, `spikes.jsonl` in the run directory gets the step, loss, grad norm, their z-scores and
every document of the step's batch (all ranks' micro-batches): id, source, mean loss of its tokens in the
batch and a preview of those tokens, worst first; the worst documents' ids are appended to
`spike_blocklist.txt`, which `lmstack prepare` (`prepare.filters.id_blocklist.files`) and training
(`data.blocklist`) accept.

Modes: `log` records only; `skip_step` also skips the update on every rank (the step still counts, see
`lmstack.train.module`); `rewind` skips it too and requests a rewind (`lmstack.train.hooks`): the run
restarts from the latest checkpoint before the spike, skipping the offending steps on the way forward
(Lightning's SpikeDetection only raises, and a resumed run meets the same batch again). The windows and the
steps to skip are saved in checkpoints, so detection resumes warm. Everything it reads of the step comes
from the module's step record (`StepRecord`): losses, micro-batches, tokenizer, document files.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import deque
from pathlib import Path

import lightning as L
from lmstack.plugins.callbacks import log_metrics

from lmstack.data.document_index import DocumentIndex
from lmstack.train.forensics import append_blocklist, describe, gather, step_documents
from lmstack.train.hooks import RewindRequested, StepHooks, StepRecord, request_rewind

log = logging.getLogger("lmstack")
MODES = ("log", "skip_step", "rewind")


class RollingZ:
    """One-sided z-score of a value against the last `window` accepted values."""

    def __init__(self, window: int):
        self.values: deque = deque(maxlen=window)

    def z(self, x: float) -> float:
        n = len(self.values)
        if n < 2:
            return 0.0
        mean = sum(self.values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / n)
        return (x - mean) / std if std > 0 else (math.inf if x > mean else 0.0)


class SpikeDetection(StepHooks, L.Callback):
    pretraining_only = True  # it traces spikes to pretraining documents

    def __init__(
        self,
        mode: str = "log",
        window: int = 128,
        threshold: float = 6.0,
        min_history: int | None = None,
        metrics: tuple = ("loss", "grad_norm"),
        blocklist_top: int = 3,
        preview_chars: int = 200,
        max_rewinds: int = 10,
    ):
        if mode not in MODES:
            raise ValueError(f"spike detection mode={mode!r}; allowed: {', '.join(MODES)}")
        unknown = set(metrics) - {"loss", "grad_norm"}
        if unknown:
            raise ValueError(f"spike detection metrics: unknown {sorted(unknown)}; allowed: loss, grad_norm")
        self.mode, self.window, self.threshold = mode, window, threshold
        self.min_history = window // 2 if min_history is None else min_history
        self.metrics, self.blocklist_top, self.preview_chars = tuple(metrics), blocklist_top, preview_chars
        self.max_rewinds = max_rewinds
        self.stats = {m: RollingZ(window) for m in self.metrics}
        self.skip_steps: set[int] = set()  # steps whose update is skipped on the way forward after a rewind
        self.rewinds = 0
        self.spikes = 0
        self._documents: DocumentIndex | None = None

    # ---- the decision, called by the module after backward --------------------------------------
    def on_step_stats(self, trainer, module, record: StepRecord) -> bool:
        step = record.step
        if step in self.skip_steps:
            return True
        if not record.finite:
            return False  # the module skips and counts non-finite steps itself
        values = {"loss": record.loss, "grad_norm": record.grad_norm}
        z = {m: self.stats[m].z(values[m]) for m in self.metrics}
        ready = all(len(self.stats[m].values) >= self.min_history for m in self.metrics)
        if not ready or max(z.values()) <= self.threshold:
            for m in self.metrics:
                self.stats[m].values.append(values[m])
            return False
        self.spikes += 1
        action = {"log": "logged", "skip_step": "skipped", "rewind": "skipped"}[self.mode]
        if self.mode == "rewind":
            action = self._request_rewind(trainer, step)
        self._record(trainer, record, values, z, action)
        log_metrics(trainer, {"train/spikes": float(self.spikes)})
        return self.mode != "log"

    def _request_rewind(self, trainer, step: int) -> str:
        ckpts = []
        for p in Path(trainer.default_root_dir, "checkpoints").glob("step*.ckpt"):
            m = re.fullmatch(r"step(\d+)", p.stem)
            if m and int(m.group(1)) <= step:
                ckpts.append((int(m.group(1)), p))
        self.skip_steps.add(step)
        if not ckpts or self.rewinds >= self.max_rewinds:
            why = "no checkpoint before it" if not ckpts else f"max_rewinds={self.max_rewinds} reached"
            log.warning("spike at step %d: %s, so the update is skipped without rewinding", step, why)
            return "skipped"
        self.rewinds += 1
        checkpoint = str(max(ckpts)[1])
        state = {"rewinds": self.rewinds, "spikes": self.spikes}
        request_rewind(trainer, RewindRequested(checkpoint, set(self.skip_steps), state))
        return f"rewind to {checkpoint}"

    def on_rewind(self, signal: RewindRequested) -> None:
        """The fresh instance of a rewound run: the steps to skip and the counters go on."""
        self.skip_steps |= signal.skip_steps
        self.rewinds = signal.state.get("rewinds", self.rewinds)
        self.spikes = signal.state.get("spikes", self.spikes)

    # ---- forensics ------------------------------------------------------------------------------
    def _record(self, trainer, step_record: StepRecord, values: dict, z: dict, action: str) -> None:
        step = step_record.step
        pieces = [d for rank_docs in gather(trainer, step_documents(step_record.micro_batches)) for d in rank_docs]
        if not trainer.is_global_zero:
            return
        if self._documents is None or self._documents.files != [str(f) for f in step_record.document_files]:
            self._documents = DocumentIndex(step_record.document_files)
        described = describe(pieces, self._documents, step_record.tokenizer_json, self.preview_chars)
        record = {
            "step": step,
            "loss": values["loss"],
            "grad_norm": values["grad_norm"],
            **{f"{m}_z": round(v, 3) for m, v in z.items()},
            "action": action,
            "documents": described,
        }
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "spikes.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        header = f"step {step}: loss {values['loss']:.4f}, grad norm {values['grad_norm']:.4f}"
        append_blocklist(run_dir, header, [d["id"] for d in described[: self.blocklist_top]])
        log.warning(
            "loss spike at step %d (%s); worst document %s (loss %.3f); %s",
            step,
            ", ".join(f"{m} z={v:.1f}" for m, v in z.items()),
            described[0]["id"] if described else "-",
            described[0]["loss"] if described else float("nan"),
            action,
        )

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "windows": {m: list(s.values) for m, s in self.stats.items()},
            "skip_steps": sorted(self.skip_steps),
            "spikes": self.spikes,
            "rewinds": self.rewinds,
        }

    def load_state_dict(self, state: dict) -> None:
        for m, values in state.get("windows", {}).items():
            if m in self.stats:
                self.stats[m].values.extend(values)
        self.skip_steps |= set(state.get("skip_steps", []))  # a rewind's new steps are kept too
        self.spikes = max(self.spikes, state.get("spikes", 0))
        self.rewinds = max(self.rewinds, state.get("rewinds", 0))
