"""Round checkpoints: every client's state and the strategy's driver state, after each round.

    checkpoints/<strategy>/round-0003/
        clients-00000.pt {client id: ClientState fields} of up to 64 clients per shard (LoRA adapters,
        clients-00001.pt  optimizer, privacy ledger); written shard by shard, so the driver holds one at a time
        strategy.json    the strategy's state_dict() (its plain-data entries) and the round's metrics
        strategy.pt      the state_dict() entries that hold tensors (e.g. FedAvg's global adapter), if any
        COMPLETE         written last: a folder without it is ignored (crash mid-save)

Shards (`estuary.client.shards`) are written by the pool's workers on the driver's node, in parallel and without
moving the states through the driver, else by the driver one at a time; `torch.save` where torch is loaded, a
plain pickle in a run that never loads it (`noop`). `load` reads both.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from estuary.client.shards import read_shard, shard_fields, write_shard
from estuary.wire import ClientState


class Checkpointer:
    def __init__(self, run_dir: Path, keep: int = 2) -> None:
        self.root = run_dir / "checkpoints"
        self.keep = keep

    def _dir(self, strategy: str, rnd: int) -> Path:
        return self.root / strategy / f"round-{rnd:04d}"

    def save(
        self,
        strategy: str,
        rnd: int,
        states: Mapping[str, ClientState] | Iterable[Mapping[str, ClientState]] | Callable[[Path], None],
        driver_state: dict[str, Any],
        metrics: dict[str, float],
    ) -> Path:
        """`states`: every client's state, an iterable of chunks of them (one shard file per chunk), or a
        function that writes the shards into the folder it is given (`ClientPool.write_shards`)."""
        path = self._dir(strategy, rnd)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        if callable(states):
            states(path)
        else:
            for i, chunk in enumerate([states] if isinstance(states, Mapping) else states):
                write_shard(shard_fields(chunk), path / f"clients-{i:05d}.pt")
        tensors = {k: v for k, v in driver_state.items() if holds_tensors(v)}
        if tensors:
            import torch

            torch.save(tensors, path / "strategy.pt")
        plain = {k: v for k, v in driver_state.items() if k not in tensors}
        meta = {"round": rnd, "strategy_state": plain, "metrics": metrics}
        (path / "strategy.json").write_text(json.dumps(meta, default=float))
        (path / "COMPLETE").write_text("ok\n")
        for old in self.rounds(strategy)[: -self.keep]:
            shutil.rmtree(self._dir(strategy, old), ignore_errors=True)
        return path

    def rounds(self, strategy: str) -> list[int]:
        base = self.root / strategy
        if not base.exists():
            return []
        done = [p for p in base.glob("round-*") if (p / "COMPLETE").exists()]
        return sorted(int(p.name.split("-")[1]) for p in done)

    def latest(self, strategy: str) -> int | None:
        rounds = self.rounds(strategy)
        return rounds[-1] if rounds else None

    def load(self, strategy: str, rnd: int) -> tuple[dict[str, ClientState], dict[str, Any], dict[str, float]]:
        path = self._dir(strategy, rnd)
        states: dict[str, ClientState] = {}
        for shard in sorted(path.glob("clients*.pt")):  # clients.pt: a checkpoint from before the shards
            raw = read_shard(shard)
            states.update({cid: ClientState(**fields) for cid, fields in raw.items()})
        meta = json.loads((path / "strategy.json").read_text())
        driver_state = dict(meta["strategy_state"])
        if (path / "strategy.pt").exists():
            import torch

            driver_state.update(torch.load(path / "strategy.pt", weights_only=True))
        return states, driver_state, meta["metrics"]


def holds_tensors(value: Any) -> bool:
    """A tensor, or a non-empty mapping of tensors (an adapter's state dict): saved with torch, not JSON."""
    if "torch" not in sys.modules:  # not loaded: nothing holds a tensor
        return False
    import torch

    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())
