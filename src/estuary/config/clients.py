"""The `clients` section of a job: how many simulated clients, the worker actors serving them (pooled or
dedicated, their Ray resources), heterogeneous groups, per-round sampling, quorum, retries and deadlines."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from estuary.config.section import Section
from estuary.resources import Resources


class ClientResources(Resources):
    """Ray resources of each client worker actor (`clients.resources`, `clients.groups[].resources`)."""

    torch_threads: int | None = Field(
        None, ge=1, description="torch threads in each worker (default: its num_cpus, at least 1)."
    )

    def threads(self) -> int:
        return self.torch_threads or super().threads()


class ClientGroupConfig(Section):
    name: str = Field(min_length=1, description="Group name (worker names and error messages).")
    count: int = Field(ge=1, description="Clients in the group.")
    model: str | None = Field(None, description="The group's client SLM (None = models.client; "
                              "models.per_client still wins).")
    resources: ClientResources | None = Field(
        None, description="Resources of each of the group's workers (None = clients.resources), e.g. "
        "{num_gpus: 0.25, custom: {estuary_client: 1}}."
    )
    pool_size: int | None = Field(
        None, ge=1, description="Pooled workers of the group (None = what its resources allow on the nodes "
        "left after the earlier groups)."
    )
    slowdown_s: float = Field(0.0, ge=0, description="Simulated extra seconds per client task (slow devices).")


class ClientsConfig(Section):
    count: int = Field(4, ge=1, description="Number of simulated clients.")
    mode: Literal["pooled", "dedicated"] = Field(
        "pooled", description="pooled: K workers serve all clients; dedicated: one actor per client."
    )
    pool_size: int | None = Field(
        None, ge=1, description="Pooled workers (None = as many as the cluster's resources allow)."
    )
    resources: ClientResources = Field(
        default_factory=ClientResources, description="Ray resources of each worker actor: num_cpus (default 1), "
        "num_gpus (a fraction shares a GPU), custom, and torch_threads."
    )
    quorum: float = Field(
        1.0, gt=0, le=1, description="Share of a round's clients that must succeed for it to count."
    )
    max_retries: int = Field(2, ge=0, description="Retries of a client task after an error or crash.")
    startup_timeout_s: float = Field(
        600.0, gt=0, description="Seconds to wait for the worker actors to start before giving up."
    )
    max_inflight_per_worker: int = Field(
        2, ge=1, description="Calls queued at once on each pooled worker (pipelining)."
    )
    tasks_per_call: PositiveInt | Literal["auto"] = Field(
        "auto", description="Clients' tasks a pooled worker gets in one Ray call. auto: one while a strategy's "
        "tasks are untimed or slow; once their mean time is known, as many as make a call about "
        "clients.call_target_s long (never more than an even share of the queue), so that tasks far "
        "cheaper than a Ray call (~1 ms) stop paying one each. A batch fails or is cut at the deadline "
        "as a whole when its worker dies; a task's own error stays its own. 1: one call per task."
    )
    call_target_s: float = Field(
        0.05, gt=0, description="Seconds of client work one batched call aims at (tasks_per_call: auto)."
    )
    groups: list[ClientGroupConfig] = Field(
        default_factory=list, description="Heterogeneous client groups (model, resources, speed), taking "
        "consecutive client indices in order; their counts must add up to clients.count. Empty = one group."
    )
    sample_fraction: float | None = Field(
        None, gt=0, le=1, description="Share of the clients taking part in each round, sampled from the seed "
        "and the round (at least one); None = all."
    )
    sample_count: int | None = Field(None, ge=1, description="Clients sampled per round (instead of a fraction).")
    round_deadline_s: float | None = Field(
        None, gt=0, description="Seconds a client phase of a round may take: tasks not finished by then are "
        "cancelled, their late results discarded (never applied to client state) and recorded in "
        "failures.jsonl (late: true); the round goes on if quorum holds. None = wait for every task."
    )

    @model_validator(mode="after")
    def _groups_and_sampling(self) -> ClientsConfig:
        if self.sample_fraction is not None and self.sample_count is not None:
            raise ValueError("set sample_fraction or sample_count, not both")
        total = sum(g.count for g in self.groups)
        if self.groups and total != self.count:
            raise ValueError(f"clients.groups hold {total} clients but clients.count is {self.count}")
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"clients.groups names must be unique (got {names})")
        return self

    def group_of(self, index: int) -> ClientGroupConfig | None:
        """The group holding client `index` (None without groups)."""
        start = 0
        for g in self.groups:
            if start <= index < start + g.count:
                return g
            start += g.count
        return None
