"""FedAvg of LoRA adapters (FedIT: Zhang et al. 2024, "Towards Building the Federated GPT"; FedAvg: McMahan
et al. 2017): the federated fine-tuning baseline a knowledge-transfer method has to beat.

Per round:

1. The driver puts the global adapter in the object store once (`estuary.runtime.share`); every sampled
   client's task carries the same reference. A client loads it (round 1: the common seeded initialisation
   every worker builds), trains `steps` local steps on its private training split and sends back its adapter
   and n_k, the size of its local training split. Its AdamW state stays its own (`ClientState.optimizer`,
   carried across the rounds it is sampled in, as `training.keep_optimizer_state` says).
2. The driver averages the adapters of the clients that succeeded in the round, weighted by n_k (McMahan's
   n_k / n: the client's local training set size, not the examples it happened to draw in the round, which
   are the same steps × batch for every client). Clients not sampled, failed, or cut as stragglers
   (`clients.round_deadline_s`) do not count; if none succeeded, the global adapter stays as it was.
   LoRA's A and B are averaged separately, each as its own tensor, as FedIT does: the adapted weight of the
   average, mean(B)·mean(A), is not the average of the clients' updates, mean(B·A). That is the reference
   behaviour this baseline reproduces, not an approximation to fix.
3. Evaluation (rounds `evaluation.every`): the new global adapter goes to the clients again (one more
   object-store copy) in an evaluation-only phase; each client that trained scores it on its own eval split
   (`client/eval/*`, mean ± std across clients, comparable with standalone's own-eval column) and one scores
   the global test split (`client/test/*`: the global model, the column standalone reports per client).

The global adapter is the strategy's driver state (`state_dict`): it is checkpointed with every round
(checkpoints/fedavg/round-N/strategy.pt), so `estuary resume` continues from the same adapter.

Not private: the clients' adapters leave them as they are (no DP, no secure aggregation). Every client must run
the same base model (one adapter is averaged across them); a job with different client models is refused.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from estuary.errors import ConfigError
from estuary.platform.strategy import Strategy
from estuary.registry import register
from estuary.strategies.fedavg_config import FedAvgConfig
from estuary.wire import ClientTask, Egress, RoundOutcome

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
    from estuary.config import ExperimentConfig
    from estuary.platform.run_context import ServerContext


def weighted_adapter_mean(
    adapters: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Σ_k w_k·θ_k / Σ_k w_k of every adapter tensor (LoRA A and B each on its own), summed in float64 in the
    given order and returned in each tensor's dtype. The adapters must have the same keys and shapes."""
    if not adapters or len(adapters) != len(weights):
        raise ValueError(f"need one weight per adapter and at least one adapter (got {len(adapters)} adapters, "
                         f"{len(weights)} weights)")
    if any(not w > 0 for w in weights):
        raise ValueError(f"adapter weights must be > 0 (got {list(weights)})")
    keys = set(adapters[0])
    for i, a in enumerate(adapters[1:], 1):
        if set(a) != keys:
            raise ValueError(f"adapter {i} has other keys than adapter 0 (e.g. {sorted(set(a) ^ keys)[:2]}): "
                             "FedAvg needs one LoRA layout (same base model and training.lora) on every client")
    total = float(sum(weights))
    out: dict[str, torch.Tensor] = {}
    for key in adapters[0]:
        acc = torch.zeros(adapters[0][key].shape, dtype=torch.float64)
        for a, w in zip(adapters, weights, strict=True):
            acc += float(w) * a[key].detach().to("cpu", torch.float64)
        out[key] = (acc / total).to(adapters[0][key].dtype)
    return out


