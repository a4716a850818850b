"""CrossLM end to end on a tiny setting through the real pipeline: the served LLM (the session's vLLM
SmolLM2) generates, tiny client SLMs score, Ray Train + DeepSpeed fine-tunes the served model's LoRA, the
adapter is published live and the next round generates with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from estuary.config import ExperimentConfig
from estuary.platform.records import read_jsonl
from estuary.platform.runner import run_experiment
from tests.conftest import tiny_job

pytestmark = [pytest.mark.e2e, pytest.mark.ray]


def crosslm_job(tmp_path: Path, model_dir: Path, server_config: Any, **overrides: Any) -> dict[str, Any]:
    return tiny_job(
        tmp_path, model_dir, method="crosslm", baselines=[], rounds=2,
        clients={"count": 2, "pool_size": 2, "resources": {"num_cpus": 0.9}},  # a sliver left for the trainer
        data={"task": "sst2", "train_size": 60, "test_size": 16, "client_eval_max": 8},
        server={"model": server_config.model, "app_name": server_config.app_name, "dtype": "float32"},
        method_params={
            "generate": {"prompts_per_label": 4, "samples_per_prompt": 2, "max_tokens": 20},
            "min_score": 0.0, "consensus": 0.0,  # keep everything the clients scored: the flow, not the claim
            "llm_eval_size": 8, "general_size": 4, "adapter_name": "crosslm-e2e", "llm_task_records": True,
            "llm_train": {"workers": 2, "resources": {"num_cpus": 0.01}, "steps": 2, "micro_batch_size": 2,
                          "max_length": 64, "checkpoint_every": 2, "zero": {"stage": 2}},
        },
        **overrides,
    )


def test_crosslm_data_flow(tmp_path: Path, tiny_model_dir: Path, llm: Any, server_config: Any) -> None:
    job = crosslm_job(tmp_path, tiny_model_dir, server_config)
    run_dir = run_experiment(ExperimentConfig.model_validate(job), show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    rounds = [r for r in read_jsonl(run_dir / "rounds.jsonl") if r["strategy"] == "crosslm"]
    generated = list(read_jsonl(run_dir / "knowledge" / "generated.jsonl"))
    versions, pool = [], 0
    for r in rounds:
        m = r["metrics"]
        rows = [g for g in generated if g["round"] == r["round"]]
        assert m["server/generate/prompts"] == 8 and m["server/generate/filter/kept"] == len(rows) > 0
        assert all(set(g["scores"]) == {"c000", "c001"} and 0 <= g["score"] <= 1 for g in rows)
        assert m["server/select/kept"] == sum(g["selected"] for g in rows) == len(rows)
        assert sum(m[f"server/select/kept_label{y}"] for y in (0, 1)) == len(rows)
        priors = [q for q in read_jsonl(run_dir / "knowledge" / "score_priors.jsonl") if q["round"] == r["round"]]
        assert {q["client"] for q in priors} == {"c000", "c001"}  # each client's mean prediction, as calibrated
        assert all(q["calibration"] == "prior" and abs(sum(q["prior"]) - 1) < 1e-3 for q in priors)
        assert m["client/train/transfer_examples/mean"] == len(rows)
        assert m["server/llm_train/loss_last"] > 0 and 0 <= m["server/llm/test/accuracy"] <= 1
        assert 0 <= m["server/llm/test/channel_accuracy"] <= 1  # the same LLM read as a noisy channel
        pool += len(rows)  # the LLM learns every sample selected so far, as generation and as task records
        assert m["server/llm_train/records"] == 2 * pool
        assert m["server/llm/general/perplexity"] > 1
        versions.append(m["server/llm/adapter_version"])
    # round 1 generated with the base model, round 2 with the adapter round 1 published
    assert rounds[0]["metrics"]["server/generate/adapter_version"] == 0
    assert rounds[1]["metrics"]["server/generate/adapter_version"] == versions[0] >= 1
    assert versions[1] == versions[0] + 1
    assert "crosslm-e2e" in llm.versions()
    assert rounds[0]["metrics"]["server/llm_start/test/accuracy"] >= 0
    clients = [c for c in read_jsonl(run_dir / "clients.jsonl") if c["strategy"] == "crosslm"]
    assert len(clients) == 8  # 2 clients × 2 phases × 2 rounds


def test_server_released_while_the_llm_trains(tmp_path: Path, tiny_model_dir: Path, llm: Any,
                                              server_config: Any) -> None:
    """server.release_while_training: the run's own deployment (the reference engine, beside the session's vLLM
    one) stops for each LLM training and comes back with every published version; round 2 generates with the
    adapter round 1 published, through the redeployed application."""
    from ray import serve

    app = "crosslm-release-e2e"
    job = crosslm_job(tmp_path, tiny_model_dir, server_config)
    job["server"] = {**job["server"], "engine": "reference", "app_name": app, "route_prefix": "/release",
                     "release_while_training": True, "adapter_root": str(tmp_path / "adapters")}
    job["method_params"] = {**job["method_params"], "adapter_name": "crosslm-release"}
    run_dir = run_experiment(ExperimentConfig.model_validate(job), show_progress=False)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    rounds = [r["metrics"] for r in read_jsonl(run_dir / "rounds.jsonl") if r["strategy"] == "crosslm"]
    assert all(m["server/llm_train/redeploy_s"] > 0 for m in rounds)  # each training stopped the deployment
    assert all(m["server/llm_train/release_s"] + m["server/llm_train/fit_s"] + m["server/llm_train/redeploy_s"]
               <= m["server/llm_train/wall_s"] + 0.05 for m in rounds)  # its wall time, split (2-decimal rounding)
    assert all(m["server/llm/eval_s"] > 0 for m in rounds)
    assert rounds[1]["server/generate/adapter_version"] == rounds[0]["server/llm/adapter_version"] >= 1
    assert rounds[1]["server/llm/adapter_version"] == rounds[0]["server/llm/adapter_version"] + 1
    assert all(0 <= m["server/llm/test/accuracy"] <= 1 for m in rounds)
    assert sorted(p.name for p in (tmp_path / "adapters" / "crosslm-release").iterdir())[-1:] == ["v2"]
    assert app not in serve.status().applications  # the run stopped what it started
    assert "crosslm-release" not in llm.versions()  # the session's deployment was never touched
