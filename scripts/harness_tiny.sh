#!/usr/bin/env bash
# The shared multiple-choice sets three ways on one checkpoint: lmstack's scorer (`lmstack eval`), lm-eval
# through lmstack's model (`harness_tasks=`, on lm-eval tasks written from the OLMES folders), and lm-eval's
# own hf model on the checkpoint's Hugging Face export (`lmstack lm_eval run --model hf`); every question.
#   INIT=outputs/runs/DATE/TIME/checkpoints/last.ckpt bash scripts/harness_tiny.sh   # OUT=outputs/harness
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/harness}
D=${SHARED_DATA:-../shared/data}/evals
: "${INIT:?set INIT to a checkpoint (the main job: its checkpoints/last.ckpt)}"
TASKS=(arc_easy copa piqa sciq copycolors_10way)
"$PY" -m lmstack.eval.harness_tasks "${TASKS[@]/#/$D/}" --out "$OUT/tasks"
t0=$(date +%s.%N)
"$PY" -m lmstack.cli eval ckpt="$INIT" "tasks=[$(IFS=,; echo "${TASKS[*]}")]" limit=0 out="$OUT/eval"
t1=$(date +%s.%N)
"$PY" -m lmstack.cli eval ckpt="$INIT" "harness_tasks=[$OUT/tasks]" out="$OUT/eval_harness" 2> "$OUT/harness.log"
t2=$(date +%s.%N)
"$PY" -m lmstack.cli export ckpt="$INIT" out="$OUT/hf"
"$PY" -m lmstack.cli lm_eval run --model hf --model_args "pretrained=$OUT/hf,dtype=float32" --device cpu \
  --batch_size 16 --tasks "$(IFS=,; echo "${TASKS[*]/#/olmes_}")" --include_path "$OUT/tasks" \
  --output_path "$OUT/lm_eval_hf" > "$OUT/hf.log" 2>&1
t3=$(date +%s.%N)
"$PY" - "$OUT" "$t0" "$t1" "$t2" "$t3" "${TASKS[@]}" <<'PYEOF'
import glob, json, sys
out, (t0, t1, t2, t3), tasks = sys.argv[1], map(float, sys.argv[2:6]), sys.argv[6:]
ours = {**json.load(open(f"{out}/eval/eval.json")), **json.load(open(f"{out}/eval_harness/eval.json"))}
hf = json.load(open(sorted(glob.glob(f"{out}/lm_eval_hf/**/results_*.json", recursive=True))[-1]))["results"]
print("| task (questions) | lmstack eval acc | lm-eval, lmstack model | lm-eval, hf model on the export |")
print("| --- | ---: | ---: | ---: |")
for t in tasks:
    a, b, c = ours[t]["acc"], ours[f"harness/olmes_{t}"]["acc"], hf[f"olmes_{t}"]["acc,none"]
    print(f"| {t} ({ours[t]['questions']}) | {a:.4f} | {b:.4f} | {c:.4f} |" + ("" if a == b == c else " differs"))
print(f"wall time: lmstack eval {t1 - t0:.0f} s; lm-eval through lmstack's model {t2 - t1:.0f} s; "
      f"export + lm-eval's hf model {t3 - t2:.0f} s (each command with its start-up)")
PYEOF
