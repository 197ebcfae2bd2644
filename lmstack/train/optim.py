"""AdamW with parameter groups chosen by rules on parameter names.

Rules are fnmatch patterns on the parameter's qualified name (`embed.weight`, `blocks.3.attn_norm.weight`).
By default embeddings get no weight decay (OLMo 2); norms and biases are configurable. Each parameter
goes to the first rule that matches it, or to the default (decayed) group.
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from lmstack.model.norms import NORM_CLASSES
from lmstack.registry import register


def _norm_param_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_CLASSES):
            names.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    return names


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_patterns: list[str],
    decay_norms: bool = False,
    decay_biases: bool = False,
    exclude: set[int] = frozenset(),
) -> list[dict]:
    """Split parameters into a decayed and a non-decayed group; both are always returned (maybe empty).
    `exclude`: ids of parameters another algorithm trains (optimizer=muon's hidden matrices)."""
    norms = _norm_param_names(model)
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in exclude:
            continue
        skip = (
            any(fnmatch(name, pat) for pat in no_decay_patterns)
            or (name in norms and not decay_norms)
            or (name.endswith(".bias") and not decay_biases)
        )
        (no_decay if skip else decay).append(p)
        (no_decay_names if skip else decay_names).append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names, "group": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names, "group": "no_decay"},
    ]


def build_adamw(
    model: nn.Module,
    lr: float,
    betas,
    eps: float,
    weight_decay: float,
    no_decay_patterns: list[str],
    decay_norms: bool,
    decay_biases: bool,
    fused: bool | None = None,
    exclude: set[int] = frozenset(),
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, no_decay_patterns, decay_norms, decay_biases, exclude)
    # the AdamW half of a split optimizer (`exclude`: optimizer=muon's) may be empty, e.g. a LoRA model whose
    # trainable parameters are all adapter matrices: one empty group then; plain AdamW with none is refused
    groups = [g for g in groups if g["params"]] or (groups[:1] if exclude else [])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


@register("optimizer", "adamw")
def adamw(model: nn.Module, o, exclude: set[int] = frozenset()) -> torch.optim.AdamW:
    """`optimizer=adamw`: AdamW over the parameter groups of `o` (the optimizer section, OptimizerSection), but
    the parameters in `exclude` (ids: those another algorithm trains, as optimizer=muon's hidden matrices)."""
    return build_adamw(
        model, o.lr, o.betas, o.eps, o.weight_decay, o.no_decay, o.decay_norms, o.decay_biases, o.fused, exclude
    )
