"""The examples an adaptation stage trains and scores on: the configured tasks' train and held-out splits, the
conversations they make, DPO's encoded pairs, the sampled reward, and the recipe record (`recipe.json`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmstack.config.schema import ConfigError
from lmstack.tasks.verifiable import Example, Task, make_task


def stage_tasks(stage) -> dict[str, Task]:
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


def split_examples(stage, tasks: dict[str, Task], seed: int) -> tuple[list[Example], list[Example]]:
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
