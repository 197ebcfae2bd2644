"""Supervised fine-tuning data, loss and objective: conversations rendered with the chat template, packed into full
sequences without attention across conversations, and a loss on the assistant's tokens only.

Packing: conversations are placed whole, in order, into rows of `seq_len + 1` tokens (a conversation longer
than that is cut to its first seq_len + 1 tokens); each token carries its conversation's number in the row
(`doc`, 0 for padding), and the model keeps attention inside each conversation with the document-aware
attention of pretraining (`lmstack.model.packed_documents.Documents`). RoPE is relative, so a conversation's scores
do not depend on where it sits in the row.

Loss reduction (`sft_loss`):
- `mean`: the mean over the batch's trainable tokens (each batch weighs the same however many it has);
- `sum`: the sum over trainable tokens divided by the batch's token slots (rows x seq_len), a constant, so
  every trainable token weighs the same whichever batch it lands in (open-instruct's "sum" behaviour).
A batch with no trainable token gives a loss of exactly 0 with zero gradients (never NaN); the training
module then skips the optimizer step, so it changes nothing (not even through momentum or weight decay).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmstack.model import Documents
from lmstack.train.objective import MicroStep, Objective

IGNORE = -100


def pack(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Rows of input_ids [R, seq_len], labels [R, seq_len] (IGNORE where not learned, across conversation
    boundaries and on padding) and doc [R, seq_len] (1, 2, ... per conversation in the row; 0: padding)."""
    width = seq_len + 1
    rows: list[tuple[list[int], list[int], list[int]]] = []
    ids: list[int] = []
    mask: list[int] = []
    doc: list[int] = []
    for conv_ids, conv_mask in examples:
        conv_ids, conv_mask = conv_ids[:width], conv_mask[:width]
        if len(ids) + len(conv_ids) > width:
            rows.append((ids, mask, doc))
            ids, mask, doc = [], [], []
        n = (doc[-1] if doc else 0) + 1
        ids, mask, doc = ids + conv_ids, mask + conv_mask, doc + [n] * len(conv_ids)
    if ids:
        rows.append((ids, mask, doc))
    out_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    out_mask = torch.zeros((len(rows), width), dtype=torch.long)
    out_doc = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (i, m, d) in enumerate(rows):
        out_ids[r, : len(i)], out_mask[r, : len(m)], out_doc[r, : len(d)] = (
            torch.tensor(i),
            torch.tensor(m),
            torch.tensor(d),
        )
    labels = out_ids[:, 1:].clone()
    same_doc = (out_doc[:, 1:] == out_doc[:, :-1]) & (out_doc[:, 1:] > 0)
    labels[~(same_doc & (out_mask[:, 1:] == 1))] = IGNORE
    return {"input_ids": out_ids[:, :-1], "labels": labels, "doc": out_doc[:, :-1]}


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """(loss, trainable tokens) over labels != IGNORE; see the module docstring for the reductions."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"sft reduction={reduction!r}; allowed: mean, sum")
    per_token = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    n = int((labels != IGNORE).sum())
    total = per_token.sum()  # ignored positions contribute exact zeros
    if reduction == "mean":
        return total / max(n, 1), n
    return total / labels.numel(), n


class SFTObjective(Objective):
    """The SFT loss on packed conversations (assistant tokens only); a step whose micro-batches hold no trainable
    token on any rank is skipped by the module (it learned nothing), so it changes nothing."""

    name = "sft"

    def __init__(self, reduction: str = "mean"):
        self.reduction = reduction

    def options(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}

    def training_step(self, module, batch) -> MicroStep:
        logits = module.model(batch["input_ids"], docs=Documents(batch["doc"]))
        loss, n = sft_loss(logits, batch["labels"], self.reduction)
        module.log("train/loss", loss, prog_bar=True)
        module.log("train/trainable_tokens", float(n))
        return MicroStep(loss, loss.detach(), learned=n)

    def validation_start(self, module) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64, device=module.device)

    def validation_step(self, module, batch) -> None:
        logits = module.model(batch["input_ids"], docs=Documents(batch["doc"]))
        loss, n = sft_loss(logits, batch["labels"], "mean")
        self.sums += torch.tensor([float(loss) * n, n], dtype=torch.float64, device=module.device)

    def validation_end(self, module) -> dict:
        nats, n = module.trainer.strategy.reduce(self.sums, reduce_op="sum").tolist()
        module.log("val/loss", nats / max(n, 1), prog_bar=True, sync_dist=True)  # equal on all ranks already
        return {"step": module.trainer.global_step, "val/loss": nats / max(n, 1)}
