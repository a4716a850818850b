"""The `faults:` section of a job: fault-injection drills (worker and driver kills), off by default; the
drills themselves run in `estuary.platform.fault_drills`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
