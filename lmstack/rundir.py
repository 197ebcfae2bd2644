"""A run directory has one writer: the job's rank 0 holds its lock (`lmstack.ownership`, released by the kernel
if the process dies) from the start of the run to its end.

A second run into a busy directory is refused at once, naming the holder's pid, host and start time. A
directory that holds a finished or interrupted run (its checkpoints or its result) is refused too, unless
`ckpt_path=` resumes that very run; so a run never writes `last-v1.ckpt` beside another run's `last.ckpt`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

HYDRA_ENTRIES = (".hydra", "train.log", "multirun.yaml")  # what Hydra writes into a run directory first
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")  # torchrun, Slurm, Lightning's launcher


def is_rank_zero() -> bool:
    """Rank 0 of the job, before any process group exists (from the launchers' environment)."""
    return all(os.environ.get(k, "0") == "0" for k in RANK_VARIABLES)


def holds_a_run(run_dir: Path) -> bool:
    return (run_dir / "result.json").is_file() or any((run_dir / "checkpoints").glob("*.ckpt"))


def inside(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, ckpt: str | None, **fields):
    """Claim `run_dir` for this job (its marker records `fields`) and hold it until the block ends; yields the
    `OwnedFolder` on rank 0, None on the other ranks (they write nothing of the run directory's own)."""
    from lmstack.config.validate import ConfigError
    from lmstack.ownership import OwnedFolder, OwnershipError

    if not is_rank_zero():
        yield None
        return
    try:
        owned = OwnedFolder(run_dir, "run", foreign_ok=HYDRA_ENTRIES).__enter__()
    except OwnershipError as e:
        raise ConfigError(f"run_dir: {e}") from None
    with contextlib.ExitStack() as stack:
        stack.push(owned.__exit__)  # the lock is released, and a full disk named, however the run ends
        if holds_a_run(owned.path) and not inside(ckpt, owned.path):
            raise ConfigError(
                f"run_dir: {owned.path} holds an earlier run (status {owned.marker.get('status', 'unknown')!r}); "
                f"resume it with ckpt_path={owned.path}, or choose a new hydra.run.dir"
            )
        owned.update(status="running", **fields)
        try:
            yield owned
        except BaseException as e:  # the marker says how it ended (a full disk may refuse even this much)
            with contextlib.suppress(OSError):
                owned.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
            raise
