"""Worker groups: how many client workers of which resources, for which clients (heterogeneous clients).

Without `clients.groups` there is one group holding every client with `clients.resources`. With groups,
each group gets its own workers (its resources: GPU fraction, custom resources such as `estuary_client`)
and its clients run only there. Pooled sizes follow the nodes' resources group by group: what a group's
workers take is not offered to the next group, so groups sharing nodes never oversubscribe them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from estuary.config import ExperimentConfig
from estuary.config.clients import ClientResources
from estuary.errors import ConfigError


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    start: int  # first client index
    count: int  # clients
    resources: ClientResources
    first_worker: int  # index of its first worker in the pool
    size: int  # workers
    slowdown_s: float = 0.0

    def holds(self, index: int) -> bool:
        return self.start <= index < self.start + self.count


def client_resources(exp: ExperimentConfig) -> list[ClientResources]:
    """The resources of each worker group: each group's own (or clients.resources), or clients.resources alone."""
    c = exp.clients
    return [g.resources or c.resources for g in c.groups] or [c.resources]


def node_capacities(res: ClientResources, nodes: list[dict[str, Any]]) -> list[int]:
    """Per alive node: how many workers with these resources fit (the minimum over requested resources)."""
    need = res.bundle()
    out = []
    for node in nodes:
        if not node.get("Alive", True):
            out.append(0)
            continue
        have = node.get("Resources", {})
        fits = [math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items()]
        out.append(min(fits) if fits else 1_000_000)
    return out


def _take(res: ClientResources, nodes: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Nodes with `workers` of these resources taken, filling node by node (what Ray would place)."""
    need = res.bundle()
    left = []
    for node, fit in zip(nodes, node_capacities(res, nodes), strict=True):
        n = min(fit, workers)
        workers -= n
        have = dict(node.get("Resources", {}))
        for k, v in need.items():
            if k in have:
                have[k] -= n * v
        left.append({**node, "Resources": have})
    return left


def plan_groups(exp: ExperimentConfig, nodes: list[dict[str, Any]]) -> list[WorkerGroup]:
    """The pool's worker groups on these nodes (`ray.nodes()`); a group that cannot fit is a ConfigError."""
    c = exp.clients
    dedicated = c.mode == "dedicated"
    specs = [(g.name, g.count, g.resources or c.resources, g.pool_size, g.slowdown_s) for g in c.groups] or [
        ("default", c.count, c.resources, c.pool_size, 0.0)
    ]
    groups: list[WorkerGroup] = []
    start = first = 0
    all_nodes = nodes
    for name, count, res, pool_size, slowdown in specs:
        where = "clients.resources" if not c.groups else f"clients.groups[{name}].resources"
        capacity = sum(node_capacities(res, nodes))
        if capacity < 1 and sum(node_capacities(res, all_nodes)) >= 1:
            raise ConfigError(
                f"clients.groups[{name}]: the earlier groups' workers take every node that fits {res.describe()}; "
                "give the earlier groups a pool_size"
            )
        if capacity < 1:
            raise ConfigError(
                f"{where}: no node can host a worker needing {res.describe()}; lower them or add nodes"
            )
        if dedicated:
            if capacity < count:
                raise ConfigError(
                    f"clients.mode=dedicated needs {count} worker actors of {res.describe()}, but the cluster fits "
                    f"{capacity}; lower {where} (fractions are fine) or use clients.mode=pooled"
                )
            size = count
        else:
            size = min(pool_size or capacity, count)
        nodes = _take(res, nodes, size)
        groups.append(WorkerGroup(name, start, count, res, first, size, slowdown))
        start += count
        first += size
    return groups
