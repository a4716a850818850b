"""A strategy for fault tests: client c001 always raises (importable by workers via PYTHONPATH)."""

from __future__ import annotations

from dataclasses import dataclass, field

from estuary.registry import register
from estuary.strategies.baselines import Standalone
from estuary.strategies.noop import Noop
from estuary.strategies.noop_config import NoopConfig


@dataclass
class FaultyConfig:
    failing_client: str = field(default="c001", metadata={"help": "Client whose step always raises."})


@register
class Faulty(Standalone):
    name = "faulty_test"
    config_class = FaultyConfig

    def client_step(self, ctx, task):  # type: ignore[no-untyped-def]
        if ctx.client_id == self.params.failing_client:
            raise RuntimeError(f"planted failure in {ctx.client_id}")
        return super().client_step(ctx, task)


@dataclass
class FaultyNoopConfig(NoopConfig):
    failing_client: str = field(default="c001", metadata={"help": "Client whose step always raises."})


@register
class FaultyNoop(Noop):
    """The no-op method with the same planted failure: its tasks are cheap enough to be batched."""

    name = "faulty_noop_test"
    config_class = FaultyNoopConfig

    def client_step(self, ctx, task):  # type: ignore[no-untyped-def]
        if ctx.client_id == self.params.failing_client:
            raise RuntimeError(f"planted failure in {ctx.client_id}")
        return super().client_step(ctx, task)
