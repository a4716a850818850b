"""Client sampling per round, heterogeneous client groups, and stragglers cut by the round deadline (noop
clients: no model is loaded, so these runs measure the platform's own behaviour)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from estuary.platform.checkpoint import Checkpointer
from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment
from estuary.platform.sampling import sample_clients
from estuary.platform.strategy import client_ids

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _noop_job(tmp_path: Path, run_id: str, clients: dict[str, Any], rounds: int) -> dict[str, Any]:
    return {
        "name": run_id, "method": "noop", "baselines": [], "rounds": rounds, "seed": 7,
        "data": {"task": "sst2", "partition": "iid", "train_size": 120, "test_size": 10, "min_client_size": 2},
        "clients": {"resources": {"num_cpus": 0.5}, **clients},
        "evaluation": {"server": False},
        "output": {"dir": str(tmp_path / "runs"), "run_id": run_id, "plots": False},
    }


def test_sampled_clients_per_round_follow_the_seed(tmp_path: Path) -> None:
    job = _noop_job(tmp_path, "sampled", {"count": 8, "pool_size": 2, "sample_fraction": 0.5}, rounds=3)
    run = run_experiment(load_config(base=job), show_progress=False)
    ids = client_ids(8)
    by_round: dict[int, list[str]] = defaultdict(list)
    for r in _rows(run / "clients.jsonl"):
        by_round[r["round"]].append(r["client"])
    expected = {rnd: sample_clients(ids, rnd, seed=7, fraction=0.5) for rnd in (1, 2, 3)}
    assert {rnd: sorted(c) for rnd, c in by_round.items()} == expected
    assert all(len(c) == 4 for c in expected.values()) and len({tuple(c) for c in expected.values()}) > 1
    assert [r["clients_ok"] for r in _rows(run / "rounds.jsonl")] == [4, 4, 4]
    states, _, _ = Checkpointer(run).load("noop", 3)
    for cid in ids:  # a client's state moved exactly once per round it was sampled in
        rounds_in = sum(cid in expected[rnd] for rnd in (1, 2, 3))
        assert (states[cid].rounds_trained if cid in states else 0) == rounds_in, cid


def test_groups_and_a_straggler_cut_by_the_deadline(tmp_path: Path) -> None:
    # The deadline leaves room for a cold first task on a loaded 2-core box (imports, the task card, shards: 10+ s).
    groups = [{"name": "fast", "count": 3, "pool_size": 1},
              {"name": "slow", "count": 1, "pool_size": 1, "slowdown_s": 60, "resources": {"num_cpus": 0.25}}]
    clients = {"count": 4, "groups": groups, "round_deadline_s": 30, "quorum": 0.75}
    run = run_experiment(load_config(base=_noop_job(tmp_path, "deadline", clients, rounds=2)), show_progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["pool"]["workers"] == 2
    rows = _rows(run / "clients.jsonl")
    assert sorted((r["round"], r["client"]) for r in rows) == [(r, f"c00{i}") for r in (1, 2) for i in range(3)]
    assert {r["worker"] for r in rows} == {"fast-0"}  # each group's clients run on its own workers
    late = _rows(run / "failures.jsonl")
    assert [(f["round"], f["client"], f.get("late")) for f in late] == [(1, "c003", True), (2, "c003", True)]
    assert "DeadlineExceeded" in late[0]["error"]
    assert [(r["clients_ok"], r["clients_late"]) for r in _rows(run / "rounds.jsonl")] == [(3, 1), (3, 1)]
    states, _, _ = Checkpointer(run).load("noop", 2)
    assert "c003" not in states  # its late results were never applied to its state
    assert all(states[f"c00{i}"].rounds_trained == 2 for i in range(3))
