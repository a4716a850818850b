"""`ServerLLM`: what strategies and client actors hold to use the server LLM inside the cluster.

Calls go through a Ray Serve DeploymentHandle (no HTTP); many callers at once are batched by vLLM's
continuous batching. The object is small and picklable — pass it to actors. Large generation jobs stream
back in batches and can show progress. Every method has an `a`-prefixed async twin for async actors.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from estuary.serve.adapters import AdapterVersion, read_adapter_files
from estuary.serve.types import Completion, GenerationParams, Prompt, ServeError, ServerUnavailable, TopKLogprobs

ProgressFn = Callable[[int, int, int], None]  # (prompts done, prompts total, output tokens so far)
STREAM_AT = 64  # requests with at least this many prompts stream back in batches


def _unwrap(exc: BaseException) -> BaseException:
    """The replica's own error (InvalidRequest, UnknownAdapter, ...) rather than Ray's wrapper; a deployment
    whose replica died becomes one `ServerUnavailable` line instead of Ray's traceback."""
    from ray.serve.exceptions import DeploymentUnavailableError

    if isinstance(exc, DeploymentUnavailableError):
        return ServerUnavailable(
            f"the server LLM's deployment is unavailable ({exc}): its replica died, on a small machine usually "
            "killed for memory (see the raylet log); completed rounds are kept — free memory (e.g. a smaller "
            "method_params.llm_train.max_length or micro_batch_size) and continue with `estuary resume RUN_DIR`")
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, ServeError) else exc


