"""`stage=anneal`: mid-training from a pretraining checkpoint, as OLMo 2's stage 2. The run keeps the
checkpoint's weights and its AdamW state (moments and step counts: allenai/OLMo#758), starts the learning
rate at the value the checkpoint would have used for its next step and decays it linearly to zero over this
run's `train.max_tokens`, on the `data_mix` given (usually a small high-quality mix). A sweep over anneal
mixes or seeds is an ordinary `-m` sweep; `lmstack soup` averages the anneals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from lmstack.config import ConfigError
from lmstack.config.stage import StageSection
from lmstack.registry import register

from .pretrain import Pretrain


@dataclass
class AnnealSection(StageSection):
    """No options of its own: the schedule is derived from the checkpoint (the `schedule` group does not apply)."""


def start_lrs(path: str) -> dict[str, float]:
    """The learning rates the checkpoint's optimizer holds for its next step, by algorithm (`adamw`, and
    `muon` for optimizer=muon's hidden matrices), refusing checkpoints whose optimizer state an anneal cannot
    take over."""
    from lmstack.checkpoint import read_metadata

    if Path(path).is_dir():
        raise ConfigError(
            f"init_from={path}: stage=anneal takes over the optimizer state of a single-file checkpoint "
            "(strategy=auto or ddp); a sharded FSDP checkpoint's optimizer state is not supported yet"
        )
    states = read_metadata(path).get("optimizer_states") or []
    groups = states[0].get("param_groups") if states and isinstance(states[0], dict) else None
    if not groups:
        raise ConfigError(
            f"init_from={path} holds no optimizer state (a soup or an imported model holds weights only); "
            "stage=anneal keeps the optimizer: start it from a training checkpoint, or train from these "
            "weights with init_from= and a schedule of your own"
        )
    lrs = {}
    for g in groups:
        lrs.setdefault(g.get("algorithm", "adamw"), float(g["lr"]))
    return lrs


def anneal_spec(spec):
    """The run's spec for an anneal: the optimizer's learning rates at the checkpoint's current values and a
    schedule from them linearly to zero over the run's budget, without warmup; the optimizer must be the
    checkpoint's (its state is taken over)."""
    lrs = start_lrs(spec.init_from)
    trained = "muon" if "muon" in lrs else "adamw"
    if (spec.optimizer.name == "muon") != (trained == "muon"):
        raise ConfigError(
            f"init_from={spec.init_from} was trained with optimizer={trained}, this run has "
            f"optimizer={spec.optimizer.name}; stage=anneal takes over the optimizer state: set optimizer={trained}"
        )
    muon = replace(spec.optimizer.muon, lr=lrs["muon"]) if "muon" in lrs else spec.optimizer.muon
    optimizer = replace(spec.optimizer, lr=lrs.get("adamw", lrs.get("muon")), muon=muon)
    schedule = replace(spec.schedule, name="wsd", warmup_tokens=0.0, decay_tokens=1.0, min_lr=0.0)
    return replace(spec, optimizer=optimizer, schedule=schedule)


@register("stage", "anneal")
class Anneal(Pretrain):
    section = AnnealSection
    starts_from_checkpoint = True
    anneal = True

    def __init__(self, spec, config: dict):
        super().__init__(anneal_spec(spec), config)
