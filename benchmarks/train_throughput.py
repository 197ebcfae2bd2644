"""Training throughput: lmstack's Lightning loop against a minimal plain-PyTorch loop, side by side.

Both train the same model on the same batches (real tokens from the default corpus) with the same
optimizer, schedule, clipping and loss. Rounds alternate between the two loops and the median round counts,
so load on a shared machine affects both alike. Prints tokens/s, the ratio, and model-FLOPs utilisation
against the fp32 matrix-product rate measured in the same run. litgpt's GPT is added when installed.

    python benchmarks/train_throughput.py --model 20m --steps 8 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import lightning as L
import torch
from omegaconf import OmegaConf

from lmstack.config.schema import TrainSection, validate
from lmstack.data.corpus_cache import prepare_corpus
from lmstack.data.dataset import BlockDataset
from lmstack.model import Transformer
from lmstack.train.context import RunContext
from lmstack.train.flops import flops_per_token, measure_matmul_flops
from lmstack.train.losses import lm_loss
from lmstack.train.module import TrainModule
from lmstack.train.objective import NextToken


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all threads)."""
    return time.perf_counter(), time.process_time()


def _rates(tokens: int, start, end) -> tuple[float, float]:
    """Tokens per wall second, and per CPU second divided by the thread count: the second is far less
    sensitive to other tenants of a shared machine."""
    return tokens / (end[0] - start[0]), tokens * torch.get_num_threads() / (end[1] - start[1])


def stdlib_corpus(spec):
    """The default corpus at the spec's block size (prepared once, then read from the cache)."""
    return prepare_corpus(
        [{"name": "python_stdlib", "builtin": "python_stdlib"}],
        spec.paths.cache_dir,
        spec.data.seq_len,
        spec.data.val_fraction,
        spec.data.vocab_size,
    )


def build(args):
    from lmstack.config.store import compose

    overrides = [f"model={args.model}", "run_dir=/tmp/lmstack-bench", f"data.seq_len={args.seq_len}"]
    cfg = compose("train", [*overrides, f"data.batch_size={args.batch_size}"])
    spec = validate(OmegaConf.to_container(cfg, resolve=True))
    corpus = stdlib_corpus(spec)
    vocab = -(-corpus.meta["vocab_size"] // 64) * 64
    ds = BlockDataset([str(corpus.split_dir("python_stdlib", "train"))])
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds), generator=g)[: args.batch_size * args.steps].tolist()
    batches = [
        torch.utils.data.default_collate([ds[i] for i in idx[k : k + args.batch_size]])
        for k in range(0, len(idx), args.batch_size)
    ]
    return spec, replace(spec.model, vocab_size=vocab), batches


def plain_round(spec, mcfg, batches, warmup: int, model=None):
    """A minimal loop doing the same work per step as lmstack's: loss + z-loss, clipping, AdamW, schedule."""
    torch.manual_seed(0)
    model = model or Transformer(mcfg)
    from lmstack.train.optim import build_adamw

    o = spec.optimizer
    opt = build_adamw(model, o.lr, o.betas, o.eps, o.weight_decay, o.no_decay, o.decay_norms, o.decay_biases)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    tokens = 0
    for i, b in enumerate(batches):
        if i == warmup:
            t0 = _clock()
        ce, z = lm_loss(model(b["input_ids"]), b["labels"], spec.loss.z_loss)
        (ce + z).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ce.detach().item()  # the Lightning loop also reads the loss back each step (for logging)
        if i >= warmup:
            tokens += b["labels"].numel()
    return _rates(tokens, t0, _clock())


class _Timer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.t0, self.tokens = warmup, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0 = _clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.tokens += batch["labels"].numel()
            self.t1 = _clock()


def lightning_round(spec, mcfg, batches, warmup: int, run_dir: str) -> float:
    torch.manual_seed(0)
    tps = batches[0]["labels"].numel()
    schedule = {"name": "constant", "peak_lr": spec.optimizer.lr, "total_tokens": tps * len(batches)}
    objective, context = NextToken(spec.loss.z_loss), RunContext(tokens_per_step=tps)
    module = TrainModule(mcfg.to_dict(), spec.optimizer, schedule, TrainSection(grad_clip=1.0), objective, context)
    timer = _Timer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=len(batches),
        logger=L.pytorch.loggers.TensorBoardLogger(run_dir, name="tb"),
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return _rates(timer.tokens, timer.t0, timer.t1)


def litgpt_round(spec, mcfg, batches, warmup: int):
    """litgpt's GPT with the same shapes, trained by the same minimal loop (None when not installed)."""
    try:
        from litgpt.config import Config
        from litgpt.model import GPT
    except ImportError:
        return None
    cfg = Config(
        n_layer=mcfg.n_layers,
        n_embd=mcfg.d_model,
        n_head=mcfg.n_heads,
        n_query_groups=mcfg.n_kv_heads,
        vocab_size=mcfg.vocab_size,
        padded_vocab_size=mcfg.vocab_size,
        block_size=mcfg.max_seq_len,
        mlp_class_name="LLaMAMLP",
        intermediate_size=mcfg.hidden_size,
        norm_class_name="RMSNorm",
        bias=False,
        rotary_percentage=1.0,
        parallel_residual=False,
    )
    torch.manual_seed(0)
    return plain_round(spec, mcfg, batches, warmup, model=GPT(cfg))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="20m")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="steps per round, the first --warmup not timed")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_float32_matmul_precision("highest")
    spec, mcfg, batches = build(args)
    probe = Transformer(mcfg)
    fpt = flops_per_token(probe, args.seq_len)
    print(
        f"model={args.model}: {probe.num_params(non_embedding=True) / 1e6:.1f}M non-embedding params, "
        f"{sum(p.numel() for p in probe.parameters()) / 1e6:.1f}M total; batch {args.batch_size} x {args.seq_len}; "
        f"{fpt / 1e6:.1f} MFLOP/token; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    rates = {"plain": [], "lightning": [], "litgpt": []}
    peaks = []
    for r in range(args.rounds):
        peaks.append(measure_matmul_flops() / 1e9)
        order = ["plain", "lightning"] if r % 2 == 0 else ["lightning", "plain"]  # neither always goes first
        for name in order:
            if name == "plain":
                rates["plain"].append(plain_round(spec, mcfg, batches, args.warmup))
            else:
                rates["lightning"].append(lightning_round(spec, mcfg, batches, args.warmup, f"/tmp/lmstack-bench/{r}"))
        lg = litgpt_round(spec, mcfg, batches, args.warmup)
        if lg is not None:
            rates["litgpt"].append(lg)
        print(
            f"round {r}: matmul {peaks[-1]:.0f} GFLOP/s; tokens/s (wall | cpu): "
            + ", ".join(f"{k} {v[-1][0]:,.0f} | {v[-1][1]:,.0f}" for k, v in rates.items() if v)
        )
    peak = statistics.median(peaks)
    print(f"\nfp32 matmul rate (median of {args.rounds}): {peak:.0f} GFLOP/s")
    print("medians; ratio = the median over rounds of (loop / plain) within the same round")
    for name, values in rates.items():
        if not values:
            print(f"{name:>9}: not installed")
            continue
        for i, clock in enumerate(("wall", "cpu")):
            rate = statistics.median(v[i] for v in values)
            ratio = statistics.median(v[i] / p[i] for v, p in zip(values, rates["plain"]))
            mfu = rate * fpt / (peak * 1e9)
            print(f"{name:>9} {clock:>4}: {rate:9,.0f} tokens/s  ratio to plain {ratio:.3f}  MFU {mfu:.1%}")


if __name__ == "__main__":
    main()
