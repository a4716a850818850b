"""Shared helpers for benchmarks: a local Ray cluster, JSON results, environment facts."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import psutil

# ESTUARY_BENCH_RESULTS: another folder, e.g. for smoke runs that must not replace the recorded results.
RESULTS = Path(os.environ.get("ESTUARY_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def environment() -> dict[str, Any]:
    import ray
    import torch

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), **data}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
