"""Shared helpers for benchmarks: a local Ray cluster, JSON results, environment facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import psutil

# ESTUARY_BENCH_RESULTS: another folder, e.g. for smoke runs that must not replace the recorded results.
RESULTS = Path(os.environ.get("ESTUARY_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def environment() -> dict[str, Any]:
    import ray
    import torch

    from estuary.lm.precision import host_facts

    return {
        **host_facts(),  # cpus, torch's CPU capability, native bfloat16: timings from different hosts told apart
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def tree_pss_mib(pid: int | None = None) -> float:
    """Proportional set size (MiB) of a process and all its descendants (Ray workers, replicas, raylet):
    shared pages are split between the processes that map them, so the sum is what the tree costs."""
    root = psutil.Process(pid or os.getpid())
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
    return total / 2**20


class PeakTreeMemory:
    """Samples ``tree_pss_mib()`` every ``interval`` seconds in a thread while the block runs; ``peak_mib``."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval, self.peak_mib = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, tree_pss_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), **data}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
