"""noop: clients do (almost) nothing — measures the platform's own per-round, per-client cost.

The client step never touches the model, so workers never load one; the state round-trips through
the object store exactly as a real method's does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from estuary.platform.strategy import Strategy
from estuary.registry import register
from estuary.strategies.noop_config import NoopConfig
from estuary.wire import ClientTask, Egress

if TYPE_CHECKING:
    from estuary.client.context import ClientContext


@register
class Noop(Strategy):
    name = "noop"
    config_class: ClassVar[type] = NoopConfig
    description = "Clients do nothing (optionally sleep): measures orchestration overhead."
    client_model = False  # its workers never load one, and the driver never checks one

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        p: NoopConfig = self.params
        if p.sleep_s:
            time.sleep(p.sleep_s)
        if p.payload_floats and "payload" not in ctx.state.extra:
            import torch

            ctx.state.extra["payload"] = torch.zeros(p.payload_floats)
        ctx.state.rounds_trained += 1
        return ctx.egress(task, metrics={"train/rounds": float(ctx.state.rounds_trained)})
