#!/usr/bin/env bash
# #24: measure what limits the bundled chatrex-tiny, then continue it on the cached path with a
# learning curve, and the same run with perfect box features (the LLM's ceiling). Every step is
# skipped when its output exists and every training run resumes from its last checkpoint, so
# running this again (the next day, after a crash or Ctrl-C) continues instead of restarting.
# State on disk: data/limits/train, data/synth/{val,test}, runs/diagnostics/*.json, runs/continue-cached/
# and runs/ceiling-oracle/ (checkpoint-*, metrics.jsonl, learning_curve.jsonl, models/step-*).
# MINUTES caps each training run's wall time per invocation (train.max_minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
MINUTES=${MINUTES:-40}
once() { [[ -e "$1" ]] && echo "== $1 exists, skipped" && return 1; echo "== $1 ($(date -u +%H:%M:%S))"; }

# Fresh training images (seed 12) in their own folder, so this recipe and chatrex_tiny.sh (seed 0
# in data/synth/train) never overwrite each other's data or proposals.
for s in train:3000:12:data/limits/train val:100:1:data/synth/val test:500:2:data/synth/test; do IFS=: read -r sp n seed out <<< "$s"
  if once "$out/records.jsonl"; then
    $PY -m data_engine.synthetic --split "$sp" --n "$n" --seed "$seed" --out "$out" --size 384 --workers 2
  fi
done
if once runs/diagnostics/errors_shipped_val.json; then
  OMP_NUM_THREADS=1 $PY -m train.diagnostics.error_causes --data data/synth/val --out runs/diagnostics/errors_shipped_val.json &
fi
if once runs/diagnostics/probes_shipped.json; then
  OMP_NUM_THREADS=1 $PY -m train.diagnostics.feature_probes --train data/limits/train/records.jsonl --test data/synth/test/records.jsonl \
      --train-images 300 --test-images 120 --out runs/diagnostics/probes_shipped.json &
fi
wait
if once data/limits/train/records_upn.jsonl; then
  $PY -m data_engine.proposals data/limits/train/records.jsonl --upn chatrex/bundled/chatrex-tiny/upn --out data/limits/train/records_upn.jsonl
fi
# Both runs read the same cache (the shipped towers); build it once, before they start.
$PY -m train.feature_cache data/limits/train/records_upn.jsonl data/synth/val/records.jsonl --model chatrex/bundled/chatrex-tiny
for run in continue_cached ceiling_oracle; do
  OMP_NUM_THREADS=1 $PY -m train.chatrex --config "train/configs/$run.yaml" --resume --set "train.max_minutes=$MINUTES" &
done
wait
OMP_NUM_THREADS=1 $PY -m train.diagnostics.learning_curve runs/continue-cached --init chatrex/bundled/chatrex-tiny &
OMP_NUM_THREADS=1 $PY -m train.diagnostics.learning_curve runs/ceiling-oracle --oracle &
wait
