"""Attention-backend plugins register by import and fail clearly when their library is missing."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from lmstack.config.schema import validate
from lmstack.model import ATTENTION_BACKENDS

from .helpers import compose_cfg


@pytest.mark.parametrize(
    "module,name,package",
    [
        ("lmstack.plugins.attention.flash_attn", "flash_attn", "flash_attn"),
        ("lmstack.plugins.attention.xformers", "xformers", "xformers"),
    ],
)
def test_gpu_backend_plugins_register_and_explain_a_missing_install(module, name, package):
    cfg = compose_cfg([f"imports=[{module}]", f"model.attention.backend={name}"])
    spec = validate(OmegaConf.to_container(cfg, resolve=True))
    assert spec.model.attention.backend == name and name in ATTENTION_BACKENDS
    if importlib.util.find_spec(package) is None:
        q = torch.randn(1, 2, 4, 8)
        with pytest.raises(ImportError, match=rf"attention.backend={name} needs the"):
            ATTENTION_BACKENDS[name](q, q, q, 0)
