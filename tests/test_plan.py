"""`lmstack plan`: Chinchilla arithmetic against hand computations, and overrides that compose and validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmstack.config.schema import validate
from lmstack.plan import PlanError, hours, ladder_batch_tokens, ladder_lr, overrides, peak_flops, solve

from .helpers import compose_cfg

ROOT = Path(__file__).resolve().parents[1]


def test_solve_by_hand():
    b = solve(params=7e9, tokens=150e9)
    assert b.flops == pytest.approx(6 * 7e9 * 150e9)
    assert solve(flops=6.3e21, params=7e9).tokens == pytest.approx(150e9)
    assert solve(flops=6.3e21, tokens=150e9).params == pytest.approx(7e9)
    one = solve(params=1e9)
    assert one.tokens == 20e9 and one.flops == pytest.approx(1.2e20)
    assert solve(tokens=40e9, tokens_per_param=10).params == pytest.approx(4e9)
    c = solve(flops=1.2e20)  # C = 6 N (20 N): N = sqrt(C / 120)
    assert c.params == pytest.approx(1e9) and c.tokens == pytest.approx(20e9)
    with pytest.raises(PlanError, match="at most two"):
        solve(1e20, 1e9, 1e10)
    with pytest.raises(PlanError, match="give one or two"):
        solve()


def test_the_tutorials_7b_on_150b_tokens_costs_about_9k_dollars():
    h = hours(6 * 7e9 * 150e9, peak_flops("h100"), 0.4)
    assert h == pytest.approx(6.3e21 / (989e12 * 0.4) / 3600)
    assert 8_000 < 2 * h < 10_000
    with pytest.raises(PlanError, match="not in the table"):
        peak_flops("tpu9")


def test_ladder_rules():
    assert ladder_batch_tokens(108e6) == 160 * 2048  # the anchor
    assert ladder_batch_tokens(8 * 108e6) == 640 * 2048  # (8)^(2/3) = 4
    assert ladder_batch_tokens(108e6, seq_len=4096) == 80 * 4096  # same tokens, longer sequences
    assert ladder_lr(108e6) == pytest.approx(0.0047) and ladder_lr(8 * 108e6) == pytest.approx(0.0047 / 2)


@pytest.mark.parametrize("n", [20e6, 150e6, 7e9])
def test_overrides_compose_into_a_config_that_validates_with_about_n_parameters(n):
    cfg, ov = overrides(solve(params=n), seq_len=2048)
    spec = validate(OmegaConf.to_container(compose_cfg(ov), resolve=True))
    got = spec.model.non_embedding_params()
    assert got == cfg.non_embedding_params() and abs(got / n - 1) < 0.1
    assert spec.train.max_tokens == int(20 * n) and spec.schedule.name == "olmo_anneal"
    assert spec.model.d_model % spec.model.n_heads == 0


@pytest.mark.slow
def test_plan_cli_prints_the_table_and_overrides():
    out = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "plan", "params=7e9", "tokens=150e9", "gpu=h100", "usd_per_gpu_hour=2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "| H100 | 989.0 | 4,424 |" in out.stdout and "$8,847" in out.stdout
    assert "this CPU (fp32, measured)" in out.stdout and "python train.py model.d_model=" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "plan", "params=1e9", "tokens=1e10", "flops=1e20"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "give at most two" in bad.stderr
