"""The pretraining job behind `python train.py`: validate, prepare data, train, report.

Returns the metrics a sweeper optimises (`val/bpb` after training).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from lmstack.config.schema import ConfigError, RunSpec, validate
from lmstack.data.datamodule import LMDataModule
from lmstack.data.tokenizer import eos_id
from lmstack.model import ModelConfig
from lmstack.train.anneal import anneal_spec, is_anneal
from lmstack.train.elastic import keep_global_batch
from lmstack.train.hooks import step_plugins
from lmstack.train.module import PretrainModule, module_args
from lmstack.train.schedules import tokens_of
from lmstack.train.step_guard import TrainingStopped

log = logging.getLogger("lmstack")
logging.getLogger("litdata").setLevel(logging.WARNING)  # one INFO line per dataset opened otherwise


def resolve_ckpt(ckpt_path: str | None, output_root: str, run_dir: str) -> str | None:
    """`last` or a run directory: that run's newest readable checkpoint (`lmstack.checkpoint`); a
    checkpoint path: must exist."""
    from lmstack.checkpoint import find_resume_checkpoint

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


def build_trainer(spec: RunSpec, extra_callbacks=(), adaptation: bool = False) -> L.Trainer:
    """The Trainer with the configured callbacks (for an adaptation stage, less the step plugins that are
    `pretraining_only`), logger and strategy; checkpoints are written atomically and read weights-only
    (`lmstack.checkpoint`)."""
    from lmstack.checkpoint import checkpoint_io
    from lmstack.train.hooks import StepHooks

    callbacks = [hydra.utils.instantiate(cb) for cb in spec.callbacks.values() if cb]
    if adaptation:
        callbacks = [cb for cb in callbacks if not (isinstance(cb, StepHooks) and cb.pretraining_only)]
    if spec.evals is not None:
        callbacks.append(hydra.utils.instantiate(spec.evals))
    logger = hydra.utils.instantiate(spec.logger) if spec.logger else False
    strategy = hydra.utils.instantiate(spec.strategy) if "_target_" in spec.strategy else spec.strategy["name"]
    if spec.train.async_checkpoint:
        if not getattr(strategy, "_save_distributed_checkpoint", False) or not hasattr(strategy, "async_checkpoint"):
            raise ConfigError(
                "train.async_checkpoint=true writes sharded checkpoints in the background: it needs strategy=fsdp "
                "with strategy.save_distributed_checkpoint=true"
            )
        strategy.async_checkpoint = True
    accum = spec.trainer.get("accumulate_grad_batches", 1)
    return L.Trainer(
        **spec.trainer,
        max_steps=1,  # set from the token budget once the world size is known (see `configure_budget`)
        max_epochs=-1,
        callbacks=[*callbacks, *extra_callbacks],
        logger=logger,
        strategy=strategy,
        default_root_dir=spec.run_dir,
        log_every_n_steps=spec.train.log_every_steps,
        val_check_interval=spec.train.val_every_steps * accum,
        check_val_every_n_epoch=None,
        use_distributed_sampler=False,
        gradient_clip_val=None,
        plugins=[checkpoint_io()],
    )


def tokens_per_step(spec: RunSpec, trainer: L.Trainer) -> int:
    return spec.data.seq_len * spec.data.batch_size * trainer.accumulate_grad_batches * trainer.world_size


def check_global_batch(spec: RunSpec, tokens: int) -> None:
    """The tutorial's warning: past a point a larger global batch stops helping (and more GPUs raise it)."""
    limit = spec.train.max_global_batch_tokens
    if limit is None or tokens <= limit:
        return
    msg = (
        f"the global batch is {tokens:,} tokens (seq_len x batch_size x accumulation x world size), above "
        f"train.max_global_batch_tokens={limit:,}; lower data.batch_size or trainer.accumulate_grad_batches"
    )
    if spec.train.batch_guard == "fail":
        raise ConfigError(msg)
    log.warning(msg)


