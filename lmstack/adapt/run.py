"""An adaptation stage (`python train.py stage=sft init_from=CKPT`): the checkpoint's model and tokenizer,
the chat tokens added (and the embedding grown), the stage's tasks rendered with the chat template, then
pretraining's Trainer, optimizer, schedule, strategy, logging and checkpoints on the stage's loss. After
training it scores held-out exact match and records the stage in `<run_dir>/recipe.json` (stage -> numbers,
merged with what earlier stages of the recipe wrote there).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import torch

from lmstack.config.schema import ConfigError, RunSpec
from lmstack.config.stage import StageSection
from lmstack.tasks.answers import exact_match
from lmstack.tasks.chat_template import add_chat_tokens, render, resize_vocab
from lmstack.tasks.verifiable import Example, Task, make_task
from lmstack.train.module import module_args

from .data import PairsDataModule, PromptsDataModule, RowsDataModule
from .module import SFTModule
from .sft import pack

log = logging.getLogger("lmstack")


def stage_tasks(stage: StageSection) -> dict[str, Task]:
    tasks = stage.tasks or {}
    if not tasks:
        raise ConfigError(
            "stage.tasks is empty; name at least one task (arithmetic, reverse, sort, count, "
            "constraints, or a .jsonl file)"
        )
    try:
        return {name: make_task(name, **(args or {})) for name, args in tasks.items()}
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise ConfigError(f"stage.tasks: {e}") from None


def split_examples(stage: StageSection, tasks: dict[str, Task], seed: int) -> tuple[list[Example], list[Example]]:
    """Each task's train and held-out test examples (disjoint prompts)."""
    frac = stage.test_fraction
    train, test = [], []
    for key, t in tasks.items():
        for split, out, n in (("train", train, stage.train_examples), ("test", test, stage.test_examples)):
            for e in t.generate(n, split, seed, frac):
                e.task = key  # the configured name: the verifier to use
                out.append(e)
    return train, test


def conversation(ex: Example, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": ex.prompt},
        {"role": "assistant", "content": ex.answer},
    ]


def record(run_dir: Path, stage: str, numbers: dict, recipe_file: str | None = None) -> Path:
    """Merge this stage's numbers into recipe.json (the run's own, or the recipe's shared file)."""
    path = Path(recipe_file) if recipe_file else run_dir / "recipe.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[stage] = numbers
    path.write_text(json.dumps(data, indent=2))
    return path


