"""Typed config: the schema behind `conf/` (`schema`), turning plain dicts into checked dataclasses
(`validate`), and composing `conf/` with Hydra (`compose`). The package itself imports only `validate`, so
the model's config can use it without importing the schema."""

from .validate import ConfigError, check_values, field_, to_dataclass

__all__ = ["ConfigError", "check_values", "field_", "to_dataclass"]
