"""Job files: typed config, overrides and one-line errors (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from estuary.cli import main
from estuary.config import ExperimentConfig
from estuary.errors import ConfigError
from estuary.platform.loading import explain, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_every_shipped_job_validates() -> None:
    jobs = sorted((REPO / "jobs").glob("*.yaml"))
    assert jobs, "no jobs/*.yaml"
    for job in jobs:
        cfg = load_config(job)
        assert cfg.strategies()[-1] == cfg.method


def test_defaults_and_strategy_order() -> None:
    cfg = load_config(base={"method": "standalone", "baselines": ["centralized", "zero_shot", "standalone"]})
    assert cfg.strategies() == ["zero_shot", "centralized", "standalone"]
    assert cfg.models.client == "smollm2-135m" and cfg.models.server == "qwen2.5-0.5b"


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    job = write(tmp_path, "name: x\nclients: {count: 4}\n")
    cfg = load_config(job, ["clients.count=16", "training.lr=1e-4", "training.lora.targets=[q_proj]",
                            "data.test_size=null", "clients.resources.custom={slot: 1}"])
    assert cfg.clients.count == 16 and cfg.training.lr == 1e-4
    assert cfg.training.lora.targets == ["q_proj"] and cfg.data.test_size is None
    assert cfg.clients.resources.custom == {"slot": 1.0}


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("clients: {cuont: 3}\n", [], "unknown key 'clients.cuont' — did you mean 'count'?"),
        ("rounds: two\n", [], "field 'rounds': Input should be a valid integer"),
        ("rounds: 0\n", [], "field 'rounds': Input should be greater than or equal to 1"),
        ("method: fdtk\n", [], "unknown method 'fdtk'"),
        ("method: standalone\nmethod_params: {stepz: 3}\n", [],
         "unknown key 'stepz' in the parameters of 'standalone'"),
        ("baseline_params: {centralized: {steps: x}}\n", [], "parameter 'steps' of 'centralized'"),
        ("baselines: [zero_shot]\nbaseline_params: {centralized: {}}\n", [],
         "baseline_params.centralized names no"),
        ("data: {partition: random}\n", [], "field 'data.partition'"),
        ("clients: {count: 2}\nmodels: {per_client: {5: x}}\n", [], "client index 5 outside 0..1"),
        ("name: x\n", ["clients.count"], "expected KEY=VALUE"),
        ("- a\n- b\n", [], "top level must be a mapping"),
        ("a: [1,\n", [], "is not valid YAML"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(tmp_path: Path, text: str, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_job_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("jobs/nope.yaml")


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REPO / "jobs" / "quickstart.yaml")]) == 0
    assert main(["validate", str(write(tmp_path, "training: {lr: -1}\n"))]) == 2
    err = capsys.readouterr().err
    assert "training.lr" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_explain_covers_every_leaf_with_help() -> None:
    rows = explain(ExperimentConfig)
    keys = {k for k, _, _ in rows}
    assert {"clients.resources.num_gpus", "training.lora.r", "data.alpha", "output.dir"} <= keys
    assert all(help_text for _, _, help_text in rows)
