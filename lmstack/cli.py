"""The `lmstack` command: train, prepare, eval, generate, export and import (see USAGE)."""

from __future__ import annotations

import sys

from .cli_args import USAGE, compose, load_model, owned_output, parse_args, refusals


def generate_cmd(argv: list[str]) -> None:
    import torch

    from lmstack.generate import generate

    a = parse_args(
        argv,
        {
            "ckpt": "???",
            "prompt": "???",
            "max_new_tokens": 64,
            "temperature": 0.8,
            "top_k": 50,
            "top_p": 1.0,
            "seed": 0,
            "device": "cpu",
        },
    )
    model, tok, _ = load_model(a["ckpt"], a["device"])
    g = torch.Generator(device=a["device"]).manual_seed(int(a["seed"]))
    ids = generate(
        model,
        tok.encode(a["prompt"]).ids,
        a["max_new_tokens"],
        a["temperature"],
        a["top_k"] or None,
        a["top_p"],
        generator=g,
    )
    print(a["prompt"] + tok.decode(ids))


def _resolve_evals(names: list[str], configured: dict, limit) -> tuple[dict, dict]:
    """(sets, tasks) for names of conf/evals entries or paths: a folder holding requests.jsonl.gz is a task,
    a folder `lmstack prepare` wrote or a JSONL file is a bits-per-byte set."""
    import os

    sets, tasks = {}, {}
    known_sets, known_tasks = configured.get("sets") or {}, configured.get("tasks") or {}
    for name in names:
        base = os.path.basename(os.path.normpath(name))
        if name in known_sets:
            sets[name] = known_sets[name]
        elif name in known_tasks:
            tasks[name] = dict(known_tasks[name])
        elif os.path.isfile(os.path.join(name, "requests.jsonl.gz")):
            tasks[base] = {"path": name}
        elif os.path.isfile(os.path.join(name, "meta.json")):
            sets[base] = {"prepared": name}
        elif os.path.isfile(name):
            sets[base.split(".")[0]] = {"jsonl": name}
        else:
            raise SystemExit(
                f"eval {name!r} is neither a configured set or task ({', '.join([*known_sets, *known_tasks])})"
                " nor a task folder, prepared folder or JSONL file"
            )
    if limit >= 0:  # -1: as configured
        for t in tasks.values():
            t["limit"] = limit or None  # limit=0: every question
    return sets, tasks


