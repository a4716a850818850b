"""Fault-injection drills (`faults:`): random worker kills during DP rounds, and a SIGKILLed driver resumed
with `estuary resume` — nothing lost, nothing counted twice, ledgers and checkpoints intact."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from estuary.platform.checkpoint import Checkpointer
from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment
from estuary.privacy.ledger import PrivacyLedger
from tests.cluster.resume_drill import killed_then_resumed, rows
from tests.conftest import tiny_job
from tests.unit.test_tracking import scalar_steps

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def _dp_job(tmp_path: Path, model_dir: Path, **over: Any) -> dict[str, Any]:
    base = {"method": "dp_standalone", "baselines": [], "privacy": {"target_epsilon": 3.0, "delta": 1e-3},
            "evaluation": {"server": False, "global_test": False, "batch_size": 16},
            # default max_retries (2): the pool holds tasks back from a worker until Ray has restarted it
            "clients": {"count": 4, "pool_size": 2}}
    return tiny_job(tmp_path, model_dir, **{**base, **over})


def _client_rounds(run: Path, file: str = "clients.jsonl") -> Counter[tuple[int, str]]:
    return Counter((r["round"], r["client"]) for r in rows(run / file) if r.get("op", "dp-sgd") == "dp-sgd")


def test_worker_kills_during_rounds_lose_and_double_count_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    job = _dp_job(tmp_path, tiny_model_dir, rounds=2,
                  faults={"kill_worker_prob": 0.5, "max_worker_kills": 2, "seed": 3})
    run = run_experiment(load_config(base=job), show_progress=False)
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    kills = rows(run / "faults.jsonl")
    assert 1 <= len(kills) <= 2 and all(k["fault"] == "kill_worker" for k in kills)
    rounds = rows(run / "rounds.jsonl")
    assert [(r["clients_ok"], r["clients_failed"]) for r in rounds] == [(4, 0)] * 2
    assert sum(r["task_attempts"] for r in rounds) > 8  # the killed workers' tasks were resubmitted
    expected = {(r, f"c00{i}"): 1 for r in (1, 2) for i in range(4)}
    assert _client_rounds(run) == expected  # every client update recorded exactly once
    assert _client_rounds(run, "privacy.jsonl") == expected  # and charged to the ledger exactly once
    ckpt = Checkpointer(run)
    assert ckpt.latest("dp_standalone") == 2
    states, _, _ = ckpt.load("dp_standalone", 2)
    for cid, state in states.items():
        assert state.rounds_trained == 2, cid  # applied once per round, none lost
        assert [e["round"] for e in PrivacyLedger(state.privacy).entries] == [1, 2], cid


def test_driver_killed_then_resume_matches_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    job = _dp_job(tmp_path, tiny_model_dir, rounds=2, clients={"count": 3, "pool_size": 2})
    full = run_experiment(load_config(base=job), show_progress=False)
    part = killed_then_resumed(tmp_path, job, "dp_standalone", kill_round=2)
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((part / "summary.json").read_text())
    assert b["status"] == "complete"
    for key, value in a["strategies"]["dp_standalone"]["metrics"].items():
        assert b["strategies"]["dp_standalone"]["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert _client_rounds(part) == _client_rounds(full) == {(r, f"c00{i}"): 1 for r in (1, 2) for i in range(3)}
    assert _client_rounds(part, "privacy.jsonl") == _client_rounds(full, "privacy.jsonl")
    # the strategy's time counts round 1, run before the kill, as well as what the resumed driver ran
    round_walls = [r["wall_s"] for r in rows(part / "rounds.jsonl") if r["strategy"] == "dp_standalone"]
    assert len(round_walls) == 2 and b["strategies"]["dp_standalone"]["wall_s"] >= sum(round_walls) - 0.01
    losses = {(r["round"], r["client"]): r["loss_last"] for r in rows(full / "clients.jsonl")}
    for r in rows(part / "clients.jsonl"):
        assert r["loss_last"] == pytest.approx(losses[(r["round"], r["client"])], abs=1e-6)
    for cid, eps in a["privacy"]["dp_standalone"].items():
        assert b["privacy"]["dp_standalone"][cid]["epsilon"] == pytest.approx(eps["epsilon"], rel=1e-9), cid
    # TensorBoard (output.report_to's default): round 2, on disk before the kill, is not logged again
    tracked = scalar_steps(part / "tensorboard" / "dp_standalone")
    assert tracked and all([step for step, _ in points] == [1, 2] for points in tracked.values()), tracked
    assert [step for step, _ in tracked["epsilon/c000"]] == [1, 2]
