"""Preference losses on (chosen, rejected) responses: DPO (`sigmoid`), length-normalised DPO (`dpo_norm`, as
in Tulu 3) and SimPO, with the numbers worth logging.

Inputs are summed log-probabilities of each response's tokens under the policy (`pc`, `pr`) and the frozen
reference (`rc`, `rr`), and the responses' token counts (`nc`, `nr`):
- `sigmoid`:  h = (pc - rc) - (pr - rr);                 loss = -logsigmoid(beta h)
- `dpo_norm`: h = (pc - rc) / nc - (pr - rr) / nr;       the same loss on per-token log-ratios, so long
  responses do not win by length. With nc = nr = n it is `sigmoid` with beta / n (identical at n = 1).
- `simpo`:    h = pc / nc - pr / nr - gamma / beta;      no reference model.
Label smoothing eps (conservative DPO): loss = -(1 - eps) logsigmoid(beta h) - eps logsigmoid(-beta h).
`rpo_alpha` adds alpha x the chosen responses' mean per-token negative log-likelihood (RPO, Pang et al. 2024;
Llama 3's DPO; TRL's `rpo_alpha`): when chosen and rejected answers share most tokens ("87" vs "88"), plain
DPO lowers both likelihoods and greedy answers get worse; the NLL term keeps the chosen ones likely.
`dpop_lambda` (DPO-Positive, Pal et al. 2024) subtracts lambda x max(0, -chosen log-ratio) from h inside the
sigmoid: a chosen answer less likely than under the reference is penalised as the rejected one is rewarded.
Rewards are beta x the (normalised) log-ratios; accuracy is the share of pairs with reward_c > reward_r.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("sigmoid", "dpo_norm", "simpo")


def response_logps(logits: torch.Tensor, labels: torch.Tensor, ignore: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the sum of log p(label) over positions with a label, and how many there are."""
    logp = F.log_softmax(logits.float(), dim=-1)
    keep = labels != ignore
    picked = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * keep
    return picked.sum(-1), keep.sum(-1)


def preference_loss(
    pc,
    pr,
    rc,
    rr,
    nc,
    nr,
    loss: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
    rpo_alpha: float = 0.0,
    dpop_lambda: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """(mean loss over pairs, plus rpo_alpha x the chosen tokens' mean NLL; metrics: rewards, margin,
    accuracy, the chosen NLL)."""
    if loss not in LOSSES:
        raise ValueError(f"preference loss={loss!r}; allowed: {', '.join(LOSSES)}")
    if dpop_lambda and loss == "simpo":
        raise ValueError("dpop_lambda penalises the chosen answer's log-ratio to the reference; simpo has none")
    nc, nr = nc.clamp(min=1).to(pc.dtype), nr.clamp(min=1).to(pc.dtype)
    if loss == "sigmoid":
        chosen, rejected = pc - rc, pr - rr
    elif loss == "dpo_norm":
        chosen, rejected = (pc - rc) / nc, (pr - rr) / nr
    else:
        chosen, rejected = pc / nc, pr / nr
    h = chosen - rejected - (gamma / beta if loss == "simpo" else 0.0)
    if dpop_lambda:
        h = h - dpop_lambda * F.relu(-chosen)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    nll = -pc.sum() / nc.sum()
    total = losses.mean() + rpo_alpha * nll if rpo_alpha else losses.mean()
    rc_, rr_ = (beta * chosen).detach(), (beta * rejected).detach()
    return total, {
        "rewards/chosen": rc_.mean(),
        "rewards/rejected": rr_.mean(),
        "rewards/margin": (rc_ - rr_).mean(),
        "rewards/accuracy": (rc_ > rr_).float().mean(),
        "chosen_nll": nll.detach(),
    }
