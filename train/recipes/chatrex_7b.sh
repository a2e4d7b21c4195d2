#!/usr/bin/env bash
# ChatRex-7B from real data: the paper's three stages (alignment, perception, joint) on one node
# of 8 GPUs with DeepSpeed ZeRO-3, starting from CLIP-L/14-336 + LAION ConvNeXt-L + Qwen2.5-7B
# composed by `chatrex convert compose`. The mixtures and where each number comes from:
# docs/training.md, "Training on real data", and the comments of train/configs/chatrex_7b_stage*.yaml.
#
#   DATA=/data train/recipes/chatrex_7b.sh      # the real run
#   DRY_RUN=1 train/recipes/chatrex_7b.sh       # the same steps on a CPU in a few minutes: tiny
#                                               # composed model, tiny fixtures of every dataset,
#                                               # 2 steps per stage, 1 process, still ZeRO-3
#
# Steps: compose import proposals stage1 stage2 stage3. Each is skipped when its output exists,
# so a re-run after a crash continues (the stages resume from their last checkpoint); FROM=<step>
# forces that step and the ones after it.
#
# Where things are (defaults; each variable can be set on the command line):
#   OUT=runs/chatrex-7b          records/ (imported), init/ (composed model), stage1..3/, logs/
#   DATA=/data                   root of the downloads below
#   CLIP=$DATA/weights/clip-vit-large-patch14-336            (openai/clip-vit-large-patch14-336)
#   CONVNEXT=$DATA/weights/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg/open_clip_model.safetensors
#   LLM=$DATA/weights/Qwen2.5-7B                              (Qwen/Qwen2.5-7B, with its tokenizer)
#   UPN=$DATA/weights/upn_large.pth                           (GitHub release upn-large of IDEA-Research/ChatRex)
#   COCO=$DATA/coco              annotations/instances_train2017.json, train2017/, val2017/, train2014/
#   O365=$DATA/objects365        zhiyuan_objv2_train.json, train/patchN/
#   LVIS=$DATA/lvis              lvis_v1_train.json, lvis_v1_minival.json (images from $COCO)
#   REFER=$DATA/refer            refcoco/refs(unc).p, refcoco+/refs(unc).p, refcocog/refs(umd).p (+ instances.json)
#   REXVERSE=$DATA/rexverse      0_500000_image.tsv (the 5 parts concatenated), 0_500000_referring.annotations.tsv,
#                                0_500000_one_sentence.annotation.tsv, each with its .lineidx
#   ALLAVA=$DATA/allava          allava_laion/ALLaVA-{Caption,Instruct}-LAION-4V.json, allava_vflan/..-VFLAN-4V.json + images
#   LLAVA=$DATA/llava            llava_v1_5_mix665k.json + coco/ gqa/ ocr_vqa/ textvqa/ vg/
#   VG=$DATA/vg                  region_descriptions.json, image_data.json, VG_100K/, VG_100K_2/
#   NPROC=8 (GPUs)  JOBS=$(nproc) (imports at once)  PROPOSALS=1 (0: ground-truth boxes only)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
FROM=${FROM:-}
DRY_RUN=${DRY_RUN:-0}

if [[ $DRY_RUN == 1 ]]; then
  OUT=${OUT:-$(mktemp -d -t chatrex7b-dry.XXXXXX)}
  DATA=$OUT/data
  unset COCO O365 LVIS REFER REXVERSE ALLAVA LLAVA VG
  CLIP=$OUT/parts/clip CONVNEXT=$OUT/parts/open_clip_model.safetensors LLM=$OUT/parts/llm
  UPN=chatrex/bundled/chatrex-tiny/upn
  NPROC=1 DEVICE=cpu
  LAUNCH=("$BIN/accelerate" launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)
  SHORT=(--set train.max_steps=2 --set train.batch_size=2 --set train.save_every=2 --set train.eval_every=2
         --set data.eval_samples=2 --set data.num_workers=0 --set optim.warmup_steps=0)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  if [[ ! -e $OUT/parts/llm/config.json ]]; then
    "$PY" -m train.dry_run_7b --data "$DATA" --parts "$OUT/parts"
  fi
