"""A wheel built from the repository runs outside the checkout: installed in a fresh venv (its dependencies
taken from this interpreter's site-packages, the project's own code only from the wheel), `lmstack plan` and
a tiny `python -m lmstack.train` run from a folder far from the checkout, with the config shipped inside."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_plans_and_trains_from_another_directory(tmp_path):
    build = tmp_path / "build"
    shutil.copytree(
        ROOT, build / "src", ignore=shutil.ignore_patterns(".venv", "build", "*.egg-info", "outputs", ".git")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(build), "."],
        cwd=build / "src",
        check=True,
    )
    (wheel,) = build.glob("lmstack-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)], check=True
    )
    venv_site = next((venv / "lib").glob("python3*/site-packages"))
    # the dependencies only, as a plain path entry: the checkout's editable-install hook is not loaded
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}

    where = subprocess.run(
        [str(py), "-c", "import lmstack, lmstack.plugins; print(lmstack.__file__); print(lmstack.plugins.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(str(venv_site) in p for p in where), where

    plan = subprocess.run(
        [str(venv / "bin" / "lmstack"), "plan", "params=1e8", "tokens=2e9"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert "python train.py model.d_model=" in plan.stdout and "GPU-hours" in plan.stdout

    train = subprocess.run(
        [str(py), "-m", "lmstack.train", "data.max_docs=60", "data.vocab_size=300", "data.seq_len=32",
         "data.batch_size=2", "data.val_fraction=0.1", "train.max_tokens=128", "train.sample_tokens=0",
         "trainer.enable_progress_bar=false", f"paths.output_root={elsewhere / 'out'}",
         f"paths.cache_dir={elsewhere / 'cache'}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert "val/bpb before:" in train.stdout
    (run_dir,) = (elsewhere / "out" / "runs").glob("*/*")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "train.log").is_file()
    assert Path(ROOT / "conf" / "train.yaml").read_text() == next(venv_site.glob("lmstack/conf/train.yaml")).read_text()
    assert (venv_site / "lmstack" / "conf" / "hydra" / "launcher" / "slurm.yaml").is_file()  # nested config groups
