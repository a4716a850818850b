"""Prompts the server LLM gets for task data: label-conditioned generation, few-shot augmentation, judging.

Generation and augmentation prompts are plain completions that end in `Text:`; the answer is read up to the
first newline, so they work the same on base and instruct models. Augmentation prompts for one label share
their header and all but the last demonstration, so vLLM's prefix cache serves the shared part once.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from estuary.data.task import Example, Task

_MARKERS = ("Text:", "Label:", "label:")


def label_name(task: Task, label: int) -> str:
    """The human name of a label (its name if the task has names, else its verbalizer word)."""
    names = task.label_names or tuple(w.strip() for w in task.label_words)
    return str(names[label])


def _header(task: Task, label: int) -> str:
    return (f"{task.description}\nEach line below is a different, realistic example text whose label is "
            f"\"{label_name(task, label)}\".\n")


def generation_prompt(task: Task, label: int) -> str:
    """A zero-shot, label-conditioned prompt (CrossLM's LLM data generation)."""
    return _header(task, label) + "Text:"


def augmentation_prompts(task: Task, demos: Sequence[Example], label: int, count: int, shots: int,
                         seed: int) -> list[str]:
    """`count` few-shot prompts for `label`: a shared header and `shots - 1` shared demonstrations, then one
    demonstration that varies per prompt, then `Text:`. Demonstrations are this label's `demos`."""
    own = [d.text for d in demos if d.label == label]
    if not own:
        return []
    rng = random.Random(seed * 1_000_003 + label)
    rng.shuffle(own)
    shared = own[: max(0, min(shots - 1, len(own) - 1))]
    rest = own[len(shared):] or own
    base = _header(task, label) + "".join(f"Text: {t}\n" for t in shared)
    return [base + f"Text: {rest[i % len(rest)]}\nText:" for i in range(count)]


def judge_messages(task: Task, label: int, texts: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking the LLM whether a cluster of texts fits `label` (answer: Yes or No)."""
    name = label_name(task, label)
    listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
    return [
        {"role": "system", "content": "You check the quality of labelled data for a text classification task."},
        {"role": "user", "content": (
            f"Task: {task.description}\nThese texts are all labelled \"{name}\":\n{listing}\n\n"
            f"Do these texts, taken together, really belong to the label \"{name}\"? Answer Yes or No.")},
    ]


def parse_verdict(answer: str) -> bool | None:
    """Yes → True, No → False, anything else → None (unclear)."""
    words = re.findall(r"[a-z]+", answer.lower())
    if not words:
        return None
    return True if words[0] == "yes" else False if words[0] == "no" else None


def parse_sample(text: str) -> str:
    """The generated example: the completion up to its first newline, stripped; '' when malformed."""
    line = text.split("\n", 1)[0].strip().strip('"').strip()
    return "" if any(m in line for m in _MARKERS) else line
