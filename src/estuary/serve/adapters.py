"""Published LoRA adapter versions: an on-disk registry every replica reads.

Layout: `<root>/<name>/v<N>/` holds one version (peft `save_pretrained` files plus `estuary-version.json`).
A version is addressed as `name@vN`; the bare `name` means its latest version. Publishing writes the next
`v<N>` atomically (temporary folder, then rename, under a file lock), so replicas and readers never see a
half-written version, and older versions stay addressable for evaluation.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from estuary.serve.types import InvalidRequest, UnknownAdapter

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SPEC = re.compile(r"^(?P<name>[^@]+)(?:@v?(?P<version>\d+))?$")
_META = "estuary-version.json"
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAX_ADAPTER_BYTES = 2 * 2**30


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: int
    path: str
    created: float
    rank: int
    source: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "id": self.id}


def read_adapter_files(adapter_dir: str | Path) -> dict[str, bytes]:
    """The files of a peft adapter folder (what `publish` sends to the server), checked for completeness."""
    folder = Path(adapter_dir).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise InvalidRequest(f"{folder} is not a LoRA adapter folder (no adapter_config.json); save it with "
                             "peft's save_pretrained")
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    if not any(w in files for w in _WEIGHTS):
        raise InvalidRequest(f"{folder} has no adapter weights ({' or '.join(_WEIGHTS)})")
    return files


def check_adapter_files(files: Mapping[str, bytes], max_rank: int) -> int:
    """Validate an adapter's files; returns its LoRA rank."""
    if "adapter_config.json" not in files or not any(w in files for w in _WEIGHTS):
        raise InvalidRequest(f"an adapter needs adapter_config.json and {' or '.join(_WEIGHTS)}; got {sorted(files)}")
    if sum(len(v) for v in files.values()) > MAX_ADAPTER_BYTES:
        raise InvalidRequest("adapter files exceed 2 GiB")
    for fname in files:
        if "/" in fname or fname.startswith(".") or fname == _META:
            raise InvalidRequest(f"bad adapter file name {fname!r}")
    try:
        cfg = json.loads(files["adapter_config.json"])
    except ValueError as exc:
        raise InvalidRequest(f"adapter_config.json is not JSON: {exc}") from None
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise InvalidRequest(f"only LoRA adapters can be served, got peft_type={cfg.get('peft_type')!r}")
    ranks = [int(cfg.get("r", 0)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    rank = max(ranks)
    if rank < 1 or rank > max_rank:
        raise InvalidRequest(f"adapter rank {rank} is outside 1..{max_rank} (server max_lora_rank)")
    return rank


class AdapterRegistry:
    """Versions under `root`; safe for several replicas (and processes) on one filesystem."""

    def __init__(self, root: str | Path, max_rank: int) -> None:
        self.root = Path(root)
        self.max_rank = max_rank
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def check_name(name: str) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest(f"adapter name {name!r}: use 1-64 letters, digits, '_', '.', '-' (no '@')")
        return name

    def publish(self, name: str, files: Mapping[str, bytes], source: str = "") -> AdapterVersion:
        """Store `files` as the next version of `name` and return it."""
        self.check_name(name)
        rank = check_adapter_files(files, self.max_rank)
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder))
        try:
            for fname, data in files.items():
                (tmp / fname).write_bytes(data)
            with self._lock():
                version = max((v.version for v in self._scan(name)), default=0) + 1
                dest = folder / f"v{version}"
                meta = AdapterVersion(name=name, version=version, path=str(dest), created=time.time(), rank=rank,
                                      source=source)
                (tmp / _META).write_text(json.dumps(meta.to_dict(), indent=1))
                tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta

    def _scan(self, name: str) -> list[AdapterVersion]:
        out = []
        for meta_file in (self.root / name).glob(f"v*/{_META}"):
            try:
                data = json.loads(meta_file.read_text())
                out.append(AdapterVersion(name=data["name"], version=int(data["version"]), path=str(meta_file.parent),
                                          created=float(data["created"]), rank=int(data["rank"]),
                                          source=data.get("source", "")))
            except (ValueError, KeyError, OSError):
                continue  # a foreign or damaged folder is not a version
        return sorted(out, key=lambda v: v.version)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self) -> dict[str, list[AdapterVersion]]:
        return {n: vs for n in self.names() if (vs := self._scan(n))}

    def resolve(self, spec: str) -> AdapterVersion:
        """`name@vN` (or `name@N`) → that version; `name` → the latest one. UnknownAdapter otherwise."""
        m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
        if m is None:
            raise UnknownAdapter(f"adapter {spec!r}: expected 'name' or 'name@vN'")
        name, version = m.group("name"), m.group("version")
        found = self._scan(name) if _NAME.match(name) else []
        if not found:
            known = ", ".join(self.names()) or "none published yet"
            raise UnknownAdapter(f"unknown adapter {name!r} (published: {known})")
        if version is None:
            return found[-1]
        for v in found:
            if v.version == int(version):
                return v
        raise UnknownAdapter(f"adapter {name!r} has no version v{version} (versions: "
                             f"{', '.join(v.id for v in found)})")
