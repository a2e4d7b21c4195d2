#!/usr/bin/env bash
# The bundled chatrex-tiny, end to end, on this repository's synthetic world (see
# chatrex/bundled/chatrex-tiny/MODEL_CARD.md for timings). Each step is skipped when its output
# exists, so re-running after a crash continues; pass FROM=<step> to force a step and the rest
# (steps: data tokenizer upn proposals vision text pointer stage1 stage2 stage3 bundle eval).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
FROM=${FROM:-}
forced=0
step() {  # step NAME OUTPUT -> true when NAME must run
  [[ "$1" == "$FROM" ]] && forced=1
  if [[ $forced == 1 || ! -e "$2" ]]; then echo "== $1 ($(date -u +%H:%M:%S))"; return 0; fi
  echo "== $1: $2 exists, skipped"; return 1
}

if step data data/synth/heldout/records.jsonl; then
  for s in train:3000:0 val:100:1 test:500:2 heldout:500:3; do IFS=: read -r sp n seed <<< "$s"
    $PY -m data_engine.synthetic --split "$sp" --n "$n" --seed "$seed" --out "data/synth/$sp" --size 384 --workers 2; done
fi
if step tokenizer runs/tokenizer/tokenizer.json; then
  $PY -m train.tokenizer --records data/synth/train/records.jsonl --vocab-size 1024 --out runs/tokenizer
fi
if step upn runs/upn-tiny/final/config.json; then
  $PY -m data_engine.coco data/synth/train/records.jsonl
  $PY -m train.upn --coarse data/synth/train/coco_coarse.json --fine data/synth/train/coco_fine.json \
      --preset upn-tiny --steps 1200 --batch-size 4 --lr 4e-4 --warmup-steps 50 --short-side 384 --max-size 384 \
      --save-every 100 --output-dir runs/upn-tiny --resume
fi
if step proposals data/synth/train/records_upn.jsonl; then
  $PY -m data_engine.proposals data/synth/train/records.jsonl --upn runs/upn-tiny/final --out data/synth/train/records_upn.jsonl
fi
if step vision runs/chatrex-tiny/vision/final/config.json; then
  $PY -m train.vision --records data/synth/train/records.jsonl --eval data/synth/val/records.jsonl \
      --tokenizer runs/tokenizer --steps 450 --warmup-steps 30 --out runs/chatrex-tiny/vision --resume
fi
if step text runs/chatrex-tiny/text_lookup/final/config.json; then
  $PY -m train.text_pretrain --init runs/chatrex-tiny/vision/final --records data/synth/train/records.jsonl \
      --steps 600 --lr 1.5e-3 --save-every 150 --object-index-embedding --reinit-llm-std 0.045 --lookup 0.5 --out runs/chatrex-tiny/text_lookup --resume
fi
# The pointer head (chatrex/layers/object_pointer.py) was added after the text run above; it continues
# that run with the head on and fewer one-hop lookup turns.
if step pointer runs/chatrex-tiny/text_pointer/final/config.json; then
  $PY -m train.text_pretrain --init runs/chatrex-tiny/text_lookup/final --records data/synth/train/records.jsonl \
      --steps 300 --lr 1e-3 --save-every 150 --log-every 10 --object-pointer --lookup 0.2 --out runs/chatrex-tiny/text_pointer --resume
fi
if step stage1 runs/chatrex-tiny/stage1/final/config.json; then
  OMP_NUM_THREADS=1 $PY -m train.chatrex --config train/configs/stage1.yaml --resume
fi
# Two processes of one thread each beat one process of two threads on 2 cores (BENCHMARKS.md);
# 2 x batch 4 keeps the configs' effective batch of 8.
for s in 2 3; do
  if step "stage$s" "runs/chatrex-tiny/stage$s/final/config.json"; then
    OMP_NUM_THREADS=1 "$(dirname "$PY")/torchrun" --nproc_per_node 2 -m train.chatrex --config "train/configs/stage$s.yaml" --set train.batch_size=4 --resume
  fi
done
if step bundle runs/chatrex-tiny/bundled; then
  $PY -m train.bundle --chatrex runs/chatrex-tiny/stage3/final --upn runs/upn-tiny/final --out chatrex/bundled/chatrex-tiny
  touch runs/chatrex-tiny/bundled
fi
if step eval runs/eval/done; then
  benchmarks/eval_bundled.sh chatrex-tiny runs/eval && touch runs/eval/done
fi
