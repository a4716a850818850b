"""FDKT end to end on a tiny setting through the real pipeline: the clients' DP generators (tiny model),
the served LLM (the session's vLLM SmolLM2 deployment), the server filters and client training."""

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


def test_fdkt_data_flow(tmp_path: Path, tiny_model_dir: Path, llm: Any, server_config: Any) -> None:
    job = tiny_job(
        tmp_path, tiny_model_dir, method="fdkt", baselines=[], rounds=2, clients={"count": 2, "pool_size": 2},
        data={"task": "sst2", "train_size": 80, "test_size": 20, "client_eval_max": 8},
        privacy={"target_epsilon": 8.0, "delta": 1e-4},
        server={"model": server_config.model, "app_name": server_config.app_name, "dtype": "float32"},
        method_params={
            "generator": {"epochs": 1.0, "batch_size": 8, "samples_per_label": 6, "max_new_tokens": 12},
            # the tiny generator writes word salad, which the LLM judge rightly rejects: the judge is exercised
            # in test_llm_judge_on_served_model; here the flow must reach augmentation
            "filter": {"judge": False},
            "augment": {"prompts": 3, "samples_per_reply": 4, "max_tokens": 24},  # all-labels prompts, 1 reply each
        },
    )
    run_dir = run_experiment(ExperimentConfig.model_validate(job), show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    rounds = [r for r in read_jsonl(run_dir / "rounds.jsonl") if r["strategy"] == "fdkt"]
    assert [r["round"] for r in rounds] == [1, 2]

    synthetic = list(read_jsonl(run_dir / "knowledge" / "synthetic.jsonl"))
    augmented = list(read_jsonl(run_dir / "knowledge" / "augmented.jsonl"))
    for r in rounds:
        m = r["metrics"]
        sent = [s for s in synthetic if s["round"] == r["round"]]
        # counts agree at every step: what clients sent, what each filter kept, what clients trained on
        assert m["server/filter/synthetic/input"] == len(sent) == m["client/synthetic/kept/mean"] * 2
        assert m["server/filter/synthetic/kept"] == sum(s["kept"] for s in sent)
        stages = ("invalid", "duplicate", "near_duplicate", "judged_out", "kept")
        assert sum(m[f"server/filter/synthetic/{k}"] for k in stages) == len(sent)
        assert m["server/augment/prompts"] == 3 and m["server/augment/generated"] > 0  # labelled lines + malformed
        assert m["server/filter/augmented/kept"] == len([a for a in augmented if a["round"] == r["round"]])
        assert m["client/train/transfer_examples/mean"] == m["server/transfer/examples"]
    assert {s["client"] for s in synthetic} == {"c000", "c001"}
    assert not list(read_jsonl(run_dir / "knowledge" / "clusters.jsonl"))  # judge off: no clusters judged

    # egress: only DP synthetic samples left the clients, each with a release entry; the ledger grows once
    # (the generator is trained in round 1; round 2 samples the same DP model at no further cost)
    privacy = list(read_jsonl(run_dir / "privacy.jsonl"))
    for cid in ("c000", "c001"):
        rows = [p for p in privacy if p["client"] == cid]
        assert [p["round"] for p in rows if p["op"] == "release"] == [1, 2]
        trained = [p for p in rows if p["op"] not in ("release", "refused", "non-private")]
        assert len(trained) == 1 and trained[0]["round"] == 1
        eps = summary["privacy"]["fdkt"][cid]["epsilon"]
        assert 0 < eps <= 8.0 + 1e-6
    train_uids = {ex.uid for ex in _private_train(job)}
    assert not train_uids & {s["uid"] for s in synthetic}
    private_texts = {ex.text for ex in _private_train(job)}
    assert not private_texts & {s["text"] for s in synthetic}  # no verbatim copy of a private example
    clients = [c for c in read_jsonl(run_dir / "clients.jsonl") if c["strategy"] == "fdkt"]
    assert len(clients) == 8  # 2 clients × 2 phases × 2 rounds
    assert summary["strategies"]["fdkt"]["metrics"]["client/test/accuracy/n"] == 2


def _private_train(job: dict[str, Any]) -> list[Any]:
    from estuary.data.federated import build_federated_data

    cfg = ExperimentConfig.model_validate(job)
    data = build_federated_data(cfg.data.model_dump_json(), cfg.clients.count, cfg.seed)
    return [ex for c in data.clients.values() for ex in c.train]


def test_llm_judge_on_served_model(llm: Any) -> None:
    """Both judges through the served model: classify gets the clear clusters right; the ask prompt gives
    parseable verdicts, cluster by cluster."""
    from estuary.data.datasets import get_task
    from estuary.knowledge import llm_judge

    clusters = [(1, ["a wonderful, moving film with a brilliant cast", "one of the best movies this year"]),
                (0, ["a dull, lifeless mess", "boring and far too long"]),
                (1, ["the worst film i have ever seen, a total waste of time"])]
    verdicts = llm_judge(llm, get_task("sst2"))(clusters)  # classify: the served model labels every text
    assert [v for v, _ in verdicts] == [True, True, False], verdicts
    judge = llm_judge(llm, get_task("sst2"), mode="ask")
    verdicts = judge([(1, ["a wonderful, moving film with a brilliant cast", "one of the best movies this year"]),
                      (0, ["a dull, lifeless mess", "boring and far too long"]),
                      (1, ["the worst film i have ever seen, a total waste of time"])])
    assert len(verdicts) == 3 and all(answer for _, answer in verdicts)
    assert any(v is not None for v, _ in verdicts), verdicts
