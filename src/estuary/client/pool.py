"""ClientPool: runs client tasks on worker actors, in two placements behind one API.

- pooled: K workers serve all clients; each client's state lives in the object store (StateStore)
  and moves with its task. K follows from the cluster's resources unless set.
- dedicated: one long-lived actor per client; the same state object is handed to it each round.

Crashes and errors are retried (the dead actor is restarted by Ray); a client that keeps failing
is reported with its error text; a client's state is replaced only by a successful task, once.
With `clients.round_deadline_s`, tasks still running at the deadline are cancelled and their results,
when they come, are dropped: a late client keeps its previous state and is reported as late.
With `clients.groups`, each group has its own workers (resources, model) and runs only its clients.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from estuary.client.batching import CallSizer
from estuary.client.groups import WorkerGroup, node_capacities, plan_groups
from estuary.client.worker import ClientWorker
from estuary.config import ExperimentConfig
from estuary.config.clients import ClientResources
from estuary.errors import EstuaryError
from estuary.wire import ClientState, ClientTask, Egress, RoundOutcome, TaskError, error_line

if TYPE_CHECKING:  # workers get the strategy class with each task; they never import the platform
    from estuary.platform.strategy import Strategy

_SYSTEM_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)


def worker_capacity(resources: ClientResources, nodes: list[dict[str, Any]] | None = None) -> int:
    """How many workers with these resources fit on the alive nodes (sum over nodes of the
    per-node minimum over requested resources)."""
    return sum(node_capacities(resources, nodes if nodes is not None else ray.nodes()))


def error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(exc, RayTaskError) and cause is not None:
        exc = cause
    return error_line(exc)


@dataclass
class StateStore:
    """Client id → ObjectRef of its latest ClientState (None until its first task)."""

    refs: dict[str, ray.ObjectRef] = field(default_factory=dict)

    def get_ref(self, client_id: str) -> ray.ObjectRef | None:
        return self.refs.get(client_id)

    def snapshot(self) -> dict[str, ClientState]:
        ids = list(self.refs)
        return dict(zip(ids, ray.get([self.refs[i] for i in ids]), strict=True))

    def snapshot_chunks(self, size: int = 64) -> Iterator[dict[str, ClientState]]:
        """The states `size` clients at a time, so the driver never holds every client's state at once."""
        ids = list(self.refs)
        for i in range(0, len(ids), size):
            chunk = ids[i : i + size]
            yield dict(zip(chunk, ray.get([self.refs[c] for c in chunk]), strict=True))

    def restore(self, states: dict[str, ClientState]) -> None:
        self.refs = {cid: ray.put(s) for cid, s in states.items()}

    def clear(self) -> None:
        self.refs.clear()


@dataclass
class _Call:
    """One Ray call in flight: its tasks, its worker, the refs of their new states."""

    tasks: list[ClientTask]
    worker: int
    states: list[ray.ObjectRef]


@dataclass
class _Round:
    """One `ClientPool.run`: what is queued, in flight, done and failed."""

    strategy: type[Strategy]
    queue: deque[ClientTask]
    tries: dict[str, int]
    index: dict[str, int]
    on_result: Callable[[Egress], None] | None
    on_failure: Callable[[str, str], None] | None
    pending: dict[ray.ObjectRef, _Call] = field(default_factory=dict)
    results: dict[str, Egress] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    submissions: int = 0


class ClientPool:
    def __init__(self, exp: ExperimentConfig, model_paths: dict[str, str]) -> None:
        self.exp = exp
        self.dedicated = exp.clients.mode == "dedicated"
        self.groups: list[WorkerGroup] = plan_groups(exp, ray.nodes())
        exp_json = exp.model_dump_json()
        self.names: list[str] = []
        self.workers: list[Any] = []
        self.worker_group: list[int] = []
        for gi, g in enumerate(self.groups):
            res = g.resources
            actor_cls: Any = ray.remote(ClientWorker).options(
                **res.ray_options(),
                max_restarts=-1,  # a dead worker comes back; its tasks are resubmitted by the pool
                max_task_retries=0,  # retries are the pool's, so a client update is never applied twice
            )
            threads = res.threads()
            for i in range(g.size):
                name = f"worker-{g.first_worker + i}" if len(self.groups) == 1 else f"{g.name}-{i}"
                self.names.append(name)
                self.workers.append(actor_cls.remote(exp_json, model_paths, name, threads, res.num_gpus))
                self.worker_group.append(gi)
        self.states = StateStore()
        self.inflight = [0] * len(self.workers)  # calls in flight per worker
        self.sizer = CallSizer(exp.clients.tasks_per_call, exp.clients.call_target_s)
        self._late: dict[ray.ObjectRef, int] = {}  # cancelled/late task → worker, until it ends
        self._probes: dict[ray.ObjectRef, int] = {}  # ready() call → worker that died, until it is back
        self._down: set[int] = set()  # workers Ray is restarting: no task is sent to them meanwhile
        self.nodes: dict[str, str] = {}  # worker name → node id (from wait_ready)

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
        infos = ray.get(ready)
        self.nodes = {info["worker"]: info["node"] for info in infos}
        return infos

    def write_shards(self, folder: Path, size: int = 64) -> None:
        """Every client's state into `folder` as shards of `size` clients (`clients-00000.pt`, ...). The workers on
        the driver's node write them in parallel, each state read straight from the object store; with none
        there (or one that fails), the driver writes, holding one shard at a time."""
        from estuary.client.shards import shard_fields, write_shard

        here = ray.get_runtime_context().get_node_id()
        writers = [w for w, name in enumerate(self.names) if self.nodes.get(name) == here and w not in self._down]
        ids = list(self.states.refs)
        chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
        calls = {self.workers[writers[i % len(writers)]].write_shard.remote(
                     str(folder / f"clients-{i:05d}.pt"), chunk, *[self.states.refs[c] for c in chunk]): i
                 for i, chunk in enumerate(chunks) if writers}
        left = [] if writers else list(range(len(chunks)))
        for ref, i in calls.items():
            try:
                if ray.get(ref) != here:  # restarted elsewhere since wait_ready: its file is not in this folder
                    left.append(i)
            except (*_SYSTEM_ERRORS, RayTaskError):
                left.append(i)
        for i in left:
            states = dict(zip(chunks[i], ray.get([self.states.refs[c] for c in chunks[i]]), strict=True))
            write_shard(shard_fields(states), folder / f"clients-{i:05d}.pt")

    def _group_for(self, index: int) -> WorkerGroup:
        return next((g for g in self.groups if g.holds(index)), self.groups[0])

    def _worker_for(self, client_id: str, index: int) -> int | None:
        g = self._group_for(index)
        if self.dedicated:
            w = g.first_worker + (index - g.start) % g.size
            return None if w in self._down else w
        limit = self.exp.clients.max_inflight_per_worker
        free = [i for i in range(g.first_worker, g.first_worker + g.size)
                if self.inflight[i] < limit and i not in self._down]
        return min(free, key=lambda i: self.inflight[i]) if free else None

    def _worker_died(self, w: int) -> None:
        """Hold tasks back from a crashed worker until Ray has restarted it (a retry sent at once would
        fail again while it restarts and use up the client's retries)."""
        if w not in self._down:
            self._down.add(w)
            probe = self.workers[w].ready.options(max_task_retries=-1).remote()  # retried until it is back
            self._probes[probe] = w

    def _probe_done(self, ref: ray.ObjectRef) -> None:
        w = self._probes.pop(ref)
        self._down.discard(w)  # back (or gone for good: then its tasks fail and use up their retries)
        try:
            ray.get(ref)
        except (*_SYSTEM_ERRORS, RayTaskError):
            pass

    def _cut_at_deadline(self, rnd: _Round) -> dict[str, str]:
        """Cancel what is still pending or queued at the deadline; the late clients with their reason."""
        text = (f"DeadlineExceeded: not finished within clients.round_deadline_s="
                f"{self.exp.clients.round_deadline_s}s (result discarded)")
        late = {}
        for ref, call in rnd.pending.items():
            ray.cancel(ref)  # a queued actor task is dropped; a running one finishes and is ignored
            self._late[ref] = call.worker
            late.update({t.client_id: text for t in call.tasks})
        late.update({t.client_id: text for t in rnd.queue})
        rnd.pending.clear()
        rnd.queue.clear()
        return late

    def run(
        self,
        strategy: type[Strategy],
        tasks: list[ClientTask],
        on_result: Callable[[Egress], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> RoundOutcome:
        order = {t.client_id: i for i, t in enumerate(tasks)}
        rnd = _Round(strategy, deque(tasks), {t.client_id: 0 for t in tasks},
                     {t.client_id: self._client_index(t.client_id, order) for t in tasks}, on_result, on_failure)
        limit = self.exp.clients.round_deadline_s
        deadline = time.monotonic() + limit if limit is not None else None
        late: dict[str, str] = {}
        while rnd.queue or rnd.pending:
            self._dispatch(rnd)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Late tasks of earlier rounds hold pipeline slots until they end, and restarting workers are
            # probed: wait on those too.
            done, _ = ray.wait([*rnd.pending, *self._late, *self._probes], num_returns=1, timeout=timeout)
            if not done and deadline is not None:
                late = self._cut_at_deadline(rnd)
                break
            for ref in done:
                if ref in self._late:  # a late task ended: its slot is free, its result is dropped
                    self.inflight[self._late.pop(ref)] -= 1
                elif ref in self._probes:
                    self._probe_done(ref)
                else:
                    self._settle(ref, rnd)
        for cid, text in late.items():
            rnd.failures[cid] = text
            if on_failure:
                on_failure(cid, text)
        ordered = dict(sorted(rnd.results.items(), key=lambda kv: order[kv[0]]))
        return RoundOutcome(results=ordered, failures=rnd.failures, attempts=rnd.submissions, late=list(late))

    def _dispatch(self, rnd: _Round) -> None:
        """Send queued tasks to workers with a free call slot, batched by the CallSizer."""
        blocked: set[int] = set()  # groups whose workers are all busy (pooled), in this pass
        held: list[ClientTask] = []
        while rnd.queue and (self.dedicated or len(blocked) < len(self.groups)):
            task = rnd.queue.popleft()
            i = rnd.index[task.client_id]
            group = self._group_for(i)
            w = None if id(group) in blocked else self._worker_for(task.client_id, i)
            if w is None:
                held.append(task)
                if not self.dedicated:
                    blocked.add(id(group))
                continue
            batch = [task]
            if not self.dedicated:
                slots = group.size * self.exp.clients.max_inflight_per_worker
                size = self.sizer.size(rnd.strategy.name, task.kind, len(rnd.queue) + 1, slots)
                while (rnd.queue and len(batch) < size and rnd.queue[0].kind == task.kind
                       and self._group_for(rnd.index[rnd.queue[0].client_id]) is group):
                    batch.append(rnd.queue.popleft())
            self._submit(rnd, batch, w)
        rnd.queue.extendleft(reversed(held))

    def _submit(self, rnd: _Round, batch: list[ClientTask], w: int) -> None:
        states = [self.states.get_ref(t.client_id) for t in batch]
        if len(batch) == 1:
            refs = list(self.workers[w].run_task.remote(rnd.strategy, batch[0], states[0]))
        else:
            refs = self.workers[w].run_batch.options(num_returns=1 + len(batch)).remote(rnd.strategy, batch, *states)
        rnd.pending[refs[0]] = _Call(batch, w, refs[1:])
        self.inflight[w] += 1
        for t in batch:
            rnd.tries[t.client_id] += 1
        rnd.submissions += len(batch)

    def _settle(self, ref: ray.ObjectRef, rnd: _Round) -> None:
        """A call ended: keep each task's result and new state, or retry/report its error."""
        call = rnd.pending.pop(ref)
        self.inflight[call.worker] -= 1
        try:
            got = ray.get(ref)
        except (*_SYSTEM_ERRORS, RayTaskError) as exc:
            if isinstance(exc, _SYSTEM_ERRORS):
                self._worker_died(call.worker)
            for task in call.tasks:
                self._failed(rnd, task, error_text(exc))
            return
        outcomes = got if len(call.tasks) > 1 else [got]
        for task, out, st_ref in zip(call.tasks, outcomes, call.states, strict=True):
            if isinstance(out, TaskError):
                self._failed(rnd, task, out.text)
                continue
            cid = task.client_id
            out.attempts = rnd.tries[cid]
            rnd.results[cid] = out
            self.states.refs[cid] = st_ref
            self.sizer.observe(rnd.strategy.name, task.kind, out.wall_s)
            if rnd.on_result:
                rnd.on_result(out)

    def _failed(self, rnd: _Round, task: ClientTask, text: str) -> None:
        if rnd.tries[task.client_id] <= self.exp.clients.max_retries:
            rnd.queue.append(task)
        else:
            rnd.failures[task.client_id] = text
            if rnd.on_failure:
                rnd.on_failure(task.client_id, text)

    def _client_index(self, client_id: str, order: dict[str, int]) -> int:
        digits = client_id.lstrip("c")
        return int(digits) if digits.isdigit() else order[client_id]

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []
