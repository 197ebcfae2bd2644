#!/usr/bin/env bash
# Mid-training on CPU (issue 18's example): prepare Brown and nlp-corpus with decontamination against the
# shared eval sets, pretrain `tiny` on their 50/50 mix at a constant LR, anneal twice on Brown only (seeds 1
# and 2), soup the two anneals, and score all four checkpoints: bits per byte on each source's held-out
# documents, accuracy on every question of the shared multiple-choice sets. Prints the table.
#   bash scripts/midtrain_tiny.sh               # PY=.venv/bin/python OUT=outputs/midtrain by default
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/midtrain}
D=${SHARED_DATA:-../shared/data}
TASKS=arc_easy,copa,piqa,sciq,copycolors_10way
LM=("$PY" -m lmstack.cli)
QUIET=(train.sample_tokens=0 trainer.enable_progress_bar=false)
"${LM[@]}" prepare "inputs=[$D/prose/brown.jsonl.gz]" output_dir="$OUT/data/brown" prepare=prose \
  prepare.source=brown "prepare.decontaminate.tasks=[$TASKS]"
"${LM[@]}" prepare "inputs=[$D/prose/nlp-corpus.jsonl.gz]" output_dir="$OUT/data/nlp" prepare=prose \
  prepare.source=nlp_corpus prepare.tokenize.tokenizer="$OUT/data/brown/tokenizer.json" "prepare.decontaminate.tasks=[$TASKS]"
"${LM[@]}" overlap "corpus=[$D/prose/brown.jsonl.gz,$D/prose/nlp-corpus.jsonl.gz]" "tasks=[$TASKS]"
MIX="data_mix.sources=[{name:brown,prepared:$OUT/data/brown,weight:0.5},{name:nlp_corpus,prepared:$OUT/data/nlp,weight:0.5}]"
"$PY" train.py data_mix=prose "$MIX" schedule=constant train.max_tokens=400000 "${QUIET[@]}" run_dir="$OUT/pretrain"
for s in 1 2; do
  "$PY" train.py stage=anneal init_from="$OUT/pretrain/checkpoints/last.ckpt" data_mix=prose "$MIX" \
    data_mix.sources.1.weight=0 train.max_tokens=100000 seed=$s "${QUIET[@]}" run_dir="$OUT/anneal$s"
done
"${LM[@]}" soup "ckpts=[$OUT/anneal1/checkpoints/last.ckpt,$OUT/anneal2/checkpoints/last.ckpt]" out="$OUT/soup"
for name in pretrain anneal1 anneal2 soup; do
  ckpt="$OUT/$name/checkpoints/last.ckpt"; [ "$name" = soup ] && ckpt="$OUT/soup/soup.ckpt"
  "${LM[@]}" eval ckpt="$ckpt" "tasks=[$OUT/data/brown,$OUT/data/nlp,$TASKS]" limit=0 seq_len=256 out="$OUT/eval/$name"
done
"$PY" - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
names = ["pretrain", "anneal1", "anneal2", "soup"]
runs = {n: json.load(open(f"{out}/eval/{n}/eval.json")) for n in names}
print("| | " + " | ".join(names) + " |\n| --- |" + " ---: |" * len(names))
for key in runs["pretrain"]:
    metric = "bpb" if "bpb" in runs["pretrain"][key] else "acc"
    print(f"| {key} {metric} | " + " | ".join(f"{runs[n][key][metric]:.4f}" for n in names) + " |")
PYEOF
