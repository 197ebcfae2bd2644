"""Learning-rate schedules defined in tokens, not steps.

Each schedule maps "tokens seen so far" to a learning rate. Token counts in config may be given as a
fraction of the training budget (a float <= 1) or as absolute tokens (a number > 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmstack.registry import lookup, register


def tokens_of(value: float, total: int) -> int:
    """A token count from config: a fraction of `total` when <= 1, else absolute tokens."""
    return int(round(value * total)) if value <= 1 else int(value)


@dataclass
class Schedule:
    name: str
    peak_lr: float
    total_tokens: int
    warmup_tokens: int = 0
    min_lr: float = 0.0  # cosine: the floor reached at the end; olmo_anneal: floor before the final decay
    decay_tokens: int = 0  # wsd: length of the final linear decay; olmo_anneal: the final anneal to zero

    def __post_init__(self):
        self.fn = lookup("schedule", self.name, "schedule.name")
        if self.warmup_tokens + self.decay_tokens > self.total_tokens:
            raise ValueError(
                f"schedule {self.name}: warmup ({self.warmup_tokens}) + decay ({self.decay_tokens}) tokens "
                f"exceed the training budget ({self.total_tokens})"
            )

    def lr(self, tokens: float) -> float:
        if self.warmup_tokens and tokens < self.warmup_tokens:
            return self.peak_lr * tokens / self.warmup_tokens
        return self.fn(self, min(tokens, self.total_tokens))


@register("schedule", "constant")
def _constant(s: Schedule, t: float) -> float:
    return s.peak_lr


def _cosine_between(hi: float, lo: float, start: float, end: float, t: float) -> float:
    frac = 1.0 if end <= start else min(max((t - start) / (end - start), 0.0), 1.0)
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * frac))


def _linear_between(hi: float, lo: float, start: float, end: float, t: float) -> float:
    frac = 1.0 if end <= start else min(max((t - start) / (end - start), 0.0), 1.0)
    return hi + (lo - hi) * frac


@register("schedule", "cosine")
def _cosine(s: Schedule, t: float) -> float:
    return _cosine_between(s.peak_lr, s.min_lr, s.warmup_tokens, s.total_tokens, t)


@register("schedule", "wsd")
def _wsd(s: Schedule, t: float) -> float:
    """Warmup, stable at the peak, then linear decay to min_lr over the last decay_tokens."""
    return _linear_between(s.peak_lr, s.min_lr, s.total_tokens - s.decay_tokens, s.total_tokens, t)


@register("schedule", "olmo_anneal")
def _olmo_anneal(s: Schedule, t: float) -> float:
    """Warmup, cosine from the peak to the floor (min_lr), then linear to zero over the last decay_tokens."""
    anneal_start = s.total_tokens - s.decay_tokens
    if t < anneal_start:
        return _cosine_between(s.peak_lr, s.min_lr, s.warmup_tokens, anneal_start, t)
    return _linear_between(s.min_lr, 0.0, anneal_start, s.total_tokens, t)


def schedule_args(sched, peak_lr: float, total: int) -> dict:
    """The training module's schedule arguments from a schedule config section over `total` tokens."""
    return {
        "name": sched.name,
        "peak_lr": peak_lr,
        "total_tokens": total,
        "warmup_tokens": tokens_of(sched.warmup_tokens, total),
        "min_lr": sched.min_lr,
        "decay_tokens": tokens_of(sched.decay_tokens, total),
    }
