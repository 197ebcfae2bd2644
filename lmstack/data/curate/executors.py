"""Where `lmstack prepare`'s tasks run; the stages themselves do not change. `local`: processes on this machine
(the default); `ray`: Ray tasks, on a Ray started here (`ray.address` unset) or on an existing cluster
(`auto` or an address). Both return the results in task order, so the output does not depend on the executor
or on the number of workers."""

from __future__ import annotations

import os
from collections import deque
from typing import Callable, Iterable, Iterator, Optional

EXECUTORS = ("local", "ray")


def ordered_map(
    fn: Callable, jobs: list, executor: str = "local", num_workers: int = 1, ray_address: Optional[str] = None
) -> Iterator:
    """fn(job) for every job, yielded in job order, with at most a few tasks ahead of the consumer."""
    if executor == "ray":
        return _ray_map(fn, jobs, num_workers, ray_address)
    if executor != "local":
        raise ValueError(f"prepare.executor={executor!r}; allowed: {', '.join(EXECUTORS)}")
    return _local_map(fn, jobs, num_workers)


def _local_map(fn: Callable, jobs: list, num_workers: int) -> Iterator:
    if num_workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(num_workers)
    try:
        yield from pool.imap(fn, jobs)
    finally:
        pool.terminate()


def _ray_map(fn: Callable, jobs: Iterable, num_workers: int, address: Optional[str]) -> Iterator:
    """Ray tasks (retried by Ray when a worker dies), `2 x num_workers` in flight, collected in order."""
    import ray

    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
        if address:  # join a running cluster: its nodes bring their own CPUs
            ray.init(address=address, log_to_driver=False)
        else:  # a Ray of our own on this machine, as big as asked
            ray.init(num_cpus=max(1, num_workers), include_dashboard=False, log_to_driver=False)
        started = True
    task = ray.remote(num_cpus=1, max_retries=3)(fn)
    pending: deque = deque()
    try:
        for job in jobs:
            pending.append(task.remote(job))
            if len(pending) >= 2 * max(1, num_workers):
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
