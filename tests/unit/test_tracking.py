"""Experiment trackers (output.report_to): TensorBoard read back from its event files, MLflow against a local store
(skipped where mlflow is not installed), W&B through a fake module; resume without duplicated points; a missing or
failing tracker is one yellow line and the run goes on."""

from __future__ import annotations

import importlib.util
import struct
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from estuary.config import ExperimentConfig
from estuary.config.validation import format_validation_error
from estuary.errors import ConfigError
from estuary.platform.loading import apply_override
from estuary.platform.records import Recorder
from estuary.platform.tracking import Tracking, round_scalars
from estuary.runtime import dashboard_sign_in

pytestmark = pytest.mark.timeout(120)


def _cfg(tmp_path: Path, *report_to: str, **output: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {"name": "exp", "output": {"dir": str(tmp_path), "report_to": list(report_to), **output}})


def _row(strategy: str, rnd: int, acc: float = 0.5) -> dict[str, Any]:
    return {"strategy": strategy, "round": rnd, "clients_ok": 2, "clients_failed": 0, "clients_late": 0,
            "task_attempts": 2, "wall_s": 1.5, "phases_s": {"clients": 1.0, "evaluate": 0.5}, "examples": 16,
            "metrics": {"client/test/accuracy/mean": acc, "client/test/accuracy/min": acc - 0.1,
                        "client/test/accuracy/max": acc + 0.1, "server/llm/test/accuracy": 0.7},
            "epsilon": {"c000": 1.0 * rnd, "c001": 1.1 * rnd}}


def _start(cfg: ExperimentConfig, run_dir: Path) -> tuple[Recorder, Tracking, list[str]]:
    lines: list[str] = []
    rec = Recorder(run_dir)
    rec.tracking = Tracking.start(cfg, run_dir, log=lines.append)
    return rec, rec.tracking, lines


