"""Canaries: unique marker strings planted in private data, and scanners that look for them in what left.

Every planted canary is `CANARY_PREFIX` + 10 hex digits, so a scanner finds any of them (or a fragment
of private text carrying one) in pickled Egress records or run-folder files without knowing which.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from estuary.data.task import Example

CANARY_PREFIX = "zqxcanary"
_PATTERN = re.compile(rf"{CANARY_PREFIX}[0-9a-f]{{10}}")


def make_canary(seed: int, index: int) -> str:
    return CANARY_PREFIX + hashlib.sha256(f"{seed}/{index}".encode()).hexdigest()[:10]


def plant_canaries(examples: Sequence[Example], seed: int = 0) -> list[Example]:
    """A copy of `examples` with a distinct canary word inserted into each text."""
    out = []
    for i, ex in enumerate(examples):
        words = ex.text.split()
        words.insert(len(words) // 2, make_canary(seed, i))
        out.append(replace(ex, text=" ".join(words)))
    return out


def plant_sst2_canaries(src_root: Path, dst_root: Path, *, lines: int = 300, seed: int = 0) -> list[str]:
    """A data root whose sst2 train split is its first `lines` rows, each carrying its own canary.

    Dev and test are copied unchanged (they are not private client data); the root's other data sets are
    linked as they are (public data some methods use). Returns the canaries.
    """
    src, dst = Path(src_root) / "sst2", Path(dst_root) / "sst2"
    dst.mkdir(parents=True, exist_ok=True)
    for other in Path(src_root).iterdir():
        if other.name != "sst2" and not (Path(dst_root) / other.name).exists():
            (Path(dst_root) / other.name).symlink_to(other.resolve())
    for name in ("dev.txt", "test.txt"):
        shutil.copyfile(src / name, dst / name)
    rows = [ln for ln in (src / "train.txt").read_text(encoding="utf-8").splitlines() if ln.strip()][:lines]
    canaries, out = [], []
    for i, line in enumerate(rows):
        label, text = line.split(" ", 1)
        words = text.split()
        c = make_canary(seed, i)
        words.insert(len(words) // 2, c)
        canaries.append(c)
        out.append(f"{label} {' '.join(words)}")
    (dst / "train.txt").write_text("\n".join(out) + "\n", encoding="utf-8")
    return canaries


def find_canaries(obj: Any) -> list[str]:
    """Canaries found anywhere in `obj` (str, bytes, or any picklable object such as an Egress)."""
    if isinstance(obj, str):
        return sorted(set(_PATTERN.findall(obj)))
    data = obj if isinstance(obj, bytes) else pickle.dumps(obj)
    return sorted({m.decode() for m in re.findall(_PATTERN.pattern.encode(), data)})


def scan_files(paths: Iterable[Path]) -> dict[str, list[str]]:
    """file → canaries found in it (files without any are left out)."""
    found = {}
    for p in paths:
        hits = find_canaries(Path(p).read_bytes())
        if hits:
            found[str(p)] = hits
    return found


def scan_run_dir(run_dir: Path, *, include_checkpoints: bool = False) -> dict[str, list[str]]:
    """Canaries in a run folder's records. Checkpoints hold client-owned state (adapters, ledgers) that
    stays with the client in a deployment, so they are skipped unless asked for."""
    files = [p for p in Path(run_dir).rglob("*") if p.is_file()]
    if not include_checkpoints:
        files = [p for p in files if "checkpoints" not in p.relative_to(run_dir).parts]
    return scan_files(files)
