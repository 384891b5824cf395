#!/usr/bin/env bash
# The README's small comparisons, each arm trained once per seed (default 0 1 2), then summarised by
# experiments/summarise.py into experiments/results.md and experiments/results.jsonl.
#
# Usage: bash experiments/seeds.sh [block ...]
#   blocks: quick fmnist fmnist-lt fmnist-hc digits-moco gather fmnist-moco datapath   (default: all, in that order)
# Environment: PY (python), RUNS (run folders, default runs/), SEEDS (default "0 1 2"),
#   JOBS (trainings at once, default 2; the two-process gather block always runs one at a time),
#   FMNIST (Fashion-MNIST folder), OMP_NUM_THREADS (default 1).
#
# Every run writes RUNS/NAME/ (config.json, metrics.jsonl, last.pth), RUNS/NAME.cmd (its command line),
# RUNS/NAME.wall (wall seconds), RUNS/NAME.log, and, where a block evaluates with eval_knn.py,
# RUNS/NAME.knn.json. A finished run (RUNS/NAME.done) is not trained again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-0 1 2}
JOBS=${JOBS:-2}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUNS"

# run_one NAME LAUNCHER...: train (unless done), timing the whole command; LAUNCHER is the command up to
# the script's arguments, and --out RUNS/NAME is appended.
run_one() {
  local name=$1; shift
  [ -f "$RUNS/$name.done" ] && return 0
  rm -rf "${RUNS:?}/$name"
  echo "$* --out $RUNS/$name" > "$RUNS/$name.cmd"
  if /usr/bin/time -f "%e" -o "$RUNS/$name.wall" "$@" --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1; then
    touch "$RUNS/$name.done"
    echo "$name $(cat "$RUNS/$name.wall") s $(tail -n 1 "$RUNS/$name/metrics.jsonl")"
  else
    echo "$name FAILED, see $RUNS/$name.log" >&2
  fi
}

# train NAME ARGS...: one single-process run of train_cld.py, in the background, at most JOBS at once.
train() {
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  local name=$1; shift
  run_one "$name" "$PY" train_cld.py "$@" &
}

# knn NAME: eval_knn.py on a finished run (many/medium/few-shot on a subset run).
knn() {
  [ -f "$RUNS/$1.done" ] || return 0
  [ -s "$RUNS/$1.knn.json" ] || $PY eval_knn.py --ckpt "$RUNS/$1/last.pth" --workers 0 | tail -n 1 > "$RUNS/$1.knn.json"
  echo "$1 $(cat "$RUNS/$1.knn.json")"
}

fmnist_subset() {  # balanced Fashion-MNIST subset: 1,000 training images per class, fixed by seed 0
  [ -f "$RUNS/fmnist_10k.json" ] || $PY - "$FMNIST" "$RUNS/fmnist_10k.json" <<'PY'
import sys
import numpy as np
from lib.data import load_dataset
from lib.subsets import write_subset
train = load_dataset("fashion-mnist", sys.argv[1], "train")
rng = np.random.RandomState(0)
keep = np.sort(np.concatenate([rng.permutation(np.where(train.targets == c)[0])[:1000] for c in range(10)]))
write_subset(sys.argv[2], keep, train.targets[keep], len(train), dataset="fashion-mnist", per_class=1000, seed=0)
PY
}

# Both arms for every seed: NAME_cld_sS with ARGS, NAME_base_sS with ARGS --lam 0.
arms() {
  local name=$1; shift
  for s in $SEEDS; do
    train "${name}_cld_s$s" "$@" --seed "$s"
    train "${name}_base_s$s" "$@" --seed "$s" --lam 0
  done
}

# (a) The README's quick start as written: NPID+CLD vs NPID on digits, ResNet-20, 30 epochs, batch 128, K 10.
block_quick() {
  arms quick --dataset digits --arch resnet20 --epochs 30 --batch-size 128 --clusters 10 --workers 0 --knn-every 10
  wait
}

# Fashion-MNIST at 8x8 with ResNet-20 (to fit a 2-core CPU); the CIFAR-10 NPID+CLD defaults otherwise.
SMALL8=(--data "$FMNIST" --arch resnet20 --image-size 8 --warmup-epochs 1 --workers 0)
FM=(--dataset fashion-mnist "${SMALL8[@]}")

