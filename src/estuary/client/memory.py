"""Hand a worker's freed heap back to the operating system after each client task.

glibc's malloc serves PyTorch's CPU tensors below its mmap threshold from the process heap, and it raises that
threshold (up to 32 MiB) each time a large mapped block is freed, so after a few tasks most tensors live on the
heap. Freed heap pages stay in the process unless they sit at the top of the heap: a pool worker that DP-trained
one client keeps its training peak as resident memory while it serves the next. On a 24 GiB machine with a
served LLM beside two workers, such workers (6.9 and 5.8 GiB for a 135M model) left Ray's memory monitor to kill
the replica (`fdkt-agnews-dir-eps3` with the 1.5B server, round 2). `malloc_trim(0)` returns every free page,
not only the top of the heap: `bench/worker_memory.py` measures what it gives back after a real FDKT client task.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache
from typing import Any


@cache
def _glibc() -> Any | None:
    """The C library when it is glibc on Linux (it has malloc_trim); None elsewhere (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL("libc.so.6")  # glibc's soname; no find_library (it spawns ldconfig in each worker)
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        lib.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


RELEASE_AFTER_S = 1.0  # tasks shorter than this skip the release: a no-op client's task costs tens of µs


def release_after(task_seconds: float) -> bool:
    """`release_freed_memory()` after a task that ran `task_seconds`, if it ran long enough to have built a
    peak worth returning (training, sampling); a trim costs ~10 µs on a small heap, more on a large one, so a
    round of cheap tasks (bench.peer_flower's no-op clients) is left as it was."""
    return release_freed_memory() if task_seconds >= RELEASE_AFTER_S else False


def release_freed_memory() -> bool:
    """Give free heap pages back to the OS; True when the C library released some. (No `gc.collect()`: tensors
    are freed by reference counting, and a full collection per task would cost tiny tasks more than the trim.)"""
    lib = _glibc()
    return bool(lib.malloc_trim(0)) if lib is not None else False
