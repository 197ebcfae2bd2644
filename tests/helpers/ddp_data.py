"""The model and the real-text batch shared by the DDP worker and its test (bytes of a stdlib file)."""

import inspect
import json

import torch


def model_config() -> dict:
    return dict(
        d_model=64,
        n_layers=2,
        n_heads=4,
        attention=dict(type="gqa", n_kv_heads=2),
        vocab_size=256,
        max_seq_len=64,
        mlp_multiple_of=32,
    )


def global_batch() -> torch.Tensor:
    data = inspect.getsource(json.decoder).encode()[: 8 * 33]
    return torch.tensor(list(data), dtype=torch.long).view(8, 33)
