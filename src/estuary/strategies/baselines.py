"""The baselines: zero-shot (pretrained, no training), standalone (each client trains on its own
shard only), centralized (one model trained on all clients' data pooled; non-private bound) and
llm_centralized (the server LLM's adapter trained on the pooled data: the bound of the mutual methods' LLM)."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, ClassVar

from estuary.data.federated import CENTRAL
from estuary.platform.strategy import Strategy
from estuary.registry import register
from estuary.strategies.baselines_config import (
    CentralizedConfig,
    LLMCentralizedConfig,
    StandaloneConfig,
    ZeroShotConfig,
)
from estuary.wire import ClientTask, Egress

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
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
        if not (p.evaluate_server and self.exp.evaluation.server):
            return {}
        from estuary.strategies.server_llm import evaluate_served_llm, method_llm_eval_size

        method_size = method_llm_eval_size(self.exp)
        engine = p.server_engine if p.server_engine != "auto" else "served" if method_size else "transformers"
        if engine == "transformers":
            return server.evaluate()
        size = p.llm_eval_size if p.llm_eval_size is not None else method_size or len(server.test)
        return evaluate_served_llm(server, None, size)


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


@register
class LLMCentralized(Strategy):
    """No client work: the driver pools every client's training shard (the non-private setting this bound
    stands for), fine-tunes the served LLM's adapter on prompt → completion with Ray Train + DeepSpeed, as
    CrossLM and FedMKT train theirs, publishes it and evaluates it through the deployment."""

    name = "llm_centralized"
    config_class: ClassVar[type] = LLMCentralizedConfig
    server_use: ClassVar[str] = "train"
    description = "The server LLM (LoRA) fine-tuned on all clients' data pooled: the mutual methods' LLM bound."

    @classmethod
    def server_training(cls, cfg: Any) -> tuple[str, dict[str, Any]] | None:
        from estuary.registry import build_params

        own = build_params(cls.name, dict(cfg.params_of(cls.name) or {})).llm_train
        if own is not None:
            return f"baseline_params.{cls.name}.llm_train", dict(own)
        return "method_params.llm_train", dict((cfg.method_params or {}).get("llm_train", {}))

    def num_rounds(self) -> int:
        return 1

    def client_ids(self) -> list[str]:
        return []

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        raise RuntimeError("llm_centralized runs no client tasks")

    def server_step(self, rnd: int, agg: dict, server: ServerContext) -> dict[str, float]:
        from estuary.data.federated import build_federated_data
        from estuary.strategies.server_llm import evaluate_served_llm, method_llm_eval_size, train_server_adapter

        p: LLMCentralizedConfig = self.params
        method: dict[str, Any] = dict(self.exp.method_params or {})
        data = build_federated_data(self.exp.data.model_dump_json(), self.exp.clients.count, self.exp.seed)
        records = [{"prompt": server.task.prompt(ex), "completion": server.task.completion(ex)}
                   if server.task.completion(ex) else {"text": server.task.prompt(ex)} for ex in data.union().train]
        train = dict(p.llm_train if p.llm_train is not None else method.get("llm_train", {}))
        train.pop("objective", None)  # plain supervised fine-tuning: no teacher rows here
        steps = p.steps if p.steps is not None else int(train.get("steps", 20)) * self.exp.rounds
        config = {**train, "model": self.exp.server_config().model, "seed": self.exp.seed, "steps": steps}
        config.setdefault("checkpoint_every", steps)
        version, metrics = train_server_adapter(self, rnd, server, records, config, what="fine-tuned")
        size = p.llm_eval_size if p.llm_eval_size is not None else method_llm_eval_size(self.exp) or 100
        out = {f"llm_train/{k}": v for k, v in metrics.items()}
        out.update({f"llm/{k}": v for k, v in evaluate_served_llm(server, version, size).items()})
        return out
