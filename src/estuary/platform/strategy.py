"""The Strategy ABC: a few hooks, and one template method (`run`) that owns the round loop.

A method is one file: a config dataclass (`config_class`) and a Strategy subclass filling the hooks.
It never talks to Ray: the pool, the server LLM and the run's records are what it is given.

    for round r:
        pre     = prepare_round(r, llm)         # optional server work before the clients (e.g. generate)
        clients = select_clients(r)             # which clients take part
        tasks   = configure_round(r, clients)   # what each one does
        results = <pool runs client_step on workers; quorum checked>
        agg     = aggregate(r, results)         # driver side, pure where possible
        server  = server_step(r, agg, llm)      # generate / score / fine-tune the LLM
        later   = configure_followup(r, ...)    # optional second client phase (e.g. train on what the
        results = results.then(<pool runs it>)  #   server made in this round)
        metrics = evaluate(r, results, server)  # round metrics (clients and LLM)
        <records written, checkpoint saved>
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, final

from estuary.data.federated import client_ids
from estuary.platform.sampling import sample_clients
from estuary.wire import ClientTask, Egress, RoundOutcome

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
    from estuary.config import ExperimentConfig
    from estuary.data.task import Task
    from estuary.platform.run_context import RunContext, ServerContext


@dataclasses.dataclass
class NoParams:
    """This method has no parameters of its own (it uses the job's training section)."""




def summarize_metrics(results: Mapping[str, Egress]) -> dict[str, float]:
    """mean/std/min/max across clients of every metric they reported."""
    by_key: dict[str, list[float]] = {}
    for eg in results.values():
        for k, v in eg.metrics.items():
            by_key.setdefault(k, []).append(float(v))
    out: dict[str, float] = {}
    for k, vals in sorted(by_key.items()):
        out[f"{k}/mean"] = statistics.fmean(vals)
        out[f"{k}/std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        out[f"{k}/min"] = min(vals)
        out[f"{k}/max"] = max(vals)
        out[f"{k}/n"] = float(len(vals))
    return out


class Strategy(ABC):
    """A method: driver-side hooks (`configure_round`, `aggregate`, `server_step`, `evaluate`, ...) and the client
    side (`client_step`), in one class.

    The two sides run in different processes. The driver builds one instance; every client worker builds its own
    copy from the job (`cls(exp, params)`) and calls only `client_step` on it. State a driver-side hook sets on
    `self` is therefore not visible in `client_step`: send what a client needs in `ClientTask.params` (what every
    task of a round needs, e.g. a global adapter, once: `estuary.runtime.share` on the driver, `resolve` in
    `client_step`), and keep what a client owns across rounds in its `ClientState.extra`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type] = NoParams
    description: ClassVar[str] = ""
    # the task kind this method needs ("classification" / "generation"; None: any) and what it does with it
    task_kind: ClassVar[str | None] = None
    task_use: ClassVar[str] = ""
    task_pairs: ClassVar[bool] = True  # whether it handles text-pair examples (premise + hypothesis)
    # how it uses the server LLM: "" not at all, "serve" generation through the deployment, "train" also LoRA
    # training (method_params.llm_train); the preflight sizes the server model by it (estuary.platform.model_fit)
    server_use: ClassVar[str] = ""
    # whether its clients load their SLM; False (noop) spares the run the client models' checks and imports
    client_model: ClassVar[bool] = True

    def __init__(self, exp: ExperimentConfig, params: Any | None = None) -> None:
        self.exp = exp
        self.params = params if params is not None else self.config_class()

    @classmethod
    def check_job(cls, cfg: ExperimentConfig, source: str) -> None:
        """Refuse a job this strategy cannot run (ConfigError, one line naming the field); called by load_config.
        The default refuses a task that `task_misfit` names a reason for; subclasses add their own checks."""
        from estuary.data import TASKS, get_task
        from estuary.errors import ConfigError

        why = cls.task_misfit(get_task(cfg.data.task))
        if why is not None:
            fitting = ", ".join(n for n, t in TASKS.items() if cls.task_misfit(t) is None)
            raise ConfigError(f"{source}: {cls.name} {cls.task_use}; data.task {cfg.data.task_name!r} {why} — "
                              f"use {fitting}")

    @classmethod
    def generator_model(cls, cfg: ExperimentConfig) -> str | None:
        """The model this strategy's clients DP-fine-tune as a generator or teacher, when it is not each
        client's own SLM (None). Default: `privacy.generator_model`. The runner resolves it before the run and
        the preflight checks that Opacus can train it."""
        return cfg.privacy.generator_model

    @classmethod
    def server_training(cls, cfg: ExperimentConfig) -> tuple[str, dict[str, Any]] | None:
        """The field and the TrainConfig mapping this strategy fine-tunes the server LLM with in this job (Ray
        Train workers, their resources), or None when it does not train it. Default None; the preflight checks
        that those workers can get their CPUs beside the client pool (`estuary.platform.cpu_fit`)."""
        return None

    @classmethod
    def task_misfit(cls, task: Task) -> str | None:
        """Why this strategy cannot run `task` (a phrase after the task's name), or None when it can."""
        if cls.task_kind is not None and task.kind != cls.task_kind:
            return f"is a {task.kind} task, not a {cls.task_kind} one"
        if task.paired and not cls.task_pairs:
            return "has text pairs; it writes one text per example"
        return None

    # ------------------------------------------------------------------ driver-side hooks
    def num_rounds(self) -> int:
        return self.exp.rounds

    def client_ids(self) -> list[str]:
        """The clients this strategy runs (the centralized baseline has a single pooled one)."""
        return client_ids(self.exp.clients.count)

    def select_clients(self, rnd: int, clients: list[str]) -> list[str]:
        """This round's clients: all, or a seeded sample (clients.sample_fraction / sample_count)."""
        c = self.exp.clients
        return sample_clients(clients, rnd, seed=self.exp.seed, fraction=c.sample_fraction, count=c.sample_count)

    def should_evaluate(self, rnd: int) -> bool:
        return rnd == self.num_rounds() or rnd % self.exp.evaluation.every == 0

    def prepare_round(self, rnd: int, server: ServerContext) -> dict[str, float]:
        """Server work before this round's clients run (e.g. the LLM generates data); returns metrics."""
        return {}

    def configure_round(self, rnd: int, clients: list[str]) -> list[ClientTask]:
        ev = self.should_evaluate(rnd)
        return [ClientTask(cid, rnd, kind="train", evaluate=ev) for cid in clients]

    def aggregate(self, rnd: int, outcome: RoundOutcome) -> dict[str, Any]:
        return {}

    def server_step(self, rnd: int, agg: dict[str, Any], server: ServerContext) -> dict[str, float]:
        return {}

    def configure_followup(self, rnd: int, outcome: RoundOutcome) -> list[ClientTask]:
        """Client tasks of a second phase in this round, after the server step (default: none)."""
        return []

    def evaluate(self, rnd: int, outcome: RoundOutcome, server_metrics: dict[str, float]) -> dict[str, float]:
        metrics = {f"client/{k}": v for k, v in summarize_metrics(outcome.results).items()}
        metrics.update({f"server/{k}": v for k, v in server_metrics.items()})
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Driver-side state to checkpoint with each round (server adapter version, ...): plain data, and
        entries that are tensors or mappings of tensors (saved with torch beside it, e.g. an adapter)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    # ------------------------------------------------------------------ client-side hook
    @abstractmethod
    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        """Runs inside a worker with the client's private data and state; returns only an Egress."""

    # ------------------------------------------------------------------ template method
    @final
    def run(self, ctx: RunContext) -> dict[str, float]:
        """Own the round loop; resumes after the last checkpointed round. Returns final metrics."""
        start = ctx.restore(self)
        final: dict[str, float] = ctx.last_metrics(self)
        for rnd in range(start, self.num_rounds() + 1):
            t0 = time.perf_counter()
            clock = PhaseClock()
            server_metrics = self.prepare_round(rnd, ctx.server)
            clock.lap("prepare")
            tasks = self.configure_round(rnd, self.select_clients(rnd, self.client_ids()))
            outcome = ctx.run_tasks(self, rnd, tasks)
            clock.lap("clients")
            agg = self.aggregate(rnd, outcome)
            server_metrics = {**server_metrics, **self.server_step(rnd, agg, ctx.server)}
            clock.lap("server")
            followup = self.configure_followup(rnd, outcome)
            if followup:
                outcome = outcome.then(ctx.run_tasks(self, rnd, followup))
                clock.lap("followup")
            final = self.evaluate(rnd, outcome, server_metrics)
            clock.lap("evaluate")
            ctx.end_round(self, rnd, final, outcome, time.perf_counter() - t0, clock.laps)
        return final


class PhaseClock:
    """Wall seconds of each phase of a round (recorded beside the metrics, not in them: timings never match
    between a resumed and an uninterrupted run)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(now - self._t, 3)
        self._t = now
