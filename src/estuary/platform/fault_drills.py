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

from estuary.config.faults import FaultsConfig

DRIVER_KILL_MARKER = "fault-driver-killed"


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
