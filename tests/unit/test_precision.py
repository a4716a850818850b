"""`models.dtype: auto` resolves to bfloat16 only where the device runs it natively, once per run (recorded in the
run's config), and a job asking for bfloat16 on a CPU without it is told so in one line (validate and run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from estuary.cli import main
from estuary.config import ExperimentConfig
from estuary.lm.precision import bf16_note, native_bf16, resolve_dtype
from estuary.platform.dtypes import dtype_lines, resolve_run_dtype, resolve_server_dtype
from estuary.platform.loading import load_config
from estuary.serve.config import ServerConfig
from tests.conftest import REPO, build_tiny_model

QUICKSTART = REPO / "jobs" / "quickstart.yaml"


def cpu_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_and_named_dtypes_stay(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    cpu_bf16(monkeypatch, native)
    assert native_bf16() is native
    assert resolve_dtype("auto") == ("bfloat16" if native else "float32")
    assert resolve_dtype("bfloat16") == "bfloat16" and resolve_dtype("float32") == "float32"
    assert resolve_dtype("auto", on_gpu=True) == "bfloat16"  # no GPU here: a requested one is taken as Ampere+
    assert ServerConfig(dtype="auto").resolved_dtype() == resolve_dtype("auto")
    assert (bf16_note("models.dtype", "bfloat16") is None) is native
    assert bf16_note("models.dtype", "float32") is None


def test_the_run_resolves_auto_once_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_bf16(monkeypatch, False)
    cfg = load_config(QUICKSTART)
    assert cfg.models.dtype == "auto"
    resolved, line = resolve_run_dtype(cfg)
    assert resolved.models.dtype == "float32" and cfg.models.dtype == "auto"
    assert line == "models.dtype auto → float32 (this CPU has no native bfloat16: no AVX512_BF16)"
    assert yaml.safe_load(resolved.to_yaml())["models"]["dtype"] == "float32"  # what config.yaml records
    assert resolved.models.for_client(1) == cfg.models.for_client(1)
    gpu = load_config(QUICKSTART, ["clients.resources.num_gpus=0.5"])
    assert resolve_run_dtype(gpu)[0].models.dtype == "bfloat16"
    cpu_bf16(monkeypatch, True)
    assert dtype_lines(cfg)[1] == ["models.dtype auto → bfloat16 (this CPU runs bfloat16 natively)",
                                   "server.dtype auto → bfloat16 (this CPU runs bfloat16 natively)"]


def test_the_served_dtype_is_resolved_and_recorded_where_the_run_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_bf16(monkeypatch, False)
    cfg = load_config(QUICKSTART)
    assert cfg.server.dtype == "auto"
    resolved, line = resolve_server_dtype(cfg)
    assert line == "server.dtype auto → float32 (this CPU has no native bfloat16: no AVX512_BF16)"
    assert yaml.safe_load(resolved.to_yaml())["server"]["dtype"] == "float32"  # what config.yaml records
    assert resolved.server.resolved_dtype() == cfg.server.resolved_dtype()  # what the deployment would pick
    named = load_config(QUICKSTART, ["server.dtype=bfloat16"])
    assert resolve_server_dtype(named) == (named, None)
    unserved = load_config(REPO / "jobs" / "distildp-e2e.yaml")
    assert resolve_server_dtype(unserved)[1] is None  # no strategy serves the LLM: nothing to say


def client_lines(*overrides: str) -> tuple[ExperimentConfig, list[str]]:
    """What validate and run print about the clients' dtype (the served LLM's line aside)."""
    cfg, lines = dtype_lines(load_config(QUICKSTART, list(overrides)))
    return cfg, [line for line in lines if not line.startswith("server.")]


def test_bfloat16_on_a_cpu_without_it_is_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_bf16(monkeypatch, False)
    cfg, lines = client_lines("models.dtype=bfloat16")
    assert cfg.models.dtype == "bfloat16" and len(lines) == 1
    assert lines[0].startswith("models.dtype bfloat16: this CPU has no native bfloat16")
    assert "run as float32 GEMMs with bfloat16 rounding (bf16_matmul: auto" in lines[0]
    slow = client_lines("models.dtype=bfloat16", "models.bf16_matmul=torch")[1]
    assert len(slow) == 1 and "take torch's slow path" in slow[0] and "bf16_matmul: auto computes" in slow[0]
    assert client_lines("models.dtype=float32")[1] == []
    cpu_bf16(monkeypatch, True)
    assert client_lines("models.dtype=bfloat16")[1] == []


def test_validate_prints_the_choice(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cpu_bf16(monkeypatch, False)
    assert main(["validate", str(QUICKSTART)]) == 0
    assert "models.dtype auto → float32" in capsys.readouterr().out
    assert main(["validate", str(QUICKSTART), "--set", "models.dtype=bfloat16"]) == 0
    assert "models.dtype bfloat16: this CPU has no native bfloat16" in capsys.readouterr().out


def test_load_base_resolves_auto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from estuary.lm.model import load_base

    path = str(build_tiny_model(tmp_path, ["a good film", "a bad film"]))
    for native, want in ((False, torch.float32), (True, torch.bfloat16)):
        cpu_bf16(monkeypatch, native)
        model, _ = load_base(path, dtype="auto")
        assert model.dtype == want
    with pytest.raises(ValueError, match="or auto"):
        load_base(path, dtype="int8")


def test_a_run_records_its_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from estuary.lm.precision import host_facts

    cpu_bf16(monkeypatch, False)
    facts = host_facts()
    assert facts["native_bf16"] is False and facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(facts["cpus"], int) and facts["cpus"] >= 1
