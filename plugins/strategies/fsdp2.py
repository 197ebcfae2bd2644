"""FSDP2: every transformer block sharded with `torch.distributed.fsdp.fully_shard`, through Lightning's
`ModelParallelStrategy` (Lightning's `FSDPStrategy` wraps FSDP1 and refuses CPUs; this one runs on CPU
with gloo too).

The mesh is one data-parallel dimension over all processes. Each block is its own FSDP unit (its
parameters are gathered just before it runs and freed after, if `reshard_after_forward`), then the root
module takes the embedding, final norm and head. Mixed precision on GPU: parameters cast to bf16 for
compute, gradients reduced in fp32 (`param_dtype: auto` means bf16 on CUDA, none on CPU). Checkpoints
are sharded (a folder per checkpoint, each rank writes its shards) and resume with `ckpt_path=`; each is
written under a temporary name, marked with lmstack's manifest and renamed into place (`lmstack.checkpoint`).
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

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # all processes shard the data (the parent's "auto" is per node)
            self._data_parallel_size = self.num_nodes * self.num_processes // int(self._tensor_parallel_size)
        super().setup_environment()

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        """Shards written into a temporary folder beside the target, then published by rank 0."""
        import secrets
        from pathlib import Path

        from lmstack.checkpoint import publish_folder, temp_sibling, write_manifest

        final = Path(self.broadcast(str(filepath)))
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, final, storage_options)
        tmp = Path(self.broadcast(str(temp_sibling(final, secrets.token_hex(6)))))
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("lmstack_checkpoint_written")
        if self.global_rank == 0:
            write_manifest(tmp)
            publish_folder(tmp, final)
        self.barrier("lmstack_checkpoint_published")

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        """Only folders lmstack wrote (manifest and metadata checked); the metadata file loads weights-only."""
        from pathlib import Path

        from lmstack.checkpoint import check_sharded

        path = Path(self.broadcast(str(checkpoint_path)))
        if path.is_dir():
            check_sharded(path)
        return super().load_checkpoint(path, weights_only=True)

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
