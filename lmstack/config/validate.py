"""Turn plain config dicts into typed dataclasses, failing with a message that names the key.

Hydra already refuses overrides of keys that do not exist; this catches everything else before any
work starts: keys added by `+key=`, experiment files, wrong types, values outside the allowed set.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import typing
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A composed config that cannot run; the message names the key and what is allowed."""


def type_name(tp) -> str:
    """A type as a config reader would name it (`list of int`, `null | number`)."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin is Union:
        return " | ".join("null" if a is type(None) else type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list of {type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(repr(a) for a in get_args(tp))}")
        return value
    if origin is Union:
        if value is None and type(None) in get_args(tp):
            return None
        options = [a for a in get_args(tp) if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message
            return _coerce(value, options[0], key)
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected {type_name(tp)}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected a mapping")
        return value
    if dataclasses.is_dataclass(tp):
        if hasattr(tp, "variant"):  # a tagged union (the `stage:` section): the class its `name` picks
            tp = tp.variant(value, key)
        return to_dataclass(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r} has the wrong type; expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected a number")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # Hydra reads `prompt=42` as a number; a string option takes its text
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected a string")
        return value
    return value


def check_values(node: Any, key: str = "") -> None:
    """Rules for every option, wherever it sits (typed sections, stage and plugin mappings, prepare):
    a float is finite (NaN and infinity pass every `<`/`>` bound unnoticed), a `seed` is an integer >= 0,
    `betas` are two numbers in [0, 1)."""
    if isinstance(node, dict):
        for name, value in node.items():
            check_values(value, _join(key, str(name)))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_values(value, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node!r} is not a finite number")
    name = key.rsplit(".", 1)[-1]
    if name == "seed" and node is not None:
        if isinstance(node, bool) or not isinstance(node, int) or node < 0:
            raise ConfigError(f"{key}={node!r}: a seed must be an integer >= 0")
    if name == "betas" and node is not None:
        ok = (
            isinstance(node, (list, tuple))
            and len(node) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in node)
        )
        if not ok:
            raise ConfigError(f"{key}={node!r}: betas must be two numbers in [0, 1)")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def to_dataclass(cls, node: Any, key: str):
    """Build dataclass `cls` from mapping `node` (config path `key`), checking keys, types and bounds.

    Field metadata may carry `min` / `max` (inclusive) bounds for numbers.
    """
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise ConfigError(f"{key} must be a mapping, got {node!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(node) - set(fields))
    if unknown:
        where = f" in {key}" if key else " at the top level"
        raise ConfigError(f"unknown key {_join(key, unknown[0])}; allowed keys{where}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in node:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required key {_join(key, name)}")
            continue
        path = _join(key, name)
        value = _coerce(node[name], hints[name], path)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if value is not None and lo is not None and value < lo:
            raise ConfigError(f"{path}={value!r} is too small; it must be >= {lo}")
        if value is not None and hi is not None and value > hi:
            raise ConfigError(f"{path}={value!r} is too large; it must be <= {hi}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # the dataclass's own checks (__post_init__), e.g. the model's shape
        raise ConfigError(str(e)) from None


def check_target(node: Any, key: str) -> None:
    """A `_target_` mapping: the target must import and accept the given keyword arguments."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError(f"{key} must be a mapping with a _target_")
    target = node["_target_"]
    module_name, _, attr = str(target).rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{key}._target_={target!r} cannot be imported ({e})") from None
    check_kwargs(obj, {k: v for k, v in node.items() if not k.startswith("_")}, key)


def check_kwargs(fn, kwargs: dict, key: str) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = ", ".join(p for p in params if p != "self")
        raise ConfigError(f"unknown key {key}.{unknown[0]}; allowed keys in {key}: {allowed}")


def field_(default=dataclasses.MISSING, *, min=None, max=None, **kw):
    """dataclasses.field with numeric bounds checked by `to_dataclass`."""
    meta = {k: v for k, v in (("min", min), ("max", max)) if v is not None}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)
