#!/usr/bin/env bash
# Set up Estuary on a CPU host: a virtual environment from the verified lock file, the package in
# editable mode, and the offline models converted once into the model cache ($ESTUARY_CACHE).
# Idempotent: a second run checks a stamp and the model manifests and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ESTUARY_VENV:-.venv}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp="$VENV/.estuary-setup"
want=$(cat requirements/cpu.lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the pinned CPU stack (a few minutes the first time; pip's cache makes it faster)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements/cpu.lock.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e . 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$VENV/bin/python" -c "import torch, ray, transformers, peft, opacus, estuary" \
    || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# Models: converted once into the cache, then only their manifests are checked.
"$VENV/bin/estuary" models prepare ${ESTUARY_MODELS:-smollm2-135m qwen2.5-0.5b}
