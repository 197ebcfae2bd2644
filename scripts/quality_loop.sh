#!/usr/bin/env bash
# The quality-classifier loop closed on the shared data (docs/guides/data.md, "Does the filter help?"):
#   1. a classifier: edited prose (Brown) and SciQ's supporting paragraphs against half of nlp-corpus;
#   2. the other half of nlp-corpus prepared twice with one tokenizer: all of it, and the best-scored half;
#   3. a data decision between the two at one token budget: SEEDS seeds each, small models, in-loop evals;
#   4. lmstack report decide=true: which corpus wins on which metric, at what bootstrap confidence.
#   bash scripts/quality_loop.sh        # PY=.venv/bin/python OUT=outputs/quality_loop SEEDS=0,1,2 TOKENS=131072
set -euo pipefail
PY=${PY:-.venv/bin/python}
LMSTACK=${LMSTACK:-"$PY -m lmstack.cli"}
OUT=${OUT:-outputs/quality_loop}
SEEDS=${SEEDS:-0,1,2}
TOKENS=${TOKENS:-131072}
DATA=${DATA:-../shared/data}
mkdir -p "$OUT"
zcat "$DATA/prose/nlp-corpus.jsonl.gz" | sed -n '1,2000p' > "$OUT/pool.jsonl"    # the corpus to filter
zcat "$DATA/prose/nlp-corpus.jsonl.gz" | tail -n 2000 > "$OUT/negatives.jsonl"   # the classifier's negatives
zcat "$DATA/evals/sciq/requests.jsonl.gz" | "$PY" -c '
import json, sys
seen = set()
for line in sys.stdin:
    doc = json.loads(line)["doc"]
    if doc["support"] and doc["index"] not in seen:
        seen.add(doc["index"])
        print(json.dumps({"id": f"sciq-support-{doc['"'"'index'"'"']}", "text": doc["support"]}))
' > "$OUT/sciq_support.jsonl"
$LMSTACK quality-train "positives=[$DATA/prose/brown.jsonl.gz,$OUT/sciq_support.jsonl]" \
  "negatives=[$OUT/negatives.jsonl]" out="$OUT/classifier" balance=true epoch=25 bucket=100000
$LMSTACK prepare "inputs=[$OUT/pool.jsonl]" output_dir="$OUT/all" prepare=prose
$LMSTACK prepare "inputs=[$OUT/pool.jsonl]" output_dir="$OUT/filtered" prepare=prose \
  "+prepare.quality.edu={model: $OUT/classifier/model.bin, keep_fraction: 0.5}" \
  prepare.tokenize.tokenizer="$OUT/all/tokenizer.json"
"$PY" train.py -m sweep=decide sweep_name=quality_loop paths.output_root="$OUT" data_mix=prepared \
  "data_mix.dir=$OUT/all,$OUT/filtered" "seed=$SEEDS" model.d_model=64 model.n_layers=2 model.n_heads=1 \
  train.max_tokens="$TOKENS" train.val_every_steps=8 evals.tasks.arc_easy.limit=100 \
  evals.tasks.copa.limit=100 evals.tasks.piqa.limit=100 evals.tasks.sciq.limit=100
SWEEP=$(ls -d "$OUT"/sweeps/quality_loop/*/ | tail -n 1)
$LMSTACK report dir="$SWEEP" decide=true last=3
