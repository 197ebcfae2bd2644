"""FSDP2: every transformer block sharded with `torch.distributed.fsdp.fully_shard`, through Lightning's
`ModelParallelStrategy` (Lightning's `FSDPStrategy` wraps FSDP1 and refuses CPUs; this one runs on CPU
with gloo too).

The mesh is one data-parallel dimension over all processes. Each block is its own FSDP unit (its
parameters are gathered just before it runs and freed after, if `reshard_after_forward`), then the root
module takes the embedding, final norm and head. Mixed precision on GPU: parameters cast to bf16 for
compute, gradients reduced in fp32 (`param_dtype: auto` means bf16 on CUDA, none on CPU). Checkpoints
are sharded (a folder per checkpoint, each rank writes its shards) and resume with `ckpt_path=`; each is
written under a temporary name, marked with lmstack's manifest and renamed into place (`lmstack.checkpoint`).

With `async_checkpoint` (`train.async_checkpoint=true`) the shards are copied to CPU memory and written by
`torch.distributed.checkpoint.async_save` in a background thread while training goes on, over a process
group of their own (gloo: async saves need a CPU backend, and their collectives must not interleave with
training's). One write is in flight at a time: the next checkpoint, and the end of fit, wait for the one
before. Rank 0 publishes a folder once its write finished (DCP's coordinator writes `.metadata` after
every rank's shards), so a reader still sees a whole checkpoint or none. (How long training stalls per
checkpoint is logged by the checkpoint callback.)
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class FSDP2Strategy(ModelParallelStrategy):
    def __init__(
        self,
        reshard_after_forward: bool = True,
        param_dtype: str | None = "auto",
        reduce_dtype: str = "float32",
        save_distributed_checkpoint: bool = True,
        async_checkpoint: bool = False,
        **kwargs,
    ):
        for name, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
            if value not in (None, "auto", *DTYPES):
                raise ValueError(f"strategy.{name}={value!r}; allowed: auto, null, {', '.join(DTYPES)}")
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.reshard_after_forward, self.param_dtype, self.reduce_dtype = (
            reshard_after_forward,
            param_dtype,
            reduce_dtype,
        )
        self.async_checkpoint = async_checkpoint
        self._pending = None  # the async write in flight (a future that ends once it is published)
        self._writer = None  # its process group and the thread that waits for it and publishes

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # all processes shard the data (the parent's "auto" is per node)
            self._data_parallel_size = self.num_nodes * self.num_processes // int(self._tensor_parallel_size)
        super().setup_environment()

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        """Shards written into a temporary folder beside the target, then published by rank 0."""
        import secrets
        from pathlib import Path

        from lmstack.checkpoint import temp_sibling
        from lmstack.diskfull import tensor_bytes, writing

        final = Path(self.broadcast(str(filepath)))
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, final, storage_options)
        tmp = Path(self.broadcast(str(temp_sibling(final, secrets.token_hex(6)))))
        if self.async_checkpoint:
            self._save_async(checkpoint, tmp, final)
        else:
            with writing(final, tensor_bytes(checkpoint), [tmp]):  # a full disk: named, the partial folder gone
                super().save_checkpoint(checkpoint, tmp, storage_options)
            self.barrier("lmstack_checkpoint_written")
            if self.global_rank == 0:
                _publish(tmp, final)
            self.barrier("lmstack_checkpoint_published")

    def _save_async(self, checkpoint, tmp, final) -> None:
        """Stage the shards to CPU and hand their write to DCP's thread; rank 0's publisher waits for it."""
        from concurrent.futures import ThreadPoolExecutor

        import torch.distributed as dist
        from lightning.fabric.utilities.load import _METADATA_FILENAME
        from torch.distributed.checkpoint import async_save

        self.finish_checkpoints()
        if self._writer is None:  # created on every rank at the same point: the first checkpoint
            self._writer = (dist.new_group(backend="gloo"), ThreadPoolExecutor(1, thread_name_prefix="lmstack-ckpt"))
        group, publisher = self._writer
        tmp.mkdir(parents=True, exist_ok=True)
        from lmstack.diskfull import writing

        state = {"state_dict": checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": o for i, o in enumerate(checkpoint.pop("optimizer_states", []))})
        if self.global_rank == 0:
            torch.save(checkpoint, tmp / _METADATA_FILENAME)  # what is not a tensor (loops, callbacks, lmstack's)
        written = async_save(state, checkpoint_id=tmp, process_group=group)
        rank0 = self.global_rank == 0

        def publish():
            with writing(final, None, [tmp]):
                written.result()
            if rank0:
                _publish(tmp, final)

        self._pending = publisher.submit(publish)

    def copy_checkpoint(self, src, dst) -> None:
        """`dst` becomes checkpoint `src` of this step (last.ckpt beside a step checkpoint): at once, or, while
        `src` is being written in the background, by rank 0's publisher right after it is published."""
        from lmstack.checkpoint import copy_checkpoint

        rank0, before = self.global_rank == 0, self._pending
        if before is None:
            if rank0:
                copy_checkpoint(src, dst)
            self.barrier("lmstack_checkpoint_copied")
            return

        def copy():
            before.result()  # done already (one publisher thread, in order); raises its error, if any
            if rank0:
                copy_checkpoint(src, dst)

        self._pending = self._writer[1].submit(copy)

    def finish_checkpoints(self) -> None:
        """Wait for the async write in flight (and, on rank 0, its publication); its error is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def teardown(self) -> None:
        if self._pending is not None:  # the last checkpoint is on disk, published, before anyone reads it
            self.finish_checkpoints()
            self.barrier("lmstack_checkpoint_finished")
        super().teardown()

    def _mp_policy(self):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        dtype = self.param_dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.root_device.type == "cuda" else None
        if dtype is None:
            return None
        return MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=DTYPES[self.reduce_dtype])

    def shard(self, model: torch.nn.Module) -> None:
        """Shard each block, then the rest; a model sharded already is left as it is (configure_model
        runs again for every fit / validate call)."""
        from torch.distributed.fsdp import fully_shard

        if any(hasattr(p, "to_local") for p in model.parameters()):
            return
        kw = {"mesh": self.device_mesh["data_parallel"], "reshard_after_forward": self.reshard_after_forward}
        mp = self._mp_policy()
        if mp is not None:
            kw["mp_policy"] = mp
        for block in model.blocks:
            fully_shard(block, **kw)
        fully_shard(model, **kw)


def _publish(tmp, final) -> None:
    from lmstack.checkpoint import publish_folder, write_manifest

    write_manifest(tmp)
    publish_folder(tmp, final)
