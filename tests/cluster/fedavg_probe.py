"""FedAvg that keeps, in each client's state, the adapter every one of its tasks started from (importable by workers
via PYTHONPATH, like faulty.py): what the clients really loaded, read back from the checkpoints."""

from __future__ import annotations

from estuary.registry import register
from estuary.strategies.fedavg import FedAvg


@register
class FedAvgProbe(FedAvg):
    name = "fedavg_probe_test"

    def started(self, ctx, task, start):  # type: ignore[no-untyped-def]
        from estuary.lm.model import adapter_state

        ctx.state.extra.setdefault("starts", {})[f"{task.round}/{task.kind}"] = adapter_state(ctx.model)
