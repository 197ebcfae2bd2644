"""The model's configuration: one flat dataclass, serialisable, shared by every size.

Hydra composes it from three groups (`model`, `attention`, `norm`); the model itself only sees this
dataclass, so it stays importable without Hydra or Lightning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Optional

NormKind = Literal["rmsnorm", "layernorm"]
Placement = Literal["pre", "reordered"]


@dataclass
class ModelConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: MHA (as many key/value heads as query heads)
    vocab_size: int = 512
    max_seq_len: int = 2048
    mlp_hidden: Optional[int] = None  # None: 8/3 * d_model rounded up to mlp_multiple_of
    mlp_multiple_of: int = 256
    rope_theta: float = 10_000.0
    norm: NormKind = "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = False  # LayerNorm only
    placement: Placement = "pre"
    qk_norm: bool = False
    tie_embeddings: bool = False
    attn_backend: str = "sdpa"
    init_std: float = 0.02
    embed_init_std: float = 0.02
    init_cutoff: float = 3.0  # truncate the normal at +-cutoff * std
    depth_scaled_init: bool = False  # output projections get std / sqrt(2 * n_layers)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        problems = []
        if self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            problems.append(f"head_dim={self.d_model // self.n_heads} must be even for RoPE")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden_size(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        raw = 8 * self.d_model / 3
        return int(math.ceil(raw / self.mlp_multiple_of) * self.mlp_multiple_of)

    def to_dict(self) -> dict:
        return asdict(self)

    def non_embedding_params(self) -> int:
        """Parameters outside the token embedding and LM head, computed from the shapes."""
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        attn = d * d * 2 + d * kv * 2
        mlp = 3 * d * self.hidden_size
        norm_size = d * (2 if self.norm_bias and self.norm == "layernorm" else 1)
        norms = 2 * norm_size
        if self.qk_norm:
            norms += (d + kv) * (2 if self.norm_bias and self.norm == "layernorm" else 1)
        return self.n_layers * (attn + mlp + norms) + norm_size
