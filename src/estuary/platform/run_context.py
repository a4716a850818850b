"""RunContext: what a strategy's template loop is given — the pool, the server LLM, records,
checkpoints, metrics and progress — so that a method never talks to Ray itself."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from estuary.errors import RoundFailed
from estuary.platform.checkpoint import Checkpointer
from estuary.platform.metrics import RunMetrics
from estuary.platform.plan import ClientTask
from estuary.platform.progress import RunProgress
from estuary.platform.records import Recorder
from estuary.platform.strategy import RoundOutcome

if TYPE_CHECKING:
    from estuary.actors.pool import ClientPool
    from estuary.data.task import Example, Task
    from estuary.platform.config import ExperimentConfig
    from estuary.platform.strategy import Strategy


@ray.remote(num_cpus=0)
def _evaluate_model(
    path: str, task: Task, examples: list[Example], dtype: str, batch_size: int, max_length: int, threads: int
) -> dict[str, float]:
    # num_cpus=0: it runs between client phases, while the client workers (which hold the CPUs) idle.
    import torch

    from estuary.actors import slm

    torch.set_num_threads(threads)
    model, tok = slm.load_base(path, dtype=dtype)
    return slm.evaluate(model, tok, task, examples, batch_size=batch_size, max_length=max_length)


@dataclass
class ServerContext:
    """The server LLM as the strategies see it. Here: evaluation of the pretrained model with the
    transformers reference path; the Serve/vLLM deployment adds generation and scoring."""

    exp: ExperimentConfig
    model_path: str | None
    task: Task
    test: tuple[Example, ...]
    _cache: dict[str, dict[str, float]] = field(default_factory=dict)

    def evaluate(self) -> dict[str, float]:
        if self.model_path is None:
            return {}
        if "test" not in self._cache:
            threads = max(1, int(ray.cluster_resources().get("CPU", 1)))
            ref = _evaluate_model.remote(
                self.model_path,
                self.task,
                list(self.test),
                self.exp.models.dtype,
                self.exp.evaluation.batch_size,
                self.exp.training.max_length,
                threads,
            )
            result = ray.get(ref)
            self._cache["test"] = {f"test/{k}": v for k, v in result.items() if k != "n"}
        return self._cache["test"]


class RunContext:
    def __init__(
        self,
        exp: ExperimentConfig,
        run_id: str,
        recorder: Recorder,
        pool: ClientPool,
        server: ServerContext,
        progress: RunProgress,
    ) -> None:
        self.exp = exp
        self.run_id = run_id
        self.recorder = recorder
        self.checkpointer = Checkpointer(recorder.dir, keep=exp.output.keep_checkpoints)
        self.pool = pool
        self.server = server
        self.progress = progress
        self.metrics = RunMetrics(run_id)
        self._last: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ resume
    def restore(self, strategy: Strategy) -> int:
        """Load the strategy's last complete round; return the first round still to run."""
        self.pool.states.clear()
        latest = self.checkpointer.latest(strategy.name)
        if latest is None:
            return 1
        states, driver_state, metrics = self.checkpointer.load(strategy.name, latest)
        self.pool.states.restore(states)
        strategy.load_state_dict(driver_state)
        self._last[strategy.name] = metrics
        self.progress.log(f"[dim]{strategy.name}: resumed after round {latest}[/dim]")
        return latest + 1

    def last_metrics(self, strategy: Strategy) -> dict[str, float]:
        return self._last.get(strategy.name, {})

    # ------------------------------------------------------------------ one round
    def run_tasks(self, strategy: Strategy, rnd: int, tasks: list[ClientTask]) -> RoundOutcome:
        name = strategy.name
        self.progress.start_round(name, rnd, strategy.num_rounds(), len(tasks))

        def on_result(eg: Any) -> None:
            loss = eg.losses[-1] if eg.losses else None
            self.progress.client_done(loss)
            self.metrics.on_client(name, eg.client_id, loss)

        def on_failure(cid: str, text: str) -> None:
            self.progress.client_failed()
            self.metrics.on_failure(name)

        outcome = self.pool.run(type(strategy), tasks, on_result=on_result, on_failure=on_failure)
        self.recorder.write_clients([eg.record() for eg in outcome.results.values()])
        self.recorder.write_failures(
            [{"strategy": name, "round": rnd, "client": c, "error": t} for c, t in outcome.failures.items()]
        )
        needed = math.ceil(self.exp.clients.quorum * len(tasks) - 1e-9)
        if outcome.ok < needed:
            cid, text = next(iter(outcome.failures.items()), ("?", "unknown"))
            raise RoundFailed(
                f"{name} round {rnd}: {outcome.ok}/{len(tasks)} clients succeeded, quorum "
                f"{self.exp.clients.quorum} needs {needed}; client {cid} failed with {text} "
                f"(see failures.jsonl; `estuary resume` retries from the last complete round)"
            )
        return outcome

    def end_round(
        self, strategy: Strategy, rnd: int, metrics: dict[str, float], outcome: RoundOutcome, wall_s: float
    ) -> None:
        examples = sum(eg.examples for eg in outcome.results.values())
        row = {
            "strategy": strategy.name,
            "round": rnd,
            "clients_ok": outcome.ok,
            "clients_failed": len(outcome.failures),
            "task_attempts": outcome.attempts,
            "wall_s": round(wall_s, 3),
            "examples": examples,
            "metrics": metrics,
        }
        self.recorder.write_round(row)
        self.metrics.on_round(strategy.name, rnd, metrics, examples / wall_s if wall_s > 0 else 0.0)
        self.checkpointer.save(
            strategy.name, rnd, self.pool.states.snapshot(), strategy.state_dict(), metrics
        )
        self._last[strategy.name] = metrics
