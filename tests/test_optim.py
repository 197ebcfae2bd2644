"""Parameter groups: embeddings (and by default norms and biases) get no weight decay."""

from __future__ import annotations

import torch

from lmstack.model import ModelConfig, Transformer
from lmstack.model.config import NormConfig
from lmstack.train.optim import build_adamw, param_groups


def model(**kw):
    return Transformer(ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=50, mlp_multiple_of=16, **kw))


def names(groups, which):
    return set(next(g for g in groups if g["group"] == which)["names"])


def test_embeddings_and_norms_are_not_decayed_by_default():
    groups = param_groups(model(), 0.1, ["embed.*"])
    no_decay, decay = names(groups, "no_decay"), names(groups, "decay")
    assert "embed.weight" in no_decay
    assert "blocks.0.attn_norm.weight" in no_decay and "norm.weight" in no_decay
    assert "lm_head.weight" in decay and "blocks.1.mlp.down.weight" in decay
    assert not decay & no_decay
    assert len(decay | no_decay) == len(list(model().named_parameters()))


def test_norm_and_bias_decay_are_configurable():
    m = model(norm=NormConfig(kind="layernorm", bias=True))
    groups = param_groups(m, 0.1, ["embed.*"], decay_norms=True, decay_biases=False)
    assert "blocks.0.attn_norm.weight" in names(groups, "decay")
    assert "blocks.0.attn_norm.bias" in names(groups, "no_decay")
    groups = param_groups(m, 0.1, [], decay_norms=True, decay_biases=True)
    assert "embed.weight" in names(groups, "decay") and "blocks.0.attn_norm.bias" in names(groups, "decay")


def test_adamw_applies_no_decay_to_embeddings():
    m = model()
    opt = build_adamw(m, 1.0, (0.9, 0.95), 1e-8, 0.5, ["embed.*"], False, False)
    emb_before, head_before = m.embed.weight.detach().clone(), m.lm_head.weight.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay moves weights
    assert torch.equal(m.embed.weight, emb_before)
    torch.testing.assert_close(m.lm_head.weight, head_before * 0.5)
