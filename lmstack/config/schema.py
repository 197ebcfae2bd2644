"""The typed schema behind every config group; `validate` checks a composed config before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from lmstack.model.config import ModelConfig
from lmstack.registry import import_modules, lookup
from lmstack.train.schedules import tokens_of

from .stage import StageSection
from .validate import ConfigError, check_kwargs, check_target, check_values, field_, to_dataclass


@dataclass
class MuonSection:
    """optimizer=muon's hidden matrices (lmstack/train/muon.py); the rest use AdamW's keys of the section."""

    lr: Optional[float] = field_(None, min=0.0)  # their peak learning rate; null: optimizer.lr
    momentum: float = field_(0.95, min=0.0, max=1.0)  # the gradients' exponential average
    nesterov: bool = True  # Nesterov momentum
    ns_steps: int = field_(5, min=1, max=99)  # Newton-Schulz iterations
    # the update's scale per matrix shape (A, B): match_rms_adamw (Moonlight, 0.2 sqrt(max(A, B)): AdamW's lr and
    # weight decay carry over), original (Keller Jordan's sqrt(max(1, A/B))), spectral_unclamped (sqrt(A/B))
    adjust_lr: Literal["match_rms_adamw", "original", "spectral_unclamped"] = "match_rms_adamw"
    ns_dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # Newton-Schulz's dtype; auto: bf16 on GPU, fp32 on CPU


@dataclass
class OptimizerSection:
    name: str = "muon"  # a registered optimizer (lmstack.registry, kind `optimizer`): muon, adamw
    lr: float = field_(6e-3, min=0.0)  # the peak the schedule reaches (Muon's on the main job; adamw's file: 3e-3)
    betas: list[float] = field_([0.9, 0.95])  # AdamW's (beta1, beta2)
    eps: float = field_(1e-8, min=0.0)  # AdamW's epsilon
    weight_decay: float = field_(0.1, min=0.0)  # decoupled weight decay of the decayed group
    no_decay: list[str] = field_(["embed.*"])  # fnmatch patterns on parameter names
    decay_norms: bool = False  # norm weights are decayed too
    decay_biases: bool = False  # biases are decayed too
    fused: Optional[bool] = None  # torch's fused AdamW kernel (null: torch decides)
    muon: MuonSection = field(default_factory=MuonSection)  # optimizer=muon: its hidden matrices' options


@dataclass
class ScheduleSection:
    name: str = "cosine"  # a registered schedule: constant, cosine, wsd, olmo_anneal
    warmup_tokens: float = field_(0.05, min=0.0)  # <= 1: a fraction of train.max_tokens; > 1: tokens
    decay_tokens: float = field_(0.0, min=0.0)  # wsd / olmo_anneal: the final linear decay, same units
    min_lr: float = field_(3e-5, min=0.0)  # the floor the schedule decays to (cosine, olmo_anneal)


@dataclass
class SourceSection:
    name: str  # the source's name (curriculum phases and logs use it)
    builtin: Optional[str] = None  # a corpus every machine has: python_stdlib
    paths: Optional[list[str]] = None  # files, folders or globs of documents (JSONL, Parquet, WARC, text, ...)
    prepared: Optional[str] = None  # a folder written by `lmstack prepare`
    part: Optional[str] = None  # with `prepared`: one of the folder's sources (a quality bucket); null: all of them
    text_field: str = "text"  # the documents' text key in JSONL and Parquet rows
    weight: float = field_(1.0, min=0.0)  # the source's share of training samples (weights are normalised)


@dataclass
class PhaseSection:
    start_tokens: float = field_(min=0.0)  # <= 1: a fraction of train.max_tokens; > 1: tokens
    weights: dict = field_({})  # source name -> weight; sources not named get 0


@dataclass
class DataMixSection:
    sources: list[SourceSection]
    dir: Optional[str] = None  # data_mix=prepared: the folder `lmstack prepare` wrote
    dirs: dict = field_({})  # data_mix=prepared_mix: name -> folder
    phases: list[PhaseSection] = field_([])  # the curriculum: later phases switch the weights


@dataclass
class DataSection:
    seq_len: int = field_(256, min=2)  # tokens per training block
    batch_size: int = field_(16, min=1)  # micro-batch per device
    val_fraction: float = field_(0.02, min=0.0, max=1.0)  # documents held out, chosen by a hash of their id
    val_max_blocks: Optional[int] = field_(256, min=1)  # validation blocks scored; null: all
    vocab_size: int = field_(4096, min=258)  # the byte-level BPE trained on the training documents
    min_frequency: int = field_(2, min=1)  # the BPE's minimum pair frequency
    tokenizer_train_bytes: int = field_(20_000_000, min=1)  # text the BPE is trained on (the first training documents)
    max_docs: Optional[int] = field_(None, min=1)  # per source; null: all
    num_workers: int = field_(0, min=0)  # DataLoader worker processes
    blocklist: list[str] = field_([])  # files of document ids left out of the loss (spike_blocklist.txt)
    # OLMo-core's instance filter: a training block with an n-gram of <= max_period tokens repeated back to back
    # >= min_count times gets no loss (counted as data/filtered_instances, listed in filtered_instances.jsonl)
    instance_filter: bool = False
    instance_filter_max_period: int = field_(13, min=1)  # the longest repeated n-gram, in tokens
    instance_filter_min_count: int = field_(32, min=2)  # repetitions that make a block filtered

    @property
    def instance_filter_rule(self) -> Optional[tuple[int, int]]:
        """(max period, min count) of the instance filter when it is on."""
        return (self.instance_filter_max_period, self.instance_filter_min_count) if self.instance_filter else None


@dataclass
class TrainSection:
    max_tokens: int = field_(1_024_000, min=1)  # the budget (250 steps of 16 x 256); schedules and max_steps follow
    grad_clip: Optional[float] = field_(1.0, min=0.0)  # clip the global gradient norm to this (null: no clipping)
    val_every_steps: int = field_(100, min=1)  # optimizer steps between validations
    # optimizer steps between checkpoints (last.ckpt is always written at the end)
    ckpt_every_steps: int = field_(100, min=1)
    log_every_steps: int = field_(10, min=1)  # optimizer steps between logged metrics
    max_nonfinite_steps: int = field_(5, min=0)  # this many non-finite steps in a row: checkpoint and stop
    max_global_batch_tokens: Optional[int] = field_(None, min=1)  # above it: warn or fail (batch_guard)
    batch_guard: str = "warn"  # warn | fail
    resume_changes: Literal["refuse", "allow"] = "refuse"  # resuming with another batch, seed, mix, model, ...
    async_checkpoint: bool = False  # strategy=fsdp: shards written in the background (torch DCP async_save)
    elastic: bool = True  # resumed on another world size: accumulation set to keep the global batch (train.elastic)
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory
    compile: bool = False  # torch.compile each transformer block
    sample_prompt: str = "def "  # the prompt of the sample printed after training
    sample_tokens: int = field_(48, min=0)  # tokens sampled after training (0: no sample)


@dataclass
class LossSection:
    z_loss: float = field_(1e-5, min=0.0)  # weight of the z-loss (log Z squared) in the training loss (PaLM, OLMo 2)


@dataclass
class PathsSection:
    output_root: str = "outputs"  # where run directories and sweeps go (outputs/runs/DATE/TIME)
    cache_dir: str = "~/.cache/lmstack"  # conf/train.yaml: $LMSTACK_CACHE when set
    shared_data: str = "../shared/data"  # real-text samples beside the checkout (tests, benchmarks, data_mix=prose)


@dataclass
class LadderSection:
    params: float = field_(200_000, min=1.0)  # the rung's non-embedding parameters (the shape follows)
    tokens_per_param: float = field_(20.0, min=0.0)  # the rung's training tokens per non-embedding parameter


@dataclass
class RunSpec:
    model: ModelConfig
    optimizer: OptimizerSection
    schedule: ScheduleSection
    data_mix: DataMixSection
    data: DataSection
    train: TrainSection
    loss: LossSection
    paths: PathsSection  # files, folders or globs of documents (JSONL, Parquet, WARC, text, ...)
    seed: int = 1234  # model init, data order and sampling
    run_dir: str = "outputs/run"  # the run directory (set by Hydra: PATHS.OUTPUT_ROOT/runs/DATE/TIME)
    ckpt_path: Optional[str] = None  # resume: a checkpoint, a run directory, or `last` (the newest run's)
    init_from: Optional[str] = None  # a checkpoint's weights, tokenizer (stage=anneal: optimizer too)
    imports: list[str] = field_([])  # modules imported at start-up, e.g. plugins registering attention backends
    trainer: dict = field_({})  # Lightning Trainer arguments (conf/trainer/: cpu, gpu, debug)
    # the Lightning strategy: {name: auto|ddp} or a _target_ (conf/strategy/fsdp.yaml: FSDP2)
    strategy: dict = field_({"name": "auto"})
    logger: Any = None  # a Lightning logger by _target_ (conf/logger/: tensorboard, csv)
    # name -> a Lightning callback by _target_ (conf/callbacks/default.yaml); null drops one
    callbacks: dict = field_({})
    evals: Optional[dict] = None  # the in-loop evaluator (conf/evals/): eval sets and tasks
    stage: StageSection = field(default_factory=StageSection)  # conf/stage/: pretrain (default), anneal, sft, ...
    # sweep=ladder: the rung this job trains (conf/sweep/ladder.yaml derives shape, batch, LR and budget from it)
    ladder: Optional[LadderSection] = None


@dataclass
class Imports:
    imports: list[str] = field_([])  # read first: the modules may register components the rest names


TOP_LEVEL_EXTRA = {"hydra", "experiment", "sweep", "sweep_name"}
# Trainer arguments lmstack derives itself; setting them in `trainer` would silently disagree.
DERIVED_TRAINER_KEYS = {
    "max_steps",
    "max_epochs",
    "callbacks",
    "logger",
    "strategy",
    "default_root_dir",
    "val_check_interval",
    "gradient_clip_val",
    "log_every_n_steps",
}


def validate(cfg: dict) -> RunSpec:
    """Check a composed, resolved config (a plain dict); raise ConfigError naming the first bad key."""
    cfg = {k: v for k, v in cfg.items() if k not in TOP_LEVEL_EXTRA}
    import_modules(to_dataclass(Imports, {k: v for k, v in cfg.items() if k == "imports"}, "").imports)
    spec = to_dataclass(RunSpec, cfg, "")  # a user's stage is registered by now: its section checks `stage`
    check_values(cfg)
    lookup("schedule", spec.schedule.name, "schedule.name")
    lookup("optimizer", spec.optimizer.name, "optimizer.name")
    if not spec.data_mix.sources:
        raise ConfigError("data_mix.sources is empty; name at least one source")
    for i, src in enumerate(spec.data_mix.sources):
        if sum(map(bool, (src.builtin, src.paths, src.prepared))) != 1:
            raise ConfigError(
                f"data_mix.sources[{i}] ({src.name}) needs exactly one of `builtin`, `paths` or `prepared`"
            )
        if src.part and not src.prepared:
            raise ConfigError(f"data_mix.sources[{i}] ({src.name}): `part` picks a source of a `prepared` folder")
    if len({bool(s.prepared) for s in spec.data_mix.sources}) > 1:
        raise ConfigError(
            "data_mix: mix `prepared` folders only with other `prepared` folders (raw sources are "
            "tokenized together with a tokenizer of their own); prepare the raw ones with "
            "`lmstack prepare ... prepare.tokenize.tokenizer=<the folders' tokenizer.json>`"
        )
    if sum(s.weight for s in spec.data_mix.sources) <= 0:
        raise ConfigError("data_mix.sources: the weights sum to 0")
    names = [s.name for s in spec.data_mix.sources]
    if len(set(names)) != len(names):
        raise ConfigError("data_mix.sources: source names must be unique")
    previous = -1.0
    for i, phase in enumerate(spec.data_mix.phases):
        unknown = sorted(set(phase.weights) - set(names))
        if unknown:
            raise ConfigError(
                f"data_mix.phases[{i}].weights names {unknown[0]!r}, not a source; sources: {', '.join(names)}"
            )
        if sum(phase.weights.values()) <= 0:
            raise ConfigError(f"data_mix.phases[{i}].weights: the weights sum to 0")
        start = tokens_of(phase.start_tokens, spec.train.max_tokens)
        if start <= previous:
            raise ConfigError(f"data_mix.phases[{i}].start_tokens must come after the previous phase's")
        previous = start
    if lookup("stage", spec.stage.name, "stage.name").starts_from_checkpoint and not spec.init_from:
        raise ConfigError(
            f"stage={spec.stage.name} starts from a checkpoint: set init_from=PATH (lmstack or lmstack import-hf)"
        )
    if spec.ckpt_path and spec.init_from:
        raise ConfigError(
            "set one of ckpt_path (resume a run: weights, optimizer, data position) and init_from "
            "(start a new run from a checkpoint's weights)"
        )
    if spec.train.batch_guard not in ("warn", "fail"):
        raise ConfigError(f"train.batch_guard={spec.train.batch_guard!r} is not allowed; allowed: warn, fail")
    if spec.data.seq_len > spec.model.max_seq_len:
        raise ConfigError(f"data.seq_len={spec.data.seq_len} exceeds model.max_seq_len={spec.model.max_seq_len}")
    lookup("attention", spec.model.attention.backend, "model.attention.backend")
    _check_trainer(spec.trainer)
    if "_target_" in spec.strategy:
        check_target(spec.strategy, "strategy")
    elif set(spec.strategy) != {"name"} or not isinstance(spec.strategy["name"], str):
        raise ConfigError("strategy must be {name: <Lightning strategy name>} or a mapping with a _target_")
    if spec.logger is not None:
        check_target(spec.logger, "logger")
    for name, cb in (spec.callbacks or {}).items():
        if cb is not None:
            check_target(cb, f"callbacks.{name}")
    if spec.evals is not None:
        check_target(spec.evals, "evals")
        from lmstack.eval.suite import check_specs

        try:
            check_specs(
                spec.evals.get("sets") or {},
                spec.evals.get("tasks") or {},
                generative=spec.evals.get("generative") or {},
                harness=spec.evals.get("harness"),
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return spec


def _check_trainer(trainer: dict) -> None:
    from lightning.pytorch import Trainer

    derived = sorted(set(trainer) & DERIVED_TRAINER_KEYS)
    if derived:
        raise ConfigError(
            f"trainer.{derived[0]} is set by lmstack (from train.* / strategy / logger / callbacks); "
            "remove it from the trainer config"
        )
    check_kwargs(Trainer.__init__, trainer, "trainer")
