"""The model: plain PyTorch, importable without Lightning or Hydra."""

from .attention import ATTENTION_BACKENDS, KVCache, register_attention_backend
from .config import ModelConfig
from .packed_documents import Documents
from .transformer import Block, Transformer

__all__ = [
    "ATTENTION_BACKENDS",
    "Block",
    "Documents",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "register_attention_backend",
]
