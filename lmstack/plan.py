"""Chinchilla planning: compute C = 6 N D, tokens D = ratio x N (20 by default), time and cost on a
hardware table, and a model shape, batch size, learning rate and schedule for N as Hydra overrides.

The batch size and learning rate follow OLMo's model ladder: a global batch of 160 x (N / 108M)^(2/3)
sequences of 2048 tokens (fewer, longer sequences keep the tokens), a peak learning rate of
0.0047 x (N / 108M)^(-1/3), and a warmup of about N tokens. The shape keeps the presets' ratio of width to
depth (conf/model), with 64-dimensional heads up to width 1024 and 128-dimensional heads beyond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmstack.model.config import ModelConfig, NormConfig
from lmstack.train.flops import GPU_PEAK_TFLOPS

# (non-embedding parameters, width / depth) of the presets in conf/model, smallest first
PRESET_ASPECT = [
    (0.85e6, 128 / 4),
    (20.5e6, 512 / 6),
    (61e6, 640 / 12),
    (154e6, 1024 / 12),
    (1.07e9, 2048 / 16),
    (6.48e9, 4096 / 32),
]
LADDER_N, LADDER_BATCH_SEQS, LADDER_LR = 108e6, 160.0, 0.0047
TABLE_GPUS = ("H100", "H200", "A100")


class PlanError(ValueError):
    pass


@dataclass
class Budget:
    flops: float
    params: float
    tokens: float


def solve(flops: float = 0, params: float = 0, tokens: float = 0, tokens_per_param: float = 20.0) -> Budget:
    """Fill in the missing quantities from C = 6 N D and, when only one is given, D = ratio x N."""
    given = {k: v for k, v in {"flops": flops, "params": params, "tokens": tokens}.items() if v}
    if any(v < 0 for v in given.values()) or tokens_per_param <= 0:
        raise PlanError("compute, params, tokens and tokens_per_param must be positive")
    if len(given) == 3:
        raise PlanError("give at most two of compute, params and tokens (the third follows from C = 6 N D)")
    if not given:
        raise PlanError("give one or two of compute (flops=, gpu_hours= or usd=), params= and tokens=")
    if len(given) == 1:
        if params:
            tokens = tokens_per_param * params
        elif tokens:
            params = tokens / tokens_per_param
        else:  # C = 6 N (r N)
            params = math.sqrt(flops / (6 * tokens_per_param))
            tokens = tokens_per_param * params
    if not flops:
        flops = 6 * params * tokens
    elif not params:
        params = flops / (6 * tokens)
    elif not tokens:
        tokens = flops / (6 * params)
    return Budget(flops, params, tokens)


def peak_flops(device: str) -> float:
    """bf16 dense peak FLOP/s of a GPU in the table (H100 is the SXM part)."""
    key = {name.lower(): name for name in GPU_PEAK_TFLOPS}.get(device.lower())
    if key is None:
        raise PlanError(f"gpu={device!r} is not in the table; known: {', '.join(GPU_PEAK_TFLOPS)}")
    return GPU_PEAK_TFLOPS[key]["bf16"] * 1e12


def hours(flops: float, peak: float, mfu: float) -> float:
    """Device-hours to do `flops` at `mfu` of `peak`."""
    return flops / (peak * mfu) / 3600


def aspect_for(n: float) -> float:
    """Width / depth of the preset nearest in log-parameters."""
    return min(PRESET_ASPECT, key=lambda p: abs(math.log(p[0] / n)))[1]


def shape_for(n: float, vocab: int = 50_304) -> ModelConfig:
    """An OLMo 2 style MHA shape with about n non-embedding parameters (12 d^2 per layer, SwiGLU at 8/3)."""
    a = aspect_for(n)
    best = None
    for layers in range(max(1, round((n / (12 * a * a)) ** (1 / 3)) - 3), round((n / (12 * a * a)) ** (1 / 3)) + 4):
        if layers < 1:
            continue
        head_dim = 64 if a * layers <= 1024 else 128
        step = 8 if head_dim == 128 else (2 if a * layers >= 512 else 1)  # head counts GQA can divide
        for heads in range(step, 513, step):
            d = heads * head_dim
            cfg = ModelConfig(
                d_model=d,
                n_layers=layers,
                n_heads=heads,
                vocab_size=vocab,
                mlp_multiple_of=128,
                norm=NormConfig(placement="reordered", qk_norm=True),
            )  # norm=olmo2, as the overrides say
            err = abs(math.log(cfg.non_embedding_params() / n)) + 0.3 * abs(math.log(d / layers / a))
            if best is None or err < best[0]:
                best = (err, cfg)
            if cfg.non_embedding_params() > 2 * n:
                break
    return best[1]


def ladder_batch_tokens(n: float, seq_len: int = 2048) -> int:
    """OLMo's ladder rule, in tokens: 160 x (N / 108M)^(2/3) sequences of 2048 tokens, at least one sequence."""
    seqs = max(1, round(LADDER_BATCH_SEQS * (n / LADDER_N) ** (2 / 3) * 2048 / seq_len))
    return seqs * seq_len


def ladder_lr(n: float) -> float:
    return LADDER_LR * (n / LADDER_N) ** (-1 / 3)


