"""The `lmstack` command: train, prepare, eval, generate, export and import (see USAGE)."""

from __future__ import annotations

import sys

from .cli_args import USAGE, command_args, eval_sets, eval_task_paths, load_model, owned_output
from .config.commands import (
    ChatArgs,
    EvalArgs,
    ExportArgs,
    GenerateArgs,
    ImportHFArgs,
    OverlapArgs,
    PlanArgs,
    PrepareArgs,
    QualityTrainArgs,
    ReportArgs,
    SoupArgs,
)


def generate_cmd(a: GenerateArgs) -> None:
    import torch

    from lmstack.generate import generate

    model, tok, _ = load_model(a.ckpt, a.device)
    g = torch.Generator(device=a.device).manual_seed(a.seed)
    ids = generate(
        model, tok.encode(a.prompt).ids, a.max_new_tokens, a.temperature, a.top_k or None, a.top_p, generator=g
    )
    print(a.prompt + tok.decode(ids))


def _resolve_evals(names: list[str], configured: dict, limit) -> tuple[dict, dict, dict]:
    """(sets, tasks, generative tasks) for names of conf/evals entries or paths: a folder holding
    requests.jsonl.gz is a task, a folder `lmstack prepare` wrote or a JSONL file is a bits-per-byte set."""
    import os

    sets, tasks, generative = {}, {}, {}
    known_sets, known_tasks = configured.get("sets") or {}, configured.get("tasks") or {}
    known_generative = configured.get("generative") or {}
    for name in names:
        base = os.path.basename(os.path.normpath(name))
        if name in known_sets:
            sets[name] = known_sets[name]
        elif name in known_tasks:
            tasks[name] = dict(known_tasks[name])
        elif name in known_generative:
            generative[name] = dict(known_generative[name])
        elif os.path.isfile(os.path.join(name, "requests.jsonl.gz")):
            tasks[base] = {"path": name}
        elif os.path.isfile(os.path.join(name, "meta.json")):
            sets[base] = {"prepared": name}
        elif os.path.isfile(name):
            sets[base.split(".")[0]] = {"jsonl": name}
        else:
            raise SystemExit(
                f"eval {name!r} is neither a configured set or task "
                f"({', '.join([*known_sets, *known_tasks, *known_generative])})"
                " nor a task folder, prepared folder or JSONL file"
            )
    if limit >= 0:  # -1: as configured
        for t in tasks.values():
            t["limit"] = limit or None  # limit=0: every question
        for g in generative.values():
            g["examples"] = limit or g.get("examples")
    return sets, tasks, generative


def eval_cmd(a: EvalArgs) -> None:
    """Configured eval sets and tasks (or paths) on a checkpoint: a table, and DIR/eval.json."""
    import json
    import time

    from lmstack.checkpoint import extras
    from lmstack.eval.suite import evaluate, load_suite

    if not a.tasks and not a.harness_tasks:
        raise SystemExit("lmstack eval: name something to evaluate: tasks='[...]' and/or harness_tasks='[...]'")
    sets, tasks, generative = _resolve_evals([t.strip() for t in a.tasks if t.strip()], eval_sets(a.suite), a.limit)
    model, tok, ckpt = load_model(a.ckpt, a.device)
    try:
        seq_len = a.seq_len or model.cfg.max_seq_len
        suite = load_suite(sets, tasks, tok, extras(ckpt)["tokenizer_json"], seq_len, generative)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    import torch

    from lmstack.data.tokenizer import token_byte_lengths

    token_bytes = torch.from_numpy(token_byte_lengths(tok))
    results = {}
    if suite:
        print("| eval | items | acc | len_norm | bpb | correct_prob | exact_match | items/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in [*suite.sets, *suite.tasks, *suite.generative]:
        t0 = time.perf_counter()
        r = evaluate(model, suite.only(name), token_bytes, a.batch_size)[name]
        items = r.get("questions", r.get("examples", len(suite.sets.get(name, ()))))
        rate = items / (time.perf_counter() - t0)
        results[name] = r
        cells = [f"{r[k]:.4f}" if k in r else "" for k in ("acc", "len_norm", "bpb", "correct_prob", "exact_match")]
        print(f"| {name} | {items} | {' | '.join(cells)} | {rate:.1f} |")
    if a.harness_tasks:
        results.update(_harness(a, model, tok))
    with owned_output(a.out, "eval", [a.ckpt]) as owned:
        with open(owned.path / "eval.json", "w") as f:
            json.dump(results, f, indent=2)
        owned.update(status="complete", files=["eval.json"])


def _harness(a: EvalArgs, model, tok) -> dict:
    """lm-evaluation-harness tasks on the loaded model: a table of their metrics; {task: {metric: value}}."""
    try:
        from lmstack.eval.harness import LmstackLM
        from lmstack.eval.harness_tasks import run_harness
    except ImportError as e:
        raise SystemExit(f"harness_tasks need lm-evaluation-harness: pip install 'lmstack[eval]' ({e})") from None
    lm = LmstackLM(model=model, tok=tok, batch_size=a.batch_size)
    try:
        results = run_harness(
            lm,
            a.harness_tasks,
            a.harness_include,
            a.limit if a.limit > 0 else None,
            a.num_fewshot if a.num_fewshot >= 0 else None,
        )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"lmstack eval: {e}") from None
    print("| harness task | metric | value |\n| --- | --- | ---: |")
    for task, metrics in results.items():
        for k, v in metrics.items():
            print(f"| {task} | {k} | {v if isinstance(v, int) else f'{v:.4f}'} |")
    return {f"harness/{task}": m for task, m in results.items()}


