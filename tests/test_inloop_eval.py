"""Bits per byte of eval sets against a hand computation, and the in-loop evaluator in a real fit: the same
numbers as `lmstack eval` on the final checkpoint, in TensorBoard and evals.jsonl."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmstack.config.schema import ConfigError, validate
from lmstack.data.tokenizer import eos_id, token_byte_lengths, train_bpe
from lmstack.eval.bpb import blocks_from_prepared, blocks_from_texts, bpb_sums, read_jsonl_texts
from lmstack.model import ModelConfig, Transformer

from .helpers import SHARED_DATA, SMALL_EVALS

ROOT = Path(__file__).resolve().parents[1]
C4 = str(SHARED_DATA / "web" / "c4-sample.01.json.gz")


@pytest.fixture(scope="module")
def tok():
    return train_bpe(read_jsonl_texts(C4), 400)


def test_windows_cover_every_token_once(tok):
    texts = read_jsonl_texts(C4, max_docs=4)
    blocks = blocks_from_texts(tok, texts, seq_len=32)
    stream = [t for e in tok.encode_batch(texts) for t in e.ids + [eos_id(tok)]]
    assert all(len(b) == 33 for b in blocks[:-1]) and 2 <= len(blocks[-1]) <= 33
    predicted = [t for b in blocks for t in b[1:].tolist()]
    assert predicted == stream[1:]  # each token after the first is a target exactly once
    assert all(a[-1] == b[0] for a, b in zip(blocks, blocks[1:]))  # consecutive windows share one token


def test_bpb_sums_match_a_hand_computation(tok):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=448, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)).eval()
    blocks = blocks_from_texts(tok, read_jsonl_texts(C4, max_docs=3), seq_len=48)
    token_bytes = torch.from_numpy(token_byte_lengths(tok))
    nats = nbytes = 0.0
    with torch.no_grad():
        for b in blocks:
            logp = F.log_softmax(model(b[None, :-1]), -1)[0]
            for i, t in enumerate(b[1:].tolist()):
                if token_bytes[t] > 0:  # EOS stands for no text: no loss, no bytes
                    nats -= float(logp[i, t])
                    nbytes += int(token_bytes[t])
    for batch_size, min_batches in [(1, 0), (4, 0), (4, 30)]:  # min_batches: padding passes count nothing
        s = bpb_sums(model, blocks, token_bytes, batch_size, min_batches)
        assert float(s[0]) == pytest.approx(nats, rel=1e-5) and float(s[2]) == nbytes
    assert 3 < nats / math.log(2) / nbytes < 12  # an untrained 448-token model: near log2(448) bits per token


def test_a_prepared_set_needs_the_models_tokenizer(prepared_dir, tok):
    blocks = blocks_from_prepared(str(prepared_dir), (prepared_dir / "tokenizer.json").read_text(), 64)
    assert blocks and all(len(b) == 65 for b in blocks)
    with pytest.raises(ValueError, match="tokenized with another tokenizer than the model's"):
        blocks_from_prepared(str(prepared_dir), tok.to_str(), 64)


def test_bad_eval_config_names_the_entry(small_cfg):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(small_cfg(*SMALL_EVALS, "evals.sets.c4.jsonl=null"), resolve=True)
    with pytest.raises(ConfigError, match="evals.sets.c4 needs exactly one of `jsonl`"):
        validate(cfg)
    cfg = OmegaConf.to_container(small_cfg(*SMALL_EVALS, "+evals.tasks.copa.shots=5"), resolve=True)
    with pytest.raises(ConfigError, match="evals.tasks.copa: unknown key 'shots'"):
        validate(cfg)


@pytest.mark.slow
def test_inloop_evals_equal_lmstack_eval_on_the_final_checkpoint(small_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmstack.run import run

    cfg = small_cfg(*SMALL_EVALS, "evals.every_steps=2", "train.max_tokens=1024")  # 4 steps
    run(cfg)
    run_dir = Path(cfg.run_dir)
    rounds = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rounds] == [2, 4]
    assert rounds[0]["c4"]["bpb"] != rounds[1]["c4"]["bpb"]
    assert rounds[1]["arc_easy"]["questions"] == 15
    events = EventAccumulator(str(next(run_dir.rglob("events.out.tfevents*")).parent)).Reload()
    for tag in ("eval/c4/bpb", "eval/arc_easy/acc", "eval/arc_easy/len_norm", "eval/copa/acc"):
        assert [e.step for e in events.Scalars(tag)] == [2, 4], tag
    assert events.Scalars("eval/c4/bpb")[-1].value == pytest.approx(rounds[1]["c4"]["bpb"], rel=1e-6)

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmstack.cli",
            "eval",
            f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
            "tasks=[c4, arc_easy, copa]",
            f"out={tmp_path / 'ev'}",
            "limit=15",
            "seq_len=64",
            "suite=olmes",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    alone = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert alone["arc_easy"]["acc"] == rounds[1]["arc_easy"]["acc"]
    assert alone["copa"]["len_norm"] == rounds[1]["copa"]["len_norm"]
    # the configured c4 set is all three files; in the loop it was 6 documents
    assert alone["c4"]["bpb"] != pytest.approx(rounds[1]["c4"]["bpb"], rel=1e-9)
    assert "| c4 |" in out.stdout and "| arc_easy | 15 |" in out.stdout
