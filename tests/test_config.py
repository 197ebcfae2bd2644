"""Every option of every config group composes and validates; bad configs fail with the promised message."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmstack.config.schema import ConfigError, validate

from .helpers import CONF, compose_cfg

GROUPS = [
    "model",
    "attention",
    "norm",
    "optimizer",
    "schedule",
    "data_mix",
    "trainer",
    "strategy",
    "logger",
    "callbacks",
]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted(Path(CONF, g).glob("*.yaml"))]


def spec_of(*overrides):
    return validate(OmegaConf.to_container(compose_cfg(overrides), resolve=True))


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert {o for g, o in OPTIONS if g == "schedule"} == {"constant", "cosine", "wsd", "olmo_anneal"}
    assert {o for g, o in OPTIONS if g == "attention"} == {"mha", "gqa", "mqa"}
    assert {"tiny", "20m", "60m", "150m", "1b", "7b"} <= {o for g, o in OPTIONS if g == "model"}


# options that need a value only the user can give
EXTRA = {
    ("data_mix", "prepared"): ["data_mix.dir=/data/prepared/web"],
    ("data_mix", "prepared_mix"): ["data_mix.dirs.web=/data/web", "data_mix.dirs.high=/data/high"],
}


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_composes_and_validates(group, option):
    spec = spec_of(f"{group}={option}", *EXTRA.get((group, option), []))
    section = spec.model if group in ("attention", "norm") else spec  # mounted at model.attention, model.norm
    assert getattr(section, group) is not None


def test_attention_types_set_kv_heads():
    assert spec_of("attention=mha").model.n_kv_heads == 4
    assert spec_of("attention=gqa").model.n_kv_heads == 2
    assert spec_of("attention=mqa").model.n_kv_heads == 1
    assert spec_of("attention=gqa", "model.attention.heads_per_kv=4").model.n_kv_heads == 1


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.norm.kind=rms"], "model.norm.kind='rms' is not allowed; allowed: 'rmsnorm', 'layernorm'"),
        (["model.norm.placement=post"], "model.norm.placement='post' is not allowed; allowed: 'pre', 'reordered'"),
        (["model.n_layers=two"], "model.n_layers='two' has the wrong type; expected an integer"),
        (["model.n_layers=0"], "model.n_layers=0 is too small; it must be >= 1"),
        (["data.val_fraction=1.5"], "data.val_fraction=1.5 is too large; it must be <= 1.0"),
        (["+model.d_modle=64"], "unknown key model.d_modle; allowed keys in model: attention, d_model,"),
        (["model.d_model=130"], "model.d_model=130 is not divisible by model.n_heads=4"),
        (
            ["attention=gqa", "model.attention.n_kv_heads=3"],
            "model.n_heads=4 is not divisible by attention.n_kv_heads=3",
        ),
        (["attention=mqa", "model.attention.n_kv_heads=2"], "attention.n_kv_heads=2 contradicts attention.type=mqa"),
        (["model.attention.backend=flash"], "model.attention.backend='flash' is not registered; allowed: eager, sdpa"),
        (
            ["schedule.name=linear"],
            "schedule.name='linear' is not registered; allowed: constant, cosine, olmo_anneal, wsd",
        ),
        (["+trainer.max_steps=10"], "trainer.max_steps is set by lmstack"),
        (["+trainer.acelerator=cpu"], "unknown key trainer.acelerator; allowed keys in trainer: accelerator,"),
        (["logger=csv", "+logger.flush_sec=3"], "unknown key logger.flush_sec"),
        (["+seeed=3"], "unknown key seeed; allowed keys at the top level:"),
        (
            ["logger._target_=lightning.pytorch.loggers.NoSuchLogger"],
            "logger._target_='lightning.pytorch.loggers.NoSuchLogger' cannot be imported",
        ),
        (["data.seq_len=4096"], "data.seq_len=4096 exceeds model.max_seq_len=1024"),
        (["+imports=[no_such_plugin_module]"], "imports: cannot import 'no_such_plugin_module'"),
        (["optimizer.betas=0.9"], "optimizer.betas=0.9 has the wrong type; expected list of float"),
    ],
)
def test_bad_configs_fail_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        spec_of(*overrides)
    assert message in str(e.value)


def test_unknown_group_option_is_refused_by_hydra():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="attention"):
        compose_cfg(["attention=flash"])


@pytest.mark.slow
def test_bad_config_fails_before_any_work(tmp_path):
    """The CLI exits with the message before preparing data or creating a run."""
    import subprocess
    import sys

    root = Path(CONF).parent
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            "model.norm.kind=rms",
            f"paths.output_root={tmp_path}",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert out.returncode != 0
    assert "model.norm.kind='rms' is not allowed" in out.stderr
    assert not (tmp_path / "cache").exists()


def test_the_composed_default_config_is_the_schemas_defaults(monkeypatch):
    """`python train.py` with no overrides runs exactly what the dataclasses say: each section of the composed
    default config equals its dataclass's defaults, so a reader of the schema gets the real values."""
    import dataclasses

    from lmstack.config.schema import DataSection, LossSection, OptimizerSection, ScheduleSection, TrainSection
    from lmstack.model.config import ModelConfig

    monkeypatch.delenv("LMSTACK_CACHE", raising=False)
    composed = OmegaConf.to_container(compose_cfg(), resolve=True)
    for key, cls in [
        ("model", ModelConfig),
        ("optimizer", OptimizerSection),
        ("schedule", ScheduleSection),
        ("train", TrainSection),
        ("loss", LossSection),
        ("data", DataSection),
    ]:
        assert composed[key] == dataclasses.asdict(cls()), key


