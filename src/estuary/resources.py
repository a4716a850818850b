"""`Resources`: the one vocabulary for Ray resources — `num_cpus`, `num_gpus`, `custom` — of the client workers
(`clients.resources`), the server LLM's replica (`server.resources`) and the trainer's workers
(`train.resources`, per worker). Each section subclasses it only to change a default or a bound.

`rename_old_keys` lets a section still read its old flat keys (`server.num_gpus`, `train.cpus_per_worker`, ...):
it rewrites them into `resources` before validation and prints one deprecation line (`note`).

A bottom layer beside `estuary.errors` (the import-linter contract in pyproject.toml): pydantic and the standard
library only.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

FIELDS = ("num_cpus", "num_gpus", "custom")
_BUNDLE_KEYS = {"CPU": "num_cpus", "GPU": "num_gpus"}


class Resources(BaseModel):
    """Ray resources of one actor, deployment replica or worker."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_cpus: float = Field(1.0, ge=0, description="Ray logical CPUs reserved (a fraction shares one).")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs: 0 = none, a fraction below 1 shares one GPU, a whole number n uses n GPUs."
    )
    custom: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources, e.g. {estuary_client: 1}: only nodes offering them "
        "host it. cluster.yaml's client GPU nodes offer estuary_client (client workers); its server GPU nodes offer "
        "estuary_server (server.resources and train.resources of the server LLM and its trainer)."
    )

    @model_validator(mode="after")
    def _whole_gpus(self) -> Resources:
        g = self.num_gpus
        if g > 1 and not float(g).is_integer():
            raise ValueError(f"num_gpus={g}: use a fraction below 1 or a whole number of GPUs")
        return self

    @property
    def on_gpu(self) -> bool:
        return self.num_gpus > 0

    def threads(self) -> int:
        """Threads a process holding these resources runs: its whole CPUs, at least 1."""
        return max(1, int(self.num_cpus))

    def ray_options(self) -> dict[str, Any]:
        """`num_cpus`, `num_gpus` and `resources` (custom, when any) for `.options()` of an actor or task, or a
        Serve deployment's `ray_actor_options`."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.custom:
            opts["resources"] = dict(self.custom)
        return opts

    def bundle(self) -> dict[str, float]:
        """A placement-group bundle (`{"CPU": .., "GPU": .., **custom}`; zero amounts left out), also the shape of
        Ray Train's `resources_per_worker` and of a node's resources in `ray.nodes()`."""
        whole = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.custom}
        return {k: v for k, v in whole.items() if v > 0}

    @staticmethod
    def field_of(bundle_key: str) -> str:
        """The field that asks for a bundle key: CPU → num_cpus, GPU → num_gpus, anything else → custom.<key>."""
        return _BUNDLE_KEYS.get(bundle_key, f"custom.{bundle_key}")

    def describe(self) -> str:
        return f"num_cpus={self.num_cpus}, num_gpus={self.num_gpus}, custom={self.custom}"


# -- old keys ----------------------------------------------------------------------------------------------
def _print_note(message: str) -> None:
    stream = sys.stderr
    tag = "\x1b[33mwarning:\x1b[0m" if stream.isatty() else "warning:"
    print(f"{tag} {message}", file=stream, flush=True)


_sink: Callable[[str], None] = _print_note
_noted: set[str] = set()


def set_note_sink(sink: Callable[[str], None] | None) -> None:
    """Where `note` prints (the CLI passes its console's yellow `warning:` line); None: stderr."""
    global _sink
    _sink = sink or _print_note


def note(message: str) -> None:
    """One line on stderr, once per process (a section validated again each round repeats nothing)."""
    if message not in _noted:
        _noted.add(message)
        _sink(message)


def _looks_like_a_field(key: str) -> bool:
    """A misspelt num_cpus/num_gpus/custom (left for validation to refuse, not taken as a custom resource)."""
    return bool(difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.8))


def rename_old_keys(data: Any, section: str, renames: Mapping[str, str], *, loose_custom: bool = False) -> Any:
    """Rewrite a section's old resource keys into its `resources` (a `mode="before"` validator's input).

    `renames` maps an old flat key of the section to its field in `resources`; with `loose_custom`, an old-style
    `resources` mapping of custom resource names (any key but num_cpus/num_gpus/custom) moves into
    `resources.custom`. Prints one deprecation line naming the renames; an old key beside the new field it
    stands for is refused (ValueError naming both).
    """
    if not isinstance(data, dict):
        return data
    old = [k for k in renames if k in data]
    res = data.get("resources")
    loose = [k for k in res if k not in FIELDS and not _looks_like_a_field(str(k))] \
        if loose_custom and isinstance(res, dict) else []
    if not old and not loose:
        return data
    if res is None:
        res = {}
    elif isinstance(res, Resources):
        res = res.model_dump(exclude_unset=True)
    elif not isinstance(res, dict):
        return data  # validation names the wrong type
    data, res = dict(data), dict(res)
    moved: list[str] = []
    if loose:
        custom = res.get("custom") or {}
        if not isinstance(custom, dict):
            return data
        both = [k for k in loose if k in custom]
        if both:
            raise ValueError(f"{section}.resources.{both[0]} (old style) and {section}.resources.custom.{both[0]} "
                             f"name the same resource; give only {section}.resources.custom.{both[0]}")
        res["custom"] = {**custom, **{k: res.pop(k) for k in loose}}
        moved += [f"{section}.resources.{k} → {section}.resources.custom.{k}" for k in loose]
    for key in old:
        new = renames[key]
        if new in res:
            raise ValueError(f"{section}.{key} (old) and {section}.resources.{new} name the same thing; "
                             f"give only {section}.resources.{new}")
        res[new] = data.pop(key)
        moved.append(f"{section}.{key} → {section}.resources.{new}")
    data["resources"] = res
    note(f"old resource keys, still read for now: {', '.join(moved)} — rename them")
    return data
