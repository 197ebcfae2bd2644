"""`lmstack import-hf`: a Hugging Face Llama or OLMo 2 folder (config.json, safetensors, tokenizer) as an lmstack
checkpoint. It reads only the folder it is given, safetensors and JSON only, and refuses a config that
lmstack cannot compute, naming the field (the layouts themselves: `lmstack.interop.hf`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmstack.model.config import AttentionConfig, ModelConfig, NormConfig

from .hf import ARCH, from_hf_state

IMPORTS = {a: name for a, name in ARCH.items() if a != "olmoe"}  # OLMoE is written, not read back (yet)


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refused when it leads outside the folder (`..`, an absolute name, a symlink out):
    an import reads only the folder it was given."""
    root = folder.resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{folder}: {name!r} leads outside the folder ({path}); refusing to read it")
    return path


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single, index = inside(folder, "model.safetensors"), inside(folder, "model.safetensors.index.json")
    if single.exists():
        return load_file(str(single))
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ValueError(f"{index}: weight_map must map tensor names to file names")
        files = sorted(set(weight_map.values()))
        return {k: v for f in files for k, v in load_file(str(inside(folder, f))).items()}
    raise FileNotFoundError(f"{folder} holds no model.safetensors (or model.safetensors.index.json)")


# config.json keys a model is built from: (key, required, type); each must be > 0 (initializer_range >= 0)
_HF_KEYS = [
    ("hidden_size", True, int),
    ("num_hidden_layers", True, int),
    ("num_attention_heads", True, int),
    ("vocab_size", True, int),
    ("intermediate_size", True, int),
    ("num_key_value_heads", False, int),
    ("max_position_embeddings", False, int),
    ("head_dim", False, int),
    ("rms_norm_eps", False, float),
    ("rope_theta", False, float),
    ("initializer_range", False, float),
]


def _check_hf_config(c) -> None:
    """Each key the model is built from is present where needed, of its type and in range."""
    import math

    if not isinstance(c, dict):
        raise ValueError("config.json must hold a JSON object")
    for key, required, tp in _HF_KEYS:
        v = c.get(key)
        if v is None:
            if required:
                raise ValueError(f"config.json has no {key}")
            continue
        number = not isinstance(v, bool) and isinstance(v, int if tp is int else (int, float))
        if not number or not math.isfinite(v) or v < 0 or (v == 0 and key != "initializer_range"):
            raise ValueError(f"config.json: {key}={v!r} cannot build a model (expected a positive {tp.__name__})")
    if not isinstance(c.get("architectures", []), list):
        raise ValueError("config.json: architectures must be a list")


def model_config_from_hf(c: dict) -> tuple[ModelConfig, str]:
    """The lmstack configuration of a Llama or OLMo 2 config.json, or ValueError naming what differs."""
    _check_hf_config(c)
    arch = next((a for a, name in IMPORTS.items() if name in c.get("architectures", [])), None)
    if arch is None:
        raise ValueError(f"architectures={c.get('architectures')}: lmstack imports {', '.join(IMPORTS.values())}")
    rope = c.get("rope_parameters") or {}
    blocks = [
        (k, v)
        for k, v in [
            ("attention_bias", c.get("attention_bias", False)),
            ("mlp_bias", c.get("mlp_bias", False)),
            ("hidden_act", c.get("hidden_act", "silu") != "silu" and c.get("hidden_act")),
            ("rope_scaling", c.get("rope_scaling")),
            ("rope_parameters.rope_type", rope.get("rope_type", "default") != "default" and rope.get("rope_type")),
        ]
        if v
    ]
    heads, d = c["num_attention_heads"], c["hidden_size"]
    if c.get("head_dim") not in (None, d // heads):
        blocks.append(("head_dim", c["head_dim"]))
    if blocks:
        key, value = blocks[0]
        raise ValueError(f"{key}={value} has no lmstack equivalent")
    if not isinstance(rope, dict):
        raise ValueError("config.json: rope_parameters must be an object")
    cfg = _model_config(
        d_model=d,
        n_layers=c["num_hidden_layers"],
        n_heads=heads,
        attention=AttentionConfig.for_heads(heads, c.get("num_key_value_heads") or heads),
        vocab_size=c["vocab_size"],
        max_seq_len=c.get("max_position_embeddings", 2048),
        mlp_hidden=c["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10_000.0))),
        norm=NormConfig(
            kind="rmsnorm",
            eps=c.get("rms_norm_eps", 1e-6),
            placement="pre" if arch == "llama" else "reordered",
            qk_norm=arch == "olmo2",
        ),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        init_std=c.get("initializer_range", 0.02),
    )
    return cfg, arch


def _model_config(**kw) -> ModelConfig:
    try:
        return ModelConfig(**kw)
    except ValueError as e:  # the model's own checks (divisibility, RoPE), in config.json's terms
        names = {
            "model.d_model": "hidden_size",
            "model.n_heads": "num_attention_heads",
            "attention.n_kv_heads": "num_key_value_heads",
        }
        msg = str(e)
        for ours, theirs in names.items():
            msg = msg.replace(f"{ours}=", f"{theirs}=")
        raise ValueError(f"config.json: {msg}") from None


def import_hf(folder: str, out: str) -> dict:
    """An lmstack checkpoint (the same dict a training run saves, without optimizer state) from a Hugging Face
    Llama or OLMo 2 folder; `init_from=` starts pretraining or adaptation from it."""
    from tokenizers import Tokenizer

    from lmstack.checkpoint import add_extras, atomic_save, model_checkpoint, readable
    from lmstack.data.tokenizer import token_byte_lengths
    from lmstack.model import Transformer

    root = Path(folder)
    if not inside(root, "config.json").exists():
        raise FileNotFoundError(f"{root} holds no config.json")
    if Path(out).exists() and not (Path(out).is_file() and readable(Path(out))):
        raise ValueError(f"out={out} exists and is not an lmstack checkpoint; lmstack will not overwrite it")
    try:
        config = json.loads(inside(root, "config.json").read_text())
    except ValueError as e:
        raise ValueError(f"config.json is not valid JSON ({e})") from None
    cfg, arch = model_config_from_hf(config)
    model = Transformer(cfg)
    state = from_hf_state(_read_hf_weights(root), cfg, arch)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{root}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    tok_file = inside(root, "tokenizer.json")
    tok_json = tok_file.read_text() if tok_file.exists() else None
    tb = None
    if tok_json:
        tb = torch.zeros(cfg.vocab_size, dtype=torch.long)
        lengths = torch.from_numpy(token_byte_lengths(Tokenizer.from_str(tok_json))).long()
        tb[: len(lengths)] = lengths[: cfg.vocab_size]
    ckpt = model_checkpoint(model, imported_from=str(root.resolve()))
    add_extras(ckpt, tok_json, tb)
    atomic_save(ckpt, out)
    return {"architecture": ARCH[arch], "params": sum(p.numel() for p in model.parameters()), "out": out}
