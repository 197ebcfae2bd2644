"""`stage=pretrain`, the stage of a config that names none: the corpus prepared (or reused), a fresh model or
init_from's weights, trained for train.max_tokens on the next-token objective, with exact resume (ckpt_path)
and rewinds asked for by step plugins; val/bpb before and after, and `result.json` in the run directory."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lmstack.config.schema import ConfigError, RunSpec
from lmstack.config.stage import StageSection
from lmstack.data.datamodule import LMDataModule
from lmstack.data.tokenizer import eos_id
from lmstack.model import ModelConfig
from lmstack.registry import register
from lmstack.train.context import RunContext
from lmstack.train.elastic import keep_global_batch
from lmstack.train.hooks import step_plugins
from lmstack.train.module import TrainModule, build_module
from lmstack.train.objective import NextToken
from lmstack.train.schedules import tokens_of
from lmstack.train.step_guard import TrainingStopped

from .base import Stage
from .resume import check_resume, read_resume_record, resolve_ckpt, run_identity
from .trainer import check_global_batch, set_budget, tokens_per_step, validate_quietly

log = logging.getLogger("lmstack")


@dataclass
class PretrainSection(StageSection):
    """Pretraining has no options of its own: data_mix, data, train, optimizer and schedule say it all."""


def load_init(spec: RunSpec) -> dict:
    """The init_from checkpoint's model state, model config and tokenizer (saved where the corpus
    preparation can read it: the cache, named by its content)."""
    from lmstack.checkpoint import extras, load_checkpoint

    if not os.path.exists(spec.init_from):
        raise ConfigError(f"init_from={spec.init_from!r} does not exist")
    model, _, ckpt = load_checkpoint(spec.init_from)
    text = extras(ckpt)["tokenizer_json"]
    if not text:
        raise ConfigError(f"init_from={spec.init_from!r} carries no tokenizer")
    folder = Path(os.path.expanduser(spec.paths.cache_dir)) / "tokenizers"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha256(text.encode()).hexdigest()[:16] + ".json")
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    cfg = model.cfg.with_backend(spec.model.attention.backend).to_dict()
    if spec.data.seq_len > cfg["max_seq_len"]:
        raise ConfigError(f"data.seq_len={spec.data.seq_len} exceeds init_from's max_seq_len={cfg['max_seq_len']}")
    return {
        "state": model.state_dict(),
        "model_cfg": cfg,
        "tokenizer": str(path),
        "step": ckpt.get("global_step", 0),
        "optimizer_states": ckpt.get("optimizer_states") or [],  # what stage=anneal keeps
        "tokens": extras(ckpt)["record"].get("tokens"),
    }


def build(
    spec: RunSpec, trainer, config: dict | None = None, resume: dict | None = None, anneal: bool = False
) -> tuple[TrainModule, LMDataModule]:
    """The data module (corpus prepared) and the training module for this spec and trainer. `resume`: the
    record of the checkpoint the run resumes (the budget left is counted from its tokens); `anneal`: init_from's
    optimizer state carries on (stage=anneal)."""
    tps = tokens_per_step(spec, trainer)
    check_global_batch(spec, tps)
    max_steps = math.ceil(spec.train.max_tokens / tps)
    if resume and "tokens" in resume:
        max_steps = resume["step"] + max(0, math.ceil((spec.train.max_tokens - resume["tokens"]) / tps))
    set_budget(trainer, max_steps)
    init = load_init(spec) if spec.init_from else None
    phases = [
        {"start_sample": tokens_of(p.start_tokens, max_steps * tps) // spec.data.seq_len, "weights": p.weights}
        for p in spec.data_mix.phases
    ]
    dm = LMDataModule(
        spec.data,
        spec.data_mix.sources,
        spec.paths.cache_dir,
        seed=spec.seed,
        total_micro_steps=max_steps * trainer.accumulate_grad_batches,
        phases=phases,
        tokenizer=init["tokenizer"] if init else None,
    )
    dm.prepare_data()
    tok_vocab = dm.tokenizer_vocab_size
    if not init and spec.model.vocab_size is not None and spec.model.vocab_size < tok_vocab:
        raise ConfigError(f"model.vocab_size={spec.model.vocab_size} is smaller than the tokenizer's {tok_vocab}")
    if init:  # the checkpoint's model; model/attention/norm groups other than the backend do not apply
        mcfg = ModelConfig.from_dict(init["model_cfg"])
    else:
        mcfg = replace(spec.model, vocab_size=spec.model.vocab_size or int(math.ceil(tok_vocab / 64) * 64))
        if mcfg.attention.document_mask:  # documents end with the tokenizer's end-of-text token
            mcfg = replace(mcfg, attention=replace(mcfg.attention, document_token=eos_id(dm.corpus.tokenizer())))
    context = RunContext(
        tokenizer_json=dm.corpus.tokenizer_path.read_text(),
        token_bytes=dm.token_bytes(),
        tokens_per_step=tps,
        run_identity=run_identity(spec, tps, dm, mcfg),
        document_files=dm.document_files,
    )
    if init and anneal:
        context.optimizer_state = init["optimizer_states"][0]
        context.origin = {"init_from": spec.init_from, "step": init["step"], "tokens": init["tokens"]}
    module = build_module(spec, mcfg.to_dict(), max_steps * tps, NextToken(spec.loss.z_loss), context, config)
    if init:
        module.model.load_state_dict(init["state"])
    return module, dm


def write_result(run_dir: Path, result: dict) -> None:
    """run_dir/result.json: how the run ended (completed | diverged) and its numbers, for sweep reports."""
    import json

    (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))


def summary(trainer, module, seconds: float) -> str:
    """The closing line of a run: what it trained, how long it took, and where its checkpoints are (with the
    time training waited for them, which the checkpoint callback records per save)."""
    minutes, secs = divmod(round(seconds), 60)
    line = (
        f"trained {trainer.global_step} steps, {module.tokens_at(trainer.global_step):,} tokens in "
        f"{minutes}m {secs:02d}s"
    )
    ckpt = trainer.checkpoint_callback
    stalls = getattr(ckpt, "stalls", None)
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        waited = f" (training waited {sum(s for _, s in stalls):.2f} s for {len(stalls)} saves)" if stalls else ""
        line += f"; checkpoints in {ckpt.dirpath}{waited}"
    return line


def sample_text(module: TrainModule, tokenizer, prompt: str, n: int, seed: int) -> str:
    from lmstack.generate import generate

    g = torch.Generator(device="cpu").manual_seed(seed)
    model = module.model.eval()
    ids = generate(
        model,
        tokenizer.encode(prompt).ids,
        n,
        temperature=0.8,
        top_k=50,
        generator=g if module.device.type == "cpu" else None,
    )
    return prompt + tokenizer.decode(ids)


@register("stage", "pretrain")
class Pretrain(Stage):
    section = PretrainSection
    starts_from_checkpoint = False
    pretraining_plugins = True
    anneal = False  # mid-training keeps init_from's optimizer (lmstack.stages.anneal)

    def __init__(self, spec: RunSpec, config: dict):
        super().__init__(spec, config)
        self.ckpt = resolve_ckpt(spec.ckpt_path, spec.paths.output_root, spec.run_dir)
        self.started = time.time()
        self.epochs: dict[str, float] = {}  # passes over each source's training blocks (rank 0's record)

    @property
    def resume_from(self):
        return self.ckpt

    def trainer(self, ckpt: str | None = None):
        """The trainer for resuming `ckpt` (this run's, or a rewind's): resumed on another world size, it keeps
        the checkpoint's global batch by accumulation (lmstack.train.elastic)."""
        trainer = super().trainer()
        self.record = read_resume_record(ckpt or self.ckpt)
        keep_global_batch(self.spec, trainer, self.record)
        return trainer

    def build(self, trainer):
        module, dm = build(self.spec, trainer, self.config, self.record, anneal=self.anneal)
        spec = self.spec
        if self.ckpt:
            check_resume(self.record, module.context.run_identity, spec.train.resume_changes, self.ckpt)
        if trainer.is_global_zero:
            if spec.init_from:
                print(f"initialised from {spec.init_from}: its weights, model configuration and tokenizer")
            n = module.model.num_params(non_embedding=True)
            print(f"model: {n / 1e6:.2f}M non-embedding parameters; corpus: {dm.corpus.root}")
            print(
                f"budget: {spec.train.max_tokens:,} tokens = {trainer.max_steps} steps of "
                f"{module.context.tokens_per_step:,} tokens"
            )
            print(f"run directory: {spec.run_dir}")
            self.epochs = dm.epochs(trainer.world_size)
            if len(self.epochs) > 1 or any(e > 1 for e in self.epochs.values()):
                print("epochs: " + ", ".join(f"{name} {e:.2f}" for name, e in self.epochs.items()))
        return module, dm

    def before(self, trainer, module, data) -> dict:
        if self.ckpt is not None:
            return {"val/bpb": None}
        before = validate_quietly(trainer, module, data)["val/bpb"]
        if trainer.is_global_zero:
            print(f"val/bpb before training: {before:.4f}")
        return {"val/bpb": before}

    def fit(self, trainer, module, data):
        trainer.fit(module, datamodule=data, ckpt_path=self.ckpt, weights_only=True)
        while (signal := module.rewind_requested) is not None:  # a step plugin asked (spike detection, rewind)
            skipped = sorted(signal.skip_steps)
            log.warning("rewinding to %s; steps skipped on the way forward: %s", signal.checkpoint, skipped)
            trainer = self.trainer(signal.checkpoint)
            module, data = build(self.spec, trainer, self.config, self.record, anneal=self.anneal)
            for plugin in step_plugins(trainer):
                plugin.on_rewind(signal)
            trainer.fit(module, datamodule=data, ckpt_path=signal.checkpoint, weights_only=True)
        return trainer, module, data  # a rewind builds a fresh trainer, module and data module

    def finish(self, trainer, module, data, before: dict, owned) -> dict:
        spec, run_dir = self.spec, Path(self.spec.run_dir)
        before = before["val/bpb"]
        if module.stop_reason:
            return self._diverged(trainer, module, before, owned)
        if module.last_val and module.last_val["step"] == trainer.global_step:
            after = module.last_val["val/bpb"]  # the fit validated at its last step already
        else:
            after = validate_quietly(trainer, module, data)["val/bpb"]
        result = {"val/bpb": after, "val/bpb_before": before, "steps": trainer.global_step, "run_dir": str(run_dir)}
        if module.context.origin:  # an anneal: where it started, and the learning rate it started at
            result["anneal"] = {**module.context.origin, "start_lr": spec.optimizer.lr}
        if trainer.is_global_zero:
            worse = not math.isfinite(after) or (before is not None and after > before)
            if owned is not None:
                owned.update(status="diverged" if worse else "completed")
            write_result(
                run_dir,
                {
                    "status": "diverged" if worse else "completed",
                    **result,
                    "tokens": module.tokens_at(trainer.global_step),
                    "non_embedding_params": module.model.num_params(non_embedding=True),
                    "nonfinite_steps": module.nonfinite.total,
                    "skipped_steps": module.skipped_steps,
                    "epochs": self.epochs,
                    "wall_s": time.time() - self.started,
                    "pid": os.getpid(),
                },
            )
            print(summary(trainer, module, time.time() - self.started))
            if before is not None:
                print(f"val/bpb before: {before:.4f}  after: {after:.4f}  ({(before - after) / before:.1%} lower)")
            else:
                print(f"val/bpb after: {after:.4f}")
        if spec.train.sample_tokens:  # on every rank: a sharded (FSDP2) model's forward passes gather from all
            tok = data.corpus.tokenizer()
            text = sample_text(module, tok, spec.train.sample_prompt, spec.train.sample_tokens, spec.seed)
            if trainer.is_global_zero:
                print("sample:\n" + text)
        return result

    def _diverged(self, trainer, module, before, owned):
        """The run stopped itself (non-finite losses): recorded as diverged, then raised."""
        if owned is not None:
            owned.update(status="diverged")
        if trainer.is_global_zero:
            write_result(
                Path(self.spec.run_dir),
                {
                    "status": "diverged",
                    "reason": module.stop_reason,
                    "val/bpb_before": before,
                    "steps": trainer.global_step,
                    "wall_s": time.time() - self.started,
                },
            )
        raise TrainingStopped(module.stop_reason)
