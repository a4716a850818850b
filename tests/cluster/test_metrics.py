"""Dashboard metrics: a run's ray.util.metrics series reach the node's Prometheus export, tagged."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

from estuary.platform.config import load_config
from estuary.platform.runner import run_experiment
from tests.conftest import tiny_job

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_run_metrics_in_prometheus_export(tmp_path: Path, tiny_model_dir: Path) -> None:
    job = tiny_job(tmp_path, tiny_model_dir, baselines=[], rounds=1, clients={"count": 2},
                   output={"dir": str(tmp_path / "runs"), "run_id": "metrics-run", "plots": False})
    run_experiment(load_config(base=job), show_progress=False)
    port = int(os.environ["ESTUARY_TEST_METRICS_PORT"])
    # Ray prefixes application metrics with "ray_" in its Prometheus export.
    wanted = ["ray_estuary_clients_finished_total{", "ray_estuary_round{", "ray_estuary_client_loss{"]
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = scrape(port)
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    lines = [ln for ln in text.splitlines() if ln.startswith("ray_estuary_") and 'run="metrics-run"' in ln]
    finished = [ln for ln in lines if ln.startswith(wanted[0]) and 'strategy="standalone"' in ln]
    assert finished and float(finished[0].rsplit(" ", 1)[1]) == 2.0, lines  # both clients, counted once
    assert any(ln.startswith(wanted[2]) and 'client="c001"' in ln for ln in lines), lines
    assert any(ln.startswith(wanted[1]) for ln in lines), lines
