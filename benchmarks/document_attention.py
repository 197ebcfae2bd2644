"""The CPU cost of document-aware attention (model.attention.document_mask) on real packed blocks.

The same training step (forward, backward, clipping, AdamW) of one model on the same batches of the default
corpus, with plain causal attention, with the block-diagonal document mask (SDPA with a dense boolean mask,
the CPU path), and with the mask plus RoPE positions restarted per document. Rounds alternate between the
three, so load on a shared machine affects them alike; the median round counts. Also prints how many
documents a block holds, and the logits' largest difference between the mask with and without restarted
positions (RoPE is relative, so they differ by rounding only).

    python benchmarks/document_attention.py --model 20m --seq-len 1024 --batch-size 4 --steps 5 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import torch
from train_throughput import build, plain_round, stdlib_corpus

from lmstack.data.tokenizer import eos_id
from lmstack.model import Documents, Transformer

MODES = {"causal": {}, "document mask": {"document_mask": True}}
MODES["mask + restarted positions"] = {"document_mask": True, "document_positions": True}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="20m")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="steps per round, the first --warmup not timed")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    spec, mcfg, batches = build(args)
    eos = eos_id(stdlib_corpus(spec).tokenizer())
    cfgs = {m: replace(mcfg, attention=replace(mcfg.attention, document_token=eos, **kw)) for m, kw in MODES.items()}
    docs = [Documents.from_tokens(b["input_ids"], eos).starts.sum(1).float() for b in batches]
    print(
        f"model={args.model}, {Transformer(mcfg).num_params() / 1e6:.1f}M non-embedding params; batch "
        f"{args.batch_size} x {args.seq_len} tokens of the default corpus; documents per block: mean "
        f"{torch.cat(docs).mean():.2f}, max {int(torch.cat(docs).max())}; {torch.get_num_threads()} threads"
    )
    rates = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for m, cfg in cfgs.items():
            rates[m].append(plain_round(spec, cfg, batches, args.warmup)[0])
    base = statistics.median(rates["causal"])
    for m, r in rates.items():
        med = statistics.median(r)
        print(f"{m:>28}: {med:8.0f} tokens/s (rounds {', '.join(f'{x:.0f}' for x in r)}); {med / base:.3f}x causal")
    torch.manual_seed(0)
    a, b = Transformer(cfgs["document mask"]).eval(), Transformer(cfgs["mask + restarted positions"]).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        x = batches[max(range(len(docs)), key=lambda i: float(docs[i].sum()))]["input_ids"]  # the most documents
        print(f"logits, mask with vs without restarted positions: max |diff| {(a(x) - b(x)).abs().max():.2e}")


if __name__ == "__main__":
    main()
