"""What reaches the console: lmstack's own lines (what a run will do, its progress, its evals, its summary) and
its warnings, not the dependencies' chatter. Each filter is aimed at one message where its library raises it,
so nothing of lmstack's is silenced: Lightning's vendor tip, its accelerator and seed lines (the run says
what it uses itself), its end-of-fit line and its advice on a run shorter than its logging interval, and torch's
deprecation of the `LeafSpec` check that Lightning's pytree helper still makes on every step. How lines look:
`ConsoleFormatter` here, chosen with the log file's format in conf/hydra/job_logging/lmstack.yaml."""

from __future__ import annotations

import functools
import logging
import warnings

# Lightning's INFO lines a run does not need on the console (rank_zero_info / seed_everything); the end of a
# fit at its budget is the run's own closing summary
LIGHTNING_NOISE = (
    "💡 Tip:", "GPU available:", "TPU available:", "HPU available:", "Seed set to", "`Trainer.fit` stopped: `max_steps="
)  # fmt: skip


class ConsoleFormatter(logging.Formatter):
    """INFO lines as plain text, as the run's printed lines read; anything else says its level and source (the
    log file keeps times and loggers for every line: conf/hydra/job_logging/lmstack.yaml)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname} [{record.name}] {text}"


class _Drop(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message[:48] for p in self.prefixes)


@functools.cache
def quiet_dependencies() -> None:
    """Install the filters once per process (every entry point calls it)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed"):  # fmt: skip
        logging.getLogger(name).addFilter(_Drop(LIGHTNING_NOISE))
    logging.getLogger("litdata").setLevel(logging.WARNING)  # one INFO line per dataset opened otherwise
    leaf_spec = r"`isinstance\(treespec, LeafSpec\)` is deprecated"  # torch, about Lightning's _pytree helper
    warnings.filterwarnings("ignore", message=leaf_spec, category=FutureWarning)
    # Lightning, about its own logging interval on a run shorter than it (lmstack logs at the last step anyway)
    warnings.filterwarnings("ignore", message="The number of training batches .* is smaller than the logging")
