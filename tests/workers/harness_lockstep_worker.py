"""Run by tests/test_harness.py under `torchrun --nproc-per-node 2`: lmstack's lm-eval model over a real
Transformer sharded with FSDP2 on 2 gloo processes, each rank holding different requests (generation
groups of different sizes, a group only one rank has, a different number of log-likelihood pairs); writes
OUT/rank<r>.json with what it returned sharded and what the whole model returns for the same requests."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lm_eval.api.instance import Instance  # noqa: E402

from lmstack.data.rows import iter_rows  # noqa: E402
from lmstack.data.tokenizer import train_bpe  # noqa: E402
from lmstack.eval.harness import LmstackLM  # noqa: E402
from lmstack.model.config import ModelConfig  # noqa: E402
from lmstack.model.transformer import Transformer  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
A, B, C = {"until": ["."], "max_gen_toks": 6}, {"until": ["\n"], "max_gen_toks": 9}, {"max_gen_toks": 3}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    texts = [doc["text"] for (_, doc), _ in zip(iter_rows(str(SHARED / "prose" / "brown.jsonl.gz")), range(40))]
    tok = train_bpe(texts, 300)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), max_seq_len=128)).eval()
    starts = [" ".join(t.split()[: 3 + i]) for i, t in enumerate(texts[:5])]
    mine = {0: [(starts[0], A), (starts[1], A), (starts[2], A), (starts[3], B)],
            1: [(starts[4], A), (starts[0], B), (starts[1], B), (starts[2], B), (starts[3], C)]}[rank]  # fmt: skip
    pairs = [(s, " " + t.split()[10]) for s, t in zip(starts, texts)][: 5 if rank == 0 else 3]

    def ask(lm):
        gen = lm.generate_until([Instance("generate_until", {}, (c, dict(k)), 0) for c, k in mine])
        return gen, [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, p, 0) for p in pairs])]

    whole = ask(LmstackLM(model=model, tok=tok, batch_size=2))
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    sharded = ask(LmstackLM(model=model, tok=tok, batch_size=2, rank=rank, world_size=2, reduce=reduce))
    (out / f"rank{rank}.json").write_text(json.dumps({"sharded": sharded, "whole": whole}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
