"""One resources vocabulary (`estuary.resources`): clients.resources, server.resources and train.resources, and
the old keys (server.num_gpus, train.cpus_per_worker, ...) still read with one deprecation line (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from estuary import resources
from estuary.config.clients import ClientResources
from estuary.errors import ConfigError
from estuary.platform.loading import load_config
from estuary.resources import Resources
from estuary.serve.config import ServerConfig, ServerResources
from estuary.train.train_config import TrainConfig, TrainResources

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def notes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The deprecation lines printed during the test (none remembered from earlier tests)."""
    lines: list[str] = []
    monkeypatch.setattr(resources, "_noted", set())
    monkeypatch.setattr(resources, "_sink", lines.append)
    return lines


# -- the shared model ---------------------------------------------------------------------------------------
def test_defaults_per_section() -> None:
    assert Resources() == Resources(num_cpus=1.0, num_gpus=0.0, custom={})
    assert ClientResources().num_cpus == 1.0 and ClientResources().torch_threads is None
    assert ServerResources().num_cpus == 0.0  # the replica's logical CPUs: it sits beside the client workers
    assert TrainResources().num_cpus == 1.0
    for model in (Resources, ClientResources, ServerResources, TrainResources):
        assert set(Resources.model_fields) <= set(model.model_fields)
        assert all(f.description for f in model.model_fields.values())
    with pytest.raises(ValueError, match="greater than 0"):
        TrainResources(num_cpus=0)  # a Ray Train worker needs CPU
    with pytest.raises(ValueError, match="whole number of GPUs"):
        Resources(num_gpus=1.5)
    with pytest.raises(ValueError, match="extra"):
        Resources(num_cpu=1)  # type: ignore[call-arg]


def test_ray_options_and_bundle() -> None:
    res = Resources(num_cpus=2, num_gpus=0.25, custom={"estuary_client": 1})
    assert res.ray_options() == {"num_cpus": 2.0, "num_gpus": 0.25, "resources": {"estuary_client": 1.0}}
    assert res.bundle() == {"CPU": 2.0, "GPU": 0.25, "estuary_client": 1.0}
    assert Resources().ray_options() == {"num_cpus": 1.0, "num_gpus": 0.0}  # no empty `resources`
    assert Resources().bundle() == {"CPU": 1.0}  # zero amounts left out
    assert ServerResources().bundle() == {}
    assert [Resources.field_of(k) for k in ("CPU", "GPU", "slot")] == ["num_cpus", "num_gpus", "custom.slot"]
    assert res.on_gpu and not Resources().on_gpu
    assert Resources(num_cpus=0.5).threads() == 1 and Resources(num_cpus=3.7).threads() == 3
    assert ClientResources(num_cpus=4, torch_threads=2).threads() == 2 and ClientResources(num_cpus=4).threads() == 4


# -- the three sections, new keys ---------------------------------------------------------------------------
def test_sections_read_the_new_keys(notes: list[str]) -> None:
    job = {
        "clients": {"count": 2, "resources": {"num_cpus": 0.5, "num_gpus": 0.25, "custom": {"estuary_client": 1},
                                              "torch_threads": 2},
                    "groups": [{"name": "a", "count": 1}, {"name": "b", "count": 1, "resources": {"num_gpus": 1}}]},
        "server": {"resources": {"num_gpus": 1, "custom": {"estuary_server": 1}}, "gpu_memory_utilization": 0.8},
    }
    cfg = load_config(base=job)
    assert cfg.clients.resources == ClientResources(num_cpus=0.5, num_gpus=0.25, custom={"estuary_client": 1},
                                                    torch_threads=2)
    assert cfg.clients.groups[1].resources == ClientResources(num_cpus=1, num_gpus=1)
    assert cfg.server.resources == ServerResources(num_cpus=0, num_gpus=1, custom={"estuary_server": 1})
    assert cfg.server.actor_options()["resources"] == {"estuary_server": 1} and cfg.server.on_gpu
    train = TrainConfig.load({"workers": 2, "resources": {"num_cpus": 2, "num_gpus": 1,
                                                          "custom": {"estuary_server": 1}}})
    assert train.resources.bundle() == {"CPU": 2, "GPU": 1, "estuary_server": 1} and train.on_gpu
    again = type(cfg).model_validate_json(cfg.model_dump_json())  # what a client worker does with the job
    assert again.server.resources == cfg.server.resources and again.clients.resources == cfg.clients.resources
    assert notes == []


# -- the old keys -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("server", "field", "value"), [
    ({"num_cpus": 2}, "num_cpus", 2.0),
    ({"num_gpus": 0.5}, "num_gpus", 0.5),
    ({"resources": {"estuary_server": 1}}, "custom", {"estuary_server": 1.0}),
])
def test_old_server_keys_land_in_resources(notes: list[str], server: dict[str, Any], field: str, value: Any) -> None:
    cfg = load_config(base={"server": server})
    assert getattr(cfg.server.resources, field) == value
    old = next(iter(server)) if field != "custom" else "resources.estuary_server"
    assert len(notes) == 1 and f"server.{old} → server.resources.{field}" in notes[0]


