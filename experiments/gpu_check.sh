#!/usr/bin/env bash
# On a machine with a CUDA GPU: the GPU benchmark, then a short device-path training and its resume.
#
#   bash experiments/gpu_check.sh            # PY=python OUT=runs/gpu_check by default
#
# 1. experiments/benchmark.py --imagenet: CIFAR ResNet-18 at 32 px (batch 256) and ResNet-50 at 224 px
#    (batch 128), NPID+CLD and MoCo+CLD, step alone vs end to end on both data paths, with and without
#    --compile; the host synchronisations counted inside the step (CUDA's sync debug mode: 0 expected);
#    augmentation throughput; kNN over a 50k x 10k bank. JSON lines in OUT/benchmark.jsonl.
# 2. train_cld.py on the synthetic CIFAR-format data (5,120 random 32 px images), 2 epochs of 20 steps,
#    --data-path device (bf16 autocast, channels_last, host reads every 20 steps), then the same with
#    --compile, then the first run resumed from its epoch_1.pth; the end prints whether the resumed
#    last.pth equals the uninterrupted run's bit for bit (exact on CPU; on CUDA only where the kernels are
#    deterministic, which atomics-based ones such as index_put with accumulation are not).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu_check}
rm -rf "$OUT" && mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

$PY experiments/benchmark.py --imagenet | tee "$OUT/benchmark.jsonl"

COMMON=(--dataset synthetic --epochs 2 --batch-size 256 --knn-every 1 --data-path device --workers 4)
$PY train_cld.py "${COMMON[@]}" --save-every 1 --out "$OUT/device"
$PY train_cld.py "${COMMON[@]}" --compile --out "$OUT/compiled"
$PY train_cld.py "${COMMON[@]}" --resume "$OUT/device/epoch_1.pth" --out "$OUT/resumed"
$PY - "$OUT" <<'PY'
import json, sys, torch
out = sys.argv[1]
def state(run):
    ckpt = torch.load(f"{out}/{run}/last.pth", weights_only=True, map_location="cpu")
    return ckpt["model"], ckpt["memory"], ckpt["optimizer"]["state"]
def equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
for run in ("device", "compiled", "resumed"):
    for line in open(f"{out}/{run}/metrics.jsonl"):
        print(run, line.strip())
print(json.dumps({"resume_bit_exact": equal(state("device"), state("resumed"))}))
PY
