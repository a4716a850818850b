"""Serve tests' fixtures (see tests/serve/fixtures.py): registered here unless the root conftest already
registers them as a plugin for the whole session, so there is never a second vLLM deployment."""

from __future__ import annotations

import tests.conftest as _root
from tests.conftest import free_port
from tests.serve.fixtures import MODEL_DIR, make_adapter, need_model

__all__ = ["MODEL_DIR", "free_port", "make_adapter", "need_model"]

if "tests.serve.fixtures" not in getattr(_root, "pytest_plugins", ()):
    from tests.serve.fixtures import adapters, llm, reference, server_config  # noqa: F401
