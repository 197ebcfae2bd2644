"""SFT and preference rows built from real multiple-choice sets, split by question, for `stage.data`.

For each OLMES task folder: the questions are split by a hash of their id (`--test-fraction` held out).
The training questions become chat rows (`OUT/sft.jsonl`: the question as the user turn, the right answer
as the assistant turn) and preference rows (`OUT/prefs.jsonl`: the right answer chosen, a wrong choice
rejected, UltraFeedback style); the held-out questions' requests, as they are, become task folders
(`OUT/heldout/<task>/requests.jsonl.gz`) for `lmstack eval`. No held-out question is in either file.

    python scripts/mc_chat_data.py --out data/mc ../shared/data/evals/{arc_easy,sciq,piqa,copa}
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

from lmstack.data.sources import is_validation
from lmstack.eval.multiple_choice import load_requests

LABEL = re.compile(r"^[A-Z][a-z]*:\s*", re.M)  # the prompt template's line labels (Question:, Answer:, Goal:)


def question_text(context: str) -> str:
    return LABEL.sub("", context).strip()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("tasks", nargs="+", help="OLMES task folders (holding requests.jsonl.gz)")
    p.add_argument("--out", required=True)
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)  # a new folder: nothing of the user's is replaced
    rng = random.Random(args.seed)
    sft, prefs, counts = [], [], {}
    for folder in map(Path, args.tasks):
        held = set()
        for q in load_requests(folder):
            key = f"{folder.name}-{q.doc_id}"
            if is_validation(key, args.test_fraction):
                held.add(q.doc_id)
                continue
            context, answer = q.pairs()[q.gold]
            user = [{"role": "user", "content": question_text(context)}]
            right = [*user, {"role": "assistant", "content": answer.strip()}]
            sft.append({"id": key, "messages": right})
            wrong = rng.choice([c for i, c in enumerate(q.choices) if i != q.gold]).strip()
            prefs.append({"id": key, "chosen": right, "rejected": [*user, {"role": "assistant", "content": wrong}]})
        target = out / "heldout" / folder.name
        target.mkdir(parents=True)
        with gzip.open(folder / "requests.jsonl.gz", "rt") as src, gzip.open(target / "requests.jsonl.gz", "wt") as dst:
            for line in src:
                if json.loads(line)["doc_id"] in held:
                    dst.write(line)
        counts[folder.name] = {"train": sum(r["id"].startswith(folder.name + "-") for r in sft), "held_out": len(held)}
    for name, rows in (("sft.jsonl", sft), ("prefs.jsonl", prefs)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