def _plot(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


def read_events(folder: Path) -> list[Any]:
    """Every Event of a TensorBoard run folder (TFRecord framing: length, its CRC, the Event, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            events.append(Event.FromString(data[i + 12:i + 12 + n]))
            i += 12 + n + 4
    return events


def scalar_steps(folder: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for ev in read_events(folder):
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out.setdefault(v.tag, []).append((ev.step, round(v.simple_value, 4)))
    return out


def test_round_scalars_are_the_rounds_jsonl_numbers() -> None:
    s = round_scalars(_row("standalone", 2))
    assert s["client/test/accuracy/mean"] == 0.5 and s["server/llm/test/accuracy"] == 0.7
    assert s["epsilon/c001"] == pytest.approx(2.2) and s["time/clients_s"] == 1.0 and s["time/round_s"] == 1.5
    assert s["round/clients_ok"] == 2 and s["round/examples"] == 16


def test_tensorboard_a_run_per_strategy_with_config_and_plots(tmp_path: Path) -> None:
    run_dir = tmp_path / "exp-1"
    rec, tracking, lines = _start(_cfg(tmp_path, "tensorboard"), run_dir)
    for strategy in ("zero_shot", "standalone"):
        for rnd in (1, 2):
            rec.write_round(_row(strategy, rnd, acc=0.5 + rnd / 10))
    tracking.close("complete", [_plot(run_dir / "plots" / "metrics.png")])
    assert lines == [f"[dim]tracking: tensorboard --logdir {run_dir / 'tensorboard'}[/dim]"]
    tb = run_dir / "tensorboard"
    assert sorted(p.name for p in tb.iterdir() if p.is_dir()) == ["standalone", "zero_shot"]
    steps = scalar_steps(tb / "standalone")
    assert steps["client/test/accuracy/mean"] == [(1, 0.6), (2, 0.7)]
    assert steps["epsilon/c000"] == [(1, 1.0), (2, 2.0)] and steps["time/evaluate_s"] == [(1, 0.5), (2, 0.5)]
    tags = {v.tag for ev in read_events(tb / "standalone") for v in ev.summary.value}
    assert {"_hparams_/session_start_info", "config/text_summary"} <= tags
    images = [v for ev in read_events(tb) for v in ev.summary.value if v.WhichOneof("value") == "image"]
    assert [(v.tag, v.image.width, v.image.height) for v in images] == [("plots/metrics", 40, 30)]


def test_resume_continues_the_tensorboard_run_without_duplicated_steps(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "tensorboard")
    run_dir = tmp_path / "exp-1"
    rec, tracking, _ = _start(cfg, run_dir)
    for rnd in (1, 2):  # round 2 is written and tracked, then the driver dies (SIGKILL) before its checkpoint
        rec.write_round(_row("standalone", rnd, acc=0.5 + rnd / 10))
    folder = run_dir / "tensorboard" / "standalone"
    on_disk = scalar_steps(folder)  # without a close: what a killed driver leaves
    assert len(on_disk) == len(round_scalars(_row("standalone", 2)))
    assert all([s for s, _ in points] == [1, 2] for points in on_disk.values())
    rec, tracking, _ = _start(cfg, run_dir)  # `estuary resume`: trackers first, then rounds.jsonl truncated
    rec.truncate_after(lambda r: r["round"] <= 1)
    for rnd in (2, 3):  # round 2 redone (the same numbers: resume is deterministic), round 3 new
        rec.write_round(_row("standalone", rnd, acc=0.5 + rnd / 10))
    tracking.close("complete")
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # the old file, and the resumed run's
    for tag, points in scalar_steps(folder).items():
        assert [s for s, _ in points] == [1, 2, 3], tag
    tags = [v.tag for ev in read_events(folder) for v in ev.summary.value]
    assert tags.count("_hparams_/session_start_info") == 1 and tags.count("config/text_summary") == 1
    assert [r["round"] for r in rec.rounds()] == [1, 2, 3]


def test_a_missing_tracker_is_one_yellow_line_and_the_others_go_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow → ImportError, as when not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    run_dir = tmp_path / "exp-1"
    rec, tracking, lines = _start(_cfg(tmp_path, "tensorboard", "mlflow", "wandb"), run_dir)
    yellow = [line for line in lines if line.startswith("[yellow]")]
    assert len(yellow) == 2 and all("\n" not in line for line in yellow)
    assert "mlflow is not installed" in yellow[0] and "requirements/tracking.txt" in yellow[0]
    assert "wandb is not installed" in yellow[1] and "the run continues without it" in yellow[1]
    assert [t.name for t in tracking.trackers] == ["tensorboard"]
    rec.write_round(_row("standalone", 1))
    tracking.close("complete")
    assert scalar_steps(run_dir / "tensorboard" / "standalone")["client/test/accuracy/mean"] == [(1, 0.5)]


def test_a_tracker_failing_mid_run_is_dropped_with_one_line(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        def log(self, strategy: str, step: int, scalars: dict[str, float]) -> None:
            raise OSError("disk full\nsecond line")

    class Good:
        name = "good"
        points: list[int] = []

        def log(self, strategy: str, step: int, scalars: dict[str, float]) -> None:
            self.points.append(step)

        def finish(self, status: str, plots: list[Path]) -> None:
            self.points.append(-1)

    lines: list[str] = []
    tracking = Tracking([Broken(), Good()], log=lines.append)  # type: ignore[list-item]
    for rnd in (1, 2):
        tracking.log_round(_row("standalone", rnd))
    tracking.close("complete")
    assert lines == ["[yellow]tracking: broken failed (OSError: disk full) — the run continues without it[/yellow]"]
    assert Good.points == [1, 2, -1]


def test_unreachable_mlflow_server_is_one_yellow_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))  # installed or not: fails before use
    _, tracking, lines = _start(_cfg(tmp_path, "mlflow", mlflow_uri="http://127.0.0.1:9"), tmp_path / "exp-1")
    assert tracking.trackers == [] and len(lines) == 1
    assert lines[0].startswith("[yellow]tracking: mlflow did not start (ConnectionError: http://127.0.0.1:9 is not")


def _load(**output: Any) -> ExperimentConfig:
    """A job's output section through the job loader's one-line messages (without the strategies' checks)."""
    try:
        return ExperimentConfig.model_validate({"output": output})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "job.yaml", ExperimentConfig)) from None


def test_report_to_is_checked_with_did_you_mean() -> None:
    with pytest.raises(ConfigError) as err:
        _load(report_to=["tensorboard", "mlfow"])
    assert str(err.value).startswith("job.yaml: field 'output.report_to': unknown tracker 'mlfow' — did you mean "
                                     "'mlflow'? (known: tensorboard, mlflow, wandb; [] for none)")
    assert "\n" not in str(err.value)
    assert _load(report_to="wandb").output.report_to == ["wandb"]
    assert _load(report_to="none").output.report_to == []
    data: dict[str, Any] = {}
    apply_override(data, "output.report_to=[mlflow,tensorboard,mlflow]")  # --set
    assert _load(**data["output"]).output.report_to == ["mlflow", "tensorboard"]
    assert ExperimentConfig().output.report_to == ["tensorboard"]


