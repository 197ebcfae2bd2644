"""Generative evals (lmstack.eval.generative): held-out prompts of a verifiable task answered greedily through
the chat template and scored by its verifier, in the loop of a real SFT run and standalone, equal to the
stage's own held-out exact match; batched decoding scores what one-prompt decoding writes."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.checkpoint import load_checkpoint
from lmstack.data.tokenizer import token_byte_lengths
from lmstack.eval.generative import generative_hits
from lmstack.eval.suite import evaluate, load_suite
from lmstack.tasks.answers import answer
from lmstack.tasks.verifiable import first_line, make_task

from .helpers import SMALL, compose_cfg

HELD_OUT = 12
ARITHMETIC = {"task": "arithmetic", "options": {"digits": 2, "operators": "+"}, "examples": HELD_OUT}


@pytest.fixture(scope="module")
def sft_run(small_ckpt, cache_dir, tmp_path_factory):
    """SFT from the small checkpoint with `evals=chat` (its generative task only) every 3 steps: its folder
    and config."""
    from lmstack.run import run

    out = tmp_path_factory.mktemp("sft-generative")
    overrides = [
        "stage=sft",
        f"init_from={small_ckpt}",
        "stage.train_examples=200",
        f"stage.test_examples={HELD_OUT}",
        "stage.epochs=1",
        "data.seq_len=64",
        "data.batch_size=8",
        "evals=chat",
        "evals.sets=null",
        "evals.tasks=null",
        f"evals.generative.arithmetic.examples={HELD_OUT}",
        "evals.every_steps=3",
    ]
    cfg = compose_cfg([*SMALL, *overrides], run_dir=out / "run", cache_dir=cache_dir)
    run(cfg)
    return out / "run", cfg


@pytest.mark.slow
def test_inloop_generative_eval_equals_the_stages_exact_match_and_lmstack_eval(sft_run, tmp_path, capsys):
    import hydra
    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmstack.adapt.examples import split_examples, stage_tasks
    from lmstack.cli import main
    from lmstack.config.schema import validate

    sft_run, cfg = sft_run
    spec = validate(OmegaConf.to_container(cfg, resolve=True))
    evaluator = hydra.utils.instantiate(spec.evals)
    _, tok, _ = load_checkpoint(str(sft_run / "checkpoints" / "last.ckpt"))
    ours = load_suite({}, {}, tok, tok.to_str(), 64, evaluator.generative).generative["arithmetic"].examples
    _, held_out = split_examples(spec.stage, stage_tasks(spec.stage), spec.seed)
    assert [e.prompt for e in ours] == [e.prompt for e in held_out]  # the stage's own held-out prompts

    rounds = [json.loads(line) for line in (sft_run / "evals.jsonl").read_text().splitlines()]
    recipe = json.loads((sft_run / "recipe.json").read_text())["sft"]
    steps = recipe["steps"]
    assert [r["step"] for r in rounds] == [*range(3, steps + 1, 3), *([steps] if steps % 3 else [])]
    assert all(r["arithmetic"]["examples"] == HELD_OUT for r in rounds)
    assert rounds[-1]["arithmetic"]["exact_match"] == recipe["exact_match"]  # the same prompts, the same model
    events = EventAccumulator(str(next(sft_run.rglob("events.out.tfevents*")).parent)).Reload()
    assert [e.step for e in events.Scalars("eval/arithmetic/exact_match")] == [r["step"] for r in rounds]

    ckpt = sft_run / "checkpoints" / "last.ckpt"
    main(["eval", f"ckpt={ckpt}", "suite=chat", "tasks=[arithmetic]", f"limit={HELD_OUT}", f"out={tmp_path / 'e'}"])
    alone = json.loads((tmp_path / "e" / "eval.json").read_text())["arithmetic"]
    assert alone == {"exact_match": recipe["exact_match"], "examples": HELD_OUT}
    assert f"| arithmetic | {HELD_OUT} |" in capsys.readouterr().out


def test_batched_answers_score_what_one_prompt_decoding_writes(small_ckpt, tmp_path):
    """A JSONL task whose answers are the model's own one-prompt greedy answers on even rows and a wrong
    answer on odd rows scores exactly 0.5 through batched, left-padded decoding, on one rank or two (a
    randomly initialised model with the chat tokens: it writes something different to every prompt)."""
    from lmstack.model import ModelConfig, Transformer
    from lmstack.tasks.chat_template import add_chat_tokens

    _, tok, state = load_checkpoint(str(small_ckpt))
    tok = add_chat_tokens(tok)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2, n_heads=4)).eval()
    prompts = [ex.prompt for ex in make_task("arithmetic", digits=3, operators="+-").generate(HELD_OUT, "test")]
    own = [first_line(answer(model, tok, p, 12)) for p in prompts]
    assert len(set(own)) > 1  # the model writes different things to different prompts
    rows = [{"prompt": p, "answer": a if i % 2 == 0 else a + " (wrong)"} for i, (p, a) in enumerate(zip(prompts, own))]
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"task": str(path), "examples": HELD_OUT, "max_new_tokens": 12}
    suite = load_suite({}, {}, tok, tok.to_str(), 64, {"own": spec})
    token_bytes = torch.from_numpy(token_byte_lengths(tok))
    for batch_size in (5, 16):  # batches of 5, 5, 2 prompts and one of 12
        assert evaluate(model, suite, token_bytes, batch_size)["own"] == {"exact_match": 0.5, "examples": HELD_OUT}
    g = suite.generative["own"]
    shares = [generative_hits(model, tok, g, 4, rank, 2) for rank in (0, 1)]
    assert [int(s[1]) for s in shares] == [6, 6] and float(sum(s[0] for s in shares)) == 6.0


def test_a_generative_task_needs_the_chat_template_and_a_known_task(small_ckpt, tmp_path):
    from omegaconf import OmegaConf

    from lmstack.cli import main
    from lmstack.config.schema import ConfigError, validate

    model, tok, state = load_checkpoint(str(small_ckpt))  # a pretrained model: no chat tokens
    with pytest.raises(ValueError, match="no chat tokens"):
        load_suite({}, {}, tok, state["tokenizer_json"], 64, {"arithmetic": ARITHMETIC})
    with pytest.raises(SystemExit, match="no chat tokens"):
        main(["eval", f"ckpt={small_ckpt}", "suite=chat", "tasks=[arithmetic]", f"out={tmp_path / 'e'}"])
    assert not (tmp_path / "e").exists()
    cfg = compose_cfg([*SMALL, "evals=chat", "+evals.generative.arithmetic.shots=2"])
    with pytest.raises(ConfigError, match="evals.generative.arithmetic: unknown key 'shots'"):
        validate(OmegaConf.to_container(cfg, resolve=True))
    cfg = compose_cfg([*SMALL, "evals=chat", "evals.harness={tasks: [x], seed: 1}"])
    with pytest.raises(ConfigError, match="evals.harness: unknown key 'seed'"):
        validate(OmegaConf.to_container(cfg, resolve=True))


def test_the_chat_template_text_encodes_to_the_ids_sft_trains_on(small_ckpt):
    from lmstack.tasks.chat_template import JINJA_TEMPLATE, add_chat_tokens, render, render_text

    _, tok, _ = load_checkpoint(str(small_ckpt))
    tok = add_chat_tokens(tok)
    chat = [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": " 42"},
        {"role": "user", "content": "And  twice that?\n"},
    ]
    for prompt in (False, True):
        assert tok.encode(render_text(chat, prompt)).ids == render(tok, chat, prompt)[0]
    import jinja2

    assert jinja2.Template(JINJA_TEMPLATE).render(messages=chat, add_generation_prompt=True) == render_text(chat, True)
    with pytest.raises(ValueError, match="message 1: needs role"):
        render_text([chat[0], {"role": "tool", "content": "x"}])


def test_lm_evals_chat_template_prompts_answer_as_the_stage_does(small_ckpt):
    """lm-eval's --apply_chat_template path: the prompt through the model's chat template, generation
    stopped at the end marker, gives what the stage's own greedy answer gives. The end marker's output row
    is a copy of a token the model writes mid-answer, scaled up, so the model ends its turns there."""
    from lm_eval.api.instance import Instance

    from lmstack.eval.harness import LmstackLM
    from lmstack.model import ModelConfig, Transformer
    from lmstack.tasks.chat_template import END, add_chat_tokens

    _, tok, _ = load_checkpoint(str(small_ckpt))
    tok = add_chat_tokens(tok)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, tie_embeddings=False)
    model = Transformer(cfg).eval()
    prompts = [ex.prompt for ex in make_task("arithmetic", digits=3, operators="+-").generate(HELD_OUT, "test")]
    lm = LmstackLM(model=model, tok=tok, batch_size=5)
    first = tok.encode(answer(model, tok, prompts[0], 16)).ids
    with torch.no_grad():
        model.lm_head.weight[tok.token_to_id(END)] = 1.5 * model.lm_head.weight[first[3]]
    ours = [answer(model, tok, p, 16) for p in prompts]
    settings = {"until": [], "max_gen_toks": 16}
    chats = [lm.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
    assert lm.generate_until([Instance("generate_until", {}, (c, settings), 0) for c in chats]) == ours
    assert sum(len(tok.encode(a).ids) < 12 for a in ours) >= 2  # turns ended at the marker
