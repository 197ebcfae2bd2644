"""Expected failures end in one line that names them; the traceback goes to the run's log file.

What lmstack refuses (a bad value, a damaged checkpoint, a folder it may not write, a missing input), a run that
stopped itself, and a full disk are expected: the user reads one line, `lmstack COMMAND: ...`, last. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging

from .diskfull import describe


def expected() -> tuple[type[BaseException], ...]:
    from .ownership import OwnershipError
    from .train.step_guard import TrainingStopped

    return (ValueError, FileNotFoundError, OwnershipError, TrainingStopped)


def _to_log_files(exc: BaseException) -> None:
    """The traceback into every log file the process writes (Hydra's run_dir/train.log), not the console."""
    record = logging.LogRecord(
        "lmstack", logging.ERROR, __file__, 0, "failed", None, (type(exc), exc, exc.__traceback__)
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextlib.contextmanager
def one_line(command: str, where: str | None = None):
    """Turn an expected failure inside the block into `SystemExit('lmstack COMMAND: ...')`; `where`: the folder
    the command writes, named when a full disk's error names no file."""
    try:
        yield
    except SystemExit:
        raise
    except Exception as e:
        line = describe(e, where)
        if line is None and isinstance(e, expected()):
            line = str(e) or type(e).__name__
        if line is None:
            raise
        _to_log_files(e)
        raise SystemExit(f"lmstack {command}: {line}") from None
