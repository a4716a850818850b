"""ClientPool: runs client tasks on worker actors, in two placements behind one API.

- pooled: K workers serve all clients; each client's state lives in the object store (StateStore)
  and moves with its task. K follows from the cluster's resources unless set.
- dedicated: one long-lived actor per client; the same state object is handed to it each round.

Crashes and errors are retried (the dead actor is restarted by Ray); a client that keeps failing
is reported with its error text; a client's state is replaced only by a successful task, once.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from estuary.actors.egress import Egress
from estuary.actors.state import ClientState
from estuary.actors.worker import ClientWorker
from estuary.errors import ConfigError, EstuaryError
from estuary.platform.config import ExperimentConfig, ResourcesConfig
from estuary.platform.plan import ClientTask
from estuary.platform.strategy import RoundOutcome, Strategy

_SYSTEM_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)


def worker_capacity(resources: ResourcesConfig, nodes: list[dict[str, Any]] | None = None) -> int:
    """How many workers with these resources fit on the alive nodes (sum over nodes of the
    per-node minimum over requested resources)."""
    need = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, **resources.custom}
    need = {k: v for k, v in need.items() if v > 0}
    total = 0
    for node in nodes if nodes is not None else ray.nodes():
        if not node.get("Alive", True):
            continue
        have = node.get("Resources", {})
        fits = [math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items()]
        total += min(fits) if fits else 1_000_000
    return total


def error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(exc, RayTaskError) and cause is not None:
        exc = cause
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]


@dataclass
class StateStore:
    """Client id → ObjectRef of its latest ClientState (None until its first task)."""

    refs: dict[str, ray.ObjectRef] = field(default_factory=dict)

    def get_ref(self, client_id: str) -> ray.ObjectRef | None:
        return self.refs.get(client_id)

    def snapshot(self) -> dict[str, ClientState]:
        ids = list(self.refs)
        return dict(zip(ids, ray.get([self.refs[i] for i in ids]), strict=True))

    def restore(self, states: dict[str, ClientState]) -> None:
        self.refs = {cid: ray.put(s) for cid, s in states.items()}

    def clear(self) -> None:
        self.refs.clear()


class ClientPool:
    def __init__(self, exp: ExperimentConfig, model_paths: dict[str, str]) -> None:
        self.exp = exp
        res = exp.clients.resources
        self.dedicated = exp.clients.mode == "dedicated"
        capacity = worker_capacity(res)
        if capacity < 1:
            raise ConfigError(
                f"clients.resources: no node can host a worker needing num_cpus={res.num_cpus}, "
                f"num_gpus={res.num_gpus}, custom={res.custom}; lower them or add nodes"
            )
        if self.dedicated:
            size = exp.clients.count
            if capacity < size:
                raise ConfigError(
                    f"clients.mode=dedicated needs {size} worker actors of num_cpus={res.num_cpus}, "
                    f"num_gpus={res.num_gpus}, custom={res.custom}, but the cluster fits {capacity}; "
                    "lower clients.resources (fractions are fine) or use clients.mode=pooled"
                )
        else:
            size = min(exp.clients.pool_size or capacity, exp.clients.count)
        threads = res.torch_threads or max(1, int(res.num_cpus))
        actor_cls: Any = ray.remote(ClientWorker).options(
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            resources=dict(res.custom) or None,
            max_restarts=-1,  # a dead worker comes back; its tasks are resubmitted by the pool
            max_task_retries=0,  # retries are the pool's, so a client update is never applied twice
        )
        exp_json = exp.model_dump_json()
        self.names = [f"worker-{i}" for i in range(size)]
        self.workers: list[Any] = [
            actor_cls.remote(exp_json, model_paths, name, threads, res.num_gpus) for name in self.names
        ]
        self.states = StateStore()
        self.inflight = [0] * size

    @property
    def size(self) -> int:
        return len(self.workers)

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until every worker has started; a worker that cannot be placed in time (resources
        taken by something else, a node gone) ends in one clear error instead of a hang."""
        timeout = self.exp.clients.startup_timeout_s
        refs = [w.ready.remote() for w in self.workers]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            raise EstuaryError(
                f"{len(pending)} of {len(refs)} client workers did not start within {timeout:.0f}s "
                f"(clients.startup_timeout_s); free resources ({ray.available_resources()}) do not fit "
                "clients.resources — check `ray status` or lower clients.resources / clients.pool_size"
            )
        return ray.get(ready)

    def _worker_for(self, client_id: str, index: int) -> int | None:
        if self.dedicated:
            return index % self.size
        free = [i for i in range(self.size) if self.inflight[i] < self.exp.clients.max_inflight_per_worker]
        return min(free, key=lambda i: self.inflight[i]) if free else None

    def run(
        self,
        strategy: type[Strategy],
        tasks: list[ClientTask],
        on_result: Callable[[Egress], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> RoundOutcome:
        order = {t.client_id: i for i, t in enumerate(tasks)}
        queue: deque[ClientTask] = deque(tasks)
        tries: dict[str, int] = {t.client_id: 0 for t in tasks}
        pending: dict[ray.ObjectRef, tuple[ClientTask, int, ray.ObjectRef]] = {}
        results: dict[str, Egress] = {}
        failures: dict[str, str] = {}
        submissions = 0
        index = {t.client_id: self._client_index(t.client_id, order) for t in tasks}
        while queue or pending:
            while queue:
                w = self._worker_for(queue[0].client_id, index[queue[0].client_id])
                if w is None:
                    break
                task = queue.popleft()
                eg_ref, st_ref = self.workers[w].run_task.remote(strategy, task, self.states.get_ref(task.client_id))
                pending[eg_ref] = (task, w, st_ref)
                self.inflight[w] += 1
                tries[task.client_id] += 1
                submissions += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task, w, st_ref = pending.pop(ref)
                self.inflight[w] -= 1
                cid = task.client_id
                try:
                    egress: Egress = ray.get(ref)
                except (*_SYSTEM_ERRORS, RayTaskError) as exc:
                    text = error_text(exc)
                    if isinstance(exc, _SYSTEM_ERRORS):
                        time.sleep(0.2)  # let Ray restart the actor before the retry lands on it
                    if tries[cid] <= self.exp.clients.max_retries:
                        queue.append(task)
                    else:
                        failures[cid] = text
                        if on_failure:
                            on_failure(cid, text)
                    continue
                egress.attempts = tries[cid]
                results[cid] = egress
                self.states.refs[cid] = st_ref
                if on_result:
                    on_result(egress)
        ordered = dict(sorted(results.items(), key=lambda kv: order[kv[0]]))
        return RoundOutcome(results=ordered, failures=failures, attempts=submissions)

    def _client_index(self, client_id: str, order: dict[str, int]) -> int:
        digits = client_id.lstrip("c")
        return int(digits) if digits.isdigit() else order[client_id]

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []
