"""Typed config: the schema behind `conf/` and its validation."""

from .schema import RunSpec, model_config, validate
from .validate import ConfigError

__all__ = ["ConfigError", "RunSpec", "model_config", "validate"]
