#!/usr/bin/env bash
# The first thing to run on a machine with a CUDA GPU: does every script run there, and how fast.
#
#   bash experiments/gpu_check.sh          # PY=python OUT=runs/gpu_check; at most ~8 minutes on one H100
#
# Every item runs on synthetic data (lib/data.py: 5,120 random 32 px images), under the GPU's defaults
# (--precision auto: bf16 autocast, fp16 with the scaler on a GPU without bf16; the host reading the device
# every 20 steps), each with a time limit; it prints one PASS or FAIL line per item, a failing item does not
# stop the others, and the last line is the summary. Logs go to OUT/<item>.log, the benchmark's JSON lines
# to OUT/benchmark.jsonl.
#   train <partner>   one epoch of NPID+CLD, MoCo+CLD, BYOL+CLD, C2BIN and InfoMin+CLD, kNN monitor at its end
#   fp16, accumulate  NPID+CLD with --precision fp16 (the gradient scaler) and with --accumulate 2
#   resume            two epochs with epoch_1.pth kept, resumed from it: ends where the uninterrupted run
#                     ends (bit-exact only where every kernel is deterministic; the line says which)
#   eval_*            eval_knn.py, eval_linear.py (cached features and the frozen-backbone probe),
#                     eval_features.py (two runs, ranked), eval_clusters.py (C2BIN's heads)
#   grouping          CLD's k-means on the npid item's f_G in bf16 autocast against float32: no more labels
#                     may change than float32 with 1e-6 noise changes, or 1% (CUDA's scatter-adds sum in no
#                     fixed order); experiments/benchmark.py --parts grouping, the line shows the last shape
#   compile           NPID+CLD with --compile
#   nccl              two processes over NCCL with --gather-groups, when the machine has two GPUs
#   jpeg_folder       an image folder of JPEG photographs (experiments/jpeg_folder.py) for the folder items:
#   folder_views      the folder device path's views/s at 224 px, nvJPEG decoding included (target >= 10,000 on
#                     one H100), beside PIL's in 8 workers; nvJPEG's pixels against PIL's
#   folder_step       MoCo+CLD ResNet-50 at 224 px on the JPEG files: end to end within 10% of the step alone,
#                     no host sync in a step or in the folder path's batches
#   folder_resume     MoCo+CLD on the JPEG folder, two epochs, resumed from epoch_1.pth: ends where the
#                     uninterrupted run ends
#   benchmark         experiments/benchmark.py --imagenet: steps, data paths, host syncs per step (0 expected)
# Without a GPU it says so in one line and exits 2; CPU=1 runs the same items on the CPU (ResNet-20 at 8 px, K 16, small
# batches), which is how this script itself is checked.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu_check}
if [ "${CPU:-0}" = 1 ]; then
  ARCH=(--arch resnet20 --image-size 8 --batch-size 128 --clusters 16 --workers 0); LIMIT=${LIMIT:-900}; BENCH=(--parts quick --repeats 1)
  JPEGS=(--train 96 --val 32); FOLDER=(--folder-images 64 --folder-batch 32 --repeats 1 --workers 0)
  FOLDER_STEP=(--imagenet-batch 8 --steps 2 --repeats 1 --workers 0)
  FOLDER_RUN=(--arch resnet20 --image-size 32 --batch-size 32 --queue 64 --clusters 8 --workers 0)
elif $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  ARCH=(--batch-size 256 --workers 8); LIMIT=${LIMIT:-150}; BENCH=(--imagenet --steps 20 --repeats 2)
  JPEGS=(--train 1536 --val 256); FOLDER=(--folder-images 1024 --folder-batch 256 --repeats 2 --workers 8)
  FOLDER_STEP=(--imagenet-batch 128 --steps 10 --repeats 2 --workers 8)
  FOLDER_RUN=(--batch-size 256 --workers 8)
else
  echo "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False), nothing was run; CPU=1 runs the items on the CPU"
  exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT"
started=$SECONDS passed=0 failed=0

# item NAME COMMAND...: run it with a time limit, log to OUT/NAME.log, one PASS or FAIL line.
item() {
  local name=$1; shift
  local t0=$SECONDS
  if timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1; then
    passed=$((passed + 1))
    printf 'PASS  %-22s %4d s  %s\n' "$name" $((SECONDS - t0)) "$(summary "$name")"
  else
    local rc=$?
    failed=$((failed + 1))
    printf 'FAIL  %-22s %4d s  exit %d: %s\n' "$name" $((SECONDS - t0)) "$rc" \
      "$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-160)"
  fi
}

