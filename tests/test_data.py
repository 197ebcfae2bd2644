"""The default data path on real text: sources, tokenizer, packed litdata blocks, caching, the sampler."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pytest

from lmstack.data import corpus_format
from lmstack.data.corpus_cache import prepare_corpus
from lmstack.data.dataset import BlockDataset, ResumableSampler, mixture_stream
from lmstack.data.sources import is_validation, read_source, stdlib_files
from lmstack.data.tokenizer import EOS, token_byte_lengths, train_bpe

from .helpers import SHARED_DATA

STDLIB = [{"name": "python_stdlib", "builtin": "python_stdlib"}]


SMALL_CORPUS = dict(seq_len=64, val_fraction=0.1, vocab_size=512, tokenizer_train_bytes=2_000_000, max_docs=150)


@pytest.fixture(scope="module")
def corpus(cache_dir):
    return prepare_corpus(STDLIB, str(cache_dir), **SMALL_CORPUS)


def test_stdlib_source_reads_the_interpreters_files():
    docs = list(read_source("py", builtin="python_stdlib"))
    assert len(docs) > 500 and len(docs) <= len(stdlib_files())
    assert any(d["id"] == "json/decoder.py" for d in docs)
    assert all(d["source"] == "py" for d in docs[:10])


def test_token_bytes_sum_to_the_utf8_length():
    docs = [d["text"] for d in read_source("py", builtin="python_stdlib")][:60]
    tok = train_bpe(docs, 600)
    tb = token_byte_lengths(tok)
    text = docs[7] + "\n# naïve café — ünïcode ✓\n"
    assert tb[tok.encode(text).ids].sum() == len(text.encode("utf-8"))
    assert tb[tok.token_to_id(EOS)] == 0


def test_blocks_are_documents_joined_by_eos_with_their_ids(corpus):
    tok = corpus.tokenizer()
    docs = [json.loads(line) for line in open(corpus.root / "python_stdlib" / "documents.jsonl")]
    texts = {d["id"]: d["text"] for d in read_source("python_stdlib", builtin="python_stdlib")}
    ds = BlockDataset([str(corpus.split_dir("python_stdlib", "train"))])
    item = ds[0]
    assert item["input_ids"].shape == (64,) and item["labels"].shape == (64,)
    assert item["input_ids"][1:].tolist() == item["labels"][:-1].tolist()
    first_doc = docs[int(item["doc"][0])]
    assert first_doc["split"] == "train"
    decoded = tok.decode(ds[0]["input_ids"].tolist(), skip_special_tokens=False)
    assert texts[first_doc["id"]].startswith(decoded[:50])
    # an EOS ends each document; the token after it starts the next training document
    eos = tok.token_to_id(EOS)
    train_ordinals = [d["ordinal"] for d in docs if d["split"] == "train"]
    checked = 0
    for i in range(len(ds)):
        tokens, doc = ds[i]["labels"], ds[i]["doc"]
        for j in (tokens == eos).nonzero().flatten().tolist():
            if j + 1 < len(tokens):
                ended = int(doc[j])
                assert int(doc[j + 1]) == min(o for o in train_ordinals if o > ended)
                assert tok.decode(tokens[j + 1 : j + 8].tolist()) in texts[docs[int(doc[j + 1])]["id"]][:200]
                checked += 1
    assert checked > 20


def test_validation_split_is_chosen_by_hash_of_id(corpus):
    docs = [json.loads(line) for line in open(corpus.root / "python_stdlib" / "documents.jsonl")]
    val = [d for d in docs if d["split"] == "val"]
    assert 0 < len(val) < len(docs) / 4
    assert all(is_validation(d["id"], 0.1) == (d["split"] == "val") for d in docs)
    val_ds = BlockDataset([str(corpus.split_dir("python_stdlib", "val"))])
    seen = {int(o) for i in range(len(val_ds)) for o in val_ds[i]["doc"].unique()}
    assert seen <= {d["ordinal"] for d in val}


def test_second_prepare_reuses_the_cache(corpus, cache_dir, monkeypatch):
    meta_mtime = (corpus.root / "meta.json").stat().st_mtime

    def boom(*a, **k):
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr(corpus_format, "train_bpe", boom)
    again = prepare_corpus(STDLIB, str(cache_dir), **SMALL_CORPUS)
    assert again.root == corpus.root and (again.root / "meta.json").stat().st_mtime == meta_mtime


def test_jsonl_sources_from_shared_data_and_bad_lines(tmp_path):
    docs = list(read_source("brown", paths=[str(SHARED_DATA / "prose" / "brown.jsonl.gz")]))
    assert len(docs) == 500 and all(d["text"] for d in docs)
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"text": "fine"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl.gz:2: invalid JSON"):
        list(read_source("bad", paths=[str(bad)]))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list(read_source("none", paths=[str(tmp_path / "missing*.jsonl")]))


def test_mixture_stream_follows_the_weights_and_visits_every_block():
    stream = mixture_stream([100, 300], [0.25, 0.75], 4000, seed=1)
    share = (stream < 100).mean()
    assert abs(share - 0.25) < 0.03
    first = stream[stream < 100][:100]
    assert sorted(first.tolist()) == list(range(100))  # one full pass over the small source, no repeats


def test_sampler_resumes_and_shards_ranks_disjointly():
    kw = dict(lengths=[50, 70], weights=[1, 1], batch_size=3, total_micro_steps=10, seed=3)
    full = list(ResumableSampler(**kw))
    assert list(ResumableSampler(**kw, start_micro_step=4)) == full[4 * 3 :]
    r0 = list(ResumableSampler(**kw, rank=0, world_size=2))
    r1 = list(ResumableSampler(**kw, rank=1, world_size=2))
    assert len(r0) == len(r1) == 30
    both = mixture_stream([50, 70], [1, 1], 60, 3)
    assert r0[:3] == both[:3].tolist() and r1[:3] == both[3:6].tolist()


def test_too_little_text_for_one_block_is_a_clear_error(tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"id": "a", "text": "tiny " * 30}) + "\n")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        prepare_corpus(
            [{"name": "small", "paths": [str(small)]}],
            str(tmp_path / "c"),
            seq_len=512,
            val_fraction=0.0,
            vocab_size=300,
        )


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.1, 0.6, 0.3], [0.9, 0.1]])
def test_realised_mix_proportions_are_within_two_points(weights):
    lengths = [500, 2000, 700][: len(weights)]
    stream = mixture_stream(lengths, weights, 10_000, seed=7)
    bounds = np.cumsum([0] + lengths)
    for s, w in enumerate(weights):
        share = ((stream >= bounds[s]) & (stream < bounds[s + 1])).mean()
        assert abs(share - w / sum(weights)) < 0.02, (s, share)


def test_curriculum_switches_at_the_configured_sample():
    stream = mixture_stream([300, 300], [[0.2, 0.8], [1.0, 0.0]], 10_000, seed=1, phase_starts=[0, 9_000])
    early, late = stream[:9_000], stream[9_000:]
    assert abs((early < 300).mean() - 0.2) < 0.02
    assert (late < 300).all()
    # the first source continues its own order across the switch: no block repeats within a pass
    first = stream[stream < 300]
    assert len(set(first[:300].tolist())) == 300


def test_the_stream_is_generated_in_windows_and_is_the_same_whatever_the_windows():
    """The sampler holds no run-length array: the stream read in windows of any size, or resumed anywhere,
    is the stream read at once; a plan of 10^10 samples is built and read at once."""
    from lmstack.data.dataset import MixtureStream

    args = ([40, 0, 60, 5], [[1, 1, 1, 0], [0, 0, 1, 3]], 7, [0, 1234])
    whole = MixtureStream(*args).take(0, 5000)
    for chunk in (1, 7, 4096):
        assert np.array_equal(MixtureStream(*args).take(0, 5000, chunk=chunk), whole)
    stream = MixtureStream(*args)
    parts = [stream.take(a, b) for a, b in ((0, 10), (10, 1300), (2000, 2001), (4000, 5000))]
    assert np.array_equal(np.concatenate(parts), np.concatenate([whole[:1300], whole[2000:2001], whole[4000:]]))
    with pytest.raises(ValueError, match="passed already"):
        stream.take(100, 200)
    huge = ResumableSampler([200, 300], [0.5, 0.5], 16, 10**10 // 16)  # the old sampler allocated 80 GB here
    assert len(huge) == (10**10 // 16) * 16 and len(list(itertools.islice(iter(huge), 1000))) == 1000


def test_curriculum_phase_start_comes_from_tokens(small_cfg):
    from omegaconf import OmegaConf

    from lmstack.config.schema import validate
    from lmstack.stages.pretrain import build
    from lmstack.stages.trainer import build_trainer

    cfg = small_cfg("data_mix=prose_curriculum", "train.max_tokens=2560")  # 10 steps of 4 x 64 tokens
    spec = validate(OmegaConf.to_container(cfg, resolve=True))
    trainer = build_trainer(spec)
    _, dm = build(spec, trainer)
    assert dm.phases == [{"start_sample": 36, "weights": {"brown": 1.0}}]  # 0.9 x 2560 tokens / 64
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    brown_blocks = dm.train_set.lengths[0]
    stream = list(sampler)  # one rank: the global stream in order
    assert all(i < brown_blocks for i in stream[36:])
    assert any(i >= brown_blocks for i in stream[:36])


def test_prepared_folders_sharing_a_tokenizer_mix_by_weight(prepared_dir, prepared_prose_dir, tmp_path):
    """Two `lmstack prepare` folders (web, and Brown tokenized with web's tokenizer) mixed 0.8 / 0.2 with a
    Brown-only last phase: the realised mix follows the weights, batches name each block's folder, and a
    folder with another tokenizer is refused with the fix in the message."""
    import shutil

    from lmstack.config.schema import DataSection, SourceSection
    from lmstack.data.datamodule import LMDataModule

    def module(dirs, phases=()):
        sources = [SourceSection(name=n, prepared=str(d), weight=w) for n, d, w in dirs]
        data = DataSection(seq_len=64, batch_size=8, vocab_size=512, val_max_blocks=None)
        dm = LMDataModule(data, sources, str(tmp_path), phases=list(phases))
        dm.setup()
        return dm

    dm = module(
        [("web", prepared_dir, 0.8), ("brown", prepared_prose_dir, 0.2)],
        [{"start_sample": 8_000, "weights": {"brown": 1.0}}],
    )
    assert [f.parent.name for f in dm.document_files] == ["web", "brown"]
    assert all(f.exists() for f in dm.document_files)
    stream = mixture_stream(dm.train_set.lengths, dm.source_weights(), 10_000, 0, [0, 8_000])
    from_web = stream < dm.train_set.lengths[0]
    assert abs(from_web[:8_000].mean() - 0.8) < 0.02 and not from_web[8_000:].any()
    assert dm.train_set[int(stream[-1])]["source"] == 1

    other = tmp_path / "other"
    shutil.copytree(prepared_prose_dir, other)
    train_bpe(["a different corpus gives a different tokenizer"] * 50, 300).save(str(other / "tokenizer.json"))
    with pytest.raises(ValueError, match="another tokenizer.*prepare.tokenize.tokenizer="):
        module([("web", prepared_dir, 0.5), ("other", other, 0.5)])


def test_a_brought_tokenizer_joins_documents_with_its_own_end_of_text_token(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lmstack.data.tokenizer import eos_id

    docs = [d["text"] for d in read_source("py", builtin="python_stdlib")][:40]
    llama2_like = Tokenizer(models.BPE())
    llama2_like.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    llama2_like.decoder = decoders.ByteLevel()
    llama2_like.train_from_iterator(
        docs,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    path = tmp_path / "tokenizer.json"
    llama2_like.save(str(path))
    assert eos_id(llama2_like) == llama2_like.token_to_id("</s>") == 2
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(docs[:20])))
    corpus = prepare_corpus(
        [{"name": "py", "paths": [str(src)]}],
        str(tmp_path / "c"),
        seq_len=32,
        val_fraction=0.3,
        vocab_size=400,
        tokenizer=str(path),
    )
    blocks = BlockDataset([str(corpus.split_dir("py", "train"))])
    ids = [t for i in range(len(blocks)) for t in blocks[i]["input_ids"].tolist()]
    assert ids.count(2) >= 4  # "</s>" between the documents
    no_eos = Tokenizer(models.BPE())
    no_eos.save(str(tmp_path / "bare.json"))
    with pytest.raises(ValueError, match="no end-of-text token"):
        prepare_corpus(
            [{"name": "py", "paths": [str(src)]}],
            str(tmp_path / "d"),
            seq_len=32,
            val_fraction=0.0,
            vocab_size=400,
            tokenizer=str(tmp_path / "bare.json"),
        )
