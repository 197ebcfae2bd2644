"""LoRA for the adaptation stages (`stage.lora={rank, alpha, dropout, targets}`), through PEFT.

The starting model's weights are frozen and PEFT injects low-rank adapters into the named projections in
place (`inject_adapter_in_model`: the model stays lmstack's `Transformer`, so sharding, generation and evals see
the same module tree with adapters inside). Chat tokens that the stage adds to the tokenizer have no trained
embedding in a pretrained base, so their rows of the embedding and the output head train too (PEFT's
trainable tokens), and nothing else of them. Only what trains goes to the optimizer and into the stage's
checkpoints, with the base checkpoint's path and digest; reading such a checkpoint (`load_checkpoint`) loads
the base, refuses it if its digest differs, and merges the adapters with PEFT's own merge, so export, evals
and generation get a plain model. A reference model (DPO's live reference, GRPO's KL) is the policy with its
adapters switched off: no second copy of the weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch

from lmstack.config.validate import field_

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down"]  # attention and MLP projections


@dataclass
class LoraSection:
    rank: int = field_(16, min=1)  # the adapters' rank r
    alpha: float = field_(32.0, min=0.0)  # the update is scaled by alpha / rank
    dropout: float = field_(0.0, min=0.0, max=1.0)  # dropout on the adapters' input
    targets: list[str] = field(default_factory=lambda: list(TARGETS))  # the linear layers adapted, by name


def peft():
    try:
        import peft
    except ImportError:
        raise ImportError("stage.lora needs PEFT: pip install 'lmstack[lora]'") from None
    return peft


def apply_lora(model: torch.nn.Module, lora: LoraSection, new_tokens: list[int]) -> None:
    """Freeze `model` and inject the adapters (and the new tokens' trainable rows) in place."""
    from lmstack.config.schema import ConfigError

    p = peft()
    if new_tokens and model.cfg.tie_embeddings:
        raise ConfigError("stage.lora with model.tie_embeddings: the new chat tokens' rows cannot be trained "
                          "apart from the tied head; start from a checkpoint that has the chat tokens")  # fmt: skip
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    unknown = sorted(set(lora.targets) - names)
    if unknown or not lora.targets:
        raise ConfigError(f"stage.lora.targets={list(lora.targets)}: {unknown or 'none'} names no linear layer of "
                          f"the model; its linear layers are {sorted(names)}")  # fmt: skip
    for param in model.parameters():
        param.requires_grad_(False)
    tokens = {"embed": list(new_tokens), "lm_head": list(new_tokens)} if new_tokens else None
    config = p.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.targets), trainable_token_indices=tokens)  # fmt: skip
    p.inject_adapter_in_model(config, model)


def _outer_adapters(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, attribute, module) of each PEFT layer or wrapper that is not inside another one."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    found, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            parent_name, _, attr = name.rpartition(".")
            found.append((model.get_submodule(parent_name), attr, module))
            inside.append(name)
    return found


def merge_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """The adapters added into the weights they adapt (PEFT's merge) and the plain layers put back."""
    for parent, attr, module in _outer_adapters(model):
        if hasattr(module, "unload_and_optionally_merge_module"):
            plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            module.merge()
            plain = module.get_base_layer()
        setattr(parent, attr, plain)
    if hasattr(model, "peft_config"):  # what PEFT's own unload removes: the model holds no adapter now
        del model.peft_config
    return model


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module):
    """The base model's forward: every adapter switched off for the duration."""
    layers = [module for _, _, module in _outer_adapters(model)]
    for module in layers:
        module.enable_adapters(False)
    try:
        yield model
    finally:
        for module in layers:
            module.enable_adapters(True)


class AdaptersOff:
    """The reference model of a LoRA stage: the policy (`policy`, bound once the training module exists)
    called with its adapters off, under no_grad by the objectives that call it."""

    def __init__(self):
        self.policy: torch.nn.Module | None = None

    def to(self, device) -> "AdaptersOff":
        return self

    def __call__(self, *args, **kwargs):
        with adapters_off(self.policy):
            return self.policy(*args, **kwargs)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters that train, all parameters) of a model (a DTensor counts its whole size)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_keys(model: torch.nn.Module, prefix: str = "") -> set[str]:
    """State-dict keys of the parameters that train (what a LoRA stage's checkpoint holds)."""
    return {prefix + n for n, p in model.named_parameters() if p.requires_grad}


def lora_record(base_record: dict, lora: LoraSection, new_tokens: list[int]) -> dict:
    """What a LoRA stage's checkpoints carry to be read back: the base (`checkpoint.base_record`: path,
    digest), the adapters' options and the tokens whose rows train."""
    return {**base_record, "config": asdict(lora), "new_tokens": list(new_tokens)}


def adapted_model(base: torch.nn.Module, record: dict, state: dict, vocab_size: int) -> torch.nn.Module:
    """The base model (read and checked by `load_checkpoint`) with a LoRA checkpoint's trained `state`
    loaded into its adapters and merged: a plain Transformer."""
    from lmstack.tasks.chat_template import resize_vocab

    resize_vocab(base, vocab_size)
    apply_lora(base, LoraSection(**record["config"]), record["new_tokens"])
    missing = trainable_keys(base) - set(state)
    unexpected = set(state) - set(base.state_dict())
    if missing or unexpected:
        raise ValueError(f"its adapters do not fit its base (missing {sorted(missing)[:3]}, unexpected "
                         f"{sorted(unexpected)[:3]})")  # fmt: skip
    base.load_state_dict(state, strict=False)
    return merge_adapters(base)
