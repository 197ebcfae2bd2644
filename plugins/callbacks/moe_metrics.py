"""MoE routing metrics, every N steps (nothing for a dense model): per MoE layer, the tokens each expert got
(`moe/layer{i}/tokens_per_expert`, a TensorBoard histogram), the max/min load ratio (1 is perfectly even;
an expert that got no token counts as 1 so the ratio stays finite) and the router entropy; `moe/load_ratio`
is the worst layer's. Counts are summed over ranks. The losses themselves are logged every step by the
module (`train/moe_lb_loss`, `train/moe_router_z_loss`).
"""

from __future__ import annotations

import lightning as L
import torch
from lmstack.plugins.callbacks import log_metrics


class MoEMetrics(L.Callback):
    def __init__(self, every_n_steps: int = 10):
        if every_n_steps < 1:
            raise ValueError(f"moe every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps = every_n_steps
        self.last: dict[str, float] = {}
        self.done_step: int | None = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        layers = [(i, b.mlp) for i, b in enumerate(module.model.blocks) if hasattr(b.mlp, "aux") and b.mlp.aux]
        step = trainer.global_step
        if not layers or step % self.every_n_steps or step == self.done_step:
            return
        self.done_step = step
        counts = torch.stack([m.aux["tokens_per_expert"].float() for _, m in layers])
        entropy = torch.stack([m.aux["entropy"].float() for _, m in layers])
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
            entropy = trainer.strategy.reduce(entropy, reduce_op="mean")
        metrics = {}
        for (i, _), c, h in zip(layers, counts, entropy):
            metrics[f"moe/layer{i}/load_max_min_ratio"] = float(c.max() / c.min().clamp(min=1))
            metrics[f"moe/layer{i}/router_entropy"] = float(h)
        metrics["moe/load_ratio"] = max(v for k, v in metrics.items() if k.endswith("load_max_min_ratio"))
        self.last = metrics
        log_metrics(trainer, metrics)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_histogram"):
                    for (i, _), c in zip(layers, counts):
                        # one sample per expert, weighted by its token count: the histogram of expert ids
                        ids = torch.repeat_interleave(torch.arange(len(c)), c.long().cpu())
                        experiment.add_histogram(
                            f"moe/layer{i}/tokens_per_expert",
                            ids,
                            trainer.global_step,
                            bins=torch.arange(len(c) + 1).float().numpy() - 0.5,
                        )
