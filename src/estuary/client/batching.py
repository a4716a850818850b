"""How many clients' tasks a pooled worker gets in one Ray call.

A Ray actor call costs about a millisecond of driver, raylet and worker time. A client task that trains an SLM
takes seconds, so one call per task costs nothing; a task far cheaper than that (a no-op method, a metric, a
tiny model) would spend most of its round on calls. With `clients.tasks_per_call: auto` the pool times each
(strategy, task kind) from its results and, once a mean is known, sends as many tasks per call as make the call
about `clients.call_target_s` long, never more than an even share of what is queued over the group's call
slots (workers × `max_inflight_per_worker`), so every worker stays busy. Until a kind is timed, one per call.
"""

from __future__ import annotations

import math


class CallSizer:
    """Tasks per call from the measured mean time of each (strategy, task kind)."""

    SMOOTHING = 0.2  # weight of the newest task time in the running mean

    def __init__(self, setting: int | str = "auto", target_s: float = 0.05) -> None:
        self.setting = setting
        self.target_s = target_s
        self.mean_s: dict[tuple[str, str], float] = {}

    def observe(self, strategy: str, kind: str, seconds: float) -> None:
        """A task of this kind took `seconds` on its worker."""
        key = (strategy, kind)
        mean = self.mean_s.get(key)
        self.mean_s[key] = seconds if mean is None else (1 - self.SMOOTHING) * mean + self.SMOOTHING * seconds

    def size(self, strategy: str, kind: str, queued: int, slots: int) -> int:
        """How many of `queued` tasks (this kind first in the queue) the next call carries, `slots` calls
        being open at once on the group's workers."""
        if queued <= 1:
            return 1
        if self.setting != "auto":
            return min(int(self.setting), queued)
        mean = self.mean_s.get((strategy, kind))
        if mean is None:
            return 1
        share = math.ceil(queued / max(1, slots))
        return max(1, min(share, int(self.target_s / max(mean, 1e-6))))
