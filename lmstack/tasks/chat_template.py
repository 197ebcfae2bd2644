"""The chat template: role markers and an end marker as special tokens, rendered the same way for training
(ids and a mask of the tokens the model learns: the assistant's words and its end marker) and for
generation (the conversation so far, then the assistant marker; generation stops at the end marker).

    <|system|>You are terse.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|>

Each message's content is tokenized on its own and joined with the markers' ids, so the mask lines up with
the tokens exactly. `add_chat_tokens` adds the markers to a tokenizer; `resize_vocab` grows a model's
embedding and head to match, new rows set to the mean of the old ones (so new tokens start unremarkable).
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken, Tokenizer

ROLES = ("system", "user", "assistant")
MARKERS = {r: f"<|{r}|>" for r in ROLES}
END = "<|end|>"
CHAT_TOKENS = [*MARKERS.values(), END]


# `render` as a Jinja chat template (Hugging Face's `apply_chat_template` gives the same ids; written on export)
JINJA_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + END + "{% endfor %}"
    "{% if add_generation_prompt %}" + MARKERS["assistant"] + "{% endif %}"
)


def add_chat_tokens(tok: Tokenizer) -> Tokenizer:
    """The tokenizer with the chat markers as special tokens (a no-op when they are there already)."""
    missing = [t for t in CHAT_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return tok


def has_chat_tokens(tok: Tokenizer) -> bool:
    return all(tok.token_to_id(t) is not None for t in CHAT_TOKENS)


def render(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(token ids, mask): mask is 1 on the assistant's content and its end marker, 0 elsewhere."""
    if not has_chat_tokens(tok):
        raise ValueError(
            "the tokenizer has no chat tokens; add them with add_chat_tokens (init_from a base "
            "model does this for adaptation stages)"
        )
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(messages):
        piece = _message_ids(tok, m, i)
        ids += piece
        mask += [0] + [int(m["role"] == "assistant")] * (len(piece) - 1)
    if add_generation_prompt:
        ids.append(tok.token_to_id(MARKERS["assistant"]))
        mask.append(0)
    return ids, mask


def render_text(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text (what JINJA_TEMPLATE writes): encoded, it gives `render`'s ids, since the
    markers are special tokens and split the text at the same places."""
    text = ""
    for i, m in enumerate(messages):
        _check(m, i)
        text += MARKERS[m["role"]] + m["content"] + END
    return text + (MARKERS["assistant"] if add_generation_prompt else "")


def _check(m: dict, i: int) -> None:
    role, content = m.get("role"), m.get("content")
    if role not in MARKERS or not isinstance(content, str):
        raise ValueError(f"message {i}: needs role in {ROLES} and string content, got {m!r}")


def _message_ids(tok: Tokenizer, m: dict, i: int) -> list[int]:
    """One message as the template renders it: its role marker, its content, the end marker."""
    _check(m, i)
    return [tok.token_to_id(MARKERS[m["role"]])] + tok.encode(m["content"]).ids + [tok.token_to_id(END)]


def message_lengths(tok: Tokenizer, messages: list[dict]) -> list[int]:
    """Each message's token count as `render` lays it out (a prefix's length is the sum of its messages')."""
    return [len(_message_ids(tok, m, i)) for i, m in enumerate(messages)]


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """The conversation with `system` as its first message, unless it has a system message already."""
    if not system or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def prompt_ids(tok: Tokenizer, prompt: str | list[dict], system: str | None = None) -> list[int]:
    """A conversation up to where the assistant starts: one user turn, or the messages so far."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return render(tok, with_system(messages, system), add_generation_prompt=True)[0]


def resize_vocab(model, vocab_size: int) -> None:
    """Grow the model's embedding and LM head to vocab_size rows (rounded up to a multiple of 64); new rows
    are the mean of the existing ones. No-op when the model is large enough already."""
    old = model.cfg.vocab_size
    new = -(-vocab_size // 64) * 64
    if vocab_size <= old:
        return
    with torch.no_grad():
        emb = model.embed.weight
        grown = torch.cat([emb, emb.mean(0, keepdim=True).expand(new - old, -1)])
        model.embed.weight = torch.nn.Parameter(grown.clone())
        model.embed.num_embeddings = new
        if model.cfg.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        else:
            head = model.lm_head.weight
            model.lm_head.weight = torch.nn.Parameter(
                torch.cat([head, head.mean(0, keepdim=True).expand(new - old, -1)])
            )
        model.lm_head.out_features = new
    model.cfg.vocab_size = new