def test_old_server_section_all_at_once(notes: list[str]) -> None:
    cfg = ServerConfig.model_validate({"num_cpus": 1, "num_gpus": 1, "resources": {"estuary_server": 1}})
    assert cfg.resources == ServerResources(num_cpus=1, num_gpus=1, custom={"estuary_server": 1})
    assert len(notes) == 1 and "\n" not in notes[0]
    for key in ("server.num_cpus", "server.num_gpus", "server.resources.estuary_server"):
        assert key in notes[0]


@pytest.mark.parametrize(("train", "field", "value"), [
    ({"cpus_per_worker": 0.05}, "num_cpus", 0.05),
    ({"gpus_per_worker": 1}, "num_gpus", 1.0),
    ({"resources_per_worker": {"estuary_server": 1}}, "custom", {"estuary_server": 1.0}),
])
def test_old_train_keys_land_in_resources(notes: list[str], train: dict[str, Any], field: str, value: Any) -> None:
    cfg = TrainConfig.load(train)
    assert getattr(cfg.resources, field) == value
    assert len(notes) == 1 and f"train.{next(iter(train))} → train.resources.{field}" in notes[0]


def test_a_note_is_printed_once_per_process(notes: list[str]) -> None:
    for _ in range(3):  # a strategy validates its llm_train every round
        TrainConfig.load({"workers": 1, "cpus_per_worker": 0.5})
    assert len(notes) == 1


def test_the_note_is_one_line_on_stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(resources, "_noted", set())
    monkeypatch.setattr(resources, "_sink", resources._print_note)
    ServerConfig.model_validate({"num_gpus": 1})
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("warning: ") and len(captured.err.splitlines()) == 1


def test_cli_prints_the_note_in_its_warning_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from estuary.cli import main

    monkeypatch.setattr(resources, "_noted", set())
    monkeypatch.setattr(resources, "_sink", resources._sink)  # main() sets the CLI's; put it back afterwards
    job = tmp_path / "old.yaml"
    job.write_text("server:\n  num_gpus: 1\n")
    assert main(["validate", str(job)]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "server.num_gpus → server.resources.num_gpus" in warnings[0]


# -- old and new together: refused ----------------------------------------------------------------------------
@pytest.mark.parametrize(("server", "old", "new"), [
    ({"num_cpus": 1, "resources": {"num_cpus": 2}}, "server.num_cpus", "server.resources.num_cpus"),
    ({"num_gpus": 1, "resources": {"num_gpus": 1}}, "server.num_gpus", "server.resources.num_gpus"),
    ({"resources": {"slot": 1, "custom": {"slot": 2}}}, "server.resources.slot", "server.resources.custom.slot"),
])
def test_old_and_new_server_key_is_refused(tmp_path: Path, server: dict[str, Any], old: str, new: str) -> None:
    job = tmp_path / "both.yaml"
    job.write_text(yaml.safe_dump({"server": server}))
    with pytest.raises(ConfigError) as info:
        load_config(job)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(job)) and old in msg and new in msg


@pytest.mark.parametrize(("train", "old", "new"), [
    ({"cpus_per_worker": 1, "resources": {"num_cpus": 2}}, "train.cpus_per_worker", "train.resources.num_cpus"),
    ({"gpus_per_worker": 1, "resources": {"num_gpus": 1}}, "train.gpus_per_worker", "train.resources.num_gpus"),
    ({"resources_per_worker": {"a": 1}, "resources": {"custom": {"b": 1}}}, "train.resources_per_worker",
     "train.resources.custom"),
])
def test_old_and_new_train_key_is_refused(train: dict[str, Any], old: str, new: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(train)
    msg = str(info.value)
    assert "\n" not in msg and old in msg and new in msg


def test_misspelt_server_resource_is_not_taken_for_a_custom_one(notes: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'server.resources.num_gpu' — did you mean 'num_gpus'"):
        load_config(base={"server": {"resources": {"num_gpu": 1}}})
    assert notes == []


# -- what ships uses the new keys ---------------------------------------------------------------------------
def test_shipped_jobs_use_the_new_keys(notes: list[str]) -> None:
    for job in sorted((REPO / "jobs").glob("*.yaml")):
        cfg = load_config(job)
        trains = [cfg.method_params.get("llm_train")] + [p.get("llm_train") for p in cfg.baseline_params.values()]
        for train in filter(None, trains):
            TrainConfig.load(train, f"{job.name}: llm_train")
    assert notes == []
    text = "\n".join(p.read_text() for p in [REPO / "cluster.yaml", *REPO.glob("docs/*.md")])  # README names them once
    for old in ("cpus_per_worker", "gpus_per_worker", "resources_per_worker", "server.num_gpus", "server.num_cpus"):
        assert old not in text
