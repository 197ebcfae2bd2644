"""Pretrain a language model: `python -m lmstack.train [overrides]` (also `python train.py`, `lmstack train`);
`-m [sweep overrides]` runs a sweep (`-m sweep=NAME`: an ablation from conf/sweep, each job in its own
process). The config is `conf/train.yaml`, found in the checkout or in the installed package."""

import sys

import hydra
from omegaconf import DictConfig

from lmstack.config.store import conf_dir, register, register_stages
from lmstack.console import quiet_dependencies

register()
register_stages()
quiet_dependencies()


def log_in_run_dir(argv: list[str]) -> list[str]:
    """A single run given `run_dir=DIR` keeps its log (train.log) and Hydra's record of its config (.hydra/) in
    DIR too, instead of a dated folder of their own under outputs/runs (a sweep's jobs have their own folders)."""
    if {"-m", "--multirun"} & set(argv) or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    given = [a.split("=", 1)[1] for a in argv if a.startswith("run_dir=")]
    return [*argv, f"hydra.run.dir={given[-1]}"] if given else argv


def main() -> None:
    """The command line's entry: `train.py`, `python -m lmstack.train` and `lmstack train` all call this."""
    sys.argv = log_in_run_dir(sys.argv)
    hydra_main()


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    from lmstack.sweep.job import in_sweep, run_job_process

    if in_sweep():
        return run_job_process([sys.executable, "-m", "lmstack.train"])
    from hydra.core.hydra_config import HydraConfig

    from lmstack.config.store import replace_empty_mappings
    from lmstack.failures import one_line
    from lmstack.run import run

    replace_empty_mappings(cfg, HydraConfig.get().overrides.task)

    with one_line("train", cfg.get("run_dir")):  # the traceback goes to the run's train.log
        result = run(cfg)
    return result.get("objective", result.get("val/bpb"))  # what a sweeper minimises


if __name__ == "__main__":
    main()
