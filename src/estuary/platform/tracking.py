"""Experiment trackers (`output.report_to`): every row of rounds.jsonl, the config and the plots, also in
TensorBoard, MLflow or W&B (the backends: `estuary.platform.trackers`).

One tracked run per strategy, named `<run id>/<strategy>`, grouped under the experiment; points have step = round.
`estuary resume` continues the same tracked runs (MLflow and W&B ids are kept in <run>/tracking.json) and skips
the rounds rounds.jsonl already held when it started, so no round is logged twice. A tracker that is not
installed or not reachable is one yellow line; the run goes on with the others.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from estuary.platform.records import read_jsonl
from estuary.platform.trackers import BACKENDS, Setup, Tracker

if TYPE_CHECKING:
    from estuary.config import ExperimentConfig

_TRACKING_REQS = "pip install --no-deps -r requirements/tracking.txt (or pip install -e .[tracking])"
INSTALL_HINT = {"tensorboard": "pip install tensorboardX", "mlflow": _TRACKING_REQS, "wandb": _TRACKING_REQS}


def round_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of one rounds.jsonl row: its metrics (clients' mean/std/min/max/n, the server's), clients
    ok/failed/late, examples, wall seconds per phase, and ε per client (`epsilon/<client>`)."""
    out = {k: float(v) for k, v in row.get("metrics", {}).items()
           if isinstance(v, (int, float)) and math.isfinite(v)}
    for key in ("clients_ok", "clients_failed", "clients_late", "task_attempts", "examples"):
        if key in row:
            out[f"round/{key}"] = float(row[key])
    if "wall_s" in row:
        out["time/round_s"] = float(row["wall_s"])
    out.update({f"time/{phase}_s": float(s) for phase, s in (row.get("phases_s") or {}).items()})
    out.update({f"epsilon/{cid}": float(e) for cid, e in (row.get("epsilon") or {}).items() if math.isfinite(e)})
    return out


def _read_ids(path: Path) -> dict[str, Any]:
    try:
        ids = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        ids = {}  # unreadable: new tracked runs rather than no run
    return ids if isinstance(ids, dict) else {}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Tracking:
    """The run's trackers behind one call per round; a tracker that fails is dropped with one yellow line."""

    def __init__(self, trackers: Iterable[Tracker], log: Callable[[str], None] = print,
                 logged: Iterable[tuple[str, int]] = ()) -> None:
        self.trackers = list(trackers)
        self.log = log
        self.logged = set(logged)  # (strategy, round) already in the trackers: never logged again

    @classmethod
    def start(cls, cfg: ExperimentConfig, run_dir: Path, log: Callable[[str], None] = print) -> Tracking:
        """The trackers of `output.report_to`, continuing the run folder's tracked runs on resume. Call it
        before a resumed run truncates rounds.jsonl: the rounds it holds are the ones already logged."""
        setup = Setup(run_dir, cfg.name, cfg.model_dump(mode="json"), Path(cfg.output.dir), cfg.output.mlflow_uri,
                      _read_ids(run_dir / "tracking.json"))
        trackers: list[Tracker] = []
        for name in cfg.output.report_to:
            try:
                trackers.append(BACKENDS[name](setup))
            except ImportError as exc:
                log(f"[yellow]tracking: {name} is not installed ({escape(_one_line(exc))}); "
                    f"{INSTALL_HINT[name]} — the run continues without it[/yellow]")
            except Exception as exc:
                log(f"[yellow]tracking: {name} did not start ({escape(_one_line(exc))}) — "
                    "the run continues without it[/yellow]")
        if trackers:
            log("[dim]tracking: " + escape("; ".join(t.where() for t in trackers)) + "[/dim]")
        logged = {(str(r.get("strategy")), int(r.get("round", 0))) for r in read_jsonl(run_dir / "rounds.jsonl")}
        return cls(trackers, log, logged)

    def _call(self, tracker: Tracker, what: str, *args: Any) -> None:
        try:
            getattr(tracker, what)(*args)
        except Exception as exc:
            self.trackers.remove(tracker)
            self.log(f"[yellow]tracking: {tracker.name} failed ({escape(_one_line(exc))}) — "
                     "the run continues without it[/yellow]")

    def log_round(self, row: dict[str, Any]) -> None:
        """One rounds.jsonl row into every tracker (step = round), unless it was logged before a resume."""
        key = (str(row["strategy"]), int(row["round"]))
        if key in self.logged:
            return
        self.logged.add(key)
        scalars = round_scalars(row)
        for tracker in list(self.trackers):
            self._call(tracker, "log", key[0], key[1], scalars)

    def close(self, status: str, plots: Iterable[Path] = ()) -> None:
        """End every tracked run with the run's status ("complete", "failed", "interrupted"), the plots attached."""
        for tracker in list(self.trackers):
            self._call(tracker, "finish", status, list(plots))
        self.trackers = []
