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
    # Mixture of Experts (lmstack/model/moe.py): 0 experts = dense feed-forward everywhere
    moe_experts: int = 0
    moe_top_k: int = 2
    moe_hidden: Optional[int] = None  # each expert's hidden size; None: hidden_size
    moe_shared_expert: bool = False
    moe_norm_topk: bool = False
    moe_layers: Optional[list] = None  # layer indices with an MoE feed-forward; None: every layer
    moe_impl: str = "auto"  # grouped (torch._grouped_mm) | loop | auto
    moe_lb_coef: float = 0.01  # load-balancing loss weight in the training loss
    moe_z_coef: float = 0.001  # router z-loss weight

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
        if self.moe_experts:
            if not 1 <= self.moe_top_k <= self.moe_experts:
                problems.append(f"moe_top_k={self.moe_top_k} must be between 1 and moe_experts={self.moe_experts}")
            bad = [i for i in (self.moe_layers or []) if not 0 <= i < self.n_layers]
            if bad:
                problems.append(f"moe_layers {bad} are not layers of a {self.n_layers}-layer model")
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

    def is_moe(self, layer: int) -> bool:
        return self.moe_experts > 0 and (self.moe_layers is None or layer in self.moe_layers)

    @property
    def expert_hidden(self) -> int:
        return self.moe_hidden or self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)

    def non_embedding_params(self, active: bool = False) -> int:
        """Parameters outside the token embedding and LM head, computed from the shapes; `active`: those
        one token uses (an MoE layer's top-k experts, not all of them)."""
        from .moe import moe_params

        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        attn = d * d * 2 + d * kv * 2
        dense_mlp = 3 * d * self.hidden_size
        n_moe = sum(self.is_moe(i) for i in range(self.n_layers))
        if n_moe:
            total, act = moe_params(d, self.expert_hidden, self.moe_experts, self.moe_top_k, self.moe_shared_expert)
            moe_extra = n_moe * ((act if active else total) - dense_mlp)
        else:
            moe_extra = 0
        mlp = dense_mlp
        norm_size = d * (2 if self.norm_bias and self.norm == "layernorm" else 1)
        norms = 2 * norm_size
        if self.qk_norm:
            norms += (d + kv) * (2 if self.norm_bias and self.norm == "layernorm" else 1)
        return self.n_layers * (attn + mlp + norms) + norm_size + moe_extra