def eval_cmd(argv: list[str]) -> None:
    """Configured eval sets and tasks (or paths) on a checkpoint: a table, and DIR/eval.json."""
    import json
    import time

    from lmstack.checkpoint import extras
    from lmstack.eval.suite import evaluate, load_suite

    a = parse_args(
        argv,
        {
            "ckpt": "???",
            "tasks": "???",
            "out": "???",
            "batch_size": 16,
            "limit": -1,
            "device": "cpu",
            "evals": "olmes",
            "seq_len": 0,
        },
    )
    names = [t.strip() for t in str(a["tasks"]).strip().strip("[]").split(",") if t.strip()]
    configured = compose("train", [f"evals={a['evals']}"], resolve_only="evals")
    sets, tasks = _resolve_evals(names, configured, a["limit"])
    model, tok, ckpt = load_model(a["ckpt"], a["device"])
    try:
        seq_len = int(a["seq_len"]) or model.cfg.max_seq_len
        suite = load_suite(sets, tasks, tok, extras(ckpt)["tokenizer_json"], seq_len)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    import torch

    from lmstack.data.tokenizer import token_byte_lengths

    token_bytes = torch.from_numpy(token_byte_lengths(tok))
    results = {}
    print("| eval | items | acc | len_norm | bpb | items/s |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in [*suite.sets, *suite.tasks]:
        one = type(suite)(
            {name: suite.sets[name]} if name in suite.sets else {},
            {name: suite.tasks[name]} if name in suite.tasks else {},
        )
        t0 = time.perf_counter()
        r = evaluate(model, one, token_bytes, int(a["batch_size"]))[name]
        items = r.get("questions", len(suite.sets.get(name, ())))
        rate = items / (time.perf_counter() - t0)
        results[name] = r
        cells = [f"{r[k]:.4f}" if k in r else "" for k in ("acc", "len_norm", "bpb")]
        print(f"| {name} | {items} | {' | '.join(cells)} | {rate:.1f} |")
    with owned_output(a["out"], "eval", [a["ckpt"]]) as owned:
        with open(owned.path / "eval.json", "w") as f:
            json.dump(results, f, indent=2)
        owned.update(status="complete", files=["eval.json"])


def chat_cmd(argv: list[str]) -> None:
    """An interactive chat with a checkpoint through the chat template (one line per turn; empty line or
    EOF ends it)."""
    import torch

    from lmstack.adapt.chat import END, has_chat_tokens, render
    from lmstack.generate import generate

    a = parse_args(
        argv,
        {
            "ckpt": "???",
            "system": "",
            "max_new_tokens": 128,
            "temperature": 0.0,
            "top_k": 50,
            "seed": 0,
            "device": "cpu",
        },
    )
    model, tok, _ = load_model(a["ckpt"], a["device"])
    if not has_chat_tokens(tok):
        raise SystemExit(f"{a['ckpt']} has no chat template tokens: chat with a checkpoint from stage=sft/dpo/rlvr")
    g = torch.Generator().manual_seed(a["seed"])
    messages = [{"role": "system", "content": a["system"]}] if a["system"] else []
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
            a["max_new_tokens"],
            temperature=a["temperature"],
            top_k=a["top_k"] or None,
            eos_id=tok.token_to_id(END),
            generator=g if a["temperature"] > 0 else None,
        )
        reply = tok.decode(out)
        messages.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}", flush=True)


def export_cmd(argv: list[str]) -> None:
    """A checkpoint as a Hugging Face folder (Llama or OLMo 2, by the model's norm configuration)."""
    from lmstack.interop.hf import export_hf

    a = parse_args(argv, {"ckpt": "???", "out": "???", "format": "hf"})
    if a["format"] != "hf":
        raise SystemExit(f"format={a['format']!r} is not supported; allowed: hf")
    from lmstack.ownership import OwnershipError

    try:
        config = export_hf(a["ckpt"], a["out"])
    except (FileNotFoundError, ValueError, OwnershipError) as e:
        raise SystemExit(f"cannot export {a['ckpt']}: {e}") from None
    print(
        f"wrote {config['architectures'][0]} ({config['num_hidden_layers']} layers, d={config['hidden_size']}, "
        f"vocab {config['vocab_size']}) to {a['out']}"
    )


def import_hf_cmd(argv: list[str]) -> None:
    """A Hugging Face Llama / OLMo 2 folder as an lmstack checkpoint (for init_from= or generate/eval)."""
    import os

    from lmstack.interop.hf import import_hf

    if not argv or "=" in argv[0]:
        raise SystemExit(f"missing the Hugging Face folder\n{USAGE}")
    folder = argv[0]
    a = parse_args(argv[1:], {"out": os.path.join(folder, "lmstack.ckpt")})
    try:
        r = import_hf(folder, a["out"])
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"cannot import {folder}: {e}") from None
    print(f"imported {r['architecture']} ({r['params'] / 1e6:.2f}M parameters) to {r['out']}")


def report_cmd(argv: list[str]) -> None:
    """A sweep folder's jobs ranked, with report.md, report.csv, loss_curves.png; --fit: a scaling law."""
    from lmstack.sweep.report import fit_report, write_report

    fit = "--fit" in argv
    argv = [a for a in argv if a != "--fit"]
    if not argv or "=" in argv[0]:
        raise SystemExit(f"missing the sweep folder\n{USAGE}")
    a = parse_args(argv[1:], {"metric": "val/bpb", "predict_flops": 0.0})
    try:
        jobs, md = write_report(argv[0], a["metric"])
        print(md.read_text())
        if fit:
            print(fit_report(jobs, a["metric"], a["predict_flops"] or None))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None


