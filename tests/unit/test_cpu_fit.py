"""Server LLM training that the client pool leaves no CPUs for is refused before Ray starts (one line naming the
fields and a fix that passes), in `estuary validate` as in `estuary run`; jobs that fit, or that the check cannot
size (a Ray cluster, GPU or custom resources), pass with a line saying what was checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from estuary.cli import main
from estuary.errors import ConfigError
from estuary.platform.cpu_fit import check_cpu_fit
from estuary.platform.loading import load_config
from tests.conftest import REPO

QUICKSTART = REPO / "jobs" / "quickstart.yaml"
FEDMKT = REPO / "jobs" / "fedmkt-sst2.yaml"
TRAIN = "method_params.train_llm=true"


@pytest.fixture(autouse=True)
def no_ray_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check sizes the local node a run would start; a Ray cluster already up in the test process (another
    test's) would make it step aside."""
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    monkeypatch.delenv("ESTUARY_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)


def test_a_pool_holding_every_cpu_refuses_the_llm_training_and_its_fix_passes() -> None:
    cfg = load_config(QUICKSTART, [TRAIN])  # 2 pooled workers × 1 CPU; llm_train's default 2 workers × 1 CPU
    with pytest.raises(ConfigError) as err:
        check_cpu_fit(cfg, cpus=2)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith("method_params.llm_train: fedmkt trains the server LLM on 2 Ray Train worker(s)")
    assert "the client pool's 2 workers hold 2 of this node's 2" in line
    fix = re.search(r"set clients\.resources\.num_cpus ([\d.]+) and method_params\.llm_train\.resources\.num_cpus "
                    r"([\d.]+)", line)
    assert fix is not None, line
    fixed = load_config(QUICKSTART, [TRAIN, f"clients.resources.num_cpus={fix[1]}",
                                     f"method_params.llm_train={{resources: {{num_cpus: {fix[2]}}}}}"])
    assert check_cpu_fit(fixed, cpus=2) == [
        "training CPUs for fedmkt: 2 worker(s) × 0.01 of the 0.02 left by the client pool (1.98) and the server (0) "
        "on 2"]


def test_training_wider_than_what_the_pool_leaves_is_told_how_much_is_left() -> None:
    cfg = load_config(FEDMKT, ["method_params.llm_train.workers=2",
                               "method_params.llm_train.resources.num_cpus=0.5"])  # the pool holds 2 × 0.9
    with pytest.raises(ConfigError, match=r"lower method_params\.llm_train\.resources\.num_cpus to 0\.1 or less$"):
        check_cpu_fit(cfg, cpus=2)
    assert len(check_cpu_fit(cfg, cpus=3)) == 2  # llm_centralized trains with the method's llm_train, then fedmkt


def test_a_served_replica_kept_while_training_counts() -> None:
    cfg = load_config(FEDMKT, ["server.release_while_training=false", "server.resources.num_cpus=0.5"])
    with pytest.raises(ConfigError, match=r"the server's replicas 0\.5 of this node's 2"):
        check_cpu_fit(cfg, cpus=2)
    released = load_config(FEDMKT, ["server.resources.num_cpus=0.5"])  # stopped while the LLM trains
    assert all("left by the client pool (1.8) and the server (0)" in line for line in check_cpu_fit(released, cpus=2))


def test_the_llm_centralized_baseline_names_its_own_field() -> None:
    cfg = load_config(FEDMKT, ["baseline_params.llm_centralized={llm_train: {workers: 2}}"])
    with pytest.raises(ConfigError, match=r"^baseline_params\.llm_centralized\.llm_train: llm_centralized trains"):
        check_cpu_fit(cfg, cpus=2)


def test_jobs_it_cannot_size_or_that_train_nothing_pass() -> None:
    assert check_cpu_fit(load_config(QUICKSTART), cpus=2) == []  # train_llm: false
    on_cluster = load_config(QUICKSTART, [TRAIN, "ray.address=ray://head:10001"])
    assert "not checked" in check_cpu_fit(on_cluster, cpus=2)[0]
    gpus = load_config(QUICKSTART, [TRAIN, "clients.resources.num_gpus=0.25"])
    assert "GPUs or custom resources" in check_cpu_fit(gpus, cpus=2)[0]
    assert "not checked" in check_cpu_fit(load_config(QUICKSTART, [TRAIN]), "auto", cpus=2)[0]


def test_a_cluster_named_in_the_environment_is_not_sized_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESTUARY_RAY_ADDRESS", "ray://head:10001")
    assert "not checked" in check_cpu_fit(load_config(QUICKSTART, [TRAIN]), cpus=2)[0]


def test_validate_refuses_it_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("estuary.platform.cpu_fit.local_cpus", lambda cfg: 2.0)
    assert main(["validate", str(QUICKSTART), "--set", TRAIN]) == 2
    err = capsys.readouterr().err
    assert "method_params.llm_train: fedmkt trains the server LLM" in err and "Traceback" not in err
    fixed = ["--set", "clients.resources.num_cpus=0.99", "--set",  # the default models only: CI has no 1.5B
             "method_params.llm_train={resources: {num_cpus: 0.01}}"]
    assert main(["validate", str(QUICKSTART), "--set", TRAIN, *fixed]) == 0
    assert "training CPUs for fedmkt: 2 worker(s) × 0.01" in capsys.readouterr().out


def test_run_refuses_it_before_ray_starts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr("estuary.platform.cpu_fit.local_cpus", lambda cfg: 2.0)
    monkeypatch.setattr("estuary.platform.runner.ensure_ray", no_ray)
    assert main(["run", str(QUICKSTART), "--set", TRAIN, "--set", f"output.dir={tmp_path}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "method_params.llm_train: fedmkt trains the server LLM" in err and "Traceback" not in err
