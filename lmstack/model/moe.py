"""A dropless Mixture-of-Experts feed-forward layer (OLMoE style): E SwiGLU experts, top-k softmax routing,
an optional shared expert, a load-balancing loss and a router z-loss.

Every token reaches its k experts (no capacity, nothing dropped): the (token, expert) assignments are sorted
by expert and each expert's contiguous run of tokens goes through its weights, either as one grouped
matrix product per projection (`torch._grouped_mm`, where the build has it) or as a loop over experts. The
gate weights are the softmax probabilities of the chosen experts (not renormalised, as in OLMoE; set
`norm_topk` to renormalise them to sum to one).

Auxiliary losses, kept on the layer after each forward (`aux`) for the training loss and the logs:
- load balancing (Switch / OLMoE): E * sum_i f_i * P_i, with f_i the fraction of assignments that went to
  expert i and P_i the mean router probability of expert i; 1.0 when perfectly balanced;
- router z-loss (ST-MoE): mean over tokens of logsumexp(router logits)^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import SwiGLU

GROUPED_MM = hasattr(torch, "_grouped_mm")


def experts_loop(x: torch.Tensor, counts: list[int], w_gate, w_up, w_down) -> torch.Tensor:
    """x [N, D] sorted by expert, counts[e] rows each -> [N, D]: SwiGLU of expert e on its rows."""
    out, start = [], 0
    for e, n in enumerate(counts):
        seg = x[start : start + n]
        out.append((F.silu(seg @ w_gate[e]) * (seg @ w_up[e])) @ w_down[e])
        start += n
    return torch.cat(out) if out else x.new_zeros(0, w_down.shape[-1])


def experts_grouped(x: torch.Tensor, offsets: torch.Tensor, w_gate, w_up, w_down) -> torch.Tensor:
    """The same as `experts_loop`, as three grouped matrix products (offsets: cumulative counts, int32)."""
    gate = torch._grouped_mm(x, w_gate, offs=offsets)
    up = torch._grouped_mm(x, w_up, offs=offsets)
    return torch._grouped_mm((F.silu(gate) * up).contiguous(), w_down, offs=offsets)


class MoE(nn.Module):
    def __init__(
        self,
        d_model: int,
        hidden: int,
        n_experts: int,
        top_k: int,
        shared_expert: bool = False,
        norm_topk: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"moe top_k={top_k} must be between 1 and the number of experts ({n_experts})")
        if impl not in ("auto", "grouped", "loop"):
            raise ValueError(f"moe impl={impl!r}; allowed: auto, grouped, loop")
        if impl == "grouped" and not GROUPED_MM:
            raise ValueError("moe impl=grouped: this torch build has no torch._grouped_mm; use impl=loop")
        self.n_experts, self.top_k, self.norm_topk = n_experts, top_k, norm_topk
        self.impl = impl
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.w_down = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.shared = SwiGLU(d_model, hidden) if shared_expert else None
        self.aux: dict[str, torch.Tensor] = {}

    def uses_grouped(self, x: torch.Tensor) -> bool:
        """`auto`: grouped products where the build has them for this input (CPU, or bf16 on GPU)."""
        if self.impl != "auto":
            return self.impl == "grouped"
        return GROUPED_MM and (x.device.type == "cpu" or x.dtype == torch.bfloat16)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits [N, E] (fp32), chosen experts [N, k] and their gate weights [N, k]."""
        logits = self.router(x).float()
        probs = logits.softmax(-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        return logits, experts, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xf = x.reshape(-1, shape[-1])
        logits, experts, weights = self.route(xf)
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)  # assignments grouped by expert, tokens in order within each
        token = order // self.top_k
        counts = torch.bincount(flat, minlength=self.n_experts)
        xs = xf[token]
        if self.uses_grouped(xs):
            ys = experts_grouped(xs, counts.cumsum(0).to(torch.int32), self.w_gate, self.w_up, self.w_down)
        else:
            ys = experts_loop(xs, counts.tolist(), self.w_gate, self.w_up, self.w_down)
        gate = weights.reshape(-1)[order].to(ys.dtype)
        out = torch.zeros_like(xf).index_add_(0, token, ys * gate[:, None])
        if self.shared is not None:
            out = out + self.shared(xf)
        self.aux = self.aux_losses(logits, counts)
        return out.reshape(shape)

    def aux_losses(self, logits: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = logits.softmax(-1)
        f = counts.float() / counts.sum().clamp(min=1)
        lb = self.n_experts * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        entropy = -(probs * probs.clamp(min=1e-20).log()).sum(-1).mean()
        return {"lb_loss": lb, "z_loss": z, "tokens_per_expert": counts.detach(), "entropy": entropy.detach()}

    def reset_parameters(self, std: float, out_std: float, cutoff: float) -> None:
        for w, s in ((self.w_gate, std), (self.w_up, std), (self.w_down, out_std)):
            nn.init.trunc_normal_(w, mean=0.0, std=s, a=-cutoff * s, b=cutoff * s)


def moe_params(d_model: int, hidden: int, n_experts: int, top_k: int, shared: bool) -> tuple[int, int]:
    """(total, active per token) parameters of one MoE layer, router included."""
    expert = 3 * d_model * hidden
    router = d_model * n_experts
    extra = expert if shared else 0
    return n_experts * expert + router + extra, top_k * expert + router + extra
