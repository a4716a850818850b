"""One example as one line of text a DP generator learns and writes, and a written line back into an example.

A DP generator (FDKT's, DistilDP's teachers) writes one line per sample. For a generation task whose examples
carry a target (prompt → target), that line must hold both parts in a form that splits again:

- a card with `sample_pattern` (E2E's attribute schema) writes `text target` and splits with that regular
  expression, whose groups `text` and `target` are the two parts;
- any other card writes its own template, filled in, on one line (newlines become spaces) with the target
  after it — "Question: … Answer: yes" for `template: "Question: {text}\\nAnswer:"` — and splits on the
  template's literal parts. Such a template must end with a literal after its last field (`\\nAnswer:`), or
  prompt and target would run together (`layout_misfit` says so).

Tasks without targets (classification texts, free text to write) use the text as it is.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

from estuary.data.task import Example, Task

SAMPLE_PATTERN = "sample_pattern"  # Task.extra key: the card's `sample_pattern`
GENERATOR_MARKERS = ("Label:", "Text:")  # the generator's own prompt words: a sample holding one is malformed


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text)


def _parts(template: str) -> list[tuple[str, str | None]]:
    return [(literal, name) for literal, name, _spec, _conv in string.Formatter().parse(template)]


def layout_misfit(task: Task) -> str | None:
    """Why generated samples of `task` could not be split into prompt and target (a phrase), or None."""
    if not task.targets or SAMPLE_PATTERN in task.extra:
        return None
    parts = _parts(task.template)
    if not parts or parts[-1][1] is not None or not parts[-1][0].strip():
        return ("has targets but its template ends with a field, so a generated sample cannot be split into "
                "prompt and target; end data.task.template with a literal such as '\\nAnswer:'")
    clash = [m for m in GENERATOR_MARKERS if m in task.template]
    if clash:
        return (f"has {clash[0]!r} in its template, a word the DP generator's own prompt uses (its samples would "
                "be dropped as malformed); reword data.task.template, e.g. 'Input: {text}\\nOutput:'")
    return None


def sample_text(task: Task, example: Example) -> str:
    """The one line a generator learns for `example` (stripped; see the module docstring)."""
    if example.target is None:
        return example.text.strip()
    if SAMPLE_PATTERN in task.extra:
        return f"{example.text} {example.target}".strip()
    return _one_line(task.prompt(example) + example.target).strip()


@lru_cache(maxsize=32)
def _template_regex(template: str) -> re.Pattern[str]:
    """The one-line template as a regular expression: literals (any run of whitespace matches any other),
    fields as lazy groups (a repeated field must repeat its value), the target after the last literal."""
    out, seen = ["^"], set()
    for literal, name in _parts(template):
        for i, piece in enumerate(re.split(r"\s+", literal)):
            out.append((r"\s*" if i else "") + re.escape(piece))
        if name is not None:
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
            seen.add(name)
    out.append(r"\s*(?P<target>\S.*?)\s*$")
    return re.compile("".join(out), re.S)


def parse_sample(task: Task, text: str, uid: str) -> Example | None:
    """A generated line as an example of `task`, or None when it does not split (see the module docstring)."""
    if not task.targets:
        return Example(text=text, uid=uid)
    pattern = task.extra.get(SAMPLE_PATTERN)
    match = re.match(pattern, text, re.S) if pattern else _template_regex(task.template).match(_one_line(text))
    if match is None:
        return None
    fields = match.groupdict()
    body, target = (fields.get("text") or "").strip(), (fields.get("target") or "").strip()
    if not body or not target:
        return None
    pair = fields.get("text_pair")
    domain = fields.get("domain")
    return Example(text=body, target=" " + target, uid=uid,
                   text_pair=pair.strip() if pair is not None else None,
                   domain=domain.strip() if domain is not None else None)