def run_stage(spec: RunSpec, config: dict, build_trainer) -> dict:
    from lmstack.checkpoint import load_checkpoint
    from lmstack.data.tokenizer import token_byte_lengths

    stage = spec.stage
    name = stage.name
    run_dir = Path(spec.run_dir)
    L.seed_everything(spec.seed, workers=True)
    model, tok, _ = load_checkpoint(spec.init_from)
    if tok is None:
        raise ConfigError(f"init_from={spec.init_from!r} carries no tokenizer")
    tok = add_chat_tokens(tok)
    resize_vocab(model, tok.get_vocab_size())
    system, seq_len = stage.system, spec.data.seq_len
    convs = held = counts = None  # stage.data for SFT: the conversations to train on and the held-out ones
    if stage.data and name in ("sft", "dpo"):  # a chat dataset, held-out rows by a hash of the row
        from .chat_data import ChatTask, chat_conversations, last_turn_example, preference_examples

        try:
            if name == "sft":
                convs, held, counts = chat_conversations(
                    stage.data, tok, seq_len + 1, stage.test_fraction, stage.max_turns, system
                )
                held = held[: stage.test_examples]
                train, test = [last_turn_example(c) for c in convs], [last_turn_example(c) for c in held]
            else:
                train, test = preference_examples(stage.data, stage.test_fraction)
                test = test[: stage.test_examples]
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"stage.data: {e}") from None
        tasks = {ChatTask.name: ChatTask(train)}
    else:
        tasks = stage_tasks(stage)
        train, test = split_examples(stage, tasks, spec.seed)
    max_new = stage.max_new_tokens
    trainer = build_trainer(spec, adaptation=True)
    per_step = spec.data.batch_size * trainer.accumulate_grad_batches * trainer.world_size
    cfg = model.cfg.with_backend(spec.model.attention.backend).to_dict()
    extra = {}
    before = exact_match(model.eval(), tok, test, tasks, max_new, system) if trainer.is_global_zero else None
    if name == "sft":
        if convs is None:
            convs, held = [conversation(e, system) for e in train], [conversation(e, system) for e in test]
        train_data = pack([render(tok, c) for c in convs], seq_len)
        val_data = pack([render(tok, c) for c in held], seq_len)
        n_train = len(train_data["input_ids"])
        what = f"{len(train)} conversations in {n_train} packed rows of {seq_len} tokens"
        if counts is not None:
            what += " (rows of " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
            extra["rows"] = dict(counts)
    elif name == "rlvr":
        train_data, val_data, n_train = train, None, len(train)
        what = f"{n_train} prompts x {stage.group_size} samples"
    else:
        train_data, val_data, extra = dpo_data(stage, model, tok, train, test, tasks, system, seq_len, spec.seed)
        n_train = len(train_data)
        what = f"{n_train} preference pairs ({extra['rejected_from_model']} rejected answers sampled from the model)"
    max_steps = max(1, math.ceil(stage.epochs * n_train / per_step))
    if name == "rlvr":  # every rollout is trained on updates_per_rollout x minibatches steps
        repeat = stage.updates_per_rollout * stage.minibatches
        if repeat > 1 and trainer.accumulate_grad_batches > 1:
            raise ConfigError(
                f"stage.updates_per_rollout x stage.minibatches = {repeat} steps per rollout need one "
                f"micro-batch a step (trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}): raise "
                "data.batch_size instead of accumulating"
            )
        max_steps *= repeat
    trainer.fit_loop.epoch_loop.max_steps = max_steps
    tps = per_step * seq_len
    args = module_args(spec, cfg, tps, max_steps * tps, config, 0.0)  # no z-loss in adaptation
    if name == "sft":
        module = SFTModule(*args, reduction=stage.reduction)
        dm = RowsDataModule(train_data, val_data, spec.data.batch_size, spec.seed)
    elif name == "rlvr":
        from .rlvr import GRPOModule

        module = GRPOModule(
            *args,
            group_size=stage.group_size,
            beta=stage.beta_or_default(),
            clip_low=stage.clip_low,
            clip_high=stage.clip_high,
            scale_advantages=stage.scale_advantages,
            temperature=stage.temperature,
            max_new_tokens=max_new,
            system=system,
            updates_per_rollout=stage.updates_per_rollout,
            minibatches=stage.minibatches,
        )
        module.tok, module.tasks = tok, tasks
        dm = PromptsDataModule(train_data, spec.data.batch_size, spec.seed, seq_len, repeat)
    else:
        from .dpo import DPOModule

        module = DPOModule(
            *args,
            loss=stage.loss,
            beta=stage.beta_or_default(),
            label_smoothing=stage.label_smoothing,
            gamma=stage.gamma,
            reference=stage.reference,
            rpo_alpha=stage.rpo_alpha,
        )
        dm = PairsDataModule(train_data, val_data, spec.data.batch_size, spec.seed, seq_len)
    module.model.load_state_dict(model.state_dict())
    if name == "dpo" and module.reference == "live" or name == "rlvr":
        module.freeze_reference()
    module.tokenizer_json = tok.to_str()
    module.set_token_bytes(torch.from_numpy(token_byte_lengths(tok)))
    reward_before = None
    if name == "rlvr" and trainer.is_global_zero:
        reward_before = sampled_reward(model, tok, test, tasks, stage, system)
    if trainer.is_global_zero:
        print(
            f"stage {name}: {what}, {len(test)} held out; {max_steps} steps; held-out exact match before: "
            f"{before['exact_match']:.3f}" + (f", mean sampled reward {reward_before:.3f}" if name == "rlvr" else "")
        )
    trainer.fit(module, datamodule=dm)
    if name == "dpo":
        trainer.validate(module, datamodule=dm, verbose=False)  # the final preference accuracy
    result = {"steps": trainer.global_step, "run_dir": str(run_dir)}
    if trainer.is_global_zero:
        final = (
            module.model if trainer.world_size == 1 else load_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))[0]
        )
        after = exact_match(final, tok, test, tasks, max_new, system)
        numbers = {
            "exact_match": after["exact_match"],
            "exact_match_before": before["exact_match"],
            "held_out": after["n"],
            "train_examples": len(train),
            "steps": trainer.global_step,
            "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
            **extra,
        }
        if name == "dpo":
            numbers["preference_accuracy"] = module.last_val["val/preference_accuracy"]
        if name == "rlvr":
            numbers["mean_reward_before"] = reward_before
            numbers["mean_reward"] = sampled_reward(final, tok, test, tasks, stage, system)
        path = record(run_dir, name, numbers, stage.recipe_file)
        result.update(numbers, objective=1.0 - after["exact_match"])
        for s in after["samples"][:3]:
            print(f"  {s['prompt']!r} -> {s['response']!r} (answer {s['answer']!r})")
        print(
            f"held-out exact match: {before['exact_match']:.3f} -> {after['exact_match']:.3f}"
            + (f"; preference accuracy {numbers['preference_accuracy']:.3f}" if name == "dpo" else "")
            + (f"; mean sampled reward {reward_before:.3f} -> {numbers['mean_reward']:.3f}" if name == "rlvr" else "")
            + f"; {path}"
        )
    return result


