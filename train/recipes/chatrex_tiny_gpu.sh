#!/usr/bin/env bash
# Continue chatrex-tiny on one GPU in about ten minutes, both variants side by side:
#   pointer: the bundle as shipped (pointer head, index embedding, reference features);
#   paper:   the same weights with those three switched off, so boxes come from plain <objK>
#            vocabulary logits as in the paper.
# Steps: a fresh synthetic training set (seed 10, never used before), UPN proposals on the GPU
# in SHARDS processes, the two trainings at once (train/configs/stage3_gpu.yaml, train.max_minutes
# caps each), fp16 bundles, then a quick evaluation of both on 200 test images on the GPU.
# Data and proposals are skipped when their outputs exist, so a second call on a still-warm
# machine goes straight to training. Measured on one H200 (MODEL_CARD.md): data 22 s; proposals
# 523 s with 4 shards (the per-image predictor is CPU-bound, hence more single-thread shards
# now); each training 150 s.
#   OUT=/path N_TRAIN=12000 MINUTES=4.5 train/recipes/chatrex_tiny_gpu.sh
# Small values run it on a CPU as a dry run: DEVICE=cpu N_TRAIN=40 STEPS=2 WORKERS=2 EVAL_LIMIT=2.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT=${OUT:-runs/gpu/out}
DEVICE=${DEVICE:-cuda}
N_TRAIN=${N_TRAIN:-12000}
STEPS=${STEPS:-2500}
MINUTES=${MINUTES:-4.5}
WORKERS=${WORKERS:-14}
EVAL_LIMIT=${EVAL_LIMIT:-200}
BATCH=${BATCH:-32}
SHARDS=${SHARDS:-12}
mkdir -p "$OUT" runs/gpu
t0=$(date +%s)
stamp() { echo "== $1 at +$(( $(date +%s) - t0 ))s"; }

if [[ ! -e data/gpu/train/records.jsonl ]]; then
  stamp data
  $PY -m data_engine.synthetic --split train --n "$N_TRAIN" --seed 10 --out data/gpu/train --size 384 --workers "$WORKERS" &
  $PY -m data_engine.synthetic --split val --n 100 --seed 1 --out data/synth/val --size 384 --workers 2 &
  $PY -m data_engine.synthetic --split test --n "$EVAL_LIMIT" --seed 2 --out data/synth/test --size 384 --workers 2 &
  wait
fi
if [[ ! -e data/gpu/train/records_upn.jsonl ]]; then
  stamp proposals
  for (( i = 0; i < SHARDS; i++ )); do
    OMP_NUM_THREADS=1 $PY -m data_engine.proposals data/gpu/train/records.jsonl --upn chatrex/bundled/chatrex-tiny/upn \
        --out "data/gpu/train/records_upn.$i.jsonl" --device "$DEVICE" --shard "$i/$SHARDS" > "runs/gpu/proposals.$i.log" 2>&1 &
  done
  wait
  for (( i = 0; i < SHARDS; i++ )); do cat "data/gpu/train/records_upn.$i.jsonl"; done > data/gpu/train/records_upn.tmp
  mv data/gpu/train/records_upn.tmp data/gpu/train/records_upn.jsonl
fi

stamp train
half=$(( WORKERS / 2 ))
common=(--config train/configs/stage3_gpu.yaml --set "train.max_steps=$STEPS" --set "train.max_minutes=$MINUTES"
        --set "train.batch_size=$BATCH" --set "data.num_workers=$half")
$PY -m train.chatrex "${common[@]}" --set train.output_dir=runs/gpu/pointer > runs/gpu/train_pointer.log 2>&1 &
$PY -m train.chatrex "${common[@]}" --set train.output_dir=runs/gpu/paper \
    --set 'model.config_overrides={object_pointer_head: false, object_index_embedding: false, object_reference_features: false}' \
    > runs/gpu/train_paper.log 2>&1 &
wait

stamp bundle
for v in pointer paper; do
  $PY -m train.bundle --chatrex "runs/gpu/$v/final" --upn chatrex/bundled/chatrex-tiny/upn --out "runs/gpu/bundle_$v"
  mkdir -p "$OUT/$v"
  cp "runs/gpu/bundle_$v/model.safetensors" "runs/gpu/bundle_$v/config.json" "$OUT/$v/"
done

stamp eval
$PY benchmarks/eval_models.py --models runs/gpu/bundle_pointer runs/gpu/bundle_paper --data data/synth/test \
    --tasks detection referring region grounded_caption --limit "$EVAL_LIMIT" --caption-limit "$(( EVAL_LIMIT / 2 ))" \
    --device "$DEVICE" --jobs 8 --out "$OUT/eval_test.json" > runs/gpu/eval.log 2>&1 || echo "evaluation failed (see eval.log)"
stamp done
tar czf "$OUT/logs.tar.gz" runs/gpu/*.log runs/gpu/pointer/metrics.jsonl runs/gpu/paper/metrics.jsonl 2>/dev/null || true