def _repeated(body: dict, defaults: dict, where: str) -> list[str]:
    """Keys of `body` whose value is the default (nested mappings compared key by key)."""
    found = []
    for key, value in body.items():
        if key == "defaults" or key not in defaults:
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            found += _repeated(value, defaults[key], f"{where}{key}.")
        elif value == defaults[key]:
            found.append(f"{where}{key}")
    return found


def _section_defaults(cls) -> dict:
    """A dataclass's defaults by field (nested sections as mappings); required fields have none."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


GROUP_FILES = [
    (g, p.name)
    for g in ("model", "attention", "norm", "optimizer", "schedule", "stage", "prepare", "data_mix")
    for p in sorted(Path(CONF, g).glob("*.yaml"))
]


@pytest.mark.parametrize("group,name", GROUP_FILES, ids=[f"{g}/{n}" for g, n in GROUP_FILES])
def test_group_files_carry_only_what_differs_from_the_schema(group, name):
    """No option file repeats a default of the dataclass it fills (a repeated default goes stale when the
    dataclass changes): every group with a schema, the stages' (each against its own section, and the
    sections a stage file sets beside it), the prepare pipelines' and the data mixes' included."""
    import typing

    import yaml

    from lmstack.config.prepare import PrepareSection
    from lmstack.config.schema import DataMixSection, OptimizerSection, RunSpec, ScheduleSection, SourceSection
    from lmstack.model.config import AttentionConfig, ModelConfig, NormConfig
    from lmstack.registry import lookup

    body = yaml.safe_load(Path(CONF, group, name).read_text()) or {}
    if group == "stage":  # a global file: `stage` against its stage's section, the rest against theirs
        hints = typing.get_type_hints(RunSpec)
        stage = lookup("stage", body["stage"]["name"], "stage").section
        found = _repeated(body["stage"], _section_defaults(stage), "stage.")
        for key in set(body) - {"stage", "defaults"}:
            found += _repeated(body[key], _section_defaults(hints[key]), f"{key}.")
    elif group == "data_mix":
        found = _repeated(body, _section_defaults(DataMixSection), "")
        for i, src in enumerate(body.get("sources") or []):
            found += _repeated(src, _section_defaults(SourceSection), f"sources[{i}].")
    else:
        cls = {
            "model": ModelConfig,
            "attention": AttentionConfig,
            "norm": NormConfig,
            "optimizer": OptimizerSection,
            "schedule": ScheduleSection,
            "prepare": PrepareSection,
        }[group]
        found = _repeated(body, _section_defaults(cls), "")
    assert not found, f"{group}/{name}: {', '.join(found)} repeat the default"
