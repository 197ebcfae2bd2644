"""Where `lmstack prepare`'s tasks run; the stages themselves do not change. `local`: processes on this machine
(the default); `ray`: Ray tasks, on a Ray started here (`ray.address` unset) or on an existing cluster
(`auto` or an address). Both return the results in task order, so the output does not depend on the executor
or on the number of workers. One executor serves every stage of a job (one worker pool, one Ray session)."""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Callable, Iterator, Optional

log = logging.getLogger("lmstack")
EXECUTORS = ("local", "ray")
UNAUTHENTICATED = (
    "prepare.ray.address=%s: joining a Ray cluster without token authentication (RAY_AUTH_MODE is not 'token' "
    "here): anyone who can reach the cluster's ports can run code on it. Start clusters with RAY_AUTH_MODE=token "
    "and RAY_AUTH_TOKEN_PATH on every node and for the job (README: Ray clusters)"
)


class LocalExecutor:
    """Tasks in this process (1 worker) or in a pool of spawned processes, results in task order."""

    def __init__(self, num_workers: int = 1):
        self.num_workers, self.pool = num_workers, None

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()  # its processes and their semaphores gone before the job returns
            self.pool = None

    def map(self, fn: Callable, jobs: list) -> Iterator:
        if self.num_workers <= 1 or len(jobs) <= 1:
            yield from map(fn, jobs)
            return
        if self.pool is None:
            import multiprocessing as mp

            self.pool = mp.get_context("spawn").Pool(self.num_workers)
        yield from self.pool.imap(fn, jobs)


class RayExecutor:
    """Ray tasks (retried by Ray when a worker dies), `2 x num_workers` in flight, collected in order. A Ray
    started here is shut down with the job; one joined (`address`) is left running."""

    def __init__(self, num_workers: int = 1, address: Optional[str] = None):
        self.num_workers, self.address, self.started, self.remote = num_workers, address, False, {}

    def __enter__(self) -> "RayExecutor":
        import ray

        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
            if self.address:  # join a running cluster: its nodes bring their own CPUs
                if os.environ.get("RAY_AUTH_MODE") != "token":
                    log.warning(UNAUTHENTICATED, self.address)
                ray.init(address=self.address, log_to_driver=False)
            else:  # a Ray of our own on this machine, as big as asked. Ray (>= 2.59) turns token authentication
                # on for a local ray.init unless RAY_AUTH_MODE says otherwise; its gRPC servers still listen on every
                # interface (Ray 2.60 has no option that binds them to loopback)
                ray.init(num_cpus=max(1, self.num_workers), include_dashboard=False, log_to_driver=False)
            self.started = True
        return self

    def __exit__(self, *exc) -> None:
        import ray

        if self.started:
            ray.shutdown()
            self.started = False

    def map(self, fn: Callable, jobs: list) -> Iterator:
        import ray

        if fn not in self.remote:
            self.remote[fn] = ray.remote(num_cpus=1, max_retries=3)(fn)
        task, pending = self.remote[fn], deque()
        in_flight = 2 * max(1, self.num_workers, int(ray.cluster_resources().get("CPU", 1)))
        try:
            for job in jobs:
                pending.append(task.remote(job))
                if len(pending) >= in_flight:
                    yield ray.get(pending.popleft())
            while pending:
                yield ray.get(pending.popleft())
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def executor(kind: str = "local", num_workers: int = 1, ray_address: Optional[str] = None):
    """The executor for `prepare.executor` (use it as a context manager: it owns its pool or its Ray)."""
    if kind == "ray":
        return RayExecutor(num_workers, ray_address)
    if kind != "local":
        raise ValueError(f"prepare.executor={kind!r}; allowed: {', '.join(EXECUTORS)}")
    return LocalExecutor(num_workers)
