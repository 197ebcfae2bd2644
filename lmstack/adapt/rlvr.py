"""RL with verifiable rewards (GRPO) as a LightningModule: for each prompt of the batch, G responses sampled
from the policy through the KV cache, rewarded by the task's verifier, advantages centred per group
(optionally divided by the std), groups with equal rewards dropped, then the clipped-ratio objective with a
k3 KL to the frozen starting model (`beta`; beta = 0 builds no reference). One optimizer step per batch of
samples, so the "old" policy is the one that sampled (ratio 1 at the step, the clip guards later steps).
Logs the mean reward, KL, response length and the share of groups kept."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lmstack.generate import generate_many
from lmstack.train.module import PretrainModule

from .chat import END, prompt_ids
from .grpo import group_advantages, grpo_loss
from .sft import IGNORE


def token_logps(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) at each position ([N, T]; 0 where the label is IGNORE)."""
    logp = F.log_softmax(model(ids).float(), -1)
    return logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * (labels != IGNORE)


class GRPOModule(PretrainModule):
    def __init__(
        self,
        *args,  # PretrainModule's (model_cfg, optimizer, schedule, ...): saved with these by save_hyperparameters
        group_size: int = 8,
        beta: float = 0.0,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        scale_advantages: bool = False,
        temperature: float = 1.0,
        max_new_tokens: int = 12,
        system: str | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.group_size, self.beta, self.clip = group_size, beta, (clip_low, clip_high)
        self.scale_advantages, self.temperature, self.max_new = scale_advantages, temperature, max_new_tokens
        self.system = system
        self.tok = None  # the chat tokenizer and the tasks (verifiers), set by the stage runner
        self.tasks: dict = {}
        self._ref: list = []
        self._signal = False

    def freeze_reference(self) -> None:
        if self.beta > 0:
            ref = copy.deepcopy(self.model).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self._ref = [ref]

    @torch.no_grad()
    def rollout(self, examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """(ids [N, T], labels [N, T] on response tokens, rewards [P, G], response lengths)."""
        self.model.eval()
        end = self.tok.token_to_id(END)
        seqs, rewards, lengths = [], [], []
        for ex in examples:
            prompt = prompt_ids(self.tok, ex.prompt, self.system)
            outs = generate_many(
                self.model,
                prompt,
                self.group_size,
                self.max_new,
                temperature=self.temperature,
                eos_id=end,
                sync=self._all_done if self.trainer.world_size > 1 else None,  # ranks decode in lockstep
            )
            rewards.append([self.tasks[ex.task].verify(self.tok.decode(out), ex) for out in outs])
            seqs += [(prompt, out) for out in outs]
            lengths += [len(out) for out in outs]
        self.model.train()
        width = max(len(p) + len(o) for p, o in seqs) - 1
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for i, (p, o) in enumerate(seqs):
            full = torch.tensor(p + o)
            ids[i, : len(full) - 1] = full[:-1]
            labels[i, len(p) - 1 : len(full) - 1] = full[len(p) :]
        return ids.to(self.device), labels.to(self.device), torch.tensor(rewards, device=self.device), lengths

    def _all_done(self, done: bool) -> bool:
        """Whether every rank's group is done decoding (one all-reduce per decoding step)."""
        left = self.trainer.strategy.reduce(torch.tensor(float(not done), device=self.device), reduce_op="sum")
        return float(left) == 0.0

    def training_step(self, batch, batch_idx):
        ids, labels, rewards, lengths = self.rollout(batch)
        adv, keep = group_advantages(rewards, self.scale_advantages)
        rows = keep.repeat_interleave(self.group_size)
        self.log("train/reward", rewards.mean(), prog_bar=True)
        self.log("train/response_length", float(sum(lengths) / max(len(lengths), 1)))
        self.log("train/groups_kept", keep.float().mean())
        new = token_logps(self.model, ids, labels)
        mask = (labels != IGNORE) & rows[:, None]
        ref = None
        if self.beta > 0:
            with torch.no_grad():
                self._ref[0].to(self.device)
                ref = token_logps(self._ref[0], ids, labels)
        loss, m = grpo_loss(new, new.detach(), adv.flatten(), mask, *self.clip, beta=self.beta, logp_ref=ref)
        self.log("train/kl", m["kl"])
        self.log("train/loss", loss)
        self.micro.append({"batch": {}, "loss": loss.detach()})
        self._signal = self._signal or bool(keep.any())
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        if batch_idx % self.trainer.accumulate_grad_batches == 0:
            self._signal = False

    def _decide(self, grad_norm: torch.Tensor) -> None:
        """Every group all right or all wrong (on every rank): no signal, so no update at all."""
        signal = torch.tensor(float(self._signal), device=self.device)
        if self.trainer.world_size > 1:
            signal = self.trainer.strategy.reduce(signal, reduce_op="sum")
        super()._decide(grad_norm)
        if float(signal) == 0 and not self.skip_update:
            self.skip_update = True
            self.skipped_steps += 1
