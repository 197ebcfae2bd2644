"""`lmstack soup ckpts='[A,B,...]' out=DIR [weights='[...]']`: the weighted average of the weights of several
checkpoints of one model (a "model soup", as OLMo 2 averages its stage-2 anneals), written as an ordinary
checkpoint, DIR/soup.ckpt, that every command reads (eval, generate, export, chat, init_from=).

Checkpoints of different shapes or tokenizers cannot be averaged and are refused before anything is
written, naming what differs. The average is taken in float64 and cast back to each tensor's dtype; integer
and boolean tensors must be equal in every checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

SOUP_FILE = "soup.ckpt"


def soup_weights(n: int, weights: list[float] | None) -> list[float]:
    """The mixing weights, normalised to sum to 1 (uniform when none are given)."""
    if n < 2:
        raise ValueError(f"a soup needs at least 2 checkpoints; got {n}")
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"weights has {len(weights)} values for {n} checkpoints")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0; got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def _differing(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def average_checkpoints(paths: list[str], weights: list[float] | None = None):
    """(model holding the average, tokenizer, first checkpoint's dict, normalised weights)."""
    from lmstack.checkpoint import extras, load_checkpoint

    mix = soup_weights(len(paths), weights)
    model = tok = first = None
    acc: dict[str, torch.Tensor] = {}
    for path, w in zip(paths, mix):
        m, t, ckpt = load_checkpoint(path)
        if first is None:
            model, tok, first = m, t, ckpt
        else:
            keys = _differing(first["hyper_parameters"]["model_cfg"], ckpt["hyper_parameters"]["model_cfg"])
            if keys:
                raise ValueError(f"{path} is not the same model as {paths[0]}: model config differs in {keys}")
            if extras(ckpt)["tokenizer_json"] != extras(first)["tokenizer_json"]:
                raise ValueError(f"{path} has another tokenizer than {paths[0]}: token ids would not match")
        for name, value in m.state_dict().items():
            if value.is_floating_point():
                acc[name] = acc[name] + w * value.double() if name in acc else w * value.double()
            elif name not in acc:
                acc[name] = value.clone()
            elif not torch.equal(acc[name], value):
                raise ValueError(f"{path}: {name} is not a float tensor and differs from {paths[0]}'s")
    state = model.state_dict()
    model.load_state_dict({k: acc[k].to(state[k].dtype) for k in state})
    return model, tok, first, mix


def write_soup(paths: list[str], out: str, weights: list[float] | None = None) -> Path:
    """Average `paths` into out/soup.ckpt (a folder lmstack owns: new, empty or an earlier soup's)."""
    from lmstack.checkpoint import add_extras, atomic_save, extras, model_checkpoint
    from lmstack.ownership import OwnedFolder, resolve

    sources = [str(resolve(p)) for p in paths]
    model, _, first, mix = average_checkpoints(sources, weights)  # everything is checked before writing
    with OwnedFolder(out, "soup", sources) as owned:
        meta = extras(first)
        ckpt = model_checkpoint(model, soup={"checkpoints": sources, "weights": mix})
        add_extras(ckpt, meta["tokenizer_json"], meta["token_bytes"])
        staging = owned.staging()
        atomic_save(ckpt, staging / SOUP_FILE)
        owned.publish(staging, last=SOUP_FILE)  # replaces only an earlier soup's file
        owned.update(weights=mix)
    return owned.path / SOUP_FILE
