"""The baselines: zero-shot (pretrained, no training), standalone (each client trains on its own
shard only) and centralized (one model trained on all clients' data pooled; non-private bound)."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, ClassVar

from estuary.actors.egress import Egress
from estuary.data.federated import CENTRAL
from estuary.platform.plan import ClientTask
from estuary.platform.registry import register
from estuary.platform.strategy import Strategy
from estuary.strategies.baselines_config import CentralizedConfig, StandaloneConfig, ZeroShotConfig

if TYPE_CHECKING:
    from estuary.actors.context import ClientContext
    from estuary.platform.run_context import ServerContext


@register
class ZeroShot(Strategy):
    name = "zero_shot"
    config_class = ZeroShotConfig
    description = "Pretrained client SLMs and server LLM as they are, no training."

    def num_rounds(self) -> int:
        return 1

    def select_clients(self, rnd: int, clients: list[str]) -> list[str]:
        return clients  # the reference point: every client is evaluated, never a sample

    def configure_round(self, rnd: int, clients: list[str]) -> list[ClientTask]:
        # Clients sharing a base model have identical pretrained weights: score the global test
        # split once per distinct model, and every client on its own eval split.
        seen: set[str] = set()
        tasks = []
        for i, cid in enumerate(clients):
            model = self.exp.models.for_client(i)
            tasks.append(ClientTask(cid, rnd, kind="eval", params={"global_test": model not in seen}))
            seen.add(model)
        return tasks

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        return ctx.egress(task, metrics=ctx.evaluate(task))

    def server_step(self, rnd: int, agg: dict, server: ServerContext) -> dict[str, float]:
        p: ZeroShotConfig = self.params
        return server.evaluate() if p.evaluate_server and self.exp.evaluation.server else {}


@register
class Standalone(Strategy):
    name = "standalone"
    config_class: ClassVar[type] = StandaloneConfig
    description = "Each client fine-tunes its SLM (LoRA) on its own private shard; no transfer."

    def local_steps(self) -> int:
        steps = getattr(self.params, "steps", None)
        return self.exp.training.steps if steps is None else steps

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        result = ctx.train_steps(task.round, steps=self.local_steps())
        metrics = {"train/loss": statistics.fmean(result.losses)} if result.losses else {}
        if task.evaluate:
            metrics.update(ctx.evaluate(task))
        return ctx.egress(task, metrics=metrics, losses=result.losses, examples=result.examples_seen)


@register
class Centralized(Standalone):
    name = "centralized"
    config_class: ClassVar[type] = CentralizedConfig
    description = "One SLM fine-tuned on all clients' data pooled (non-private upper bound)."

    def client_ids(self) -> list[str]:
        return [CENTRAL]

    def local_steps(self) -> int:
        p: CentralizedConfig = self.params
        return self.exp.training.steps * self.exp.clients.count if p.steps is None else p.steps
