"""The model's configuration, and the schema of the `model` config group: one nested dataclass.

Hydra composes it from three groups, `model` (the sizes), `attention` and `norm` (mounted at
`model.attention` and `model.norm`); the defaults live here and the YAML files carry only what differs.
The model itself only sees these dataclasses, so it stays importable without Hydra or Lightning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal, Optional

from lmstack.config.validate import field_, to_dataclass


@dataclass
class AttentionConfig:
    # mha: a key/value head per query head; gqa: groups of query heads share one; mqa: one for all
    type: Literal["mha", "gqa", "mqa"] = "mha"
    n_kv_heads: Optional[int] = field_(None, min=1)  # explicit count; null: derived from the type
    heads_per_kv: int = field_(2, min=1)  # gqa: query heads sharing one key/value head
    backend: str = "sdpa"  # a registered attention backend (lmstack.model.attention.ATTENTION_BACKENDS)
    # Attend only within each packed document (split after each end-of-text token, lmstack.model.packed_documents)
    document_mask: bool = False
    document_positions: bool = False  # with document_mask: RoPE positions restart at each document
    document_token: Optional[int] = field_(None, min=0)  # the token ending a document: set from the tokenizer

    @classmethod
    def for_heads(cls, n_heads: int, n_kv_heads: int, backend: str = "sdpa") -> "AttentionConfig":
        """The attention of a model with these head counts (imported and older configs)."""
        if n_kv_heads == n_heads:
            return cls(type="mha", backend=backend)
        if n_kv_heads == 1:
            return cls(type="mqa", backend=backend)
        return cls(type="gqa", n_kv_heads=n_kv_heads, backend=backend)

    def kv_heads(self, n_heads: int) -> int:
        """Key/value heads for `n_heads` query heads: all (mha), one (mqa), or the gqa count."""
        if self.type == "mqa":
            expected = 1
        elif self.type == "mha":
            expected = n_heads
        else:
            expected = self.n_kv_heads or max(1, n_heads // self.heads_per_kv)
        if self.n_kv_heads is not None and self.n_kv_heads != expected:
            raise ValueError(
                f"attention.n_kv_heads={self.n_kv_heads} contradicts attention.type={self.type} "
                f"(which means n_kv_heads={expected}); use attention=gqa to choose the count"
            )
        return expected


@dataclass
class NormConfig:
    kind: Literal["rmsnorm", "layernorm"] = "rmsnorm"  # rmsnorm or layernorm
    eps: float = field_(1e-5, min=0.0)  # added to the variance before the square root
    bias: bool = False  # LayerNorm only
    placement: Literal["pre", "reordered"] = "pre"  # pre: x + f(norm(x)); reordered (OLMo 2): x + norm(f(x))
    qk_norm: bool = False  # normalise queries and keys per head before RoPE (OLMo 2)


@dataclass
class MoEConfig:
    """Mixture of Experts (lmstack/model/moe.py); 0 experts: a dense feed-forward everywhere."""

    experts: int = field_(0, min=0)  # routed experts per MoE layer
    top_k: int = field_(2, min=1)  # experts each token is routed to
    hidden: Optional[int] = field_(None, min=1)  # each expert's hidden size; null: the dense hidden size
    shared_expert: bool = False  # one expert every token also goes through (DeepSeek-MoE)
    norm_topk: bool = False  # renormalise the top-k router weights to sum to 1
    layers: Optional[list[int]] = None  # layer indices with an MoE feed-forward; null: every layer
    impl: Literal["auto", "grouped", "loop"] = "auto"  # grouped: torch._grouped_mm
    lb_coef: float = field_(0.01, min=0.0)  # load-balancing loss weight in the training loss
    z_coef: float = field_(0.001, min=0.0)  # router z-loss weight


@dataclass
class ModelConfig:
    """The defaults are `model=tiny`: it runs in seconds on a CPU (tests and the default main job)."""

    d_model: int = field_(128, min=8)  # the residual stream's width
    n_layers: int = field_(4, min=1)  # transformer blocks
    n_heads: int = field_(4, min=1)  # query heads (d_model / n_heads: the head dimension, even for RoPE)
    vocab_size: Optional[int] = field_(None, min=2)  # null: the tokenizer's, rounded up to a multiple of 64
    max_seq_len: int = field_(1024, min=1)  # the longest sequence (RoPE tables); data.seq_len must not exceed it
    mlp_hidden: Optional[int] = field_(None, min=1)  # null: 8/3 * d_model rounded up to mlp_multiple_of
    mlp_multiple_of: int = field_(64, min=1)  # the MLP hidden size is rounded up to a multiple of this
    rope_theta: float = field_(10_000.0, min=1.0)  # RoPE's base frequency
    tie_embeddings: bool = False  # the output head shares the input embedding's weights
    init_std: float = field_(0.02, min=0.0)  # std of the normal init of every weight matrix
    embed_init_std: float = field_(0.02, min=0.0)  # std of the embedding's normal init
    init_cutoff: float = field_(3.0, min=0.0)  # truncate the normal at +-cutoff * std
    depth_scaled_init: bool = False  # output projections get std / sqrt(2 * n_layers)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.d_model % self.n_heads:
            problems.append(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        kv = self.attention.kv_heads(self.n_heads)
        if self.n_heads % kv:
            problems.append(f"model.n_heads={self.n_heads} is not divisible by attention.n_kv_heads={kv}")
        if self.attention.document_positions and not self.attention.document_mask:
            problems.append("attention.document_positions=true needs attention.document_mask=true")
        if (self.d_model // self.n_heads) % 2:
            problems.append(f"head_dim={self.d_model // self.n_heads} must be even for RoPE")
        if self.moe.experts:
            if not 1 <= self.moe.top_k <= self.moe.experts:
                problems.append(f"moe.top_k={self.moe.top_k} must be between 1 and moe.experts={self.moe.experts}")
            bad = [i for i in (self.moe.layers or []) if not 0 <= i < self.n_layers]
            if bad:
                problems.append(f"moe.layers {bad} are not layers of a {self.n_layers}-layer model")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From a plain dict, nested (`to_dict`) or the flat layout of checkpoints written before the
        nested config (see `upgrade`)."""
        return to_dataclass(cls, upgrade(d), "model")

    @property
    def n_kv_heads(self) -> int:
        return self.attention.kv_heads(self.n_heads)

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
        return self.moe.experts > 0 and (self.moe.layers is None or layer in self.moe.layers)

    @property
    def expert_hidden(self) -> int:
        return self.moe.hidden or self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)

    def with_backend(self, backend: str) -> "ModelConfig":
        """The same model with another attention backend (a run's choice, not a property of the weights)."""
        return replace(self, attention=replace(self.attention, backend=backend))

    def non_embedding_params(self, active: bool = False) -> int:
        """Parameters outside the token embedding and LM head, computed from the shapes; `active`: those
        one token uses (an MoE layer's top-k experts, not all of them)."""
        from .moe import moe_params

        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        attn = d * d * 2 + d * kv * 2
        dense_mlp = 3 * d * self.hidden_size
        n_moe = sum(self.is_moe(i) for i in range(self.n_layers))
        moe_extra = 0
        if n_moe:
            m = self.moe
            total, act = moe_params(d, self.expert_hidden, m.experts, m.top_k, m.shared_expert)
            moe_extra = n_moe * ((act if active else total) - dense_mlp)
        per_norm = 2 if self.norm.bias and self.norm.kind == "layernorm" else 1
        norms = 2 * d * per_norm + ((d + kv) * per_norm if self.norm.qk_norm else 0)
        return self.n_layers * (attn + dense_mlp + norms) + d * per_norm + moe_extra


# The flat layout (checkpoints and run records written before the nested config): old key -> (part, key).
_FLAT = {
    "attn_backend": ("attention", "backend"),
    "norm": ("norm", "kind"),
    "norm_eps": ("norm", "eps"),
    "norm_bias": ("norm", "bias"),
    "placement": ("norm", "placement"),
    "qk_norm": ("norm", "qk_norm"),
    **{f"moe_{f.name}": ("moe", f.name) for f in fields(MoEConfig)},
}


def upgrade(d: dict) -> dict:
    """A model config dict in today's nested layout; a flat one (`norm` a string, `n_kv_heads` a count)
    is rewritten, anything else is returned as it is."""
    if not isinstance(d.get("norm", {}), str) and "n_kv_heads" not in d:
        return d
    out: dict = {"attention": {}, "norm": {}, "moe": {}}
    for k, v in d.items():
        if k in _FLAT:
            part, name = _FLAT[k]
            out[part][name] = v
        elif k == "n_kv_heads":
            heads = d.get("n_heads", ModelConfig.n_heads)
            kv = asdict(AttentionConfig.for_heads(heads, v or heads))
            out["attention"].update({k: kv[k] for k in ("type", "n_kv_heads")})
        else:
            out[k] = v
    return out
