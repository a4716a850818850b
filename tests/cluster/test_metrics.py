"""Dashboard metrics: a run's ray.util.metrics series reach the node's Prometheus export, tagged."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment
from tests.conftest import tiny_job

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_run_metrics_in_prometheus_export(tmp_path: Path, tiny_model_dir: Path) -> None:
    from estuary.platform.metrics import MeteredLLM, RunMetrics

    job = tiny_job(tmp_path, tiny_model_dir, method="dp_standalone", baselines=[], rounds=1, clients={"count": 2},
                   privacy={"target_epsilon": 3.0, "delta": 1e-3},
                   evaluation={"server": False, "global_test": False, "batch_size": 16},
                   output={"dir": str(tmp_path / "runs"), "run_id": "metrics-run", "plots": False})
    run_experiment(load_config(base=job), show_progress=False)
    # The server LLM handle a run hands its strategies is metered the same way (Serve itself is too slow here).
    fake = type("LLM", (), {"generate": lambda self, prompts, params=None: [
        type("C", (), {"output_tokens": 40})() for _ in prompts]})()
    MeteredLLM(fake, RunMetrics("metrics-run").on_generate).generate(["a", "b"])
    port = int(os.environ["ESTUARY_TEST_METRICS_PORT"])
    # Ray prefixes application metrics with "ray_" in its Prometheus export.
    wanted = ["ray_estuary_clients_finished_total{", "ray_estuary_round{", "ray_estuary_client_loss{",
              "ray_estuary_client_epsilon{", "ray_estuary_loss{", "ray_estuary_server_generated_tokens_per_second{",
              "ray_estuary_server_generated_tokens_total{"]
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = scrape(port)
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    lines = [ln for ln in text.splitlines() if ln.startswith("ray_estuary_") and 'run="metrics-run"' in ln]

    def find(prefix: str, *tags: str) -> list[float]:
        return [float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(prefix) and all(t in ln for t in tags)]

    finished = find(wanted[0], 'strategy="dp_standalone"')
    assert finished == [2.0], lines  # both clients, counted once
    assert find(wanted[2], 'client="c001"'), lines
    assert find(wanted[1]), lines
    eps = find(wanted[3], 'client="c000"') + find(wanted[3], 'client="c001"')
    assert len(eps) == 2 and all(0 < e <= 3.0 for e in eps), lines  # ε per client, within the target
    assert find(wanted[4], 'strategy="dp_standalone"', 'phase="client/train"'), lines  # loss per phase
    assert find(wanted[5]) and find(wanted[6]) == [80.0], lines  # generated tokens/s and total
