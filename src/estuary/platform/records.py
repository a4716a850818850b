"""Recorder: owns the run folder.

    <out>/<run-id>/
      config.yaml       the resolved job (what `estuary resume` reads back)
      rounds.jsonl      one JSON object per strategy round
      clients.jsonl     one per client per round (loss, metrics, wall seconds, worker, attempts)
      failures.jsonl    clients that failed a round, with their error text
      privacy.jsonl     every DP operation of every client (mechanism, σ, q, steps, ε after), refusals
      summary.json      final metrics per strategy (the method and its baselines)
      plots/*.png       metrics per round, spread across clients
      tensorboard/      the rounds as TensorBoard scalars, a folder per strategy (output.report_to; tracking.py)
      tracking.json     the MLflow / W&B runs this run logs to (what `estuary resume` continues)
      knowledge/*.jsonl what clients sent and the server made of it (synthetic samples, filter verdicts,
                        generated data, scores), one row per item, tagged with strategy and round
      checkpoints/      per strategy, after each round
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estuary.errors import EstuaryError

if TYPE_CHECKING:
    from estuary.platform.tracking import Tracking

JSONL_FILES = ("rounds.jsonl", "clients.jsonl", "failures.jsonl", "privacy.jsonl")


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash mid-write: ignored, the round is redone


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run folder's summary.json ({} when the run wrote none yet); reads without creating anything."""
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


class Recorder:
    def __init__(self, run_dir: Path, tracking: Tracking | None = None) -> None:
        self.dir = run_dir
        self.tracking = tracking  # experiment trackers that also get every round (output.report_to)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "plots").mkdir(exist_ok=True)
        (self.dir / "checkpoints").mkdir(exist_ok=True)

    # ------------------------------------------------------------------ writing
    def write_config(self, yaml_text: str) -> None:
        atomic_write(self.dir / "config.yaml", yaml_text)

    def _append(self, name: str, rows: list[dict[str, Any]]) -> None:
        with (self.dir / name).open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=float) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_round(self, row: dict[str, Any]) -> None:
        """Append a round to rounds.jsonl, then to the trackers (in that order: a crash between the two loses a
        tracked point rather than logging it twice on resume)."""
        self._append("rounds.jsonl", [row])
        if self.tracking is not None:
            self.tracking.log_round(row)

    def write_clients(self, rows: list[dict[str, Any]]) -> None:
        self._append("clients.jsonl", rows)

    def write_failures(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._append("failures.jsonl", rows)

    def write_privacy(self, rows: list[dict[str, Any]]) -> None:
        """Append privacy ledger entries (rows of `Egress.privacy_rows()`) to privacy.jsonl."""
        if rows:
            self._append("privacy.jsonl", rows)

    def write_knowledge(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Append rows to knowledge/<name>.jsonl (each row should carry "strategy" and "round")."""
        path = self.dir / "knowledge" / f"{name}.jsonl"
        path.parent.mkdir(exist_ok=True)
        if rows:
            self._append(f"knowledge/{name}.jsonl", rows)
        return path

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.dir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")

    # ------------------------------------------------------------------ reading
    def rounds(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.dir / "rounds.jsonl"))

    def clients(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.dir / "clients.jsonl"))

    def privacy(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.dir / "privacy.jsonl"))

    def summary(self) -> dict[str, Any]:
        return read_summary(self.dir)

    def rounds_wall_s(self, strategy: str) -> float:
        """Seconds the recorded rounds of `strategy` took: on resume, the time of the rounds a crashed run kept,
        which the resumed strategy's `wall_s` in the summary adds to its own."""
        return sum(float(r.get("wall_s", 0.0)) for r in self.rounds() if r.get("strategy") == strategy)

    def truncate_after(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """On resume: drop rows of rounds that were not checkpointed, so they are written once."""
        for path in [self.dir / n for n in JSONL_FILES] + sorted((self.dir / "knowledge").glob("*.jsonl")):
            if path.exists():
                rows = [r for r in read_jsonl(path) if keep(r)]
                atomic_write(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))


def open_run_dir(path: str | Path) -> Path:
    run_dir = Path(path)
    if not (run_dir / "config.yaml").is_file():
        raise EstuaryError(f"{run_dir} is not an Estuary run folder (no config.yaml); pass runs/<run-id>")
    return run_dir
