"""Reference checks of the model's math: attention backends, GQA, RoPE, KV cache, init, norms, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from lmstack.generate import generate
from lmstack.model import ATTENTION_BACKENDS, ModelConfig, Transformer, register_attention_backend
from lmstack.model.attention import eager_attention, sdpa_attention
from lmstack.model.config import AttentionConfig, NormConfig
from lmstack.model.norms import LayerNorm, RMSNorm
from lmstack.model.rope import apply_rope, rope_cache

from .helpers import compose_cfg

torch.manual_seed(0)


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=64, n_layers=2, n_heads=4, vocab_size=97, max_seq_len=64, mlp_multiple_of=32)
    base.update(kw)
    return ModelConfig(**base)


def att(kv: int | None = None, backend: str = "sdpa") -> AttentionConfig:
    """Grouped-query attention with `kv` key/value heads (None: multi-head)."""
    return AttentionConfig(type="gqa" if kv else "mha", n_kv_heads=kv, backend=backend)


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("t,offset", [(16, 0), (1, 9), (5, 7)])
def test_eager_and_sdpa_agree(n_kv, t, offset):
    q = torch.randn(2, 4, t, 16)
    k, v = torch.randn(2, n_kv, offset + t, 16), torch.randn(2, n_kv, offset + t, 16)
    torch.testing.assert_close(sdpa_attention(q, k, v, offset), eager_attention(q, k, v, offset), atol=1e-5, rtol=1e-5)


def test_eager_attention_matches_hand_computation():
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    out = eager_attention(q, k, v, 0)
    for i in range(3):
        w = torch.softmax(torch.stack([q[0, 0, i] @ k[0, 0, j] / 2.0 for j in range(i + 1)]), 0)
        torch.testing.assert_close(out[0, 0, i], sum(w[j] * v[0, 0, j] for j in range(i + 1)))


def test_models_with_eager_and_sdpa_backends_agree():
    a = Transformer(tiny(attention=att(2, "sdpa")))
    b = Transformer(tiny(attention=att(2, "eager")))
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 97, (2, 20))
    torch.testing.assert_close(a(idx), b(idx), atol=1e-5, rtol=1e-5)


def test_gqa_with_as_many_kv_heads_as_query_heads_is_mha():
    mha = Transformer(tiny())
    gqa = Transformer(tiny(attention=att(4)))
    gqa.load_state_dict(mha.state_dict())
    idx = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(gqa(idx), mha(idx))


def test_gqa_equals_mha_with_key_value_heads_repeated():
    """A GQA model equals the MHA model whose k/v projections repeat each kv head for its query group."""
    gqa = Transformer(tiny(attention=att(2)))
    mha = Transformer(tiny())
    state = gqa.state_dict()
    hd = 16
    for name in list(state):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            w = state[name].view(2, hd, 64)  # [kv_heads, head_dim, d_model]
            state[name] = w.repeat_interleave(2, dim=0).reshape(4 * hd, 64)
    mha.load_state_dict(state)
    idx = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(gqa(idx), mha(idx), atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_cache(16, 128, 10_000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        return (apply_rope(q, cos[m : m + 1], sin[m : m + 1]) * apply_rope(k, cos[n : n + 1], sin[n : n + 1])).sum()

    for m, n, shift in [(5, 2, 40), (10, 10, 7), (3, 30, 50)]:
        torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rope_is_computed_in_fp32():
    cos, _ = rope_cache(16, 8, 10_000.0)
    assert cos.dtype == torch.float32
    x = torch.randn(1, 1, 8, 16, dtype=torch.bfloat16)
    assert apply_rope(x, *rope_cache(16, 8, 10_000.0)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kw", [{}, {"attention": AttentionConfig(type="mqa"), "norm": NormConfig(qk_norm=True, placement="reordered")}]
)
def test_kv_cache_matches_full_forward(kw):
    model = Transformer(tiny(**kw)).eval()
    idx = torch.randint(0, 97, (1, 20))
    full = model(idx)
    cache = model.new_cache(1, 20)
    parts = [model(idx[:, :8], cache=cache, pos=0)]
    parts += [model(idx[:, i : i + 1], cache=cache, pos=i) for i in range(8, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_generate_with_and_without_cache_is_the_same_greedy_text():
    model = Transformer(tiny()).eval()
    prompt = [3, 14, 15, 92]
    assert generate(model, prompt, 20, temperature=0) == generate(model, prompt, 20, temperature=0, use_cache=False)


def test_generate_many_decodes_a_batch_like_single_rows():
    from lmstack.generate import generate_many

    torch.manual_seed(0)
    model = Transformer(tiny()).eval()
    prompt = [3, 14, 15, 92]
    greedy = generate(model, prompt, 12, temperature=0)
    assert generate_many(model, prompt, 3, 12, temperature=0) == [greedy] * 3
    # sampled rows: the cached batch draws the same tokens as the uncached one, and each row stops at its EOS
    free = generate_many(model, prompt, 16, 10, temperature=3.0, generator=torch.Generator().manual_seed(1))
    eos = free[0][3]  # a token row 0 draws 4th: with it as EOS, row 0 stops by then and the others go on
    rows = generate_many(model, prompt, 16, 10, temperature=3.0, eos_id=eos, generator=torch.Generator().manual_seed(1))
    again = generate_many(
        model, prompt, 16, 10, temperature=3.0, eos_id=eos, use_cache=False, generator=torch.Generator().manual_seed(1)
    )
    assert rows == again
    assert len({tuple(r) for r in rows}) > 1
    for r, f in zip(rows, free):
        cut = f.index(eos) + 1 if eos in f else 10
        assert r == f[:cut]
    assert len(rows[0]) <= 4 and any(len(r) == 10 for r in rows)


def test_top_k_one_is_greedy_and_top_p_keeps_the_head():
    from lmstack.generate import filter_logits

    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=1)).sum() == 3
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[False, True, True, False]]  # p(3.0) = 0.64 < 0.7, so the runner-up stays


def test_reordered_block_is_x_plus_norm_of_f():
    model = Transformer(tiny(norm=NormConfig(placement="reordered")))
    block = model.blocks[0]
    with torch.no_grad():
        block.attn_norm.weight.fill_(2.0)
        block.mlp_norm.weight.fill_(0.5)
    x = torch.randn(1, 6, 64)
    cos, sin = model.rope_cos[:6], model.rope_sin[:6]
    h = x + block.attn_norm(block.attn(x, cos, sin))
    torch.testing.assert_close(block(x, cos, sin), h + block.mlp_norm(block.mlp(h)))
    pre = Transformer(tiny()).blocks[0]
    h = x + pre.attn(pre.attn_norm(x), cos, sin)
    torch.testing.assert_close(pre(x, cos, sin), h + pre.mlp(pre.mlp_norm(h)))


def test_norms_match_reference():
    x = torch.randn(3, 8)
    rms = RMSNorm(8, eps=1e-6)
    torch.testing.assert_close(rms(x), x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6))
    ln = LayerNorm(8, bias=True)
    torch.testing.assert_close(ln(x), torch.nn.functional.layer_norm(x, (8,), eps=1e-5))


def test_qk_norm_and_tied_embeddings():
    m = Transformer(tiny(norm=NormConfig(qk_norm=True), tie_embeddings=True))
    assert m.blocks[0].attn.q_norm is not None and m.blocks[0].attn.k_norm.weight.shape == (64,)
    assert m.lm_head.weight.data_ptr() == m.embed.weight.data_ptr()
    assert Transformer(tiny()).lm_head.weight.data_ptr() != Transformer(tiny()).embed.weight.data_ptr()


def test_init_truncated_normal_and_depth_scaling():
    cfg = tiny(d_model=256, n_heads=4, n_layers=8, init_std=0.02, embed_init_std=0.5, depth_scaled_init=True)
    m = Transformer(cfg)
    w = m.blocks[0].attn.q_proj.weight
    assert abs(w.std().item() - 0.02 * 0.9866) < 0.001  # a normal truncated at 3 sigma has std 0.9866 sigma
    assert w.abs().max() <= 3 * 0.02 + 1e-7
    assert abs(m.embed.weight.std().item() - 0.5) < 0.05
    out = m.blocks[0].attn.o_proj.weight
    assert out.abs().max() <= 3 * 0.02 / math.sqrt(16) + 1e-7
    assert torch.all(m.blocks[0].attn_norm.weight == 1)


def test_invalid_head_counts_raise():
    with pytest.raises(ValueError, match="model.d_model=100 is not divisible by model.n_heads=3"):
        ModelConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="model.n_heads=4 is not divisible by attention.n_kv_heads=3"):
        ModelConfig(d_model=64, n_heads=4, attention=att(3))


def test_plugins_can_register_an_attention_backend():
    calls = []

    @register_attention_backend("counting_test")
    def counting(q, k, v, q_offset=0):
        calls.append(q.shape)
        return eager_attention(q, k, v, q_offset)

    try:
        m = Transformer(tiny(attention=att(backend="counting_test")))
        m(torch.randint(0, 97, (1, 5)))
        assert len(calls) == 2
    finally:
        ATTENTION_BACKENDS.pop("counting_test")
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        Transformer(tiny(attention=att(backend="nope")))


@pytest.mark.parametrize("size,target", [("20m", 20e6), ("60m", 60e6), ("150m", 150e6), ("1b", 1e9), ("7b", 7e9)])
def test_preset_sizes_on_meta_device(size, target):
    from dataclasses import replace

    from omegaconf import OmegaConf

    from lmstack.config.schema import validate

    cfg = compose_cfg([f"model={size}"])
    spec = validate(OmegaConf.to_container(cfg, resolve=True))
    mcfg = replace(spec.model, vocab_size=spec.model.vocab_size or 50304)
    with torch.device("meta"):
        model = Transformer(mcfg)
    n = model.num_params(non_embedding=True)
    assert n == mcfg.non_embedding_params()
    assert abs(n - target) / target < 0.10, f"{size}: {n / 1e6:.1f}M non-embedding parameters"


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    from lmstack.train.losses import lm_loss
    from lmstack.train.parallelize import apply_activation_checkpointing

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=3, n_heads=4, max_seq_len=32)
    plain, ckpt = Transformer(cfg), Transformer(cfg)
    ckpt.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(ckpt)  # from outside the model (lmstack.train.parallelize)
    tokens = torch.randint(0, 256, (2, 33))
    saved = {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        count = [0]

        def pack(t, count=count):
            count[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ce, z = lm_loss(model(tokens[:, :-1]), tokens[:, 1:], 1e-4)
        (ce + z).backward()
        saved[name] = count[0]
    assert saved["ckpt"] < saved["plain"] / 2  # the blocks' activations were not kept for backward
    assert list(plain.state_dict()) == list(ckpt.state_dict())  # the same parameter names
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)
