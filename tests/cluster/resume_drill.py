"""The resume drill shared by the fault tests: a job run as a second driver on the session's cluster, SIGKILLed by
`faults.kill_driver_in_round` after that round's client tasks and before its checkpoint, then resumed here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import ray
import yaml

from estuary.platform.checkpoint import Checkpointer
from estuary.platform.fault_drills import DRIVER_KILL_MARKER
from estuary.platform.runner import resume_experiment
from tests.conftest import REPO


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def killed_then_resumed(tmp_path: Path, job: dict[str, Any], strategy: str, kill_round: int) -> Path:
    """Run `job` (run id "killed") in a subprocess whose driver is SIGKILLed in `kill_round` of the method
    `strategy`, check that it died before that round's checkpoint, resume it in this process; its run folder."""
    job = {**job, "output": {**job["output"], "run_id": "killed"}, "faults": {"kill_driver_in_round": kill_round}}
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"}
    address = ray.get_runtime_context().gcs_address  # a second driver on the session's cluster
    cmd = [str(Path(sys.executable).parent / "estuary"), "run", str(path), "--address", address, "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL: no cleanup ran
    part = tmp_path / "runs" / "killed"
    assert (part / DRIVER_KILL_MARKER).exists()
    assert json.loads((part / "summary.json").read_text())["status"] == "running"
    assert Checkpointer(part).latest(strategy) == kill_round - 1  # the round died before its checkpoint
    assert any(r["round"] == kill_round for r in rows(part / "clients.jsonl"))  # ...after its client rows
    resume_experiment(part, show_progress=False)  # the marker keeps the drill from killing it again
    return part
