"""The federated view of a task: each client's private train/eval shard, the union, the global test.

Built deterministically from the job's data section and seed, by the driver and by every worker
alike, so private examples never travel through the driver: a task names a client, and the worker
that runs it rebuilds (once, cached) the same shards from the same seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from estuary.errors import DataError

from .task import Example, Task

CENTRAL = "central"  # the pooled client of the centralized baseline


@dataclass(frozen=True)
class ClientData:
    train: tuple[Example, ...]
    eval: tuple[Example, ...]


@dataclass(frozen=True)
class FederatedData:
    task: Task
    clients: dict[str, ClientData]
    test: tuple[Example, ...]

    def client(self, client_id: str) -> ClientData:
        if client_id == CENTRAL:
            return self.union()
        return self.clients[client_id]

    @functools.cached_property
    def _union(self) -> ClientData:
        train = tuple(ex for cd in self.clients.values() for ex in cd.train)
        ev = tuple(ex for cd in self.clients.values() for ex in cd.eval)
        return ClientData(train, ev)

    def union(self) -> ClientData:
        """All clients' data pooled (the non-private upper bound's training set)."""
        return self._union

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {cid: (len(cd.train), len(cd.eval)) for cid, cd in self.clients.items()}


def client_ids(count: int) -> list[str]:
    """The ids of `count` clients: c000, c001, ... (zero-padded, so they sort in client order)."""
    width = max(3, len(str(count - 1)))
    return [f"c{i:0{width}d}" for i in range(count)]


def build_federated_data(data_cfg_json: str, num_clients: int, seed: int) -> FederatedData:
    """Cached on the JSON of the data section, so a worker builds it once per experiment."""
    return _build(data_cfg_json, num_clients, seed)


@functools.lru_cache(maxsize=4)
def _build(data_cfg_json: str, num_clients: int, seed: int) -> FederatedData:
    from .data_config import DataConfig
    from .datasets import find_data_root, load_job_splits, stratified_sample
    from .partition import client_splits, partition

    cfg = DataConfig.model_validate_json(data_cfg_json)
    root = find_data_root(cfg.root) if cfg.root else None
    splits = load_job_splits(cfg.task, root, seed, cfg.train_size, cfg.test_size)
    need = num_clients * cfg.min_client_size
    if len(splits.train) < need:
        raise DataError(
            f"task {cfg.task_name} has {len(splits.train)} train examples, too few for {num_clients} clients of "
            f"at least {cfg.min_client_size} (data.min_client_size); lower clients.count or data.min_client_size, "
            "or give more data (data.train_size)")
    parts = partition(
        splits.train, num_clients, cfg.partition, alpha=cfg.alpha, seed=seed, min_size=cfg.min_client_size
    )
    clients: dict[str, ClientData] = {}
    for i, (cid, idx) in enumerate(zip(client_ids(num_clients), parts, strict=True)):
        train, ev = client_splits(splits.train, idx, cfg.client_eval_fraction, seed + i)
        ev = stratified_sample(ev, cfg.client_eval_max, seed=seed, purpose=f"client-eval/{cid}")
        clients[cid] = ClientData(tuple(train), tuple(ev))
    return FederatedData(splits.task, clients, tuple(splits.test))
