#!/usr/bin/env bash
# Look at a finished run as a user would: TensorBoard on <run>/tensorboard, its scalars read back through
# TensorBoard's own HTTP API, and (with chromium installed) a headless screenshot of the Time Series tab.
#   scripts/check_tensorboard.sh runs/<run-id> [screenshot.png]
# TENSORBOARD names the tensorboard command (default: `tensorboard` on PATH; `pip install tensorboard`, e.g. in a
# small venv of its own); PORT the port (default 6006). Exits non-zero when a strategy has no scalars.
set -euo pipefail
run_dir=${1:?usage: $0 RUN_DIR [SCREENSHOT.png]}
shot=${2:-}
port=${PORT:-6006}
tb=${TENSORBOARD:-tensorboard}
url="http://127.0.0.1:${port}"

"$tb" --logdir "$run_dir/tensorboard" --host 127.0.0.1 --port "$port" >"${TMPDIR:-/tmp}/tensorboard-$port.log" 2>&1 &
tb_pid=$!
trap 'kill "$tb_pid" 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "$url/data/runs" >/dev/null && break; sleep 1; done

status=0
for folder in "$run_dir"/tensorboard/*/; do
  run=$(basename "$folder")
  tags=$(curl -sf "$url/data/plugin/scalars/tags" | python3 -c "import json,sys; print(len(json.load(sys.stdin).get('$run', {})))")
  steps=$(curl -sf "$url/data/plugin/scalars/scalars?run=$run&tag=time%2Fround_s" | python3 -c \
    "import json,sys; print([step for _, step, _ in json.load(sys.stdin)])" || echo "none")
  echo "$run: $tags scalar tags; rounds (steps of time/round_s): $steps"
  [ "$tags" -gt 0 ] || status=1
done

if [ -n "$shot" ]; then
  # forceSVG: charts drawn as SVG (the default WebGL worker is often not painted yet in a headless shot)
  filter="accuracy%2Fmean%7Ctrain%2Floss%2Fmean%7Ctime%2Fround"
  chromium --headless --no-sandbox --hide-scrollbars --window-size=1400,900 --virtual-time-budget=15000 \
    --screenshot="$shot" "$url/?forceSVG=true&darkMode=false&smoothing=0&tagFilter=$filter#timeseries" 2>/dev/null
  echo "screenshot: $shot"
fi
exit "$status"
