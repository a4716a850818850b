"""The tracker backends of `output.report_to`, one class each, through the libraries' own writers; the run drives
them through `estuary.platform.tracking.Tracking`.

  tensorboard  <run>/tensorboard/<strategy>/ (tensorboardX's event files); the plots in <run>/tensorboard/ itself
  mlflow       experiment = the job's name, a parent run per run id (config, plots), a child run per strategy;
               the store is output.mlflow_uri or the local <output.dir>/mlruns
  wandb        project = the job's name, group = the run id (the plots in a run named after it); offline
               (<run>/wandb/) unless the user is logged in or WANDB_MODE says otherwise
A constructor raises ImportError when its library is missing, another error when its server is not reachable.
"""

from __future__ import annotations

import json
import netrc
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from estuary.platform.records import atomic_write

MLFLOW_STATUS = {"complete": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """The resolved config as hyperparameters: dotted keys; lists and null as JSON text."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


def check_reachable(url: str, timeout: float = 3.0) -> None:
    """Raise ConnectionError (one line) when nothing listens at an http(s) URL's host and port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"{url} is not reachable ({exc.strerror or exc})") from None


@dataclass
class Setup:
    """What every tracker is built from."""

    run_dir: Path
    experiment: str  # the job's name
    config: dict[str, Any]  # the resolved job
    output_dir: Path
    mlflow_uri: str | None = None
    ids: dict[str, Any] = field(default_factory=dict)  # tracked-run ids by tracker (tracking.json)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    def save_ids(self) -> None:
        atomic_write(self.run_dir / "tracking.json", json.dumps(self.ids, indent=2) + "\n")


class Tracker(Protocol):
    """One backend. Its constructor raises ImportError (not installed) or another error (not reachable)."""

    name: str

    def where(self) -> str:
        """Where the user looks (printed once at the start)."""

    def log(self, strategy: str, step: int, scalars: dict[str, float]) -> None:
        """One round's points of a strategy's tracked run, durable when it returns."""

    def finish(self, status: str, plots: list[Path]) -> None:
        """The plots as images (a complete run), the runs' end status; close everything."""


class TensorBoardTracker:
    """tensorboardX's summaries through its synchronous EventsWriter: a round is on disk (fsync) when `log` returns.
    (SummaryWriter queues events for a thread, and its flush() leaves the queue alone: a driver killed right after a
    round lost part of that round's points, which resume then does not log again.)"""

    name = "tensorboard"

    def __init__(self, setup: Setup) -> None:
        summary, EventsWriter, Event = _tensorboardx()
        self.summary, self._writer_cls, self._event = summary, EventsWriter, Event
        self.setup = setup
        self.root = setup.run_dir / "tensorboard"
        self.writers: dict[str, Any] = {}

    def where(self) -> str:
        return f"tensorboard --logdir {self.root}"

    def _open(self, folder: Path) -> Any:
        # a resumed run adds an event file beside the old ones, named to sort after them even within the same second
        folder.mkdir(parents=True, exist_ok=True)
        return self._writer_cls(str(folder / "events"), f".{time.time_ns()}")

    def _write(self, writer: Any, step: int, *summaries: Any) -> None:
        summary = self.summary.Summary(value=[v for s in summaries for v in s.value])
        writer.write_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def _writer(self, strategy: str) -> Any:
        if strategy not in self.writers:
            folder = self.root / strategy
            fresh = not any(folder.glob("events.out.tfevents.*"))
            writer = self.writers[strategy] = self._open(folder)
            if fresh:  # the config once per tracked run: the HParams tab and the Text tab
                _, start_info, _ = self.summary.hparams({**flatten(self.setup.config), "strategy": strategy}, {})
                text = "\n".join("    " + line for line in json.dumps(self.setup.config, indent=2).splitlines())
                self._write(writer, 0, start_info, self.summary.text("config", text))
        return self.writers[strategy]

    def log(self, strategy: str, step: int, scalars: dict[str, float]) -> None:
        writer = self._writer(strategy)
        self._write(writer, step, *(self.summary.scalar(key, value) for key, value in scalars.items()))
        writer.flush()

    def finish(self, status: str, plots: list[Path]) -> None:
        if plots:
            import numpy as np
            from PIL import Image

            writer = self._open(self.root)
            self._write(writer, 0, *(self.summary.image(f"plots/{p.stem}", np.asarray(Image.open(p).convert("RGB")),
                                                         dataformats="HWC") for p in plots))
            writer.close()
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def _tensorboardx() -> tuple[Any, Any, Any]:
    """tensorboardX's `summary`, `EventsWriter` and `Event`. Its package imports torch when torch is installed, for
    SummaryWriter's type hints only (none of it is used here): in a driver that has not loaded torch (a `noop`
    run), torch is hidden while tensorboardX is first imported, when no other thread could import torch meanwhile,
    so tracking costs no torch."""
    hide = "torch" not in sys.modules and "tensorboardX" not in sys.modules and threading.active_count() == 1
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
    try:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
    finally:
        if hide and "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return summary, EventsWriter, Event


class MLflowTracker:
    name = "mlflow"

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.uri = setup.mlflow_uri or (setup.output_dir / "mlruns").resolve().as_uri()
        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps ./mlruns behind a switch
        check_reachable(self.uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(setup.experiment)
        self.exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(setup.experiment)
        self.ids: dict[str, str] = setup.ids.setdefault("mlflow", {})
        self.parent = self._run("", setup.run_id)
        self.current: str | None = None  # the strategy whose child run is open

    def where(self) -> str:
        return f"MLflow experiment {self.setup.experiment!r} at {self.uri}"

    def _run(self, key: str, name: str) -> str:
        """The tracked run `key` ("" the parent): continued if tracking.json names one the store has."""
        from mlflow.entities import Param

        rid = self.ids.get(key)
        if rid is not None:
            try:
                self.client.update_run(rid, status="RUNNING")
                return rid
            except Exception:
                rid = None  # another store than last time: a new run
        tags = {"estuary.run_id": self.setup.run_id, "estuary.strategy": key or "(run)"}
        if key:
            tags["mlflow.parentRunId"] = self.parent
        rid = self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id
        params = [Param(k, str(v)) for k, v in flatten(self.setup.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(rid, params=params[i:i + 100])
        self.ids[key] = rid
        self.setup.save_ids()
        return rid

    def log(self, strategy: str, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if strategy != self.current:  # strategies run one after another: the one before is complete
            if self.current is not None:
                self.client.set_terminated(self.ids[self.current], status="FINISHED")
            self._run(strategy, f"{self.setup.run_id}/{strategy}")
            self.current = strategy
        ms = int(time.time() * 1000)
        metrics = [Metric(k, v, ms, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.ids[strategy], metrics=metrics[i:i + 1000])

    def finish(self, status: str, plots: list[Path]) -> None:
        for path in plots:
            self.client.log_artifact(self.parent, str(path), artifact_path="plots")
        for rid in ([self.ids[self.current]] if self.current else []) + [self.parent]:
            self.client.set_terminated(rid, status=MLFLOW_STATUS.get(status, "FINISHED"))
        self.current = None


def wandb_logged_in() -> bool:
    """Whether W&B has credentials: WANDB_API_KEY, or a netrc entry for its host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    name = "wandb"

    def __init__(self, setup: Setup) -> None:
        import wandb

        self.wandb = wandb
        self.setup = setup
        self.mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        if self.mode == "online":
            check_reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
        self.ids: dict[str, str] = setup.ids.setdefault("wandb", {})
        self.run: Any = None
        self.strategy: str | None = None

    def where(self) -> str:
        if self.mode == "offline":
            return f"W&B offline in {self.setup.run_dir / 'wandb'} (`wandb sync` uploads it)"
        return f"W&B {self.mode}, project {self.setup.experiment!r}, group {self.setup.run_id!r}"

    def _init(self, key: str, name: str) -> Any:
        rid = self.ids.setdefault(key, uuid.uuid4().hex[:12])
        self.setup.save_ids()
        return self.wandb.init(
            project=self.setup.experiment, group=self.setup.run_id, name=name, job_type=key, id=rid,
            resume="allow", dir=str(self.setup.run_dir), config=self.setup.config, mode=self.mode,
            reinit="finish_previous", settings=self.wandb.Settings(silent=True, console="off"),
        )

    def log(self, strategy: str, step: int, scalars: dict[str, float]) -> None:
        if strategy != self.strategy:  # strategies run one after another: one open W&B run at a time
            self._end(0)
            self.run, self.strategy = self._init(strategy, f"{self.setup.run_id}/{strategy}"), strategy
        self.run.log(scalars, step=step)

    def _end(self, exit_code: int) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run, self.strategy = None, None

    def finish(self, status: str, plots: list[Path]) -> None:
        self._end(0 if status == "complete" else 1)
        if plots:
            run = self._init("plots", self.setup.run_id)
            run.log({f"plots/{p.stem}": self.wandb.Image(str(p)) for p in plots})
            run.finish()


BACKENDS: dict[str, Callable[[Setup], Tracker]] = {
    "tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}
