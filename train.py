"""Pretrain a language model: `python train.py [overrides]`, `python train.py -m [sweep overrides]`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from lmstack.run import run

    return run(cfg)["val/bpb"]


if __name__ == "__main__":
    main()
