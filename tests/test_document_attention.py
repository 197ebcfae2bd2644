"""Document-aware attention (model.attention.document_mask): inside a packed row every token attends only
within its own document, so a packed row's logits are each document's logits run alone; a varlen backend
gets the documents' offsets instead of a dense mask; a run trains with it and its checkpoint keeps it."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import pytest
import torch

from lmstack.model import ATTENTION_BACKENDS, Documents, ModelConfig, Transformer, register_attention_backend
from lmstack.model.attention import sdpa_attention

from .helpers import SHARED_DATA

END = 0  # the end-of-text id of the constructed rows


def masked_model(**attention) -> Transformer:
    cfg = ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=4, max_seq_len=128)
    cfg = replace(cfg, attention=replace(cfg.attention, document_mask=True, document_token=END, **attention))
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def real_documents(tok=None, lengths=(23, 41, 17)) -> list[torch.Tensor]:
    """The first tokens of real C4 documents, each ended by the end-of-text token."""
    with gzip.open(SHARED_DATA / "web" / "c4-sample.01.json.gz", "rt") as f:
        texts = [json.loads(line)["text"] for _, line in zip(lengths, f)]
    if tok is None:  # byte ids of the text (1..256), for the untrained model
        ids = [[b + 1 for b in t.encode()] for t in texts]
        end = END
    else:
        from lmstack.data.tokenizer import eos_id

        ids, end = [e.ids for e in tok.encode_batch(texts)], eos_id(tok)
    return [torch.tensor(i[: n - 1] + [end]) for i, n in zip(ids, lengths)]


@pytest.mark.parametrize("attention", [{}, {"document_positions": True}, {"type": "gqa"}], ids=str)
def test_a_packed_row_gives_each_documents_logits_run_alone(attention):
    model = masked_model(**attention)
    docs = real_documents()
    row = torch.cat(docs)[None]
    with torch.no_grad():
        packed = model(row)
        plain = replace(model.cfg.attention, document_mask=False, document_positions=False)
        model.cfg = replace(model.cfg, attention=plain)
        across = model(row)  # the same weights attending across documents
    start = 0
    for d in docs:
        with torch.no_grad():
            alone = model(d[None])
        assert (packed[0, start : start + len(d)] - alone[0]).abs().max() < 1e-5
        if start:  # without the mask, later documents see the earlier ones
            assert (across[0, start : start + len(d)] - alone[0]).abs().max() > 1e-3
        start += len(d)


def test_documents_split_after_each_end_token_and_restart_positions():
    row = torch.tensor([[5, 6, END, 7, END, 8, 9, 9]])
    docs = Documents.from_tokens(row, END)
    assert docs.ids.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert docs.positions.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    cu, longest = Documents.from_tokens(torch.cat([row, row]), END).cu_seqlens
    assert cu.tolist() == [0, 3, 5, 8, 11, 13, 16] and longest == 3  # every row starts a document
    mask = docs.mask[0, 0]
    assert mask[3].tolist() == [False, False, False, True, False, False, False, False]
    assert mask[7].tolist() == [False] * 5 + [True] * 3


def test_a_varlen_backend_gets_the_documents_offsets_instead_of_a_mask():
    """A backend registered varlen=True computes each document as its own sequence of the flattened batch
    (here with SDPA per document, as flash-attn's varlen kernel does on GPU): the same logits as the mask."""
    calls = []

    @register_attention_backend("test_varlen", varlen=True)
    def per_document(q, k, v, q_offset=0, docs=None):
        if docs is None:
            return sdpa_attention(q, k, v, q_offset)
        calls.append(docs)
        b, h, t, d = q.shape
        cu, _ = docs.cu_seqlens
        flat = [x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (q, k, v)]
        out = torch.empty_like(flat[0])
        for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
            qs, ks, vs = (x[lo:hi].transpose(0, 1)[None] for x in flat)
            out[lo:hi] = sdpa_attention(qs, ks, vs)[0].transpose(0, 1)
        return out.view(b, t, h, d).transpose(1, 2)

    try:
        dense = masked_model()
        varlen = masked_model(backend="test_varlen")
        rows = torch.stack([torch.cat(real_documents()), torch.cat(real_documents(lengths=(50, 31)))])
        with torch.no_grad():
            assert (dense(rows) - varlen(rows)).abs().max() < 1e-5
        assert len(calls) == 2  # each layer, one Documents for the whole forward
        assert calls[0] is calls[1]
    finally:
        del ATTENTION_BACKENDS["test_varlen"]


def test_kv_cache_decoding_is_one_document_and_bad_options_are_refused():
    model = masked_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        cache = model.new_cache(1, 16)
        stepwise = torch.cat([model(ids[:, i : i + 1], cache=cache, pos=i) for i in range(4)], 1)
        assert (stepwise - model(ids)).abs().max() < 1e-5  # no end token: one document either way
    with pytest.raises(ValueError, match="document_positions=true needs attention.document_mask=true"):
        ModelConfig(vocab_size=384, attention=replace(ModelConfig().attention, document_positions=True))
    with pytest.raises(ValueError, match="document_mask=true needs attention.document_token"):
        plain = ModelConfig(vocab_size=384)
        Transformer(replace(plain, attention=replace(plain.attention, document_mask=True)))


@pytest.mark.slow
def test_a_run_trains_with_document_attention_and_its_checkpoint_keeps_it(small_cfg):
    """The run sets the tokenizer's end-of-text id; the checkpoint's model splits real packed text itself,
    in validation and in every command that loads it."""
    from pathlib import Path

    from lmstack.checkpoint import load_checkpoint
    from lmstack.data.tokenizer import eos_id
    from lmstack.run import run

    cfg = small_cfg("model.attention.document_mask=true", "model.attention.document_positions=true")
    result = run(cfg)
    assert result["steps"] == 2 and result["val/bpb"] > 0
    model, tok, _ = load_checkpoint(str(Path(cfg.run_dir) / "checkpoints" / "last.ckpt"))
    attention = model.cfg.attention
    assert attention.document_mask and attention.document_positions and attention.document_token == eos_id(tok)
    docs = real_documents(tok)
    model.eval()
    with torch.no_grad():
        packed = model(torch.cat(docs)[None])
        start = 0
        for d in docs:
            assert (packed[0, start : start + len(d)] - model(d[None])[0]).abs().max() < 1e-5
            start += len(d)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_batched_generation_of_prompts_of_different_lengths_equals_each_alone(use_cache):
    """generate_batch pads prompts on the left and keeps the padding out of attention (a document of its
    own): each row continues as its prompt does alone (GRPO decodes every prompt's group this way)."""
    from lmstack.generate import generate, generate_batch

    cfg = ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=4, max_seq_len=128)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    prompts = [[int(t) for t in torch.randint(1, 384, (n,))] for n in (3, 11, 6)]
    out = generate_batch(model, prompts, 2, 10, temperature=0, use_cache=use_cache)
    assert len(out) == 6
    for i, p in enumerate(prompts):
        alone = generate(model, p, 10, temperature=0)
        assert out[2 * i] == out[2 * i + 1] == alone, i
    with torch.no_grad():  # and the logits themselves, for the shortest (most padded) prompt
        width = max(map(len, prompts))
        padded = torch.tensor([[0] * (width - 3) + prompts[0]])
        docs = Documents((torch.arange(width)[None, :] >= width - 3).long())
        assert (model(padded, docs=docs)[0, -1] - model(torch.tensor([prompts[0]]))[0, -1]).abs().max() < 1e-5
