"""Client steps shared by the methods that send clients server-made data (FDKT, CrossLM)."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from estuary.data.task import Example
from estuary.wire import Egress

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
    from estuary.wire import ClientTask


def train_on_transfer(ctx: ClientContext, task: ClientTask, steps: int | None) -> Egress:
    """Train the client's SLM on its private data plus `task.params["transfer"]` (the examples the server
    sent this round), evaluate when the task asks, and return the Egress."""
    extra: list[Example] = list(task.params.get("transfer", []))
    result = ctx.train_steps(task.round, steps=steps, examples=[*ctx.train, *extra])
    metrics = {"train/loss": statistics.fmean(result.losses)} if result.losses else {}
    metrics["train/transfer_examples"] = float(len(extra))
    if task.evaluate:
        metrics.update(ctx.evaluate(task))
    return ctx.egress(task, metrics=metrics, losses=result.losses, examples=result.examples_seen)
