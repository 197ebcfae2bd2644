"""Every option of every config group runs a 2-step fit on real data (sizes too big for a CPU excepted:
they are built on the meta device in test_model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmstack.run import run

from .test_config import OPTIONS

TOO_BIG_FOR_CPU = {("model", "150m"), ("model", "1b"), ("model", "7b"), ("model", "moe-1b-7b")}


@pytest.mark.slow
@pytest.mark.parametrize("group,option", [o for o in OPTIONS if o not in TOO_BIG_FOR_CPU])
def test_every_option_runs_a_two_step_fit(group, option, small_cfg, request):
    if (group, option) == ("trainer", "gpu") and not torch.cuda.is_available():
        pytest.skip("no GPU on this machine")
    extra = []
    if (group, option) == ("data_mix", "prepared"):
        extra = [f"data_mix.dir={request.getfixturevalue('prepared_dir')}"]
    if (group, option) == ("data_mix", "prepared_mix"):
        extra = [
            f"data_mix.dirs.web={request.getfixturevalue('prepared_dir')}",
            f"data_mix.dirs.high={request.getfixturevalue('prepared_prose_dir')}",
        ]
    cfg = small_cfg(f"{group}={option}", *extra)
    if group != "trainer":
        cfg.trainer.enable_progress_bar = False
    result = run(cfg)
    assert result["steps"] == 2
    assert result["val/bpb"] > 0
    if group == "callbacks" and option == "none":
        assert not (Path(cfg.run_dir) / "checkpoints").exists()
    else:
        assert (Path(cfg.run_dir) / "checkpoints" / "last.ckpt").exists()