# (b) balanced 10k-image subset, NPID vs NPID+CLD.
FM_EPOCHS=${FM_EPOCHS:-5}
block_fmnist() {
  fmnist_subset
  arms fmnist "${FM[@]}" --epochs "$FM_EPOCHS" --knn-every 0 --subset "$RUNS/fmnist_10k.json"
  wait
}

# (c) Fashion-MNIST-LT, ratio 100 (14,886 images), NPID vs NPID+CLD; eval_knn.py adds many/medium/few-shot.
LT_EPOCHS=${LT_EPOCHS:-4}
block_fmnist_lt() {
  [ -f "$RUNS/fmnist_lt100.json" ] || $PY make_longtail.py --dataset fashion-mnist --data "$FMNIST" --ratio 100 --out "$RUNS/fmnist_lt100.json"
  arms fmnistlt "${FM[@]}" --epochs "$LT_EPOCHS" --knn-every 0 --subset "$RUNS/fmnist_lt100.json"
  wait
  for s in $SEEDS; do knn "fmnistlt_cld_s$s"; knn "fmnistlt_base_s$s"; done
}

# (d) fashion-mnist-hc (20,000 views of 2,000 base images), NPID vs NPID+CLD; kNN on the real test set.
HC_EPOCHS=${HC_EPOCHS:-3}
block_fmnist_hc() {
  arms fmnisthc --dataset fashion-mnist-hc "${SMALL8[@]}" --epochs "$HC_EPOCHS" --knn-every 0
  wait
}

# (e) MoCo vs MoCo+CLD on digits: 30 epochs, batch 128, K 10, queue 1024, key-encoder momentum 0.99 (README,
# "Short runs"); the CIFAR-10 MoCo+CLD recipe otherwise.
block_digits_moco() {
  arms digitsmoco --dataset digits --arch resnet20 --epochs 30 --batch-size 128 --clusters 10 --queue 1024 \
    --moco-momentum 0.99 --workers 0 --knn-every 10 --moco
  wait
}

# (e') MoCo vs MoCo+CLD on the Fashion-MNIST 10k subset: K 10, queue 4096 (the CIFAR-100 MoCo queue),
# key-encoder momentum 0.99; the CIFAR-10 MoCo+CLD recipe otherwise.
FMMOCO_EPOCHS=${FMMOCO_EPOCHS:-3}
block_fmnist_moco() {
  fmnist_subset
  arms fmnistmoco "${FM[@]}" --epochs "$FMMOCO_EPOCHS" --knn-every 0 --subset "$RUNS/fmnist_10k.json" \
    --moco --clusters 10 --queue 4096 --moco-momentum 0.99
  wait
}

# Two CPU processes (gloo), digits MoCo+CLD, 10 epochs, 64 images per process, K 64: per process every image
# is its own group; --gather-groups clusters all 128. Both use the 2 cores, so they run one at a time.
block_gather() {
  wait
  local common=(--dataset digits --arch resnet20 --epochs 10 --batch-size 128 --clusters 64 --queue 1024
                --workers 0 --knn-every 10 --moco)
  for s in $SEEDS; do
    run_one "gather_perproc_s$s" "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 train_cld.py "${common[@]}" --seed "$s"
    run_one "gather_gathered_s$s" "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 train_cld.py "${common[@]}" --seed "$s" --gather-groups
  done
}

# (g) The two data paths, --data-path loader (PIL in a DataLoader) vs device (lib/batch_augment.py), NPID+CLD
# on the quick start (a) and on the Fashion-MNIST 10k block (b). Each seed's two runs start together and the
# next pair waits for both, so that the two paths share the machine alike (the loader run ends alone).
block_datapath() {
  fmnist_subset
  for s in $SEEDS; do
    for path in loader device; do
      train "dpquick_${path}_s$s" --dataset digits --arch resnet20 --epochs 30 --batch-size 128 --clusters 10 \
        --workers 0 --knn-every 10 --data-path "$path" --seed "$s"
    done
    wait
  done
  for s in $SEEDS; do
    for path in loader device; do
      train "dpfmnist_${path}_s$s" "${FM[@]}" --epochs "$FM_EPOCHS" --knn-every 0 --subset "$RUNS/fmnist_10k.json" \
        --data-path "$path" --seed "$s"
    done
    wait
  done
}

for block in ${@:-quick fmnist fmnist-lt fmnist-hc digits-moco gather fmnist-moco datapath}; do "block_${block//-/_}"; done
wait
$PY experiments/summarise.py --runs "$RUNS"
