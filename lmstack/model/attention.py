"""Causal self-attention with MHA / GQA / MQA heads, optional QK-norm, and pluggable backends.

A backend is a function `(q, k, v, q_offset) -> out` on tensors laid out [batch, heads, time, head_dim];
k and v may have fewer heads than q (GQA/MQA) and cover positions 0..q_offset+T-1. Backends are chosen by
name from the registry (`lmstack.registry`, kind `attention`; `ATTENTION_BACKENDS` is that table); plugins
add their own with `register_attention_backend`.

Packed rows with document boundaries (`lmstack.model.packed_documents.Documents`) go to a backend registered with
`varlen=True` as a fifth argument (e.g. flash-attn's variable-length kernel); every other backend's
batches are run through SDPA with the documents' block-diagonal causal mask instead.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.registry import entries, register

from .norms import make_norm
from .packed_documents import Documents
from .rope import apply_rope

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
ATTENTION_BACKENDS: dict[str, AttentionFn] = entries("attention")


def register_attention_backend(name: str, varlen: bool = False):
    """Decorator: make `fn` selectable as `attention.backend=<name>`; `varlen`: it also takes the batch's
    `Documents` as a fifth argument and keeps attention inside each document itself."""

    def wrap(fn: AttentionFn) -> AttentionFn:
        fn.varlen = varlen
        return register("attention", name)(fn)

    return wrap


def get_attention_backend(name: str) -> AttentionFn:
    try:
        return ATTENTION_BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(ATTENTION_BACKENDS)}") from None


def causal_mask(t: int, s: int, q_offset: int, device) -> torch.Tensor:
    """Boolean [t, s] mask, True where query (at q_offset + i) may attend key j."""
    q_pos = torch.arange(t, device=device)[:, None] + q_offset
    return torch.arange(s, device=device)[None, :] <= q_pos


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


@register_attention_backend("eager")
def eager_attention(q, k, v, q_offset: int = 0):
    """The reference: explicit scores, mask and softmax (in fp32)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = causal_mask(q.shape[2], k.shape[2], q_offset, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


@register_attention_backend("sdpa")
def sdpa_attention(q, k, v, q_offset: int = 0):
    """torch's scaled_dot_product_attention (flash / memory-efficient / math kernels as available)."""
    t, s = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if t == s:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = None if t == 1 else causal_mask(t, s, q_offset, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def masked_attention(q, k, v, mask: torch.Tensor):
    """SDPA with an explicit boolean mask [B, 1, T, S] (True: may attend), e.g. causal within each packed
    document. Used for such batches by every backend that is not registered `varlen`."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


class KVCache:
    """Pre-allocated keys and values for every layer, for incremental decoding."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_len = max_len

    def update(self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor):
        end = pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked for {end}")
        self.k[layer][:, :, pos:end] = k
        self.v[layer][:, :, pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        # QK-norm as in OLMo 2: normalise the whole query and key projections before splitting heads.
        self.q_norm = make_norm(cfg.norm, cfg.d_model) if cfg.norm.qk_norm else None
        self.k_norm = make_norm(cfg.norm, kv_dim) if cfg.norm.qk_norm else None
        self.backend = get_attention_backend(cfg.attention.backend)

    def project(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [B, heads, T, head_dim] of x, QK-normed and rotated."""
        b, t, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, cache: Optional[KVCache] = None, pos: int = 0, docs: Optional[Documents] = None):
        b, t, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, pos, k, v)
        if docs is None:
            y = self.backend(q, k, v, pos)
        elif cache is not None:  # decoding: the new positions against every cached one
            y = masked_attention(q, k, v, docs.query_mask(t))
        elif self.backend.varlen:
            y = self.backend(q, k, v, pos, docs)
        else:
            y = masked_attention(q, k, v, docs.mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
