"""RL with verifiable rewards (GRPO) as a LightningModule: for each prompt of the batch, G responses sampled
from the policy through the KV cache (every prompt's group in one batch, prompts padded on the left),
rewarded by the task's verifier, advantages centred per group (optionally divided by the std), groups with
equal rewards dropped, then the clipped-ratio objective with a k3 KL to the frozen starting model (`beta`;
beta = 0 builds no reference).

Updates as PPO does: each rollout is trained on `updates_per_rollout` times, each pass split into
`minibatches` optimizer steps (the data module hands the same prompts to those steps), against the
log-probabilities of the policy that sampled it, computed once after the rollout; so from the second step
on the ratio departs from 1 and the clip acts. With one step per rollout the sampling policy is the one
being updated: the ratio is exactly 1 (the old log-probs are the new ones, detached) and no second forward
pass is made. Logs the mean reward, response length, share of groups kept, KL, clip fraction, and the
ratio's mean and max over response tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmstack.generate import generate_batch, ranks_done
from lmstack.tasks.chat_template import END, prompt_ids
from lmstack.train.objective import MicroStep, Objective

from .grpo import group_advantages, grpo_loss
from .sft import IGNORE


def token_logps(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) at each position ([N, T]; 0 where the label is IGNORE)."""
    logp = F.log_softmax(model(ids).float(), -1)
    return logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * (labels != IGNORE)


class GRPOObjective(Objective):
    """GRPO on the prompts of each batch; `tok` is the chat tokenizer, `tasks` the verifiers by task name and
    `reference_model` the frozen starting model (for beta > 0; None otherwise)."""

    name = "rlvr"

    def __init__(
        self,
        tok,
        tasks: dict,
        group_size: int = 8,
        beta: float = 0.0,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        scale_advantages: bool = False,
        temperature: float = 1.0,
        max_new_tokens: int = 12,
        system: str | None = None,
        updates_per_rollout: int = 1,
        minibatches: int = 1,
        reference_model=None,
    ):
        if beta > 0 and reference_model is None:
            raise ValueError("GRPO with beta > 0 needs the frozen starting model (reference_model)")
        self.tok, self.tasks = tok, tasks
        self.updates_per_rollout, self.minibatches = updates_per_rollout, minibatches
        self.group_size, self.beta, self.clip = group_size, beta, (clip_low, clip_high)
        self.scale_advantages, self.temperature, self.max_new = scale_advantages, temperature, max_new_tokens
        self.system = system
        self.reference_model = reference_model if beta > 0 else None
        self._rollout: dict | None = None  # the current rollout, for its remaining updates
        self.rollouts = 0

    def options(self) -> dict:
        return {
            "name": self.name,
            "group_size": self.group_size,
            "beta": self.beta,
            "clip": list(self.clip),
            "scale_advantages": self.scale_advantages,
            "temperature": self.temperature,
            "updates_per_rollout": self.updates_per_rollout,
            "minibatches": self.minibatches,
        }

    @torch.no_grad()
    def rollout(self, module, examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """(ids [N, T], labels [N, T] on response tokens, rewards [P, G], response lengths)."""
        model, device = module.model, module.device
        model.eval()
        end = self.tok.token_to_id(END)
        prompts = [prompt_ids(self.tok, ex.prompt, self.system) for ex in examples]
        reduce = lambda t: module.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        outs = generate_batch(  # every prompt's group in one batch
            model,
            prompts,
            self.group_size,
            self.max_new,
            temperature=self.temperature,
            eos_id=end,
            sync=ranks_done(reduce, device) if module.trainer.world_size > 1 else None,  # in lockstep
        )
        g = self.group_size
        rewards = [
            [self.tasks[ex.task].verify(self.tok.decode(out), ex) for out in outs[i * g : (i + 1) * g]]
            for i, ex in enumerate(examples)
        ]
        seqs = [(prompts[r // g], out) for r, out in enumerate(outs)]
        lengths = [len(out) for out in outs]
        model.train()
        width = max(len(p) + len(o) for p, o in seqs) - 1
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for i, (p, o) in enumerate(seqs):
            full = torch.tensor(p + o)
            ids[i, : len(full) - 1] = full[:-1]
            labels[i, len(p) - 1 : len(full) - 1] = full[len(p) :]
        return ids.to(device), labels.to(device), torch.tensor(rewards, device=device), lengths

    @property
    def steps_per_rollout(self) -> int:
        return self.updates_per_rollout * self.minibatches

    def _new_rollout(self, module, batch) -> dict:
        """Sample the batch's groups, reward them, and (for several updates) score them with the policy
        that sampled them; the frozen reference's log-probs too when beta > 0."""
        ids, labels, rewards, lengths = self.rollout(module, batch)
        adv, keep = group_advantages(rewards, self.scale_advantages)
        mask = (labels != IGNORE) & keep.repeat_interleave(self.group_size)[:, None]
        r = {"ids": ids, "labels": labels, "adv": adv.flatten(), "mask": mask, "keep": keep, "old": None, "ref": None}
        r.update(reward=rewards.mean(), length=float(sum(lengths) / max(len(lengths), 1)))
        with torch.no_grad():
            if self.steps_per_rollout > 1:
                r["old"] = token_logps(module.model, ids, labels)
            if self.reference_model is not None:
                self.reference_model.to(module.device)
                r["ref"] = token_logps(self.reference_model, ids, labels)
        self.rollouts += 1
        return r

    def training_step(self, module, batch) -> MicroStep:
        k = module.trainer.global_step % self.steps_per_rollout  # this step's place in its rollout's updates
        if k == 0 or self._rollout is None:
            self._rollout = self._new_rollout(module, batch)
        r = self._rollout
        rows = torch.tensor_split(torch.arange(len(r["ids"]), device=module.device), self.minibatches)[
            k % self.minibatches
        ]
        ids, labels, mask = r["ids"][rows], r["labels"][rows], r["mask"][rows]
        new = token_logps(module.model, ids, labels)
        old = new.detach() if r["old"] is None else r["old"][rows]
        ref = None if r["ref"] is None else r["ref"][rows]
        loss, m = grpo_loss(new, old, r["adv"][rows], mask, *self.clip, beta=self.beta, logp_ref=ref)
        ratio = torch.exp(new.detach() - old)[mask]
        module.log("train/reward", r["reward"], prog_bar=True)
        module.log("train/response_length", r["length"])
        module.log("train/groups_kept", r["keep"].float().mean())
        module.log("train/kl", m["kl"])
        module.log("train/clip_fraction", m["clip_fraction"])
        module.log("train/ratio_mean", ratio.mean() if len(ratio) else torch.ones(()))
        module.log("train/ratio_max", ratio.max() if len(ratio) else torch.ones(()))
        module.log("train/rollouts", float(self.rollouts))
        module.log("train/loss", loss)
        # every group all right or all wrong: no signal; a step without any on every rank takes no update
        return MicroStep(loss, loss.detach(), learned=float(bool(mask.any())), batch={})
