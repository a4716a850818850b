"""Reading a card's source with 🤗 `datasets`: files (csv, tsv, json, jsonl, parquet, arrow), folders of them
(one file per split, named by the split), `save_to_disk` folders and hub ids. Only SST-2's `<label> <text>`
lines, a layout `datasets` does not read, have a small parser (`format: label-lines`).

Arrow tables are cached under the Estuary cache (`datasets` fingerprints each file by path and modification
time); a path source never touches the hub. Every failure is one DataError line naming the path and the fix.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estuary.errors import DataError

from .card import TaskCard

if TYPE_CHECKING:
    from datasets import Dataset

    from .parsers import LineTable

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
DISK_MARKERS = ("dataset_dict.json", "state.json")
EVAL_NAMES = ("validation", "eval", "dev", "valid", "val")
ENV_VAR = "ESTUARY_DATA"
_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "arrow": "arrow"}


@dataclass(frozen=True)
class SourceSplit:
    name: str  # the split's name in the source (a single file: "train")
    stem: str  # the middle of its uids: the file stem, or the split name
    where: str  # for messages: the file, or "hub id [split]"
    rows: Dataset | LineTable  # LineTable: a label-lines file, read without `datasets`


@dataclass(frozen=True)
class Source:
    origin: str  # the resolved path or hub id, and its format
    available: tuple[str, ...]  # every split the source has
    splits: dict[str, SourceSplit]  # the splits read (train, eval, test -> the source's split)


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSED:
        suffixes.pop()
    return SUFFIXES.get(suffixes[-1]) if suffixes else None


def _split_name(path: Path) -> str:
    return path.name.split(".")[0]


def cache_dir() -> Path:
    """Where `datasets` keeps its Arrow tables: `<Estuary cache>/datasets`, the Estuary cache being
    `$ESTUARY_CACHE` or the platform's user cache folder (as `estuary.models.cache_dir`, a sibling layer)."""
    env = os.environ.get("ESTUARY_CACHE")
    if env:
        return Path(env).expanduser().resolve() / "datasets"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("estuary", appauthor=False)) / "datasets"


def _cache_dir() -> str:
    return str(cache_dir())


def _quiet_datasets() -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _why(exc: BaseException) -> str:
    while exc.__cause__ is not None and not str(exc).strip():
        exc = exc.__cause__
    root = exc.__cause__ or exc
    text = (str(root).strip().splitlines() or [""])[0][:200]
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _read_file(path: Path, fmt: str) -> Dataset | LineTable:
    """One file as a Dataset, read by `datasets` (label-lines: the SST-2 parser)."""
    if fmt == "label-lines":
        from .parsers import read_label_lines

        return read_label_lines(path)
    datasets = _quiet_datasets()
    kwargs: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):  # CSV has no types: keep "NA", "null" and empty cells as text
        kwargs = {"na_filter": False, "keep_default_na": False, "sep": "\t" if fmt == "tsv" else ","}
    ds = datasets.load_dataset(_BUILDERS[fmt], data_files={"train": str(path)}, split="train",
                               cache_dir=_cache_dir(), **kwargs)
    return ds


@functools.lru_cache(maxsize=64)
def _read_cached(path: str, mtime_ns: int, size: int, fmt: str) -> Dataset | LineTable:
    del mtime_ns, size  # part of the cache key only: a rewritten file is read again
    return _read_file(Path(path), fmt)


def read_file(path: Path, fmt: str | None, where: str = "data.task.source") -> Dataset | LineTable:
    fmt = fmt or _format_of(path)
    if fmt is None or fmt == "disk":
        raise DataError(f"{where}.path: cannot tell the format of {path} (suffix {''.join(path.suffixes) or 'none'}); "
                        "use a csv, tsv, json, jsonl, parquet or arrow file, or set source.format")
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{where}.path: cannot read {path} ({type(exc).__name__}); check the path") from None
    if st.st_size == 0:
        raise DataError(f"{where}.path: {path} is empty; give a file with a header and rows")
    try:
        ds = _read_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, fmt)
    except DataError:
        raise
    except Exception as exc:  # datasets/pyarrow/pandas raise many types for an unreadable file
        raise DataError(f"{where}.path: cannot read {path} as {fmt} ({_why(exc)}); check the file and "
                        "source.format") from None
    if len(ds) == 0:
        raise DataError(f"{where}.path: {path} has no rows; give a file with data")
    return ds


def find_data_root(explicit: str | Path | None = None) -> Path:
    """Folder holding the data sets: ``explicit``, else ``$ESTUARY_DATA``, else a ``shared/data``
    folder beside an ancestor of the working directory or of this source file."""
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataError(f"data.root {str(path)!r} is not a folder; point it at the shared data folder")
        return path.resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(
                f"{ENV_VAR}={env!r} is not a folder; point it at the shared data folder or unset it"
            )
        return path.resolve()
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for ancestor in (start, *start.parents):
            candidate = ancestor / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise DataError(
        f"no shared/data folder found above {starts[0]} or {starts[1]}; "
        f"set data.root or {ENV_VAR} to the data folder"
    )


