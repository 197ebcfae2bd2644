"""Checkpoints: the one place they are read, written and found.

Reading never runs code from a file: single-file checkpoints load with `torch.load(weights_only=True)`;
a sharded (torch.distributed.checkpoint) folder is read only when it carries lmstack's manifest, whose
digest of the folder's pickled `.metadata` matches, and when that pickle names nothing but DCP's own
metadata classes (checked by an allow-list unpickler before DCP unpickles it). Writing is atomic: a
temporary name in the same folder, flushed, then renamed, for files and folders alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

MANIFEST = "lmstack-checkpoint.json"  # in a sharded checkpoint folder: what wrote it, the .metadata digest
DCP_METADATA = ".metadata"


class CheckpointError(ValueError):
    """A checkpoint that lmstack will not read (unsafe, foreign or damaged); the message says why."""


# ---- the keys lmstack adds to Lightning's checkpoint dict (named here, and nowhere else) ----------------
TOKENIZER = "tokenizer_json"  # the tokenizer's JSON: a checkpoint needs nothing else to generate or evaluate
TOKEN_BYTES = "token_bytes"  # UTF-8 bytes behind each token id, for bits per byte
STEP_GUARD = "step_guard"  # skipped and non-finite step counts
RECORD = "lmstack"  # {"identity": what an exact resume needs unchanged, "tokens": tokens trained}


def model_checkpoint(model, **fields) -> dict:
    """A checkpoint of a bare model (no optimizer state), laid out as a training run's: what `load_checkpoint`
    and `init_from=` read; `fields` are added as they are (e.g. where it came from)."""
    return {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model_cfg": model.cfg.to_dict()},
        "global_step": 0,
        "epoch": 0,
        **fields,
    }


def add_extras(
    ckpt: dict, tokenizer_json: str | None, token_bytes, step_guard: dict | None = None, record: dict | None = None
) -> dict:
    """Write lmstack's keys into a checkpoint dict (the training module's save hook, `import-hf`)."""
    if tokenizer_json is not None:
        ckpt[TOKENIZER] = tokenizer_json
    if token_bytes is not None:
        ckpt[TOKEN_BYTES] = token_bytes
    if step_guard is not None:
        ckpt[STEP_GUARD] = step_guard
    if record is not None:
        ckpt[RECORD] = record
    return ckpt


def extras(ckpt: dict) -> dict:
    """lmstack's keys of a checkpoint dict, with the defaults of checkpoints that predate some of them."""
    return {
        "tokenizer_json": ckpt.get(TOKENIZER),
        "token_bytes": ckpt.get(TOKEN_BYTES),
        "step_guard": ckpt.get(STEP_GUARD) or {},
        "record": ckpt.get(RECORD) or {},
    }


# ---- reading -------------------------------------------------------------------------------------------
_DCP_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint.planner",
)
_DCP_NAMES = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _DcpMetadataUnpickler(pickle.Unpickler):
    """DCP writes `.metadata` as a plain protocol-5 pickle, which torch.load's weights-only reader cannot
    parse (it stops at the FRAME opcode), so this allow-list does its job: the pickle may name only DCP's
    own metadata classes (dataclasses and enums), torch dtypes, `torch.Size` and paths."""

    def find_class(self, module: str, name: str):
        obj = (
            super().find_class(module, name)
            if module in _DCP_MODULES or module == "torch" or (module, name) in _DCP_NAMES
            else None
        )
        ok = (
            (module, name) in _DCP_NAMES
            or (module in _DCP_MODULES and isinstance(obj, type))
            or (module == "torch" and isinstance(obj, torch.dtype))
        )
        if not ok:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return obj


def checkpoint_digest(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file, or of a sharded folder's files (names and contents, in name order): what
    a LoRA stage's checkpoints record of their base."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + checkpoint_digest(f).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sharded(folder: Path) -> None:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(
            f"{folder} is a sharded checkpoint folder without lmstack's manifest ({MANIFEST}); "
            "lmstack reads only sharded checkpoints it wrote (their metadata is a pickle)"
        )
    try:
        expected = json.loads(manifest.read_text())["metadata_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest} is not an lmstack checkpoint manifest ({e})") from None
    meta = folder / DCP_METADATA
    if not meta.is_file() or checkpoint_digest(meta) != expected:
        raise CheckpointError(
            f"{folder}: {DCP_METADATA} is missing or differs from what lmstack wrote "
            f"(digest in {MANIFEST}); refusing to unpickle it"
        )
    try:
        with open(meta, "rb") as f:
            _DcpMetadataUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 - any failure means: not the metadata DCP writes
        raise CheckpointError(f"{folder}: {DCP_METADATA} holds more than checkpoint metadata ({e})") from None


