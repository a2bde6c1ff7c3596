#!/usr/bin/env bash
# The 5- and 12-epoch tables of docs/results.md: the three variants, one after another, same settings.
# Usage: bash bench/pascal_person_part.sh [EPOCHS] [OUT_PREFIX]   (defaults: 5, runs/pascal/full)
# Needs SELAB_PASCAL_ROOT: a PASCAL-Person-Part copy (docs/data.md). Appends "<variant> rc=.. seconds=.." to
# OUT_PREFIX-times.txt; each run folder holds metrics.json (final per-class IoU, mean IoU, pixel accuracy).
set -u
cd "$(dirname "$0")/.."
epochs=${1:-5}
prefix=${2:-runs/pascal/full}
root=${SELAB_PASCAL_ROOT:-}
if [ -z "$root" ] || [ ! -f "$root/train_id.txt" ]; then
  echo "pascal_person_part.sh: no PASCAL-Person-Part at SELAB_PASCAL_ROOT='$root' (train_id.txt missing)" >&2
  exit 2
fi
mkdir -p "$(dirname "$prefix")"
for variant in cnn graph_lstm se_lstm; do
  start=$(date +%s)
  .venv/bin/selab train --variant "$variant" --dataset pascal_person_part --data-root "$root" \
      --epochs "$epochs" --image-size 320 --backbone efficientnet_lite0 --cache-dir runs/pascal/cache --seed 0 \
      --out "$prefix-$variant" > "$prefix-$variant.log" 2>&1
  echo "$variant rc=$? seconds=$(( $(date +%s) - start ))" | tee -a "$prefix-times.txt"
done
