"""An adaptation stage (`python train.py stage=sft init_from=CKPT`): the checkpoint's model and tokenizer,
the chat tokens added (and the embedding grown), the stage's tasks rendered with the chat template, then
pretraining's Trainer, optimizer, schedule, strategy, logging and checkpoints on the stage's loss. After
training it scores held-out exact match and records the stage in `<run_dir>/recipe.json` (stage -> numbers,
merged with what earlier stages of the recipe wrote there).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lmstack.config import ConfigError, RunSpec
from lmstack.train.schedules import tokens_of

from .chat import add_chat_tokens, render, resize_vocab
from .evaluate import exact_match
from .module import SFTModule
from .sft import pack
from .tasks import Example, Task, make_task

log = logging.getLogger("lmstack")
STAGE_KEYS = {"name", "tasks", "train_examples", "test_examples", "system", "reduction", "epochs", "max_new_tokens",
              "test_fraction"}


class Rows(Dataset):
    def __init__(self, rows: dict[str, torch.Tensor]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.rows.items()}


class RowsDataModule(L.LightningDataModule):
    """Packed rows, shuffled per epoch and split over ranks; held-out rows for validation."""

    def __init__(self, train: dict, val: dict, batch_size: int, seed: int):
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = Rows(train), Rows(val), batch_size, seed
        self.seq_len = train["input_ids"].shape[1]

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        t = self.trainer
        sampler = DistributedSampler(ds, num_replicas=t.world_size if t else 1, rank=t.global_rank if t else 0,
                                     shuffle=shuffle, seed=self.seed, drop_last=shuffle)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=shuffle)

    def train_dataloader(self):
        return self._loader(self.train, True)

    def val_dataloader(self):
        return self._loader(self.val, False)


def stage_tasks(stage: dict) -> dict[str, Task]:
    tasks = stage.get("tasks") or {}
    if not tasks:
        raise ConfigError("stage.tasks is empty; name at least one task (arithmetic, reverse, sort, count, "
                          "constraints, or a .jsonl file)")
    try:
        return {name: make_task(name, **(args or {})) for name, args in tasks.items()}
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise ConfigError(f"stage.tasks: {e}") from None


def split_examples(stage: dict, tasks: dict[str, Task], seed: int) -> tuple[list[Example], list[Example]]:
    """Each task's train and held-out test examples (disjoint prompts)."""
    frac = stage.get("test_fraction", 0.2)
    train, test = [], []
    for key, t in tasks.items():
        for split, out, n in (("train", train, stage["train_examples"]), ("test", test, stage["test_examples"])):
            for e in t.generate(n, split, seed, frac):
                e.task = key  # the configured name: the verifier to use
                out.append(e)
    return train, test


def conversation(ex: Example, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.answer}]


def record(run_dir: Path, stage: str, numbers: dict, recipe_file: str | None = None) -> Path:
    """Merge this stage's numbers into recipe.json (the run's own, or the recipe's shared file)."""
    path = Path(recipe_file) if recipe_file else run_dir / "recipe.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[stage] = numbers
    path.write_text(json.dumps(data, indent=2))
    return path


def run_stage(spec: RunSpec, config: dict, build_trainer) -> dict:
    from lmstack.generate import load_checkpoint

    stage = spec.stage
    unknown = set(stage) - STAGE_KEYS - {"recipe_file"}
    if unknown:
        raise ConfigError(f"stage.{sorted(unknown)[0]} is not a stage option; allowed: {', '.join(sorted(STAGE_KEYS))}")
    if stage["name"] != "sft":
        raise ConfigError(f"stage={stage['name']!r} is not available yet; available: sft")
    if not spec.init_from:
        raise ConfigError("stage=sft starts from a checkpoint: set init_from=PATH (lmstack or lmstack import-hf)")
    if stage.get("reduction", "mean") not in ("mean", "sum"):
        raise ConfigError(f"stage.reduction={stage.get('reduction')!r}; allowed: mean, sum")
    run_dir = Path(spec.run_dir)
    L.seed_everything(spec.seed, workers=True)
    model, tok, _ = load_checkpoint(spec.init_from)
    if tok is None:
        raise ConfigError(f"init_from={spec.init_from!r} carries no tokenizer")
    tok = add_chat_tokens(tok)
    resize_vocab(model, tok.get_vocab_size())
    tasks = stage_tasks(stage)
    train, test = split_examples(stage, tasks, spec.seed)
    system = stage.get("system")
    seq_len = spec.data.seq_len
    train_rows = pack([render(tok, conversation(e, system)) for e in train], seq_len)
    val_rows = pack([render(tok, conversation(e, system)) for e in test], seq_len)

    trainer = build_trainer(spec, drop=("spike",))  # spike tracing reads pretraining documents
    per_step = spec.data.batch_size * trainer.accumulate_grad_batches * trainer.world_size
    max_steps = max(1, math.ceil(stage.get("epochs", 1) * len(train_rows["input_ids"]) / per_step))
    trainer.fit_loop.epoch_loop.max_steps = max_steps
    tps = per_step * seq_len
    total = max_steps * tps
    sched = spec.schedule
    schedule = {"name": sched.name, "peak_lr": spec.optimizer.lr, "total_tokens": total,
                "warmup_tokens": tokens_of(sched.warmup_tokens, total), "min_lr": sched.min_lr,
                "decay_tokens": tokens_of(sched.decay_tokens, total)}
    cfg = {**model.cfg.to_dict(), "attn_backend": spec.attention.backend}
    module = SFTModule(cfg, asdict(spec.optimizer), schedule, 0.0, spec.train.grad_clip, tps, config,
                       spec.train.max_nonfinite_steps, spec.train.activation_checkpointing, spec.train.compile,
                       reduction=stage.get("reduction", "mean"))
    module.model.load_state_dict(model.state_dict())
    module.tokenizer_json = tok.to_str()
    from lmstack.data.tokenizer import token_byte_lengths

    module.set_token_bytes(torch.from_numpy(token_byte_lengths(tok)))
    dm = RowsDataModule(train_rows, val_rows, spec.data.batch_size, spec.seed)
    max_new = stage.get("max_new_tokens", 16)
    before = exact_match(model.eval(), tok, test, tasks, max_new, system) if trainer.is_global_zero else None
    if trainer.is_global_zero:
        print(f"stage sft: {len(train)} train / {len(test)} held-out conversations in {len(train_rows['input_ids'])} "
              f"packed rows of {seq_len} tokens; {max_steps} steps; held-out exact match before: "
              f"{before['exact_match']:.3f}")
    trainer.fit(module, datamodule=dm)
    result = {"steps": trainer.global_step, "run_dir": str(run_dir)}
    if trainer.is_global_zero:
        final = module.model if trainer.world_size == 1 else load_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))[0]
        after = exact_match(final, tok, test, tasks, max_new, system)
        numbers = {"exact_match": after["exact_match"], "exact_match_before": before["exact_match"],
                   "held_out": after["n"], "train_conversations": len(train), "steps": trainer.global_step,
                   "checkpoint": str(run_dir / "checkpoints" / "last.ckpt")}
        path = record(run_dir, "sft", numbers, stage.get("recipe_file"))
        result.update(numbers, objective=1.0 - after["exact_match"])
        for s in after["samples"][:3]:
            print(f"  {s['prompt']!r} -> {s['response']!r} (answer {s['answer']!r})")
        print(f"held-out exact match: {before['exact_match']:.3f} -> {after['exact_match']:.3f}; {path}")
    return result
