"""`model.attention.backend=flash_attn`: FlashAttention 2 (`pip install 'lmstack[gpu]'`), CUDA with fp16/bf16.

flash_attn handles GQA/MQA natively and aligns its causal mask bottom-right when queries are fewer than
keys, which is exactly the KV-cache case (queries at the end of the sequence).
"""

from lmstack.model import register_attention_backend


def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError as e:
        raise ImportError(
            "model.attention.backend=flash_attn needs the flash-attn package: pip install 'lmstack[gpu]' (CUDA only)"
        ) from e
    return flash_attn_func


@register_attention_backend("flash_attn")
def flash_attention(q, k, v, q_offset: int = 0):
    fn = _flash_attn_func()
    out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)  # [B, T, H, D] layout
    return out.transpose(1, 2)
