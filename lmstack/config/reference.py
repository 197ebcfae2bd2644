"""The configuration reference, generated from the code so that it cannot drift from it: every section of the
training config (each stage's own included), the prepare pipeline and every command's arguments, each key
with its type, default and doc. A key's doc is the comment beside its field, or the comment lines right above
it; `undocumented()` lists the keys that have none (a test keeps that list empty)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing

from .validate import type_name


def field_docs(cls) -> dict[str, str]:
    """Field name -> doc, from the source of `cls` and of its dataclass bases (a subclass's doc wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        lines = textwrap.dedent(inspect.getsource(klass)).splitlines()
        for node in ast.parse("\n".join(lines)).body[0].body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            line = lines[node.lineno - 1]
            doc = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            above, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            docs[node.target.id] = " ".join([*above, doc]).strip()
    return docs


def _nested(tp) -> type | None:
    """The dataclass a field holds (itself, or inside Optional / list), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
    return inner[0] if inner else None


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def rows(cls, prefix: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) of every key of `cls`, nested sections flattened under their key."""
    hints, docs, out = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        key, nested = f"{prefix}{f.name}", _nested(hints[f.name])
        if nested is not None and nested is not cls:
            if docs.get(f.name):
                out.append((key, type_name(hints[f.name]), _default(f), docs[f.name]))
            out += rows(nested, f"{key}.")
        else:
            out.append((key, type_name(hints[f.name]), _default(f), docs.get(f.name, "")))
    return out


def sections() -> list[tuple[str, str, type]]:
    """(title, key prefix, dataclass) of every configurable section."""
    from lmstack.registry import table

    from .commands import COMMAND_ARGS
    from .prepare import PrepareSection
    from .schema import RunSpec

    hints = typing.get_type_hints(RunSpec)
    out = [("`python train.py`: top-level keys", "", None)]
    for f in dataclasses.fields(RunSpec):
        nested = _nested(hints[f.name])  # a section, or an optional one (`ladder`)
        if nested is not None and f.name != "stage":
            out.append((f"`{f.name}`", f"{f.name}.", nested))
    for name, stage in sorted(table("stage").items()):
        out.append((f"`stage=` {name}", "stage.", stage.section))
    out.append(("`lmstack prepare`: the `prepare` section", "prepare.", PrepareSection))
    for name, args in COMMAND_ARGS.items():
        out.append((f"`lmstack {name}`", "", args))
    return out


def top_level_rows() -> list[tuple[str, str, str, str]]:
    """The training config's own keys that are not sections."""
    from .schema import RunSpec

    hints = typing.get_type_hints(RunSpec)
    return [r for r in rows(RunSpec, "") if "." not in r[0] and _nested(hints[r[0]]) is None]


def _table(prefix: str, cls) -> list[tuple[str, str, str, str]]:
    if cls is None:
        return top_level_rows()
    if prefix == "" and "prepare" in {f.name for f in dataclasses.fields(cls)}:  # `lmstack prepare`'s arguments:
        return [r for r in rows(cls, prefix) if not r[0].startswith("prepare.")]  # the section has its own table
    return rows(cls, prefix)


def markdown() -> str:
    """The whole reference as Markdown tables, one per section."""
    parts = []
    for title, prefix, cls in sections():
        lines = [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, tp, default, doc in _table(prefix, cls):
            cells = [c.replace("|", "\\|") for c in (tp, default, doc)]
            lines.append(f"| `{key}` | {cells[0]} | `{cells[1]}` | {cells[2]} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def undocumented() -> list[str]:
    """Keys without a doc, as `section: key`."""
    missing = []
    for title, prefix, cls in sections():
        for key, _, _, doc in _table(prefix, cls):
            if not doc:
                missing.append(f"{title}: {key}")
    return missing
