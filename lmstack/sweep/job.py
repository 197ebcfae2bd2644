"""One process per sweep job: under `python train.py -m`, Hydra's launcher calls the task once per job in
the sweep process; the task starts `python -m lmstack.train` again as a child for that job (same overrides, the job's
folder as its run directory) and waits. A job that crashes or diverges is recorded in its folder's
`result.json` and the sweep goes on to the next job; the next job starts in a fresh process, with nothing
left over from the last one (memory, threads, compiled kernels). On Linux the child is tied to the sweep
process: when that dies, however it dies (Ctrl-C, kill, the OOM killer), the running job gets SIGTERM.

The same task runs under Hydra's submitit launcher (`hydra/launcher=submitit_local`, `submitit_slurm`, or
conf/hydra/launcher/slurm.yaml): there each job is a submitit job of its own (all of them at once, or as
Slurm schedules them), and on Slurm one task per GPU starts its training process, which takes its rank from the
SLURM_* variables; only the task of global rank 0 records how the job ended.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

CHILD_ENV = "LMSTACK_SWEEP_JOB"


def in_sweep() -> bool:
    """True in the sweep process of a multirun (not in the per-job child it starts)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN and os.environ.get(CHILD_ENV) != "1"


def die_with_parent() -> None:
    """In a child before exec: ask Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG), and exit at
    once if it died already (the child was reparented before the request)."""
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
        return
    if os.getppid() != parent:
        os._exit(1)


def start_job(cmd: list[str], env: dict) -> subprocess.Popen:
    """The job's process, tied to this one's life where the OS allows it."""
    return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)


def task_rank() -> int:
    """This process's global rank among a submitit job's tasks; 0 outside submitit."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 0
    import submitit

    return submitit.JobEnvironment().global_rank


def run_job_process(command: list[str]) -> float:
    """Run this job's training in a child process; its final val/bpb, or NaN when it failed or diverged
    (so a sweeper that minimises, such as Optuna's, treats it as a failed trial)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    cmd = [*command, *hc.overrides.task, f"hydra.run.dir={out}"]
    if hc.runtime.config_sources:  # a --config-dir given to the sweep reaches the job too
        extra = [s.path for s in hc.runtime.config_sources if s.provider == "command-line"]
        cmd += [f"--config-dir={p.removeprefix('file://')}" for p in extra]
    proc = start_job(cmd, {**os.environ, CHILD_ENV: "1"})
    try:
        proc.wait()
    except BaseException:  # Ctrl-C or an error in the sweep: the job goes too
        proc.terminate()
        proc.wait()
        raise
    result_file = out / "result.json"
    if task_rank() != 0:  # rank 0 of the same job records it
        return float("nan")
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if proc.returncode != 0 and result.get("status") != "diverged":
        result = {**result, "status": "failed", "returncode": proc.returncode}
        result_file.write_text(json.dumps(result, indent=2))
    print(
        f"[sweep] job {hc.job.num} ({' '.join(hc.overrides.task)}): {result.get('status')} "
        f"val/bpb={result.get('val/bpb')}",
        flush=True,
    )
    value = result.get("val/bpb")
    if result.get("status") != "completed" or value is None or not math.isfinite(value):
        return float("nan")
    return float(value)
