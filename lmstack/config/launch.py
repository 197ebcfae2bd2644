"""One run directory for every process of a launch. Each process of a multi-process job composes its own
config, and `${now:...}` can differ between them by a second (or a day, across midnight); the run directory
is therefore named by `${lmstack_stamp:}`, the same in every process:

- `LMSTACK_RUN_STAMP` when set (a launcher's or a user's choice);
- under torchrun (its agent's store at MASTER_ADDR:MASTER_PORT): the time rank 0 read, shared through
  that store, so every node of `torchrun --nnodes N` names the same directory;
- under Slurm (`srun`, several tasks, no torchrun): `slurm-JOBID.STEPID`, which every task knows;
- otherwise the time now.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta


def launch_stamp() -> str:
    env = os.environ
    if env.get("LMSTACK_RUN_STAMP"):
        return env["LMSTACK_RUN_STAMP"]
    now = time.strftime("%Y-%m-%d/%H-%M-%S")
    if int(env.get("WORLD_SIZE", "1")) > 1 and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        from torch.distributed import TCPStore

        store = TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=5))
        key = f"lmstack/run_stamp/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        if env.get("RANK") == "0":
            store.set(key, now)
        return store.get(key).decode()  # waits for rank 0's
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    return now
