"""RMSNorm and LayerNorm, both computed in fp32 whatever the activation dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), bias, self.eps).to(x.dtype)


NORM_CLASSES = (RMSNorm, LayerNorm)


def make_norm(cfg, dim: int) -> nn.Module:
    """The norm a `NormConfig` names, over `dim` features."""
    if cfg.kind == "rmsnorm":
        return RMSNorm(dim, cfg.eps)
    if cfg.kind == "layernorm":
        return LayerNorm(dim, cfg.eps, cfg.bias)
    raise ValueError(f"unknown norm {cfg.kind!r}; allowed: rmsnorm, layernorm")
