"""Each LR schedule, at chosen token counts, against its formula."""

from __future__ import annotations

import math

import pytest

from lmstack.train.schedules import Schedule, tokens_of

T = 1_000_000


def test_warmup_is_linear_in_tokens():
    s = Schedule("cosine", peak_lr=1e-3, total_tokens=T, warmup_tokens=100_000)
    assert s.lr(0) == 0.0
    assert s.lr(25_000) == pytest.approx(0.25e-3)
    assert s.lr(100_000) == pytest.approx(1e-3)


def test_constant():
    s = Schedule("constant", peak_lr=2e-4, total_tokens=T, warmup_tokens=10_000)
    assert s.lr(5_000) == pytest.approx(1e-4)
    assert [s.lr(t) for t in (10_000, 500_000, T)] == pytest.approx([2e-4] * 3)


def test_cosine_formula():
    s = Schedule("cosine", peak_lr=1e-3, total_tokens=T, warmup_tokens=100_000, min_lr=1e-4)
    for t in (100_000, 300_000, 550_000, 900_000, T):
        frac = (t - 100_000) / 900_000
        assert s.lr(t) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * frac)))
    assert s.lr(550_000) == pytest.approx((1e-3 + 1e-4) / 2)
    assert s.lr(2 * T) == pytest.approx(1e-4)  # past the budget: stays at the floor


def test_wsd_formula():
    s = Schedule("wsd", peak_lr=1e-3, total_tokens=T, warmup_tokens=50_000, decay_tokens=200_000, min_lr=0.0)
    assert s.lr(60_000) == pytest.approx(1e-3)
    assert s.lr(800_000) == pytest.approx(1e-3)
    assert s.lr(900_000) == pytest.approx(0.5e-3)
    assert s.lr(T) == pytest.approx(0.0)


def test_olmo_anneal_is_the_tutorials_three_phases():
    """3e-4 after warmup, cosine down to the 5e-5 floor, then linear to 0 over the last A tokens."""
    W, A = 100_000, 200_000
    s = Schedule("olmo_anneal", peak_lr=3e-4, total_tokens=T, warmup_tokens=W, decay_tokens=A, min_lr=5e-5)
    assert s.lr(W / 2) == pytest.approx(1.5e-4)
    assert s.lr(W) == pytest.approx(3e-4)
    mid = W + (T - A - W) / 2
    assert s.lr(mid) == pytest.approx((3e-4 + 5e-5) / 2)
    t = 400_000
    frac = (t - W) / (T - A - W)
    assert s.lr(t) == pytest.approx(5e-5 + 0.5 * (3e-4 - 5e-5) * (1 + math.cos(math.pi * frac)))
    assert s.lr(T - A) == pytest.approx(5e-5)
    assert s.lr(T - A / 4) == pytest.approx(5e-5 / 4)
    assert s.lr(T) == 0.0


def test_token_counts_as_fractions_or_absolute():
    assert tokens_of(0.1, T) == 100_000
    assert tokens_of(1.0, T) == T
    assert tokens_of(5000, T) == 5000


def test_bad_schedules_raise():
    with pytest.raises(ValueError, match="schedule.name='linear' is not registered"):
        Schedule("linear", 1e-3, T)
    with pytest.raises(ValueError, match="exceed the training budget"):
        Schedule("wsd", 1e-3, T, warmup_tokens=600_000, decay_tokens=600_000)
