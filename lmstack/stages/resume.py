"""Resuming a run exactly: the checkpoint a `ckpt_path` names, its record, and the run identity an exact resume
needs unchanged (saved in every checkpoint, compared when a run resumes)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path

from lmstack.checkpoint import readable
from lmstack.config.schema import ConfigError, RunSpec
from lmstack.model import ModelConfig

log = logging.getLogger("lmstack")


def resolve_ckpt(ckpt_path: str | None, output_root: str, run_dir: str) -> str | None:
    """`last` or a run directory: that run's newest readable checkpoint (`lmstack.checkpoint`); a
    checkpoint path: must exist."""

    if ckpt_path is None:
        return None
    if ckpt_path == "last" or os.path.isdir(os.path.join(ckpt_path, "checkpoints")):
        try:
            return str(find_resume_checkpoint(ckpt_path, output_root, run_dir))
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
    if not os.path.exists(ckpt_path):
        raise ConfigError(f"ckpt_path={ckpt_path!r} does not exist")
    return ckpt_path


def read_resume_record(ckpt: str | None) -> dict:
    from lmstack.checkpoint import read_record

    return read_record(ckpt) if ckpt else {}


def run_identity(spec: RunSpec, tps: int, dm, mcfg: ModelConfig) -> dict:
    """What an exact resume needs unchanged; saved in every checkpoint, compared when a run resumes."""
    import hashlib
    import json

    def digest(root: Path) -> str:  # a cached corpus has a key; a prepared folder's files say what it holds
        return hashlib.sha256(
            b"".join((root / n).read_bytes() for n in ("meta.json", "stats.json") if (root / n).is_file())
        ).hexdigest()[:16]

    roots = {c.blocks_url or str(c.root): c.root for _, c, _, _ in dm.parts}
    corpus = [(where, digest(roots[where])) for where in sorted(roots)]
    return {
        "global_batch_tokens": tps,
        "seq_len": spec.data.seq_len,
        "seed": spec.seed,
        "data_mix": asdict(spec.data_mix),
        "blocklist": spec.data.blocklist,
        **({"instance_filter": list(spec.data.instance_filter_rule)} if spec.data.instance_filter else {}),
        "corpus": hashlib.sha256(json.dumps(corpus).encode()).hexdigest()[:16],
        "tokenizer": dm.corpus.meta.get("tokenizer"),
        "model": model_identity(mcfg),
        "optimizer": asdict(spec.optimizer),
        "schedule": asdict(spec.schedule),
    }  # not the budget: extending train.max_tokens to train on is what a resume is often for


def model_identity(mcfg: ModelConfig) -> dict:
    """The model's shape for the run identity: the attention as its key/value head count (the type and the
    backend do not change the weights), so records written before the nested config compare equal."""
    return {**mcfg.to_dict(), "attention": {"n_kv_heads": mcfg.n_kv_heads}}


def check_resume(record: dict, identity: dict, policy: str, ckpt: str) -> None:
    """Refuse (or, with train.resume_changes=allow, log) a resume whose identity differs from the checkpoint's."""
    saved = record.get("identity")
    if not saved:
        log.warning("%s records no run identity (an older checkpoint): resuming without checking it", ckpt)
        return
    if isinstance(saved.get("model"), dict):
        with contextlib.suppress(ValueError):  # the model as recorded before the nested config
            saved = {**saved, "model": model_identity(ModelConfig.from_dict(saved["model"]))}
    diff = [k for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)]
    if not diff:
        return
    detail = "; ".join(f"{k}: {saved.get(k)!r} -> {identity.get(k)!r}" for k in diff)
    if policy != "allow":
        raise ConfigError(
            f"ckpt_path={ckpt}: this run differs from the checkpoint's in {', '.join(diff)} ({detail}); "
            "an exact resume needs them unchanged; set train.resume_changes=allow to resume anyway"
        )
    log.warning("resuming %s with changes (train.resume_changes=allow): %s", ckpt, detail)


def _step(path: Path) -> int:
    m = re.search(r"step(\d+)", path.name)
    return int(m.group(1)) if m else -1


def find_resume_checkpoint(ckpt_path: str, output_root: str, run_dir: str) -> Path:
    """What `ckpt_path=last` or `ckpt_path=RUN_DIR` resumes: the newest readable last.ckpt of that run (of
    the newest other run under `output_root` for `last`), else its newest readable step checkpoint; says
    which it took when it is not last.ckpt. Raises FileNotFoundError when there is none."""
    if ckpt_path == "last":
        mine = Path(run_dir).resolve()
        runs = [
            p.parent
            for p in Path(output_root).glob("**/checkpoints")
            if p.parent.resolve() != mine and (p.parent / "config.yaml").is_file()
        ]
        if not runs:
            raise FileNotFoundError(f"ckpt_path=last: no run with checkpoints under {output_root!r}")
        run = max(runs, key=lambda r: (r / "config.yaml").stat().st_mtime)
    else:
        run = Path(ckpt_path)
    folder = run / "checkpoints"
    last = folder / "last.ckpt"
    candidates = ([last] if last.exists() else []) + sorted(folder.glob("step*.ckpt"), key=_step, reverse=True)
    for c in candidates:
        if readable(c):
            if c != last:
                log.warning(
                    "ckpt_path=%s: resuming %s (%s)",
                    ckpt_path,
                    c,
                    "last.ckpt does not read completely" if last.exists() else "the run has no last.ckpt",
                )
            return c
        log.warning("ckpt_path=%s: skipping %s, which does not read completely", ckpt_path, c)
    raise FileNotFoundError(f"ckpt_path={ckpt_path}: no readable checkpoint in {folder}")
