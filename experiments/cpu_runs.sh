#!/usr/bin/env bash
# The small CPU comparisons quoted in the README, in the order they matter. Each writes a run folder
# under runs/ and prints the final kNN line. Budgets are stated per block; nothing here needs a GPU.
# Usage: bash experiments/cpu_runs.sh [block ...]   (blocks: fmnist digits-moco gather fmnist-lt fmnist-moco)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
mkdir -p runs

train() {  # train NAME ARGS...: skip a finished run, otherwise train and print its final kNN
  local name=$1; shift
  if [ ! -f "runs/$name.done" ]; then
    rm -rf "runs/$name"
    /usr/bin/time -f "$name wall %e s" $PY train_cld.py "$@" --out "runs/$name" > "runs/$name.log" 2>&1
    touch "runs/$name.done"
  fi
  echo "$name $(tail -n 1 "runs/$name/metrics.jsonl")"
}

fmnist_subset() {  # 1,000 training images per class, fixed by seed 0
  [ -f runs/fmnist_10k.json ] || $PY - "$FMNIST" <<'PY'
import sys
import numpy as np
from lib.data import load_dataset, write_subset
train = load_dataset("fashion-mnist", sys.argv[1], "train")
rng = np.random.RandomState(0)
keep = np.sort(np.concatenate([rng.permutation(np.where(train.targets == c)[0])[:1000] for c in range(10)]))
write_subset("runs/fmnist_10k.json", keep, train.targets[keep], len(train), dataset="fashion-mnist", per_class=1000, seed=0)
PY
}

# Fashion-MNIST, balanced 10k-image subset, ResNet-20 at 8x8 (to fit a 2-core CPU), 10 epochs, the CIFAR-10 NPID+CLD defaults otherwise.
FM=(--dataset fashion-mnist --data "$FMNIST" --arch resnet20 --image-size 8 --epochs 10 --warmup-epochs 1 --knn-every 5 --workers 0)
# The long-tail and MoCo comparisons below use 5 of those 10 epochs, to fit a shared 2-core machine.
FM5=("${FM[@]}" --epochs 5)
block_fmnist() {
  fmnist_subset
  train fmnist_cld "${FM[@]}" --subset runs/fmnist_10k.json
  train fmnist_npid "${FM[@]}" --subset runs/fmnist_10k.json --lam 0
}

# digits, ResNet-20, 30 epochs, batch 128, K 10, queue 1024: MoCo vs MoCo+CLD (CIFAR-10 MoCo recipe otherwise).
DG=(--dataset digits --arch resnet20 --epochs 30 --batch-size 128 --clusters 10 --queue 1024 --workers 0 --knn-every 10 --moco)
block_digits_moco() {
  train digits_mococld "${DG[@]}"
  train digits_moco "${DG[@]}" --lam 0
}

# Two CPU processes (gloo), digits MoCo+CLD, 10 epochs, 64 images per process, K 64: per-process grouping
# puts every image in its own group, --gather-groups clusters all 128.
block_gather() {
  local common=(--dataset digits --arch resnet20 --epochs 10 --batch-size 128 --clusters 64 --queue 1024 --workers 0 --knn-every 10 --moco)
  for mode in per-process gathered; do
    local extra=(); [ $mode = gathered ] && extra=(--gather-groups)
    if [ ! -f "runs/digits_2proc_$mode.done" ]; then
      rm -rf "runs/digits_2proc_$mode"
      OMP_NUM_THREADS=1 /usr/bin/time -f "digits_2proc_$mode wall %e s" $PY -m torch.distributed.run --standalone --nproc_per_node 2 \
        train_cld.py "${common[@]}" "${extra[@]}" --out "runs/digits_2proc_$mode" > "runs/digits_2proc_$mode.log" 2>&1
      touch "runs/digits_2proc_$mode.done"
    fi
    echo "digits_2proc_$mode $(tail -n 1 "runs/digits_2proc_$mode/metrics.jsonl")"
  done
}

# Fashion-MNIST-LT (ratio 100, 14,886 images), ResNet-20 at 8x8, 5 epochs.
block_fmnist_lt() {
  [ -f runs/fmnist_lt100.json ] || $PY make_longtail.py --dataset fashion-mnist --data "$FMNIST" --ratio 100 --out runs/fmnist_lt100.json
  train fmnistlt_cld "${FM5[@]}" --subset runs/fmnist_lt100.json
  train fmnistlt_npid "${FM5[@]}" --subset runs/fmnist_lt100.json --lam 0
  for run in fmnistlt_cld fmnistlt_npid; do echo "$run $($PY eval_knn.py --ckpt runs/$run/last.pth --workers 0)"; done
}

# Fashion-MNIST 10k subset with MoCo, 5 epochs: K 10, queue 4096 (the CIFAR-100 MoCo queue) and key-encoder
# momentum 0.99 (at 0.999 the key encoder barely leaves its initialisation in 195 steps); otherwise the CIFAR-10
# MoCo recipe.
block_fmnist_moco() {
  fmnist_subset
  train fmnist_mococld "${FM5[@]}" --subset runs/fmnist_10k.json --moco --clusters 10 --queue 4096 --moco-momentum 0.99
  train fmnist_moco "${FM5[@]}" --subset runs/fmnist_10k.json --moco --clusters 10 --queue 4096 --moco-momentum 0.99 --lam 0
}

for block in "${@:-fmnist digits-moco gather fmnist-lt fmnist-moco}"; do
  for b in $block; do "block_${b//-/_}"; done
done
