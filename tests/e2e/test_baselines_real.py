"""End to end with the real SmolLM2 clients (and Qwen server) on SST-2, through `estuary run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estuary.models import is_prepared
from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("ray_session")]

REPO = Path(__file__).resolve().parents[2]


def real_job(tmp_path: Path, **over: object) -> dict:
    job = {
        "name": "e2e",
        "method": "standalone",
        "baselines": ["zero_shot"],
        "rounds": 1,
        "seed": 0,
        "data": {"task": "sst2", "partition": "iid", "train_size": 1000, "test_size": 200, "client_eval_max": 20},
        "clients": {"count": 2, "pool_size": 2},
        "training": {"steps": 30, "batch_size": 8, "lr": 1e-3, "max_length": 80},
        "evaluation": {"server": False, "batch_size": 32},
        "output": {"dir": str(tmp_path / "runs"), "run_id": "e2e"},
    }
    job.update(over)
    return job


@pytest.mark.skipif(not is_prepared("smollm2-135m"), reason="run `estuary models prepare smollm2-135m` first")
def test_standalone_lora_beats_zero_shot_on_sst2(tmp_path: Path) -> None:
    run_dir = run_experiment(load_config(base=real_job(tmp_path)), show_progress=False)
    s = json.loads((run_dir / "summary.json").read_text())["strategies"]
    zero = s["zero_shot"]["metrics"]["client/test/accuracy/mean"]
    trained = s["standalone"]["metrics"]["client/test/accuracy/mean"]
    # Paired on the same 200 test sentences, so only training noise matters: its spread across seeds
    # was ≤ 0.01 (0.89–0.895 over seeds 0–2 in tests/e2e/test_slm_real.py; clients here 0.865/0.875),
    # and the gain measured here was +0.04 (0.83 → 0.87).
    assert trained >= zero + 0.025, (zero, trained)
    assert s["standalone"]["metrics"]["client/test/loss/mean"] < s["zero_shot"]["metrics"]["client/test/loss/mean"]


@pytest.mark.skipif(not is_prepared("qwen2.5-0.5b"), reason="run `estuary models prepare qwen2.5-0.5b` first")
def test_zero_shot_evaluates_the_server_llm(tmp_path: Path) -> None:
    job = real_job(tmp_path, method="zero_shot", baselines=[],
                   data={"task": "sst2", "partition": "iid", "train_size": 40, "test_size": 40, "client_eval_max": 5},
                   evaluation={"server": True, "batch_size": 20})
    run_dir = run_experiment(load_config(base=job), show_progress=False)
    metrics = json.loads((run_dir / "summary.json").read_text())["strategies"]["zero_shot"]["metrics"]
    assert 0.6 <= metrics["server/test/accuracy"] <= 1.0  # Qwen2.5-0.5B is well above chance on SST-2
    assert 0.0 <= metrics["server/test/macro_f1"] <= 1.0
