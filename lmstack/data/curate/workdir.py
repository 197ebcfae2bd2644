"""A job's intermediate files, one folder per finished task: the per-task completion markers (as datatrove has)
that let a rerun redo only what did not finish, whatever killed the job.

A task writes into `<name>.partial-<random>/`, ends with `result.json`, and renames the folder to `<name>/`: the
folder exists only once the task is complete. A task retried after its first attempt finished (a Ray retry
of a worker that died on the way out) finds the folder there and keeps it. Every folder here is lmstack's
own (inside the output folder it claimed), so stale ones may go.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from lmstack.diskfull import writing


def done(folder: Path) -> bool:
    return (folder / "result.json").is_file()


def result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def committed(fn: Callable[[dict, Path], dict], job: dict) -> dict:
    """Run `fn(job, tmp)` writing into a fresh temporary folder, then commit it as `job['dir']`; returns the
    task's result (also in result.json) with its wall time, CPU time and the process's peak memory."""
    final = Path(job["dir"])
    if done(final):
        return result(final)
    tmp = final.with_name(f"{final.name}.partial-{uuid.uuid4().hex[:8]}")
    with writing(final, None, [tmp]):  # a full disk: the task's folder named, its partial folder gone
        tmp.mkdir(parents=True)
        t0, r0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
        out = fn(job, tmp)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out["_timing"] = {
            "wall": time.time() - t0,
            "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
            "peak_mb": r1.ru_maxrss / 1024,  # kB on Linux
            "node": _node(),
        }
        (tmp / "result.json").write_text(json.dumps(out))
    try:
        os.replace(tmp, final)
    except OSError:  # another attempt committed first: its folder stays
        shutil.rmtree(tmp, ignore_errors=True)
    return result(final)


def _node() -> str:
    """Where the task ran: the Ray node's id inside a Ray worker, else the host name."""
    import socket
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def clear_partials(root: Path) -> None:
    """Folders of attempts that never finished (the job was killed): lmstack's, and useless now."""
    if root.is_dir():
        for p in root.rglob("*.partial-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
