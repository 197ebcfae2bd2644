"""The documentation's generated reference: every key of every config section and command has its type, default
and meaning, straight from the dataclasses (the strict site build renders it)."""

from __future__ import annotations

import dataclasses
import typing

from lmstack.config.reference import markdown, undocumented


def test_every_key_has_a_meaning_written_beside_it():
    assert undocumented() == []


def test_the_reference_lists_every_key_of_every_section_and_stage():
    from lmstack.config.commands import COMMAND_ARGS
    from lmstack.config.prepare import PrepareSection
    from lmstack.config.schema import RunSpec
    from lmstack.registry import table

    text = markdown()

    def keys(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            inner = [a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)]
            if inner and f.name != "stage":
                yield from keys(inner[0], f"{prefix}{f.name}.")
            elif f.name != "stage":
                yield f"{prefix}{f.name}"

    expected = [*keys(RunSpec, ""), *keys(PrepareSection, "prepare.")]
    for stage in table("stage").values():
        expected += keys(stage.section, "stage.")
    for args in COMMAND_ARGS.values():
        expected += [k for k in keys(args, "") if not k.startswith("prepare.")]
    missing = [k for k in expected if f"| `{k}` |" not in text]
    assert not missing and "| `stage.beta` | float | `0.1` |" in text  # DPO's own default
