"""Scale and operations without a cluster: sampling, worker-group planning, config rules, Ray Job
submissions, loss phases for the dashboard, fault-drill decisions."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from estuary.client.groups import plan_groups
from estuary.config.faults import FaultsConfig
from estuary.errors import ConfigError
from estuary.platform.fault_drills import FaultInjector
from estuary.platform.jobs import build_submission, package_dir
from estuary.platform.loading import load_config
from estuary.platform.metrics import loss_phases
from estuary.platform.sampling import sample_clients, sample_size
from estuary.platform.strategy import client_ids


def _cfg(**clients: Any) -> Any:
    return load_config(base={"method": "noop", "baselines": [], "clients": clients})


def test_sampling_is_seeded_ordered_and_sized() -> None:
    ids = client_ids(100)
    a = sample_clients(ids, 3, seed=1, fraction=0.1)
    assert a == sample_clients(ids, 3, seed=1, fraction=0.1) and len(a) == 10 and a == sorted(a)
    assert a != sample_clients(ids, 4, seed=1, fraction=0.1) and a != sample_clients(ids, 3, seed=2, fraction=0.1)
    assert sample_clients(ids, 1, seed=0, count=7) == sample_clients(ids, 1, seed=0, fraction=0.07)
    assert sample_clients(ids, 1, seed=0) == ids and sample_clients(ids, 1, seed=0, count=500) == ids
    assert sample_size(3, fraction=0.01) == 1  # at least one client takes part


def test_config_rules_for_groups_and_sampling() -> None:
    with pytest.raises(ConfigError, match="sample_fraction or sample_count, not both"):
        _cfg(count=4, sample_fraction=0.5, sample_count=2)
    with pytest.raises(ConfigError, match="groups hold 3 clients but clients.count is 4"):
        _cfg(count=4, groups=[{"name": "a", "count": 3}])
    cfg = _cfg(count=5, groups=[{"name": "a", "count": 2, "model": "m-a"}, {"name": "b", "count": 3}])
    assert [cfg.models.for_client(i) for i in range(5)] == ["m-a", "m-a", "smollm2-135m", "smollm2-135m",
                                                           "smollm2-135m"]
    assert cfg.clients.group_of(4).name == "b"  # type: ignore[union-attr]
    again = type(cfg).model_validate_json(cfg.model_dump_json())  # how workers receive it
    assert again.models.for_client(1) == "m-a"


NODES = [
    {"Alive": True, "Resources": {"CPU": 8.0}},  # head: no client resource
    {"Alive": True, "Resources": {"CPU": 48.0, "GPU": 4.0, "estuary_client": 16.0}},
    {"Alive": True, "Resources": {"CPU": 48.0, "GPU": 4.0, "estuary_server": 4.0}},
]


def test_groups_share_nodes_without_oversubscribing() -> None:
    small = {"num_cpus": 1, "num_gpus": 0.25, "custom": {"estuary_client": 1}}
    big = {"num_cpus": 2, "num_gpus": 0.5, "custom": {"estuary_client": 2}}
    groups = [{"name": "small", "count": 200, "resources": small}, {"name": "big", "count": 100, "resources": big}]
    with pytest.raises(ConfigError, match=r"clients.groups\[big\]: the earlier groups' workers take every node"):
        plan_groups(_cfg(count=300, groups=groups), NODES)  # small alone fills the client node (4 GPUs x 4)
    groups[0]["pool_size"] = 8
    small_g, big_g = plan_groups(_cfg(count=300, groups=groups), NODES)
    assert (small_g.size, small_g.first_worker, small_g.start) == (8, 0, 0)
    assert (big_g.size, big_g.first_worker, big_g.start) == (4, 8, 200)  # 2 GPUs and 8 estuary_client left
    cfg = _cfg(count=8, groups=[{"name": "a", "count": 4, "resources": {"num_cpus": 1, "num_gpus": 0.5,
                                                                         "custom": {"estuary_client": 1}}},
                                {"name": "b", "count": 4, "resources": {"num_cpus": 1, "num_gpus": 0.5}}])
    a, b = plan_groups(cfg, NODES)
    assert (a.size, b.size, b.first_worker) == (4, 4, 4)  # b gets what a left: 4 GPUs on the two GPU nodes
    with pytest.raises(ConfigError, match=r"clients.groups\[b\].resources: no node can host"):
        plan_groups(_cfg(count=2, groups=[{"name": "a", "count": 1}, {"name": "b", "count": 1,
                                          "resources": {"custom": {"nowhere": 1}}}]), NODES)


def test_dedicated_groups_need_one_actor_per_client() -> None:
    res = {"num_cpus": 1, "num_gpus": 0.25, "custom": {"estuary_client": 1}}
    cfg = _cfg(count=20, mode="dedicated", groups=[{"name": "g", "count": 20, "resources": res}])
    with pytest.raises(ConfigError, match="needs 20 worker actors .* the cluster fits 16"):
        plan_groups(cfg, NODES)


def test_submission_uploads_job_and_package(tmp_path: Path) -> None:
    job = tmp_path / "j.yaml"
    job.write_text(yaml.safe_dump({"name": "x", "method": "noop", "baselines": []}))
    staging = tmp_path / "stage"
    staging.mkdir()
    sub = build_submission(str(job), ["clients.count=7"], staging=staging, env={"ESTUARY_DATA": "/d"},
                           driver_resources={"estuary_driver": 1.0})
    assert sub.run_id.startswith("x-") and sub.submission_id == f"estuary-{sub.run_id}"
    assert shlex.split(sub.entrypoint) == ["estuary", "run", "job.yaml", "--no-progress", "--set", "clients.count=7",
                                           "--set", f"output.run_id={sub.run_id}"]
    assert (staging / "job.yaml").read_text() == job.read_text()
    env = sub.runtime_env
    assert env["working_dir"] == str(staging) and env["py_modules"] == [str(package_dir())]
    assert env["env_vars"]["ESTUARY_DATA"] == "/d" and env["env_vars"]["HF_HUB_OFFLINE"]
    assert sub.metadata["estuary"] == "run" and sub.metadata["method"] == "noop"
    assert sub.kwargs()["entrypoint_resources"] == {"estuary_driver": 1.0}
    with pytest.raises(ConfigError, match="unknown key"):
        build_submission(str(job), ["clients.cuont=7"], staging=staging)


def test_loss_phases_for_the_dashboard() -> None:
    metrics = {"client/train/loss/mean": 0.5, "client/train/loss/std": 0.1, "client/test/accuracy/mean": 0.8,
               "server/llm_train/loss_last": 1.5, "server/llm_train/loss_first": 2.0}
    assert loss_phases(metrics) == {"client/train": 0.5, "server/llm_train": 1.5}


def test_fault_drill_is_seeded_and_capped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ray

    killed: list[Any] = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: killed.append(actor))
    cfg = FaultsConfig(kill_worker_prob=0.5, max_worker_kills=3, seed=4)
    runs = []
    for _ in range(2):
        inj = FaultInjector(cfg, tmp_path)
        runs.append([inj.after_result(["w0", "w1", "w2"], ["a", "b", "c"]) for _ in range(20)])
    assert runs[0] == runs[1] and sum(v is not None for v in runs[0]) == 3
    assert len((tmp_path / "faults.jsonl").read_text().splitlines()) == 6
    assert FaultInjector(FaultsConfig()).after_result(["w"], ["a"]) is None
