"""Document-aware attention: which document of a packed row each token belongs to.

A training block is documents joined by the end-of-text token (each document's last token, as in OLMo-core),
so without a mask a token attends to the end of the previous, unrelated document. `Documents` holds one id
per token (equal ids in one run: one document) and gives what each attention kernel needs, computed once
per forward and shared by every layer: a dense block-diagonal causal mask (SDPA, on CPU; in KV-cache
decoding the rows of the new positions against every cached one, which is how batched generation keeps
left padding out of attention), the cumulative lengths of the flattened documents (varlen kernels such as
flash-attn's), and the positions restarted at each document's first token (`attention.document_positions`).
"""

from __future__ import annotations

from functools import cached_property

import torch


class Documents:
    """Document ids [B, T] of a batch of packed rows; ids must be contiguous runs within a row."""

    def __init__(self, ids: torch.Tensor):
        if ids.dim() != 2:
            raise ValueError(f"document ids must be [batch, time], got shape {tuple(ids.shape)}")
        self.ids = ids
        self._masks: dict[int, torch.Tensor] = {}

    @classmethod
    def from_tokens(cls, idx: torch.Tensor, end_token: int) -> "Documents":
        """Documents split after each `end_token` (the token belongs to the document it ends)."""
        ends = (idx == end_token).long()
        return cls(ends.cumsum(1) - ends)

    @cached_property
    def starts(self) -> torch.Tensor:
        """Bool [B, T]: True at the first token of each document (every row starts one)."""
        new = torch.ones_like(self.ids, dtype=torch.bool)
        new[:, 1:] = self.ids[:, 1:] != self.ids[:, :-1]
        return new

    @cached_property
    def mask(self) -> torch.Tensor:
        """Bool [B, 1, T, T], True where query i may attend key j: j <= i, in the same document."""
        return self.query_mask(self.ids.shape[1])

    def query_mask(self, t: int) -> torch.Tensor:
        """Bool [B, 1, t, S] for the last t of the S positions as queries (KV-cache decoding: the keys are
        every position so far), computed once per t and shared by the layers."""
        if t not in self._masks:
            s = self.ids.shape[1]
            q = torch.arange(s - t, s, device=self.ids.device)
            causal = torch.arange(s, device=self.ids.device)[None, :] <= q[:, None]
            self._masks[t] = (causal & (self.ids[:, s - t :, None] == self.ids[:, None, :]))[:, None]
        return self._masks[t]

    @cached_property
    def positions(self) -> torch.Tensor:
        """Long [B, T]: each token's position inside its own document (0 at its first token)."""
        t = torch.arange(self.ids.shape[1], device=self.ids.device).expand_as(self.ids)
        start = torch.where(self.starts, t, torch.zeros_like(t)).cummax(1).values
        return t - start

    @cached_property
    def cu_seqlens(self) -> tuple[torch.Tensor, int]:
        """(int32 [N + 1] offsets of the N documents in the flattened [B * T] tokens, the longest length),
        the layout of variable-length kernels (flash_attn_varlen_func)."""
        flat = self.starts.flatten()
        offsets = torch.nonzero(flat).flatten()
        end = torch.tensor([flat.numel()], device=flat.device)
        cu = torch.cat([offsets, end]).to(torch.int32)
        return cu, int((cu[1:] - cu[:-1]).max())
