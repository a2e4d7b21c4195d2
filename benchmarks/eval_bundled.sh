#!/usr/bin/env bash
# Evaluate a ChatRex bundle on the synthetic test and heldout splits (the MODEL_CARD table).
#   benchmarks/eval_bundled.sh [MODEL] [OUT_DIR]
# Needs data/synth/{test,heldout} (python -m data_engine.synthetic --split test --n 500 --seed 2 --size 384 ...).
# Runs two evaluations at a time, one thread each (a 2-core machine): about 25 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-chatrex-tiny}
OUT=${2:-runs/eval}
mkdir -p "$OUT"
run() {  # name, then chatrex eval arguments
  local name=$1; shift
  OMP_NUM_THREADS=1 .venv/bin/chatrex eval --model "$MODEL" --no-progress --json-out "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2>&1
}
if [[ -z "${SKIP_PROPOSALS:-}" ]]; then  # SKIP_PROPOSALS=1 when only the language model changed
  run proposals_test --data data/synth/test --task proposals &
  run proposals_heldout --data data/synth/heldout --task proposals
  wait
fi
run detection_test --data data/synth/test --task detection --limit 500 --per-image 4 &
run referring_test --data data/synth/test --task referring --limit 500 --per-image 3
wait
run referring_heldout --data data/synth/heldout --task referring --limit 500 --per-image 3 &
run region_test --data data/synth/test --task region --limit 500 --per-image 5
wait
run detection_heldout --data data/synth/heldout --task detection --limit 500 --per-image 4
for f in "$OUT"/*.txt; do echo "== $f"; grep -v "Loading weights\|WARNING" "$f"; done
