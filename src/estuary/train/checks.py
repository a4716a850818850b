"""Checks before a server training job starts any worker: resources, model, adapter targets, knowledge.

Each failure is one line (`ConfigError`, `DataError`, `ModelNotAvailable`) raised from the driver, so a job
that cannot run never reaches Ray Train, whose scheduler would otherwise wait for resources that never
come, or fail deep inside a worker.
"""

from __future__ import annotations

import math
import time
from typing import Any

from estuary.errors import ConfigError, DataError
from estuary.resources import Resources
from estuary.train.failures import one_line
from estuary.train.knowledge import as_dataset, normalize_record
from estuary.train.train_config import TrainConfig

_EPS = 1e-9


def _field(key: str) -> str:
    """The field asking for a bundle key: train.resources.num_cpus / num_gpus / custom.<key>."""
    return f"train.resources.{Resources.field_of(key)}"


def _bundles_that_fit(node: dict[str, float], need: dict[str, float]) -> int:
    return min((math.floor(node.get(k, 0.0) / v + _EPS) for k, v in need.items() if v > 0), default=0)


def check_resources(cfg: TrainConfig, nodes: list[dict[str, float]], available: dict[str, float] | None = None,
                    ) -> None:
    """ConfigError unless `cfg.workers` worker bundles can be placed on `nodes` (each node's resources).

    `available` (the cluster's free resources now) adds the check that they are free at the moment.
    """
    need = cfg.resources.bundle()
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in need}
    for key, per in need.items():
        if per > 0 and total[key] + _EPS < per * cfg.workers:
            raise ConfigError(f"train: {cfg.workers} workers x {key}={per:g} need {key}={per * cfg.workers:g}, but "
                              f"the Ray cluster has {total[key]:g}; lower train.workers or {_field(key)}")
    per_node = [_bundles_that_fit(n, need) for n in nodes]
    strategy = cfg.placement_strategy
    fits = {
        "PACK": sum(per_node), "SPREAD": sum(per_node), "STRICT_PACK": max(per_node, default=0),
        "STRICT_SPREAD": sum(1 for f in per_node if f > 0),
    }[strategy]
    if fits < cfg.workers:
        raise ConfigError(f"train: only {fits} of {cfg.workers} workers ({need}) fit on the cluster's nodes with "
                          f"placement_strategy {strategy}; lower train.workers or train.resources")
    if available is not None:
        for key, per in need.items():
            if per > 0 and available.get(key, 0.0) + _EPS < per * cfg.workers:
                raise ConfigError(
                    f"train: {cfg.workers} workers need {key}={per * cfg.workers:g} but only "
                    f"{available.get(key, 0.0):g} is free (other actors, e.g. a client pool, hold the rest); free "
                    f"them, lower {_field(key)}, or raise train.resource_wait_s")


def _nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg: TrainConfig) -> None:
    """ConfigError unless the live cluster could ever place the job's workers."""
    check_resources(cfg, _nodes())


def wait_for_resources(cfg: TrainConfig) -> None:
    """Check the live cluster, waiting up to `cfg.resource_wait_s` for the workers' resources to be free."""
    import ray

    nodes = _nodes()
    check_resources(cfg, nodes)
    deadline = time.monotonic() + cfg.resource_wait_s
    while True:
        try:
            check_resources(cfg, nodes, ray.available_resources())
            return
        except ConfigError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.5)


def check_model(cfg: TrainConfig) -> tuple[str, int]:
    """The resolved model folder and its vocabulary size; the LoRA targets must name modules of the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from estuary.models import resolve_model

    path = resolve_model(cfg.model)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in skeleton.named_modules()}
    try:
        targets = cfg.lora.target_modules(skeleton)
    except ValueError as exc:
        raise ConfigError(str(exc).replace("training.lora", "train.lora")) from None
    missing = [t for t in targets if t not in leaves]
    if missing:
        have = sorted(n for n in leaves if n.endswith("proj")) or sorted(leaves)[:12]
        raise ConfigError(f"train.lora.targets: {missing} are not modules of {cfg.model} (it has {', '.join(have)})")
    if cfg.init_adapter is not None:
        check_init_adapter(cfg, targets)
    return path, int(skeleton.get_input_embeddings().weight.shape[0])


def check_init_adapter(cfg: TrainConfig, job_targets: list[str]) -> None:
    """ConfigError unless `cfg.init_adapter` is a PEFT LoRA folder with the job's rank and (resolved) targets."""
    import json
    from pathlib import Path

    assert cfg.init_adapter is not None
    conf = Path(cfg.init_adapter) / "adapter_config.json"
    if not conf.is_file():
        raise ConfigError(f"train.init_adapter: {cfg.init_adapter} has no adapter_config.json; give a PEFT adapter "
                          "folder (a published version's path) or leave it unset for a fresh adapter")
    have = json.loads(conf.read_text())
    rank, targets = have.get("r"), sorted(have.get("target_modules") or [])
    if rank != cfg.lora.r or targets != sorted(job_targets):
        raise ConfigError(f"train.init_adapter: {cfg.init_adapter} has r={rank}, targets {targets}; the job has "
                          f"train.lora r={cfg.lora.r}, targets {sorted(job_targets)} — make them equal")


def check_knowledge(knowledge: Any, workers: int, *, shuffle_seed: int | None = None,
                    sample: int = 16) -> tuple[Any, int]:
    """A materialised Ray Dataset of the knowledge and its row count; DataError if empty, too small or malformed.

    Materialising before the workers start runs any pending Ray Data tasks (object refs → records, a shuffle)
    while the CPUs the workers will take are still free (call it after `wait_for_resources`), and lets every
    worker stream its shard without more tasks.
    """
    from ray.data.dataset import MaterializedDataset

    ds = as_dataset(knowledge, shuffle_seed)
    if not isinstance(ds, MaterializedDataset):
        ds.context.enable_progress_bars = False
        try:
            ds = ds.materialize()
        except Exception as exc:  # a bad record inside an object ref fails in a Ray Data task
            raise one_line(exc, "the knowledge could not be read") from exc
    ds.context.enable_progress_bars = False  # the workers' shards: no progress bars in the job's log
    rows = ds.count()
    if rows == 0:
        raise DataError("no knowledge to train on: the data set is empty (did the round select nothing?)")
    head = ds.take_batch(min(sample, rows), batch_format="pyarrow").to_pylist()
    for i, row in enumerate(head):
        normalize_record({k: v for k, v in row.items() if v is not None}, f"knowledge row {i}")
    if rows < workers:
        raise DataError(f"the knowledge has {rows} record(s), fewer than train.workers={workers}: every worker "
                        "needs a shard; lower train.workers")
    return ds, rows
