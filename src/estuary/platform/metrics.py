"""Dashboard metrics through `ray.util.metrics`, tagged by run (and strategy / client).

They are exported by every Ray node's metrics agent (Prometheus format) and show in the Ray
dashboard's Metrics tab once Prometheus/Grafana are pointed at the cluster (see README).
"""

from __future__ import annotations

from functools import cached_property

from ray.util import metrics as rm


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

    def _tags(self, strategy: str, **extra: str) -> dict[str, str]:
        return {"run": self.run_id, "strategy": strategy, **extra}

    def on_client(self, strategy: str, client: str, loss: float | None) -> None:
        self.clients_finished.inc(1.0, tags=self._tags(strategy))
        if loss is not None:
            self.client_loss.set(loss, tags=self._tags(strategy, client=client))

    def on_failure(self, strategy: str) -> None:
        self.clients_failed.inc(1.0, tags=self._tags(strategy))

    def on_round(self, strategy: str, rnd: int, metrics: dict[str, float], examples_per_s: float) -> None:
        self.round.set(rnd, tags=self._tags(strategy))
        self.examples_per_s.set(examples_per_s, tags=self._tags(strategy))
        for key in ("client/train/loss/mean", "client/test/accuracy/mean", "client/eval/accuracy/mean"):
            if key in metrics:
                self.round_metric.set(metrics[key], tags=self._tags(strategy, metric=key))
