"""Before Ray starts: can the server LLM's training workers get their CPUs beside the client pool?

The client pool's workers hold their `clients.resources` for the whole run (they start before the first
strategy and stop after the last), and the served LLM's replicas hold `server.resources` unless
`server.release_while_training` stops them while the LLM trains. A strategy that fine-tunes the server LLM
(`Strategy.server_training`: CrossLM and FedMKT with `train_llm`, the `llm_centralized` baseline) needs
`workers × resources.num_cpus` of its llm_train on top. On a local cluster the node's CPUs are known before Ray
starts (`ray.num_cpus`, else the CPUs this process may run on), so a job whose training can never get them is
refused here in one line naming the fields, where the run would otherwise wait `resource_wait_s` at that
strategy's first server step (minutes in) and stop there.

Only CPUs are counted. On a Ray cluster (--address, ray.address, $ESTUARY_RAY_ADDRESS, a Ray Job's driver)
the nodes are not known before it is joined, and a job whose client, server or training bundles ask for GPUs or
custom resources is not checked here either: both are checked on the live cluster when the training workers
start (`estuary.train.checks`).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from estuary.client.groups import client_resources, plan_groups
from estuary.errors import ConfigError
from estuary.registry import get
from estuary.runtime import cluster_address
from estuary.train.train_config import TrainConfig

if TYPE_CHECKING:
    from estuary.config import ExperimentConfig

_EPS = 1e-9
TRAIN_SLIVER = 0.01  # CPUs per training worker suggested when the clients must make room


def local_cpus(cfg: ExperimentConfig) -> float:
    """The CPUs a local Ray cluster started by this run gets: `ray.num_cpus`, else the CPUs this process may use."""
    return float(cfg.ray.num_cpus or len(os.sched_getaffinity(0)))


def check_cpu_fit(cfg: ExperimentConfig, address: str | None = None, *, cpus: float | None = None) -> list[str]:
    """ConfigError (one line) when a strategy's server training cannot get its CPUs beside the client pool and
    the served LLM on the local node; else the lines to print (what was checked, or why not)."""
    trainings = [(name, t) for name in cfg.strategies() if (t := get(name).server_training(cfg)) is not None]
    if not trainings:
        return []
    import ray

    if cluster_address(cfg.ray, address) or ray.is_initialized():  # joined, or this process's own (tests, notebooks)
        return ["training CPUs: not checked before the run (a Ray cluster's nodes are checked when the workers "
                "start)"]
    server = cfg.server_config()
    jobs = [(name, field, TrainConfig.load({"model": server.model, **train}, field))
            for name, (field, train) in trainings]
    bundles = [r.bundle() for r in client_resources(cfg)] + [server.resources.bundle()]
    bundles += [job.resources.bundle() for _, _, job in jobs]
    if not all(set(b) <= {"CPU"} for b in bundles):
        return ["training CPUs: not checked before the run (the job asks for GPUs or custom resources; checked "
                "when the workers start)"]
    total = local_cpus(cfg) if cpus is None else cpus
    groups = plan_groups(cfg, [{"Alive": True, "Resources": {"CPU": total}}])
    pool = sum(g.size * g.resources.num_cpus for g in groups)
    served = 0.0 if server.release_while_training else server.num_replicas * server.resources.num_cpus
    lines = []
    for name, field, job in jobs:
        need = job.workers * job.resources.num_cpus
        free = total - pool - served
        if need > free + _EPS:
            raise ConfigError(_refusal(cfg, name, field, job, total, sum(g.size for g in groups), pool, served))
        lines.append(f"training CPUs for {name}: {job.workers} worker(s) × {job.resources.num_cpus:g} of the "
                     f"{free:g} left by the client pool ({pool:g}) and the server ({served:g}) on {total:g}")
    return lines


def _cents(x: float) -> float:
    """`x` rounded down to two decimals (float noise such as 0.2 / 2 = 0.0999… not counted as a cent less)."""
    return math.floor(x * 100 + 1e-6) / 100


def _refusal(cfg: ExperimentConfig, name: str, field: str, job: TrainConfig, total: float, workers: int,
             pool: float, served: float) -> str:
    """The refusal's line: what the training needs, what the pool (`workers` holding `pool` CPUs) and the server
    hold, and values that fit."""
    need = job.workers * job.resources.num_cpus
    free = total - pool - served
    clients = "clients.groups[].resources.num_cpus" if cfg.clients.groups else "clients.resources.num_cpus"
    room = _cents(free / job.workers)  # what each training worker could have
    share = _cents((total - served - job.workers * TRAIN_SLIVER) / workers)
    size = "" if cfg.clients.pool_size or cfg.clients.groups else f", clients.pool_size {workers}"
    if room > 0:
        fix = f"lower {field}.resources.num_cpus to {room:g} or less"
    elif share > 0:  # the pool holds every CPU: the clients give up a sliver (they idle while the LLM trains)
        fix = (f"set {clients} {share:g}{size} and {field}.resources.num_cpus {TRAIN_SLIVER:g} (the clients "
               "idle while the LLM trains; jobs/fedmkt-sst2.yaml does this)")
    else:
        fix = f"lower clients.pool_size or {field}.workers"
    server = f", the server's replicas {served:g}" if served else ""
    return (f"{field}: {name} trains the server LLM on {job.workers} Ray Train worker(s) × resources.num_cpus "
            f"{job.resources.num_cpus:g} = {need:g} CPUs, but the client pool's {workers} workers hold {pool:g}"
            f"{server} of this node's {total:g} for the whole run; {fix}")
