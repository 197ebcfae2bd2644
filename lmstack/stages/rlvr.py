"""`stage=rlvr`: RL with verifiable rewards (GRPO) from init_from (an SFT or DPO checkpoint): G sampled answers
per prompt, reward = the task's verifier, group-centred advantages, clipped ratio, k3 KL to the start (beta)
(`lmstack.adapt.rlvr`)."""

from __future__ import annotations

from dataclasses import dataclass

from lmstack.adapt.data import PromptsDataModule
from lmstack.adapt.examples import sampled_reward
from lmstack.adapt.rlvr import GRPOObjective
from lmstack.config.schema import ConfigError
from lmstack.config.validate import field_
from lmstack.registry import register

from .adapt import AdaptSection, AdaptStage


@dataclass
class RLVRSection(AdaptSection):
    group_size: int = field_(8, min=1)  # G samples per prompt
    beta: float = field_(0.0, min=0.0)  # the k3 KL weight; 0 loads no reference model
    clip_low: float = field_(0.2, min=0.0)  # the ratio's lower clip (1 - clip_low)
    clip_high: float = field_(0.28, min=0.0)  # DAPO's clip-higher
    scale_advantages: bool = False  # divide by the group's std (GRPO) or only centre (Dr. GRPO)
    updates_per_rollout: int = field_(1, min=1)  # passes over each rollout (PPO epochs): the ratio moves from 1
    minibatches: int = field_(1, min=1)  # each pass split into this many optimizer steps
    temperature: float = field_(1.0, min=0.0)  # sampling temperature of the rollouts
    eval_samples: int = field_(4, min=1)  # sampled answers per held-out prompt for the mean reward


@register("stage", "rlvr")
class RLVR(AdaptStage):
    section = RLVRSection

    def trainer(self):
        trainer = super().trainer()
        o = self.options
        self.steps_per_batch = o.updates_per_rollout * o.minibatches  # every rollout is trained on this many steps
        if self.steps_per_batch > 1 and trainer.accumulate_grad_batches > 1:
            raise ConfigError(
                f"stage.updates_per_rollout x stage.minibatches = {self.steps_per_batch} steps per rollout need one "
                f"micro-batch a step (trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}): raise "
                "data.batch_size instead of accumulating"
            )
        return trainer

    def training_data(self, model, tok):
        return self.train, None, len(self.train), f"{len(self.train)} prompts x {self.options.group_size} samples", {}

    def objective(self, model, tok):
        o = self.options
        return GRPOObjective(
            tok,
            self.tasks,
            group_size=o.group_size,
            beta=o.beta,
            clip_low=o.clip_low,
            clip_high=o.clip_high,
            scale_advantages=o.scale_advantages,
            temperature=o.temperature,
            max_new_tokens=o.max_new_tokens,
            system=o.system,
            updates_per_rollout=o.updates_per_rollout,
            minibatches=o.minibatches,
            reference_model=self.reference(model) if o.beta > 0 else None,
        )

    def datamodule(self, train_data, val_data):
        spec = self.spec
        return PromptsDataModule(train_data, spec.data.batch_size, spec.seed, spec.data.seq_len, self.steps_per_batch)

    def measure(self, model) -> dict:
        o = self.options
        return {"mean_reward": sampled_reward(model, self.tok, self.test, self.tasks, o, o.system)}

    def describe(self, key: str) -> str:
        return "mean sampled reward" if key == "mean_reward" else super().describe(key)

    def recorded(self, module, final, before: dict) -> dict:
        o = self.options
        after = sampled_reward(final, self.tok, self.test, self.tasks, o, o.system)
        return {"mean_reward_before": before["mean_reward"], "mean_reward": after}

    def summary(self, numbers: dict) -> list[str]:
        return [f"mean sampled reward {numbers['mean_reward_before']:.3f} -> {numbers['mean_reward']:.3f}"]
