"""In-loop evaluation: the configured eval sets and tasks every N optimizer steps and at the end of training.

Logs `eval/<set>/bpb`, `eval/<task>/acc` and `eval/<task>/len_norm` (and `eval/<task>/exact_match` of
generative tasks) to the loggers and appends each round to `<run_dir>/evals.jsonl` (rank 0). Every rank
scores its share of each set and task and the sums are reduced, so the numbers do not depend on the number
of processes. The suite is read and tokenized once, with the model's own tokenizer, when training starts.

`harness: {tasks: [...], include_path: [...], limit: N, num_fewshot: K}` runs lm-evaluation-harness tasks
too (`lmstack.eval.harness`), logged as `eval/<task>/<metric>`: lm-eval shares the documents out over the
ranks; its random seeding is turned off, so evaluating does not change the training run's random state.
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
        generative: dict | None = None,
        harness: dict | None = None,
        every_steps: int = 0,
        batch_size: int = 16,
        seq_len: int = 256,
        out_file: str | None = None,
    ):
        if every_steps < 0:
            raise ValueError(f"evals every_steps={every_steps} must be >= 0 (0: only at the end)")
        check_specs(sets or {}, tasks or {}, generative=generative or {}, harness=harness)
        self.sets, self.tasks, self.generative = dict(sets or {}), dict(tasks or {}), dict(generative or {})
        self.harness, self.harness_manager = (dict(harness) if harness else None), None
        self.every_steps, self.batch_size, self.seq_len = every_steps, batch_size, seq_len
        self.out_file = out_file
        self.suite: EvalSuite | None = None
        self.done_step: int | None = None
        self.history: list[dict] = []  # {"step": ..., name: {metric: value}} per round

    def on_train_start(self, trainer, module):
        if self.suite is None:
            from tokenizers import Tokenizer

            text = module.context.tokenizer_json
            if text is None:
                raise ValueError("in-loop evals need the model's tokenizer (the run's context has none)")
            tok = Tokenizer.from_str(text)
            self.suite = load_suite(self.sets, self.tasks, tok, text, self.seq_len, self.generative)
            if self.harness:
                from lmstack.eval.harness_tasks import task_manager

                self.harness_manager = task_manager(list(self.harness["tasks"]), self.harness.get("include_path"))[1]

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
        if self.harness:
            results["harness"] = self._harness(trainer, module, reduce)
        self.done_step = trainer.global_step
        self.history.append({"step": trainer.global_step, **results})
        log_metrics(trainer, flat_metrics(results))
        if trainer.is_global_zero and self.out_file:
            os.makedirs(os.path.dirname(os.path.abspath(self.out_file)), exist_ok=True)
            with open(self.out_file, "a") as f:
                f.write(json.dumps(self.history[-1]) + "\n")
        return results

    def _harness(self, trainer, module, reduce) -> dict:
        """lm-eval's results on rank 0, given to every rank."""
        from lmstack.eval.harness import LmstackLM
        from lmstack.eval.harness_tasks import run_harness

        lm = LmstackLM(
            model=module.model,
            tok=self.suite.tok,
            batch_size=self.batch_size,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            reduce=reduce,
        )
        h = self.harness
        results = run_harness(
            lm,
            list(h["tasks"]),
            h.get("include_path"),
            h.get("limit"),
            h.get("num_fewshot"),
            True,
            self.harness_manager,
        )
        return trainer.strategy.broadcast(results, src=0) if trainer.world_size > 1 else results
