#!/usr/bin/env bash
# The adaptation recipe on CPU: pretrain `tiny` (the main job; or INIT=ckpt to start from a checkpoint),
# then SFT -> DPO -> RLVR on 2-digit addition (conf/stage defaults), each scored on held-out prompts. The table is
# OUT/recipe.json (stage -> exact match, DPO preference accuracy, RLVR mean reward).
#   bash scripts/recipe_tiny.sh                 # PY=.venv/bin/python OUT=outputs/recipe by default
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/recipe}
mkdir -p "$OUT"
rm -f "$OUT/recipe.json"
COMMON=("stage.recipe_file=$OUT/recipe.json" "trainer.enable_progress_bar=false")
if [ -z "${INIT:-}" ]; then
  "$PY" train.py hydra.run.dir="$OUT/pretrain" train.sample_tokens=0 trainer.enable_progress_bar=false
  INIT="$OUT/pretrain/checkpoints/last.ckpt"
fi
"$PY" train.py stage=sft init_from="$INIT" hydra.run.dir="$OUT/sft" "${COMMON[@]}"
"$PY" train.py stage=dpo init_from="$OUT/sft/checkpoints/last.ckpt" hydra.run.dir="$OUT/dpo" "${COMMON[@]}"
"$PY" train.py stage=rlvr init_from="$OUT/dpo/checkpoints/last.ckpt" hydra.run.dir="$OUT/rlvr" "${COMMON[@]}"
"$PY" - "$OUT/recipe.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("| stage | held-out exact match (before -> after) | other |\n| --- | --- | --- |")
for stage, n in r.items():
    other = {"dpo": f"preference accuracy {n.get('preference_accuracy', 0):.3f}",
             "rlvr": f"mean sampled reward {n.get('mean_reward_before', 0):.3f} -> {n.get('mean_reward', 0):.3f}"}
    print(f"| {stage} | {n['exact_match_before']:.3f} -> {n['exact_match']:.3f} | {other.get(stage, '')} |")
PYEOF
