"""The one layout `datasets` does not read, and AG News's text escapes.

`label-lines` (SST-2's stsa files): one example per line, `<label> <text>`; blank lines are skipped. A
malformed line is a DataError naming the file and the line. The lines are held as a `LineTable`, plain column
lists with the part of `datasets.Dataset` the loader reads, so SST-2 (the quickstart's task) loads without
importing `datasets` (and pandas, pyarrow). `clean_news` undoes AG News's escapes (a card's `clean: news`).
"""

from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path
from typing import Any

from estuary.errors import DataError

_LINE = re.compile(r"(\S+)[ \t]+(.*\S.*)")


class LineTable:
    """Columns of equal length as lists, read like a `datasets.Dataset` by the loader: `column_names`, `len`,
    `select_columns(...).to_dict()`, and `_fingerprint` (its content's hash, the loader's cache key)."""

    def __init__(self, columns: dict[str, list[Any]], fingerprint: str) -> None:
        self.columns = columns
        self._fingerprint = fingerprint

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def select_columns(self, names: list[str]) -> LineTable:
        return LineTable({n: self.columns[n] for n in names}, self._fingerprint)

    def to_dict(self) -> dict[str, list[Any]]:
        return {n: list(v) for n, v in self.columns.items()}


def read_label_lines(path: Path) -> LineTable:
    """A `<label> <text>` file as a table with columns `label` and `text` (strings)."""
    digest = hashlib.sha256()
    labels: list[str] = []
    texts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            digest.update(line.encode())
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            m = _LINE.fullmatch(line)
            if m is None:
                raise DataError(f"{path}:{lineno}: expected '<label> <text>', got {line[:60]!r}; fix or remove "
                                "that line")
            labels.append(m.group(1))
            texts.append(m.group(2))
    return LineTable({"label": labels, "text": texts}, f"label-lines-{digest.hexdigest()[:16]}")


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
