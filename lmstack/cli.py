"""The `lmstack` command: `lmstack train [overrides]`, `lmstack generate ckpt=PATH prompt=...`."""

from __future__ import annotations

import sys

USAGE = """usage:
  lmstack train [hydra overrides]        pretrain (the same as `python train.py`)
  lmstack eval ckpt=PATH tasks='[TASK_DIR,...]' out=DIR [batch_size=32 limit=N]
  lmstack prepare inputs='[PATH_OR_GLOB,...]' output_dir=DIR [prepare=web|prose] [hydra overrides]
  lmstack prepare-merge shards='[DIR_OR_GLOB,...]' output_dir=DIR [the same prepare overrides]
  lmstack generate ckpt=PATH prompt=TEXT [max_new_tokens=64 temperature=0.8 top_k=50 top_p=1.0 seed=0 device=cpu]
"""


def _args(argv: list[str], defaults: dict) -> dict:
    """key=value arguments, each cast to its default's type; values are taken verbatim (newlines kept)."""
    given = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value arguments, got {arg!r}\n{USAGE}")
        if key not in defaults:
            raise SystemExit(f"unknown argument {key!r}; allowed: {', '.join(defaults)}")
        default = defaults[key]
        try:
            given[key] = value if default == "???" or isinstance(default, str) else type(default)(value)
        except ValueError:
            raise SystemExit(f"{key}={value!r}: expected a {type(default).__name__}") from None
    missing = [k for k, v in defaults.items() if v == "???" and k not in given]
    if missing:
        raise SystemExit(f"missing argument {missing[0]}=...\n{USAGE}")
    return {**defaults, **given}


def generate_cmd(argv: list[str]) -> None:
    import torch

    from lmstack.generate import generate, load_checkpoint

    a = _args(argv, {"ckpt": "???", "prompt": "???", "max_new_tokens": 64, "temperature": 0.8, "top_k": 50,
                     "top_p": 1.0, "seed": 0, "device": "cpu"})
    try:
        model, tok, _ = load_checkpoint(a["ckpt"], a["device"])
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    if tok is None:
        raise SystemExit(f"{a['ckpt']} carries no tokenizer")
    g = torch.Generator(device=a["device"]).manual_seed(int(a["seed"]))
    ids = generate(model, tok.encode(a["prompt"]).ids, a["max_new_tokens"], a["temperature"], a["top_k"] or None,
                   a["top_p"], generator=g)
    print(a["prompt"] + tok.decode(ids))


def eval_cmd(argv: list[str]) -> None:
    """Multiple-choice tasks (folders of OLMES requests) on a checkpoint: a table, and DIR/eval.json."""
    import json
    import os
    import time

    from lmstack.eval.multiple_choice import load_requests, score_task
    from lmstack.generate import load_checkpoint

    a = _args(argv, {"ckpt": "???", "tasks": "???", "out": "???", "batch_size": 32, "limit": 0, "device": "cpu"})
    tasks = [t.strip() for t in a["tasks"].strip().strip("[]").split(",") if t.strip()]
    try:
        model, tok, _ = load_checkpoint(a["ckpt"], a["device"])
        questions = {os.path.basename(os.path.normpath(t)): load_requests(t) for t in tasks}
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    results = {}
    print("| task | questions | acc | len_norm | questions/s |\n| --- | ---: | ---: | ---: | ---: |")
    for name, qs in questions.items():
        qs = qs[: a["limit"]] if a["limit"] > 0 else qs  # limit=N: the first N questions
        t0 = time.perf_counter()
        r = score_task(model, tok, qs, int(a["batch_size"]))
        rate = len(qs) / (time.perf_counter() - t0)
        results[name] = {"acc": r["acc"], "len_norm": r["len_norm"], "questions": r["questions"]}
        print(f"| {name} | {r['questions']} | {r['acc']:.4f} | {r['len_norm']:.4f} | {rate:.1f} |")
    os.makedirs(a["out"], exist_ok=True)
    with open(os.path.join(a["out"], "eval.json"), "w") as f:
        json.dump(results, f, indent=2)


def prepare_cmd(argv: list[str]) -> None:
    """Compose conf/prepare.yaml with Hydra overrides and run the curation pipeline."""
    import os

    from lmstack.data.curate.pipeline import run_prepare

    c = _compose("prepare", argv)
    inputs = c["inputs"] if isinstance(c["inputs"], list) else [c["inputs"]]
    stats = run_prepare(inputs, c["output_dir"], c["prepare"])
    print(f"{stats['docs_in']:,} documents in, {stats['docs_out']:,} out ({stats['reduction']}x fewer), "
          f"{stats['rejected']:,} rejected; report: {os.path.join(c['output_dir'], 'report.md')}")


def prepare_merge_cmd(argv: list[str]) -> None:
    """The MinHash and tokenize stages over the folders of a sharded `lmstack prepare` job."""
    import glob
    import os

    from omegaconf import OmegaConf

    from lmstack.data.curate.merge import merge_shards

    c = _compose("prepare", [a for a in argv if not a.startswith("shards=")] + ["inputs=[]"])
    given = [a.partition("=")[2] for a in argv if a.startswith("shards=")]
    if not given:
        raise SystemExit(f"missing argument shards=...\n{USAGE}")
    patterns = OmegaConf.to_container(OmegaConf.from_dotlist([f"s={given[0]}"]))["s"]
    dirs = sorted(d for p in (patterns if isinstance(patterns, list) else [patterns]) for d in glob.glob(p))
    stats = merge_shards(dirs, c["output_dir"], c["prepare"])
    print(f"{len(dirs)} shards: {stats['docs_in']:,} documents in, {stats['docs_out']:,} out "
          f"({stats['reduction']}x fewer); report: {os.path.join(c['output_dir'], 'report.md')}")


def _compose(name: str, overrides: list[str]) -> dict:
    import os

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"missing argument {missing[0]}=...\n{USAGE}")
    return OmegaConf.to_container(cfg, resolve=True)


def train_cmd(argv: list[str]) -> None:
    import os
    import runpy

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


COMMANDS = {"train": train_cmd, "generate": generate_cmd, "eval": eval_cmd, "prepare": prepare_cmd, "prepare-merge": prepare_merge_cmd}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(USAGE)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
