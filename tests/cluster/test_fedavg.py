"""FedAvg (FedIT) on the session's Ray cluster with the tiny model: with client sampling every client starts a round
from the same adapter, the n_k-weighted mean of the previous round's, and a driver killed mid-run resumes to the
same adapters and metrics as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tests.cluster.fedavg_probe  # noqa: F401  (registers fedavg_probe_test)
from estuary.data.federated import build_federated_data
from estuary.platform.checkpoint import Checkpointer
from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment
from estuary.strategies.fedavg import weighted_adapter_mean
from tests.cluster.resume_drill import killed_then_resumed, rows
from tests.conftest import tiny_job

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)


def _job(tmp_path: Path, model_dir: Path, method: str, **over: Any) -> dict[str, Any]:
    return tiny_job(tmp_path, model_dir, method=method, baselines=[], **over)


def test_sampled_clients_start_from_the_weighted_mean(tmp_path: Path, tiny_model_dir: Path) -> None:
    # seed 0, 4 clients, half sampled: round 1 c001 + c003, round 2 c000 (new) + c001; c002 never
    job = _job(tmp_path, tiny_model_dir, "fedavg_probe_test", clients={"count": 4, "pool_size": 2,
                                                                      "sample_fraction": 0.5})
    cfg = load_config(base=job)
    run = run_experiment(cfg, show_progress=False)
    n = {cid: train for cid, (train, _) in build_federated_data(cfg.data.model_dump_json(), 4, 0).sizes().items()}
    ck = Checkpointer(run)
    states1, driver1, _ = ck.load("fedavg_probe_test", 1)
    states2, driver2, metrics = ck.load("fedavg_probe_test", 2)
    assert sorted(states1) == ["c001", "c003"] and sorted(states2) == ["c000", "c001", "c003"]
    g1, g2 = driver1["global_adapter"], driver2["global_adapter"]
    assert driver1["global_round"] == 1 and driver2["global_round"] == 2
    # round 1: both from the common initialisation; the global adapter is the n_k-weighted mean of theirs
    init = states1["c001"].extra["starts"]["1/train"]
    assert _equal(states1["c003"].extra["starts"]["1/train"], init) and not _equal(init, g1)
    local1 = {c: states1[c].adapter for c in ("c001", "c003")}
    assert _close(g1, weighted_adapter_mean(list(local1.values()), [n["c001"], n["c003"]]))
    assert not _close(g1, weighted_adapter_mean(list(local1.values()), [1, 1]))  # n_k weighs (shards differ)
    # round 2: the sampled clients (one new) start from round 1's global adapter exactly; evaluation ran on it
    for c in ("c000", "c001"):
        assert _equal(states2[c].extra["starts"]["2/train"], g1), c
        assert _equal(states2[c].extra["starts"]["2/eval"], g2), c
    assert _equal(states1["c001"].extra["starts"]["1/eval"], g1)
    assert "2/train" not in states2["c003"].extra["starts"]  # not sampled: neither trained nor counted
    assert _close(g2, weighted_adapter_mean([states2["c000"].adapter, states2["c001"].adapter],
                                            [n["c000"], n["c001"]]))
    # the report's columns: own eval of the global adapter per client, the global test split once
    assert metrics["client/eval/accuracy/n"] == 2 and metrics["client/test/accuracy/n"] == 1
    assert metrics["server/fedavg/clients_averaged"] == 2 and metrics["server/fedavg/global_round"] == 2
    rounds = rows(run / "rounds.jsonl")
    assert [(r["round"], r["clients_ok"], r["examples"]) for r in rounds] == [(1, 2, 24), (2, 2, 24)]  # 3 × 4 each
    kinds = [(r["round"], r["client"], r["loss_last"] is None) for r in rows(run / "clients.jsonl")]
    assert kinds == [(1, "c001", False), (1, "c003", False), (1, "c001", True), (1, "c003", True),
                     (2, "c000", False), (2, "c001", False), (2, "c000", True), (2, "c001", True)]


def test_fedavg_driver_killed_then_resume_matches_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    # seed 0, 3 clients, 2 sampled: round 1 c000 + c002, round 2 c000 + c001 (from round 1's checkpointed average)
    job = _job(tmp_path, tiny_model_dir, "fedavg", clients={"count": 3, "pool_size": 2, "sample_fraction": 0.67})
    full = run_experiment(load_config(base=job), show_progress=False)
    part = killed_then_resumed(tmp_path, job, "fedavg", kill_round=2)
    a = json.loads((full / "summary.json").read_text())["strategies"]["fedavg"]["metrics"]
    b = json.loads((part / "summary.json").read_text())
    assert b["status"] == "complete" and a.keys() == b["strategies"]["fedavg"]["metrics"].keys()
    for key, value in a.items():
        assert b["strategies"]["fedavg"]["metrics"][key] == pytest.approx(value, abs=1e-6), key
    key = lambda r: (r["round"], r["client"], r["loss_last"] is None)  # noqa: E731  (train row, eval row)
    want = {key(r): (r["loss_last"], r["metrics"]) for r in rows(full / "clients.jsonl")}
    got = {key(r): (r["loss_last"], r["metrics"]) for r in rows(part / "clients.jsonl")}
    assert got.keys() == want.keys() and len(rows(part / "clients.jsonl")) == len(want) == 8
    for k, (loss, metrics) in want.items():
        assert got[k][0] == pytest.approx(loss, abs=1e-6) and got[k][1] == pytest.approx(metrics, abs=1e-6), k
    _, fa, _ = Checkpointer(full).load("fedavg", 2)
    _, fb, _ = Checkpointer(part).load("fedavg", 2)
    assert _close(fa["global_adapter"], fb["global_adapter"])
