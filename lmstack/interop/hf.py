"""Hugging Face format, both ways: an lmstack model as a `transformers` Llama (pre-norm presets), OLMo 2
(reordered norm + QK-norm) or OLMoE (a Mixture of Experts: pre-norm, QK-norm, an MoE feed-forward in every
layer) folder; `lmstack.interop.hf_import` reads a Llama or OLMo 2 folder back into an lmstack checkpoint.

The layouts are the same computation: RMSNorm in fp32, RoPE in the rotate-half convention on the
un-split query/key projections, QK-norm over the whole projection (OLMo 2, OLMoE), SwiGLU, softmax top-k
routing. Only the parameter names differ (`NAMES`); OLMoE's experts are written one by one
(`mlp.experts.{e}.gate_proj.weight`, the layout of allenai's OLMoE checkpoints, which transformers fuses on
load) from lmstack's stacked [E, D, H]. Export writes `config.json`, `generation_config.json`,
`model.safetensors`, `tokenizer.json` and `tokenizer_config.json`; it needs no `transformers` (loading the
folder does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lmstack.model.config import ModelConfig

ARCH = {"llama": "LlamaForCausalLM", "olmo2": "Olmo2ForCausalLM", "olmoe": "OlmoeForCausalLM"}

# lmstack parameter name (per block, "{i}") -> Hugging Face name, for each architecture
_BLOCK = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
NAMES = {
    "llama": {
        **_BLOCK,
        "attn_norm.weight": "input_layernorm.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
    },
    "olmo2": {
        **_BLOCK,
        "attn_norm.weight": "post_attention_layernorm.weight",
        "mlp_norm.weight": "post_feedforward_layernorm.weight",
        "attn.q_norm.weight": "self_attn.q_norm.weight",
        "attn.k_norm.weight": "self_attn.k_norm.weight",
    },
    "olmoe": {
        **{k: v for k, v in _BLOCK.items() if not k.startswith("mlp.")},
        "attn_norm.weight": "input_layernorm.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
        "attn.q_norm.weight": "self_attn.q_norm.weight",
        "attn.k_norm.weight": "self_attn.k_norm.weight",
        "mlp.router.weight": "mlp.gate.weight",
    },
}
# lmstack's stacked expert weights (x @ w[e]) -> OLMoE's per-expert Linear weights (w[e].T)
_EXPERTS = {"mlp.w_gate": "gate_proj", "mlp.w_up": "up_proj", "mlp.w_down": "down_proj"}
_TOP = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


class NoHFEquivalent(ValueError):
    """The configuration has no Hugging Face architecture that computes the same function."""


def hf_architecture(cfg: ModelConfig) -> str:
    """`llama`, `olmo2` or `olmoe` for this configuration, or NoHFEquivalent naming the option that blocks it."""
    norm = cfg.norm
    if cfg.moe.experts:
        return _moe_architecture(cfg)
    if norm.kind != "rmsnorm":
        raise NoHFEquivalent(
            f"norm.kind={norm.kind} has no Hugging Face equivalent: Llama and OLMo 2 use RMSNorm "
            "(train with norm=rmsnorm or norm=olmo2)"
        )
    if norm.placement == "pre" and not norm.qk_norm:
        return "llama"
    if norm.placement == "reordered" and norm.qk_norm:
        return "olmo2"
    if norm.placement == "pre":
        raise NoHFEquivalent(
            "norm.qk_norm=true with norm.placement=pre has no Hugging Face equivalent: Llama has no "
            "QK-norm and OLMo 2 places its norms after each sublayer (use norm=olmo2 or qk_norm=false)"
        )
    raise NoHFEquivalent(
        "norm.placement=reordered with norm.qk_norm=false has no Hugging Face equivalent: OLMo 2 "
        "always normalises queries and keys (set norm.qk_norm=true, or norm.placement=pre for Llama)"
    )


def _moe_architecture(cfg: ModelConfig) -> str:
    """OLMoE computes a pre-norm RMSNorm transformer with QK-norm over the whole projections and a dropless
    top-k MoE of SwiGLU experts (softmax gates, renormalised or not) in every layer, without a shared expert."""
    m, norm = cfg.moe, cfg.norm
    problems = []
    if norm.kind != "rmsnorm" or norm.placement != "pre":
        problems.append(f"norm.kind={norm.kind} with norm.placement={norm.placement} (OLMoE: rmsnorm, pre)")
    if not norm.qk_norm:
        problems.append("norm.qk_norm=false (OLMoE always normalises queries and keys: set norm.qk_norm=true)")
    if m.layers is not None and sorted(m.layers) != list(range(cfg.n_layers)):
        problems.append(f"moe.layers={m.layers} (OLMoE has an MoE feed-forward in every layer: moe.layers=null)")
    if m.shared_expert:
        problems.append("moe.shared_expert=true (OLMoE has no shared expert)")
    if problems:
        raise NoHFEquivalent("this MoE model has no Hugging Face equivalent (OlmoeForCausalLM): " + "; ".join(problems))
    return "olmoe"


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state.items():
        if name in _TOP:
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue
            out[_TOP[name]] = t
            continue
        _, i, rest = name.split(".", 2)  # blocks.{i}.rest
        if rest in _EXPERTS:
            for e in range(t.shape[0]):
                out[f"model.layers.{i}.mlp.experts.{e}.{_EXPERTS[rest]}.weight"] = t[e].T.contiguous()
            continue
        out[f"model.layers.{i}.{NAMES[arch][rest]}"] = t
    return out


def from_hf_state(hf: dict[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    back = {v: k for k, v in NAMES[arch].items()}
    top = {v: k for k, v in _TOP.items()}
    out = {}
    for name, t in hf.items():
        if name in top:
            out[top[name]] = t
        elif name.startswith("model.layers."):
            i, rest = name[len("model.layers.") :].split(".", 1)
            if rest not in back:
                raise ValueError(f"unexpected {ARCH[arch]} parameter {name}")
            out[f"blocks.{i}.{back[rest]}"] = t
        elif not name.endswith("rotary_emb.inv_freq"):
            raise ValueError(f"unexpected {ARCH[arch]} parameter {name}")
    if cfg.tie_embeddings or "lm_head.weight" not in out:
        out["lm_head.weight"] = out["embed.weight"]
    return out


def hf_config(cfg: ModelConfig, arch: str, eos: int | None, pad: int | None) -> dict:
    c = {
        "architectures": [ARCH[arch]],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm.eps,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": None,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if arch == "llama":
        c.update(head_dim=cfg.head_dim, mlp_bias=False, pretraining_tp=1)
    if arch == "olmoe":
        m = cfg.moe
        c.update(intermediate_size=cfg.expert_hidden, num_experts=m.experts, num_experts_per_tok=m.top_k)
        c.update(norm_topk_prob=m.norm_topk, router_aux_loss_coef=m.lb_coef, output_router_logits=False, clip_qkv=None)
    return c


def export_hf(ckpt_path: str, out: str) -> dict:
    """Write the Hugging Face folder for an lmstack checkpoint; returns its config.json. The folder is
    claimed (`lmstack.ownership`) only once the checkpoint is known to export."""
    from lmstack.checkpoint import load_checkpoint
    from lmstack.data.tokenizer import PAD, eos_id
    from lmstack.ownership import OwnedFolder
    from lmstack.tasks.chat_template import END, has_chat_tokens

    model, tok, _ = load_checkpoint(ckpt_path)
    arch = hf_architecture(model.cfg)
    if tok is None:
        raise ValueError(f"{ckpt_path} carries no tokenizer; Hugging Face folders need one")
    try:
        eos = eos_id(tok)
    except ValueError:
        eos = None
    pad = tok.token_to_id(PAD)
    chat = has_chat_tokens(tok)  # an adapted model: generation also stops at the end marker
    stop = [eos, tok.token_to_id(END)] if chat and eos is not None else eos
    state = to_hf_state({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, model.cfg, arch)
    with OwnedFolder(out, "export", [ckpt_path]) as owned:  # an lmstack export folder, or a new one
        staging = owned.staging()  # written whole, then published: a full disk leaves the earlier export as it was
        config = _write_hf(staging, state, model, tok, arch, eos, pad, stop, chat)
        owned.publish(staging, last="config.json")
    return config


def _write_hf(out: Path, state: dict, model, tok, arch: str, eos, pad, stop, chat: bool) -> dict:
    """The folder's files: weights, config.json, generation_config.json, the tokenizer and its config."""
    from safetensors.torch import save_file

    from lmstack.data.tokenizer import PAD
    from lmstack.tasks.chat_template import JINJA_TEMPLATE

    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(model.cfg, arch, eos, pad)
    _write_json(out, "config.json", config)
    _write_json(out, "generation_config.json", {"eos_token_id": stop, "pad_token_id": pad, "bos_token_id": None})
    tok.save(os.path.join(out, "tokenizer.json"))
    _write_json(
        out,
        "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": tok.id_to_token(eos) if eos is not None else None,
            "pad_token": PAD if pad is not None else None,
            "bos_token": None,
            "add_bos_token": False,
            "model_max_length": model.cfg.max_seq_len,
            "clean_up_tokenization_spaces": False,
            **({"chat_template": JINJA_TEMPLATE} if chat else {}),
        },
    )
    return config


def _write_json(folder: str, name: str, obj: dict) -> None:
    with open(os.path.join(folder, name), "w") as f:
        json.dump(obj, f, indent=2)
