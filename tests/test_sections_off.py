"""A mapping of steps switches off as a whole: `prepare.filters=null` or `{}` (and dedup, decontaminate, pii)
runs none of its steps; `{}` on the command line replaces the defaults instead of merging into them."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from lmstack.config.store import compose

from .helpers import SHARED_DATA

INPUT = str(SHARED_DATA / "web" / "c4-sample.01.json.gz")


def stages(out) -> list[str]:
    return [s["name"] for s in json.loads((out / "stats.json").read_text())["stages"]]


@pytest.mark.parametrize("off", ["null", "{}"])
def test_prepare_sections_switched_off_as_a_whole(tmp_path, off):
    from lmstack.cli import main

    out = tmp_path / "out"
    main(["prepare", f"inputs=[{INPUT}]", f"output_dir={out}", "prepare.tokenize=null", f"prepare.filters={off}",
          f"prepare.dedup={off}", f"prepare.decontaminate={off}", "prepare.pii=null"])  # fmt: skip
    assert stages(out) == ["read"]
    main(["prepare", f"inputs=[{INPUT}]", f"output_dir={tmp_path / 'filters-only'}", "prepare.tokenize=null",
          f"prepare.filters={off}"])  # fmt: skip
    assert stages(tmp_path / "filters-only") == ["read", "url_dedup", "exact_dedup", "minhash_dedup"]


def test_an_empty_mapping_on_the_command_line_replaces_the_default():
    cfg = compose("prepare", ["inputs=[a]", "output_dir=b", "prepare.filters={}", "prepare.dedup={ }"])
    assert OmegaConf.to_container(cfg.prepare.filters) == {} and OmegaConf.to_container(cfg.prepare.dedup) == {}
    kept = compose("prepare", ["inputs=[a]", "output_dir=b", "prepare.filters.c4={}"])  # one filter's options
    assert "language" in kept.prepare.filters and OmegaConf.to_container(kept.prepare.filters.c4) == {}
    assert OmegaConf.to_container(compose("train", ["callbacks={}"]).callbacks) == {}
