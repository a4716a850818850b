"""Two DP strategies built on the client-side privacy layer (importing this module registers them).

- `dp_standalone`: each client fine-tunes its SLM with DP-SGD on its own shard; σ is calibrated once for
  all rounds (each round plans the remaining rounds' steps), so the ledger reaches privacy.target_epsilon
  at the last round. A client whose budget is spent refuses and says so on its Egress.
- `dp_synthetic`: each client DP-trains a label-conditioned generator and sends labelled synthetic
  examples (the generator FDKT and DistilDP use); the driver collects them (knowledge/synthetic.jsonl).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from estuary.client.dp_generator import GeneratorConfig
from estuary.platform.strategy import Strategy
from estuary.registry import register
from estuary.wire import ClientTask, Egress, RoundOutcome

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
    from estuary.platform.run_context import ServerContext


def privacy_metrics(epsilon: float, refused: bool) -> dict[str, float]:
    out = {"privacy/refused": float(refused)}
    if math.isinf(epsilon):
        out["privacy/non_private"] = 1.0
    else:
        out["privacy/epsilon"] = epsilon
    return out


@dataclass
class DPStandaloneConfig:
    steps: int | None = field(default=None, metadata={"help": "DP-SGD steps per round (None: training.steps)."})


@register
class DPStandalone(Strategy):
    uses_privacy: ClassVar[bool] = True  # checked before the run starts (estuary.platform.preflight)
    name = "dp_standalone"
    config_class: ClassVar[type] = DPStandaloneConfig
    description = "Each client fine-tunes its SLM with DP-SGD (Opacus) on its own shard; ε from privacy.*."

    def local_steps(self) -> int:
        steps = self.params.steps
        return self.exp.training.steps if steps is None else int(steps)

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        steps = self.local_steps()
        plan = steps * (self.num_rounds() - task.round + 1)  # this round and the ones after it
        result = ctx.dp_train_steps(task.round, steps=steps, plan_steps=plan)
        metrics = privacy_metrics(result.epsilon, result.refused)
        losses = [x for x in result.losses if not math.isnan(x)]
        if losses:
            metrics["train/loss"] = statistics.fmean(losses)
        if task.evaluate:
            metrics.update(ctx.evaluate(task))
        return ctx.egress(task, metrics=metrics, losses=losses, examples=result.examples_seen)

    def aggregate(self, rnd: int, outcome: RoundOutcome) -> dict[str, Any]:
        return {"refused": refused_clients(outcome)}


def refused_clients(outcome: RoundOutcome) -> list[str]:
    """Clients that refused DP work this round (their budget would have been exceeded), from their Egress."""
    return sorted(cid for cid, eg in outcome.results.items() if eg.refusals)


@dataclass
class DPSyntheticConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    retrain_each_round: bool = field(default=False, metadata={"help": "Train a new DP generator every round."})


@register
class DPSynthetic(Strategy):
    uses_privacy: ClassVar[bool] = True  # checked before the run starts (estuary.platform.preflight)
    name = "dp_synthetic"
    config_class: ClassVar[type] = DPSyntheticConfig
    description = "Clients DP-train a label-conditioned generator and send labelled synthetic examples."

    def __init__(self, exp: Any, params: Any | None = None) -> None:
        super().__init__(exp, params)
        self.synthetic: list[dict[str, Any]] = []

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        p: DPSyntheticConfig = self.params
        res = ctx.dp_synthesize(task.round, p.generator, retrain=p.retrain_each_round)
        metrics = privacy_metrics(res.epsilon, res.refused)
        metrics.update({f"synthetic/{k}": float(v) for k, v in res.stats.items()})
        losses = [x for x in res.training.losses if not math.isnan(x)] if res.training else []
        if losses:
            metrics["generator/loss"] = statistics.fmean(losses)
        return ctx.egress(task, metrics=metrics, losses=losses, synthetic=res.examples,
                          examples=res.training.examples_seen if res.training else 0)

    def aggregate(self, rnd: int, outcome: RoundOutcome) -> dict[str, Any]:
        rows = [{"text": ex.text, "label": ex.label, "client": cid, "round": rnd}
                for cid, eg in outcome.results.items() for ex in eg.synthetic]
        self.synthetic.extend(rows)
        return {"synthetic": rows, "refused": refused_clients(outcome)}

    def server_step(self, rnd: int, agg: dict[str, Any], server: ServerContext) -> dict[str, float]:
        server.record("synthetic", [{**r, "strategy": self.name} for r in agg["synthetic"]])  # knowledge/*.jsonl
        return {}

    def evaluate(self, rnd: int, outcome: RoundOutcome, server_metrics: dict[str, float]) -> dict[str, float]:
        metrics = super().evaluate(rnd, outcome, server_metrics)
        metrics["synthetic/total"] = float(len(self.synthetic))
        for label, count in Counter(r["label"] for r in self.synthetic).items():
            metrics[f"synthetic/label_{label}"] = float(count)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"synthetic": self.synthetic}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.synthetic = list(state.get("synthetic", []))
