#!/usr/bin/env bash
# Train the `gpu` recipe on a lent GPU machine that has no internet and no medmnist, in a few short calls.
#
# The training split travels as a lossless pack (`python -m ddpm pack-data --out gpu_pack --shard-mb 40`),
# one shard per call, into a folder that outlives the calls while the machine stays warm ($DATA):
#
#   bash bench/gpu_session.sh stage gpu_pack/pathmnist_train-00000-of-00003.npz   # + speed: throughput table
#   bash bench/gpu_session.sh stage gpu_pack/pathmnist_train-00001-of-00003.npz
#   bash bench/gpu_session.sh stage gpu_pack/pathmnist_train-00002-of-00003.npz
#   bash bench/gpu_session.sh train STEPS MINUTES [--compile] [more `ddpm train` options]
#
# `train` trains on every shard staged so far, writes the run into $OUT/run (checkpoints every minute, so a
# call cut short still returns the last one) and stops, saved, after MINUTES. REHEARSE=1 runs it on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/root/data}
OUT=${OUT:-/tmp/gpu_out}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1  # no internet there: the init weights come from checkpoints/

case "${1:-}" in
  stage)
    shift
    mkdir -p "$DATA"
    for shard in "$@"; do cp "$shard" "$DATA/"; done
    cp gpu_pack/pathmnist_train_pack.json "$DATA/"
    ls -l "$DATA"
    ;;
  speed)
    shift
    python3 bench/gpu_speed.py --out "$OUT" "$@"
    ;;
  train)
    steps=$2 minutes=$3
    shift 3
    device=cuda
    [[ "${REHEARSE:-0}" == 1 ]] && device=cpu
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
    python3 -m ddpm train --preset gpu --data-dir "$DATA" --device "$device" --init-from checkpoints/default \
      --steps "$steps" --max-minutes "$minutes" --checkpoint-every 60 --out "$OUT/run" "$@"
    ls -l "$OUT/run"
    ;;
  *)
    echo "usage: $0 stage SHARD... | speed [gpu_speed.py options] | train STEPS MINUTES [ddpm train options]" >&2
    exit 2
    ;;
esac