# summary NAME: the item's result in a few words (the last metrics line of a run, or the last JSON line).
summary() {
  if [ -f "$OUT/$1/metrics.jsonl" ]; then
    $PY -c "import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(f\"epoch {r['epoch']}: loss {r['loss']:.3f}, kNN {r.get('knn_top1') or 0:.1f}%, {r['images_per_s']:.0f} img/s, {r['skipped_steps']} skipped\")" "$OUT/$1/metrics.jsonl"
  else
    grep '^{' "$OUT/$1.log" | tail -n 1 | cut -c1-140
  fi
}

train() {  # train NAME ARGS...: train_cld.py on synthetic data into OUT/NAME
  local name=$1; shift
  item "$name" $PY train_cld.py --dataset synthetic "${ARCH[@]}" --epochs 1 --knn-every 1 "$@" --out "$OUT/$name"
}

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
train npid
train moco --moco --queue 4096
train byol --byol --lam 0
train c2bin --c2bin
train infomin --infomin --queue 4096
train fp16 --precision fp16
train accumulate --accumulate 2
item resume bash -c "$PY train_cld.py --dataset synthetic ${ARCH[*]} --epochs 2 --knn-every 0 --save-every 1 --out $OUT/whole \
  && $PY train_cld.py --dataset synthetic ${ARCH[*]} --epochs 2 --knn-every 0 --resume $OUT/whole/epoch_1.pth --out $OUT/resumed \
  && $PY experiments/same_state.py $OUT/whole/last.pth $OUT/resumed/last.pth"
item eval_knn $PY eval_knn.py --ckpt "$OUT/npid/last.pth"
item eval_linear_cached $PY eval_linear.py --ckpt "$OUT/npid/last.pth" --cached-features --epochs 5
item eval_linear $PY eval_linear.py --ckpt "$OUT/npid/last.pth" --epochs 1
item eval_features $PY eval_features.py --ckpt "$OUT/npid/last.pth" "$OUT/moco/last.pth" --selection-images 1024
item eval_clusters $PY eval_clusters.py --ckpt "$OUT/c2bin/last.pth"
item grouping bash -c "set -o pipefail; $PY experiments/benchmark.py --parts grouping --grouping-ckpt $OUT/npid/last.pth \
  --grouping-batches 5 | tee $OUT/grouping.jsonl && grep '\"part\": \"grouping\"' $OUT/grouping.jsonl \
  | $PY -c 'import json, sys; r = [json.loads(l) for l in sys.stdin]; \
      print(json.dumps({\"labels_changed_at_most\": {k: max(x[k] for x in r) for k in (\"before\", \"after\", \"bf16_features\", \"fp32_noise\")}})); \
      sys.exit(any(x[\"after\"] > max(0.01, x[\"fp32_noise\"]) for x in r))'"
train compile --compile
if [ "$($PY -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  item nccl $PY -m torch.distributed.run --standalone --nproc_per_node 2 train_cld.py --dataset synthetic "${ARCH[@]}" \
    --epochs 1 --knn-every 1 --gather-groups --out "$OUT/nccl"
else
  echo "SKIP  nccl                      fewer than two GPUs: the two-process NCCL run needs two"
fi
# The folder device path (lib/folder_device.py): workers read bytes, the GPU decodes (nvJPEG) and augments.
item jpeg_folder $PY experiments/jpeg_folder.py --out "$OUT/jpegs" "${JPEGS[@]}"
item folder_views bash -c "set -o pipefail; $PY experiments/benchmark.py --parts folder --folder-root $OUT/jpegs \
  ${FOLDER[*]} --targets | tee $OUT/folder.jsonl"
item folder_step bash -c "set -o pipefail; $PY experiments/benchmark.py --parts folder-step --folder-root $OUT/jpegs \
  ${FOLDER_STEP[*]} --targets | tee $OUT/folder_step.jsonl"
FOLDER_TRAIN="$PY train_cld.py --dataset imagefolder --data $OUT/jpegs --moco --data-path device ${FOLDER_RUN[*]} \
  --epochs 2 --knn-every 0"
item folder_resume bash -c "$FOLDER_TRAIN --save-every 1 --out $OUT/folder_whole \
  && $FOLDER_TRAIN --resume $OUT/folder_whole/epoch_1.pth --out $OUT/folder_resumed \
  && $PY experiments/same_state.py $OUT/folder_whole/last.pth $OUT/folder_resumed/last.pth"
item benchmark bash -c "$PY experiments/benchmark.py ${BENCH[*]} | tee $OUT/benchmark.jsonl"
echo "gpu_check: $passed passed, $failed failed in $((SECONDS - started)) s ($OUT)"
[ "$failed" = 0 ]
