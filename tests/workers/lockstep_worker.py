"""Run by tests/test_generate_lockstep.py under `torchrun --nproc-per-node 2`: a real Transformer sharded with
FSDP2 over 2 gloo processes decodes a different prompt on each rank, with an end token that rank 0 reaches
after 3 tokens and rank 1 never; writes OUT/rank<r>.json with the tokens decoded sharded and unsharded."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lmstack.generate import generate_many  # noqa: E402
from lmstack.model.config import ModelConfig  # noqa: E402
from lmstack.model.transformer import Transformer  # noqa: E402


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64)).eval()
    prompts = [[1, 2, 3], [7, 8, 9, 10]]
    whole = [generate_many(model, p, 1, 12, temperature=0)[0] for p in prompts]  # before sharding: the reference
    end = next(t for t in whole[0][2:] if t not in whole[1])  # rank 0 reaches it early, rank 1 never
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)

    def all_done(done: bool) -> bool:
        left = torch.tensor([0.0 if done else 1.0])
        dist.all_reduce(left)
        return float(left) == 0.0

    got = generate_many(model, prompts[rank], 1, 12, temperature=0, eos_id=end, sync=all_done)[0]
    cut = whole[rank][: whole[rank].index(end) + 1] if end in whole[rank] else whole[rank]
    (out / f"rank{rank}.json").write_text(json.dumps({"got": got, "expected": cut}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
