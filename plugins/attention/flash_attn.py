"""`model.attention.backend=flash_attn`: FlashAttention 2 (`pip install 'lmstack[gpu]'`), CUDA with fp16/bf16.

flash_attn handles GQA/MQA natively and aligns its causal mask bottom-right when queries are fewer than
keys, which is exactly the KV-cache case (queries at the end of the sequence). Packed rows with
document-aware attention go through its variable-length kernel: every document of the batch is one
sequence of the flattened tokens, so no dense mask is built and no score across documents is computed.
"""

from lmstack.model import register_attention_backend


def _flash_attn(name: str):
    try:
        import flash_attn
    except ImportError as e:
        raise ImportError(
            "model.attention.backend=flash_attn needs the flash-attn package: pip install 'lmstack[gpu]' (CUDA only)"
        ) from e
    return getattr(flash_attn, name)


@register_attention_backend("flash_attn", varlen=True)
def flash_attention(q, k, v, q_offset: int = 0, docs=None):
    if docs is None:
        out = _flash_attn("flash_attn_func")(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return out.transpose(1, 2)  # flash_attn's layout is [B, T, H, D]
    b, _, t, d = q.shape
    cu, longest = docs.cu_seqlens
    flat = [x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (q, k, v)]  # [B * T, heads, D]
    out = _flash_attn("flash_attn_varlen_func")(*flat, cu, cu, longest, longest, causal=True)
    return out.view(b, t, q.shape[1], d).transpose(1, 2)
