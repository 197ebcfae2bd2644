"""Model FLOPs per token and the peak rates that MFU is measured against.

MFU = achieved model FLOP/s / peak FLOP/s. Model FLOPs count the matrix products of a forward and
backward pass (PaLM, appendix B): 6 per parameter that takes part in a matrix product (every weight but
the embedding lookup; the LM head counts, tied or not) plus 12 * layers * d_model * sequence length for
the attention scores and weighted values (not halved for the causal mask, as PaLM and OLMo count).
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: bf16 / fp16 tensor cores, and TF32 for
# fp32 training. Matched against torch.cuda.get_device_name() by substring, first match wins.
GPU_PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp32": 494.5},
    "H100 PCIe": {"bf16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.0, "fp32": 494.5},  # SXM
    "A100": {"bf16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.0, "fp32": 183.0},
    "A10G": {"bf16": 70.0, "fp32": 35.0},  # AWS A10G (HBM-less A10 variant)
    "L4": {"bf16": 121.0, "fp32": 60.0},
    "RTX 4090": {"bf16": 165.0, "fp32": 82.6},
    "V100": {"bf16": 125.0, "fp32": 15.7},  # fp16 tensor cores; V100 has no bf16 or TF32
}


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    cfg = model.cfg
    # the blocks (for MoE, the k experts a token uses) and the LM head
    matmul = cfg.non_embedding_params(active=True) + cfg.vocab_size * cfg.d_model
    return 6 * matmul + 12 * cfg.n_layers * cfg.d_model * seq_len


def measure_matmul_flops(n: int = 1024, seconds: float = 0.3, dtype=torch.float32) -> float:
    """FLOP/s of an n x n matrix product on this process's CPU threads (the best of a few timings)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a named GPU for a Lightning precision string; None when the GPU is not listed."""
    kind = "bf16" if ("bf16" in precision or "16" in precision) else "fp32"
    for name, peaks in GPU_PEAK_TFLOPS.items():
        if name in device_name:
            return peaks[kind] * 1e12
    return None