def test_dashboard_line_says_how_to_sign_in(monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    line = dashboard_sign_in("127.0.0.1:8265")
    assert line.startswith("Ray dashboard: http://127.0.0.1:8265 — sign in with the token in ~/.ray/auth_token")
    assert "`ray get-auth-token` prints it" in line and "Prometheus" in line and "TensorBoard" in line
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert dashboard_sign_in("127.0.0.1:8265") == "Ray dashboard: http://127.0.0.1:8265"


# ---------------------------------------------------------------------------------------------- W&B (a fake module)
class FakeRun:
    def __init__(self, log: list[tuple[str, Any]], **kwargs: Any) -> None:
        self.kwargs, self._log = kwargs, log
        log.append(("init", kwargs))

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        self._log.append(("log", (self.kwargs["name"], step, data)))

    def finish(self, exit_code: int = 0) -> None:
        self._log.append(("finish", (self.kwargs["name"], exit_code)))


def fake_wandb(calls: list[tuple[str, Any]]) -> types.ModuleType:
    mod = types.ModuleType("wandb")
    mod.init = lambda **kw: FakeRun(calls, **kw)  # type: ignore[attr-defined]
    mod.Settings = lambda **kw: kw  # type: ignore[attr-defined]
    mod.Image = lambda path: f"<image {Path(path).name}>"  # type: ignore[attr-defined]
    return mod


def test_wandb_offline_group_is_the_run_and_resume_keeps_ids(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg, run_dir = _cfg(tmp_path, "wandb"), tmp_path / "exp-1"
    rec, tracking, lines = _start(cfg, run_dir)
    assert "W&B offline" in lines[0]
    for strategy in ("zero_shot", "standalone"):
        rec.write_round(_row(strategy, 1))
    tracking.close("failed")
    inits = [kw for what, kw in calls if what == "init"]
    assert [(kw["name"], kw["group"], kw["project"], kw["mode"], kw["job_type"]) for kw in inits] == [
        ("exp-1/zero_shot", "exp-1", "exp", "offline", "zero_shot"),
        ("exp-1/standalone", "exp-1", "exp", "offline", "standalone")]
    assert inits[0]["dir"] == str(run_dir) and inits[0]["resume"] == "allow"
    assert inits[0]["config"]["output"]["report_to"] == ["wandb"]
    logs = [c for what, c in calls if what == "log"]
    assert [(name, step) for name, step, _ in logs] == [("exp-1/zero_shot", 1), ("exp-1/standalone", 1)]
    assert logs[0][2]["epsilon/c001"] == pytest.approx(1.1)
    assert [c for what, c in calls if what == "finish"] == [("exp-1/zero_shot", 0), ("exp-1/standalone", 1)]

    calls.clear()  # estuary resume: the same W&B runs, the rounds already logged are not sent again
    rec, tracking, _ = _start(cfg, run_dir)
    rec.write_round(_row("standalone", 1))
    rec.write_round(_row("standalone", 2))
    tracking.close("complete", [_plot(run_dir / "plots" / "metrics.png")])
    resumed = [kw for what, kw in calls if what == "init"]
    assert resumed[0]["id"] == inits[1]["id"] and resumed[0]["name"] == "exp-1/standalone"
    assert next((name, step) for what, (name, step, *_) in calls if what == "log") == ("exp-1/standalone", 2)
    assert resumed[1]["name"] == "exp-1" and resumed[1]["job_type"] == "plots"
    assert calls[-2] == ("log", ("exp-1", None, {"plots/metrics": "<image metrics.png>"}))


def test_wandb_logged_in_goes_online_and_unreachable_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb([]))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    _, tracking, lines = _start(_cfg(tmp_path, "wandb", "tensorboard"), tmp_path / "exp-1")
    assert [t.name for t in tracking.trackers] == ["tensorboard"]
    assert lines[0].startswith("[yellow]tracking: wandb did not start (ConnectionError: http://127.0.0.1:9")


# ---------------------------------------------------------------------------------------------- MLflow (real)
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                    reason="mlflow is not installed (pip install -e .[tracking])")
def test_mlflow_parent_run_per_run_id_child_per_strategy_and_resume(tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg, run_dir = _cfg(tmp_path, "mlflow"), tmp_path / "exp-1"
    rec, tracking, lines = _start(cfg, run_dir)
    assert lines == [f"[dim]tracking: MLflow experiment 'exp' at {(tmp_path / 'mlruns').as_uri()}[/dim]"]
    for strategy in ("zero_shot", "standalone"):
        for rnd in (1, 2):
            rec.write_round(_row(strategy, rnd, acc=0.5 + rnd / 10))
    tracking.close("failed")
    rec, tracking, _ = _start(cfg, run_dir)  # resume: round 2 redone, round 3 new
    rec.truncate_after(lambda r: r["strategy"] == "zero_shot" or r["round"] <= 1)
    for rnd in (2, 3):
        rec.write_round(_row("standalone", rnd, acc=0.5 + rnd / 10))
    tracking.close("complete", [_plot(run_dir / "plots" / "metrics.png")])

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    exp = client.get_experiment_by_name("exp")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["exp-1", "exp-1/standalone", "exp-1/zero_shot"]
    parent = runs["exp-1"].info.run_id
    assert all(runs[n].data.tags["mlflow.parentRunId"] == parent for n in ("exp-1/standalone", "exp-1/zero_shot"))
    assert runs["exp-1"].data.params["output.report_to"] == '["mlflow"]'
    assert runs["exp-1/standalone"].data.params["training.lr"] == "0.0005"
    history = client.get_metric_history(runs["exp-1/standalone"].info.run_id, "client/test/accuracy/mean")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert [m.step for m in client.get_metric_history(runs["exp-1/zero_shot"].info.run_id, "epsilon/c000")] == [1, 2]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}  # zero_shot before the failure, the rest at the end
    assert [a.path for a in client.list_artifacts(parent, "plots")] == ["plots/metrics.png"]


