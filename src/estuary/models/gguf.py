"""GGUF → Hugging Face folder conversion, done once per model and cached.

transformers can read a GGUF file (``from_pretrained(dir, gguf_file=...)``, which needs the ``gguf`` and
``accelerate`` packages) and de-quantises every tensor to fp32, but a model loaded that way carries a
``GgufConfig`` quantization config and cannot be ``save_pretrained``. So the conversion builds a plain
model from the same config with ``quantization_config`` dropped, copies the state dict into it and saves
that (safetensors, fp32) together with the tokenizer. Reloading the folder then takes about a second.

Publishing is atomic: the folder is built in a temporary directory beside its destination (same file
system) and renamed into place under a per-key file lock, with the manifest written last, so a folder
that has a manifest is complete and concurrent callers (Ray actors) never see a half-written one.

Nothing here imports Ray; torch and transformers are imported only inside the conversion itself.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("estuary.models")

MANIFEST_NAME = "estuary-source.json"
MANIFEST_FORMAT = 2  # bump when the conversion recipe changes: older folders are rebuilt

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, memoised per (path, size, mtime) within the process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(4 * 1024 * 1024), b""):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


def concatenate(parts: list[Path], target: Path) -> Path:
    """Write the given files one after another into ``target`` (a split GGUF rebuilt)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as fh:
                shutil.copyfileobj(fh, out, length=8 * 1024 * 1024)
    return target


def read_gguf_fields(path: Path, keys: list[str]) -> dict[str, Any]:
    """Scalar/string metadata fields of a GGUF file (memory-mapped; no tensors are read)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    found: dict[str, Any] = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is not None:
            with contextlib.suppress(Exception):
                found[key] = field.contents()
    return found


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a prepared folder, or None if the folder is absent or incomplete."""
    path = folder / MANIFEST_NAME
    if not path.is_file() or not (folder / "config.json").is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def manifest_matches(manifest: dict[str, Any] | None, *, alias: str | None, sha256: str | None) -> bool:
    """A manifest written by this conversion recipe for this alias (and GGUF sha256, when one is given)."""
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT or manifest.get("alias") != alias:
        return False
    return sha256 is None or manifest.get("gguf_sha256") == sha256


