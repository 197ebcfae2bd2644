"""The documentation's generated reference: every key of every config section and command has its type, default
and meaning, straight from the dataclasses (the strict site build renders it)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

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


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(page, command line, its words) of every `python train.py` and `lmstack` command in the docs' and the
    README's bash blocks (multirun sweeps and lm-eval's own command line aside)."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for page in [*sorted((root / "docs").rglob("*.md")), root / "README.md"]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for cmd in re.split(r"&&|;", line.split("  #")[0]):
                    try:
                        words = shlex.split(cmd)
                    except ValueError:
                        continue
                    while words and "=" in words[0] and words[0].split("=")[0].isupper():
                        words = words[1:]  # environment assignments
                    if words[:1] and words[0].endswith(("python", "python3")):
                        words = words[1:]
                    if words[:1] == ["train.py"] and "-m" not in words:
                        found.append((page.name, cmd.strip(), ["train", *words[1:]]))
                    elif words[:1] == ["lmstack"] and len(words) > 1 and words[1] not in ("lm_eval", "train"):
                        found.append((page.name, cmd.strip(), words[1:]))
    return found


@pytest.mark.slow
def test_every_documented_command_composes_and_validates():
    """The docs' commands work on the current code: each composes and passes the same checks a run makes
    before any work (the files they name are placeholders, so nothing runs)."""
    from omegaconf import OmegaConf

    from lmstack.cli_args import command_args
    from lmstack.config.schema import validate
    from lmstack.config.store import compose

    commands, failed = documented_commands(), []
    assert len(commands) > 40
    for page, line, (command, *args) in commands:
        try:
            if command == "train":
                cfg = compose("train", args)
                OmegaConf.set_struct(cfg, False)
                cfg.run_dir = "x"
                validate(OmegaConf.to_container(cfg, resolve=True))
            else:
                command_args(command, args)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - every failure is reported, with its page
            failed.append(f"{page}: {line}: {str(e).splitlines()[0]}")
    assert not failed, "\n".join(failed)
