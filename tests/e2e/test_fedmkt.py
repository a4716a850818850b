"""FedMKT end to end on a tiny setting through the real pipeline: tiny client SLMs (a word-level tokenizer)
send top-k knowledge on public SST-2 texts, the served LLM (the session's vLLM SmolLM2, a byte-level BPE
tokenizer) scores the same texts, the server aligns both ways across the two tokenizers, distils the served
model's LoRA with Ray Train + DeepSpeed, publishes it live, scores the texts again with the new version, and
the clients distil from that aligned LLM in the same round."""

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

PUBLIC = 6


def fedmkt_job(tmp_path: Path, model_dir: Path, server_config: Any, **overrides: Any) -> dict[str, Any]:
    return tiny_job(
        tmp_path, model_dir, method="fedmkt", baselines=overrides.pop("baselines", []), rounds=2,
        clients={"count": 2, "pool_size": 2, "resources": {"num_cpus": 0.9}},
        data={"task": "sst2", "train_size": 60, "test_size": 16, "client_eval_max": 8},
        server={"model": server_config.model, "app_name": server_config.app_name, "dtype": "float32"},
        method_params={
            "public_size": PUBLIC, "top_k": 4, "llm_eval_size": 8, "adapter_name": "fedmkt-e2e",
            "llm_train": {"workers": 2, "resources": {"num_cpus": 0.01}, "steps": 2, "micro_batch_size": 2,
                          "max_length": 64, "checkpoint_every": 2, "zero": {"stage": 2}},
        },
        **overrides,
    )


def test_fedmkt_data_flow(tmp_path: Path, tiny_model_dir: Path, llm: Any, server_config: Any) -> None:
    from estuary.data.federated import build_federated_data

    job = fedmkt_job(tmp_path, tiny_model_dir, server_config, baselines=["zero_shot", "llm_centralized"],
                     evaluation={"server": True})
    cfg = ExperimentConfig.model_validate(job)
    run_dir = run_experiment(cfg, show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    rounds = [r for r in read_jsonl(run_dir / "rounds.jsonl") if r["strategy"] == "fedmkt"]
    knowledge = list(read_jsonl(run_dir / "knowledge" / "fedmkt.jsonl"))
    label = tiny_model_dir.name
    versions = []
    assert len(rounds) == 2
    for r in rounds:
        m = r["metrics"]
        assert m["server/knowledge/accepted"] == 2 and m["server/knowledge/rejected"] == 0
        for key in ("vocab_exact", "vocab_exact_from_llm", "seq_coverage", "seq_coverage_from_llm"):
            assert 0 <= m[f"server/align/{label}/{key}"] <= 1
        assert m[f"server/align/{label}/seq_coverage"] > 0  # the two tokenizers share whole words
        assert m["server/select/llm_self"] + m["server/select/llm_from_clients"] == PUBLIC
        assert 0 <= m["server/select/clients_took_llm_share"] <= 1
        assert m["server/select/clients_took_llm"] == sum(k["took_llm"] for k in knowledge
                                                          if k["round"] == r["round"] and k["client"] != "server")
        assert m["server/llm_train/records"] == PUBLIC and m["server/llm_train/loss_last"] > 0
        assert 0 <= m["server/llm/test/accuracy"] <= 1
        assert m["client/knowledge/texts/mean"] == PUBLIC and m["client/knowledge/positions/min"] > PUBLIC
        assert m["client/distill/trained/min"] == 1 and m["client/distill/kd/mean"] > 0
        versions.append(m["server/llm/adapter_version"])
        rows = [k for k in knowledge if k["round"] == r["round"]]
        clients = {k["client"]: k for k in rows}
        assert set(clients) == {"c000", "c001", "server"}
        for cid in ("c000", "c001"):
            c = clients[cid]
            assert c["accepted"] and c["texts"] == PUBLIC and c["k"] == 4 and c["positions"] > PUBLIC
            assert 0 <= c["seq_coverage_to_llm"] <= 1 and 0 <= c["took_llm"] <= PUBLIC
        assert clients["server"]["records"] == PUBLIC and sum(clients["server"]["chose"].values()) == PUBLIC
    start = {k.replace("llm_start/", ""): v for k, v in rounds[0]["metrics"].items() if "/llm_start/" in k}
    assert start and 0 <= start["server/test/accuracy"] <= 1
    # the zero-shot row's LLM is the very measurement FedMKT starts from: the deployment, the same examples
    (zero,) = [r for r in read_jsonl(run_dir / "rounds.jsonl") if r["strategy"] == "zero_shot"]
    measured = {k: v for k, v in zero["metrics"].items() if k.startswith("server/test/")}
    assert measured == {k: v for k, v in start.items() if k.startswith("server/test/")}  # timings aside
    assert start["server/eval_s"] > 0 and zero["metrics"]["server/eval_s"] > 0
    assert versions[0] >= 1 and versions[1] == versions[0] + 1
    # round 1's LLM distilled from knowledge it scored with the base model, round 2's with the adapter round 1
    # published; in each round the clients distilled from the LLM's top-k recomputed with the version that
    # round published (slm_targets: after_update, as the reference's on_epoch_end)
    server_rows = [k for k in knowledge if k["client"] == "server"]
    assert server_rows[0]["adapter"] is None and server_rows[1]["adapter"] == server_rows[0]["targets_adapter"]
    assert [int(r["targets_adapter"].rsplit("@v", 1)[1]) for r in server_rows] == versions
    assert [r["metrics"]["server/llm/slm_targets_version"] for r in rounds] == versions
    assert "fedmkt-e2e" in llm.versions()
    # the LLM's centralized bound: the pooled client shards, the method's server training settings over both
    # rounds (2 steps × 2), published as its own adapter and evaluated on the same test examples
    (bound,) = [r for r in read_jsonl(run_dir / "rounds.jsonl") if r["strategy"] == "llm_centralized"]
    pooled = build_federated_data(cfg.data.model_dump_json(), cfg.clients.count, cfg.seed).union().train
    m = bound["metrics"]
    assert m["server/llm_train/records"] == len(pooled) > PUBLIC and m["server/llm_train/loss_last"] > 0
    assert 0 <= m["server/llm/test/accuracy"] <= 1 and "llm_centralized" in llm.versions()
    assert not [c for c in read_jsonl(run_dir / "clients.jsonl") if c["strategy"] == "llm_centralized"]
    clients_rows = [c for c in read_jsonl(run_dir / "clients.jsonl") if c["strategy"] == "fedmkt"]
    assert len(clients_rows) == 8  # 2 clients × 2 phases × 2 rounds
    assert all("test/accuracy" in c["metrics"] for c in clients_rows if c["round"] == 2 and
               "distill/trained" in c["metrics"])
