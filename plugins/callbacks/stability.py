"""Stability metrics, every N steps: the numbers that show a run drifting toward divergence early.

- `stability/block{i}/resid_rms`: RMS of block i's output (the residual stream); growth with depth or
  time is what reordered norm and careful init keep in check.
- `stability/block{i}/attn_max_logit`: the largest pre-softmax attention logit (first sequence of the
  batch, recomputed by a forward hook on the block's attention from its input); its growth is what QK-norm
  prevents.
- `stability/grad_norm/{group}`: gradient norm of each optimizer parameter group, before clipping.
- `stability/embed_norm`: norm of the embedding matrix.
- `stability/update_ratio` (and `/{group}`): ||W_after - W_before|| / ||W_before|| of the step.

Norms of sharded (FSDP) parameters are summed over ranks. The update ratio keeps a copy of the
weights for the logged step only.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lmstack.plugins.callbacks import log_metrics


def max_attention_logit(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Largest pre-softmax attention logit (causal positions) of the first sequence of `x` in attention
    module `attn`, one head at a time so the [T, T] scores stay small."""
    with torch.no_grad():
        q, k, _ = attn.project(x[:1], cos, sin)
        group = attn.n_heads // attn.n_kv_heads
        t = q.shape[2]
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        best = torch.tensor(float("-inf"), device=q.device)
        for h in range(attn.n_heads):
            scores = (q[0, h].float() @ k[0, h // group].float().T) / math.sqrt(attn.head_dim)
            best = torch.maximum(best, scores.masked_fill(~causal, float("-inf")).max())
    return best


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares of this rank's part of a tensor (a DTensor's local shard)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.detach().float().pow(2).sum()


class StabilityMetrics(L.Callback):
    def __init__(self, every_n_steps: int = 50):
        if every_n_steps < 1:
            raise ValueError(f"stability every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps = every_n_steps
        self.hooks: list = []
        self.step: int | None = None  # the global step being measured

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.step is not None or trainer.global_step % self.every_n_steps:
            return
        self.step, self.resid, self.max_logit = trainer.global_step, {}, {}
        for i, block in enumerate(module.model.blocks):
            self.hooks.append(
                block.register_forward_hook(
                    lambda m, inp, out, i=i: self.resid.__setitem__(i, out.detach().float().pow(2).mean().sqrt())
                )
            )
            self.hooks.append(  # attention's input: (x, cos, sin, ...)
                block.attn.register_forward_hook(
                    lambda m, inp, out, i=i: self.max_logit.__setitem__(i, max_attention_logit(m, *inp[:3]))
                )
            )

    def _sharded(self, module) -> bool:
        return any(hasattr(p, "to_local") for p in module.parameters())

    def _norms(self, trainer, module, values: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """name -> sqrt(sum of squares), reduced over ranks for sharded parameters."""
        names = list(values)
        sums = torch.stack(
            [torch.stack(v).sum() if v else torch.zeros((), device=module.device) for v in values.values()]
        )
        if trainer.world_size > 1 and self._sharded(module):
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        return {n: math.sqrt(max(s, 0.0)) for n, s in zip(names, sums.tolist())}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.step is None:
            return
        groups = {g.get("group", str(i)): g["params"] for i, g in enumerate(optimizer.param_groups)}
        self.grad_norms = self._norms(
            trainer,
            module,
            {name: [_sq(p.grad) for p in params if p.grad is not None] for name, params in groups.items()},
        )
        self.groups = groups
        self.before = {name: [p.detach().clone() for p in params] for name, params in groups.items()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.step is None or trainer.global_step == self.step:  # not measured yet, or accumulating
            return
        for h in self.hooks:
            h.remove()
        self.hooks = []
        logs = {}
        for i in range(len(module.model.blocks)):
            if i in self.max_logit:
                logs[f"stability/block{i}/attn_max_logit"] = float(self.max_logit[i])
            if i in self.resid:
                logs[f"stability/block{i}/resid_rms"] = float(self.resid[i])
        for name, norm in getattr(self, "grad_norms", {}).items():
            logs[f"stability/grad_norm/{name}"] = norm
        if hasattr(self, "before"):
            diff = {n: [_sq(p - b) for p, b in zip(self.groups[n], self.before[n])] for n in self.groups}
            base = {n: [_sq(b) for b in self.before[n]] for n in self.groups}
            d, w = self._norms(trainer, module, diff), self._norms(trainer, module, base)
            for n in self.groups:
                if w[n] > 0:
                    logs[f"stability/update_ratio/{n}"] = d[n] / w[n]
            total_w = math.sqrt(sum(v * v for v in w.values()))
            logs["stability/update_ratio"] = math.sqrt(sum(v * v for v in d.values())) / max(total_w, 1e-30)
            del self.before
        embed = next(module.model.embed.parameters())  # the parameter itself (a LoRA wrapper computes `.weight`)
        logs["stability/embed_norm"] = self._norms(trainer, module, {"e": [_sq(embed)]})["e"]
        log_metrics(trainer, logs)
        self.step = None
