"""RunContext: what a strategy's template loop is given — the pool, the server LLM, records,
checkpoints, metrics and progress — so that a method never talks to Ray itself."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import ray

from estuary.errors import RoundFailed
from estuary.platform.checkpoint import Checkpointer
from estuary.platform.fault_drills import FaultInjector
from estuary.platform.metrics import MeteredLLM, RunMetrics
from estuary.platform.progress import RunProgress
from estuary.platform.records import Recorder
from estuary.wire import ClientTask, RoundOutcome

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from estuary.client.pool import ClientPool
    from estuary.config import ExperimentConfig
    from estuary.data.task import Example, Task
    from estuary.platform.strategy import Strategy
    from estuary.serve.client import ServerLLM


@ray.remote(num_cpus=0)
def _evaluate_model(
    path: str, task: Task, examples: list[Example], dtype: str, batch_size: int, max_length: int, threads: int,
    bf16_matmul: str,
) -> dict[str, float]:
    # num_cpus=0: it runs between client phases, while the client workers (which hold the CPUs) idle.
    import torch

    from estuary.lm.model import load_base
    from estuary.lm.scoring import evaluate

    torch.set_num_threads(threads)
    model, tok = load_base(path, dtype=dtype, bf16_matmul=bf16_matmul)
    return evaluate(model, tok, task, examples, batch_size=batch_size, max_length=max_length)


def _serve_app_running(name: str) -> bool:
    """Whether Serve runs an application `name` in the connected cluster (without starting Serve)."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    try:
        from ray.serve.context import _get_global_client

        _get_global_client()
    except Exception:
        return False
    app = serve.status().applications.get(name)
    return app is not None and app.status == ApplicationStatus.RUNNING


