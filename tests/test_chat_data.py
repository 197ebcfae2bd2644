"""Chat datasets for SFT (stage.data): rows of `messages` in the Hugging Face chat format, every assistant
turn learned and nothing else, conversations cut only between exchanges (or counted and skipped), the
same from JSONL and parquet; a real run on conversations built from the shared eval questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmstack.adapt.chat_data import chat_conversations, fit, messages_of, read_rows
from lmstack.data.tokenizer import train_bpe
from lmstack.tasks.chat_template import add_chat_tokens, render

from .helpers import SHARED_DATA


@pytest.fixture(scope="module")
def tok():
    return add_chat_tokens(train_bpe(["What is the capital of France? Paris. Tell me more, please."] * 50, 320))


def turns(*pairs: tuple[str, str], system: str | None = None) -> list[dict]:
    out = [{"role": "system", "content": system}] if system else []
    for user, assistant in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


def test_every_assistant_turn_is_learned_and_nothing_else(tok):
    messages = turns(("What is the capital of France?", "Paris."), ("Tell me more.", "It is big."), system="Be brief.")
    ids, mask = render(tok, messages)
    learned = tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert learned == "Paris.<|end|>It is big.<|end|>"  # both assistant turns with their end markers
    assert sum(mask) == len(tok.encode("Paris.").ids) + len(tok.encode("It is big.").ids) + 2


def test_a_long_conversation_is_cut_between_exchanges_never_inside_a_turn(tok):
    long = turns(("What is the capital of France?", "Paris."), ("Tell me more, please.", "Paris " * 40))
    width = len(render(tok, long[:2])[0]) + 5  # room for the first exchange only
    fitted, outcome = fit(tok, long, width, None)
    assert fitted == long[:2] and outcome == "truncated"
    assert fit(tok, long, 10_000, None) == (long, "kept")
    assert fit(tok, long, 10_000, 1) == (long[:2], "truncated")  # stage.max_turns=1
    assert fit(tok, long, 5, None) == (None, "too_long")  # not even the first answer fits: skipped
    assert fit(tok, [{"role": "user", "content": "hi"}], 100, None) == (None, "no_assistant")
    trailing = [*long[:2], {"role": "user", "content": "And?"}]
    assert fit(tok, trailing, 10_000, None) == (long[:2], "truncated")  # a last user turn teaches nothing


def test_jsonl_and_parquet_give_the_same_conversations_and_bad_rows_are_named(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"c{i}", "messages": turns((f"Question {i}?", f"Answer {i}."))} for i in range(40)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    a = chat_conversations(str(tmp_path / "chat.jsonl"), tok, 200, 0.25)
    b = chat_conversations(str(tmp_path / "chat.parquet"), tok, 200, 0.25)
    assert a == b and len(a[0]) + len(a[1]) == 40 and a[1] and a[2] == {"kept": 40}
    assert read_rows(str(tmp_path / "chat.parquet")) == rows
    with pytest.raises(ValueError, match="row 3: message 1 needs a role in"):
        messages_of({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}, "row 3")
    with pytest.raises(ValueError, match="row 2: needs a non-empty `messages` list"):
        messages_of({"text": "no messages"}, "row 2")
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl line 2: not JSON"):
        read_rows(str(tmp_path / "bad.jsonl"))


@pytest.mark.slow
def test_sft_on_a_chat_file_built_from_real_questions(small_cfg, small_ckpt, tmp_path):
    """Conversations of two real sciq questions each, answered right by the assistant, from the shared
    eval set: the run trains on every assistant turn, counts what it cut, and scores held-out last turns."""
    from lmstack.eval.multiple_choice import load_requests
    from lmstack.run import run

    qs = load_requests(SHARED_DATA / "evals" / "sciq")[:240]
    ask = lambda q: q.context.split("Question:")[-1].replace("Answer:", "").strip()  # noqa: E731
    rows = [
        {
            "id": f"sciq-{a.doc_id}",
            "messages": turns((ask(a), a.choices[a.gold].strip()), (ask(b), b.choices[b.gold].strip())),
        }
        for a, b in zip(qs[::2], qs[1::2])
    ]
    rows.append({"id": "too-long", "messages": turns(("Say it all.", "word " * 400))})
    rows.append({"id": "no-answer", "messages": [{"role": "user", "content": "Hello?"}]})
    data = tmp_path / "sciq_chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = small_cfg(
        "stage=sft",
        f"init_from={small_ckpt}",
        f"stage.data={data}",
        "stage.epochs=2",
        "data.seq_len=256",
        "data.batch_size=8",
        "train.val_every_steps=4",
    )
    cfg.run_dir = str(tmp_path / "sft")
    result = run(cfg)
    recipe = json.loads((tmp_path / "sft" / "recipe.json").read_text())["sft"]
    rows_seen = recipe["rows"]
    assert rows_seen == {"kept": 120, "no_assistant": 1, "too_long": 1}
    assert recipe["train_examples"] + recipe["held_out"] == 120 and recipe["held_out"] > 0
    assert result["steps"] > 2 and 0.0 <= recipe["exact_match"] <= 1.0
    from .test_stability import scalars

    val = scalars(Path(cfg.run_dir))["val/loss"]
    assert len(val) >= 2 and val[-1] < val[0]  # the held-out conversations' answers got likelier


def test_preference_rows_in_both_formats_share_their_prompt(tmp_path):
    from lmstack.adapt.chat_data import preference_example, preference_examples

    prompt = [*turns(("What is the capital of France?", "Paris.")), {"role": "user", "content": "And Italy?"}]
    ultra = {"prompt": "And Italy?", "chosen": [*prompt, {"role": "assistant", "content": "Rome."}]}
    ultra["rejected"] = [*prompt, {"role": "assistant", "content": "Paris."}]
    ex = preference_example(ultra, "row 1")
    assert ex.prompt == prompt and ex.answer == "Rome." and ex.meta == {"rejected": "Paris."}  # multi-turn prompt
    flat = preference_example({"prompt": "And Italy?", "chosen": "Rome.", "rejected": "Paris."}, "row 2")
    assert flat.prompt == [{"role": "user", "content": "And Italy?"}] and flat.meta["rejected"] == "Paris."
    bad = {**ultra, "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(ValueError, match="row 3: chosen and rejected must share the prompt"):
        preference_example(bad, "row 3")
    with pytest.raises(ValueError, match="row 4: needs `chosen` and `rejected` message lists"):
        preference_example({"prompt": "x", "chosen": "y"}, "row 4")
    rows = [{"id": i, "prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": "No."} for i in range(50)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, test = preference_examples(str(tmp_path / "prefs.jsonl"), 0.2)
    assert len(train) + len(test) == 50 and test and {e.answer for e in train}.isdisjoint({e.answer for e in test})


@pytest.mark.slow
def test_dpo_on_a_preference_file_built_from_real_questions(small_cfg, small_ckpt, tmp_path):
    """UltraFeedback-style rows from the shared arc_easy questions: the right answer chosen, a wrong choice
    rejected; DPO trains on them and scores held-out preference accuracy on rows it never saw."""
    from lmstack.eval.multiple_choice import load_requests
    from lmstack.run import run

    qs = load_requests(SHARED_DATA / "evals" / "arc_easy")[:120]
    ask = lambda q: q.context.split("Question:")[-1].replace("Answer:", "").strip()  # noqa: E731
    rows = []
    for q in qs:
        wrong = next(i for i in range(len(q.choices)) if i != q.gold)
        prompt = [{"role": "user", "content": ask(q)}]
        rows.append(
            {
                "id": f"arc-{q.doc_id}",
                "chosen": [*prompt, {"role": "assistant", "content": q.choices[q.gold].strip()}],
                "rejected": [*prompt, {"role": "assistant", "content": q.choices[wrong].strip()}],
            }
        )
    data = tmp_path / "arc_prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = small_cfg(
        "stage=dpo",
        f"init_from={small_ckpt}",
        f"stage.data={data}",
        "stage.epochs=1",
        "data.batch_size=8",
        "optimizer.lr=5e-4",
    )
    cfg.run_dir = str(tmp_path / "dpo")
    run(cfg)
    recipe = json.loads((tmp_path / "dpo" / "recipe.json").read_text())["dpo"]
    assert recipe["train_examples"] + recipe["held_out"] == 120 and recipe["held_out"] > 10
    assert recipe["steps"] == -(-recipe["train_examples"] // 8)
    assert recipe["rejected_from_model"] == 0  # every rejected answer came from the file
    assert 0.0 <= recipe["preference_accuracy"] <= 1.0


def test_rows_already_split_by_the_same_hash_still_leave_a_held_out_share(tok, tmp_path):
    """A file of training rows chosen by is_validation(id) == False (as scripts/mc_chat_data.py does) still
    gets held-out rows: the stage's split is salted (unsalted, every row of such a file fell in train)."""
    from lmstack.data.sources import is_validation

    ids = [f"q-{i}" for i in range(400) if not is_validation(f"q-{i}", 0.3)]
    rows = [{"id": i, "messages": turns((f"Question {i}?", "Yes."))} for i in ids]
    (tmp_path / "train_only.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, test, _ = chat_conversations(str(tmp_path / "train_only.jsonl"), tok, 200, 0.2)
    assert 0.1 * len(rows) < len(test) < 0.3 * len(rows) and len(train) + len(test) == len(rows)
