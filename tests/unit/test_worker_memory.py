"""A worker gives the heap a client task freed back to the OS (estuary.client.memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from estuary.client.memory import release_freed_memory

# A child process fragments its heap: many 64 KiB blocks (below glibc's mmap threshold, so on the heap), all freed
# but the last, which pins the top of the heap so free() alone cannot shrink it. It prints RSS (KiB) after the
# frees and after release_freed_memory(), and whether the C library reported a release.
_CHILD = r"""
from estuary.client.memory import release_freed_memory
def rss():
    return int(next(line for line in open('/proc/self/status') if line.startswith('VmRSS')).split()[1])
blocks = [bytearray(64 * 1024) for _ in range(3000)]
for b in blocks:
    b[::4096] = b'\x01' * len(b[::4096])
pin = blocks[-1]
del blocks[:-1]
before = rss()
released = release_freed_memory()
print(before, rss(), released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_freed_heap_goes_back_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True).stdout.split()
    before, after, released = int(out[0]), int(out[1]), out[2] == "True"
    assert released
    # ~190 MiB were freed on the heap; at least half of it must leave the process.
    assert before - after > 95 * 1024, (before, after)


def test_release_is_safe_to_call_repeatedly() -> None:
    for _ in range(3):
        assert isinstance(release_freed_memory(), bool)


def test_short_tasks_skip_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    import estuary.client.memory as memory

    calls: list[int] = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1) or True)
    assert memory.release_after(memory.RELEASE_AFTER_S / 10) is False
    assert calls == []
    assert memory.release_after(memory.RELEASE_AFTER_S) is True
    assert calls == [1]