@dataclass
class ServerContext:
    """The server LLM as the strategies see it: `llm` (the Serve/vLLM deployment's handle, started on
    first use, or an already running application of the same name reused), `record` (knowledge rows into
    the run folder) and `evaluate` (the pretrained model on the test split, transformers reference path)."""

    exp: ExperimentConfig
    model_path: str | None
    task: Task
    test: tuple[Example, ...]
    recorder: Recorder | None = None
    log: Callable[[str], None] = print
    on_generate: Callable[[int, float], None] | None = None  # (output tokens, seconds) of each generate call
    _cache: dict[str, dict[str, float]] = field(default_factory=dict)
    _llm: ServerLLM | None = None
    _started: bool = False

    @property
    def llm(self) -> ServerLLM:
        """The server LLM deployment (`generate`, `topk_logprobs`, `publish`), started on first use."""
        if self._llm is None:
            from estuary.serve.client import ServerLLM
            from estuary.serve.launcher import start_server

            cfg = self.exp.server_config()
            if _serve_app_running(cfg.app_name):
                self._llm = ServerLLM(cfg.app_name)
                self.log(f"[dim]server LLM: reusing the running Serve application {cfg.app_name!r}[/dim]")
            else:
                self.log(f"[dim]server LLM: starting {cfg.model} ({cfg.engine}) as Serve application "
                         f"{cfg.app_name!r}[/dim]")
                self._llm = start_server(cfg)
                self._started = True
            if self.on_generate is not None:  # generated tokens/s on the dashboard
                self._llm = cast("ServerLLM", MeteredLLM(self._llm, self.on_generate))
        return self._llm

    @property
    def running(self) -> bool:
        """Whether this context holds a deployment now (started or reused; `llm` starts one on first use)."""
        return self._llm is not None

    @property
    def run_dir(self) -> Path | None:
        return self.recorder.dir if self.recorder is not None else None

    @property
    def run_id(self) -> str:
        return self.recorder.dir.name if self.recorder is not None else "run"

    def record(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Append rows to knowledge/<name>.jsonl in the run folder (what clients sent, what the server made)."""
        if self.recorder is not None:
            self.recorder.write_knowledge(name, rows)

    def close(self) -> None:
        """Stop the deployment if this run started it."""
        if self._started:
            from estuary.serve.launcher import stop_server

            stop_server(self.exp.server_config().app_name)
            self._started = False
            self._llm = None

    @contextmanager
    def released(self) -> Iterator[bool]:
        """With server.release_while_training, stop the deployment this run started for the block (yields whether
        it did); the next use of `llm` deploys it again, and published adapter versions, kept in adapter_root,
        load at its start."""
        cfg = self.exp.server_config()
        if cfg.release_while_training and self.running and not self._started:
            self.log(f"[yellow]server.release_while_training: the Serve application {cfg.app_name!r} was running "
                     "before this run, so it stays up[/yellow]")
        release = cfg.release_while_training and (self._started or not self.running)
        if release and self._started:
            self.log("[dim]server LLM: stopped while the LLM trains (server.release_while_training)[/dim]")
            self.close()
        yield release

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
                self.exp.models.bf16_matmul,
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
        server.on_generate = self.metrics.on_generate
        self.faults = FaultInjector(exp.faults, recorder.dir, exp.method)
        self._last: dict[str, dict[str, float]] = {}
        self._epsilon: dict[str, dict[str, float]] = {}  # strategy → client → ε its ledger reached this round

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
            self.metrics.on_egress(name, eg)
            if self.faults.after_result(self.pool.workers, self.pool.names):  # faults.kill_worker_*: a drill
                self.progress.log(f"[yellow]fault drill: killed a worker ({self.faults.kills[-1]['worker']})[/yellow]")

        def on_failure(cid: str, text: str) -> None:
            self.progress.client_failed()
            self.metrics.on_failure(name, late=text.startswith("DeadlineExceeded"))

        outcome = self.pool.run(type(strategy), tasks, on_result=on_result, on_failure=on_failure)
        self.recorder.write_clients([eg.record() for eg in outcome.results.values()])
        self.recorder.write_failures(
            [{"strategy": name, "round": rnd, "client": c, "error": t, **({"late": True} if c in outcome.late else {})}
             for c, t in outcome.failures.items()]
        )
        self.record_privacy(name, rnd, outcome)
        needed = math.ceil(self.exp.clients.quorum * len(tasks) - 1e-9)
        if outcome.ok < needed:
            cid, text = next(iter(outcome.failures.items()), ("?", "unknown"))
            raise RoundFailed(
                f"{name} round {rnd}: {outcome.ok}/{len(tasks)} clients succeeded, quorum "
                f"{self.exp.clients.quorum} needs {needed}; client {cid} failed with {text} "
                f"(see failures.jsonl; `estuary resume` retries from the last complete round)"
            )
        return outcome

    def record_privacy(self, name: str, rnd: int, outcome: RoundOutcome) -> None:
        """privacy.jsonl rows of the round's Egress records; a run without DP says so on the console."""
        rows = [row for eg in outcome.results.values() for row in eg.privacy_rows()]
        self.recorder.write_privacy(rows)
        for eg in outcome.results.values():
            if eg.privacy and math.isfinite(eg.privacy[-1].epsilon_after):
                self._epsilon.setdefault(name, {})[eg.client_id] = float(eg.privacy[-1].epsilon_after)
        off = sorted({r["client"] for r in rows if r.get("op") == "non-private"})
        if off:
            self.progress.log(
                f"[bold red]PRIVACY DISABLED (ε = ∞): {name} round {rnd} trained {len(off)} client(s) without DP "
                "(privacy.target_epsilon is null); see privacy.jsonl[/bold red]"
            )
        refused = sorted({r["client"] for r in rows if r.get("op") == "refused"})
        if refused:
            self.progress.log(f"[yellow]{name} round {rnd}: {len(refused)} client(s) refused DP work "
                              f"(privacy budget), e.g. {refused[0]}; see privacy.jsonl[/yellow]")

    def privacy_summary(self) -> dict[str, Any]:
        """client → ε, δ, steps ... from the ledgers in the pool's current client states ({} if no DP ran)."""
        from estuary.privacy.ledger import summarize_states

        out: dict[str, Any] = {}
        for chunk in self.pool.states.snapshot_chunks():
            out.update(summarize_states(chunk))
        return dict(sorted(out.items()))

    def end_round(
        self, strategy: Strategy, rnd: int, metrics: dict[str, float], outcome: RoundOutcome, wall_s: float,
        phases_s: dict[str, float] | None = None,
    ) -> None:
        examples = sum(eg.examples for eg in outcome.results.values())
        row = {
            "strategy": strategy.name,
            "round": rnd,
            "clients_ok": outcome.ok,
            "clients_failed": len(outcome.failures),
            "clients_late": len(outcome.late),
            "task_attempts": outcome.attempts,
            "wall_s": round(wall_s, 3),
            "phases_s": phases_s or {},
            "examples": examples,
            "metrics": metrics,
        }
        epsilon = self._epsilon.pop(strategy.name, {})
        if epsilon:  # the ledgers of the clients that did DP work in the round
            row["epsilon"] = dict(sorted(epsilon.items()))
        self.recorder.write_round(row)
        self.metrics.on_round(strategy.name, rnd, metrics, examples / wall_s if wall_s > 0 else 0.0)
        self.faults.maybe_kill_driver(strategy.name, rnd)  # faults.kill_driver_in_round: before the checkpoint
        self.checkpointer.save(strategy.name, rnd, self.pool.write_shards, strategy.state_dict(), metrics)
        self._last[strategy.name] = metrics