class _Progress:
    """A rich progress bar (True), a callback, or nothing."""

    def __init__(self, progress: bool | ProgressFn | None, total: int) -> None:
        self.total, self.done, self.tokens = total, 0, 0
        self.fn: ProgressFn | None = progress if callable(progress) else None
        show = progress is True or (progress is None and total >= 256 and sys.stderr.isatty())
        self.bar: Any = None
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("server LLM"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("generate", total=total, tps="-")
            self.bar.start()
        self._t0 = time.monotonic()

    def advance(self, batch: Sequence[Completion]) -> None:
        self.done += len(batch)
        self.tokens += sum(c.output_tokens for c in batch)
        if self.fn is not None:
            self.fn(self.done, self.total, self.tokens)
        if self.bar is not None:
            tps = self.tokens / max(time.monotonic() - self._t0, 1e-6)
            self.bar.update(self.task, completed=self.done, tps=f"{tps:,.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class ServerLLM:
    """Client of the `LLMServer` Serve application named `app_name`."""

    def __init__(self, app_name: str = "estuary-llm", *, base_url: str | None = None,
                 chunk_size: int = 1024) -> None:
        self.app_name = app_name
        self.base_url = base_url  # the OpenAI-compatible HTTP API, for outside clients (openai.OpenAI(base_url=))
        self.chunk_size = chunk_size  # prompts per streamed request (spreads big jobs over replicas)
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None}

    def __repr__(self) -> str:
        return f"ServerLLM(app_name={self.app_name!r}, base_url={self.base_url!r})"

    @property
    def handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_app_handle(self.app_name)
        return self._handle

    def _result(self, response: Any) -> Any:
        try:
            return response.result()
        except Exception as exc:
            raise _unwrap(exc) from None

    async def _aresult(self, response: Any) -> Any:
        try:
            return await response
        except Exception as exc:
            raise _unwrap(exc) from None

    # -- generation --------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: GenerationParams | None = None, adapter: str | None = None,
                 *, progress: bool | ProgressFn | None = None) -> list[Completion]:
        """One `Completion` per prompt (in order). `adapter`: None (base), 'name' (latest) or 'name@vN'.

        From STREAM_AT prompts on, results stream back in batches; `progress=True` shows a bar, a callable
        gets (done, total, output_tokens); None shows a bar for 256+ prompts on a terminal.
        """
        prompts = list(prompts)
        if len(prompts) < STREAM_AT and not progress:
            return list(self._result(self.handle.generate.remote(prompts, params, adapter)))
        results: list[Completion | None] = [None] * len(prompts)
        bar = _Progress(progress, len(prompts))
        streamer = self.handle.options(stream=True)
        try:
            gens = [(start, streamer.generate_stream.remote(prompts[start:start + self.chunk_size],
                                                            _from(params, start), adapter))
                    for start in range(0, len(prompts), self.chunk_size)]  # all submitted before consuming
            for start, gen in gens:
                try:
                    for batch in gen:
                        self._place(results, start, batch)
                        bar.advance(batch)
                except Exception as exc:
                    raise _unwrap(exc) from None
        finally:
            bar.close()
        return [c for c in results if c is not None]

    async def agenerate(self, prompts: Sequence[Prompt], params: GenerationParams | None = None,
                        adapter: str | None = None, *, progress: bool | ProgressFn | None = None) -> list[Completion]:
        prompts = list(prompts)
        if len(prompts) < STREAM_AT and not progress:
            return list(await self._aresult(self.handle.generate.remote(prompts, params, adapter)))
        results: list[Completion | None] = [None] * len(prompts)
        bar = _Progress(progress, len(prompts))
        streamer = self.handle.options(stream=True)

        async def consume(start: int) -> None:
            gen = streamer.generate_stream.remote(prompts[start:start + self.chunk_size], _from(params, start),
                                                  adapter)
            try:
                async for batch in gen:
                    self._place(results, start, batch)
                    bar.advance(batch)
            except Exception as exc:
                raise _unwrap(exc) from None

        try:
            await asyncio.gather(*(consume(s) for s in range(0, len(prompts), self.chunk_size)))
        finally:
            bar.close()
        return [c for c in results if c is not None]

    @staticmethod
    def _place(results: list[Completion | None], start: int, batch: Sequence[Completion]) -> None:
        for c in batch:
            results[start + c.index] = replace(c, index=start + c.index) if start else c

    # -- distillation ------------------------------------------------------------------------------
    def topk_logprobs(self, texts: Sequence[str], k: int = 5, adapter: str | None = None) -> TopKLogprobs:
        """Top-k next-token log-probabilities at every position of each text (validated payload)."""
        return self._result(self.handle.topk_logprobs.remote(list(texts), k, adapter))

    async def atopk_logprobs(self, texts: Sequence[str], k: int = 5, adapter: str | None = None) -> TopKLogprobs:
        return await self._aresult(self.handle.topk_logprobs.remote(list(texts), k, adapter))

    # -- adapter versions --------------------------------------------------------------------------
    def publish(self, adapter_dir: str | Path, name: str = "server") -> AdapterVersion:
        """Publish a peft adapter folder as the next version of `name`; live at once (as 'name' and its id)."""
        files = read_adapter_files(adapter_dir)
        return self._result(self.handle.publish.remote(name, files, str(adapter_dir)))

    async def apublish(self, adapter_dir: str | Path, name: str = "server") -> AdapterVersion:
        files = await asyncio.to_thread(read_adapter_files, adapter_dir)
        return await self._aresult(self.handle.publish.remote(name, files, str(adapter_dir)))

    def versions(self) -> dict[str, list[AdapterVersion]]:
        """Published versions by adapter name, oldest first."""
        return self._result(self.handle.versions.remote())

    def info(self) -> dict[str, Any]:
        return self._result(self.handle.info.remote())


def _from(params: GenerationParams | dict[str, Any] | None, start: int) -> GenerationParams | dict[str, Any] | None:
    """A chunk's parameters: its first prompt is the call's prompt `start` (seed + start·n, see GenerationParams)."""
    if isinstance(params, GenerationParams):
        return params.for_prompt(start)
    if isinstance(params, dict) and params.get("seed") is not None and start:
        return {**params, "seed": params["seed"] + start * int(params.get("n") or 1)}
    return params
