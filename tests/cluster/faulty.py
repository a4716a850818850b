"""Strategies for fault tests: client c001 always raises (importable by workers via PYTHONPATH)."""

from __future__ import annotations

from dataclasses import dataclass, field

from estuary.registry import register
from estuary.strategies.baselines import Standalone
from estuary.strategies.noop import Noop
from estuary.strategies.noop_config import NoopConfig

HELP = {"help": "Client whose step always raises."}


@dataclass
class FaultyConfig:
    failing_client: str = field(default="c001", metadata=HELP)


@dataclass
class FaultyNoopConfig(NoopConfig):
    failing_client: str = field(default="c001", metadata=HELP)


class PlantedFailure:
    """A client_step that raises for params.failing_client and is the parent strategy's otherwise."""

    def client_step(self, ctx, task):  # type: ignore[no-untyped-def]
        if ctx.client_id == self.params.failing_client:  # type: ignore[attr-defined]
            raise RuntimeError(f"planted failure in {ctx.client_id}")
        return super().client_step(ctx, task)  # type: ignore[misc]


@register
class Faulty(PlantedFailure, Standalone):
    name = "faulty_test"
    config_class = FaultyConfig


@register
class FaultyNoop(PlantedFailure, Noop):
    """The no-op method with the same planted failure: its tasks are cheap enough to be batched."""

    name = "faulty_noop_test"
    config_class = FaultyNoopConfig
