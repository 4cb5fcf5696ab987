#!/usr/bin/env bash
# Installs the peer tools that `make bench` compares the pipeline against, each in its own scratch virtualenv
# (never in .venv): lm-evaluation-harness with its Hugging Face backend, into
#   $PIPELINE_LM_EVAL_VENV, else $PIPELINE_CACHE_DIR/peers/lm-eval (default ~/.cache/pipeline/peers/lm-eval), where
#   pipeline.benchpeers looks for it
# torch is pinned in the same pip command as lm-eval, to the version scripts/setup.sh installs (its CPU build on a
# machine without an NVIDIA GPU), so that lm-eval's dependencies cannot pull a CUDA build of several GB.
# Idempotent: a second run with the same versions returns at once. Needs the package index (pip), nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
LM_EVAL_VERSION=${LM_EVAL_VERSION:-0.4.13}
CACHE=${PIPELINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeline}
PEER=${PIPELINE_LM_EVAL_VENV:-$CACHE/peers/lm-eval}

has_nvidia_gpu() {
  { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; } || [ -e /proc/driver/nvidia/gpus ]
}
if has_nvidia_gpu; then torch_pin="torch==$TORCH_VERSION"; else torch_pin="torch==$TORCH_VERSION+cpu"; fi
# The transformers of .venv when there is one, so that the two tools differ in themselves, not in that library.
ours=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("transformers"))' 2>/dev/null || true)
transformers_pin=${ours:+transformers==$ours}

want="lm-eval $LM_EVAL_VERSION $torch_pin $transformers_pin"
if [ -f "$PEER/.peer-stamp" ] && [ "$(cat "$PEER/.peer-stamp")" = "$want" ] && [ -x "$PEER/bin/lm_eval" ]; then
  echo "bench-peers: $PEER already has $want"
  exit 0
fi

echo "bench-peers: installing $want into $PEER (a few minutes; about 1.5 GB)" >&2
[ -x "$PEER/bin/python" ] || "$PYTHON" -m venv "$PEER"
pip=("$PEER/bin/python" -m pip --disable-pip-version-check -q)
pins=("$torch_pin" "lm-eval[hf]==$LM_EVAL_VERSION" ${transformers_pin:+"$transformers_pin"})
"${pip[@]}" install "${pins[@]}" 2>/dev/null || "${pip[@]}" install "${pins[@]}" --extra-index-url "$TORCH_CPU_INDEX"

echo "$want" > "$PEER/.peer-stamp"
echo "bench-peers: done ($("$PEER/bin/python" -c 'import torch, lm_eval, transformers
print("lm-eval", lm_eval.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'))" >&2
