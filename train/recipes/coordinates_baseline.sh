#!/usr/bin/env bash
# The coordinate-output baseline of BENCHMARKS.md ("indices vs coordinates"): the bundled
# chatrex-tiny recipe with the same stage-0 encoders, LLM, data, stages and steps, but every
# answer box written as quantised coordinates (data.answer_format=coordinates) and no box
# tokens in the prompt. Needs the outputs of train/recipes/chatrex_tiny.sh up to its "text" step.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=runs/coords
init=runs/chatrex-tiny/text_lookup/final  # the same stage-0 encoders and stage-0b LLM; the pointer step is index-only
for s in 1 2 3; do
  if [[ ! -e "$OUT/stage$s/final/config.json" ]]; then
    if [[ $s == 1 ]]; then launch=(env OMP_NUM_THREADS=1 "$PY" -m); bs=8; else launch=(env OMP_NUM_THREADS=1 "$(dirname "$PY")/torchrun" --nproc_per_node 2 -m); bs=4; fi
    "${launch[@]}" train.chatrex --config "train/configs/stage$s.yaml" --resume --set data.answer_format=coordinates \
        --set "model.init=$init" --set "train.output_dir=$OUT/stage$s" --set "train.batch_size=$bs"
  fi
  init=$OUT/stage$s/final
done
$PY benchmarks/coords_vs_indices.py --indices chatrex-tiny --coordinates "$OUT/stage3/final" --data data/synth/test --limit 200 --json-out "$OUT/result.json"
