"""vLLM's AsyncLLM with its EngineCore in this process (CPU hosts).

vLLM 0.32 refuses an asyncio engine without a separate EngineCore process ("Running EngineCore in
asyncio without multiprocessing is not currently supported"). On a small CPU host that second process
costs throughput: the frontend's output processing and the core's OpenMP threads fight over the same
cores (the notes in cpu-stack.md measured 545 vs 378 tokens/s at batch 64 on 2 cores, SmolLM2-135M).

`AsyncInprocClient` is vLLM's own `InprocClient` (the one its synchronous `LLMEngine` uses) behind the
async interface `AsyncLLM` expects. Every engine-core call — construction, add/abort, LoRA loading and
`step` — runs on one dedicated thread, so the core is never entered concurrently, and the asyncio loop
stays free while a step computes (torch releases the GIL). Steps alternate with the frontend's output
processing instead of overlapping it, as in the synchronous engine. Everything above the core —
tokenisation, detokenisation, the OpenAI serving classes — is unchanged vLLM code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.core_client import EngineCoreClient, InprocClient
from vllm.v1.executor.abstract import Executor


class AsyncInprocClient(InprocClient):
    """An in-process EngineCore driven from asyncio through one worker thread."""

    def __init__(self, vllm_config: Any, executor_class: Any, log_stats: bool, **_: Any) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-core")
        self.resources = SimpleNamespace(engine_dead=False)
        self.engine_ranks_managed = [0]
        self._wake: asyncio.Event | None = None
        # Build the core on its own thread: the CPU worker sets up threads/OpenMP for the caller.
        self._pool.submit(InprocClient.__init__, self, vllm_config, executor_class, log_stats).result()

    # -- plumbing ----------------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def _notify(self) -> None:
        self._event().set()

    def _step_if_work(self) -> Any:
        if not self.engine_core.scheduler.has_requests():
            return None
        return self.get_output()

    # -- the interface AsyncLLM uses ---------------------------------------------------------------
    async def get_output_async(self) -> Any:
        wake = self._event()
        while True:
            wake.clear()
            try:
                out = await self._call(self._step_if_work)
            except BaseException:
                self.resources.engine_dead = True
                raise
            if out is not None:
                return out
            await wake.wait()

    async def add_request_async(self, request: Any) -> None:
        await self._call(self.add_request, request)
        self._notify()

    async def abort_requests_async(self, request_ids: list[str]) -> None:
        await self._call(self.abort_requests, request_ids)
        self._notify()

    async def get_supported_tasks_async(self) -> Any:
        return await self._call(self.get_supported_tasks)

    async def add_lora_async(self, lora_request: Any) -> bool:
        return bool(await self._call(self.add_lora, lora_request))

    async def remove_lora_async(self, lora_id: int) -> bool:
        return bool(await self._call(self.remove_lora, lora_id))

    async def list_loras_async(self) -> set[int]:
        return set(await self._call(self.list_loras))

    async def pin_lora_async(self, lora_id: int) -> bool:
        return bool(await self._call(self.pin_lora, lora_id))

    async def reset_prefix_cache_async(self, reset_running_requests: bool = False,
                                       reset_connector: bool = False) -> bool:
        return bool(await self._call(self.reset_prefix_cache, reset_running_requests, reset_connector))

    async def reset_mm_cache_async(self) -> None:
        await self._call(self.reset_mm_cache)

    async def reset_encoder_cache_async(self) -> None:
        await self._call(self.reset_encoder_cache)

    async def collective_rpc_async(self, method: Any, timeout: float | None = None, args: tuple = (),
                                   kwargs: dict[str, Any] | None = None) -> list[Any]:
        return list(await self._call(self.collective_rpc, method, timeout, args, kwargs))

    async def is_sleeping_async(self) -> bool:
        return bool(await self._call(self.is_sleeping))

    def shutdown(self, timeout: float | None = None) -> None:
        with contextlib.suppress(Exception):
            self._pool.submit(InprocClient.shutdown, self).result(timeout=timeout or 30)
        self._pool.shutdown(wait=False)


@contextlib.contextmanager
def _inproc_factory() -> Iterator[None]:
    original = EngineCoreClient.__dict__["make_async_mp_client"]

    def make(vllm_config: Any, executor_class: Any, log_stats: bool, **kwargs: Any) -> AsyncInprocClient:
        return AsyncInprocClient(vllm_config, executor_class, log_stats)

    EngineCoreClient.make_async_mp_client = staticmethod(make)  # type: ignore[method-assign]
    try:
        yield
    finally:
        EngineCoreClient.make_async_mp_client = original  # type: ignore[method-assign]


def create_async_llm(engine_args: AsyncEngineArgs, *, in_process: bool) -> AsyncLLM:
    """An AsyncLLM: in this process (CPU hosts) or with vLLM's usual EngineCore process (GPU hosts)."""
    if not in_process:
        return AsyncLLM.from_engine_args(engine_args, usage_context=UsageContext.OPENAI_API_SERVER)
    # vLLM's CPU platform switches to the multiprocess executor unless this is "0" at config time.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    vllm_config = engine_args.create_engine_config(UsageContext.OPENAI_API_SERVER)
    executor_class = Executor.get_class(vllm_config)
    with _inproc_factory():
        return AsyncLLM(
            vllm_config=vllm_config,
            executor_class=executor_class,
            log_stats=not engine_args.disable_log_stats,
            log_requests=False,
            usage_context=UsageContext.OPENAI_API_SERVER,
        )
