#!/usr/bin/env bash
# Visual-token compression variants for BENCHMARKS.md §3: each method fine-tunes the stage-3
# model for the same STEPS with the stage-3 recipe ("none" too, so every row has had the same
# training), then benchmarks/compression.py measures prefill latency and accuracy.
# Each variant is skipped when its output exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
INIT=${INIT:-runs/chatrex-tiny/stage3/final}
STEPS=${STEPS:-60}
OUT=${OUT:-runs/compress}
declare -A OVERRIDES=(
  [none]='{}'
  [avgpool2x2]='{token_compression: avgpool2x2}'
  [unshuffle_mlp]='{token_compression: unshuffle_mlp}'
  [tome]='{token_compression: tome, token_compression_keep: 36}'
)
for method in none avgpool2x2 unshuffle_mlp tome; do
  if [[ ! -e "$OUT/$method/final/config.json" ]]; then
    echo "== $method ($(date -u +%H:%M:%S))"
    OMP_NUM_THREADS=1 "$(dirname "$PY")/torchrun" --nproc_per_node 2 -m train.chatrex --config train/configs/stage3.yaml --resume \
        --set "model.init=$INIT" --set "model.config_overrides=${OVERRIDES[$method]}" --set "train.max_steps=$STEPS" \
        --set "train.save_every=$STEPS" --set "train.eval_every=$STEPS" --set "train.output_dir=$OUT/$method" --set train.batch_size=4
  fi
done
args=()
for method in none avgpool2x2 unshuffle_mlp tome; do args+=("$method=$OUT/$method/final"); done
$PY benchmarks/compression.py --finetuned "${args[@]}" --eval-limit "${EVAL_LIMIT:-100}" --json-out "$OUT/result.json"