@register
class FedAvg(Strategy):
    name = "fedavg"
    config_class: ClassVar[type] = FedAvgConfig
    description = ("FedAvg of LoRA adapters (FedIT): clients start each round from the global adapter and train "
                   "locally; the driver averages A and B weighted by each client's training-set size.")

    def __init__(self, exp: ExperimentConfig, params: Any | None = None) -> None:
        super().__init__(exp, params)
        self.global_adapter: dict[str, torch.Tensor] | None = None  # None: the common initialisation
        self.global_round = 0  # the round whose average global_adapter is

    @classmethod
    def check_job(cls, cfg: ExperimentConfig, source: str) -> None:
        super().check_job(cfg, source)
        models = sorted({cfg.models.for_client(i) for i in range(cfg.clients.count)})
        if len(models) > 1:
            raise ConfigError(
                f"{source}: fedavg averages one LoRA adapter across clients, so every client needs the same base "
                f"model, but models.per_client / clients.groups[].model give {models} — drop fedavg from "
                "method/baselines for heterogeneous clients, or set models.client only")

    def local_steps(self) -> int:
        p: FedAvgConfig = self.params
        return self.exp.training.steps if p.steps is None else p.steps

    # ------------------------------------------------------------------ driver side
    def configure_round(self, rnd: int, clients: list[str]) -> list[ClientTask]:
        from estuary.runtime import share

        # one object-store copy for every task of the round (round 1: none, the common initialisation)
        start = share(self.global_adapter) if self.global_adapter is not None else None
        return [ClientTask(cid, rnd, kind="train", evaluate=False, params={"global": start}) for cid in clients]

    def aggregate(self, rnd: int, outcome: RoundOutcome) -> dict[str, Any]:
        """The n_k-weighted mean of the adapters of the clients that succeeded (None if none did)."""
        done = [eg for eg in outcome.results.values() if "adapter" in eg.payload]
        if not done:
            return {"adapter": None, "clients": 0, "examples": 0}
        weights = [int(eg.payload["n_train"]) for eg in done]
        return {"adapter": weighted_adapter_mean([eg.payload["adapter"] for eg in done], weights),
                "clients": len(done), "examples": sum(weights)}

    def server_step(self, rnd: int, agg: dict[str, Any], server: ServerContext) -> dict[str, float]:
        if agg["adapter"] is not None:
            self.global_adapter = agg["adapter"]
            self.global_round = rnd
        return {"fedavg/clients_averaged": float(agg["clients"]), "fedavg/examples_weighted": float(agg["examples"]),
                "fedavg/global_round": float(self.global_round)}

    def configure_followup(self, rnd: int, outcome: RoundOutcome) -> list[ClientTask]:
        """Evaluation of the new global adapter: the round's clients on their eval splits, one on the test split."""
        if not self.should_evaluate(rnd) or self.global_adapter is None or not outcome.results:
            return []
        from estuary.runtime import share

        p: FedAvgConfig = self.params
        ref = share(self.global_adapter)
        clients = list(outcome.results) if p.evaluate_clients else list(outcome.results)[:1]
        return [ClientTask(cid, rnd, kind="eval", params={"global": ref, "global_test": i == 0,
                                                           "own_eval": p.evaluate_clients})
                for i, cid in enumerate(clients)]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"global_round": self.global_round}
        if self.global_adapter is not None:
            state["global_adapter"] = self.global_adapter  # tensors: checkpointed in strategy.pt
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_round = int(state.get("global_round", 0))
        adapter = state.get("global_adapter")
        self.global_adapter = dict(adapter) if adapter is not None else None

    # ------------------------------------------------------------------ client side
    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        from estuary.lm.model import adapter_state, load_adapter_state
        from estuary.runtime import resolve

        start = resolve(task.params.get("global"))
        if start is not None:
            load_adapter_state(ctx.model, start)  # the client's own adapter is replaced by the global one
        self.started(ctx, task, start)
        if task.kind == "eval":
            if task.params.get("own_eval", True):
                return ctx.egress(task, metrics=ctx.evaluate(task))
            test = ctx.evaluate_split(ctx.test) if self.exp.evaluation.global_test else {}
            return ctx.egress(task, metrics={f"test/{k}": v for k, v in test.items() if k != "n"})
        result = ctx.train_steps(task.round, steps=self.local_steps())
        metrics = {"train/loss": statistics.fmean(result.losses)} if result.losses else {}
        return ctx.egress(task, metrics=metrics, losses=result.losses, examples=result.examples_seen,
                          payload={"adapter": adapter_state(ctx.model), "n_train": len(ctx.train)})

    def started(self, ctx: ClientContext, task: ClientTask, start: Mapping[str, torch.Tensor] | None) -> None:
        """Called with the global adapter a client task starts from (None: the initialisation); a hook for
        tests and instrumentation, nothing by default."""
