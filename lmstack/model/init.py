"""Weight init as in OLMo: truncated normal (std 0.02, cut at +-3 std), its own std for the embedding,
optionally depth-scaled output projections (std / sqrt(2 * n_layers)); norms start at one."""

from __future__ import annotations

import math

from torch import nn

from .moe import MoE
from .norms import NORM_CLASSES


def _trunc_normal(w, std: float, cutoff: float) -> None:
    nn.init.trunc_normal_(w, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)


def init_weights(model: nn.Module, cfg) -> None:
    out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers) if cfg.depth_scaled_init else cfg.init_std
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            _trunc_normal(module.weight, cfg.embed_init_std, cfg.init_cutoff)
        elif isinstance(module, nn.Linear):
            if name == "lm_head" and cfg.tie_embeddings:
                continue
            # a residual-stream output: attention's o_proj, any SwiGLU's down (dense, or an MoE's shared expert)
            is_output = name.rsplit(".", 1)[-1] in ("o_proj", "down")
            _trunc_normal(module.weight, out_std if is_output else cfg.init_std, cfg.init_cutoff)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, MoE):  # the experts' stacked weights (the router is a Linear, above)
            module.reset_parameters(cfg.init_std, out_std, cfg.init_cutoff)
        elif isinstance(module, NORM_CLASSES):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
