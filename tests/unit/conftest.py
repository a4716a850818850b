"""Fixtures of the unit tests that train tiny models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: two OpenMP threads spin against each other (~40x slower).
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    """The word-level tokenizer of the tiny Llama of tests.unit.test_slm."""
    from tests.unit.test_slm import make_tokenizer

    return make_tokenizer()