def overrides(budget: Budget, seq_len: int = 2048, decay_fraction: float = 0.1) -> tuple[ModelConfig, list[str]]:
    """The model shape for N and the Hydra overrides that train it on D tokens."""
    cfg = shape_for(budget.params)
    batch = ladder_batch_tokens(cfg.non_embedding_params(), seq_len)
    warmup = min(int(cfg.non_embedding_params()), int(0.5 * budget.tokens))
    return cfg, [
        f"model.d_model={cfg.d_model}",
        f"model.n_layers={cfg.n_layers}",
        f"model.n_heads={cfg.n_heads}",
        "model.mlp_hidden=null",
        f"model.mlp_multiple_of={cfg.mlp_multiple_of}",
        f"model.max_seq_len={seq_len}",
        "attention=mha",
        "norm=olmo2",
        f"data.seq_len={seq_len}",
        f"data.batch_size={batch // seq_len}",
        f"train.max_tokens={int(budget.tokens)}",
        f"optimizer.lr={ladder_lr(cfg.non_embedding_params()):.3g}",
        "schedule=olmo_anneal",
        f"schedule.warmup_tokens={warmup}",
        f"schedule.decay_tokens={int(decay_fraction * budget.tokens)}",
    ]


RUNG_KEYS = ("d_model", "n_layers", "n_heads", "batch_size", "max_tokens", "lr", "warmup_tokens", "decay_tokens")


def rung(params: float, tokens_per_param: float, seq_len: int, decay_fraction: float = 0.1) -> dict:
    """One rung of a model ladder (`sweep=ladder`): the shape for about `params` non-embedding parameters, the
    ladder's batch (in sequences of seq_len) and learning rate for that size, tokens_per_param x N tokens, a
    warmup of N tokens (at most half the budget) and a linear decay over the last decay_fraction."""
    if not params > 0 or not tokens_per_param > 0 or not seq_len > 0:
        raise PlanError(f"a ladder rung needs positive params, tokens_per_param and seq_len; got {params}, "
                        f"{tokens_per_param}, {seq_len}")  # fmt: skip
    cfg = shape_for(params)
    n = cfg.non_embedding_params()
    tokens = int(tokens_per_param * n)
    return {
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "batch_size": ladder_batch_tokens(n, seq_len) // seq_len,
        "max_tokens": tokens,
        "lr": float(f"{ladder_lr(n):.3g}"),
        "warmup_tokens": min(int(n), tokens // 2),
        "decay_tokens": int(decay_fraction * tokens),
    }


def rung_value(key: str, params, tokens_per_param, seq_len):
    """The `lmstack_ladder` resolver of conf/sweep/ladder.yaml: one value of `rung`."""
    if key not in RUNG_KEYS:
        raise PlanError(f"lmstack_ladder: {key!r} is not a rung value; known: {', '.join(RUNG_KEYS)}")
    return rung(float(params), float(tokens_per_param), int(seq_len))[key]


def human(x: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def duration(h: float) -> str:
    if h < 1:
        return f"{h * 60:.1f} min"
    if h < 48:
        return f"{h:.1f} h"
    if h < 24 * 365:
        return f"{h / 24:.1f} days"
    return f"{h / 24 / 365:.1f} years"


def report(
    budget: Budget,
    mfu: float = 0.4,
    usd_per_gpu_hour: float = 2.0,
    gpus: int = 1,
    seq_len: int = 2048,
    cpu_flops: float | None = None,
) -> str:
    """The plan as text: the budget, a hardware table, the suggested shape and its overrides."""
    lines = [
        f"compute C = 6 N D = {budget.flops:.3g} FLOPs;  parameters N = {human(budget.params)};  "
        f"tokens D = {human(budget.tokens)} ({budget.tokens / budget.params:.1f} tokens per parameter)",
        "",
        f"| hardware | peak TFLOP/s | device-hours at {mfu:.0%} MFU | wall-clock on {gpus} | cost at "
        f"${usd_per_gpu_hour:g}/device-hour |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows = [(name, peak_flops(name)) for name in TABLE_GPUS]
    if cpu_flops:
        rows.append(("this CPU (fp32, measured)", cpu_flops))
    for name, peak in rows:
        h = hours(budget.flops, peak, mfu)
        cost = f"${h * usd_per_gpu_hour:,.0f}" if "CPU" not in name else "-"
        lines.append(f"| {name} | {peak / 1e12:,.1f} | {h:,.0f} | {duration(h / gpus)} | {cost} |")
    cfg, ov = overrides(budget, seq_len)
    batch = ladder_batch_tokens(cfg.non_embedding_params(), seq_len)
    lines += [
        "",
        f"model: d_model={cfg.d_model}, n_layers={cfg.n_layers}, n_heads={cfg.n_heads} (head_dim "
        f"{cfg.head_dim}), MLP {cfg.hidden_size}: {human(cfg.non_embedding_params())} non-embedding parameters",
        f"batch: {batch // seq_len} sequences of {seq_len} = {human(batch)} tokens per step, "
        f"{budget.tokens / batch:,.0f} steps; peak LR {ladder_lr(cfg.non_embedding_params()):.3g} "
        "(OLMo ladder rules)",
        f"schedule: warmup {human(min(cfg.non_embedding_params(), 0.5 * budget.tokens))} tokens, cosine, "
        f"linear to zero over the last {human(0.1 * budget.tokens)} tokens",
        "",
        "python train.py " + " ".join(ov),
        f"(data.batch_size is the global batch on one device: with G devices set data.batch_size="
        f"{batch // seq_len}/G, or keep it and use trainer.accumulate_grad_batches)",
    ]
    return "\n".join(lines)