else
  OUT=${OUT:-runs/chatrex-7b}
  DATA=${DATA:-/data}
  CLIP=${CLIP:-$DATA/weights/clip-vit-large-patch14-336}
  CONVNEXT=${CONVNEXT:-$DATA/weights/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg/open_clip_model.safetensors}
  LLM=${LLM:-$DATA/weights/Qwen2.5-7B}
  UPN=${UPN:-$DATA/weights/upn_large.pth}
  NPROC=${NPROC:-8} DEVICE=cuda
  LAUNCH=("$BIN/accelerate" launch --config_file train/configs/accelerate/multi_gpu.yaml --num_processes "$NPROC")
  SHORT=()
fi
COCO=${COCO:-$DATA/coco} O365=${O365:-$DATA/objects365} LVIS=${LVIS:-$DATA/lvis} REFER=${REFER:-$DATA/refer}
REXVERSE=${REXVERSE:-$DATA/rexverse} ALLAVA=${ALLAVA:-$DATA/allava} LLAVA=${LLAVA:-$DATA/llava} VG=${VG:-$DATA/vg}
JOBS=${JOBS:-$(nproc)}
PROPOSALS=${PROPOSALS:-1}
# The stage configs read these.
export RECORDS=$OUT/records RUNS=$OUT INIT=${INIT:-$OUT/init}
mkdir -p "$RECORDS/raw" "$RECORDS/eval" "$OUT/logs"

forced=0
step() {  # step NAME OUTPUT -> true when NAME must run
  [[ "$1" == "$FROM" ]] && forced=1
  if [[ $forced == 1 || ! -e "$2" ]]; then echo "== $1 ($(date -u +%H:%M:%S))"; return 0; fi
  echo "== $1: $2 exists, skipped"; return 1
}
# Commands are queued, then run $JOBS at a time by train/batch_commands.py, which imports chatrex
# once and forks per command (each line of the queue is the command as you would type it).
queue() { printf '%q ' "$@" >> "$QUEUE"; printf '\n' >> "$QUEUE"; }
run_queue() { "$PY" -m train.batch_commands "$QUEUE" --jobs "$1" --logs "$OUT/logs/$2"; rm -f "$QUEUE"; }
QUEUE=$OUT/logs/queue.txt
rm -f "$QUEUE"
import_data() {  # import_data NAME FORMAT ARGS...: chatrex data import FORMAT ARGS --out $RECORDS/NAME.jsonl
  local name=$1; shift
  if [[ $forced == 1 || ! -e $RECORDS/$name.jsonl ]]; then
    queue chatrex data import "$@" --out "$RECORDS/$name.jsonl" --no-progress
  fi
}

# -- compose: the stage-1 starting point ---------------------------------------------------
if step compose "$INIT/config.json"; then
  queue chatrex convert compose --clip "$CLIP" --convnext "$CONVNEXT" --llm "$LLM" --out "$INIT"
fi

