"""The client pool on a local Ray cluster: both placements, crashes, failures, quorum, records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from estuary.client.pool import ClientPool
from estuary.errors import ConfigError, RoundFailed
from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment
from estuary.strategies.baselines import Standalone
from estuary.wire import ClientTask
from tests.conftest import tiny_job

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("mode", ["pooled", "dedicated"])
def test_run_writes_records_for_method_and_baselines(tmp_path: Path, tiny_model_dir: Path, mode: str) -> None:
    clients = {"mode": mode, "count": 3, "resources": {"num_cpus": 0.5}}  # 3 dedicated actors on 2 CPUs
    cfg = load_config(base=tiny_job(tmp_path, tiny_model_dir, clients=clients))
    run_dir = run_experiment(cfg, show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["pool"]["workers"] == (3 if mode == "dedicated" else 2)
    assert list(summary["strategies"]) == ["zero_shot", "centralized", "standalone"]
    rounds = _rows(run_dir / "rounds.jsonl")
    assert [(r["strategy"], r["round"]) for r in rounds] == [
        ("zero_shot", 1), ("centralized", 1), ("centralized", 2), ("standalone", 1), ("standalone", 2)
    ]
    clients = _rows(run_dir / "clients.jsonl")
    standalone = [c for c in clients if c["strategy"] == "standalone"]
    assert sorted((c["round"], c["client"]) for c in standalone) == [
        (r, f"c00{i}") for r in (1, 2) for i in range(3)
    ]
    assert all(c["loss_last"] is not None and c["wall_s"] > 0 for c in standalone)
    final = summary["strategies"]["standalone"]["metrics"]
    assert 0.0 <= final["client/test/accuracy/mean"] <= 1.0
    assert (run_dir / "config.yaml").exists() and (run_dir / "plots" / "metrics.png").exists()
    assert (run_dir / "checkpoints" / "standalone" / "round-0002" / "COMPLETE").exists()


def test_dedicated_mode_that_cannot_fit_fails_fast(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = load_config(base=tiny_job(tmp_path, tiny_model_dir, clients={"mode": "dedicated", "count": 5}))
    with pytest.raises(ConfigError, match="needs 5 worker actors .* the cluster fits 2"):
        ClientPool(cfg, {str(tiny_model_dir): str(tiny_model_dir)})


def _pool(tmp_path: Path, model_dir: Path, **over) -> tuple[ClientPool, Standalone]:  # type: ignore[no-untyped-def]
    cfg = load_config(base=tiny_job(tmp_path, model_dir, **over))
    return ClientPool(cfg, {str(model_dir): str(model_dir)}), Standalone(cfg)


def test_worker_killed_mid_round_loses_and_duplicates_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    pool, strategy = _pool(tmp_path, tiny_model_dir, clients={"count": 6, "pool_size": 2})
    pool.wait_ready()
    killed: list[str] = []

    def kill_other_worker(eg) -> None:  # type: ignore[no-untyped-def]
        if not killed:  # first result: kill the worker that did not produce it, mid-task
            victim = 1 if eg.worker == "worker-0" else 0
            ray.kill(pool.workers[victim], no_restart=False)
            killed.append(pool.names[victim])

    tasks = [ClientTask(cid, 1, evaluate=False) for cid in strategy.client_ids()]
    outcome = pool.run(Standalone, tasks, on_result=kill_other_worker)
    assert killed and not outcome.failures
    assert sorted(outcome.results) == strategy.client_ids()
    assert outcome.attempts > len(tasks)  # the killed worker's tasks were resubmitted
    assert any(eg.attempts > 1 for eg in outcome.results.values())
    states = pool.states.snapshot()
    assert {s.rounds_trained for s in states.values()} == {1}  # each update applied exactly once
    assert all(s.adapter is not None for s in states.values())
    pool.shutdown()


def test_failing_client_is_reported_and_quorum_applies(tmp_path: Path, tiny_model_dir: Path) -> None:
    import tests.cluster.faulty  # noqa: F401  (registers faulty_test)

    job = tiny_job(tmp_path, tiny_model_dir, method="faulty_test", baselines=[], rounds=1,
                   clients={"count": 3, "quorum": 0.6, "max_retries": 1})
    run_dir = run_experiment(load_config(base=job), show_progress=False)
    failures = _rows(run_dir / "failures.jsonl")
    assert failures == [{"strategy": "faulty_test", "round": 1, "client": "c001",
                         "error": "RuntimeError: planted failure in c001"}]
    rounds = _rows(run_dir / "rounds.jsonl")
    assert rounds[0]["clients_ok"] == 2 and rounds[0]["clients_failed"] == 1

    job.update(output={**job["output"], "run_id": "strict"}, clients={**job["clients"], "quorum": 1.0})
    with pytest.raises(RoundFailed, match="c001 failed with RuntimeError: planted failure"):
        run_experiment(load_config(base=job), show_progress=False)
    summary = json.loads((tmp_path / "runs" / "strict" / "summary.json").read_text())
    assert summary["status"] == "failed" and "quorum" in summary["error"]


def test_cheap_tasks_are_batched_and_a_failure_stays_its_clients(tmp_path: Path, tiny_model_dir: Path) -> None:
    import tests.cluster.faulty  # noqa: F401  (registers faulty_noop_test)
    from estuary.registry import get

    job = tiny_job(tmp_path, tiny_model_dir, method="faulty_noop_test", baselines=[],
                   data={"train_size": 400, "min_client_size": 2},
                   clients={"count": 40, "pool_size": 2, "max_retries": 1})
    cfg = load_config(base=job)
    pool = ClientPool(cfg, {str(tiny_model_dir): str(tiny_model_dir)})
    pool.wait_ready()
    strategy = get("faulty_noop_test")
    ids = [f"c{i:03d}" for i in range(40)]
    for rnd in (1, 2):
        outcome = pool.run(strategy, [ClientTask(cid, rnd) for cid in ids])
        assert outcome.failures == {"c001": "RuntimeError: planted failure in c001"}
        assert list(outcome.results) == [cid for cid in ids if cid != "c001"]  # in task order
        assert outcome.attempts == 41  # c001 tried twice (max_retries 1), every other task once
    assert pool.sizer.size("faulty_noop_test", "train", 40, 4) == 10  # timed as cheap: an even share per call
    states = pool.states.snapshot()
    assert "c001" not in states
    assert {s.rounds_trained for s in states.values()} == {2}  # each update applied exactly once per round
    from estuary.client.shards import read_shard

    for who, folder in (("workers", tmp_path / "by-workers"), ("driver", tmp_path / "by-driver")):
        folder.mkdir()
        if who == "driver":
            pool.nodes = {}  # no worker known on the driver's node: the driver writes every shard
        pool.write_shards(folder, size=16)
        shards = sorted(folder.glob("clients-*.pt"))
        assert [p.name for p in shards] == ["clients-00000.pt", "clients-00001.pt", "clients-00002.pt"], who
        back = {cid: f for p in shards for cid, f in read_shard(p).items()}
        assert back == {cid: {"client_id": cid, "model": s.model, "adapter": None, "optimizer": None,
                              "rounds_trained": 2, "steps_trained": 0, "privacy": {}, "extra": {}}
                        for cid, s in states.items()}, who
    pool.shutdown()


def test_resume_after_driver_interrupt_matches_uninterrupted(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from estuary.platform.run_context import RunContext
    from estuary.platform.runner import resume_experiment

    job = tiny_job(tmp_path, tiny_model_dir, rounds=3, baselines=["zero_shot"], clients={"count": 3})
    full = run_experiment(load_config(base=job), show_progress=False)

    job["output"] = {**job["output"], "run_id": "interrupted"}
    original = RunContext.run_tasks

    def crash_in_round_3(self, strategy, rnd, tasks):  # type: ignore[no-untyped-def]
        outcome = original(self, strategy, rnd, tasks)  # client rows of round 3 are written...
        if strategy.name == "standalone" and rnd == 3:
            raise KeyboardInterrupt  # ...and the driver dies before the round's checkpoint
        return outcome

    monkeypatch.setattr(RunContext, "run_tasks", crash_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(base=job), show_progress=False)
    monkeypatch.setattr(RunContext, "run_tasks", original)
    part = tmp_path / "runs" / "interrupted"
    assert json.loads((part / "summary.json").read_text())["status"] == "interrupted"
    resume_experiment(part, show_progress=False)

    a = json.loads((full / "summary.json").read_text())["strategies"]
    b = json.loads((part / "summary.json").read_text())["strategies"]
    for name in ("zero_shot", "standalone"):
        for key, value in a[name]["metrics"].items():
            assert b[name]["metrics"][key] == pytest.approx(value, abs=1e-6), (name, key)
    def rows(run: Path) -> dict[tuple[str, int, str], float | None]:
        out = {}
        for c in _rows(run / "clients.jsonl"):
            key = (c["strategy"], c["round"], c["client"])
            assert key not in out, f"{key} recorded twice"
            out[key] = c["loss_last"]
        return out

    rows_a, rows_b = rows(full), rows(part)
    assert rows_a.keys() == rows_b.keys()  # each client round recorded exactly once after resume
    for key, loss in rows_a.items():
        assert rows_b[key] == pytest.approx(loss, abs=1e-6), key