@torch.no_grad()
def sampled_reward(model, tok, examples, tasks, stage, system) -> float:
    """Mean verifier reward of `eval_samples` sampled answers per held-out prompt (at the stage's temperature)."""
    from lmstack.tasks.answers import sample_answers

    gen = torch.Generator().manual_seed(0)
    model.eval()
    k = stage.eval_samples
    scores = [
        tasks[e.task].verify(r, e)
        for e in examples
        for r in sample_answers(model, tok, e.prompt, k, stage.max_new_tokens, system, stage.temperature, gen)
    ]
    return sum(scores) / max(len(scores), 1)


@torch.no_grad()
def dpo_data(stage, model, tok, train, test, tasks, system, seq_len, seed) -> tuple[list, list, dict]:
    """Encoded train and held-out pairs; with reference=cached, the reference log-probs of every pair
    computed once here with the starting model."""
    from .pairs import build_pairs, collate_pairs, encode_pair
    from .preference import response_logps

    model.eval()
    samples = stage.rejected_samples
    out, sampled = [], 0
    for split, examples in (("train", train), ("test", test)):
        pairs = build_pairs(
            examples, tasks, model if samples else None, tok, samples, stage.max_new_tokens, system, seed
        )
        sampled += sum(p.source == "model" for p in pairs)
        items = [encode_pair(tok, p, system, seq_len) for p in pairs]
        if stage.reference == "cached" and stage.loss != "simpo":
            for start in range(0, len(items), 32):
                chunk = items[start : start + 32]
                batch = collate_pairs(chunk)
                rc, _ = response_logps(model(batch["chosen_ids"]), batch["chosen_labels"])
                rr, _ = response_logps(model(batch["rejected_ids"]), batch["rejected_labels"])
                for it, c, r in zip(chunk, rc.tolist(), rr.tolist()):
                    it["ref_chosen"], it["ref_rejected"] = c, r
        out.append(items)
    return out[0], out[1], {"rejected_from_model": sampled}
