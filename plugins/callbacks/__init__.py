"""Training callbacks chosen in `conf/callbacks/` by `_target_`: spike detection, GC sync, stability
metrics, throughput."""


def log_metrics(trainer, metrics: dict) -> None:
    """Write metrics to every logger at the current step, once (`LightningModule.log` from a callback
    would repeat a periodic value at every later logging step)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
