"""Pool sizing follows the resources of every node of a (fake, multi-node) cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.ray


def test_pool_size_from_nodes_with_logical_gpus(tiny_model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cluster.multinode_probe", str(tiny_model_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0].removeprefix("RESULT "))
    # 0.5 GPU per worker: node A (2 GPUs) → 4 workers, node B (1 GPU) → 2, head (no GPU) → 0.
    assert out["gpu_half"] == {"size": 6, "nodes": 2, "devices": ["cpu"]}  # logical GPUs, no CUDA here
    # 2 client_slot per worker: node A (4 slots) → 2, node B (2) → 1.
    assert out["custom_slot"] == {"size": 3, "nodes": 2}
