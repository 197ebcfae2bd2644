"""Elastic resume: a run resumed on another number of processes keeps its global batch.

The global sample stream is laid out by optimizer step (step s takes samples s*G .. (s+1)*G - 1 for a
global batch of G sequences, whatever the world size W, micro-batch B and accumulation A with G = W*B*A),
so resuming with W' processes continues the stream exactly when A' = G / (W'*B): the same sequences, the
same gradient (summed over micro-batches instead of ranks), the same losses. A global batch that W'*B
does not divide is refused, naming what would fit. Lightning counts its loop progress in micro-batches,
so the checkpoint's counters are rescaled from A to A' before they are restored.
"""

from __future__ import annotations

import logging

log = logging.getLogger("lmstack")


def keep_global_batch(spec, trainer, record: dict) -> int | None:
    """Set the trainer's accumulation so the checkpoint's global batch is kept on this world size; returns the
    new accumulation, or None when nothing changes (same world size, `train.elastic=false`, or a checkpoint
    that does not record its world size)."""
    from lmstack.config.schema import ConfigError

    saved_world, saved_tokens = record.get("world_size"), (record.get("identity") or {}).get("global_batch_tokens")
    if not spec.train.elastic or saved_world is None or not saved_tokens or saved_world == trainer.world_size:
        return None
    per_micro = spec.data.seq_len * spec.data.batch_size * trainer.world_size
    accum, rest = divmod(saved_tokens, per_micro)
    if rest or accum < 1:
        seqs = saved_tokens // spec.data.seq_len
        fits = [b for b in range(1, seqs + 1) if seqs % (b * trainer.world_size) == 0]
        raise ConfigError(
            f"ckpt_path: the checkpoint's global batch is {seqs} sequences ({saved_world} processes); "
            f"{trainer.world_size} processes x data.batch_size={spec.data.batch_size} cannot keep it by "
            f"accumulation; data.batch_size values that can: {fits or 'none'} (or train.elastic=false with "
            "train.resume_changes=allow to resume with another global batch)"
        )
    if accum != trainer.accumulate_grad_batches:
        log.warning(
            "resuming a %d-process checkpoint on %d processes: trainer.accumulate_grad_batches=%d keeps its "
            "global batch of %d tokens",
            saved_world,
            trainer.world_size,
            accum,
            saved_tokens,
        )
    trainer.accumulate_grad_batches = accum
    trainer.val_check_interval = spec.train.val_every_steps * accum
    return accum


def rescale_loop_progress(checkpoint: dict, old_accum: int, new_accum: int) -> None:
    """Lightning's training-batch counters (micro-batches) in `checkpoint` as if it had run with `new_accum`:
    a checkpoint is written between optimizer steps, so `ready` is steps x `old_accum`; it becomes steps x
    `new_accum` and the other counters keep their distance from it (`completed` trails by one when the
    checkpoint was written at the end of a batch). The optimizer-step counters stay."""
    if old_accum == new_accum:
        return
    progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not progress:
        return
    for part in ("total", "current"):
        counts = progress.get(part, {})
        ready = counts.get("ready")
        if not isinstance(ready, int):
            continue
        if ready % old_accum:
            raise ValueError(f"the checkpoint stopped inside an accumulation: {ready} micro-batches of {old_accum}")
        moved = ready // old_accum * new_accum - ready
        for key, value in counts.items():
            if isinstance(value, int):
                counts[key] = value + moved
