"""Where `conf/` is, and composing it with Hydra; the schema's defaults registered as Hydra's base config.

Every entry point's config (`conf/train.yaml`, `conf/generate.yaml`, ...) starts its defaults list with
`<name>_schema`: the dataclass defaults of its typed sections, registered here in Hydra's ConfigStore.
So the defaults are written once (in the dataclasses), the YAML files carry only what differs, and every
key can still be overridden on the command line without `+`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def conf_dir() -> str:
    """The config tree: `lmstack/conf` in an installed wheel (package data), `conf/` in a checkout."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no conf/ beside {_PACKAGE}: the lmstack installation is incomplete")


def defaults_of(spec_cls, groups: set[str]) -> dict:
    """The defaults of a typed spec as a plain dict: its sections that need no value (all of theirs, nested),
    and its plain options; config `groups` without defaults (trainer, callbacks, ...) are left to their YAML."""
    hints = typing.get_type_hints(spec_cls)
    out = {}
    for f in dataclasses.fields(spec_cls):
        if dataclasses.is_dataclass(hints[f.name]):
            try:
                out[f.name] = dataclasses.asdict(hints[f.name]())
            except TypeError:  # a section with required keys (data_mix): its group provides them
                pass
        elif f.name in groups:
            continue
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = "???"  # required: Hydra reports it missing
    return out


@functools.cache
def register() -> None:
    """Store `<config>_schema` in Hydra's ConfigStore for `train` (RunSpec) and every command's arguments
    (`lmstack.config.commands`), once per process; and the `lmstack_stamp` resolver (lmstack.config.launch)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from .commands import COMMAND_ARGS
    from .launch import launch_stamp
    from .schema import RunSpec

    if not OmegaConf.has_resolver("lmstack_stamp"):  # the run directory's name, one per launch
        OmegaConf.register_new_resolver("lmstack_stamp", launch_stamp, use_cache=True)
    if not OmegaConf.has_resolver("lmstack_ladder"):  # a ladder rung's shape, batch, LR and budget (lmstack.plan)
        from lmstack.plan import rung_value

        OmegaConf.register_new_resolver("lmstack_ladder", rung_value)
    store = ConfigStore.instance()
    groups = {p.name for p in Path(conf_dir()).iterdir() if p.is_dir()}
    for name, cls in {"train": RunSpec, **COMMAND_ARGS}.items():
        store.store(name=f"{name}_schema", node=defaults_of(cls, groups))


@functools.cache
def register_stages() -> None:
    """Each registered stage's section defaults as `stage_schema/<name>`, which `conf/stage/<name>.yaml` starts
    from, so a stage's options are overridden without `+` and its file carries only what differs. It imports
    the stages (and Lightning with them): called for the training config only, not for every command."""
    from hydra.core.config_store import ConfigStore

    from lmstack.registry import table

    store = ConfigStore.instance()
    for name, stage in table("stage").items():
        store.store(group="stage_schema", name=name, node=defaults_of(stage.section, set()))


def compose(name: str, overrides: list[str] = (), return_hydra_config: bool = False):
    """`conf/<name>.yaml` with `overrides`, as an unresolved DictConfig (what `@hydra.main` would get)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    if name == "train":
        register_stages()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    return replace_empty_mappings(cfg, overrides)


def replace_empty_mappings(cfg, overrides):
    """An override `KEY={}` empties the mapping at KEY (Hydra merges a mapping given on the command line into
    the default one, so `prepare.filters={}` kept every filter): a section of steps switches off with {} as it
    does with null. Called on every composed config, `@hydra.main`'s included (lmstack.train)."""
    import re

    from omegaconf import OmegaConf

    for override in overrides:
        m = re.fullmatch(r"\+{0,2}([\w.-]+)\s*=\s*\{\s*\}", override.strip())
        if m and OmegaConf.select(cfg, m.group(1)) is not None:
            OmegaConf.update(cfg, m.group(1), {}, merge=False)
    return cfg
