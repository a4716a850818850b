"""Parsers of the raw data files in ``shared/data``: each returns rows of strings
(``(row, label, text[, text_pair or domain])``, or ``(row, mr, ref)`` for E2E), and a malformed row is a
DataError naming the file, the line and the fix. Parsed files are cached per path and modification time."""

from __future__ import annotations

import csv
import functools
import html
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from estuary.errors import DataError

Row = tuple[str, ...]


def _bad(path: Path, line: int, what: str) -> DataError:
    return DataError(f"{path}:{line}: {what}; fix or remove that row (data files are read-only: re-copy it)")


def _parse_sst2(path: Path) -> list[Row]:
    rows: list[Row] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            m = re.fullmatch(r"([01]) (.*\S.*)", line)
            if m is None:
                raise _bad(path, lineno, f"expected '<0|1> <sentence>', got {line[:60]!r}")
            rows.append((str(lineno - 1), m.group(1), m.group(2).strip()))
    return rows


def _read_csv(path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    out: list[tuple[int, dict[str, str]]] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(columns):
            raise _bad(path, 1, f"expected header {','.join(columns)}, got {header!r}")
        for record in reader:
            if not record:
                continue
            if len(record) != len(columns):
                raise _bad(path, reader.line_num, f"expected {len(columns)} columns, got {len(record)}")
            out.append((reader.line_num, dict(zip(columns, record, strict=True))))
    return out


def _parse_agnews(path: Path) -> list[Row]:
    rows: list[Row] = []
    for i, (lineno, rec) in enumerate(_read_csv(path, ("Class Index", "Title", "Description"))):
        if rec["Class Index"].strip() not in {"1", "2", "3", "4"}:
            raise _bad(path, lineno, f"class index must be 1-4, got {rec['Class Index']!r}")
        label = int(rec["Class Index"]) - 1
        title, desc = clean_news(rec["Title"]), clean_news(rec["Description"])
        if not (title or desc):
            raise _bad(path, lineno, "empty title and description")
        sep = " " if not title or title[-1] in ".!?" else ". "
        rows.append((str(i), str(label), (title + sep + desc).strip()))
    return rows


def _parse_rte(path: Path) -> list[Row]:
    labels = {"entailment": 0, "not_entailment": 1}
    rows: list[Row] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                premise, hypothesis, label = rec["premise"], rec["hypothesis"], labels[rec["label"]]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise _bad(path, lineno, f"expected JSON with premise, hypothesis, label ({exc!r})") from None
            rows.append((str(lineno - 1), str(label), str(premise).strip(), str(hypothesis).strip()))
    return rows


def _parse_yelp(path: Path) -> list[Row]:
    rows: list[Row] = []
    for i, (lineno, rec) in enumerate(_read_csv(path, ("text", "label1", "label2"))):
        cat = re.fullmatch(r"Business Category: (.+)", rec["label1"].strip())
        stars = re.fullmatch(r"Review Stars: ([1-5])(\.0)?", rec["label2"].strip())
        if cat is None or stars is None or not rec["text"].strip():
            raise _bad(
                path, lineno, f"expected text, 'Business Category: X', 'Review Stars: N.0', got {rec!r}"[:200]
            )
        rows.append((str(i), str(int(stars.group(1)) - 1), rec["text"].strip(), cat.group(1).strip()))
    return rows


def _parse_e2e(path: Path) -> list[Row]:
    rows: list[Row] = []
    for i, (lineno, rec) in enumerate(_read_csv(path, ("mr", "ref"))):
        mr, ref = rec["mr"].strip(), rec["ref"].strip()
        if not mr or not ref:
            raise _bad(path, lineno, "empty mr or ref")
        rows.append((str(i), mr, ref))
    return rows


_PARSERS: dict[str, Callable[[Path], list[Row]]] = {
    "sst2": _parse_sst2,
    "agnews": _parse_agnews,
    "rte": _parse_rte,
    "yelp": _parse_yelp,
    "e2e": _parse_e2e,
}


@functools.lru_cache(maxsize=64)
def parse_file(path: str, mtime_ns: int, fmt: str) -> tuple[Row, ...]:
    del mtime_ns  # part of the cache key only: a rewritten file is parsed again
    return tuple(_PARSERS[fmt](Path(path)))


_CP1252_ENTITY = re.compile(r"#(\d{2,4});")


def clean_news(text: str) -> str:
    """Undo AG News escapes: backslash line breaks, bare ``#39;`` entities and ``&lt;`` HTML."""

    def entity(m: re.Match[str]) -> str:
        code = int(m.group(1))
        if 128 <= code < 160:  # Windows-1252 punctuation written as code points (#151; = em dash)
            return bytes([code]).decode("cp1252", errors="replace")
        return chr(code) if code < 0x110000 else m.group(0)

    text = text.replace("\\", " ")
    text = _CP1252_ENTITY.sub(entity, text)
    text = html.unescape(text)
    return re.sub(r"\s+", " ", text).strip()
