"""Checkpoint shards: up to 64 clients' states in one file, written by whoever holds them (the driver, or the pool's
workers on the driver's node) and read back by `platform.checkpoint`.

A shard is written with `torch.save` when torch is loaded (a state that holds a tensor was unpickled with it);
in a process that never loaded torch (`noop`) no state can hold one, and the shard is a plain pickle under the
same name. `read_shard` reads both.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from estuary.wire import ClientState


def shard_fields(states: Mapping[str, ClientState]) -> dict[str, dict[str, Any]]:
    """{client id: the state's fields as they are} (dataclasses.asdict would deep-copy every tensor)."""
    return {cid: {f.name: getattr(s, f.name) for f in dataclasses.fields(s)} for cid, s in states.items()}


def write_shard(obj: dict[str, Any], path: Path) -> None:
    """`torch.save` once torch is loaded; before that nothing can hold a tensor: a plain pickle."""
    if "torch" in sys.modules:
        import torch

        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def read_shard(path: Path) -> Any:
    """A shard `write_shard` wrote: torch's format (a zip archive) or a plain pickle."""
    if zipfile.is_zipfile(path):
        import torch

        return torch.load(path, weights_only=False)
    with open(path, "rb") as f:
        return pickle.load(f)
