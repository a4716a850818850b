"""The engine interface the deployment serves, and what both engines share (tokenisation, checks).

An engine owns one model and answers three things: `stream` (sampled completions, yielded as they
finish), `topk` (top-k next-token log-probabilities at every position of given texts) and adapter loading.
`VLLMEngine` is the served engine; `ReferenceEngine` (plain transformers) is the correctness reference and
benchmark baseline. The deployment takes the engine class, so tests can inject another one.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from estuary.serve.adapters import AdapterVersion
from estuary.serve.config import ServerConfig
from estuary.serve.types import Completion, GenerationParams, InvalidRequest, Prompt, TextTopK

ENGINES = {
    "vllm": "estuary.serve.vllm_engine:VLLMEngine",
    "reference": "estuary.serve.reference:ReferenceEngine",
}


def plain_text(messages: Sequence[dict[str, str]]) -> str:
    """Chat messages as one completion prompt, for a model without a chat template: the contents in order, a blank
    line apart, then a blank line (as `estuary.knowledge.fdkt_prompts.plain_prompt` without an answer prefix)."""
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


class Engine(ABC):
    """One model behind the server. Subclasses implement start, stream, topk and load_adapter."""

    name: ClassVar[str] = "engine"

    def __init__(self, config: ServerConfig, model_path: str) -> None:
        self.config = config
        self.model_path = model_path
        self.tokenizer: Any = None  # a transformers tokenizer, set by start()
        self.max_model_len: int = config.max_model_len or 0
        self.threads: int | None = None  # CPU threads of the engine, set by start() on CPU hosts

    # -- lifecycle ---------------------------------------------------------------------------------
    @abstractmethod
    async def start(self) -> None:
        """Load the model (and tokenizer); raise with a one-line message on failure."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""

    async def check_health(self) -> None:  # noqa: B027 - optional hook
        """Raise if the engine can no longer serve."""

    @property
    def dtype(self) -> str:
        return self.config.resolved_dtype()

    # -- work ----------------------------------------------------------------------------------------
    @abstractmethod
    def stream(self, prompts: Sequence[list[int]], params: GenerationParams,
               adapter: AdapterVersion | None) -> AsyncIterator[Completion]:
        """Completions of token-id prompts, yielded as each finishes (any order; `Completion.index`)."""

    @abstractmethod
    async def topk(self, texts: Sequence[list[int]], k: int, adapter: AdapterVersion | None) -> list[TextTopK]:
        """Top-k next-token log-probabilities at every position (see `TextTopK`), texts given as token ids."""

    @abstractmethod
    async def load_adapter(self, version: AdapterVersion) -> None:
        """Make a published version usable (raise InvalidRequest if it cannot be loaded)."""

    async def set_alias(self, name: str, version: AdapterVersion) -> None:  # noqa: B027 - optional hook
        """Point the bare adapter `name` at `version` (engines with their own model registry)."""

    async def asgi_app(self) -> Any:
        """The engine's OpenAI-compatible ASGI app (FastAPI), or None if it has none."""
        return None

    # -- shared helpers ------------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a text (tokenizer defaults, as vLLM's completions API) or of chat messages."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            if not getattr(self.tokenizer, "chat_template", None):  # a base model: the messages as plain text
                return [int(i) for i in self.tokenizer(plain_text(prompt), add_special_tokens=True)["input_ids"]]
            ids = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            raise InvalidRequest("a prompt is a string or a list of {'role', 'content'} messages, got "
                                 f"{type(prompt).__name__}")
        return [int(i) for i in ids]

    def encode_all(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """`encode` for many prompts (plain texts tokenized in one batch call)."""
        if not isinstance(prompts, list | tuple) or not prompts:
            raise InvalidRequest("prompts must be a non-empty list")
        if all(isinstance(p, str) for p in prompts):
            encoded = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
            return [[int(i) for i in ids] for ids in encoded]
        return [self.encode(p) for p in prompts]

    async def register_adapter(self, version: AdapterVersion) -> None:
        """Make a version addressable without necessarily loading it now (default: load it)."""
        await self.load_adapter(version)

    def check_lengths(self, batch: Sequence[list[int]], new_tokens: int, what: str = "prompt") -> None:
        """InvalidRequest (HTTP 400) naming the first empty or over-long item of `batch`."""
        for i, ids in enumerate(batch):
            name = f"{what} {i}" if len(batch) > 1 else what
            if not ids:
                raise InvalidRequest(f"empty {name}")
            if self.max_model_len and len(ids) + new_tokens > self.max_model_len:
                raise InvalidRequest(f"{name} of {len(ids)} tokens + {new_tokens} new tokens exceeds the server's "
                                     f"max_model_len of {self.max_model_len}")

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens(list(ids))]


def use_cpu_threads(config: ServerConfig) -> int | None:
    """Give a CPU engine its threads: `cpu_threads`, else every core this process may run on.

    Ray sets OMP_NUM_THREADS=1 in actors that reserve fewer than 2 CPUs (the replica reserves
    `resources.num_cpus`, 0 by default), which would leave vLLM one thread; call this before the engine loads.
    """
    if config.on_gpu:
        return None
    threads = config.cpu_threads or len(os.sched_getaffinity(0))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # an engine-core process started later inherits it
    import torch

    torch.set_num_threads(threads)
    return threads


def load_engine_class(engine: str | type[Engine]) -> type[Engine]:
    """An engine class from a name ('vllm', 'reference'), a 'module:Class' path, or the class itself."""
    if isinstance(engine, type):
        return engine
    path = ENGINES.get(engine, engine)
    if ":" not in path:
        raise InvalidRequest(f"unknown engine {engine!r}; use one of {sorted(ENGINES)} or 'module:Class'")
    module, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise InvalidRequest(f"{path} is not an Engine subclass")
    return cls
