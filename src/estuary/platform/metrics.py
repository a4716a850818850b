"""Dashboard metrics through `ray.util.metrics`, tagged by run (and strategy / client).

They are exported by every Ray node's metrics agent (Prometheus format) and show in the Ray
dashboard's Metrics tab once Prometheus/Grafana are pointed at the cluster (see README).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

from ray.util import metrics as rm

_AGGREGATES = ("/std", "/min", "/max", "/n")


def loss_phases(metrics: dict[str, float]) -> dict[str, float]:
    """phase → loss of a round's metrics: 'client/train/loss/mean' → client/train, 'server/llm_train/loss_last'
    → server/llm_train (the mean across clients, or the last value of a server phase)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.endswith(_AGGREGATES) or not math.isfinite(value):
            continue
        path = key.removesuffix("/mean")
        phase, _, leaf = path.rpartition("/")
        if phase and leaf in ("loss", "loss_last"):
            out[phase] = value
    return out


class MeteredLLM:
    """A server LLM handle that reports (output tokens, seconds) of every generate call; all else passes through."""

    def __init__(self, llm: Any, report: Callable[[int, float], None]) -> None:
        self._llm = llm
        self._report = report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def _count(self, completions: list[Any], t0: float) -> list[Any]:
        tokens = sum(int(getattr(c, "output_tokens", 0)) for c in completions)
        self._report(tokens, time.perf_counter() - t0)
        return completions

    def generate(self, *args: Any, **kwargs: Any) -> list[Any]:
        t0 = time.perf_counter()
        return self._count(self._llm.generate(*args, **kwargs), t0)

    async def agenerate(self, *args: Any, **kwargs: Any) -> list[Any]:
        t0 = time.perf_counter()
        return self._count(await self._llm.agenerate(*args, **kwargs), t0)


class RunMetrics:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    @cached_property
    def round(self) -> rm.Gauge:
        return rm.Gauge("estuary_round", "Current federated round", tag_keys=("run", "strategy"))

    @cached_property
    def clients_finished(self) -> rm.Counter:
        return rm.Counter("estuary_clients_finished", "Client tasks finished", tag_keys=("run", "strategy"))

    @cached_property
    def clients_failed(self) -> rm.Counter:
        return rm.Counter("estuary_clients_failed", "Client tasks failed", tag_keys=("run", "strategy"))

    @cached_property
    def client_loss(self) -> rm.Gauge:
        return rm.Gauge(
            "estuary_client_loss", "Last training loss of a client", tag_keys=("run", "strategy", "client")
        )

    @cached_property
    def examples_per_s(self) -> rm.Gauge:
        return rm.Gauge(
            "estuary_examples_per_second", "Training examples per second in a round", tag_keys=("run", "strategy")
        )

    @cached_property
    def round_metric(self) -> rm.Gauge:
        return rm.Gauge(
            "estuary_round_metric", "Round-level metric (mean over clients)", tag_keys=("run", "strategy", "metric")
        )

    @cached_property
    def client_epsilon(self) -> rm.Gauge:
        return rm.Gauge(
            "estuary_client_epsilon", "Privacy epsilon a client has spent (its ledger, after its last task)",
            tag_keys=("run", "client"),
        )

    @cached_property
    def generated_tokens_per_s(self) -> rm.Gauge:
        return rm.Gauge(
            "estuary_server_generated_tokens_per_second", "Server LLM output tokens per second (last generate call)",
            tag_keys=("run",),
        )

    @cached_property
    def generated_tokens(self) -> rm.Counter:
        return rm.Counter("estuary_server_generated_tokens", "Server LLM output tokens generated", tag_keys=("run",))

    @cached_property
    def loss(self) -> rm.Gauge:
        return rm.Gauge(
            "estuary_loss", "Loss of a phase in the last round (clients: mean)", tag_keys=("run", "strategy", "phase")
        )

    @cached_property
    def clients_late(self) -> rm.Counter:
        return rm.Counter(
            "estuary_clients_late", "Client tasks cut by clients.round_deadline_s", tag_keys=("run", "strategy")
        )

    def _tags(self, strategy: str, **extra: str) -> dict[str, str]:
        return {"run": self.run_id, "strategy": strategy, **extra}

    def on_client(self, strategy: str, client: str, loss: float | None) -> None:
        self.clients_finished.inc(1.0, tags=self._tags(strategy))
        if loss is not None:
            self.client_loss.set(loss, tags=self._tags(strategy, client=client))

    def on_egress(self, strategy: str, eg: Any) -> None:
        """A client's result arrived: counts, its last loss and the ε its ledger reached."""
        self.on_client(strategy, eg.client_id, eg.losses[-1] if eg.losses else None)
        if eg.privacy:
            eps = float(eg.privacy[-1].epsilon_after)
            if math.isfinite(eps):
                self.client_epsilon.set(eps, tags={"run": self.run_id, "client": eg.client_id})

    def on_generate(self, tokens: int, seconds: float) -> None:
        if tokens > 0:
            self.generated_tokens.inc(float(tokens), tags={"run": self.run_id})
        if seconds > 0:
            self.generated_tokens_per_s.set(tokens / seconds, tags={"run": self.run_id})

    def on_failure(self, strategy: str, late: bool = False) -> None:
        self.clients_failed.inc(1.0, tags=self._tags(strategy))
        if late:
            self.clients_late.inc(1.0, tags=self._tags(strategy))

    def on_round(self, strategy: str, rnd: int, metrics: dict[str, float], examples_per_s: float) -> None:
        self.round.set(rnd, tags=self._tags(strategy))
        self.examples_per_s.set(examples_per_s, tags=self._tags(strategy))
        for key in ("client/train/loss/mean", "client/test/accuracy/mean", "client/eval/accuracy/mean"):
            if key in metrics:
                self.round_metric.set(metrics[key], tags=self._tags(strategy, metric=key))
        for phase, value in loss_phases(metrics).items():
            self.loss.set(value, tags=self._tags(strategy, phase=phase))
