"""A training stage as a component. A stage registers one class (`@register("stage", NAME)`) whose `section` is
its typed config under `stage:`; the run (`lmstack.run`) drives every stage the same way:

    trainer = stage.trainer()                         # the Trainer, its callbacks, strategy and logger
    module, data = stage.build(trainer)               # its data, its objective inside the training module
    before = stage.before(trainer, module, data)      # its evaluation before training
    trainer, module, data = stage.fit(trainer, module, data)
    result = stage.finish(trainer, module, data, before, owned)   # its evaluation after, its record

Pretraining, mid-training (anneal), SFT, DPO and GRPO are such classes (`lmstack.stages.*`); a user's own is a
file of theirs that registers one, loaded with `imports=[module]`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Optional

from lmstack.config.schema import RunSpec
from lmstack.config.stage import StageSection

from .trainer import build_trainer


class Stage(ABC):
    section: ClassVar[type] = StageSection  # the dataclass of its `stage:` section
    starts_from_checkpoint: ClassVar[bool] = True  # needs init_from=CKPT (checked by `validate`)
    pretraining_plugins: ClassVar[bool] = False  # keeps the step plugins marked `pretraining_only`

    def __init__(self, spec: RunSpec, config: dict):
        self.spec, self.config, self.options = spec, config, spec.stage  # options: its own `section`

    @property
    def resume_from(self) -> Optional[str]:
        """The checkpoint this run resumes (ckpt_path resolved), or None for a fresh start."""
        return None

    def trainer(self):
        return build_trainer(self.spec, pretraining_plugins=self.pretraining_plugins)

    @abstractmethod
    def build(self, trainer) -> tuple:
        """(the training module, the data module) for this trainer."""

    def before(self, trainer, module, data) -> dict:
        """What is measured before training (reported with the result)."""
        return {}

    def fit(self, trainer, module, data) -> tuple:
        """(trainer, module, data module) as training left them (a stage may fit more than once)."""
        trainer.fit(module, datamodule=data)
        return trainer, module, data

    @abstractmethod
    def finish(self, trainer, module, data, before: dict, owned) -> dict:
        """Measure, record, report; returns the run's result (what a sweep reads)."""
