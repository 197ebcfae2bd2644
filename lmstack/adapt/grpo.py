"""GRPO's arithmetic: group-centred advantages, the clipped policy-ratio objective and the k3 KL estimate.

- advantages: each prompt's G rewards minus their mean (optionally divided by their std + eps); a group whose
  rewards are all equal carries no signal and is filtered out (`keep` is False for it);
- objective per response token: min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), with
  ratio = exp(logp_new - logp_old); the loss is its negative mean over response tokens;
- KL to the reference (k3, Schulman): exp(ref - new) - (ref - new) - 1 per token, >= 0, added with `beta`;
  beta = 0 needs no reference model at all.
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, scale: bool = False, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards [P, G] -> (advantages [P, G], keep [P]: groups whose rewards are not all equal)."""
    mean = rewards.mean(-1, keepdim=True)
    adv = rewards - mean
    if scale:
        adv = adv / (rewards.std(-1, keepdim=True, unbiased=False) + eps)
    keep = (rewards.max(-1).values - rewards.min(-1).values) > 0
    return adv, keep


def k3(logp_new: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    d = logp_ref - logp_new
    return torch.exp(d) - d - 1


def grpo_loss(
    logp_new, logp_old, adv, mask, clip_low: float = 0.2, clip_high: float = 0.2, beta: float = 0.0, logp_ref=None
) -> tuple[torch.Tensor, dict]:
    """logp_* [N, T] per-token log-probs of the sampled responses, adv [N], mask [N, T] (response tokens).
    Returns (loss, metrics: kl, clip fraction)."""
    if beta > 0 and logp_ref is None:
        raise ValueError("grpo beta > 0 needs the reference log-probs")
    mask = mask.to(logp_new.dtype)
    ratio = torch.exp(logp_new - logp_old)
    a = adv[:, None].to(logp_new.dtype)
    objective = torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a)
    per_token = -objective
    kl = torch.zeros((), dtype=logp_new.dtype)
    if beta > 0:
        kl_tok = k3(logp_new, logp_ref)
        per_token = per_token + beta * kl_tok
        kl = (kl_tok * mask).sum() / mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    clipped = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).to(mask.dtype)
    return loss, {"kl": kl.detach(), "clip_fraction": (clipped * mask).sum() / mask.sum().clamp(min=1)}
