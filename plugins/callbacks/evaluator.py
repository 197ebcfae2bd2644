"""In-loop evaluation: the configured eval sets and tasks every N optimizer steps and at the end of training.

Logs `eval/<set>/bpb`, `eval/<task>/acc` and `eval/<task>/len_norm` to the loggers and appends each round to
`<run_dir>/evals.jsonl` (rank 0). Every rank scores its share of each set and task and the sums are reduced,
so the numbers do not depend on the number of processes. The suite is read and tokenized once, with the
model's own tokenizer, when training starts.
"""

from __future__ import annotations

import json
import os

import lightning as L
from lmstack.plugins.callbacks import log_metrics

from lmstack.eval.suite import EvalSuite, check_specs, evaluate, flat_metrics, load_suite


class Evaluator(L.Callback):
    def __init__(
        self,
        sets: dict | None = None,
        tasks: dict | None = None,
        every_steps: int = 0,
        batch_size: int = 16,
        seq_len: int = 256,
        out_file: str | None = None,
    ):
        if every_steps < 0:
            raise ValueError(f"evals every_steps={every_steps} must be >= 0 (0: only at the end)")
        check_specs(sets or {}, tasks or {})
        self.sets, self.tasks = dict(sets or {}), dict(tasks or {})
        self.every_steps, self.batch_size, self.seq_len = every_steps, batch_size, seq_len
        self.out_file = out_file
        self.suite: EvalSuite | None = None
        self.done_step: int | None = None
        self.history: list[dict] = []  # {"step": ..., name: {metric: value}} per round

    def on_train_start(self, trainer, module):
        if self.suite is None:
            from tokenizers import Tokenizer

            if module.tokenizer_json is None:
                raise ValueError("in-loop evals need the model's tokenizer (module.tokenizer_json is unset)")
            tok = Tokenizer.from_str(module.tokenizer_json)
            self.suite = load_suite(self.sets, self.tasks, tok, module.tokenizer_json, self.seq_len)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_steps and step and step % self.every_steps == 0 and step != self.done_step:
            self.run(trainer, module)

    def on_train_end(self, trainer, module):
        if trainer.global_step != self.done_step:
            self.run(trainer, module)

    def run(self, trainer, module) -> dict:
        reduce = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None
        results = evaluate(
            module.model,
            self.suite,
            module.token_bytes,
            self.batch_size,
            trainer.global_rank,
            trainer.world_size,
            reduce,
        )
        self.done_step = trainer.global_step
        self.history.append({"step": trainer.global_step, **results})
        log_metrics(trainer, flat_metrics(results))
        if trainer.is_global_zero and self.out_file:
            os.makedirs(os.path.dirname(os.path.abspath(self.out_file)), exist_ok=True)
            with open(self.out_file, "a") as f:
                f.write(json.dumps(self.history[-1]) + "\n")
        return results
