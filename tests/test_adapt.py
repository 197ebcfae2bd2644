"""Adaptation building blocks: verifiable tasks and their splits, the chat template and its masks, packing
without attention across conversations, and the SFT loss reductions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmstack.adapt.sft import IGNORE, pack, sft_loss
from lmstack.data.tokenizer import train_bpe
from lmstack.model import Documents, ModelConfig, Transformer
from lmstack.tasks.chat_template import END, add_chat_tokens, prompt_ids, render, resize_vocab
from lmstack.tasks.verifiable import JsonlTask, make_task


@pytest.fixture(scope="module")
def tok():
    return add_chat_tokens(train_bpe(["What is 12 + 30? 42. Reverse the word: lamp pmal"] * 50, 320))


@pytest.mark.parametrize("name", ["arithmetic", "reverse", "sort", "count", "constraints"])
def test_tasks_are_seeded_disjoint_and_their_references_verify(name):
    task = make_task(name)
    train, test = task.generate(60, "train", seed=1), task.generate(15, "test", seed=1)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert [e.prompt for e in train] == [e.prompt for e in task.generate(60, "train", seed=1)]
    assert all(task.verify(e.answer, e) == 1.0 for e in train + test)
    assert sum(task.verify("Zzzz", e) for e in train) < len(train) / 2


def test_verifiers_are_exact():
    arith = make_task("arithmetic", digits=2, operators="+")
    ex = arith.generate(1, seed=0)[0]
    right = str(ex.meta["a"] + ex.meta["b"])
    assert arith.verify(right, ex) == 1.0 and arith.verify(f" {right}\nbecause", ex) == 1.0
    assert arith.verify(str(int(right) + 1), ex) == 0.0 and arith.verify(f"{right}.5", ex) == 0.0
    c = make_task("constraints")
    by_kind = {}
    for e in c.generate(40, seed=0):
        by_kind.setdefault(e.meta["kind"], e)
    assert (
        c.verify("all lower here", by_kind["lowercase"]) == 1.0 and c.verify("Not Lower", by_kind["lowercase"]) == 0.0
    )
    n = by_kind["words"].meta["n"]
    assert (
        c.verify(" ".join(["w"] * n), by_kind["words"]) == 1.0
        and c.verify(" ".join(["w"] * (n + 1)), by_kind["words"]) == 0.0
    )
    phrase = by_kind["ends"].meta["phrase"]
    assert (
        c.verify(f"so it goes, {phrase}.", by_kind["ends"]) == 1.0
        and c.verify(f"{phrase} and more", by_kind["ends"]) == 0.0
    )
    with pytest.raises(ValueError, match="operators from"):
        make_task("arithmetic", operators="/")


def test_user_tasks_from_jsonl(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(
        json.dumps({"prompt": "2+2?", "answer": "4"})
        + "\n"
        + json.dumps({"prompt": "best?", "chosen": "yes", "rejected": "no"})
        + "\n"
    )
    task = make_task(str(f))
    assert task.name == "mine" and len(task.examples) == 2 and task.examples[1].meta["rejected"] == "no"
    assert task.verify("4", task.examples[0]) == 1.0
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 1: needs `prompt`"):
        JsonlTask(str(tmp_path / "bad.jsonl"))


def test_the_template_masks_all_but_the_assistant_and_renders_prompts_as_a_prefix(tok):
    msgs = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "42"},
    ]
    ids, mask = render(tok, msgs)
    learned = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(learned, skip_special_tokens=False) == "42" + END
    assert tok.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=False).count("<|") == 5
    prompt = prompt_ids(tok, "What is 12 + 30?", system="Be terse.")
    assert ids[: len(prompt)] == prompt  # generation sees exactly what training saw before the answer
    with pytest.raises(ValueError, match="needs role in"):
        render(tok, [{"role": "bot", "content": "x"}])


def test_resizing_the_vocab_keeps_old_logits(tok):
    torch.manual_seed(0)
    base = tok.get_vocab_size() - 4  # the vocabulary before the chat tokens
    model = Transformer(ModelConfig(vocab_size=base, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)).eval()
    x = torch.randint(0, base, (1, 12))
    before = model(x)
    resize_vocab(model, tok.get_vocab_size())
    grown = -(-tok.get_vocab_size() // 64) * 64
    assert model.cfg.vocab_size == grown and model.embed.weight.shape[0] == model.lm_head.weight.shape[0] == grown
    assert (model(x)[..., :base] - before).abs().max() < 1e-5


def test_packed_conversations_do_not_attend_across(tok):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)).eval()
    a = render(tok, [{"role": "user", "content": "Reverse the word: lamp"}, {"role": "assistant", "content": "pmal"}])
    b = render(tok, [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42"}])
    batch = pack([a, b], seq_len=48)
    assert batch["input_ids"].shape == (1, 48) and batch["doc"][0, : len(a[0])].eq(1).all()
    with torch.no_grad():
        packed = model(batch["input_ids"], docs=Documents(batch["doc"]))
        alone = model(torch.tensor([b[0]]))
    start = len(a[0])
    assert (packed[0, start : start + len(b[0])] - alone[0]).abs().max() < 1e-5
    labels = batch["labels"][0]
    assert (labels != IGNORE).sum() == sum(a[1][1:]) + sum(b[1][1:])  # assistant tokens, never across
    assert labels[start - 1] == IGNORE  # the last token of a does not predict the first of b


def test_sft_loss_reductions_and_an_all_masked_batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), IGNORE)
    labels[0, 1], labels[1, 3] = 4, 7
    mean, n = sft_loss(logits, labels, "mean")
    total, _ = sft_loss(logits, labels, "sum")
    assert n == 2 and float(total) == pytest.approx(float(mean) * 2 / 10)
    empty, n0 = sft_loss(logits, torch.full((2, 5), IGNORE), "mean")
    empty.backward()
    assert n0 == 0 and float(empty) == 0.0 and torch.isfinite(empty) and logits.grad.abs().sum() == 0


def test_an_all_masked_step_is_finite_and_changes_nothing(tmp_path):
    import lightning as L

    from lmstack.adapt.data import RowsDataModule
    from lmstack.adapt.sft import SFTObjective
    from lmstack.config.schema import OptimizerSection, TrainSection
    from lmstack.train.context import RunContext
    from lmstack.train.module import TrainModule

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32).to_dict()
    opt = OptimizerSection(lr=1e-2, weight_decay=0.1)
    sched = {
        "name": "constant",
        "peak_lr": 1e-2,
        "total_tokens": 1000,
        "warmup_tokens": 0,
        "min_lr": 0.0,
        "decay_tokens": 0,
    }
    module = TrainModule(cfg, opt, sched, TrainSection(grad_clip=1.0), SFTObjective(), RunContext(tokens_per_step=64))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rows = {
        "input_ids": torch.randint(0, 64, (4, 16)),
        "labels": torch.full((4, 16), IGNORE),
        "doc": torch.ones(4, 16, dtype=torch.long),
    }
    losses = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Probe()],
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=RowsDataModule(rows, rows, 2, 0))
    assert losses == [0.0, 0.0] and module.skipped_steps == 2
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no momentum or weight decay step either


@pytest.mark.slow
def test_sft_dpo_rlvr_from_a_pretrained_checkpoint(small_cfg, tmp_path):
    from tokenizers import Tokenizer

    from lmstack.checkpoint import load_checkpoint
    from lmstack.run import run

    pre = small_cfg()
    run(pre)
    ckpt = Path(pre.run_dir) / "checkpoints" / "last.ckpt"
    cfg = small_cfg(
        "stage=sft",
        f"init_from={ckpt}",
        "stage.train_examples=300",
        "stage.test_examples=12",
        "stage.epochs=2",
        "data.seq_len=64",
        "data.batch_size=8",
        "train.val_every_steps=5",
    )
    cfg.run_dir = str(tmp_path / "sft")
    result = run(cfg)
    recipe = json.loads((tmp_path / "sft" / "recipe.json").read_text())
    assert recipe["sft"]["held_out"] == 12 and recipe["sft"]["steps"] == result["steps"] > 2
    assert 0.0 <= recipe["sft"]["exact_match"] <= 1.0
    model, tok, state = load_checkpoint(recipe["sft"]["checkpoint"])
    assert tok.token_to_id("<|assistant|>") is not None and model.cfg.vocab_size >= tok.get_vocab_size()
    assert state["hyper_parameters"]["objective"] == {"name": "sft", "reduction": "mean"}
    base = Tokenizer.from_str(torch.load(ckpt, weights_only=False)["tokenizer_json"])
    assert tok.get_vocab_size() == base.get_vocab_size() + 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "sft").rglob("events.out.tfevents*")).parent)).Reload()
    val = [e.value for e in events.Scalars("val/loss")]
    assert len(val) >= 2 and val[-1] < val[0]  # it learns the answers' format at least

    # DPO from the SFT checkpoint, recorded in the same recipe.json
    dpo = small_cfg(
        "stage=dpo",
        f"init_from={recipe['sft']['checkpoint']}",
        "stage.train_examples=48",
        "stage.test_examples=12",
        "stage.epochs=1",
        "stage.rejected_samples=1",
        "data.batch_size=8",
        "optimizer.lr=5e-4",
        "stage.rpo_alpha=0.2",
        f"stage.recipe_file={tmp_path / 'sft' / 'recipe.json'}",
        "train.val_every_steps=100",
    )
    dpo.run_dir = str(tmp_path / "dpo")
    run(dpo)
    recipe = json.loads((tmp_path / "sft" / "recipe.json").read_text())
    assert set(recipe) == {"sft", "dpo"} and recipe["dpo"]["preference_accuracy"] > 0.5
    assert recipe["dpo"]["held_out"] == 12 and recipe["dpo"]["steps"] == 6  # 48 pairs / 8 per step

    # RLVR (GRPO) from the DPO checkpoint: 8 prompts x 4 samples, 2 steps
    rl = small_cfg(
        "stage=rlvr",
        f"init_from={recipe['dpo']['checkpoint']}",
        "stage.train_examples=8",
        "stage.test_examples=4",
        "stage.group_size=4",
        "data.batch_size=4",
        "stage.beta=0.05",
        f"stage.recipe_file={tmp_path / 'sft' / 'recipe.json'}",
    )
    rl.run_dir = str(tmp_path / "rlvr")
    run(rl)
    recipe = json.loads((tmp_path / "sft" / "recipe.json").read_text())
    assert set(recipe) == {"sft", "dpo", "rlvr"} and recipe["rlvr"]["steps"] == 2
    assert 0.0 <= recipe["rlvr"]["mean_reward"] <= 1.0 and "mean_reward_before" in recipe["rlvr"]

    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    chat = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "chat", f"ckpt={recipe['rlvr']['checkpoint']}", "max_new_tokens=6"],
        input="What is 12 + 30?\nWhat is 5 + 2?\n\n",
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("assistant> ") == 2


def test_stage_options_are_checked(small_cfg):
    """The stage section is typed like every other (lmstack.config.stage): the same checks and messages."""
    from omegaconf import OmegaConf

    from lmstack.config import ConfigError
    from lmstack.config.schema import validate

    def check(*overrides):
        return validate(OmegaConf.to_container(small_cfg(*overrides), resolve=True))

    assert check("stage=dpo", "init_from=x.ckpt").stage.beta == 5.0  # conf/stage/dpo.yaml's
    assert check("stage=rlvr", "init_from=x.ckpt").stage.beta == 0.0  # RLVRSection's own default
    with pytest.raises(ConfigError, match=r"stage.rpo_alpha=-1.0 is too small; it must be >= 0.0"):
        check("stage=dpo", "init_from=x.ckpt", "stage.rpo_alpha=-1.0")
    with pytest.raises(ConfigError, match="set init_from=PATH"):
        check("stage=sft")
    with pytest.raises(ConfigError, match="unknown key stage.bogus; allowed keys in stage: data, epochs,") as e:
        check("stage=sft", "init_from=x.ckpt", "+stage.bogus=1")
    assert "beta" not in str(e.value)  # each stage has its own section: SFT has no DPO options
    with pytest.raises(ConfigError, match="unknown key stage.beta; allowed keys in stage: data, epochs,"):
        check("stage=sft", "init_from=x.ckpt", "+stage.beta=0.1")
    with pytest.raises(ConfigError, match="stage.reference='frozen' is not allowed; allowed: 'cached', 'live'"):
        check("stage=dpo", "init_from=x.ckpt", "stage.reference=frozen")


def test_grpo_with_beta_zero_builds_no_reference(small_cfg, small_ckpt):
    from omegaconf import OmegaConf

    from lmstack.config.schema import validate
    from lmstack.stages.rlvr import RLVR

    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32))

    def objective(*overrides):
        cfg = small_cfg("stage=rlvr", f"init_from={small_ckpt}", *overrides)
        spec = validate(OmegaConf.to_container(cfg, resolve=True))
        stage = RLVR(spec, {})
        stage.tasks = {}
        return stage.objective(model, None)

    assert objective("stage.beta=0.0").reference_model is None
    ref = objective("stage.beta=0.1").reference_model
    assert ref is not model and not any(p.requires_grad for p in ref.parameters())
