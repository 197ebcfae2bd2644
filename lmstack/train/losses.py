"""Cross-entropy in fp32 with an optional z-loss (PaLM / OLMo: coef * logsumexp(logits)^2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss_coef: float = 0.0, per_token: bool = False):
    """Mean cross-entropy and z-loss over the tokens whose target is not IGNORE_INDEX.

    Both come from one logsumexp (ce = lse - logit[target]), which saves a full softmax pass over the
    vocabulary compared with cross_entropy plus a separate logsumexp. Returns (ce, z_loss); z_loss is
    zero when the coefficient is 0. Both are 0 (not NaN) when no token is trainable. With `per_token`,
    also the detached per-token cross-entropy shaped like targets (0 where ignored), for forensics.
    """
    shape = targets.shape
    logits = logits.float().reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    mask = targets != IGNORE_INDEX
    n = mask.sum().clamp(min=1)
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    tokens = (lse - target_logit) * mask
    ce = tokens.sum() / n
    if z_loss_coef:
        z = z_loss_coef * (lse.pow(2) * mask).sum() / n
    else:
        z = torch.zeros((), device=logits.device)
    if per_token:
        return ce, z, tokens.detach().view(shape)
    return ce, z


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in nats, fp32, shaped like targets (0 where ignored)."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(targets)
