"""A decoder-only transformer: embedding, N blocks, final norm, LM head. One code path for every size."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import CausalSelfAttention, KVCache
from .config import ModelConfig
from .init import init_weights
from .mlp import SwiGLU
from .moe import MoE
from .norms import make_norm
from .packed_documents import Documents
from .rope import rope_cache


class Block(nn.Module):
    """`pre`: x + f(norm(x)).  `reordered` (OLMo 2): x + norm(f(x))."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.reordered = cfg.norm.placement == "reordered"
        self.attn = CausalSelfAttention(cfg, layer_idx)
        if cfg.is_moe(layer_idx):
            m = cfg.moe
            self.mlp = MoE(cfg.d_model, cfg.expert_hidden, m.experts, m.top_k, m.shared_expert, m.norm_topk, m.impl)
        else:
            self.mlp = SwiGLU(cfg.d_model, cfg.hidden_size)
        self.attn_norm = make_norm(cfg.norm, cfg.d_model)
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model)

    def forward(self, x, cos, sin, cache: Optional[KVCache] = None, pos: int = 0, docs: Optional[Documents] = None):
        if self.reordered:
            x = x + self.attn_norm(self.attn(x, cos, sin, cache, pos, docs))
            return x + self.mlp_norm(self.mlp(x))
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, pos, docs)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is null: set it, or let the run take the tokenizer's")
        if cfg.attention.document_mask and cfg.attention.document_token is None:
            raise ValueError("attention.document_mask=true needs attention.document_token (the end-of-text id)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise weights and rebuild the RoPE tables (also after `to_empty` from the meta device)."""
        self._build_rope(self.embed.weight.device)
        init_weights(self, self.cfg)

    def _build_rope(self, device) -> None:
        self.rope_cos, self.rope_sin = rope_cache(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta, device)

    def forward(
        self, idx: torch.Tensor, cache: Optional[KVCache] = None, pos: int = 0, docs: Optional[Documents] = None
    ) -> torch.Tensor:
        """idx [B, T] token ids at positions pos..pos+T-1 -> logits [B, T, vocab].

        `docs` (the packed documents of each row, e.g. SFT's conversations) keeps attention inside each
        document; with a KV cache it covers every position so far (batched generation's left padding).
        Without it, a model with `attention.document_mask` splits full rows (no KV cache) after each
        end-of-text token itself, so training, validation and evaluation all see the same attention; KV-cache
        decoding treats its sequence as one document."""
        t = idx.shape[1]
        if pos + t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {pos + t} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        attn = self.cfg.attention
        if docs is None and attn.document_mask and cache is None:
            docs = Documents.from_tokens(idx, attn.document_token)
        if docs is not None and cache is not None and docs.ids.shape[1] != pos + t:
            raise ValueError(
                f"with a KV cache, docs must cover every position so far ({pos + t}), not {docs.ids.shape[1]}"
            )
        if self.rope_cos.device != idx.device:
            self._build_rope(idx.device)
        if docs is not None and cache is None and attn.document_positions:  # RoPE restarts at each document
            cos, sin = self.rope_cos[docs.positions][:, None], self.rope_sin[docs.positions][:, None]
        else:
            cos, sin = self.rope_cos[pos : pos + t], self.rope_sin[pos : pos + t]
        x = self.embed(idx)
        for block in self.blocks:  # activation checkpointing, sharding, compile: lmstack.train.parallelize
            x = block(x, cos, sin, cache, pos, docs)
        return self.lm_head(self.norm(x))

    def moe_layers(self) -> list[MoE]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]

    def moe_aux_loss(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The last forward's load-balancing and router z-losses, averaged over MoE layers (None: dense)."""
        layers = self.moe_layers()
        if not layers:
            return None
        lb = torch.stack([m.aux["lb_loss"] for m in layers]).mean()
        z = torch.stack([m.aux["z_loss"] for m in layers]).mean()
        return lb, z

    def new_cache(self, batch: int, max_len: Optional[int] = None) -> KVCache:
        p = next(self.parameters())  # the device and dtype (not through `.weight`: a LoRA wrapper computes it)
        return KVCache(
            self.cfg.n_layers,
            batch,
            self.cfg.n_kv_heads,
            max_len or self.cfg.max_seq_len,
            self.cfg.head_dim,
            p.device,
            p.dtype,
        )

    def num_params(self, non_embedding: bool = True) -> int:
        skip = ("embed.", "lm_head.") if non_embedding else ()  # a tied head is embed's (counted once)
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith(skip))
