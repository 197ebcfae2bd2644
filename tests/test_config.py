"""Every option of every config group composes and validates; bad configs fail with the promised message."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmstack.config import ConfigError, validate

from .conftest import CONF, compose_cfg

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
    assert getattr(spec, group) is not None


def test_attention_types_set_kv_heads():
    from lmstack.config import model_config

    assert model_config(spec_of("attention=mha")).n_kv_heads == 4
    assert model_config(spec_of("attention=gqa")).n_kv_heads == 2
    assert model_config(spec_of("attention=mqa")).n_kv_heads == 1
    assert model_config(spec_of("attention=gqa", "attention.heads_per_kv=4")).n_kv_heads == 1


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["norm.kind=rms"], "norm.kind='rms' is not allowed; allowed: 'rmsnorm', 'layernorm'"),
        (["norm.placement=post"], "norm.placement='post' is not allowed; allowed: 'pre', 'reordered'"),
        (["model.n_layers=two"], "model.n_layers='two' has the wrong type; expected an integer"),
        (["model.n_layers=0"], "model.n_layers=0 is too small; it must be >= 1"),
        (["data.val_fraction=1.5"], "data.val_fraction=1.5 is too large; it must be <= 1.0"),
        (["+model.d_modle=64"], "unknown key model.d_modle; allowed keys in model: d_model,"),
        (["model.d_model=130"], "model.d_model=130 is not divisible by model.n_heads=4"),
        (["attention=gqa", "attention.n_kv_heads=3"], "model.n_heads=4 is not divisible by attention.n_kv_heads=3"),
        (["attention=mqa", "attention.n_kv_heads=2"], "attention.n_kv_heads=2 contradicts attention.type=mqa"),
        (["attention.backend=flash"], "attention.backend='flash' is not registered; allowed: eager, sdpa"),
        (
            ["schedule.name=linear"],
            "schedule.name='linear' is not allowed; allowed: constant, cosine, wsd, olmo_anneal",
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
            "norm.kind=rms",
            f"paths.output_root={tmp_path}",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert out.returncode != 0
    assert "norm.kind='rms' is not allowed" in out.stderr
    assert not (tmp_path / "cache").exists()
