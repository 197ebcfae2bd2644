"""The training stages, each a registered component (`lmstack.registry`, kind `stage`) with its typed section
under `stage:`: pretrain (the default), anneal, sft, dpo, rlvr. `base.Stage` says how the run drives them."""

from . import anneal, dpo, pretrain, rlvr, sft  # noqa: F401  registers the built-in stages
from .base import Stage

__all__ = ["Stage"]
