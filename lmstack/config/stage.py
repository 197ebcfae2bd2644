"""The `stage:` section: a tagged union. Every stage (`lmstack.stages`: pretrain, anneal, sft, dpo, rlvr, or a
user's own) is a registered component with its own dataclass, a subclass of `StageSection`; `stage.name` picks
it, and `to_dataclass` checks the rest of the section against that class (`variant`), with the same messages as
every other section. Pretraining is the stage of a config that names none."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StageSection:
    name: str = "pretrain"  # a registered stage (lmstack.registry, kind `stage`)

    @classmethod
    def variant(cls, node: dict, key: str) -> type:
        """The dataclass of the stage `node` names (its registered stage's `section`)."""
        from lmstack.registry import lookup

        name = node.get("name", "pretrain") if isinstance(node, dict) else "pretrain"
        return lookup("stage", str(name), f"{key}.name").section
