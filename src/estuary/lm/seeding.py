"""Seeding: deterministic seeds from integers, RNG scopes that leave the caller's RNG untouched, and the
example stream (epoch-wise permutations) every training loop draws its batches from."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def rng_scope(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNGs for a block and restore the caller's RNG state after it."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def mix_seed(*values: int) -> int:
    """A deterministic 63-bit seed from integers (stable across processes, unlike hash())."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of global step `step`.

    The stream of examples is a sequence of epochs, each a fresh permutation of range(n) drawn
    from a torch.Generator seeded by (seed, epoch): within an epoch no example repeats, across
    epochs examples are re-drawn (sampling with replacement between epochs). A batch depends only
    on (seed, step), so training resumed at step k sees the same batches as uninterrupted training.
    """
    out: list[int] = []
    first = step * batch_size
    epoch_cache: dict[int, list[int]] = {}
    for g in range(first, first + batch_size):
        epoch, offset = divmod(g, n)
        if epoch not in epoch_cache:
            gen = torch.Generator().manual_seed(mix_seed(seed, epoch, 1))
            epoch_cache[epoch] = torch.randperm(n, generator=gen).tolist()
        out.append(epoch_cache[epoch][offset])
    return out


def epoch_steps(n: int, batch_size: int, epochs: float = 1.0) -> int:
    """Steps of `batch_size` that pass `epochs` times over `n` examples of the stream above (at least one):
    ceil(epochs × n / batch_size); one epoch sees every example once, the last batch topped up from the next."""
    if n < 1 or batch_size < 1 or not epochs > 0:
        raise ValueError(f"n and batch_size must be >= 1 and epochs > 0 (got {n}, {batch_size}, {epochs})")
    return max(1, math.ceil(epochs * n / batch_size - 1e-9))
