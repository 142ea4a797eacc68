#!/usr/bin/env bash
# The GPU validation of issue 18 in one command, for a bare GPU machine with no network:
# torch, transformers and nvidia-ml-py from the machine; llem's other dependencies from
# wheels brought along (`make gpu-check-wheels PYVER=3.12` puts them in build/gpu-wheels,
# which travels with the tree), installed into a private folder, never into the system.
# Without a GPU it runs the CPU part (the same script, GPU checks reported as skipped).
#
#   bash benchmarks/gpu_check.sh OUT_DIR [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--quick]}"
shift
PY="${PYTHON:-python3}"
deps="$(mktemp -d)"
trap 'rm -rf "$deps"' EXIT
if [[ -d build/gpu-wheels ]] && ls build/gpu-wheels/*.whl >/dev/null 2>&1; then
  # only what the machine lacks: a package it already has is not replaced
  missing=()
  for whl in build/gpu-wheels/*.whl; do
    dist="$(basename "$whl" | cut -d- -f1)"
    "$PY" -c "import importlib.metadata as m; m.version('$dist')" 2>/dev/null || missing+=("$whl")
  done
  if (( ${#missing[@]} )); then
    "$PY" -m pip install -q --no-deps --no-index --target "$deps" "${missing[@]}"
  fi
fi
export PYTHONPATH="$PWD:$deps${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