def _torch_load(path: Path, map_location="cpu", **kw):
    """torch.load(weights_only=True) of a checkpoint file, with what went wrong as a CheckpointError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, **kw)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused, it holds objects other than tensors and plain values, which "
            f"lmstack never unpickles ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:  # truncated or not a torch file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """The checkpoint dict of a file or sharded folder (gathered into one state dict in this process)."""
    path = Path(path)
    if path.is_dir():
        check_sharded(path)
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        try:
            return _load_distributed_checkpoint(path)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: refused ({e})") from None
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return _torch_load(path, map_location=map_location)


def read_metadata(path: str | os.PathLike) -> dict:
    """A checkpoint's dict without reading its tensors (memory-mapped; a sharded folder's meta.pt): enough
    to know that it reads completely and what its lmstack record says."""
    path = Path(path)
    if path.is_dir():
        check_sharded(path)
        return _torch_load(path / "meta.pt")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return _torch_load(path, mmap=True)


def read_record(path: str | os.PathLike) -> dict:
    """The checkpoint's lmstack record ({"identity": what exact resume needs, "tokens": trained}) and its
    step ({} for checkpoints older than the record)."""
    meta = read_metadata(path)
    record = extras(meta)["record"]
    return {**record, "step": meta.get("global_step", 0)} if record else {}


def load_checkpoint(path: str, device: str = "cpu"):
    """(model, tokenizer or None, checkpoint dict) from an lmstack checkpoint (file or sharded folder)."""
    from tokenizers import Tokenizer

    from lmstack.model import ModelConfig, Transformer

    ckpt = read_checkpoint(path, map_location=device)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if not isinstance(hp, dict) or "model_cfg" not in hp:
        raise CheckpointError(f"{path} is not an lmstack checkpoint (no hyper_parameters.model_cfg)")
    lora = extras(ckpt)["record"].get("lora")
    try:
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        if lora:  # a LoRA stage's adapters: its base, checked, with them merged in (lmstack.adapt.lora)
            from lmstack.adapt.lora import adapted_model

            vocab = ModelConfig.from_dict(hp["model_cfg"]).vocab_size
            model = adapted_model(lora_base(lora, str(path)), lora, state, vocab)
        else:
            model = Transformer(ModelConfig.from_dict(hp["model_cfg"]))
            model.load_state_dict(state)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as e:  # a damaged or foreign file
        raise CheckpointError(f"{path}: not a loadable lmstack checkpoint ({type(e).__name__}: {e})") from None
    model.to(device).eval()
    text = extras(ckpt)["tokenizer_json"]
    tok = Tokenizer.from_str(text) if text else None
    return model, tok, ckpt


def base_record(path: str) -> dict:
    """What a LoRA stage's checkpoints record of the checkpoint they adapt: its absolute path and digest."""
    path = os.path.abspath(path)
    return {"base": path, "digest": checkpoint_digest(path)}


def lora_base(record: dict, where: str):
    """The base model a LoRA checkpoint (`where`) adapts, refused when it is missing or its digest differs."""
    base = record["base"]
    if not os.path.exists(base):
        raise CheckpointError(f"{where}: its LoRA base {base} is missing (the adapters need it)")
    digest = checkpoint_digest(base)
    if digest != record["digest"]:
        raise CheckpointError(f"{where}: its LoRA base {base} has changed: sha256 {digest}, the adapters were "
                              f"trained on sha256 {record['digest']}")  # fmt: skip
    return load_checkpoint(base)[0]


# ---- writing ------------------------------------------------------------------------------------------
def temp_sibling(path: Path, token: str | None = None) -> Path:
    """A hidden name beside `path`, unique to this write (same folder: the rename is atomic)."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{token or secrets.token_hex(6)}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, flushed to disk, then renamed over `path`; a full
    disk raises `DiskFull` naming `path`, with the temporary file gone and the file there before unchanged."""
    from .diskfull import tensor_bytes, writing

    path = Path(path)
    with writing(path, tensor_bytes(obj)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path)
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def publish_folder(tmp: Path, final: Path) -> None:
    """A finished checkpoint folder takes `final`'s place: the old one (ours) is moved aside, the new one
    renamed in, the old one deleted; a reader finds the old or the new folder, never half of one."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    old = None
    if final.is_dir():
        old = temp_sibling(final, "old")
        os.replace(final, old)
    elif final.exists():
        final.unlink()
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: the bytes
        shutil.copy2(src, dst)


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """`dst` (lmstack's own, e.g. last.ckpt) becomes the finished checkpoint `src` of the same step, file or
    folder: hard links where the file system allows (nothing rewritten), published like a write."""
    src, dst = Path(src), Path(dst)
    tmp = temp_sibling(dst)
    if src.is_dir():
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, tmp)
    publish_folder(tmp, dst)


def write_manifest(folder: Path) -> None:
    """Marks a sharded checkpoint folder as lmstack's (called once its `.metadata` is written)."""
    import time

    (folder / MANIFEST).write_text(
        json.dumps(
            {
                "writer": "lmstack",
                "format": "torch.distributed.checkpoint",
                "created": time.time(),
                "metadata_sha256": checkpoint_digest(folder / DCP_METADATA),
            }
        )
    )


# ---- finding --------------------------------------------------------------------------------------------
def readable(path: Path) -> bool:
    """Whether the checkpoint reads (a truncated or foreign one does not), without loading its tensors."""
    try:
        read_metadata(path)
        return True
    except (CheckpointError, FileNotFoundError):
        return False


def checkpoint_io():
    """The CheckpointIO plugin of every lmstack Trainer: atomic writes, reads with weights_only=True
    (defined here, not at import, so that reading a checkpoint does not import Lightning)."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning's checkpoint I/O, writing each file atomically and reading with weights_only=True."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            if storage_options is not None:
                raise TypeError("AtomicCheckpointIO takes no storage_options")
            atomic_save(checkpoint, path)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return read_checkpoint(path, map_location=map_location or "cpu")

    return AtomicCheckpointIO()
