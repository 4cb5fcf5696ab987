#!/bin/bash
# Submit the whole chain (generate array -> judge array -> report) with the checkout's virtualenv.
#   slurm/submit.sh [--dry-run] [hydra overrides ...]
#   slurm/submit.sh --dry-run judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
args=()
for a in "$@"; do
  if [ "$a" = "--dry-run" ]; then args+=("slurm.dry_run=true"); else args+=("$a"); fi
done
exec "${PIPELINE_PYTHON:-$here/.venv/bin/python}" -m pipeline stage=submit "${args[@]}"
