"""lm-evaluation-harness tasks: finding them, running them, and writing OLMES request folders as lm-eval tasks.

A harness task is named as lm-eval names it (a task or group of its registry, or of an `include_path`
folder of YAML files), or given as a path: a YAML file (its `task:`, its folder included) or a folder of
YAML files (included). lm-eval is imported only when a harness task is run.

`write_olmes_task` turns an OLMES task folder into an lm-eval task over a local JSON-lines file, questions
as lmstack's scorer reads them (`lmstack.eval.multiple_choice.load_requests`), so the two can be compared
question for question (`python -m lmstack.eval.harness_tasks DIR... --out DIR`; a task is named
`olmes_<folder>`, so it does not shadow lm-eval's own task of that name): a shared context scores each
choice as its continuation; partial scoring (a context per choice, one continuation) is lm-eval's
"multiple inputs" form (`doc_to_text` the gold index).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import torch
import yaml

from .multiple_choice import load_requests

HARNESS_KEYS = {"tasks", "include_path", "limit", "num_fewshot"}


def check_harness(spec, where: str = "evals") -> None:
    """`evals.harness`: {tasks: [NAME_OR_YAML, ...], include_path: [DIR, ...], limit: N, num_fewshot: K}."""
    if not isinstance(spec, dict) or not spec.get("tasks") or isinstance(spec["tasks"], str):
        raise ValueError(f"{where}.harness needs `tasks`: a list of lm-eval task names, YAML files or folders")
    extra = set(spec) - HARNESS_KEYS
    if extra:
        raise ValueError(
            f"{where}.harness: unknown key {sorted(extra)[0]!r}; allowed: {', '.join(sorted(HARNESS_KEYS))}"
        )


def resolve_tasks(entries: list[str], include_path: Optional[list[str]] = None) -> tuple[list[str], list[str]]:
    """(task names, folders to include) for names, YAML files and folders of YAML files."""
    names, include = [], [os.path.expanduser(p) for p in include_path or []]
    for entry in entries:
        path = os.path.expanduser(entry)
        if entry.endswith((".yaml", ".yml")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"harness task file {entry} does not exist")
            with open(path) as f:
                task = (yaml.safe_load(f) or {}).get("task")
            if not isinstance(task, str):
                raise ValueError(f"{entry}: an lm-eval task file needs a `task:` name")
            names.append(task)
            include.append(os.path.dirname(os.path.abspath(path)))
        elif os.path.isdir(path):
            found = sorted(Path(path).glob("*.yaml"))
            if not found:
                raise FileNotFoundError(f"harness task folder {entry} holds no .yaml files")
            include.append(path)
            names += [t for t in (yaml.safe_load(p.read_text()).get("task") for p in found) if isinstance(t, str)]
        else:
            names.append(entry)
    return names, list(dict.fromkeys(include))


def task_manager(tasks: list[str], include_path: Optional[list[str]] = None):
    """(task names, an lm-eval TaskManager that knows them): lm-eval's own 14,000-odd task files are indexed
    (about 5 s) only when a name is not in the included folders."""
    from lm_eval.tasks import TaskManager

    names, include = resolve_tasks(tasks, include_path)
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or any(n not in manager.all_tasks for n in names):
        manager = TaskManager(include_path=include or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval knows no task {unknown[0]!r} (include_path: {include or 'none'})")
    return names, manager


def run_harness(
    lm,
    tasks: list[str],
    include_path: Optional[list[str]] = None,
    limit: Optional[int] = None,
    num_fewshot: Optional[int] = None,
    keep_rng: bool = False,
    manager=None,
) -> dict[str, dict[str, float]]:
    """{task: {metric: value, "samples": documents scored}} from lm-eval's `simple_evaluate` (stderr left
    out); rank 0's, {} on the others. lm-eval seeds Python's, numpy's and torch's generators (so its runs
    repeat); `keep_rng` gives them back their state after (in the training loop). `manager`: a
    `task_manager` made before (it is reused)."""
    from lm_eval import simple_evaluate

    names, manager = (resolve_tasks(tasks, include_path)[0], manager) if manager else task_manager(tasks, include_path)
    saved = _random_state() if keep_rng else None
    try:
        out = simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=limit or None,
            num_fewshot=num_fewshot,
            log_samples=True,  # each choice's log-likelihood: the continuous metrics below
            bootstrap_iters=0,
        )
    finally:
        if saved is not None:
            _set_random_state(saved)
    if out is None:  # ranks other than 0
        return {}
    results = {}
    for task, metrics in out["results"].items():
        results[task] = {  # lm-eval's "metric,filter": the metric's name, with its filter unless "none"
            k.replace(",none", "").replace(",", "/"): float(v)
            for k, v in metrics.items()
            if "," in k and "_stderr" not in k and isinstance(v, (int, float))
        }
        results[task].update(continuous_metrics((out.get("samples") or {}).get(task) or []))
        samples = (out.get("n-samples") or {}).get(task)
        if samples:
            results[task]["samples"] = samples["effective"]
    return results


def continuous_metrics(samples: list[dict]) -> dict[str, float]:
    """`bpb` and `correct_prob` of a multiple-choice task, as lmstack's own scoring computes them
    (`lmstack.eval.multiple_choice`), from the log-likelihoods lm-eval already computed for its samples: the
    correct continuation's bits per byte and its softmax over the choices. {} for a task whose samples are not
    ranked choices or whose gold choice cannot be told from its target (an index, or the one continuation
    that equals it)."""
    bpb = prob = 0.0
    for sample in samples:
        pairs, resps = sample.get("arguments") or [], sample.get("filtered_resps") or []
        if len(pairs) < 2 or len(resps) != len(pairs) or not all(isinstance(r, (list, tuple)) for r in resps):
            return {}
        target = sample.get("target")
        if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(pairs):
            gold = target
        else:
            matches = [i for i, p in enumerate(pairs) if isinstance(target, str) and p[1].strip() == target.strip()]
            if len(matches) != 1:
                return {}
            gold = matches[0]
        lls = torch.tensor([float(r[0]) for r in resps], dtype=torch.float64)
        bpb += -float(lls[gold]) / math.log(2) / max(len(str(pairs[gold][1]).encode("utf-8")), 1)
        prob += float(torch.softmax(lls, 0)[gold])
    n = len(samples)
    return {"bpb": bpb / n, "correct_prob": prob / n} if n else {}


def _random_state() -> tuple:
    import random

    import numpy as np
    import torch

    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_random_state(state: tuple) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def write_olmes_task(task_dir: str | Path, out_dir: str | Path, name: Optional[str] = None) -> Path:
    """Write `<out_dir>/<name>.jsonl` (one question a line) and `<out_dir>/<name>.yaml`; return the YAML's path.
    Refuses to overwrite either file."""
    task_dir, out_dir = Path(task_dir), Path(out_dir)
    name = name or f"olmes_{task_dir.name}"
    questions = load_requests(task_dir)
    partial = {q.contexts is not None for q in questions}
    if len(partial) > 1:
        raise ValueError(f"{task_dir}: some questions share one context and some have one per choice")
    data, spec = out_dir / f"{name}.jsonl", out_dir / f"{name}.yaml"
    for p in (data, spec):
        if p.exists():
            raise FileExistsError(f"{p} exists; lmstack does not overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    multiple_inputs = partial == {True}
    if multiple_inputs and any(len(set(q.choices)) > 1 for q in questions):
        raise ValueError(f"{task_dir}: a context per choice and a continuation per choice: lm-eval has no such form")
    with open(data, "x") as f:
        for q in questions:
            row = {"doc_id": q.doc_id, "gold": q.gold, "context": q.context, "choices": q.choices}
            if multiple_inputs:  # the contexts are the choices; every one continues with the same text
                row = {"doc_id": q.doc_id, "gold": q.gold, "contexts": q.contexts, "continuation": q.choices[0]}
            f.write(json.dumps(row) + "\n")
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "gold" if multiple_inputs else "context",
        "doc_to_choice": "contexts" if multiple_inputs else "choices",
        "doc_to_target": "continuation" if multiple_inputs else "gold",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    with open(spec, "x") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return spec


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m lmstack.eval.harness_tasks OLMES_DIR ... --out DIR`: lm-eval tasks of OLMES task folders."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("task_dirs", nargs="+", help="OLMES task folders (holding requests.jsonl.gz)")
    p.add_argument("--out", required=True, help="the folder that gets <name>.yaml and <name>.jsonl per task")
    args = p.parse_args(argv)
    for task_dir in args.task_dirs:
        try:
            print(write_olmes_task(task_dir, args.out))
        except (FileNotFoundError, FileExistsError, ValueError) as e:
            raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
