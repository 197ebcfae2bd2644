"""The one way to extend lmstack, used as a user would: a file of theirs, outside the package, that registers a
component (`lmstack.registry.register`), loaded with `imports=[module]`; then the ordinary command runs it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import pytest

from lmstack.config import ConfigError
from lmstack.registry import lookup, names

from .helpers import ROOT, SHARED_DATA, SMALL, clean_env

WEB = sorted(str(p) for p in (SHARED_DATA / "web").glob("*.json*.gz"))[:2]

MY_FILTER = '''
"""A user's filter: documents without a given word go."""
from dataclasses import dataclass

from lmstack.registry import register


@register("filter", "needs_word")
@dataclass
class NeedsWord:
    word: str
    name: str = "needs_word"

    def __call__(self, doc):
        return None if self.word in doc.text.lower().split() else "missing_word"
'''


def lmstack(*args: str, cwd, pythonpath) -> subprocess.CompletedProcess:
    env = clean_env(PYTHONPATH=f"{pythonpath}:{ROOT}")
    return subprocess.run(
        [sys.executable, "-m", "lmstack.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.mark.slow
def test_a_users_filter_from_outside_the_package_runs_in_prepare(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_filters.py").write_text(textwrap.dedent(MY_FILTER))
    common = [f"inputs=[{WEB[0]},{WEB[1]}]", "prepare.tokenize=null", "prepare.dedup={}"]
    base = lmstack("prepare", *common, f"output_dir={tmp_path / 'all'}", cwd=tmp_path, pythonpath=mine)
    assert base.returncode == 0, base.stderr
    out = lmstack(
        "prepare",
        *common,
        f"output_dir={tmp_path / 'out'}",
        "prepare.imports=[my_filters]",
        "+prepare.filters.needs_word={word: you}",
        "prepare.num_workers=2",  # the filter is built in worker processes too
        cwd=tmp_path,
        pythonpath=mine,
    )
    assert out.returncode == 0, out.stderr
    every = [json.loads(line) for line in gzip.open(tmp_path / "all" / "documents.jsonl.gz", "rt")]
    kept = [json.loads(line) for line in gzip.open(tmp_path / "out" / "documents.jsonl.gz", "rt")]
    expected = [d["id"] for d in every if "you" in d["text"].lower().split()]  # after the default filters
    assert 0 < len(expected) < len(every)
    assert [d["id"] for d in kept] == expected
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["removed"]["needs_word/missing_word"] == len(every) - len(expected)


def test_an_unregistered_name_is_refused_with_what_is_registered():
    with pytest.raises(ConfigError, match=r"prepare.filters.nope='nope' is not registered; allowed: .*c4.*gopher"):
        lookup("filter", "nope", "prepare.filters.nope")
    assert {"sdpa", "eager"} <= set(names("attention")) and "adamw" in names("optimizer")
    assert {"cosine", "wsd"} <= set(names("schedule")) and {"arithmetic", "sort"} <= set(names("task"))
    assert {"exact", "minhash", "paragraph", "url"} == set(names("dedup"))


MY_STAGE = '''
"""A user's stage: go on training a checkpoint on one text, repeated, with the next-token objective."""
from dataclasses import dataclass

import torch

from lmstack.adapt.data import RowsDataModule
from lmstack.checkpoint import load_checkpoint
from lmstack.config.stage import StageSection
from lmstack.registry import register
from lmstack.stages.base import Stage
from lmstack.stages.trainer import set_budget
from lmstack.train.context import RunContext
from lmstack.train.module import build_module
from lmstack.train.objective import NextToken


@dataclass
class RepeatSection(StageSection):
    text: str = "the cat sat on the mat. "
    steps: int = 8


@register("stage", "repeat")
class Repeat(Stage):
    section = RepeatSection

    def build(self, trainer):
        model, tok, _ = load_checkpoint(self.spec.init_from)
        seq, batch = self.spec.data.seq_len, self.spec.data.batch_size
        ids = torch.tensor(tok.encode(self.options.text * 200).ids[: batch * (seq + 1)]).view(batch, seq + 1)
        rows = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
        set_budget(trainer, self.options.steps)
        context = RunContext(tokenizer_json=tok.to_str(), tokens_per_step=batch * seq)
        module = build_module(self.spec, model.cfg.to_dict(), self.options.steps * batch * seq, NextToken(), context)
        module.model.load_state_dict(model.state_dict())
        return module, RowsDataModule(rows, rows, batch, self.spec.seed)

    def before(self, trainer, module, data):
        return trainer.validate(module, datamodule=data, verbose=False)[0]

    def finish(self, trainer, module, data, before, owned):
        after = trainer.validate(module, datamodule=data, verbose=False)[0]
        print(f"repeat: val/loss {before['val/loss']:.4f} -> {after['val/loss']:.4f}")
        return {"val/loss_before": before["val/loss"], "val/loss": after["val/loss"], "steps": trainer.global_step}
'''


@pytest.mark.slow
def test_a_users_stage_from_outside_the_package_trains_end_to_end(tmp_path, small_ckpt):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_stage.py").write_text(textwrap.dedent(MY_STAGE))
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SMALL, "imports=[my_stage]", "stage.name=repeat", "+stage.steps=6",
         f"init_from={small_ckpt}", f"run_dir={run_dir}", "train.max_tokens=1000000"],
        capture_output=True, text=True, cwd=tmp_path, env=clean_env(PYTHONPATH=f"{mine}:{ROOT}"), timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    before, after = map(float, out.stdout.split("repeat: val/loss ")[1].split()[0:3:2])
    assert after < before  # six steps on one repeated sentence: it is learned
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    assert "name: repeat" in (run_dir / "config.yaml").read_text()
    refused = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SMALL, "imports=[my_stage]", "stage.name=repeat",
         "+stage.bogus=1", f"init_from={small_ckpt}", f"run_dir={tmp_path / 'refused'}"],
        capture_output=True, text=True, cwd=tmp_path, env=clean_env(PYTHONPATH=f"{mine}:{ROOT}"), timeout=600,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "unknown key stage.bogus; allowed keys in stage: name, steps, text" in refused.stderr + refused.stdout
