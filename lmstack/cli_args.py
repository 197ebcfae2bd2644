"""What every `lmstack` command shares: the usage text, `key=value` arguments checked like config values,
Hydra composition of `conf/`, claimed output folders, and refusals as one-line exits."""

from __future__ import annotations

import contextlib

USAGE = """usage:
  lmstack train [hydra overrides]        pretrain (the same as `python train.py`)
  lmstack eval ckpt=PATH tasks='[NAME_OR_PATH,...]' out=DIR [evals=olmes batch_size=16 limit=N seq_len=N device=cpu]
  lmstack prepare inputs='[PATH_OR_GLOB,...]' output_dir=DIR [prepare=web|prose] [hydra overrides]
  lmstack prepare-merge shards='[DIR_OR_GLOB,...]' output_dir=DIR [the same prepare overrides]
  lmstack generate ckpt=PATH prompt=TEXT [max_new_tokens=64 temperature=0.8 top_k=50 top_p=1.0 seed=0 device=cpu]
  lmstack report SWEEP_DIR [metric=val/bpb] [--fit predict_flops=C]   rank a sweep's jobs (report.md/.csv/png)
  lmstack plan [params=N tokens=D flops=C gpu_hours=H usd=$ (any two)] [gpu=h100 mfu=0.4 usd_per_gpu_hour=2 gpus=1]
  lmstack chat ckpt=PATH [system=TEXT max_new_tokens=128 temperature=0 top_k=50]   chat with an SFT/DPO/RLVR model
  lmstack export ckpt=PATH format=hf out=DIR       a Hugging Face folder (Llama or OLMo 2)
  lmstack import-hf DIR [out=DIR/lmstack.ckpt]     a Hugging Face Llama / OLMo 2 folder as a checkpoint
"""


def parse_args(argv: list[str], defaults: dict) -> dict:
    """key=value arguments, each cast to its default's type; values are taken verbatim (newlines kept)."""
    given = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value arguments, got {arg!r}\n{USAGE}")
        if key not in defaults:
            raise SystemExit(f"unknown argument {key!r}; allowed: {', '.join(defaults)}")
        default = defaults[key]
        try:
            given[key] = value if default == "???" or isinstance(default, str) else type(default)(value)
        except ValueError:
            raise SystemExit(f"{key}={value!r}: expected a {type(default).__name__}") from None
    missing = [k for k, v in defaults.items() if v == "???" and k not in given]
    if missing:
        raise SystemExit(f"missing argument {missing[0]}=...\n{USAGE}")
    check_args(given)
    return {**defaults, **given}


def check_args(args: dict) -> None:
    """The config's rules for every value (finite floats, seeds >= 0), as a command-line error."""
    from lmstack.config.validate import ConfigError, check_values

    try:
        check_values(args)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


@contextlib.contextmanager
def owned_output(path: str, kind: str, inputs: list[str]):
    """The output folder of a command, claimed (`lmstack.ownership`), or the reason it cannot be, as an
    exit message."""
    from lmstack.ownership import OwnedFolder, OwnershipError

    try:
        owned = OwnedFolder(path, kind, inputs).__enter__()
    except OwnershipError as e:
        raise SystemExit(f"out={path}: {e}") from None
    try:
        yield owned
    finally:
        owned.__exit__(None, None, None)


@contextlib.contextmanager
def refusals():
    """What lmstack refuses (a bad value, a folder it may not write, a missing input) as a one-line exit."""
    from lmstack.ownership import OwnershipError

    try:
        yield
    except (ValueError, FileNotFoundError, OwnershipError) as e:
        raise SystemExit(f"lmstack: {e}") from None


def compose(name: str, overrides: list[str], resolve_only: str | None = None) -> dict:
    import os

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    if resolve_only:  # one section (the rest may interpolate what only a Hydra run defines)
        node, out = cfg.get(resolve_only) or {}, {}
        for key in node:
            try:
                out[key] = (
                    OmegaConf.to_container(node[key], resolve=True) if OmegaConf.is_config(node[key]) else node[key]
                )
            except Exception:  # noqa: BLE001 - e.g. ${run_dir}, defined by a Hydra run only
                continue
        return out
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"missing argument {missing[0]}=...\n{USAGE}")
    return OmegaConf.to_container(cfg, resolve=True)


def load_model(ckpt: str, device: str):
    """(model, tokenizer, checkpoint dict) for a command, or the reason it cannot load as an exit message."""
    from lmstack.checkpoint import load_checkpoint

    try:
        model, tok, state = load_checkpoint(ckpt, device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    if tok is None:
        raise SystemExit(f"{ckpt} carries no tokenizer")
    return model, tok, state
