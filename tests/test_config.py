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


@pytest.mark.parametrize("group", ["model", "attention", "norm", "optimizer", "schedule"])
def test_group_files_carry_only_what_differs_from_the_schema(group):
    """No option file repeats a default of the dataclass it fills (a repeated default goes stale when the
    dataclass changes)."""
    import dataclasses

    import yaml

    from lmstack.config.schema import OptimizerSection, ScheduleSection
    from lmstack.model.config import AttentionConfig, ModelConfig, NormConfig

    cls = {
        "model": ModelConfig,
        "attention": AttentionConfig,
        "norm": NormConfig,
        "optimizer": OptimizerSection,
        "schedule": ScheduleSection,
    }[group]
    defaults = dataclasses.asdict(cls())
    for path in sorted(Path(CONF, group).glob("*.yaml")):
        body = yaml.safe_load(path.read_text()) or {}
        for key, value in body.items():
            if key == "defaults":
                continue
            if isinstance(value, dict):
                repeated = [k for k, v in value.items() if defaults[key].get(k) == v]
                assert not repeated, f"{path.name}: {key}.{repeated[0]} repeats the default"
            else:
                assert defaults[key] != value, f"{path.name}: {key}: {value!r} repeats the default"
