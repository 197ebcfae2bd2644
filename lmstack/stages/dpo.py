"""`stage=dpo`: preference tuning from init_from (an SFT checkpoint): chosen = the verified reference answer,
rejected = a wrong answer sampled from the starting model (or a corrupted one), or the pairs of a preference
dataset (stage.data); the DPO family of losses against the frozen starting model (`lmstack.adapt.dpo`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from lmstack.adapt.data import PairsDataModule
from lmstack.adapt.dpo import DPOObjective
from lmstack.adapt.examples import dpo_data
from lmstack.config.schema import ConfigError
from lmstack.config.validate import field_
from lmstack.registry import register

from .adapt import AdaptSection, AdaptStage


@dataclass
class DPOSection(AdaptSection):
    data: Optional[str] = None  # a .jsonl(.gz) or .parquet of preference rows instead of the tasks
    # sigmoid (DPO), dpo_norm (length-normalised, Tulu 3) or simpo (no reference)
    loss: Literal["sigmoid", "dpo_norm", "simpo"] = "dpo_norm"
    beta: float = field_(0.1, min=0.0)  # the preference loss's inverse temperature
    label_smoothing: float = field_(0.0, min=0.0, max=0.5)  # conservative DPO's epsilon
    rpo_alpha: float = field_(0.0, min=0.0)  # + alpha x the chosen answers' NLL (RPO)
    dpop_lambda: float = field_(0.0, min=0.0)  # DPO-Positive: - lambda x max(0, -chosen log-ratio) inside the loss
    gamma: float = field_(0.5, min=0.0)  # simpo's margin (gamma / beta)
    reference: Literal["cached", "live"] = "cached"  # reference log-probs computed once, or a frozen copy
    rejected_samples: int = field_(4, min=0)  # sampled answers tried per prompt for a wrong one (0: corrupt)


@register("stage", "dpo")
class DPO(AdaptStage):
    section = DPOSection

    def examples(self, tok):
        o = self.options
        if not o.data:
            return super().examples(tok)
        from lmstack.adapt.chat_data import ChatTask, preference_examples

        try:
            train, test = preference_examples(o.data, o.test_fraction)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"stage.data: {e}") from None
        return train, test[: o.test_examples], {ChatTask.name: ChatTask(train)}

    def training_data(self, model, tok):
        o, seq_len = self.options, self.spec.data.seq_len
        train_data, val_data, extra = dpo_data(
            o, model, tok, self.train, self.test, self.tasks, o.system, seq_len, self.spec.seed
        )
        sampled = extra["rejected_from_model"]
        what = f"{len(train_data)} preference pairs ({sampled} rejected answers sampled from the model)"
        return train_data, val_data, len(train_data), what, extra

    def objective(self, model, tok):
        o = self.options
        live = o.reference == "live" and o.loss != "simpo"
        return DPOObjective(
            loss=o.loss,
            beta=o.beta,
            label_smoothing=o.label_smoothing,
            gamma=o.gamma,
            reference=o.reference,
            rpo_alpha=o.rpo_alpha,
            dpop_lambda=o.dpop_lambda,
            reference_model=self.reference(model) if live else None,
        )

    def datamodule(self, train_data, val_data):
        spec = self.spec
        return PairsDataModule(train_data, val_data, spec.data.batch_size, spec.seed, spec.data.seq_len)

    def fit(self, trainer, module, data):
        trainer.fit(module, datamodule=data)
        trainer.validate(module, datamodule=data, verbose=False)  # the final preference accuracy
        return trainer, module, data

    def recorded(self, module, final, before: dict) -> dict:
        return {"preference_accuracy": module.last_val["val/preference_accuracy"]}

    def summary(self, numbers: dict) -> list[str]:
        return [f"preference accuracy {numbers['preference_accuracy']:.3f}"]
