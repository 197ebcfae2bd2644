"""Multiple-choice scoring (OLMES requests) against hand computations, on the shared eval sets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from lmstack.eval.multiple_choice import Question, encode_pair, load_requests, score_task
from lmstack.model import ModelConfig, Transformer

from .helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
TASKS = sorted(p for p in (SHARED_DATA / "evals").iterdir() if (p / "requests.jsonl.gz").exists())


def byte_tokenizer() -> Tokenizer:
    from lmstack.data.tokenizer import train_bpe

    return train_bpe(["the quick brown fox jumps over the lazy dog"] * 20, 300)


class Uniform(torch.nn.Module):
    """Gives every token the same probability."""

    def __init__(self, vocab: int):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=vocab, d_model=8, n_layers=1, n_heads=1, max_seq_len=512)
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.cfg.vocab_size) + self.p


@pytest.mark.parametrize("task", TASKS, ids=lambda p: p.name)
def test_requests_load_with_every_choice_and_the_gold(task):
    qs = load_requests(task)
    assert qs and all(len(q.choices) >= 2 and 0 <= q.gold < len(q.choices) for q in qs)


def test_scores_match_a_hand_computation_and_len_norm_differs_from_acc():
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)).eval()
    q = Question(0, "the quick brown", gold=1, choices=[" fox jumps over", " dog"])
    by_hand = []
    for c in q.choices:
        ctx, cont = encode_pair(tok, q.context, c)
        ids = torch.tensor([ctx + cont])
        logp = torch.log_softmax(model(ids[:, :-1]), -1)[0]
        by_hand.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    acc_pick = max(range(2), key=lambda i: by_hand[i])
    norm_pick = max(range(2), key=lambda i: by_hand[i] / len(q.choices[i]))
    r = score_task(model, tok, [q])
    assert r["acc"] == float(acc_pick == 1) and r["len_norm"] == float(norm_pick == 1)
    assert acc_pick != norm_pick  # the long choice loses on the sum and wins per character here
    assert all(v < 0 for v in by_hand)


def test_continuous_metrics_equal_a_direct_computation_on_a_real_checkpoint(small_ckpt):
    """bpb (the correct answer's bits per byte) and correct_prob (its softmax over the choices' sums), from a
    trained checkpoint on real ARC-Easy questions, against one forward pass per choice done here."""
    from lmstack.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(str(small_ckpt))
    model.eval()
    qs = load_requests(SHARED_DATA / "evals" / "arc_easy")[:12]
    bpb = prob = 0.0
    for q in qs:
        sums = []
        for context, choice in q.pairs():
            stripped = context.rstrip(" ")
            ctx, cont = tok.encode(stripped).ids, tok.encode(context[len(stripped) :] + choice).ids
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids[:, :-1]).double(), -1)[0]
            sums.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        context, gold = q.pairs()[q.gold]
        nbytes = len((context[len(context.rstrip(" ")) :] + gold).encode("utf-8"))
        bpb += -sums[q.gold] / math.log(2) / nbytes / len(qs)
        prob += math.exp(sums[q.gold]) / sum(math.exp(v) for v in sums) / len(qs)
    r = score_task(model, tok, qs)
    assert r["questions"] == 12
    assert r["bpb"] == pytest.approx(bpb, rel=1e-4) and r["correct_prob"] == pytest.approx(prob, rel=1e-4)
    assert 0 < r["correct_prob"] < 1 and r["bpb"] > 0.5  # a 2-step model: far from sure of anything


def test_a_uniform_model_picks_the_choice_with_fewest_tokens(tmp_path):
    tok = byte_tokenizer()
    task = TASKS[0]
    qs = load_requests(task)[:60]
    r = score_task(Uniform(tok.get_vocab_size()), tok, qs)
    expected = 0
    for q in qs:
        lengths = [len(encode_pair(tok, q.context, c)[1]) for c in q.choices]
        expected += int(lengths.index(min(lengths)) == q.gold)  # ties: the first
    assert r["acc"] == pytest.approx(expected / len(qs)) and r["questions"] == 60


@pytest.mark.slow
def test_eval_cli_writes_eval_json(tmp_path, small_cfg):
    from lmstack.run import run

    cfg = small_cfg()
    run(cfg)
    ckpt = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmstack.cli",
            "eval",
            f"ckpt={ckpt}",
            f"tasks=[{TASKS[0]},{TASKS[1]}]",
            f"out={tmp_path / 'ev'}",
            "limit=20",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(result) == {TASKS[0].name, TASKS[1].name}
    for r in result.values():
        assert r["questions"] == 20 and 0 <= r["acc"] <= 1 and 0 <= r["len_norm"] <= 1
    assert "| eval | items | acc | len_norm | bpb |" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "eval", f"ckpt={ckpt}", "tasks=[/nonexistent]", f"out={tmp_path / 'x'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "eval '/nonexistent' is neither a configured set or task" in bad.stderr


def write_requests(path: Path, rows: list[dict]) -> Path:
    import gzip

    path.mkdir(parents=True, exist_ok=True)
    with gzip.open(path / "requests.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


def request(doc_id, idx, context, continuation, **extra) -> dict:
    return {"request_type": "loglikelihood", "doc_id": doc_id, "idx": idx, **extra,
            "request": {"context": context, "continuation": continuation}}  # fmt: skip


def test_the_format_is_read_from_the_requests_label_partial_scoring_and_unconditional(tmp_path):
    """Gold only in the top-level `label` (no doc.gold: the old loader's KeyError 'gold'); a different
    context per choice with one shared continuation (partial scoring) scored per context; OLMES's
    unconditional requests (another doc_id, same native_id, context `Answer:`) are not questions."""
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)).eval()
    labelled = [
        request(0, i, "the quick brown", c, label=1, native_id="q0", doc={}) for i, c in enumerate([" fox", " dog"])
    ]
    labelled += [
        request(1000000, i, "Answer:", c, label=1, native_id="q0", doc={}) for i, c in enumerate([" fox", " dog"])
    ]
    contexts = ["the lazy dog jumps over the", "the quick fox jumps over the"]
    partial = [request(7, i, c, " lazy dog", label=0, native_id=7) for i, c in enumerate(contexts)]
    qs = load_requests(write_requests(tmp_path / "labelled", labelled))
    assert [(q.doc_id, q.gold, q.choices, q.contexts) for q in qs] == [(0, 1, [" fox", " dog"], None)]
    (q,) = load_requests(write_requests(tmp_path / "partial", partial))
    assert q.pairs() == [(contexts[0], " lazy dog"), (contexts[1], " lazy dog")] and q.gold == 0
    by_hand = []
    for context, cont in q.pairs():
        ctx, cont = encode_pair(tok, context, cont)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[:, :-1]), -1)[0]
        by_hand.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    assert by_hand[0] != by_hand[1]  # the contexts, not the shared continuation, decide
    assert score_task(model, tok, [q])["acc"] == float(by_hand.index(max(by_hand)) == 0)
    with pytest.raises(ValueError, match=r"line 1: no gold choice \(neither an integer `label` nor `doc.gold`\)"):
        load_requests(write_requests(tmp_path / "nogold", [request(0, 0, "a", " b", doc={})]))
    with pytest.raises(ValueError, match="request_type 'generate_until'"):
        load_requests(
            write_requests(tmp_path / "gen", [{**request(0, 0, "a", " b", label=0), "request_type": "generate_until"}])
        )
    arc = load_requests(SHARED_DATA / "evals" / "arc_easy")
    assert len(arc) == 570 and all(q.doc_id < 1000000 for q in arc)  # 1,140 doc_ids, half of them unconditional
