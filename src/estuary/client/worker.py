"""ClientWorker: a Ray actor that loads a base SLM once and serves client tasks on it.

Per task it swaps in the client's LoRA adapter (and optimizer state) from the ClientState that
travels with the task, runs the strategy's `client_step` on the client's private shard, and returns
(Egress, new ClientState). The task is a pure function of (task, state): a retry after a crash
starts from the same state, so no update is lost or applied twice.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from estuary.client.memory import release_after
from estuary.wire import ClientState, ClientTask, Egress, TaskError, error_line

if TYPE_CHECKING:  # workers get the strategy class with each task; they never import the platform
    from estuary.data.federated import ClientData
    from estuary.data.task import Example, Task
    from estuary.platform.strategy import Strategy


class ClientWorker:
    def __init__(
        self,
        exp_json: str,
        model_paths: dict[str, str],
        name: str,
        torch_threads: int,
        gpu_fraction: float = 0.0,
    ) -> None:
        from estuary.config import ExperimentConfig

        self.torch_threads = max(1, torch_threads)
        self._torch_set = False
        self.device = "cpu"
        if gpu_fraction > 0:  # a GPU worker loads a model anyway; a CPU one imports torch when a task needs it
            import torch

            self._set_torch()
            if torch.cuda.is_available():
                self.device = "cuda"
                # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU; cap memory to this worker's share.
                torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_fraction))
        self.exp = ExperimentConfig.model_validate_json(exp_json)
        self.model_paths = model_paths
        self.name = name
        self._models: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
        self._strategies: dict[str, Strategy] = {}
        self.tasks_done = 0

    def ready(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"worker": self.name, "pid": os.getpid(), "node": ctx.get_node_id(), "device": self.device}

    # ------------------------------------------------------------------ internals
    def _set_torch(self) -> None:
        """torch's thread count, once torch is loaded (a `noop` worker never imports it)."""
        if not self._torch_set and "torch" in sys.modules:
            import torch

            torch.set_num_threads(self.torch_threads)
            self._torch_set = True

    def _model(self, spec: str) -> tuple[Any, Any, dict[str, Any]]:
        if spec not in self._models:
            from estuary.lm.model import adapter_state, attach_lora, load_base

            self._set_torch()  # estuary.lm.model has loaded torch

            tr = self.exp.training
            base, tok = load_base(self.model_paths[spec], dtype=self.exp.models.dtype, device=self.device,
                                 bf16_matmul=self.exp.models.bf16_matmul)
            model = attach_lora(base, tr.lora, seed=self.exp.seed)
            # Every client starts from the same adapter initialisation (seeded by the run seed).
            self._models[spec] = (model, tok, adapter_state(model))
        return self._models[spec]

    def _strategy(self, cls: type[Strategy]) -> Strategy:
        if cls.name not in self._strategies:
            from estuary.registry import params_for

            self._strategies[cls.name] = cls(self.exp, params_for(cls, self.exp.params_of(cls.name)))
        return self._strategies[cls.name]

    # ------------------------------------------------------------------ the task
    @ray.method(num_returns=2)
    def run_task(
        self, strategy: type[Strategy], task: ClientTask, state: ClientState | None
    ) -> tuple[Egress, ClientState]:
        """One client's task: (its Egress, its new state)."""
        return self._run(strategy, task, state)

    def _run(
        self, strategy: type[Strategy], task: ClientTask, state: ClientState | None
    ) -> tuple[Egress, ClientState]:
        from estuary.client.context import ClientContext
        from estuary.data.federated import build_federated_data

        self._set_torch()  # a state holding tensors has loaded torch: configure it before the step
        t0 = time.perf_counter()
        if state is None:
            spec = self.exp.models.for_client(_client_index(task.client_id))
            state = ClientState(client_id=task.client_id, model=spec)
        client_state = state

        def bind() -> tuple[Any, Any]:
            from estuary.lm.model import load_adapter_state

            model, tok, init = self._model(client_state.model)
            load_adapter_state(model, client_state.adapter if client_state.adapter is not None else init)
            return model, tok

        def shard() -> tuple[Task, ClientData, tuple[Example, ...]]:  # built (once per worker) when the step reads it
            data = build_federated_data(self.exp.data.model_dump_json(), self.exp.clients.count, self.exp.seed)
            return data.task, data.client(task.client_id), data.test

        ctx = ClientContext(
            exp=self.exp,
            state=state,
            bind=bind,
            shard=shard,
            worker=self.name,
            strategy=strategy.name,
            load=lambda spec: self._model(spec)[:2],
        )
        egress = self._strategy(strategy).client_step(ctx, task)
        missing = [e for e in ctx.privacy_rows if e not in egress.privacy]
        egress.privacy.extend(missing)  # every ledger entry of the task reaches privacy.jsonl, however built
        if ctx.trained:
            from estuary.lm.model import adapter_state

            state.adapter = adapter_state(ctx.model)
        self._set_torch()  # the step imported torch itself (e.g. noop's payload): configured for the next one
        group = self.exp.clients.group_of(_client_index(task.client_id))
        if group is not None and group.slowdown_s:
            time.sleep(group.slowdown_s)  # a simulated slow device (clients.groups[].slowdown_s)
        del ctx
        release_after(time.perf_counter() - t0)  # the step's peak (e.g. DP training) is not kept for the next client
        egress.wall_s = time.perf_counter() - t0
        self.tasks_done += 1
        return egress, state


    def run_batch(
        self, strategy: type[Strategy], tasks: list[ClientTask], *states: ClientState | None
    ) -> tuple[Any, ...]:
        """Several clients' tasks in one call (the pool batches tasks far cheaper than a Ray call), called with
        `num_returns=1 + len(tasks)`: (outcomes, *new states), each outcome the task's Egress or its TaskError.
        A task that raised returns the state it was given, which the pool never applies."""
        outcomes: list[Egress | TaskError] = []
        out_states: list[ClientState | None] = []
        for task, state in zip(tasks, states, strict=True):
            try:
                egress, new_state = self._run(strategy, task, state)
            except Exception as exc:  # one client's error is its own, as in a call of its own
                outcomes.append(TaskError(error_line(exc)))
                out_states.append(state)
                continue
            outcomes.append(egress)
            out_states.append(new_state)
        return (outcomes, *out_states)


    def write_shard(self, path: str, ids: list[str], *states: ClientState) -> str:
        """Write these clients' states as one checkpoint shard at `path` (a folder of the driver's node: the pool
        asks only its workers there); returns this worker's node id, which the pool checks."""
        from estuary.client.shards import shard_fields, write_shard

        write_shard(shard_fields(dict(zip(ids, states, strict=True))), Path(path))
        return str(ray.get_runtime_context().get_node_id())


def _client_index(client_id: str) -> int:
    digits = client_id.lstrip("c")
    return int(digits) if digits.isdigit() else -1
