"""Client-side DP on a local Ray cluster: the ledger through rounds, worker kills and resume; privacy.jsonl
and summary.json; canaries planted in private data never leave a client (Egress records, run records,
checkpoints, the audit); the audit of a run's saved DP generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import ray

from estuary.client.pool import ClientPool
from estuary.platform.audit import audit_run_dir
from estuary.platform.loading import load_config
from estuary.platform.run_context import RunContext
from estuary.platform.runner import resume_experiment, run_experiment
from estuary.privacy.canary import find_canaries, plant_sst2_canaries, scan_run_dir
from estuary.privacy.ledger import PrivacyLedger
from estuary.registry import available
from estuary.strategies.dp_baselines import DPStandalone
from estuary.wire import ClientTask, Egress
from tests.conftest import tiny_job

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

PRIVACY = {"target_epsilon": 3.0, "delta": 1e-3}
GENERATOR = {"epochs": 1, "batch_size": 4, "max_length": 48, "samples_per_label": 3, "max_new_tokens": 12,
             "min_words": 2, "sample_batch": 8}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _dp_job(tmp_path: Path, model_dir: Path, **over: Any) -> dict[str, Any]:
    base = {"method": "dp_standalone", "baselines": [], "clients": {"count": 3}, "privacy": PRIVACY,
            "evaluation": {"server": False, "global_test": False, "batch_size": 16}}
    return tiny_job(tmp_path, model_dir, **{**base, **over})


def _rdp(rows: list[dict[str, Any]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for r in rows:
        for _ in range(r["steps"]):
            acc.step(noise_multiplier=r["sigma"], sample_rate=r["sample_rate"])
    return float(acc.get_epsilon(delta=delta))


def test_ledger_in_records_and_across_resume(tmp_path: Path, tiny_model_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    job = _dp_job(tmp_path, tiny_model_dir, rounds=2)
    full = run_experiment(load_config(base=job), show_progress=False)
    rows = _rows(full / "privacy.jsonl")
    assert sorted((r["round"], r["client"]) for r in rows) == [(r, f"c00{i}") for r in (1, 2) for i in range(3)]
    summary = json.loads((full / "summary.json").read_text())
    ledgers = summary["privacy"]["dp_standalone"]
    assert sorted(ledgers) == ["c000", "c001", "c002"] and summary["privacy_config"]["enabled"]
    for cid, led in ledgers.items():
        mine = sorted((r for r in rows if r["client"] == cid), key=lambda r: r["round"])
        assert all(r["op"] == "dp-sgd" and r["steps"] == 3 for r in mine)
        recomputed = _rdp(mine, 1e-3)  # Opacus' accountant from the logged (σ, q, steps) only
        assert led["epsilon"] == pytest.approx(recomputed, rel=0.01) == pytest.approx(mine[-1]["epsilon_after"])
        assert 2.9 <= led["epsilon"] <= 3.0 and led["delta"] == 1e-3 and led["steps"] == 6  # plan reaches target
        assert led["clipping"] == ["ghost_bk"] and all(r["clipping"] == "ghost_bk" for r in mine)  # which ran
    # Interrupted before round 2's checkpoint, then resumed: the same ledgers and rows, none twice.
    job["output"] = {**job["output"], "run_id": "interrupted"}
    original = RunContext.run_tasks

    def crash_in_round_2(self, strategy, rnd, tasks):  # type: ignore[no-untyped-def]
        outcome = original(self, strategy, rnd, tasks)
        if rnd == 2:
            raise KeyboardInterrupt
        return outcome

    monkeypatch.setattr(RunContext, "run_tasks", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(base=job), show_progress=False)
    monkeypatch.setattr(RunContext, "run_tasks", original)
    part = tmp_path / "runs" / "interrupted"
    resume_experiment(part, show_progress=False)
    strip = ("rng",)

    def key(rs: list[dict[str, Any]]) -> list[tuple]:
        return sorted(tuple((k, str(v)) for k, v in sorted(r.items()) if k not in strip) for r in rs)

    assert key(_rows(part / "privacy.jsonl")) == key(rows)
    assert json.loads((part / "summary.json").read_text())["privacy"] == summary["privacy"]


def test_worker_killed_mid_round_keeps_the_ledger_exact(tmp_path: Path, tiny_model_dir: Path) -> None:
    # max_retries: under load a restarting actor answers "unavailable" to several quick retries.
    clients = {"count": 6, "pool_size": 2, "max_retries": 8}
    cfg = load_config(base=_dp_job(tmp_path, tiny_model_dir, rounds=2, clients=clients))
    pool = ClientPool(cfg, {str(tiny_model_dir): str(tiny_model_dir)})
    pool.wait_ready()
    strategy = DPStandalone(cfg)
    killed: list[str] = []

    def kill_other_worker(eg: Egress) -> None:
        if not killed:
            victim = 1 if eg.worker == "worker-0" else 0
            ray.kill(pool.workers[victim], no_restart=False)
            killed.append(pool.names[victim])

    try:
        for rnd in (1, 2):
            tasks = [ClientTask(cid, rnd, evaluate=False) for cid in strategy.client_ids()]
            outcome = pool.run(DPStandalone, tasks, on_result=kill_other_worker if rnd == 1 else None)
            assert not outcome.failures and sorted(outcome.results) == strategy.client_ids()
            if rnd == 1:
                assert killed and outcome.attempts > len(tasks)  # tasks of the killed worker were redone
            for eg in outcome.results.values():
                assert [e.op for e in eg.privacy] == ["dp-sgd"] and eg.privacy[0].round == rnd
        states = pool.states.snapshot()
    finally:
        pool.shutdown()
    for cid, state in states.items():
        led = PrivacyLedger(state.privacy)
        assert [e["round"] for e in led.entries] == [1, 2], cid  # charged once per round, never lost
        assert led.steps == 6 and 2.9 <= led.epsilon <= 3.0
        assert led.epsilon == pytest.approx(_rdp(led.entries, led.delta or 0.0), rel=0.01)


def test_canaries_never_leave_a_client_in_whole_runs(tmp_path: Path, tiny_model_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from estuary.data import find_data_root
    from estuary.data.federated import build_federated_data

    root = tmp_path / "data"
    canaries = plant_sst2_canaries(find_data_root(), root, lines=300)
    # Whole runs of the methods that need no server LLM (tests/unit/test_privacy_canary.py covers the client
    # tasks of every registered method, without Ray).
    methods = ["centralized", "dp_standalone", "dp_synthetic", "noop", "standalone", "zero_shot"]
    assert set(methods) <= set(available())
    job = _dp_job(tmp_path, tiny_model_dir, method="dp_synthetic", rounds=1,
                  baselines=[m for m in methods if m != "dp_synthetic"], clients={"count": 2},
                  data={"task": "sst2", "root": str(root), "train_size": 80, "test_size": 20, "client_eval_max": 8},
                  method_params={"generator": GENERATOR}, evaluation={"server": False, "batch_size": 16})
    cfg = load_config(base=job)
    private = build_federated_data(cfg.data.model_dump_json(), 2, cfg.seed).client("c000").train
    assert find_canaries(list(private))  # positive control: the private data carries canaries ...
    assert find_canaries(Egress("c000", 1, "s", payload={"oops": private[0].text}))  # ... a leak is caught
    sent: list[Egress] = []
    original = RunContext.run_tasks

    def spy(self, strategy, rnd, tasks):  # type: ignore[no-untyped-def]
        outcome = original(self, strategy, rnd, tasks)
        sent.extend(outcome.results.values())
        return outcome

    monkeypatch.setattr(RunContext, "run_tasks", spy)
    run_dir = run_experiment(cfg, show_progress=False)
    assert {eg.strategy for eg in sent} == set(methods)
    assert find_canaries(sent) == []  # every Egress of every method, payloads and synthetic data included
    assert scan_run_dir(run_dir) == {}  # records: rounds, clients, privacy, summary, config, plots
    assert scan_run_dir(run_dir, include_checkpoints=True) == {}  # client states: weights and ledgers, no text
    synthetic = [ex for eg in sent for ex in eg.synthetic]
    assert synthetic and all(eg.privacy for eg in sent if eg.synthetic)
    assert len(_rows(run_dir / "knowledge" / "synthetic.jsonl")) == len(synthetic)  # scanned above too
    assert len(canaries) == 300
    rows = _rows(run_dir / "privacy.jsonl")
    assert {r["strategy"] for r in rows} == {"dp_standalone", "dp_synthetic"}
    assert [r["op"] for r in rows if r["strategy"] == "dp_synthetic"].count("release") == 2
    # The audit attacks the DP generator this run saved (checkpoint) and a non-DP twin trained like it.
    report = audit_run_dir(run_dir, members=8)
    by = {r["generator"]: r for r in report["results"]}
    assert by["dp"]["source"].startswith("checkpoint of dp_synthetic after round 1") and by["dp"]["train_s"] == 0
    assert by["non-dp"]["steps"] == by["dp"]["steps"] > 0 and by["non-dp"]["epsilon"] == "inf"
    assert all(0.0 <= r["ci_low"] <= r["auc"] <= r["ci_high"] <= 1.0 for r in by.values())
    assert scan_run_dir(run_dir) == {}  # audit.json carries no private text either


def test_disabled_privacy_is_loud_in_the_run_records(tmp_path: Path, tiny_model_dir: Path) -> None:
    job = _dp_job(tmp_path, tiny_model_dir, method="dp_synthetic", rounds=1, clients={"count": 2},
                  method_params={"generator": GENERATOR}, privacy={"target_epsilon": None})
    run_dir = run_experiment(load_config(base=job), show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "PRIVACY DISABLED" in summary["privacy_warning"] and summary["privacy_config"]["enabled"] is False
    assert all(c["epsilon"] == "inf" and c["non_private"] for c in summary["privacy"]["dp_synthetic"].values())
    rows = _rows(run_dir / "privacy.jsonl")
    assert rows and all(r["epsilon_after"] == "inf" and "PRIVACY DISABLED" in r["warning"] for r in rows)
    assert {r["op"] for r in rows} == {"non-private", "release"}
