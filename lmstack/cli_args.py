"""What every `lmstack` command shares: the usage text, its arguments composed by Hydra into a typed section,
and claimed output folders (refusals end in one line: `lmstack.failures`)."""

from __future__ import annotations

import contextlib
import dataclasses

USAGE = """usage: lmstack COMMAND [key=value ...]   (Hydra overrides; every command composes conf/COMMAND.yaml)
  lmstack train [overrides]              pretrain (the same as `python -m lmstack.train`, `python train.py`)
  lmstack eval ckpt=PATH tasks='[NAME_OR_PATH,...]' out=DIR [suite=olmes batch_size=16 limit=N seq_len=N device=cpu]
               [harness_tasks='[LM_EVAL_TASK_OR_YAML,...]' harness_include='[DIR]' num_fewshot=K]
  lmstack lm_eval --model lmstack --model_args ckpt=PATH --tasks ...   lm-evaluation-harness's own command line
  lmstack prepare inputs='[PATH_OR_GLOB,...]' output_dir=DIR [prepare=web|prose] [prepare.KEY=VALUE]
  lmstack generate ckpt=PATH prompt=TEXT [max_new_tokens=64 temperature=0.8 top_k=50 top_p=1.0 seed=0 device=cpu]
  lmstack report dir=SWEEP_DIR [metric=val/bpb fit=true predict_flops=C]   rank a sweep's jobs (report.md/.csv/png)
  lmstack plan [params=N tokens=D flops=C gpu_hours=H usd=$ (any two)] [gpu=h100 mfu=0.4 usd_per_gpu_hour=2 gpus=1]
  lmstack chat ckpt=PATH [system=TEXT max_new_tokens=128 temperature=0 top_k=50]   chat with an SFT/DPO/RLVR model
  lmstack export ckpt=PATH format=hf out=DIR       a Hugging Face folder (Llama or OLMo 2)
  lmstack import-hf dir=DIR [out=DIR/lmstack.ckpt] a Hugging Face Llama / OLMo 2 folder as a checkpoint
  lmstack soup ckpts='[CKPT,...]' out=DIR [weights='[W,...]']   average checkpoints of one model (DIR/soup.ckpt)
  lmstack overlap corpus='[DIR_OR_FILE,...]' tasks='[NAME_OR_PATH,...]' [ngram=13 out=FILE]   eval n-grams in a corpus
  lmstack quality-train positives='[PATH,...]' negatives='[PATH,...]' out=DIR [unit=paragraph balance=true]
                                                   a fastText quality classifier with held-out figures
Values with spaces or Hydra's special characters are quoted inside the argument: "prompt='def main('".
"""


def command_args(command: str, argv: list[str]):
    """`conf/<command>.yaml` composed with `argv` (Hydra overrides) into the command's typed arguments
    (`lmstack.config.commands`), or the reason it cannot be, as an exit message."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from lmstack.config.commands import COMMAND_ARGS
    from lmstack.config.store import compose
    from lmstack.config.validate import ConfigError, check_values, to_dataclass

    try:
        cfg = compose(command, argv)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise SystemExit(f"missing argument {missing[0]}=...\n{USAGE}")
        values = OmegaConf.to_container(cfg, resolve=True)
        check_values(values)
        return to_dataclass(COMMAND_ARGS[command], values, "")
    except ConfigError as e:
        raise SystemExit(f"lmstack {command}: {e}") from None
    except (HydraException, OmegaConfBaseException) as e:  # an override Hydra cannot parse, an unknown key
        lines = str(e).splitlines()
        if lines[0].startswith("Could not override"):
            allowed = ", ".join(f.name for f in dataclasses.fields(COMMAND_ARGS[command]))
            key = lines[0].split(maxsplit=3)[3].rstrip(".")
            raise SystemExit(f"lmstack {command}: unknown argument {key}; allowed: {allowed}") from None
        raise SystemExit(f"lmstack {command}: {' ('.join(lines[:2])}){chr(10)}{USAGE}") from None


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


def eval_sets(evals: str) -> dict:
    """The `sets`, `tasks` and `generative` tasks of the conf/evals option `evals`, resolved as far as they
    can be outside a training run (entries that interpolate what only a run defines, such as ${run_dir}, are
    left out)."""
    from omegaconf import OmegaConf

    from lmstack.config.store import compose

    node, out = compose("train", [f"evals={evals}"]).get("evals") or {}, {}
    for key in ("sets", "tasks", "generative"):
        try:
            out[key] = OmegaConf.to_container(node[key], resolve=True) if node.get(key) is not None else {}
        except Exception:  # noqa: BLE001 - an interpolation only a Hydra run defines
            out[key] = {}
    return out


def eval_task_paths(names: list[str], suite: str = "olmes") -> list[str]:
    """Eval sets to decontaminate against, as paths: a name of a conf/evals task becomes its folder."""
    import os

    known = None
    out = []
    for name in names:
        if os.path.exists(os.path.expanduser(name)):
            out.append(name)
            continue
        known = eval_sets(suite)["tasks"] if known is None else known
        if name not in known:
            raise SystemExit(f"eval set {name!r} is neither a task of evals={suite} ({', '.join(known)}) nor a path")
        out.append(known[name]["path"])
    return out


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
