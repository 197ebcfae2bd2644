"""Which documents a step trained on, and how each fared: shared by the plugins that trace losses back to
the data (spike detection, per-sequence loss anomalies), so they describe documents the same way and feed
the same blocklist.

Everything here reads a step's micro-batches as the module records them (`lmstack.train.hooks.StepRecord`):
`batch` with `labels`, `doc` (each token's document ordinal in its source) and `source`, and `token_losses`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

import torch

from lmstack.data.document_index import DocumentIndex

BLOCKLIST = "spike_blocklist.txt"  # document ids to leave out: data.blocklist, prepare.filters.id_blocklist


@lru_cache(maxsize=4)
def tokenizer_from_json(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def step_documents(micro_batches: list[dict], rows: Optional[Iterable[tuple[int, int]]] = None) -> list[dict]:
    """Per document of the micro-batches (only `rows`, (micro-batch, row) pairs, when given): its source
    index and ordinal, the nats summed over its predicted tokens, their count and ids (split documents:
    one entry per piece, see `merge`)."""
    wanted = None if rows is None else set(rows)
    out = []
    for m, micro in enumerate(micro_batches):
        batch, losses = micro["batch"], micro["token_losses"].float().cpu()
        labels, ordinals = batch["labels"].cpu(), batch["doc"].cpu()
        sources = torch.as_tensor(batch["source"]).cpu()
        for row in range(labels.shape[0]):
            if wanted is not None and (m, row) not in wanted:
                continue
            for ordinal in ordinals[row].unique().tolist():
                mask = (ordinals[row] == ordinal) & (labels[row] >= 0)
                if mask.any():
                    nats, ids = float(losses[row][mask].sum()), labels[row][mask].tolist()
                    piece = {"source_index": int(sources[row]), "ordinal": int(ordinal), "nats": nats}
                    out.append({**piece, "tokens": len(ids), "ids": ids})
    return out


def merge(pieces: list[dict]) -> list[dict]:
    """One entry per document (a document split over rows, micro-batches or ranks: summed)."""
    merged: dict[tuple[int, int], dict] = {}
    for d in pieces:
        m = merged.setdefault((d["source_index"], d["ordinal"]), {**d, "nats": 0.0, "tokens": 0, "ids": []})
        m["nats"] += d["nats"]
        m["tokens"] += d["tokens"]
        m["ids"] += d["ids"]
    return list(merged.values())


def describe(pieces: list[dict], index: DocumentIndex, tokenizer_json: Optional[str], preview_chars: int) -> list:
    """The documents with id, source, mean loss, tokens and a preview of their tokens, worst first."""
    tok = tokenizer_from_json(tokenizer_json) if tokenizer_json else None
    out = []
    for d in merge(pieces):
        preview = tok.decode(d["ids"])[:preview_chars] if tok else ""
        info = index.describe(d["source_index"], d["ordinal"])
        out.append({**info, "loss": d["nats"] / d["tokens"], "tokens": d["tokens"], "preview": preview})
    return sorted(out, key=lambda r: -r["loss"])


def gather(trainer, obj) -> list:
    """`obj` of every rank, in rank order (a collective: every rank must call it)."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def append_blocklist(run_dir: Path, header: str, ids: list[str]) -> None:
    """Add `ids` under a `# header` line to RUN_DIR/spike_blocklist.txt (one id a line, comments allowed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / BLOCKLIST, "a") as f:
        f.write(f"# {header}\n" + "".join(f"{i}\n" for i in ids))
