"""Pretrain a language model: `python train.py [overrides]`, `python train.py -m [sweep overrides]`
(`-m sweep=NAME` runs an ablation from conf/sweep, each job in its own process)."""

import os

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from lmstack.sweep.job import in_sweep, run_job_process

    if in_sweep():
        return run_job_process(os.path.abspath(__file__))
    from lmstack.run import run

    result = run(cfg)
    return result.get("objective", result.get("val/bpb"))  # what a sweeper minimises


if __name__ == "__main__":
    main()
