"""OLMo-core's instance filter: a training block in which one n-gram of at most `max_period` tokens repeats
back to back at least `min_count` times (a run of one token, a table of one pattern) is pathological text
that makes loss spikes; it still fills its place in the sample stream but gets no loss."""

from __future__ import annotations

import numpy as np


def repetition(tokens: np.ndarray, max_period: int = 13, min_count: int = 32) -> dict | None:
    """The first (shortest-period) back-to-back repetition of >= min_count copies in `tokens`:
    {"period", "start", "times"}, or None."""
    tokens = np.asarray(tokens)
    for period in range(1, max_period + 1):
        if len(tokens) < period * min_count:
            break
        same = tokens[period:] == tokens[:-period]  # x[i] == x[i + period]: inside a periodic stretch
        edges = np.flatnonzero(np.diff(np.concatenate([[0], same.view(np.int8), [0]])))
        starts, ends = edges[::2], edges[1::2]  # runs of equality, [start, end)
        if not len(starts):
            continue
        best = int(np.argmax(ends - starts))
        times = (int(ends[best] - starts[best]) + period) // period  # whole copies of the n-gram in the stretch
        if times >= min_count:
            return {"period": period, "start": int(starts[best]), "times": times}
    return None
