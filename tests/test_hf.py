"""Hugging Face interop: export -> `transformers` loads offline -> the same logits on real text; export ->
import -> identical weights; configurations without an equivalent are refused naming the option; an
imported checkpoint continues pretraining through init_from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmstack.interop.hf import NoHFEquivalent, hf_architecture
from lmstack.interop.hf_import import import_hf, model_config_from_hf
from lmstack.model import ModelConfig
from lmstack.model.config import NormConfig

from .helpers import SHARED_DATA, TINY_LLAMA_CONFIG

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmstack.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
    )


def trained_checkpoint(small_cfg, tmp_path, *overrides, run_dir: Path | None = None) -> Path:
    """A real 2-step run's checkpoint with its weights spread out (std 0.3, norm gains 1 +- 0.3), so that
    a wrong name or norm placement shows in the logits."""
    from lmstack.run import run

    cfg = small_cfg(*overrides)
    if run_dir is not None:
        cfg.run_dir = str(run_dir)
    run(cfg)
    ckpt = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    g = torch.Generator().manual_seed(0)
    for name, t in ckpt["state_dict"].items():
        noise = torch.randn(t.shape, generator=g) * 0.3
        ckpt["state_dict"][name] = (1 + noise) if "norm" in name else noise
    if ckpt["hyper_parameters"]["model_cfg"]["tie_embeddings"]:
        ckpt["state_dict"]["model.lm_head.weight"] = ckpt["state_dict"]["model.embed.weight"]
    path = tmp_path / "spread.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,arch",
    [
        (("attention=gqa",), "LlamaForCausalLM"),
        (("norm=olmo2", "attention=mqa", "model.tie_embeddings=true"), "Olmo2ForCausalLM"),
    ],
    ids=["llama-gqa", "olmo2-mqa-tied"],
)
def test_export_loads_in_transformers_with_the_same_logits_and_imports_back(small_cfg, tmp_path, overrides, arch):
    from lmstack.checkpoint import load_checkpoint

    ckpt = trained_checkpoint(small_cfg, tmp_path, *overrides)
    out = cli("export", f"ckpt={ckpt}", "format=hf", f"out={tmp_path / 'hf'}")
    assert out.returncode == 0, out.stderr
    assert f"wrote {arch}" in out.stdout
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert type(hf).__name__ == arch
    model, tok, _ = load_checkpoint(str(ckpt))
    import gzip

    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f:
        text = json.loads(f.readline())["text"][:3000]
    ids = tok.encode(text).ids[:64]
    assert hf_tok(text)["input_ids"][:64] == ids and hf_tok.decode(ids) == tok.decode(ids)
    x = torch.tensor([ids])
    with torch.no_grad():
        mine, theirs = model(x), hf(x).logits
    assert mine.abs().max() > 1.0  # spread weights: logits far from uniform
    assert (mine - theirs).abs().max() < 1e-4

    back = cli("import-hf", f"dir={tmp_path / 'hf'}", f"out={tmp_path / 'back.ckpt'}")
    assert back.returncode == 0, back.stderr
    again, tok2, _ = load_checkpoint(str(tmp_path / "back.ckpt"))
    arch_fields = (
        "d_model",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "max_seq_len",
        "hidden_size",
        "rope_theta",
        "norm",  # kind, eps, placement, QK-norm
        "tie_embeddings",
    )
    assert {f: getattr(again.cfg, f) for f in arch_fields} == {f: getattr(model.cfg, f) for f in arch_fields}
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tok2.to_str() == tok.to_str()


@pytest.mark.parametrize(
    "cfg,option",
    [
        (dict(kind="layernorm"), "norm.kind=layernorm"),
        (dict(qk_norm=True), "norm.qk_norm=true with norm.placement=pre"),
        (dict(placement="reordered"), "norm.placement=reordered with norm.qk_norm=false"),
    ],
)
def test_configs_without_an_equivalent_are_refused_naming_the_option(cfg, option):
    with pytest.raises(NoHFEquivalent, match=option.replace(".", r"\.")):
        hf_architecture(ModelConfig(norm=NormConfig(**cfg)))


@pytest.mark.slow
def test_export_cli_refuses_layernorm_and_writes_nothing(small_cfg, tmp_path):
    from lmstack.run import run

    cfg = small_cfg("norm=layernorm")
    run(cfg)
    out = cli("export", f"ckpt={Path(cfg.run_dir) / 'checkpoints' / 'last.ckpt'}", "format=hf", f"out={tmp_path / 'x'}")
    assert out.returncode != 0 and "norm.kind=layernorm has no Hugging Face equivalent" in out.stderr
    assert not (tmp_path / "x").exists()


def test_import_refuses_what_lmstack_cannot_compute(tmp_path):
    base = dict(TINY_LLAMA_CONFIG)
    assert model_config_from_hf(base)[1] == "llama"
    for extra, msg in [
        ({"attention_bias": True}, "attention_bias=True"),
        ({"rope_scaling": {"type": "linear", "factor": 2}}, "rope_scaling="),
        ({"architectures": ["GPT2LMHeadModel"]}, "lmstack imports LlamaForCausalLM"),
    ]:
        with pytest.raises(ValueError, match=msg):
            model_config_from_hf({**base, **extra})
    (tmp_path / "config.json").write_text(json.dumps(base))
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        import_hf(str(tmp_path), str(tmp_path / "out.ckpt"))


@pytest.mark.slow
def test_an_imported_checkpoint_continues_pretraining_from_the_same_weights(small_cfg, tmp_path):
    from omegaconf import OmegaConf

    from lmstack.config.schema import ConfigError, validate
    from lmstack.run import run

    cfg = small_cfg()
    first = run(cfg)
    assert (
        cli(
            "export", f"ckpt={Path(cfg.run_dir) / 'checkpoints' / 'last.ckpt'}", "format=hf", f"out={tmp_path / 'hf'}"
        ).returncode
        == 0
    )
    assert cli("import-hf", f"dir={tmp_path / 'hf'}", f"out={tmp_path / 'imported.ckpt'}").returncode == 0
    cfg2 = small_cfg(f"init_from={tmp_path / 'imported.ckpt'}", "model.d_model=64")  # the checkpoint's model wins
    cfg2.run_dir = str(tmp_path / "continued")
    second = run(cfg2)
    # the same weights on the same validation text, tokenized with the checkpoint's tokenizer
    assert second["val/bpb_before"] == pytest.approx(first["val/bpb"], abs=1e-6)
    assert second["steps"] == 2 and second["val/bpb"] != second["val/bpb_before"]  # and it trained on
    both = OmegaConf.to_container(small_cfg(f"init_from={tmp_path / 'imported.ckpt'}", "ckpt_path=last"), resolve=True)
    with pytest.raises(ConfigError, match="set one of ckpt_path"):
        validate(both)


@pytest.mark.slow
def test_an_adapted_model_exports_its_chat_template_and_end_marker(small_cfg, tmp_path):
    from lmstack.checkpoint import load_checkpoint
    from lmstack.run import run
    from lmstack.tasks.chat_template import END, add_chat_tokens, prompt_ids, render, resize_vocab

    cfg = small_cfg()
    run(cfg)
    model, tok, ckpt = load_checkpoint(str(Path(cfg.run_dir) / "checkpoints" / "last.ckpt"))
    tok = add_chat_tokens(tok)  # what an adaptation stage does before training
    resize_vocab(model, tok.get_vocab_size())
    ckpt["tokenizer_json"] = tok.to_str()
    ckpt["hyper_parameters"]["model_cfg"]["vocab_size"] = model.cfg.vocab_size
    ckpt["state_dict"] = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(ckpt, tmp_path / "chat.ckpt")
    out = cli("export", f"ckpt={tmp_path / 'chat.ckpt'}", "format=hf", f"out={tmp_path / 'hf'}")
    assert out.returncode == 0, out.stderr
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)

    def hf_ids(conversation, **kw) -> list[int]:
        out = hf_tok.apply_chat_template(conversation, tokenize=True, **kw)
        return list(out["input_ids"] if hasattr(out, "keys") else out)  # a BatchEncoding in transformers 5

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"}]
    assert hf_ids(conversation, add_generation_prompt=True) == prompt_ids(tok, "What is 12 + 30?", "Be brief.")
    full = conversation + [{"role": "assistant", "content": "42"}]
    assert hf_ids(full) == render(tok, full)[0]
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.token_to_id("<|endoftext|>"), tok.token_to_id(END)]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    x = torch.tensor([render(tok, full)[0]])
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() < 1e-4


@pytest.mark.slow
def test_an_moe_model_exports_to_olmoe_with_our_logits_and_greedy_continuation(small_cfg, tmp_path):
    """moe-tiny with QK-norm: OlmoeForCausalLM loads the folder and computes our logits and our greedy
    continuation; moe-tiny as it is (no QK-norm) is refused naming the option, before anything is written."""
    from lmstack.checkpoint import load_checkpoint
    from lmstack.generate import generate

    ckpt = trained_checkpoint(small_cfg, tmp_path, "model=moe-tiny", "model.norm.qk_norm=true")
    out = cli("export", f"ckpt={ckpt}", "format=hf", f"out={tmp_path / 'hf'}")
    assert out.returncode == 0, out.stderr
    assert "wrote OlmoeForCausalLM" in out.stdout
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(hf).__name__ == "OlmoeForCausalLM" and hf.config.num_experts == 8 and hf.config.num_experts_per_tok == 2
    model, tok, _ = load_checkpoint(str(ckpt))
    model.eval()
    import gzip

    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f:
        text = json.loads(f.readline())["text"][:2000]
    ids = tok.encode(text).ids[:48]
    with torch.no_grad():
        mine, theirs = model(torch.tensor([ids])), hf(torch.tensor([ids])).logits
    assert mine.abs().max() > 1.0 and (mine - theirs).abs().max() < 1e-4
    prompt = ids[:16]
    ours = generate(model, prompt, 16, temperature=0)
    with torch.no_grad():
        hf_ids = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert hf_ids[0, 16:].tolist() == ours

    plain = trained_checkpoint(small_cfg, tmp_path / "plain", "model=moe-tiny", run_dir=tmp_path / "plain" / "run")
    refused = cli("export", f"ckpt={plain}", "format=hf", f"out={tmp_path / 'refused'}")
    assert refused.returncode != 0 and "norm.qk_norm=false (OLMoE always normalises queries and keys" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_moe_configs_olmoe_cannot_compute_are_refused_naming_the_option():
    from lmstack.model.config import MoEConfig

    qk = NormConfig(qk_norm=True)
    assert hf_architecture(ModelConfig(norm=qk, moe=MoEConfig(experts=4))) == "olmoe"
    for moe, option in [
        (MoEConfig(experts=4, shared_expert=True), "moe.shared_expert=true"),
        (MoEConfig(experts=4, layers=[1, 3]), r"moe.layers=\[1, 3\]"),
    ]:
        with pytest.raises(NoHFEquivalent, match=option):
            hf_architecture(ModelConfig(norm=qk, moe=moe))
    with pytest.raises(NoHFEquivalent, match="norm.placement=reordered"):
        hf_architecture(ModelConfig(norm=NormConfig(qk_norm=True, placement="reordered"), moe=MoEConfig(experts=4)))
