"""Run by the multi-process tests: `python tests/workers/run_worker.py OUT_DIR [overrides...]` trains with
lmstack's own `run` (Lightning Trainer; the DDP / FSDP launcher starts the other rank by running this
same command) and writes OUT_DIR/rank<r>.json: per micro-batch, the step after it, its training loss
and whether automatic garbage collection was on; the steps at which GC sync collected; gc state after fit;
the in-loop evals; the run's result."""

import gc
import json
import os
import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import SMALL, compose_cfg  # noqa: E402


class Probe(L.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = float(outputs["loss"]) * trainer.accumulate_grad_batches  # Lightning divides it by the accumulation
        self.steps.append({"step": trainer.global_step, "loss": loss, "gc_enabled": gc.isenabled()})


def main(out: Path, overrides: list[str]) -> None:
    import lmstack.stages.base as stage_mod
    from lmstack.run import run

    probe, build, trainers = Probe(), stage_mod.build_trainer, []

    def build_with_probe(spec, **kwargs):  # keeps the trainer, to read its callbacks after the run
        trainers.append(build(spec, [probe], **kwargs))
        return trainers[-1]

    stage_mod.build_trainer = build_with_probe
    cfg = compose_cfg(
        [*SMALL, *overrides], run_dir=out / "run", cache_dir=os.environ.get("LMSTACK_TEST_CACHE", out / "cache")
    )
    result = run(cfg)
    trainer = trainers[-1]
    gc_cb = next((cb for cb in trainer.callbacks if type(cb).__name__ == "GCSync"), None)
    evals = next((cb.history for cb in trainer.callbacks if type(cb).__name__ == "Evaluator"), None)
    report = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "steps": probe.steps,
        "gc_collected_at": gc_cb.collected_at if gc_cb else None,
        "gc_enabled_after": gc.isenabled(),
        "evals": evals,
        "train_blocks": getattr(getattr(trainer.datamodule, "train_set", None), "lengths", None),
        "checkpoint_stalls": next(
            (cb.stalls for cb in trainer.callbacks if hasattr(cb, "stalls")), None
        ),  # what the sampler draws from, per source
        "result": {k: v for k, v in result.items() if k != "run_dir"},
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
