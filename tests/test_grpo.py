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