def resolve_path(card: TaskCard, root: Path | None) -> Path:
    """The card's source path: absolute as given (relative to the job file, resolved when the job loaded), else
    under the data root."""
    assert card.source.path is not None
    path = Path(card.source.path).expanduser()
    if path.is_absolute():
        if not path.exists():
            raise DataError(f"data.task.source.path: {path} not found; fix the path (relative paths are read "
                            "from the job file's folder, then from data.root)")
        return path
    if root is None:
        root = find_data_root(None)
    full = root / path
    if not full.exists():
        raise DataError(f"data file {full} not found; set data.root or $ESTUARY_DATA to the folder holding "
                        f"{path}, or give data.task.source.path relative to the job file")
    return full


def _wanted(card: TaskCard, available: tuple[str, ...], where: str) -> dict[str, str]:
    """train/eval/test -> the source's split name: the card's, else train + the usual eval and test names."""
    if card.splits:
        for role, name in card.splits.items():
            if name not in available:
                close = difflib.get_close_matches(name, available, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                carve = " (leave it out to carve it from train)" if role != "train" else ""
                raise DataError(f"data.task.splits.{role}: {where} has no split {name!r} (it has: "
                                f"{', '.join(available)}); {hint}fix the name{carve}")
        if "train" not in card.splits:
            raise DataError(f"data.task.splits: name the train split (it has: {', '.join(available)})")
        return {str(role): name for role, name in card.splits.items()}
    if "train" not in available:
        raise DataError(f"data.task.splits: {where} has no split 'train' (it has: {', '.join(available)}); "
                        "set data.task.splits.train")
    out = {"train": "train"}
    ev = next((n for n in EVAL_NAMES if n in available), None)
    if ev is not None:
        out["eval"] = ev
    if "test" in available:
        out["test"] = "test"
    return out


def _folder_files(folder: Path, fmt: str | None) -> dict[str, Path]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if fmt is None:
        files = [p for p in files if _format_of(p) is not None]
    elif fmt != "label-lines":
        files = [p for p in files if _format_of(p) == fmt]
    out: dict[str, Path] = {}
    for p in files:
        name = _split_name(p)
        if name in out:
            raise DataError(f"data.task.source.path: {folder} has two files for split {name!r} ({out[name].name}, "
                            f"{p.name}); keep one, or set source.format")
        out[name] = p
    if not out:
        raise DataError(f"data.task.source.path: {folder} holds no data files (csv, tsv, json, jsonl, parquet, "
                        "arrow) and is no save_to_disk folder")
    return out


def _from_disk(folder: Path) -> Source:
    datasets = _quiet_datasets()
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:
        raise DataError(f"data.task.source.path: cannot load the save_to_disk folder {folder} ({_why(exc)})") \
            from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return Source(f"{folder} (save_to_disk)", tuple(parts),
                  {n: SourceSplit(n, n, f"{folder} [{n}]", ds) for n, ds in parts.items()})


def _from_hub(card: TaskCard) -> Source:
    src = card.source
    assert src.hf is not None
    datasets = _quiet_datasets()
    try:
        loaded = datasets.load_dataset(src.hf, name=src.config, revision=src.revision, cache_dir=_cache_dir())
    except Exception as exc:
        raise DataError(f"data.task.source.hf: cannot load {src.hf!r} ({_why(exc)}); on a machine without the hub, "
                        "save_to_disk it elsewhere and give that folder as source.path") from None
    label = src.hf + (f" ({src.config})" if src.config else "")
    return Source(f"{label} (hub)", tuple(loaded),
                  {n: SourceSplit(n, n, f"{label} [{n}]", ds) for n, ds in loaded.items()})


def load_source(card: TaskCard, root: Path | None) -> Source:
    """The card's source, with its train/eval/test splits read (`splits`: role -> the source's split)."""
    if card.source.hf is not None:
        src = _from_hub(card)
        wanted = _wanted(card, src.available, src.origin)
        return Source(src.origin, src.available, {r: src.splits[n] for r, n in wanted.items()})
    path = resolve_path(card, root)
    fmt = card.source.format
    if path.is_dir():
        if fmt == "disk" or (fmt is None and any((path / m).is_file() for m in DISK_MARKERS)):
            src = _from_disk(path)
            wanted = _wanted(card, src.available, str(path))
            return Source(src.origin, src.available, {r: src.splits[n] for r, n in wanted.items()})
        files = _folder_files(path, fmt)
        wanted = _wanted(card, tuple(files), str(path))
        splits = {r: SourceSplit(n, n, str(files[n]), read_file(files[n], fmt)) for r, n in wanted.items()}
        kinds = sorted({fmt or str(_format_of(files[n])) for n in wanted.values()})
        return Source(f"{path} ({', '.join(kinds)} files)", tuple(files), splits)
    if fmt == "disk":
        raise DataError(f"data.task.source.format: disk needs a save_to_disk folder, and {path} is a file")
    wanted = _wanted(card, ("train",), str(path))
    split = SourceSplit("train", _split_name(path), str(path), read_file(path, fmt))
    return Source(f"{path} ({fmt or _format_of(path)})", ("train",), {"train": split})


def missing_column(columns: list[str], name: str, field: str, where: str) -> DataError:
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return DataError(f"data.task.{field}: column {name!r} is not in {where} (columns: {', '.join(columns)}); "
                     f"{hint}fix the column name")


def full_match(pattern: str, value: str) -> str | None:
    m = re.fullmatch(pattern, value, flags=re.DOTALL)
    if m is None:
        return None
    return m.group(1) if m.groups() else m.group(0)

