"""What the tests share: the real Hydra config composed with small, CPU-sized overrides, the shared data
beside the checkout, the environment for multi-process runs, and small fixed inputs."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from lmstack.config.store import compose

ROOT = Path(__file__).resolve().parents[2]
CONF = str(ROOT / "conf")
SHARED_DATA = ROOT.parent / "shared" / "data"

# A small corpus (150 stdlib files, 512-token vocabulary, 64-token blocks) and a 2-step budget.
SMALL = [
    "data.max_docs=150",
    "data.vocab_size=512",
    "data.seq_len=64",
    "data.batch_size=4",
    "data.val_fraction=0.1",
    "data.val_max_blocks=16",
    "data.tokenizer_train_bytes=2000000",
    "train.max_tokens=512",
    "train.log_every_steps=1",
    "train.val_every_steps=1000",
    "train.sample_tokens=0",
    "trainer.enable_progress_bar=false",
    "optimizer=adamw",  # the figures these runs were set with; Muon (the main job's) has tests of its own
]


def clean_env(**extra) -> dict:
    """The environment for a multi-process subprocess: without the rendezvous variables an earlier
    in-process DDP run may have left (its MASTER_PORT can still be bound)."""
    drop = ("MASTER_PORT", "MASTER_ADDR", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONPATH": str(ROOT), **extra}


def run_worker_on_ranks(worker: str, out: Path, ranks: int = 2, timeout: int = 300) -> None:
    """tests/workers/WORKER under `torchrun --standalone` on `ranks` processes, writing into `out`."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
         str(ROOT / "tests" / "workers" / worker), str(out)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def compose_cfg(overrides=(), run_dir=None, cache_dir=None):
    cfg = compose("train", overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(run_dir or "/tmp/lmstack-test-run")
    if cache_dir:
        cfg.paths.cache_dir = str(cache_dir)
    cfg.paths.shared_data = str(SHARED_DATA)
    return cfg


def interrupt_prepare_at(monkeypatch, n: int) -> list:
    """`lmstack prepare`'s read task, dying (KeyboardInterrupt) when asked for the n-th one; returns the list
    of input files the read tasks were asked for."""
    from lmstack.data.curate import stages

    real, calls = stages.read_task, []

    def dies(job):
        calls.append(job["task"].path)
        if len(calls) == n:
            raise KeyboardInterrupt("interrupted")
        return real(job)

    monkeypatch.setattr(stages, "read_task", dies)
    return calls


def prepare_overrides(overrides: dict) -> list[str]:
    """Hydra overrides of the `prepare` section from dotted keys; `+KEY` adds a key the section does not have,
    as `+prepare.quality.NAME=...`."""
    return [f"+prepare.{k[1:]}={v}" if k.startswith("+") else f"prepare.{k}={v}" for k, v in overrides.items()]


def prepare_cfg(pipeline: str = "web", **overrides) -> dict:
    """conf/prepare.yaml's `prepare` section (the `pipeline` option) with overrides (`prepare_overrides`)."""
    cfg = compose("prepare", [f"prepare={pipeline}", *prepare_overrides(overrides)])
    return OmegaConf.to_container(cfg.prepare, resolve=True)


# In-loop evals kept small: c4 (6 documents) in bits per byte, arc_easy and copa (15 questions each).
SMALL_EVALS = [
    "evals=olmes",
    "evals.sets.c4.max_docs=6",
    "~evals.sets.cc",
    "evals.tasks.arc_easy.limit=15",
    "evals.tasks.copa.limit=15",
    "~evals.tasks.piqa",
    "~evals.tasks.sciq",
    "~evals.tasks.copycolors_10way",
]


# The smallest Llama config.json lmstack imports (tests of import-hf).
TINY_LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 1,
    "intermediate_size": 128,
    "vocab_size": 100,
}


TWO_RANKS = ["trainer.devices=2", "train.max_tokens=5120"]  # 10 steps of 2 ranks x 4 x 64 tokens
MUON = "optimizer=muon"  # the shared 2-rank runs train with Muon: FSDP2 == DDP, resume and elastic resume cover it
FSDP_RUN = [  # the shared 2-rank FSDP2 run (conftest.fsdp_run)
    "strategy=fsdp",
    MUON,
    "train.activation_checkpointing=true",  # applied before sharding (lmstack.train.parallelize): same math
    "callbacks.checkpoint.every_n_train_steps=5",
    *SMALL_EVALS,
    "evals.every_steps=5",
    "train.sample_tokens=12",  # the default run's end-of-run sample
]


def train_on_ranks(
    out: Path, cache: Path, *overrides: str, timeout: int = 600, ranks: int = 2, launcher: str = "torchrun"
) -> list[dict]:
    """Every multi-process test's runner: `tests/workers/run_worker.py` (lmstack's own `run`) on 2 processes, or
    `ranks`, started by torchrun (the ranks start at once: their imports overlap) or with `launcher="lightning"`
    by the run's own strategy (rank 0 starts the other ranks, as `python train.py trainer.devices=2` does);
    returns each rank's report (rank 0's with the output of all, as `stdout` and `stderr`)."""
    import json
    import subprocess
    import sys

    out.mkdir(parents=True)
    launch = TWO_RANKS if ranks == 2 else [f"trainer.devices={ranks}", TWO_RANKS[1]]
    worker = [str(ROOT / "tests" / "workers" / "run_worker.py"), str(out), *launch, *overrides]
    if ranks > 1 and launcher == "torchrun":
        worker = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *worker]
    done = subprocess.run(
        [sys.executable, *worker],
        cwd=ROOT,
        timeout=timeout,
        env=clean_env(LMSTACK_TEST_CACHE=str(cache)),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
    reports[0]["stdout"], reports[0]["stderr"] = done.stdout, done.stderr
    return reports


def losses(report: dict) -> dict[int, float]:
    """step -> training loss of a rank's report (the last micro-batch of each step)."""
    return {s["step"]: s["loss"] for s in report["steps"]}


def write_harness_tasks(folder: Path, limit_words: int = 12, docs: int = 10) -> tuple[Path, Path]:
    """Two lm-eval task YAMLs over local files from ../shared/data: copa's OLMES requests as a multiple-choice
    task (`olmes_copa`), and `brown_continue`, a generate_until task: the first words of Brown Corpus
    documents, continued until a period (at most 10 tokens), scored by chrF against the next words."""
    import json
    import random

    import yaml

    from lmstack.data.rows import iter_rows
    from lmstack.eval.harness_tasks import write_olmes_task

    mc = write_olmes_task(SHARED_DATA / "evals" / "copa", folder)
    rng, rows = random.Random(0), []
    for (_, doc), _ in zip(iter_rows(str(SHARED_DATA / "prose" / "brown.jsonl.gz")), range(docs)):
        words, k = doc["text"].split(), rng.randint(3, limit_words)
        rows.append({"context": " ".join(words[:k]), "continuation": " " + " ".join(words[k : k + 8])})
    data = folder / "brown_continue.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gen = folder / "brown_continue.yaml"
    config = {
        "task": "brown_continue",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "context",
        "doc_to_target": "continuation",
        "generation_kwargs": {"until": ["."], "max_gen_toks": 10, "do_sample": False},
        "metric_list": [{"metric": "chrf"}, {"metric": "exact_match"}],
    }
    gen.write_text(yaml.safe_dump(config, sort_keys=False))
    return mc, gen