def load_init(spec: RunSpec) -> dict:
    """The init_from checkpoint's model state, model config and tokenizer (saved where the corpus
    preparation can read it: the cache, named by its content)."""
    import hashlib

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


def read_resume_record(ckpt: str | None) -> dict:
    from lmstack.checkpoint import read_record

    return read_record(ckpt) if ckpt else {}


def run_identity(spec: RunSpec, tps: int, dm: LMDataModule, mcfg: ModelConfig) -> dict:
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
        **({"instance_filter": list(instance_filter(spec))} if instance_filter(spec) else {}),
        "corpus": hashlib.sha256(json.dumps(corpus).encode()).hexdigest()[:16],
        "tokenizer": dm.corpus.meta.get("tokenizer"),
        "model": model_identity(mcfg),
        "optimizer": asdict(spec.optimizer),
        "schedule": asdict(spec.schedule),
    }  # not the budget: extending train.max_tokens to train on is what a resume is often for


def instance_filter(spec: RunSpec) -> tuple[int, int] | None:
    """(max period, min count) of the instance filter when it is on."""
    d = spec.data
    return (d.instance_filter_max_period, d.instance_filter_min_count) if d.instance_filter else None


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


def build(
    spec: RunSpec, trainer: L.Trainer, config: dict | None = None, resume: dict | None = None
) -> tuple[PretrainModule, LMDataModule]:
    """The data module (corpus prepared) and the LightningModule for this spec and trainer. `resume`: the
    record of the checkpoint the run resumes (the budget left is counted from its tokens)."""
    tps = tokens_per_step(spec, trainer)
    check_global_batch(spec, tps)
    max_steps = math.ceil(spec.train.max_tokens / tps)
    if resume and "tokens" in resume:
        max_steps = resume["step"] + max(0, math.ceil((spec.train.max_tokens - resume["tokens"]) / tps))
    trainer.fit_loop.epoch_loop.max_steps = max_steps
    init = load_init(spec) if spec.init_from else None
    dm = LMDataModule(
        sources=[asdict(s) for s in spec.data_mix.sources],
        cache_dir=spec.paths.cache_dir,
        seq_len=spec.data.seq_len,
        batch_size=spec.data.batch_size,
        vocab_size=spec.data.vocab_size,
        val_fraction=spec.data.val_fraction,
        val_max_blocks=spec.data.val_max_blocks,
        min_frequency=spec.data.min_frequency,
        tokenizer_train_bytes=spec.data.tokenizer_train_bytes,
        max_docs=spec.data.max_docs,
        num_workers=spec.data.num_workers,
        seed=spec.seed,
        total_micro_steps=max_steps * trainer.accumulate_grad_batches,
        phases=[
            {"start_sample": tokens_of(p.start_tokens, max_steps * tps) // spec.data.seq_len, "weights": p.weights}
            for p in spec.data_mix.phases
        ],
        blocklist=spec.data.blocklist,
        instance_filter=instance_filter(spec),
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
    module = PretrainModule(*module_args(spec, mcfg.to_dict(), tps, max_steps * tps, config, spec.loss.z_loss))
    if init:
        module.model.load_state_dict(init["state"])
    if init and is_anneal(spec):
        module.optimizer_state = init["optimizer_states"][0]
        module.origin = {"init_from": spec.init_from, "step": init["step"], "tokens": init["tokens"]}
    module.set_token_bytes(dm.token_bytes())
    module.tokenizer_json = dm.corpus.tokenizer_path.read_text()
    module.document_files = dm.document_files
    module.run_identity = run_identity(spec, tps, dm, mcfg)
    return module, dm


def write_result(run_dir: Path, result: dict) -> None:
    """run_dir/result.json: how the run ended (completed | diverged) and its numbers, for sweep reports."""
    import json

    (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))


def sample_text(module: PretrainModule, tokenizer, prompt: str, n: int, seed: int) -> str:
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


def run(cfg: DictConfig) -> dict:
    from lmstack.rundir import hold_run_dir

    config = OmegaConf.to_container(cfg, resolve=True)
    spec = validate(config)
    adaptation = spec.stage is not None and not is_anneal(spec)
    ckpt = None if adaptation else resolve_ckpt(spec.ckpt_path, spec.paths.output_root, spec.run_dir)
    run_dir = Path(spec.run_dir)
    with hold_run_dir(run_dir, ckpt, init_from=spec.init_from, ckpt_path=spec.ckpt_path) as owned:
        if owned is not None:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        if adaptation:  # SFT, DPO, GRPO (lmstack/adapt)
            from lmstack.adapt.run import run_stage

            return run_stage(spec, config, build_trainer)
        return pretrain(spec, config, ckpt, owned)


def pretrain(spec: RunSpec, config: dict, ckpt: str | None, owned) -> dict:
    """Pretraining (and anneal: the checkpoint's optimizer and learning rate, decayed to zero) in the claimed run
    directory; `owned`: its OwnedFolder on rank 0, None elsewhere."""
    run_dir = Path(spec.run_dir)
    if is_anneal(spec):
        spec = anneal_spec(spec)
    started = time.time()
    L.seed_everything(spec.seed, workers=True)
    trainer = build_trainer(spec)
    record = read_resume_record(ckpt)
    keep_global_batch(spec, trainer, record)  # resumed on another world size: the same global batch
    module, dm = build(spec, trainer, config, record)
    if ckpt:
        check_resume(record, module.run_identity, spec.train.resume_changes, ckpt)
    if trainer.is_global_zero:
        if spec.init_from:
            print(f"initialised from {spec.init_from}: its weights, model configuration and tokenizer")
        n = module.model.num_params(non_embedding=True)
        print(f"model: {n / 1e6:.2f}M non-embedding parameters; corpus: {dm.corpus.root}")
        print(
            f"budget: {spec.train.max_tokens:,} tokens = {trainer.max_steps} steps of {module.tokens_per_step:,} tokens"
        )
    before = None
    if ckpt is None:
        before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/bpb"]
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    while (signal := module.rewind_requested) is not None:  # a step plugin asked (spike detection, rewind mode)
        ckpt = signal.checkpoint
        log.warning("rewinding to %s; steps skipped on the way forward: %s", ckpt, sorted(signal.skip_steps))
        trainer = build_trainer(spec)
        record = read_resume_record(ckpt)
        keep_global_batch(spec, trainer, record)
        module, dm = build(spec, trainer, config, record)
        for plugin in step_plugins(trainer):
            plugin.on_rewind(signal)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    if module.stop_reason:
        if owned is not None:
            owned.update(status="diverged")
        if trainer.is_global_zero:
            write_result(
                run_dir,
                {
                    "status": "diverged",
                    "reason": module.stop_reason,
                    "val/bpb_before": before,
                    "steps": trainer.global_step,
                    "wall_s": time.time() - started,
                },
            )
        raise TrainingStopped(module.stop_reason)
    if module.last_val and module.last_val["step"] == trainer.global_step:
        after = module.last_val["val/bpb"]  # the fit validated at its last step already
    else:
        after = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/bpb"]
    result = {"val/bpb": after, "val/bpb_before": before, "steps": trainer.global_step, "run_dir": str(run_dir)}
    if module.origin:  # an anneal: where it started, and the learning rate it started at
        result["anneal"] = {**module.origin, "start_lr": spec.optimizer.lr}
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
                "wall_s": time.time() - started,
                "pid": os.getpid(),
            },
        )
        if before is not None:
            print(f"val/bpb before: {before:.4f}  after: {after:.4f}  ({(before - after) / before:.1%} lower)")
        else:
            print(f"val/bpb after: {after:.4f}")
    if spec.train.sample_tokens:  # on every rank: a sharded (FSDP2) model's forward passes gather from all
        text = sample_text(module, dm.corpus.tokenizer(), spec.train.sample_prompt, spec.train.sample_tokens, spec.seed)
        if trainer.is_global_zero:
            print("sample:\n" + text)
    if trainer.is_global_zero:
        print(f"run directory: {run_dir}")
    return result
