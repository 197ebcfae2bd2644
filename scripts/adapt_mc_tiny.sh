#!/usr/bin/env bash
# SFT and DPO on chat rows built from the shared multiple-choice sets (scripts/mc_chat_data.py: split by
# question), from the main job's checkpoint, then accuracy on the held-out questions only, before and after.
#   INIT=outputs/runs/DATE/TIME/checkpoints/last.ckpt bash scripts/adapt_mc_tiny.sh   # OUT=outputs/adapt_mc
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/adapt_mc}
D=${SHARED_DATA:-../shared/data}/evals
: "${INIT:?set INIT to a pretrained checkpoint (the main job: its checkpoints/last.ckpt)}"
QUIET=(trainer.enable_progress_bar=false "stage.recipe_file=$OUT/recipe.json")
"$PY" scripts/mc_chat_data.py --out "$OUT/data" "$D/arc_easy" "$D/sciq" "$D/piqa" "$D/copa"
"$PY" train.py stage=sft init_from="$INIT" stage.data="$OUT/data/sft.jsonl" stage.epochs=2 data.seq_len=256 \
  stage.max_new_tokens=24 "${QUIET[@]}" run_dir="$OUT/sft"
"$PY" train.py stage=dpo init_from="$OUT/sft/checkpoints/last.ckpt" stage.data="$OUT/data/prefs.jsonl" \
  stage.epochs=1 data.seq_len=256 stage.max_new_tokens=24 "${QUIET[@]}" run_dir="$OUT/dpo"
HELD="$OUT/data/heldout"
for name in base sft dpo; do
  ckpt="$INIT"; [ "$name" != base ] && ckpt="$OUT/$name/checkpoints/last.ckpt"
  "$PY" -m lmstack.cli eval ckpt="$ckpt" "tasks=[$HELD/arc_easy,$HELD/sciq,$HELD/piqa,$HELD/copa]" limit=0 \
    seq_len=256 out="$OUT/eval/$name"
done
"$PY" - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
names = ["base", "sft", "dpo"]
runs = {n: json.load(open(f"{out}/eval/{n}/eval.json")) for n in names}
print("| held-out questions | " + " | ".join(names) + " |\n| --- |" + " ---: |" * len(names))
for task, r in runs["base"].items():
    print(f"| {task} acc ({r['questions']}) | " + " | ".join(f"{runs[n][task]['acc']:.4f}" for n in names) + " |")
PYEOF
