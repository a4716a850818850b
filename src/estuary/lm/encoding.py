"""Turning examples into token sequences, and batching them.

Conventions used throughout `estuary.lm`:
- A sequence is `(ids, start)`: prompt ids (with the tokenizer's special tokens) followed by completion
  ids (without), and the index where the completion begins. Loss/scores cover ids[start:] only.
- Batches are right-padded explicitly (the tokenizer's `padding_side` is never consulted) with an
  attention mask; causal attention means padding on the right never changes the real positions.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from estuary.data.task import Example, Task

Encoded = tuple[list[int], int]  # (token ids of prompt + completion, index where the completion starts)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _prompt_parts(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[int], list[int]]:
    """(leading special ids such as BOS, text ids, trailing special ids) of a prompt."""
    body = _ids(tokenizer, text, special=False)
    full = _ids(tokenizer, text, special=True)
    if not body:
        return full, [], []
    for k in range(len(full) - len(body) + 1):
        if full[k : k + len(body)] == body:
            return full[:k], body, full[k + len(body) :]
    return [], full, []  # a post-processor that rewrites the text ids: treat everything as text


def _template_suffix(template: str) -> str:
    """Literal text after the template's last placeholder, e.g. "\\nSentiment:"."""
    parts = list(string.Formatter().parse(template))
    if parts and parts[-1][1] is None:
        return parts[-1][0]
    return ""


def _split(task: Task, example: Example) -> tuple[str, str]:
    """(prompt text, completion text); generation without a target scores the whole prompt text."""
    if task.kind == "generation" and example.target is None:
        return "", task.prompt(example)
    return task.prompt(example), task.completion(example)


def _fit(
    lead: list[int],
    body: list[int],
    trail: list[int],
    completion: list[int],
    *,
    max_length: int,
    keep_tail: int,
) -> Encoded:
    """Concatenate, dropping prompt-text tokens from the middle (and, if still needed, the end of
    the completion) so that the result has at most `max_length` tokens."""
    special = len(lead) + len(trail)
    total = special + len(body) + len(completion)
    if total > max_length:
        prompt_len = special + len(body)
        # The prompt keeps at least half the budget (or all of itself if shorter); the completion the rest.
        prompt_budget = max(max_length - len(completion), min(prompt_len, max_length // 2))
        completion = completion[: max_length - prompt_budget]
        text_budget = prompt_budget - special
        if text_budget < 0 or not completion:
            raise ValueError(f"max_length={max_length} is too small for this prompt and completion")
        if len(body) > text_budget:
            tail = min(text_budget, max(text_budget // 2, keep_tail))
            head = text_budget - tail
            body = body[:head] + (body[len(body) - tail :] if tail else [])
    prompt = lead + body + trail
    return prompt + completion, len(prompt)


def encode(
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    max_length: int,
) -> list[Encoded]:
    """Token ids of prompt + completion and the index where the completion starts, per example.

    Prompt ids carry the tokenizer's special tokens (e.g. BOS); completion ids do not, and are
    concatenated as ids (the text is never re-tokenized as a whole). Classification completes with
    the label word, generation with the target (or, without a target, the whole text is the
    completion after an empty prompt). If too long, tokens are dropped from the middle of the
    prompt's text, keeping any BOS, the start of the prompt and its final tokens (the template
    suffix such as "\\nSentiment:"); an over-long completion loses its end.
    """
    keep_tail = len(_ids(tokenizer, _template_suffix(task.template), special=False)) + 2
    out: list[Encoded] = []
    for example in examples:
        prompt_text, completion_text = _split(task, example)
        lead, body, trail = _prompt_parts(tokenizer, prompt_text)
        completion = _ids(tokenizer, completion_text, special=False)
        out.append(_fit(lead, body, trail, completion, max_length=max_length, keep_tail=keep_tail))
    return out


def encode_choices(
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    completions: Sequence[list[int]],
    *,
    max_length: int,
) -> list[list[Encoded]]:
    """For each example, its prompt followed by each of `completions` (label words), the prompt
    truncated once for the longest completion so every label sees the same prompt."""
    keep_tail = len(_ids(tokenizer, _template_suffix(task.template), special=False)) + 2
    longest = max(len(c) for c in completions)
    out = []
    for example in examples:
        lead, body, trail = _prompt_parts(tokenizer, task.prompt(example))
        ids, start = _fit(lead, body, trail, [0] * longest, max_length=max_length, keep_tail=keep_tail)
        prompt = ids[:start]
        out.append([(prompt + list(c), start) for c in completions])
    return out


def label_token_ids(tokenizer: PreTrainedTokenizerBase, task: Task) -> list[list[int]]:
    """Token ids of each label word, tokenized on its own without special tokens."""
    if task.kind != "classification" or task.num_labels < 2:
        raise ValueError(f"task {task.name!r} is not a classification task with at least 2 label words")
    ids = [_ids(tokenizer, word, special=False) for word in task.label_words]
    empty = [w for w, i in zip(task.label_words, ids, strict=True) if not i]
    if empty:
        raise ValueError(f"label words {empty} tokenize to nothing")
    return ids


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches are right-padded with (masked out of attention and loss): the pad token, else EOS.

    Raises ValueError when the tokenizer has neither (the preflight, `estuary.platform.model_fit`, refuses such
    a model before any worker starts)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    raise ValueError("the tokenizer has neither a pad token nor an EOS token; add \"pad_token\" to its "
                     "tokenizer_config.json")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def collate(seqs: Sequence[Encoded], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (input_ids, attention_mask), both [B, T] long."""
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (ids, _) in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); order restored by callers."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
