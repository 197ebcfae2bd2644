"""lm-evaluation-harness over an lmstack model: `lm_eval.api.model.LM` as the `lmstack` model.

Importing this module registers the name, so `lm_eval.simple_evaluate(model="lmstack",
model_args="ckpt=PATH")` runs any lm-eval task on a checkpoint, and `lmstack lm_eval` is lm-eval's own
command line with the name known (lm-eval 0.4 finds models only in its own list or in a `register_model`
call made in the process, so the bare `lm_eval` command cannot see it):

    lmstack lm_eval --model lmstack --model_args ckpt=PATH --tasks arc_easy --include_path DIR

The three request types are scored with lmstack's own code, so lm-eval and `lmstack eval` agree exactly:
`loglikelihood` with the multiple-choice scorer (an empty context is the end-of-text token, as lm-eval's
Hugging Face model does with its prefix token), `loglikelihood_rolling` over lm-eval's disjoint windows of
the model's context, and `generate_until` through the KV cache, prompts batched and padded on the left,
each row stopped at the end-of-text token or its first `until` string.

Several ranks (the in-loop evaluator under DDP or FSDP): lm-eval gives each rank its share of the documents,
pads the request lists to equal length, and every call here runs the same number of forward passes on
every rank (the model's collectives line up): the most pairs, windows or decoding batches any rank holds.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import lm_eval.models  # noqa: F401  lm-eval's own models, first: it lists them only into an empty registry
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lmstack.data.tokenizer import eos_id
from lmstack.generate import generate_batch, ranks_done
from lmstack.tasks.chat_template import END, JINJA_TEMPLATE, has_chat_tokens, render_text

from .multiple_choice import continuation_scores, encode_pair


@register_model("lmstack")
class LmstackLM(LM):
    """An lmstack model for lm-eval: `ckpt=PATH` (lm_eval's --model_args), or `model=` and `tok=` (in-process)."""

    def __init__(
        self,
        ckpt: Optional[str] = None,
        model=None,
        tok=None,
        device: str = "cpu",
        batch_size: int | str = 16,
        max_gen_toks: int = 256,
        rank: int = 0,
        world_size: int = 1,
        reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        **unused,
    ):
        super().__init__()
        if (ckpt is None) == (model is None):
            raise ValueError("the lmstack model takes either ckpt=PATH or model= and tok=")
        if ckpt is not None:
            from lmstack.checkpoint import load_checkpoint

            if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
                device = "cpu"  # lm_eval's command line asks for cuda unless told; its hf model falls back too
            model, tok, _ = load_checkpoint(ckpt, device)
            if tok is None:
                raise ValueError(f"{ckpt} carries no tokenizer")
        self.model, self.tok = model, tok
        self.batch_size = 16 if batch_size in (None, "auto") else int(str(batch_size).split(":")[0])
        self.max_gen_toks = int(max_gen_toks)
        self.eot = eos_id(tok)
        self.end = tok.token_to_id(END) if has_chat_tokens(tok) else None  # a chat model's turn ends here
        self._rank, self._world_size, self._reduce = rank, world_size, reduce
        self._device = next(model.parameters()).device

    # -- loglikelihood -----------------------------------------------------------------------------------
    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context:
            return encode_pair(self.tok, context, continuation)
        return [self.eot], self.tok.encode(continuation).ids

    @torch.no_grad()
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._pair(*r.args) for r in requests]
        return self._scores(pairs, self._most(len(pairs)))

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, r in enumerate(requests):
            ids = self.tok.encode(r.args[0]).ids
            for w in get_rolling_token_windows(ids, self.eot, self.model.cfg.max_seq_len, 1):
                windows.append(make_disjoint_window(w))
                owner.append(i)
        # every rank holds as many strings as the others, not as many windows: agree on the passes
        scores = self._scores(windows, self._most(len(windows)))
        out = [0.0] * len(requests)
        for i, (s, _) in zip(owner, scores):
            out[i] += s
        return out

    def _scores(self, pairs, min_items: int = 0) -> list[tuple[float, bool]]:
        was = self.model.training
        self.model.eval()
        try:
            return continuation_scores(self.model, pairs, self.batch_size, math.ceil(min_items / self.batch_size))
        finally:
            self.model.train(was)

    def _most(self, n: int) -> int:
        """The largest `n` over ranks (one all-reduce; `n` itself on one process)."""
        if self._world_size == 1 or self._reduce is None:
            return n
        counts = torch.zeros(self._world_size, device=self._device)
        counts[self._rank] = n
        return int(self._reduce(counts).max())

    # -- generation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[Optional[str]] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        mine = {
            k: (dict(requests[rows[0]].args[1]), math.ceil(len(rows) / self.batch_size)) for k, rows in groups.items()
        }
        was = self.model.training
        self.model.eval()
        try:
            for key, kwargs, n_batches in decoding_plan(self._all_gather_object(mine)):
                rows = groups.get(key, [])
                for b in range(n_batches):
                    batch = rows[b * self.batch_size : (b + 1) * self.batch_size]
                    # a rank with fewer (or none) of this group's requests decodes a stand-in, in step
                    texts = self._generate([requests[i].args[0] for i in batch] or [""], kwargs)
                    for i, t in zip(batch, texts):
                        out[i] = t
        finally:
            self.model.train(was)
        return out

    def _generate(self, contexts: list[str], kwargs: dict) -> list[str]:
        kwargs = dict(kwargs)  # every batch of the group reads the same settings
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0  # greedy
        keep = max(self.model.cfg.max_seq_len - max_new, 1)  # lm-eval's left truncation of the context
        prompts = [(self.tok.encode(c).ids or [self.eot])[-keep:] for c in contexts]

        def stopped(row: int, ids: list[int]) -> bool:
            return (self.end is not None and ids[-1] == self.end) or any(u in self.tok.decode(ids) for u in until)

        rows = generate_batch(
            self.model,
            prompts,
            1,
            max_new,
            temperature=temperature,
            top_k=kwargs.get("top_k"),
            top_p=kwargs.get("top_p"),
            eos_id=self.eot,
            stop=stopped if until or self.end is not None else None,
            sync=ranks_done(self._reduce, self._device) if self._world_size > 1 and self._reduce else None,
        )
        texts = []
        for ids in rows:
            text = self.tok.decode([t for t in ids if t not in (self.eot, self.end)])
            for u in until:
                text = text.split(u)[0]
            texts.append(text)
        return texts

    # -- ranks -------------------------------------------------------------------------------------------
    def all_gather(self, tensor):
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)  # as accelerate's gather

    def gather_object(self, obj, dst=0):
        parts = self._all_gather_object(obj)
        return parts if self._rank == dst else None

    def _all_gather_object(self, obj) -> list:
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist

        parts = [None] * self._world_size
        dist.all_gather_object(parts, obj)
        return parts

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # -- chat (lm_eval --apply_chat_template) ----------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return "lmstack"

    def chat_template(self, chat_template: bool | str = False) -> str:
        return JINJA_TEMPLATE if self.end is not None else ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as lmstack's chat template writes it; encoded, it is the ids SFT trained on."""
        if self.end is None:
            raise ValueError("this checkpoint's tokenizer has no chat tokens: it was not adapted with a chat stage")
        return render_text(chat_history, add_generation_prompt)


def decoding_plan(per_rank: list[dict[str, tuple[dict, int]]]) -> list[tuple[str, dict, int]]:
    """What every rank decodes, in one order: each generation-settings group any rank holds (key ->
    (settings, batches)), with the most batches any rank needs for it. Ranks whose shares differ in size,
    or lack a group, still make the same number of model calls (FSDP's collectives would hang otherwise)."""
    plan: dict[str, tuple[dict, int]] = {}
    for groups in per_rank:
        for key, (kwargs, n) in groups.items():
            plan[key] = (kwargs, max(n, plan.get(key, (kwargs, 0))[1]))
    return [(key, kwargs, n) for key, (kwargs, n) in sorted(plan.items())]


def cli(argv: list[str]) -> None:
    """lm-eval's own command line with the lmstack model registered: `lmstack lm_eval --model lmstack ...`."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
