"""LoRA stages (`stage.lora`, lmstack.adapt.lora): the base stays frozen, only the adapters (and the new chat
tokens' rows) train and are checkpointed, with the base's digest; reading the checkpoint merges them, so the
export loads in transformers with the adapted model's logits; a changed base is refused naming its digest;
DPO's live reference is the base itself (the policy with its adapters off)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("peft")

LORA = "stage.lora={rank: 4, alpha: 8}"


def sft_cfg(small_cfg, base, run_dir, *overrides):
    cfg = small_cfg("stage=sft", f"init_from={base}", "stage.train_examples=96", "stage.test_examples=4",
                    "stage.epochs=1", "data.seq_len=64", "data.batch_size=8", "train.val_every_steps=100",
                    *overrides)  # fmt: skip
    cfg.run_dir = str(run_dir)
    return cfg


@pytest.fixture(scope="module")
def lora_sft(small_ckpt, tmp_path_factory, cache_dir):
    """A LoRA SFT run from a copy of the small checkpoint (the copy is later changed to test the refusal)."""
    from lmstack.run import run

    from .helpers import SMALL, compose_cfg

    folder = tmp_path_factory.mktemp("lora")
    base = folder / "base.ckpt"
    shutil.copyfile(small_ckpt, base)
    cfg = sft_cfg(lambda *o: compose_cfg([*SMALL, *o], cache_dir=cache_dir), base, folder / "sft", LORA)
    result = run(cfg)
    return base, folder / "sft", result


@pytest.mark.slow
def test_a_lora_stage_trains_and_checkpoints_only_its_adapters_on_a_frozen_base(lora_sft):
    from lmstack.adapt.lora import LoraSection, apply_lora
    from lmstack.checkpoint import checkpoint_digest, load_checkpoint, read_checkpoint
    from lmstack.tasks.chat_template import resize_vocab

    base, run_dir, result = lora_sft
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(last)
    record = ckpt["lmstack"]["lora"]
    assert record["base"] == str(base) and record["digest"] == checkpoint_digest(base)
    assert record["config"] == {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": LoraSection().targets}
    assert len(record["new_tokens"]) == 4  # the chat tokens the stage added
    keys = set(ckpt["state_dict"])
    assert keys and all(".lora_A." in k or ".lora_B." in k or "trainable_tokens_delta" in k for k in keys)
    base_model, _, _ = load_checkpoint(str(base))
    n_base = sum(p.numel() for p in base_model.parameters())
    n_adapter = sum(v.numel() for v in ckpt["state_dict"].values())
    assert n_adapter < 0.2 * n_base and last.stat().st_size < 0.5 * base.stat().st_size
    # the adapters learned something: B starts at zero
    assert any(float(v.abs().max()) > 0 for k, v in ckpt["state_dict"].items() if ".lora_B." in k)
    # reading the checkpoint merges: the merged model's logits are the adapted model's
    merged, tok, _ = load_checkpoint(str(last))
    adapted, _, _ = load_checkpoint(str(base))
    resize_vocab(adapted, merged.cfg.vocab_size)
    apply_lora(adapted, LoraSection(rank=4, alpha=8.0), record["new_tokens"])
    adapted.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}, strict=False)
    ids = torch.tensor([tok.encode("<|user|>\nWhat is 12 + 30?\n<|assistant|>\n").ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), adapted.eval()(ids), rtol=1e-5, atol=1e-5)
        # what LoRA does not adapt is the base's, bit for bit; an adapted projection moved by B @ A x alpha/r
        for name, p in base_model.named_parameters():
            if name.endswith(("attn_norm.weight", "mlp_norm.weight", "norm.weight")):
                assert torch.equal(dict(merged.named_parameters())[name], p), name
        q = "blocks.0.attn.q_proj"
        a, b = (ckpt["state_dict"][f"model.{q}.lora_{x}.default.weight"] for x in "AB")
        delta = merged.get_submodule(q).weight - base_model.get_submodule(q).weight
        torch.testing.assert_close(delta, b @ a * (8.0 / 4), rtol=1e-4, atol=1e-6)
        emb = merged.embed.weight[: base_model.cfg.vocab_size]
        old = [i for i in range(base_model.cfg.vocab_size) if i not in record["new_tokens"]]
        assert torch.equal(emb[old], base_model.embed.weight[old])  # only the new tokens' rows train
    recipe = json.loads((run_dir / "recipe.json").read_text())["sft"]
    assert recipe["steps"] == result["steps"] > 2 and 0.0 <= recipe["exact_match"] <= 1.0


@pytest.mark.slow
def test_a_lora_checkpoint_exports_the_merged_model_and_refuses_a_changed_base(lora_sft, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmstack.checkpoint import CheckpointError, checkpoint_digest, load_checkpoint
    from lmstack.interop.hf import export_hf

    base, run_dir, _ = lora_sft
    last = run_dir / "checkpoints" / "last.ckpt"
    merged, tok, _ = load_checkpoint(str(last))
    export_hf(str(last), str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = torch.tensor([tok.encode("<|user|>\nWhat is 3 + 4?\n<|assistant|>\n").ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, merged(ids), rtol=1e-4, atol=1e-4)
    # the base changes under the adapters: refused, naming both digests; nothing else is read
    trained_on = checkpoint_digest(base)
    saved = base.read_bytes()
    try:
        state = torch.load(base, weights_only=True)
        state["state_dict"]["model.norm.weight"] = state["state_dict"]["model.norm.weight"] * 2
        torch.save(state, base)
        with pytest.raises(CheckpointError, match=f"has changed: sha256 {checkpoint_digest(base)}, the adapters "
                                                  f"were trained on sha256 {trained_on}"):  # fmt: skip
            load_checkpoint(str(last))
        base.unlink()
        with pytest.raises(CheckpointError, match=f"its LoRA base {base} is missing"):
            load_checkpoint(str(last))
    finally:
        base.write_bytes(saved)


@pytest.mark.slow
def test_a_lora_dpo_reference_is_the_base_with_the_adapters_off(lora_sft, small_cfg, tmp_path):
    """DPO with reference=live under LoRA: no frozen copy; the reference's log-probs are the starting
    model's exactly, while the policy moves."""
    from lmstack.adapt.lora import AdaptersOff
    from lmstack.checkpoint import load_checkpoint
    from lmstack.run import run
    from lmstack.stages.dpo import DPO

    _, sft_dir, _ = lora_sft
    start = sft_dir / "checkpoints" / "last.ckpt"
    seen = {}
    original = DPO.build

    def build(self, trainer):
        module, data = original(self, trainer)
        ref = module.objective.reference_model
        seen["reference"] = ref
        starting, _, _ = load_checkpoint(str(start))
        ids = torch.randint(0, 300, (2, 16))
        with torch.no_grad():
            module.model.blocks[0].attn.q_proj.lora_B.default.weight.add_(0.5)  # the policy moves
            seen["ref_equal"] = torch.allclose(ref(ids), starting(ids), atol=1e-5)
            seen["policy_differs"] = not torch.allclose(module.model(ids), starting(ids), atol=1e-3)
            module.model.blocks[0].attn.q_proj.lora_B.default.weight.sub_(0.5)
        return module, data

    DPO.build = build
    try:
        cfg = small_cfg("stage=dpo", f"init_from={start}", "stage.train_examples=16", "stage.test_examples=4",
                        "stage.epochs=1", "stage.rejected_samples=0", "data.batch_size=8", "stage.reference=live",
                        LORA, "train.val_every_steps=100")  # fmt: skip
        cfg.run_dir = str(tmp_path / "dpo")
        run(cfg)
    finally:
        DPO.build = original
    assert isinstance(seen["reference"], AdaptersOff) and seen["ref_equal"] and seen["policy_differs"]
    ckpt = torch.load(tmp_path / "dpo" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["lmstack"]["lora"]["base"] == str(start) and ckpt["lmstack"]["lora"]["new_tokens"] == []
    merged, _, _ = load_checkpoint(str(tmp_path / "dpo" / "checkpoints" / "last.ckpt"))  # base: a LoRA one
    assert merged.cfg.vocab_size == load_checkpoint(str(start))[0].cfg.vocab_size


def test_lora_targets_must_name_linear_layers(small_cfg):
    from omegaconf import OmegaConf

    from lmstack.adapt.lora import LoraSection, apply_lora
    from lmstack.config import ConfigError
    from lmstack.config.schema import validate
    from lmstack.model import ModelConfig, Transformer

    spec = validate(OmegaConf.to_container(small_cfg("stage=sft", "init_from=x.ckpt", LORA), resolve=True))
    assert spec.stage.lora == LoraSection(rank=4, alpha=8.0)
    with pytest.raises(ConfigError, match=r"stage.lora.rank=0 is too small"):
        validate(OmegaConf.to_container(small_cfg("stage=sft", "init_from=x.ckpt", "stage.lora={rank: 0}"),
                                        resolve=True))  # fmt: skip
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4))
    with pytest.raises(ConfigError, match=r"stage.lora.targets=\['q_proj', 'wq'\]: \['wq'\] names no linear"):
        apply_lora(model, LoraSection(targets=["q_proj", "wq"]), [])
    assert all(p.requires_grad for p in model.parameters())  # refused before anything was frozen


def test_muon_trains_a_lora_model_whose_adapters_are_all_it_trains():
    """From a checkpoint that has the chat tokens, a LoRA model trains adapter matrices only, all Muon's:
    optimizer=muon's AdamW half is empty, and the step still runs and resumes from its state dict."""
    from lmstack.adapt.lora import LoraSection, apply_lora
    from lmstack.config.schema import OptimizerSection
    from lmstack.train.muon import muon

    model = small_model()
    apply_lora(model, LoraSection(rank=4), [])
    opt = muon(model, OptimizerSection(name="muon", lr=1e-2))
    assert [len(g["params"]) for g in opt.param_groups] == [14, 0]  # 7 projections x (A, B); no AdamW part
    b = model.blocks[0].attn.q_proj.lora_B.default.weight
    model(torch.randint(0, 64, (2, 8))).float().pow(2).mean().backward()
    opt.step()
    assert float(b.abs().max()) > 0  # B starts at zero and moved
    opt.load_state_dict(opt.state_dict())
    opt.step()


def small_model():
    from lmstack.model import ModelConfig, Transformer

    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4))