# -- import: every dataset to records (docs/records.md); evaluation splits under eval/ --------
imported=0
if step import "$RECORDS/.imported"; then
  imported=1
  # Stage 1: captions. Stages 2-3: detection, referring and region data (in raw/: proposals
  # are added next) and conversations.
  import_data allava_caption_laion llava --json "$ALLAVA/allava_laion/ALLaVA-Caption-LAION-4V.json" --images "$ALLAVA"
  import_data allava_caption_vflan llava --json "$ALLAVA/allava_vflan/ALLaVA-Caption-VFLAN-4V.json" --images "$ALLAVA"
  import_data raw/coco_train coco --ann "$COCO/annotations/instances_train2017.json" --images "$COCO/train2017"
  import_data raw/o365_train coco --ann "$O365/zhiyuan_objv2_train.json" --images "$O365/train" --objects365
  import_data raw/lvis_train lvis --ann "$LVIS/lvis_v1_train.json" --images "$COCO"
  for spec in refcoco:unc refcoco+:unc refcocog:umd; do IFS=: read -r ds by <<< "$spec"
    import_data "raw/${ds}_train" refcoco --format refer "$REFER/$ds/refs($by).p" --dataset "$ds" --split-by "$by" --split train --images "$COCO/train2014"
  done
  import_data raw/rexverse_referring rexverse --images "$REXVERSE/0_500000_image.tsv" --ann "$REXVERSE/0_500000_referring.annotations.tsv" \
      --text-field referring --image-dir "$RECORDS/rexverse_images"
  import_data raw/rexverse_one_sentence rexverse --images "$REXVERSE/0_500000_image.tsv" --ann "$REXVERSE/0_500000_one_sentence.annotation.tsv" \
      --text-field description --image-dir "$RECORDS/rexverse_images"
  import_data raw/vg_regions vg --regions "$VG/region_descriptions.json" --images "$VG" --image-data "$VG/image_data.json"
  import_data llava_mix665k llava --json "$LLAVA/llava_v1_5_mix665k.json" --images "$LLAVA"
  import_data allava_instruct_laion llava --json "$ALLAVA/allava_laion/ALLaVA-Instruct-LAION-4V.json" --images "$ALLAVA"
  import_data allava_instruct_vflan llava --json "$ALLAVA/allava_vflan/ALLaVA-Instruct-VFLAN-4V.json" --images "$ALLAVA"
  # Evaluation sets: the benchmarks read them, and every stage config lists them under
  # data.exclude, so training drops the records of the same COCO images (the leakage filter).
  for spec in refcoco:unc:val refcoco:unc:testA refcoco:unc:testB refcoco+:unc:val refcoco+:unc:testA refcoco+:unc:testB \
              refcocog:umd:val refcocog:umd:test; do IFS=: read -r ds by split <<< "$spec"
    import_data "eval/${ds}_$split" refcoco --format refer "$REFER/$ds/refs($by).p" --dataset "$ds" --split-by "$by" --split "$split" --images "$COCO/train2014"
  done
  import_data eval/lvis_minival lvis --ann "$LVIS/lvis_v1_minival.json" --images "$COCO"
fi
if [[ -s $QUEUE ]]; then
  run_queue "$JOBS" import   # compose and the imports
fi
if (( imported )); then touch "$RECORDS/.imported"; fi

# -- proposals: UPN boxes mixed with the ground truth in every box list (ChatRex issue #18) ----
PERCEPTION=(coco_train o365_train lvis_train refcoco_train refcoco+_train refcocog_train rexverse_referring rexverse_one_sentence vg_regions)
if step proposals "$RECORDS/.proposals"; then
  for name in "${PERCEPTION[@]}"; do
    if [[ $PROPOSALS == 0 ]]; then
      ln -sfn "raw/$name.jsonl" "$RECORDS/$name.jsonl"
    elif [[ $DEVICE == cpu ]]; then
      queue python -m data_engine.proposals "$RECORDS/raw/$name.jsonl" --upn "$UPN" --device cpu --out "$RECORDS/$name.jsonl"
    else
      # One shard per GPU, joined afterwards.
      for (( i = 0; i < NPROC; i++ )); do
        queue python -m data_engine.proposals "$RECORDS/raw/$name.jsonl" --upn "$UPN" --device "cuda:$i" --shard "$i/$NPROC" \
            --out "$RECORDS/raw/$name.upn$i.jsonl"
      done
    fi
  done
  if [[ -s $QUEUE ]]; then
    run_queue "$( [[ $DEVICE == cpu ]] && echo "$JOBS" || echo "$NPROC" )" proposals
  fi
  if [[ $PROPOSALS != 0 && $DEVICE != cpu ]]; then
    for name in "${PERCEPTION[@]}"; do
      for (( i = 0; i < NPROC; i++ )); do cat "$RECORDS/raw/$name.upn$i.jsonl"; done > "$RECORDS/$name.jsonl.tmp"
      mv "$RECORDS/$name.jsonl.tmp" "$RECORDS/$name.jsonl"
    done
  fi
  touch "$RECORDS/.proposals"
fi

# -- the three stages ---------------------------------------------------------------------
for s in 1 2 3; do
  if step "stage$s" "$OUT/stage$s/final/config.json"; then
    "${LAUNCH[@]}" -m train.chatrex --config "train/configs/chatrex_7b_stage$s.yaml" --resume "${SHORT[@]}" 2>&1 | tee "$OUT/logs/stage$s.log"
  fi
done
echo "== done: $OUT/stage3/final"
