"""`model.attention.backend=xformers`: xformers' memory-efficient attention (`pip install 'lmstack[gpu]'`)."""

from lmstack.model import register_attention_backend
from lmstack.model.attention import repeat_kv


def _xops():
    try:
        import xformers.ops as xops
    except ImportError as e:
        raise ImportError(
            "model.attention.backend=xformers needs the xformers package: pip install 'lmstack[gpu]'"
        ) from e
    return xops


@register_attention_backend("xformers")
def xformers_attention(q, k, v, q_offset: int = 0):
    xops = _xops()
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    # bottom-right causal alignment: the queries are the last T positions of the S keys
    bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)
