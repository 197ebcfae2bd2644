"""The one way to extend lmstack: components registered by (kind, name).

A filter, a dedup step, a schedule, an optimizer, a stage, an adaptation task or an attention backend is a
class or function registered under its kind with `@register(kind, name)`. Configuration names it
(`prepare.filters.<name>`, `schedule.name`, `stage.name`, ...) and finds it here; a user's own component is a
module of theirs that registers one, loaded with `imports=[module]` (`import_modules`) before the config is
checked. Nothing in lmstack keeps a closed list of choices.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from lmstack.config.validate import ConfigError

KINDS = ("filter", "dedup", "schedule", "optimizer", "stage", "task", "attention")
_TABLES: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
# the modules that register lmstack's own components: imported on the first look-up of their kind, so that
# asking for a kind never depends on which part of lmstack happened to be imported first
_BUILTIN = {
    "filter": ("lmstack.data.curate.filters", "lmstack.data.curate.blocklists"),
    "dedup": ("lmstack.data.curate.dedup",),
    "schedule": ("lmstack.train.schedules",),
    "optimizer": ("lmstack.train.optim", "lmstack.train.muon"),
    "stage": ("lmstack.stages",),
    "task": ("lmstack.tasks.verifiable",),
    "attention": ("lmstack.model.attention",),
}


def entries(kind: str) -> dict[str, Any]:
    """The live mapping of one kind as registered so far (no built-in module imported)."""
    if kind not in _TABLES:
        raise KeyError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
    return _TABLES[kind]


def register(kind: str, name: str) -> Callable:
    """Decorator: make the class or function selectable as the `kind` named `name` (a later registration of
    the same name replaces the earlier one, so a plugin can override a built-in)."""

    def wrap(obj):
        entries(kind)[name] = obj
        return obj

    return wrap


def table(kind: str) -> dict[str, Any]:
    """The live mapping name -> component of one kind (lmstack's own included)."""
    for module in _BUILTIN[kind]:
        importlib.import_module(module)
    return entries(kind)


def names(kind: str) -> list[str]:
    return sorted(table(kind))


def lookup(kind: str, name: str, key: str) -> Any:
    """The component `name` of `kind`; a ConfigError naming the config `key` and what is registered."""
    found = table(kind).get(name)
    if found is None:
        raise ConfigError(
            f"{key}={name!r} is not registered; allowed: {', '.join(names(kind))} (a module of yours registers "
            f"more {kind}s with lmstack.registry.register, loaded through imports=[module])"
        )
    return found


def import_modules(modules: list[str], key: str = "imports") -> None:
    """Import the user's modules that register components (the `imports` option)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"{key}: cannot import {name!r} ({e})") from None
