"""Bits per byte of held-out text: a JSONL file of documents, or the validation split of a prepared folder.

Text is tokenized with the model's tokenizer, each document followed by EOS, and cut into windows of
seq_len + 1 tokens that overlap by one (every token is predicted once, from the tokens before it in its
window): the layout of training blocks, so a set's bpb is comparable with `val/bpb`. Bytes are the UTF-8
bytes the predicted tokens stand for; special tokens (EOS) count neither loss nor bytes, as in `val/bpb`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from lmstack.data.rows import iter_rows
from lmstack.data.tokenizer import eos_id


def read_jsonl_texts(paths: str | list[str], text_field: str = "text", max_docs: int | None = None) -> list[str]:
    """Documents' text from JSONL files (gzip or plain), in file order, at most max_docs of them."""
    texts: list[str] = []
    for path in [paths] if isinstance(paths, str) else paths:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no eval text at {path}")
        for n, row in iter_rows(path):
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                raise ValueError(f"{path} line {n} has no string field {text_field!r}")
            texts.append(row[text_field])
            if max_docs and len(texts) >= max_docs:
                return texts
    return texts


def blocks_from_texts(tok, texts: list[str], seq_len: int) -> list[torch.Tensor]:
    """Windows of at most seq_len + 1 token ids over the documents joined by EOS."""
    eos = eos_id(tok)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids += enc.ids + [eos]
    stream = torch.tensor(ids, dtype=torch.long)
    return [stream[i : i + seq_len + 1] for i in range(0, max(len(ids) - 1, 0), seq_len)]


def blocks_from_prepared(path: str, tokenizer_json: str, seq_len: int, split: str = "val") -> list[torch.Tensor]:
    """The blocks of a folder `lmstack prepare` (or a training run's corpus) wrote, one split of every source.
    The folder must have been tokenized with the model's tokenizer."""
    from lmstack.data.corpus_format import load_prepared
    from lmstack.data.dataset import BlockDataset

    corpus = load_prepared(path, seq_len)
    if corpus.tokenizer_path.read_text() != tokenizer_json:
        raise ValueError(
            f"eval set {path} was tokenized with another tokenizer than the model's; prepare it "
            "again with prepare.tokenize.tokenizer=<the model's tokenizer.json>"
        )
    dirs = [corpus.split_dir(name, split) for name in corpus.meta["sources"]]
    data = BlockDataset(dirs)
    return [torch.cat([item["input_ids"], item["labels"][-1:]]) for item in (data[i] for i in range(len(data)))]


@torch.no_grad()
def bpb_sums(
    model, blocks: list[torch.Tensor], token_bytes: torch.Tensor, batch_size: int, min_batches: int = 0
) -> torch.Tensor:
    """float64 [3]: nats of the predicted text tokens, their count, and the bytes they stand for.
    Runs at least `min_batches` forward passes (ranks of a sharded model must run as many as each other)."""
    device = next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    token_bytes = token_bytes.to(device)
    n_batches = max(-(-len(blocks) // batch_size), min_batches)
    for b in range(n_batches):
        chunk = blocks[b * batch_size : (b + 1) * batch_size] or [torch.zeros(2, dtype=torch.long)]
        width = max(len(x) for x in chunk) - 1
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, : len(x) - 1], labels[i, : len(x) - 1] = x[:-1], x[1:]
        if b * batch_size >= len(blocks):
            labels.fill_(-100)  # a padding pass: computes, counts nothing
        ids, labels = ids.to(device), labels.to(device)
        losses = F.cross_entropy(
            model(ids).float().flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100
        ).double()
        nbytes = torch.where(labels.flatten() >= 0, token_bytes[labels.flatten().clamp(min=0)], 0)
        counted = nbytes > 0
        sums += torch.stack([(losses * counted).sum(), counted.sum().double(), nbytes.sum().double()])
    return sums
