#!/usr/bin/env bash
# The README's analysis numbers on Fashion-MNIST (balanced 5k subset, ResNet-20 at 8x8, 8 epochs, CPU):
#   table3  NPID and NPID+CLD, seeds 0-2, then eval_features.py on the six checkpoints (the paper's Table 3);
#   sweep   lambda in {0, 0.25, 1, 3} x T_G in {0.1, 0.2, 0.5}, seed 0, ranked by the selection score (Fig. 7);
#   figures t-SNE, retrieval grid, similarity histograms and curves of NPID vs NPID+CLD (seed 0) into docs/analysis;
#   then the sweep's ranking once more with K = 50 for NMI(f, f').
# lambda = 0 trains no group branch, so T_G does not matter there: the sweep's lambda = 0 point is the seed-0
# NPID run, and its lambda = 1, T_G = 0.2 point (the paper's default) is the seed-0 NPID+CLD run of table3.
# At most $PARALLEL (default 2) jobs at a time, each single-threaded; one training takes about 1.5 minutes on a
# quiet core (three to four times that on a busy shared machine), one checkpoint's evaluation about 20 s.
# Finished runs are skipped. Usage: bash experiments/analysis_runs.sh [table3]   (table3: stop after it)
# Then: python experiments/analysis_tables.py runs/analysis   (the README's tables)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
PARALLEL=${PARALLEL:-2}
export OMP_NUM_THREADS=1
OUT=${OUT:-runs/analysis}
mkdir -p $OUT

FA=(--dataset fashion-mnist --data "$FMNIST" --arch resnet20 --image-size 8 --epochs "${EPOCHS:-8}" --warmup-epochs 1
    --knn-every 2 --workers 0 --subset runs/fmnist_5k.json)

fmnist_subset() {  # 500 training images per class, fixed by seed 0
  [ -f runs/fmnist_5k.json ] || $PY - "$FMNIST" <<'PY'
import sys
import numpy as np
from lib.data import load_dataset
from lib.subsets import write_subset
train = load_dataset("fashion-mnist", sys.argv[1], "train")
rng = np.random.RandomState(0)
keep = np.sort(np.concatenate([rng.permutation(np.where(train.targets == c)[0])[:500] for c in range(10)]))
write_subset("runs/fmnist_5k.json", keep, train.targets[keep], len(train), dataset="fashion-mnist", per_class=500, seed=0)
PY
}

train() {  # train NAME ARGS...: skip a finished run
  local name=$1; shift
  if [ ! -f "$OUT/$name.done" ]; then
    rm -rf "${OUT:?}/$name"
    /usr/bin/time -f "$name wall %e s" $PY train_cld.py "${FA[@]}" "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1
    touch "$OUT/$name.done"
  fi
  echo "$name $(tail -n 1 "$OUT/$name/metrics.jsonl")"
}

throttle() {  # wait until fewer than $PARALLEL background jobs run
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
}

TABLE3=(npid_s0 npid_s1 npid_s2 cld_s0 cld_s1 cld_s2)
SWEEP=(npid_s0)
for lam in 0.25 1 3; do for t in 0.1 0.2 0.5; do
  if [ $lam = 1 ] && [ $t = 0.2 ]; then SWEEP+=(cld_s0); else SWEEP+=(lam${lam}_t$t); fi
done; done

train_named() {  # npid_sS, cld_sS or lamL_tT -> its flags
  case $1 in
    npid_s*) train "$1" --lam 0 --seed "${1#npid_s}" ;;
    cld_s*) train "$1" --seed "${1#cld_s}" ;;
    *) local lam=${1#lam}; lam=${lam%_t*}; train "$1" --lam "$lam" --cld-t "${1#*_t}" --seed 0 ;;
  esac
}

evaluate() {  # evaluate NAME CHECKPOINT-NAMES... [-- extra flags]: JSON lines to $OUT/NAME.jsonl, table to NAME.txt
  local name=$1; shift
  local runs=(); while [ $# -gt 0 ] && [ "$1" != -- ]; do runs+=("$OUT/$1/last.pth"); shift; done
  [ $# -gt 0 ] && shift
  $PY eval_features.py --ckpt "${runs[@]}" --workers 0 "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.txt"
  echo "== $name"; cat "$OUT/$name.txt"
}

fmnist_subset
# Table 3 first: it matters most. Its evaluation then shares the cores with the sweep's trainings.
for name in "${TABLE3[@]}"; do throttle; train_named "$name" & done
wait
throttle; evaluate table3 "${TABLE3[@]}" &
[ "${1:-all}" = table3 ] && { wait; exit 0; }
for name in "${SWEEP[@]}"; do [ -f "$OUT/$name.done" ] || { throttle; train_named "$name" & }; done
wait
throttle; evaluate sweep "${SWEEP[@]}" &
FIGURES=${FIGURES:-docs/analysis}; mkdir -p "$FIGURES"
throttle; evaluate figures npid_s0 cld_s0 -- --names NPID NPID+CLD --figures "$FIGURES" &
# The same ranking with another K for NMI(f, f'): 50 groups instead of the number of classes.
throttle; evaluate sweep_k50 "${SWEEP[@]}" -- --selection-clusters 50 &
wait