def make_manifest(
    alias: str | None, sha256: str, gguf_name: str, facts: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The ``estuary-source.json`` content: where the weights came from and how they were converted."""
    from estuary import __version__

    return {
        "format": MANIFEST_FORMAT,
        "alias": alias,
        "gguf_file": gguf_name,
        "gguf_sha256": sha256,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "estuary_version": __version__,
        **extra,
        **facts,
    }


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock, the atomic rename still holds
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_atomically(
    dest: Path,
    build: Callable[[Path, Path], dict[str, Any]],
    *,
    is_current: Callable[[dict[str, Any] | None], bool],
    force: bool = False,
) -> Path:
    """Create ``dest`` with ``build(out_dir, scratch_dir) -> manifest`` unless it is already current.

    ``build`` writes the model into ``out_dir`` and may use ``scratch_dir`` for large intermediates
    (an assembled GGUF), which is deleted afterwards. The manifest is written last, then ``out_dir`` is
    renamed to ``dest``; an older ``dest`` is moved aside first and removed after.
    """
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(parent / f".{dest.name}.lock"):
        if not force and is_current(read_manifest(dest)):
            return dest
        for stale in parent.glob(f".tmp-{dest.name}-*"):  # left by a run that was killed
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=parent))
        try:
            out, scratch = work / "out", work / "scratch"
            out.mkdir()
            scratch.mkdir()
            manifest = build(out, scratch)
            shutil.rmtree(scratch, ignore_errors=True)
            for item in out.rglob("*"):  # some writers create 0600 files; the cache is meant to be shared
                if item.is_file():
                    item.chmod(0o644)
            (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            old = None
            if dest.exists():
                old = parent / f".old-{dest.name}-{uuid.uuid4().hex[:8]}"
                os.replace(dest, old)
            os.replace(out, dest)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):  # hand freed heap pages back to the OS (glibc only)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _ensure_bos(tokenizer: Any) -> None:
    """Make the tokenizer prepend BOS to every encoded sequence, in a way that survives a save/reload.

    The tokenizer transformers builds from Gemma's GGUF has an empty post-processor although the file
    says ``tokenizer.ggml.add_bos_token = true``. Setting ``add_bos_token`` rebuilds the post-processor
    (a ``TemplateProcessing``), which is stored in tokenizer.json; if that API is missing the template
    is installed directly.
    """
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if bos is None or bos_id is None:
        raise ValueError("tokenizer has no BOS token to prepend")
    with contextlib.suppress(Exception):
        tokenizer.add_bos_token = True
    if tokenizer("hi").input_ids[:1] != [bos_id]:
        from tokenizers import processors

        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )


def convert_gguf_to_hf(
    gguf_path: Path, out_dir: Path, *, fix_bos: bool, stop_tokens: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Convert one GGUF file into an HF folder (fp32 safetensors + tokenizer); returns facts for the manifest.

    Loads with ``local_files_only`` (nothing is fetched), checks that every weight was carried over, and
    re-reads the saved tokenizer to confirm the BOS fix took.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    src = {"pretrained_model_name_or_path": str(gguf_path.parent), "gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(**src, local_files_only=True)
    if fix_bos:
        _ensure_bos(tokenizer)
    quantised = AutoModelForCausalLM.from_pretrained(**src, local_files_only=True, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"GGUF weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}"
        )
    model.generation_config = quantised.generation_config
    if stop_tokens:
        stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens]
        if any(i is None or i == tokenizer.unk_token_id for i in stop_ids):
            raise RuntimeError(f"stop tokens {stop_tokens} are not all in the vocabulary: {stop_ids}")
        model.generation_config.eos_token_id = stop_ids
    del quantised
    _release_memory()
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions:  # the GGUF tokenizer says 1e30, which makes truncation=True a no-op
        tokenizer.model_max_length = int(max_positions)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    facts: dict[str, Any] = {
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": "float32",
        "vocab_size": int(getattr(config, "vocab_size", 0) or 0),
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "fix_bos": fix_bos,
        "generation_eos_token_id": model.generation_config.eos_token_id,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    del model, tokenizer
    _release_memory()

    reloaded = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    if fix_bos and reloaded("hi").input_ids[:1] != [reloaded.bos_token_id]:
        raise RuntimeError("the saved tokenizer does not prepend BOS after reloading")
    AutoConfig.from_pretrained(str(out_dir), local_files_only=True)
    facts["conversion_seconds"] = round(time.monotonic() - started, 1)
    log.info("converted %s in %.1f s", gguf_path.name, facts["conversion_seconds"])
    return facts


def gguf_file_dest(path: Path, models_root: Path) -> Path:
    """Cache folder of an arbitrary GGUF file: ``<models_root>/gguf-<first 16 hex of its sha256>``."""
    return models_root / f"gguf-{sha256_file(path)[:16]}"


def prepare_gguf_file(path: Path, models_root: Path, *, force: bool = False) -> Path:
    """Convert a GGUF file given by path (keyed by its sha256); BOS handling follows its metadata."""
    dest, sha = gguf_file_dest(path, models_root), sha256_file(path)

    def current(manifest: dict[str, Any] | None) -> bool:
        return manifest_matches(manifest, alias=None, sha256=sha)

    if not force and current(read_manifest(dest)):
        return dest

    def build(out: Path, scratch: Path) -> dict[str, Any]:
        fields = read_gguf_fields(path, ["tokenizer.ggml.add_bos_token"])
        facts = convert_gguf_to_hf(path, out, fix_bos=bool(fields.get("tokenizer.ggml.add_bos_token")))
        return make_manifest(None, sha, path.name, facts, source_path=str(path))

    return build_atomically(dest, build, is_current=current, force=force)