def chat_cmd(a: ChatArgs) -> None:
    """An interactive chat with a checkpoint through the chat template (one line per turn; empty line or
    EOF ends it)."""
    import torch

    from lmstack.generate import generate
    from lmstack.tasks.chat_template import END, has_chat_tokens, render

    model, tok, _ = load_model(a.ckpt, a.device)
    if not has_chat_tokens(tok):
        raise SystemExit(f"{a.ckpt} has no chat template tokens: chat with a checkpoint from stage=sft/dpo/rlvr")
    g = torch.Generator().manual_seed(a.seed)
    messages = [{"role": "system", "content": a.system}] if a.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids, _ = render(tok, messages, add_generation_prompt=True)
        out = generate(
            model,
            ids,
            a.max_new_tokens,
            temperature=a.temperature,
            top_k=a.top_k or None,
            eos_id=tok.token_to_id(END),
            generator=g if a.temperature > 0 else None,
        )
        reply = tok.decode(out)
        messages.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}", flush=True)


def export_cmd(a: ExportArgs) -> None:
    """A checkpoint as a Hugging Face folder (Llama or OLMo 2, by the model's norm configuration)."""
    from lmstack.interop.hf import export_hf
    from lmstack.ownership import OwnershipError

    try:
        config = export_hf(a.ckpt, a.out)
    except (FileNotFoundError, ValueError, OwnershipError) as e:
        raise SystemExit(f"cannot export {a.ckpt}: {e}") from None
    print(
        f"wrote {config['architectures'][0]} ({config['num_hidden_layers']} layers, d={config['hidden_size']}, "
        f"vocab {config['vocab_size']}) to {a.out}"
    )


def import_hf_cmd(a: ImportHFArgs) -> None:
    """A Hugging Face Llama / OLMo 2 folder as an lmstack checkpoint (for init_from= or generate/eval)."""
    import os

    from lmstack.interop.hf_import import import_hf

    try:
        r = import_hf(a.dir, a.out or os.path.join(a.dir, "lmstack.ckpt"))
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"cannot import {a.dir}: {e}") from None
    print(f"imported {r['architecture']} ({r['params'] / 1e6:.2f}M parameters) to {r['out']}")


def soup_cmd(a: SoupArgs) -> None:
    """The weighted average of checkpoints of one model, as DIR/soup.ckpt (lmstack.soup)."""
    from lmstack.soup import write_soup

    path = write_soup(a.ckpts, a.out, a.weights)
    print(f"averaged {len(a.ckpts)} checkpoints into {path}")


def report_cmd(a: ReportArgs) -> None:
    """A sweep folder's jobs ranked, with report.md, report.csv, loss_curves.png; fit=true: a scaling law;
    fit=ladder: a model ladder (ladder.json, ladder.png); decide=true: data decisions (decisions.json)."""
    from lmstack.sweep.analyses import write_decisions, write_ladder
    from lmstack.sweep.report import fit_report, write_report

    try:
        jobs, md = write_report(a.dir, a.metric)
        if a.decide:
            write_decisions(a, jobs, md)
        if a.fit == "ladder":
            write_ladder(a, jobs, md)
        print(md.read_text())
        if a.fit in (True, "compute"):
            print(fit_report(jobs, a.metric, a.predict_flops or None))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None


def plan_cmd(a: PlanArgs) -> None:
    """Chinchilla planning: solve C = 6 N D, print time and cost per device, a shape and its overrides."""
    from lmstack.plan import PlanError, hours, peak_flops, report, solve
    from lmstack.train.flops import measure_matmul_flops

    try:
        if not 0 < a.mfu <= 1:
            raise PlanError(f"mfu={a.mfu} must be in (0, 1]")
        if sum(map(bool, (a.flops, a.gpu_hours, a.usd))) > 1:
            raise PlanError("give compute once: flops=, gpu_hours= or usd=")
        gpu_hours = a.gpu_hours or (a.usd / a.usd_per_gpu_hour if a.usd else 0)
        flops = a.flops or gpu_hours * 3600 * peak_flops(a.gpu) * a.mfu
        budget = solve(flops, a.params, a.tokens, a.tokens_per_param)
        print(report(budget, a.mfu, a.usd_per_gpu_hour, a.gpus, a.seq_len, measure_matmul_flops()))
        h = hours(budget.flops, peak_flops(a.gpu), a.mfu)
        print(f"\n{a.gpu}: {h:,.0f} GPU-hours, ${h * a.usd_per_gpu_hour:,.0f}")
    except PlanError as e:
        raise SystemExit(str(e)) from None


