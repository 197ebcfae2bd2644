"""The job behind `python train.py`: compose (validate the config), build (the stage's trainer, data and module),
fit, finish (evaluate, record, report). Every stage, pretraining included, is a registered component
(`lmstack.stages`) driven the same way; returns the metrics a sweeper optimises (e.g. `val/bpb`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from lmstack.config.schema import validate
from lmstack.registry import lookup


def run(cfg: DictConfig) -> dict:
    from lmstack.console import quiet_dependencies
    from lmstack.rundir import hold_run_dir

    quiet_dependencies()
    config = OmegaConf.to_container(cfg, resolve=True)
    spec = validate(config)
    stage = lookup("stage", spec.stage.name, "stage.name")(spec, config)
    run_dir = Path(spec.run_dir)
    with hold_run_dir(run_dir, stage.resume_from, init_from=spec.init_from, ckpt_path=spec.ckpt_path) as owned:
        if owned is not None:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        L.seed_everything(spec.seed, workers=True)
        trainer = stage.trainer()
        module, data = stage.build(trainer)
        before = stage.before(trainer, module, data)
        trainer, module, data = stage.fit(trainer, module, data)
        return stage.finish(trainer, module, data, before, owned)