# ---------------------------------------------------------------------------------------------- ε per client in a round
def test_a_rounds_row_carries_each_clients_epsilon(tmp_path: Path) -> None:
    from estuary.platform.progress import RunProgress
    from estuary.platform.run_context import RunContext
    from estuary.privacy.ledger import LedgerEntry
    from estuary.wire import Egress, RoundOutcome

    pool = types.SimpleNamespace(write_shards=lambda folder: None)  # what end_round uses of a ClientPool
    server = types.SimpleNamespace(on_generate=None)
    cfg = _cfg(tmp_path, "tensorboard")
    rec, tracking, _ = _start(cfg, tmp_path / "exp-1")
    ctx = RunContext(cfg, "exp-1", rec, pool, server, RunProgress(enabled=False))  # type: ignore[arg-type]
    ctx.metrics = types.SimpleNamespace(on_round=lambda *a: None)  # type: ignore[assignment]

    def entry(eps: float) -> LedgerEntry:
        return LedgerEntry("dp-sgd", "subsampled-gaussian", epsilon_after=eps, delta=1e-5, accountant="rdp")

    outcome = RoundOutcome({"c000": Egress("c000", 1, "standalone", privacy=[entry(0.5), entry(1.25)]),
                            "c001": Egress("c001", 1, "standalone", privacy=[entry(float("inf"))]),
                            "c002": Egress("c002", 1, "standalone")}, {})
    ctx.record_privacy("standalone", 1, outcome)
    strategy = types.SimpleNamespace(name="standalone", state_dict=dict)  # what end_round uses of a Strategy
    ctx.end_round(strategy, 1, {"client/train/loss/mean": 1.0}, outcome, 2.0, {"clients": 2.0})  # type: ignore[arg-type]
    tracking.close("complete")
    assert rec.rounds()[0]["epsilon"] == {"c000": 1.25}  # the ledger after the round; ∞ (no DP) is not a point
    steps = scalar_steps(tmp_path / "exp-1" / "tensorboard" / "standalone")
    assert steps["epsilon/c000"] == [(1, 1.25)] and "epsilon/c001" not in steps


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (pip install -e .[tracking]); the fake-module tests cover the calls")
def test_real_wandb_writes_offline_runs_into_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    import json

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg, run_dir = _cfg(tmp_path, "wandb"), tmp_path / "exp-1"
    for rounds in ((1,), (2,)):  # the run, then its resume
        rec, tracking, lines = _start(cfg, run_dir)
        for rnd in rounds:
            rec.write_round(_row("standalone", rnd))
        tracking.close("complete", [_plot(run_dir / "plots" / "metrics.png")] if rnd == 2 else [])
    assert [line for line in lines if "yellow" in line] == []
    ids = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    offline = sorted(p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*"))
    assert offline == sorted([ids["standalone"], ids["standalone"], ids["plots"]])
