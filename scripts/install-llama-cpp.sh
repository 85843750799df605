#!/usr/bin/env bash
# Builds llama-cpp-python from its source package (there is no binary wheel for every platform) into the venv,
# and keeps llama.cpp's GGUF converter (convert_hf_to_gguf.py, conversion/, gguf-py/) from that same package in
# <venv>/share/slimtune/llama.cpp, where slimtune's GGUFExport pass finds it. Run by scripts/setup.sh for the
# `gguf` extra (`SLIMTUNE_EXTRAS=gguf make setup`, and always by `make test`); skipped when already done.
#
# CPU options: x86 features are read from /proc/cpuinfo and switched on one by one (AVX, AVX2, FMA, F16C, BMI2)
# instead of -march=native, because a native build (or one with AVX-512 / AMX on) crashed with a segfault on
# its first generation on this project's Xeon machines (2026-11-29). AVX-512 and AMX stay off for that reason.
# Set CMAKE_ARGS yourself to override; other platforms (ARM, macOS) get llama.cpp's own defaults.
# The build took 1,174 s on 2 cores shared with other work (2026-11-29; CMAKE_BUILD_PARALLEL_LEVEL: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VENV:-.venv}}
SPEC=${LLAMA_CPP_SPEC:-llama-cpp-python==0.3.36}
PYBIN="$VENV/bin/python"
DEST="$VENV/share/slimtune/llama.cpp"

if "$PYBIN" -c "import llama_cpp" 2>/dev/null && [ -f "$DEST/convert_hf_to_gguf.py" ] && \
   [ "$(cat "$DEST/SPEC" 2>/dev/null)" = "$SPEC" ]; then
  exit 0
fi

if [ -z "${CMAKE_ARGS:-}" ] && [ -r /proc/cpuinfo ] && [ "$(uname -m)" = x86_64 ]; then
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  on() { case " $flags " in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=$(on avx) -DGGML_AVX2=$(on avx2) -DGGML_FMA=$(on fma)"
  CMAKE_ARGS="$CMAKE_ARGS -DGGML_F16C=$(on f16c) -DGGML_BMI2=$(on bmi2)"
  CMAKE_ARGS="$CMAKE_ARGS -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"
fi
export CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAMA_CURL=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYBIN" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: --no-cache-dir "$SPEC" -d "$work"
sdist=$(ls "$work"/llama_cpp_python-*.tar.gz)
# the wheel is kept per (version, CPU options, Python) in the user's cache, so a new venv on the same machine
# does not build again; pip's own cache is bypassed (it would reuse a wheel built with other CPU options)
tag=$(printf '%s\n%s\n%s' "$SPEC" "$CMAKE_ARGS" "$("$PYBIN" -c 'import sys; print(sys.version)')" | sha256sum | cut -c1-16)
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/slimtune/wheels/llama-cpp-$tag"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "setup: building $SPEC from source (10-20 minutes on 2 cores; CMAKE_ARGS=$CMAKE_ARGS)"
  start=$(date +%s)
  "$PYBIN" -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-deps "$sdist" -w "$work/wheel"
  mkdir -p "$wheels" && mv "$work"/wheel/llama_cpp_python-*.whl "$wheels/"
  echo "setup: llama-cpp-python built in $(( $(date +%s) - start )) s (wheel kept in $wheels)"
fi
"$PYBIN" -m pip install -q --disable-pip-version-check --no-cache-dir "$wheels"/llama_cpp_python-*.whl

"$PYBIN" - "$sdist" "$DEST" "$SPEC" <<'EOF'
import shutil, sys, tarfile
from pathlib import Path

sdist, dest, spec = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
tmp = dest.with_name(dest.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
with tarfile.open(sdist) as tar:
    for member in tar.getmembers():
        _, _, inner = member.name.partition("/vendor/llama.cpp/")
        if inner and inner.startswith(keep) and (member.isfile() or member.isdir()):
            member.name = inner
            tar.extract(member, tmp, **safe)
(tmp / "SPEC").write_text(spec)
(tmp / "VERSION").write_text(Path(sdist).name.removesuffix(".tar.gz") + "\n")
shutil.rmtree(dest, ignore_errors=True)
tmp.rename(dest)
print(f"setup: llama.cpp's GGUF converter kept in {dest}")
EOF
