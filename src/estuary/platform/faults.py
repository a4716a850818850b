"""Fault injection drills: kill client worker actors during rounds, and the driver once.

A job's `faults:` section turns them on (all off by default). Worker kills go through `ray.kill` with
restarts allowed, exactly what a crashed process or a lost node looks like to the pool: the pool resubmits
the dead worker's tasks and Ray restarts the actor. The driver kill SIGKILLs the driver process in a round
of the method after its client tasks have finished and before the round's checkpoint — the worst moment —
and leaves a marker in the run folder so that `estuary resume` does not kill it again. Every kill is a row
of the run folder's faults.jsonl.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DRIVER_KILL_MARKER = "fault-driver-killed"


class FaultsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kill_worker_prob: float = Field(
        0.0, ge=0, le=1, description="Chance, after each finished client task, that one random client worker "
        "actor is killed (ray.kill; Ray restarts it and the pool resubmits its tasks)."
    )
    kill_worker_every_s: float | None = Field(
        None, gt=0, description="Also kill a random worker when this many seconds have passed since the last "
        "kill (checked as results arrive); null = off."
    )
    max_worker_kills: int | None = Field(None, ge=0, description="Cap on worker kills over the run (null = none).")
    seed: int = Field(0, description="Seed of which results trigger a kill and which worker dies.")
    kill_driver_in_round: int | None = Field(
        None, ge=1, description="SIGKILL the driver in this round of the method, after its client tasks "
        "finished and before the round's checkpoint (once per run folder; then `estuary resume RUN_DIR`)."
    )

    @property
    def active(self) -> bool:
        return self.kill_worker_prob > 0 or self.kill_worker_every_s is not None


class FaultInjector:
    """Driver-side: decides when to kill a worker (seeded) and kills the driver once."""

    def __init__(self, cfg: FaultsConfig, run_dir: Path | None = None, method: str | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.method = method
        self.rng = random.Random(f"faults/{cfg.seed}")
        self.kills: list[dict[str, Any]] = []
        self._last = time.monotonic()

    def _may_kill(self) -> bool:
        cap = self.cfg.max_worker_kills
        return cap is None or len(self.kills) < cap

    def after_result(self, workers: list[Any], names: list[str]) -> str | None:
        """Called by the driver as each client result arrives; maybe kills one random worker. Returns its name."""
        if not self.cfg.active or not workers or not self._may_kill():
            return None
        roll = self.rng.random() < self.cfg.kill_worker_prob
        every = self.cfg.kill_worker_every_s
        due = every is not None and time.monotonic() - self._last >= every
        if not (roll or due):
            return None
        import ray

        victim = self.rng.randrange(len(workers))
        ray.kill(workers[victim], no_restart=False)
        self._last = time.monotonic()
        row = {"fault": "kill_worker", "worker": names[victim], "time": round(time.time(), 3)}
        self.kills.append(row)
        if self.run_dir is not None:  # faults.jsonl: what the drill did, beside the run's other records
            with open(self.run_dir / "faults.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return names[victim]

    def maybe_kill_driver(self, strategy: str, rnd: int) -> None:
        """SIGKILL this process if the job asks for it in this round of the method (once per run folder)."""
        if self.cfg.kill_driver_in_round != rnd or strategy != self.method or self.run_dir is None:
            return
        marker = self.run_dir / DRIVER_KILL_MARKER
        if marker.exists():
            return
        marker.write_text(f"{strategy} round {rnd}\n")
        with open(self.run_dir / "faults.jsonl", "a") as f:
            f.write(json.dumps({"fault": "kill_driver", "strategy": strategy, "round": rnd,
                                "time": round(time.time(), 3)}) + "\n")
        os.kill(os.getpid(), signal.SIGKILL)
