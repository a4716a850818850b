"""The served engine: vLLM's AsyncLLM, with vLLM's own OpenAI serving code for HTTP.

In-cluster calls go straight to `AsyncLLM.generate` (continuous batching across every caller); HTTP goes
through vLLM's FastAPI app (`build_app` + `init_app_state`, the code `vllm serve` runs), sharing the same
engine and the same model registry, so a published adapter version is a `model` name over HTTP too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

from estuary.serve.adapters import AdapterVersion
from estuary.serve.engine import Engine, use_cpu_threads
from estuary.serve.types import (
    Completion,
    GenerationParams,
    InvalidRequest,
    PositionTopK,
    Sample,
    ServerStartupError,
    TextTopK,
)

log = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """The most specific line of an exception chain (vLLM wraps the cause several times)."""
    while exc.__cause__ is not None and str(exc.__cause__):
        exc = exc.__cause__
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:600]


class VLLMEngine(Engine):
    name = "vllm"

    llm: Any
    _state: Any
    _args: argparse.Namespace

    async def start(self) -> None:
        cfg = self.config
        os.environ.update(cfg.replica_env())  # before vLLM reads its environment (no-op inside a replica)
        self.threads = use_cpu_threads(cfg)
        if cfg.kv_cache_bytes() is not None:  # the size goes in bytes; vLLM's legacy whole-GiB knob would override it
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs

        from estuary.serve._inproc import create_async_llm

        if cfg.enable_lora and not cfg.on_gpu:
            from estuary.serve._cpu_lora import patch_cpu_lora_ops

            patch_cpu_lora_ops()
        kwargs: dict[str, Any] = dict(
            model=self.model_path, tokenizer=self.model_path, served_model_name=[cfg.model_id], dtype=self.dtype,
            max_model_len=cfg.max_model_len, enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching, max_logprobs=cfg.max_logprobs, seed=cfg.seed,
            disable_log_stats=True, enable_lora=cfg.enable_lora, tensor_parallel_size=cfg.tensor_parallel_size(),
        )
        if cfg.enable_lora:
            kwargs.update(max_lora_rank=cfg.max_lora_rank, max_loras=cfg.max_loras, max_cpu_loras=cfg.max_cpu_loras)
        if cfg.max_num_seqs:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        if cfg.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        if not cfg.use_chunked_prefill():  # a whole prompt must then fit in one step's token budget
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(cfg.max_num_batched_tokens or 4096, cfg.max_model_len or 0)
        if cfg.kv_cache_bytes() is not None:
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_bytes()
        if cfg.on_gpu:
            kwargs["gpu_memory_utilization"] = cfg.memory_utilization()
        try:
            engine_args = AsyncEngineArgs(**kwargs)
            self.llm = create_async_llm(engine_args, in_process=cfg.engine_in_process())
            self._tasks = await self.llm.get_supported_tasks()
            await self._init_serving(engine_args)
        except Exception as exc:
            log.exception("vLLM failed to start")
            raise ServerStartupError(f"vLLM could not start {cfg.model!r}: {one_line(exc)}") from None
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.max_model_len = int(self.llm.model_config.max_model_len)

    async def _init_serving(self, engine_args: Any) -> None:
        """vLLM's OpenAI serving state (models registry, completions, chat), as `vllm serve` builds it."""
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import FrontendArgs

        self._args = argparse.Namespace(**(vars(FrontendArgs()) | vars(engine_args)))
        self._args.disable_fastapi_docs = False
        self._state = State()
        await init_app_state(self.llm, state=self._state, args=self._args, supported_tasks=self._tasks)

    async def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.shutdown()

    async def check_health(self) -> None:
        await self.llm.check_health()

    async def asgi_app(self) -> Any:
        from vllm.entrypoints.launchers.app import build_app

        app = build_app(self._args, supported_tasks=self._tasks, model_config=self.llm.model_config)
        app.state._state.update(self._state._state)  # HTTP handlers share this engine and model registry
        for plugin in getattr(app.state, "endpoint_plugins", []):
            await plugin.init_state(self.llm, app.state, self._args)
        app.state.server = SimpleNamespace()  # vLLM's error path flips should_exit on uvicorn's server
        return app

    # -- adapters ----------------------------------------------------------------------------------
    @property
    def _models(self) -> Any:
        return self._state.openai_serving_models

    async def load_adapter(self, version: AdapterVersion) -> None:
        if not self.config.enable_lora:
            raise InvalidRequest("this server was started with enable_lora: false")
        if version.id in self._models.lora_requests:
            return
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        result = await self._models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=version.id, lora_path=version.path)
        )
        if not isinstance(result, str):
            raise InvalidRequest(f"adapter {version.id} could not be loaded: {result.error.message}")

    async def register_adapter(self, version: AdapterVersion) -> None:
        """Known to vLLM's model registry at once; its weights load when a request first uses it."""
        from vllm.lora.request import LoRARequest

        if self.config.enable_lora and version.id not in self._models.lora_requests:
            self._models.lora_requests[version.id] = LoRARequest(
                lora_name=version.id, lora_int_id=self._models.lora_id_counter.inc(1), lora_path=version.path
            )

    async def set_alias(self, name: str, version: AdapterVersion) -> None:
        from vllm.lora.request import LoRARequest

        target = self._models.lora_requests[version.id]
        self._models.lora_requests[name] = LoRARequest(
            lora_name=name, lora_int_id=target.lora_int_id, lora_path=target.lora_path
        )

    def _lora(self, adapter: AdapterVersion | None) -> Any:
        if adapter is None:
            return None
        if adapter.id not in self._models.lora_requests:
            raise InvalidRequest(f"adapter {adapter.id} is not loaded on this replica")
        return self._models.lora_requests[adapter.id]

    # -- generation --------------------------------------------------------------------------------
    def _sampling(self, **kwargs: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        try:
            return SamplingParams(output_kind=RequestOutputKind.FINAL_ONLY, **kwargs)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(str(exc)) from None

    async def _final(self, ids: list[int], sp: Any, lora: Any) -> Any:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineGenerateError

        final = None
        try:
            async for out in self.llm.generate({"prompt_token_ids": ids}, sp, uuid.uuid4().hex, lora_request=lora):
                final = out
        except (VLLMClientError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from None
        except EngineGenerateError as exc:  # vLLM hides the cause; surface it
            log.error("vLLM generation failed", exc_info=exc)
            raise RuntimeError(f"vLLM generation failed: {one_line(exc)}") from exc
        if final is None:
            raise RuntimeError("vLLM returned no output")
        return final

    async def stream(self, prompts: Sequence[list[int]], params: GenerationParams,
                     adapter: AdapterVersion | None) -> AsyncIterator[Completion]:
        def sampling(seed: int | None) -> Any:
            return self._sampling(n=params.n, temperature=params.temperature, top_p=params.top_p, seed=seed,
                                  stop=list(params.stop) or None, max_tokens=params.max_tokens,
                                  ignore_eos=params.ignore_eos)

        shared = sampling(params.seed)
        lora = self._lora(adapter)
        aid = adapter.id if adapter else None
        self.check_lengths(prompts, params.max_tokens)

        async def one(index: int, ids: list[int]) -> Completion:
            # one seed per request would give a repeated prompt the same samples: prompt i gets seed + i·n
            # (vLLM gives its sample j seed + i·n + j; see GenerationParams.for_prompt)
            sp = shared if params.seed is None or index == 0 else sampling(params.for_prompt(index).seed)
            out = await self._final(ids, sp, lora)
            samples = [Sample(text=o.text, token_ids=list(o.token_ids), finish_reason=o.finish_reason or "length")
                       for o in sorted(out.outputs, key=lambda o: o.index)]
            return Completion(index=index, prompt_tokens=len(ids), samples=samples, adapter=aid)

        tasks = [asyncio.ensure_future(one(i, ids)) for i, ids in enumerate(prompts)]
        try:
            for fut in asyncio.as_completed(tasks):
                yield await fut
        finally:
            for t in tasks:
                t.cancel()  # the caller went away: vLLM aborts the cancelled requests

    async def topk(self, texts: Sequence[list[int]], k: int, adapter: AdapterVersion | None) -> list[TextTopK]:
        sp = self._sampling(max_tokens=1, temperature=0.0, prompt_logprobs=k, logprobs=k, detokenize=False)
        lora = self._lora(adapter)
        self.check_lengths(texts, 1, "text")
        outs = await asyncio.gather(*(self._final(ids, sp, lora) for ids in texts))
        return [self._to_topk(ids, out, k) for ids, out in zip(texts, outs, strict=True)]

    def _to_topk(self, ids: list[int], out: Any, k: int) -> TextTopK:
        dists = [*list(out.prompt_logprobs or [None])[1:], out.outputs[0].logprobs[0]]
        if len(dists) != len(ids):
            raise RuntimeError(f"vLLM returned {len(dists)} distributions for {len(ids)} tokens")
        token_lps: list[float | None] = [None]
        topk = []
        for i, dist in enumerate(dists):
            ranked = sorted(dist.items(), key=lambda kv: (kv[1].rank, -kv[1].logprob))[:k]
            top_ids = [int(t) for t, _ in ranked]
            topk.append(PositionTopK(ids=top_ids, tokens=self.token_strings(top_ids),
                                     logprobs=[float(lp.logprob) for _, lp in ranked]))
            if i + 1 < len(ids):
                token_lps.append(float(dist[ids[i + 1]].logprob))
        return TextTopK(text=self.tokenizer.decode(ids), token_ids=list(ids), tokens=self.token_strings(ids),
                        token_logprobs=token_lps, topk=topk)
