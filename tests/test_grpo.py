"""GRPO's advantages, clipping and k3 KL against hand-computed values; beta=0 needs no reference."""

from __future__ import annotations

import math

import pytest
import torch

from lmstack.adapt.grpo import group_advantages, grpo_loss, k3


def test_advantages_are_centred_per_group_and_flat_groups_are_dropped():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    adv, keep = group_advantages(rewards)
    assert adv.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [-0.25, -0.25, -0.25, 0.75]]
    assert keep.tolist() == [True, False, True]
    scaled, _ = group_advantages(rewards, scale=True, eps=0.0)
    assert scaled[0].tolist() == [1.0, -1.0, -1.0, 1.0]  # std 0.5
    assert scaled[2, 3] == pytest.approx(0.75 / math.sqrt(3 / 16))


def test_clipped_objective_and_k3_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.8, 0.4]]))  # ratios 1.6 and 0.8
    mask = torch.ones(1, 2)
    loss, m = grpo_loss(new, old, torch.tensor([1.0]), mask, clip_low=0.1, clip_high=0.2)
    # A > 0: min(1.6, 1.2) = 1.2 and min(0.8, 0.9) = 0.8
    assert float(loss) == pytest.approx(-(1.2 + 0.8) / 2) and float(m["clip_fraction"]) == 1.0
    loss, _ = grpo_loss(new, old, torch.tensor([-1.0]), mask, clip_low=0.1, clip_high=0.2)
    # A < 0: min(-1.6, -1.2) = -1.6 and min(-0.8, -0.9) = -0.9
    assert float(loss) == pytest.approx((1.6 + 0.9) / 2)
    ref = torch.log(torch.tensor([[0.4, 0.5]]))
    assert float(k3(new, ref)[0, 0]) == pytest.approx(0.5 - math.log(0.5) - 1)  # ref/new = 0.5
    with_kl, m = grpo_loss(new, old, torch.tensor([1.0]), mask, 0.1, 0.2, beta=0.5, logp_ref=ref)
    kl = (0.5 - math.log(0.5) - 1 + 1.25 - math.log(1.25) - 1) / 2
    assert float(m["kl"]) == pytest.approx(kl) and float(with_kl) == pytest.approx(-1.0 + 0.5 * kl)


def test_beta_zero_is_the_same_update_as_no_reference():
    torch.manual_seed(0)
    new = torch.randn(3, 5).log_softmax(-1).requires_grad_()
    old, ref = new.detach() + 0.05 * torch.randn(3, 5), torch.randn(3, 5)
    mask = (torch.rand(3, 5) > 0.3).float()
    adv = torch.tensor([0.5, -1.0, 0.25])
    a, _ = grpo_loss(new, old, adv, mask, beta=0.0, logp_ref=ref)
    (ga,) = torch.autograd.grad(a, new)
    b, _ = grpo_loss(new, old, adv, mask, beta=0.0)
    (gb,) = torch.autograd.grad(b, new)
    assert float(a) == float(b) and torch.equal(ga, gb)
    with pytest.raises(ValueError, match="needs the reference"):
        grpo_loss(new, old, adv, mask, beta=0.1)


def grpo_run(small_cfg, ckpt, run_dir, *extra) -> dict[str, list[float]]:
    """8 instruction-constraint prompts (a barely trained model meets some: the groups carry signal), 4 a
    rollout, 4 samples each, at a learning rate high enough to move the policy within a rollout."""
    from lmstack.run import run

    from .test_stability import scalars

    cfg = small_cfg(
        "stage=rlvr",
        f"init_from={ckpt}",
        "~stage.tasks.arithmetic",
        "+stage.tasks.constraints={}",
        "stage.train_examples=8",
        "stage.test_examples=4",
        "stage.group_size=4",
        "data.batch_size=4",
        "optimizer.lr=0.03",
        *extra,
    )
    cfg.run_dir = str(run_dir)
    run(cfg)
    return scalars(run_dir)


@pytest.mark.slow
def test_several_updates_per_rollout_move_the_ratio_and_clip_and_one_update_keeps_it_at_one(
    small_ckpt, small_cfg, tmp_path
):
    ppo = grpo_run(small_cfg, small_ckpt, tmp_path / "ppo", "stage.updates_per_rollout=2", "stage.minibatches=2")
    assert ppo["train/rollouts"] == [1, 1, 1, 1, 2, 2, 2, 2]  # 2 rollouts x 2 passes x 2 minibatches
    assert max(ppo["train/groups_kept"]) > 0
    first = [0, 4]  # the first step of each rollout: the policy is still the one that sampled
    assert all(ppo["train/ratio_mean"][s] == pytest.approx(1.0, abs=1e-6) for s in first)
    later = [s for s in range(8) if s not in first]
    assert max(ppo["train/ratio_max"][s] for s in later) > 1.01  # the updates moved the policy
    assert max(ppo["train/clip_fraction"][s] for s in later) > 0  # and the clip acts

    one = grpo_run(small_cfg, small_ckpt, tmp_path / "one")
    assert one["train/rollouts"] == [1, 2]  # one step per rollout, as before
    assert one["train/ratio_mean"] == [1.0, 1.0] and one["train/ratio_max"] == [1.0, 1.0]
    assert one["train/clip_fraction"] == [0.0, 0.0]