def plan_cmd(argv: list[str]) -> None:
    """Chinchilla planning: solve C = 6 N D, print time and cost per device, a shape and its overrides."""
    from lmstack.plan import PlanError, hours, peak_flops, report, solve
    from lmstack.train.flops import measure_matmul_flops

    a = parse_args(
        argv,
        {
            "flops": 0.0,
            "gpu_hours": 0.0,
            "usd": 0.0,
            "params": 0.0,
            "tokens": 0.0,
            "gpu": "h100",
            "mfu": 0.4,
            "usd_per_gpu_hour": 2.0,
            "gpus": 1,
            "tokens_per_param": 20.0,
            "seq_len": 2048,
        },
    )
    try:
        if not 0 < a["mfu"] <= 1:
            raise PlanError(f"mfu={a['mfu']} must be in (0, 1]")
        if sum(map(bool, (a["flops"], a["gpu_hours"], a["usd"]))) > 1:
            raise PlanError("give compute once: flops=, gpu_hours= or usd=")
        gpu_hours = a["gpu_hours"] or (a["usd"] / a["usd_per_gpu_hour"] if a["usd"] else 0)
        flops = a["flops"] or gpu_hours * 3600 * peak_flops(a["gpu"]) * a["mfu"]
        budget = solve(flops, a["params"], a["tokens"], a["tokens_per_param"])
        print(report(budget, a["mfu"], a["usd_per_gpu_hour"], a["gpus"], a["seq_len"], measure_matmul_flops()))
        h = hours(budget.flops, peak_flops(a["gpu"]), a["mfu"])
        print(f"\n{a['gpu']}: {h:,.0f} GPU-hours, ${h * a['usd_per_gpu_hour']:,.0f}")
    except PlanError as e:
        raise SystemExit(str(e)) from None


def prepare_cmd(argv: list[str]) -> None:
    """Compose conf/prepare.yaml with Hydra overrides and run the curation pipeline."""
    import os

    from lmstack.data.curate.pipeline import run_prepare

    c = compose("prepare", argv)
    inputs = c["inputs"] if isinstance(c["inputs"], list) else [c["inputs"]]
    with refusals():
        stats = run_prepare(inputs, c["output_dir"], c["prepare"])
    print(
        f"{stats['docs_in']:,} documents in, {stats['docs_out']:,} out ({stats['reduction']}x fewer), "
        f"{stats['rejected']:,} rejected; report: {os.path.join(c['output_dir'], 'report.md')}"
    )


def prepare_merge_cmd(argv: list[str]) -> None:
    """The MinHash and tokenize stages over the folders of a sharded `lmstack prepare` job."""
    import glob
    import os

    from omegaconf import OmegaConf

    from lmstack.data.curate.merge import merge_shards

    c = compose("prepare", [a for a in argv if not a.startswith("shards=")] + ["inputs=[]"])
    given = [a.partition("=")[2] for a in argv if a.startswith("shards=")]
    if not given:
        raise SystemExit(f"missing argument shards=...\n{USAGE}")
    patterns = OmegaConf.to_container(OmegaConf.from_dotlist([f"s={given[0]}"]))["s"]
    dirs = sorted(d for p in (patterns if isinstance(patterns, list) else [patterns]) for d in glob.glob(p))
    with refusals():
        stats = merge_shards(dirs, c["output_dir"], c["prepare"])
    print(
        f"{len(dirs)} shards: {stats['docs_in']:,} documents in, {stats['docs_out']:,} out "
        f"({stats['reduction']}x fewer); report: {os.path.join(c['output_dir'], 'report.md')}"
    )


def train_cmd(argv: list[str]) -> None:
    import os
    import runpy

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


COMMANDS = {
    "train": train_cmd,
    "generate": generate_cmd,
    "eval": eval_cmd,
    "prepare": prepare_cmd,
    "prepare-merge": prepare_merge_cmd,
    "export": export_cmd,
    "import-hf": import_hf_cmd,
    "plan": plan_cmd,
    "report": report_cmd,
    "chat": chat_cmd,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(USAGE)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
