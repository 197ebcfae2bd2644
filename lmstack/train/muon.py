"""`optimizer=muon`: Muon for the hidden matrices, AdamW for everything else, as one torch optimizer.

Muon (Jordan et al. 2024; Moonlight, Liu et al. 2025) replaces each hidden matrix's momentum update by its
nearest semi-orthogonal matrix (a Newton-Schulz iteration), so every direction of the update moves at the
same rate. Which parameters: the matrices inside the transformer blocks (attention q/k/v/o, the MLP's
gate/up/down, each MoE expert's matrices); the embeddings, the output head, norms, biases and MoE routers stay
with AdamW (its decay / no-decay groups as `optimizer=adamw` makes them: embeddings undecayed).
With `muon.adjust_lr=match_rms_adamw` (Moonlight) the update is scaled to AdamW's typical RMS (0.2 sqrt(max(A, B))),
so AdamW's learning rate and weight decay carry over.

The update is torch.optim.Muon's (momentum as an exponential average, Nesterov, its quintic coefficients and
learning-rate adjustments, decoupled weight decay; a test holds it equal to torch's step). torch's Muon is
not called directly because it takes 2-D plain tensors only: here an MoE layer's experts are one 3-D parameter
(orthogonalised expert by expert) and under FSDP2 a parameter is a DTensor holding a shard of rows, while the
orthogonalisation needs the whole matrix, so each rank gathers the update, orthogonalises it and keeps its own
rows (every rank does every matrix: simple, and exact; sharding that work by parameter would save compute).
torch's Newton-Schulz runs in bfloat16 always; on CPU bfloat16 matmuls are far slower than float32, so
`muon.ns_dtype=auto` uses float32 there and bfloat16 on a GPU.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmstack.registry import register

from .optim import adamw

COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, as torch.optim.Muon
EPS = 1e-7


def newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The semi-orthogonal factor of g (2-D, or a batch of matrices), approximately: torch's iteration."""
    a, b, c = COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=EPS)
    for _ in range(steps):
        gram = x @ x.mT
        if x.ndim == 2:
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        else:
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr: float, rule: str, shape) -> float:
    """torch.optim.Muon's learning-rate adjustments, on a matrix of `shape` (out, in)."""
    fan_out, fan_in = shape[-2:]
    ratio = {
        "original": math.sqrt(max(1.0, fan_out / fan_in)),
        "match_rms_adamw": 0.2 * math.sqrt(max(fan_out, fan_in)),
        "spectral_unclamped": math.sqrt(fan_out / fan_in),
    }[rule]
    return lr * ratio


def orthogonalised(update: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz on the whole matrix of `update` (gathered when it is an FSDP2 shard), returned as the
    update is laid out (this rank's rows of it)."""
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(update, DTensor):
        return newton_schulz(update, steps, dtype)
    full = newton_schulz(update.full_tensor(), steps, dtype)
    mesh = update.device_mesh
    whole = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return whole.redistribute(mesh, update.placements)


def hidden_matrices(model: nn.Module) -> set[int]:
    """ids of the parameters Muon trains: every matrix inside a transformer block but an MoE router's."""
    from lmstack.model.moe import MoE
    from lmstack.model.transformer import Block

    ids = set()
    for block in (m for m in model.modules() if isinstance(m, Block)):
        routers = {id(p) for m in block.modules() if isinstance(m, MoE) for p in m.router.parameters()}
        ids |= {id(p) for p in block.parameters() if p.ndim >= 2 and p.requires_grad and id(p) not in routers}
    return ids


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer (one state dict, one schedule, one checkpoint entry) whose groups say their `algorithm`:
    `muon` groups are stepped here, `adamw` groups by the torch AdamW given, on those groups and this state."""

    def __init__(self, muon_group: dict, adamw: torch.optim.AdamW):
        muon_group["algorithm"] = "muon"
        for g in adamw.param_groups:
            g["algorithm"] = "adamw"
        self._adamw = adamw
        super().__init__([muon_group, *adamw.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["algorithm"] == "muon":
                self._muon_step(group)
        # AdamW steps its groups as they are now (a loaded state dict replaces the group dicts and the state)
        self._adamw.param_groups = [g for g in self.param_groups if g["algorithm"] == "adamw"]
        self._adamw.state = self.state
        self._adamw.step()
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        dtype = getattr(torch, group["ns_dtype"])
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            update = orthogonalised(update, group["ns_steps"], dtype)
            p.mul_(1 - lr * wd)
            p.add_(update.to(p.dtype), alpha=-adjusted_lr(lr, group["adjust_lr"], p.shape))


def ns_dtype(name: str, model: nn.Module) -> str:
    """`auto`: bfloat16 where the model is on a GPU, float32 on CPU (bfloat16 matmuls are slow there)."""
    if name != "auto":
        return name
    on_gpu = any(p.device.type == "cuda" for p in model.parameters())
    return "bfloat16" if on_gpu else "float32"


@register("optimizer", "muon")
def muon(model: nn.Module, o) -> MuonAdamW:
    """`optimizer=muon`: the hidden matrices with Muon at `optimizer.muon.lr` (null: optimizer.lr), decayed by
    optimizer.weight_decay; the rest in `optimizer=adamw`'s decay / no-decay groups (OptimizerSection `o`)."""
    hidden = hidden_matrices(model)
    named = [(n, p) for n, p in model.named_parameters() if id(p) in hidden]
    m = o.muon
    group = {
        "params": [p for _, p in named],
        "names": [n for n, _ in named],
        "group": "muon",
        "lr": m.lr if m.lr is not None else o.lr,
        "weight_decay": o.weight_decay,
        "momentum": m.momentum,
        "nesterov": m.nesterov,
        "ns_steps": m.ns_steps,
        "adjust_lr": m.adjust_lr,
        "ns_dtype": ns_dtype(m.ns_dtype, model),
    }
    return MuonAdamW(group, adamw(model, o, exclude=hidden))
