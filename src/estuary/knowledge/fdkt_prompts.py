"""The FDKT reference's two LLM prompts, written for any classification task card (FATE-LLM's FlexDataset
`filter_format` and `augment_format`, read for the procedure; the wording here is Estuary's):

- the judge: one cluster's samples, numbered from 0, each with its label; the LLM answers
  "The eligible samples: i j ..." and every sample is kept or dropped on its own (`eligible_messages`,
  `parse_eligible`);
- all-labels augmentation: one demonstration per label for EVERY label, one `label: text` per line; the LLM
  writes several new samples in the same format and labels them itself (`all_labels_messages`,
  `parse_labelled_lines`).

Both are chat messages; `plain_prompt` renders them as one completion prompt for a model without a chat
template. Today's one-label augmentation prompts and Yes/No cluster judge stay in `prompts.py`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from estuary.data.task import Example, Task
from estuary.knowledge.prompts import label_name

ELIGIBLE = "The eligible samples:"
SEPARATOR = "******"
_SYSTEM = "You are a careful assistant who prepares labelled data for a text classification task."
_NONE = re.compile(r"^(none|no\b|nothing|empty|\[\s*\])", re.IGNORECASE)
_RANGE = re.compile(r"^(\d+)\s*(?:-|–|—|to|\.\.)\s*(\d+)$")
_FILLER = {"and", "samples", "sample", "index", "indexes", "indices", "are", "is"}
_ONLY_NUMBERS = re.compile(r"[\[(#]?\d(?:[\d\s,;.\-–—\[\]()#]|and|to)*")
_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,3}[.)]|\[\d{1,3}\])\s*")


def _subject(task: Task) -> str:
    return str(task.extra.get("subject") or "text")


def _labels_line(task: Task) -> str:
    return ", ".join(label_name(task, y) for y in range(task.num_labels))


def eligible_messages(task: Task, samples: Sequence[tuple[int, str]]) -> list[dict[str, str]]:
    """Chat messages showing one cluster's `(label, text)` samples, numbered from 0 and delimited by
    `******`, asking which are eligible (fit their label, are real task texts, are not near copies of each
    other); the answer is to begin with `The eligible samples:` and list the indexes."""
    listing = "".join(f"{SEPARATOR}\n{i}.\nText: {text}\nLabel: {label_name(task, label)}.\n"
                      for i, (label, text) in enumerate(samples))
    user = (f"Task: {task.description}\nThe labels are: {_labels_line(task)}.\n"
            f"I will give you some samples, each {_subject(task)} with its label. The samples are indexed "
            f"starting from 0 and delimited by '{SEPARATOR}':\n{listing}{SEPARATOR}\n"
            "Please filter out samples that are not such texts or do not fit their label, and keep the samples "
            "that fit their label. Also filter out samples that are too similar to other samples, keeping the "
            f"most representative ones. Your answer should begin with '{ELIGIBLE}' followed by the indexes of "
            "the samples you keep, separated by spaces, with no duplicate index and no index above "
            f"{len(samples) - 1}.")
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class EligibleAnswer:
    """What a judge's answer says: the eligible indexes (None: the answer could not be read), and how many
    numbers named no listed sample (ignored)."""

    indexes: tuple[int, ...] | None
    out_of_range: int = 0


def _numbers(tokens: Sequence[str]) -> list[int] | None:
    """The indexes named by the leading run of numbers and ranges (`and` between them; words such as
    `samples` only before the first), up to the first other word (None: no number at all)."""
    found: list[int] = []
    for tok in tokens:
        tok = tok.strip(".,;:()[]{}#'\"")
        if not tok:
            continue
        if tok.isdigit():
            found.append(int(tok))
        elif (m := _RANGE.match(tok)) and int(m.group(2)) - int(m.group(1)) < 1000:
            found.extend(range(int(m.group(1)), int(m.group(2)) + 1))
        elif not (tok.lower() == "and" or (not found and tok.lower() in _FILLER)):
            break
    return found or None


def parse_eligible(answer: str, n: int) -> EligibleAnswer:
    """Read the indexes of `answer` about `n` listed samples. After `The eligible samples:` (any case), up
    to the next blank line: numbers and ranges (`0 2 5`, `0, 2 and 5`, `1-3`, `1 to 3`, `[0, 2]`) up to the
    first other word; `none` / `no` / `[]` is an empty selection, `all` every sample. Without that phrase,
    only a first line of nothing but numbers (not a lone list marker such as `0.`) is read. Anything else is
    unreadable (None). Numbers >= n are dropped and counted; duplicates count once."""
    text = answer.strip()
    marker = re.search(r"eligible samples?\s*(?:are|is)?\s*[:：]?", text, re.IGNORECASE)
    if marker:
        rest = re.split(r"\n\s*\n", text[marker.end():].strip(), maxsplit=1)[0].replace("\n", " ").strip()
    else:
        rest = text.split("\n", 1)[0].strip()
        if re.fullmatch(r"\d+\.", rest) or not (_ONLY_NUMBERS.fullmatch(rest) or _NONE.match(rest)):
            return EligibleAnswer(None)
    if _NONE.match(rest):
        return EligibleAnswer(())
    if re.match(r"^all\b", rest, re.IGNORECASE):
        return EligibleAnswer(tuple(range(n)))
    rest = re.sub(r"(\d)\s*(?:-|–|—|\.\.|to)\s*(\d)", r"\1-\2", rest)
    found = _numbers(re.split(r"[\s,;]+", rest))
    if found is None:
        return EligibleAnswer(None)
    unique = sorted(set(found))
    return EligibleAnswer(tuple(i for i in unique if i < n), sum(i >= n for i in unique))


def all_labels_messages(task: Task, demos: Sequence[tuple[int, str]], count: int) -> list[dict[str, str]]:
    """Chat messages with the `(label, text)` demonstrations, one `label: text` per line, asking for `count`
    new labelled samples in the same format that cover every label and neither copy nor resemble them."""
    shown = "\n".join(f"{label_name(task, label)}: {' '.join(text.split())}" for label, text in demos)
    user = (f"Task: {task.description}\nThe labels are: {_labels_line(task)}.\n"
            f"Here are examples, each {_subject(task)}, one per line, written as `label: text`:\n{shown}\n\n"
            f"Please write {count} new examples in exactly the same format, one per line, with examples for "
            "every label. Each must fit its label, and none may copy or resemble the examples above.")
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def all_labels_prompts(task: Task, demos: Sequence[Example], prompts: int, shots_per_label: int, count: int,
                       seed: int) -> list[list[dict[str, str]]]:
    """`prompts` all-labels prompts: each shows `shots_per_label` demonstrations of every label that has any,
    drawn from that label's `demos` without repetition until they are used up (then reshuffled), as the
    reference draws its few-shot samples."""
    by_label = {y: [d.text for d in demos if d.label == y] for y in range(task.num_labels)}
    by_label = {y: texts for y, texts in by_label.items() if texts}
    if not by_label:
        return []
    rng = random.Random(seed)
    queues: dict[int, list[str]] = {y: [] for y in by_label}
    out = []
    for _ in range(prompts):
        shown: list[tuple[int, str]] = []
        for y, texts in by_label.items():
            for _ in range(shots_per_label):
                if not queues[y]:
                    queues[y] = rng.sample(texts, len(texts))
                shown.append((y, queues[y].pop()))
        out.append(all_labels_messages(task, shown, count))
    return out


def _label_of(task: Task, name: str) -> int | None:
    key = name.strip().strip("*_`'\"[]<>").strip().lower()
    key = re.sub(r"^(label|category|class|sentiment|rating)\s*[:=]?\s*", "", key).strip()
    for y in range(task.num_labels):
        if key in (label_name(task, y).lower(), task.label_words[y].strip().lower()):
            return y
    return None


def parse_labelled_lines(task: Task, reply: str) -> tuple[list[tuple[int, str]], int]:
    """The `(label, text)` samples of an all-labels reply, one per `label: text` line (list bullets, numbers
    and markdown emphasis stripped; the label matched to a label name or verbalizer word, any case), and the
    number of non-empty lines that are not such a sample (preambles, unknown labels, empty texts)."""
    samples: list[tuple[int, str]] = []
    bad = 0
    for line in reply.splitlines():
        line = _BULLET.sub("", line.strip()).strip()
        if not line or set(line) <= set("*-=_#` "):
            continue
        head, sep, text = line.partition(":")
        label = _label_of(task, head) if sep else None
        text = text.strip().strip("*").strip().strip('"“”').strip()
        if label is None or not text:
            bad += 1
            continue
        samples.append((label, text))
    return samples, bad


def plain_prompt(messages: Sequence[dict[str, str]], answer_prefix: str = "") -> str:
    """Chat messages as one completion prompt (for a served model without a chat template): the contents in
    order, a blank line apart, then `answer_prefix`."""
    return "\n\n".join(m["content"] for m in messages) + "\n\n" + answer_prefix