def prepare_cmd(a: PrepareArgs) -> None:
    """The curation pipeline (conf/prepare.yaml, the `prepare` group's option) over the inputs."""
    import os
    from dataclasses import replace

    from lmstack.data.curate.pipeline import run_prepare

    section, decont = a.prepare, a.prepare.decontaminate
    if decont is not None and decont.tasks:  # names of conf/evals tasks, as paths
        section = replace(section, decontaminate=replace(decont, tasks=eval_task_paths(list(decont.tasks))))
    from lmstack.data.curate.stats import console_table

    stats = run_prepare(a.inputs, a.output_dir, section)
    print(console_table(stats))
    print(
        f"{stats['docs_in']:,} documents in, {stats['docs_out']:,} out ({stats['reduction']}x fewer), "
        f"{stats['rejected']:,} rejected; report: {os.path.join(a.output_dir, 'report.md')}"
    )


def overlap_cmd(a: OverlapArgs) -> None:
    """Documents of a corpus that share n-grams with eval sets, and the eval items found in it: the check
    of prepare.decontaminate, reporting only (the corpus is read, never changed)."""
    import json
    import os

    from lmstack.data.curate.decontaminate import EvalNgrams, overlap
    from lmstack.data.curate.inputs import expand_inputs
    from lmstack.data.curate.readers import Document, read_inputs

    if a.out and os.path.exists(a.out):
        raise SystemExit(f"out={a.out} exists; lmstack writes the report only to a new file")
    prepared = [os.path.join(c, "documents.jsonl.gz") for c in a.corpus]  # a prepare output: its documents
    paths = [d if os.path.isfile(d) else c for c, d in zip(a.corpus, prepared)]
    table = EvalNgrams(eval_task_paths(a.tasks, a.suite), a.ngram, a.min_words)
    docs = read_inputs(expand_inputs(paths), "corpus", a.text_field)  # prepare's max_doc_bytes
    report = overlap(((d.id, d.text) for d in docs if isinstance(d, Document)), table)
    print(f"{report['documents']:,} documents of {', '.join(a.corpus)}; {a.ngram}-grams (shorter items whole)")
    print("| eval set | items | too short | items found in the corpus | documents with a match |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in report["tasks"].items():
        share = r["documents"] / max(report["documents"], 1)
        found = f"{r['items_found']:,} | {r['documents']:,} ({share:.2%})"
        print(f"| {name} | {r['items']:,} | {r['too_short']:,} | {found} |")
    for name, r in report["tasks"].items():
        for e in r["examples"]:
            print(f'  {name} item {e["item"]} in document {e["document"]}: "{e["ngram"]}"')
    if a.out:
        with open(a.out, "x") as f:
            json.dump(report, f, indent=2)


def quality_train_cmd(a: QualityTrainArgs) -> None:
    """A fastText quality classifier from positive and negative documents (lmstack.data.curate.quality_train)."""
    from lmstack.data.curate.quality_train import train_quality

    m = train_quality(a)
    print(f"held out: accuracy {m['accuracy']:.3f}, ROC AUC {m['auc']:.3f} on {m['examples']['positive']:,} "
          f"positive and {m['examples']['negative']:,} negative examples; model: {a.out}/model.bin")  # fmt: skip


def train_cmd(argv: list[str]) -> None:
    from lmstack.train.__main__ import main as train_main

    sys.argv = ["lmstack-train", *argv]
    train_main()


# command -> what runs it; each takes its typed arguments (lmstack.config.commands), `train` its Hydra argv
COMMANDS = {
    "generate": generate_cmd,
    "eval": eval_cmd,
    "prepare": prepare_cmd,
    "export": export_cmd,
    "import-hf": import_hf_cmd,
    "plan": plan_cmd,
    "report": report_cmd,
    "chat": chat_cmd,
    "soup": soup_cmd,
    "overlap": overlap_cmd,
    "quality-train": quality_train_cmd,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        return train_cmd(argv[1:])
    if argv and argv[0] == "lm_eval":  # lm-eval's own arguments, not Hydra overrides
        from lmstack.eval.harness import cli

        return cli(argv[1:])
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(USAGE)
    from lmstack.console import quiet_dependencies
    from lmstack.failures import one_line

    quiet_dependencies()
    args = command_args(argv[0], argv[1:])
    where = next((getattr(args, k) for k in ("out", "output_dir", "dir") if getattr(args, k, None)), None)
    with one_line(argv[0], where):
        COMMANDS[argv[0]](args)


if __name__ == "__main__":
    main()
