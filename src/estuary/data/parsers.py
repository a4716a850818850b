"""The one layout `datasets` does not read, and AG News's text escapes.

`label-lines` (SST-2's stsa files): one example per line, `<label> <text>`; blank lines are skipped. A
malformed line is a DataError naming the file and the line. `clean_news` undoes AG News's escapes (a card's
`clean: news`).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

from estuary.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

_LINE = re.compile(r"(\S+)[ \t]+(.*\S.*)")


def read_label_lines(path: Path) -> Dataset:
    """A `<label> <text>` file as a Dataset with columns `label` and `text` (strings)."""
    from datasets import Dataset

    labels: list[str] = []
    texts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            m = _LINE.fullmatch(line)
            if m is None:
                raise DataError(f"{path}:{lineno}: expected '<label> <text>', got {line[:60]!r}; fix or remove "
                                "that line")
            labels.append(m.group(1))
            texts.append(m.group(2))
    return Dataset.from_dict({"label": labels, "text": texts})


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
