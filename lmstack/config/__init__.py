"""Typed config: the schema behind `conf/` and its validation."""

from .schema import RunSpec, model_config, validate
from .validate import ConfigError, check_values

__all__ = ["ConfigError", "check_values", "RunSpec", "model_config", "validate"]
