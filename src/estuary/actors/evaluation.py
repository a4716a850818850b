"""Turning examples into token sequences, and scoring a causal LM on them.

Pure torch/transformers: no Ray. `estuary.actors.slm` re-exports `encode`, `evaluate` and
`predict_label_probs`; this module holds them (and the batching/scoring core that training shares) so
that `slm.py` stays about model construction, adapters and training.

Conventions used throughout:
- A sequence is `(ids, start)`: prompt ids (with the tokenizer's special tokens) followed by completion
  ids (without), and the index where the completion begins. Loss/scores cover ids[start:] only.
- Batches are right-padded explicitly (the tokenizer's `padding_side` is never consulted) with an
  attention mask; causal attention means padding on the right never changes the real positions.
- Only the logits at the positions that predict completion tokens are computed when the model's
  forward accepts `logits_to_keep` (transformers >= 4.50 causal LMs): the LM head over a 49k vocab is
  otherwise a fifth of SmolLM2's compute and most of its activation memory.
"""

from __future__ import annotations

import inspect
import math
import string
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from estuary.data.task import Example, Task

Encoded = tuple[list[int], int]  # (token ids of prompt + completion, index where the completion starts)


# ----------------------------------------------------------------------------------------- encoding


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


def _encode_with_completions(
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


# ------------------------------------------------------------------------------ forward & scoring


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def collate(seqs: Sequence[Encoded], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (input_ids, attention_mask), both [B, T] long."""
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (ids, _) in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def completion_token_logprobs(
    model: PreTrainedModel | torch.nn.Module,
    seqs: Sequence[Encoded],
    *,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of every completion token of a batch, in one forward pass.

    Returns (logprobs [N] float32, row [N] long): one entry per scored token, `row` naming its
    sequence. Token t (t >= max(start, 1)) is predicted from the logits at t - 1; the first token
    of a sequence without any prompt has no context and is not scored. Differentiable (no grad
    mode is chosen here).
    """
    device = model_device(model)
    input_ids, mask = collate(seqs, pad_id, device)
    rows: list[int] = []
    positions: list[int] = []  # logit positions (t - 1)
    targets: list[int] = []
    for row, (ids, start) in enumerate(seqs):
        for t in range(max(start, 1), len(ids)):
            rows.append(row)
            positions.append(t - 1)
            targets.append(ids[t])
    if not rows:
        raise ValueError("no completion tokens to score (empty completions)")
    row_t = torch.tensor(rows, dtype=torch.long, device=device)
    pos_t = torch.tensor(positions, dtype=torch.long, device=device)
    kwargs: dict[str, object] = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
    if _accepts_logits_to_keep(model):
        keep = torch.unique(pos_t)  # sorted
        kwargs["logits_to_keep"] = keep
        col_t = torch.searchsorted(keep, pos_t)
    else:
        col_t = pos_t
    logits = model(**kwargs).logits  # [B, K, V]
    picked = logits[row_t, col_t].float()  # [N, V]
    tgt = torch.tensor(targets, dtype=torch.long, device=device)
    logprobs = -F.cross_entropy(picked, tgt, reduction="none")
    return logprobs, row_t


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); order restored by callers."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _sequence_logprob_sums(
    model: torch.nn.Module, seqs: Sequence[Encoded], *, pad_id: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: (sum of completion-token log-probs, number of scored tokens), float64 on CPU."""
    sums = torch.zeros(len(seqs), dtype=torch.float64)
    counts = torch.zeros(len(seqs), dtype=torch.float64)
    for batch in _length_batches([len(ids) for ids, _ in seqs], batch_size):
        logprobs, rows = completion_token_logprobs(model, [seqs[i] for i in batch], pad_id=pad_id)
        index = torch.tensor(batch, dtype=torch.long)[rows.cpu()]
        sums.index_add_(0, index, logprobs.detach().cpu().double())
        counts.index_add_(0, index, torch.ones_like(logprobs, dtype=torch.float64).cpu())
    return sums, counts


def _single_token_scores(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    label_ids: Sequence[int],
    *,
    pad_id: int,
    batch_size: int,
) -> torch.Tensor:
    """Fast path: log p(label token | prompt) read from the next-token logits after each prompt."""
    scores = torch.zeros((len(prompts), len(label_ids)), dtype=torch.float64)
    device = model_device(model)
    labels = torch.tensor(list(label_ids), dtype=torch.long, device=device)
    use_keep = _accepts_logits_to_keep(model)
    for batch in _length_batches([len(p) for p in prompts], batch_size):
        seqs = [(prompts[i], len(prompts[i])) for i in batch]
        input_ids, mask = collate(seqs, pad_id, device)
        last = torch.tensor([len(p) - 1 for p, _ in seqs], dtype=torch.long, device=device)
        kwargs: dict[str, object] = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
        if use_keep:
            keep = torch.unique(last)
            kwargs["logits_to_keep"] = keep
            col = torch.searchsorted(keep, last)
        else:
            col = last
        logits = model(**kwargs).logits
        picked = logits[torch.arange(len(seqs), device=device), col].float()
        logprobs = torch.log_softmax(picked, dim=-1)[:, labels]
        scores[torch.tensor(batch, dtype=torch.long)] = logprobs.cpu().double()
    return scores


def label_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_length: int = 256,
    force_general: bool = False,
) -> torch.Tensor:
    """[n, num_labels] float64 scores: sum of log-probs of each label word's tokens after the prompt.

    Single-token label words take one forward per example (next-token logits at the last prompt
    position); otherwise (or with `force_general`) each prompt + label word is scored as a sequence.
    Runs under `torch.inference_mode` with the model in eval mode (its mode is restored after).
    """
    if not examples:
        return torch.zeros((0, task.num_labels), dtype=torch.float64)
    label_ids = label_token_ids(tokenizer, task)
    pad_id = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            per_example = _encode_with_completions(tokenizer, task, examples, label_ids, max_length=max_length)
            if all(len(ids) == 1 for ids in label_ids) and not force_general:
                prompts = [pairs[0][0][: pairs[0][1]] for pairs in per_example]
                return _single_token_scores(
                    model, prompts, [ids[0] for ids in label_ids], pad_id=pad_id, batch_size=batch_size
                )
            flat = [seq for pairs in per_example for seq in pairs]
            sums, _ = _sequence_logprob_sums(model, flat, pad_id=pad_id, batch_size=batch_size)
            return sums.view(len(examples), task.num_labels)
    finally:
        model.train(was_training)


def predict_label_probs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_length: int = 256,
) -> torch.Tensor:
    """[n, num_labels] float32 CPU probabilities: softmax over the label-word scores."""
    scores = label_scores(model, tokenizer, task, examples, batch_size=batch_size, max_length=max_length)
    return torch.softmax(scores, dim=-1).float()


def evaluate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_length: int = 256,
) -> dict[str, float]:
    """Metrics of the model on `examples`.

    Classification: `accuracy`, `macro_f1` (sklearn, over the labels present), `loss` (mean
    -log softmax of the true label over the label scores) and `n`. Generation: `perplexity`
    (exp of the mean token cross-entropy over completion tokens), `loss` (that mean) and `n`.
    """
    n = len(examples)
    if n == 0:
        raise ValueError("evaluate() needs at least one example")
    if task.kind == "classification":
        scores = label_scores(model, tokenizer, task, examples, batch_size=batch_size, max_length=max_length)
        truth = torch.tensor([_label(e) for e in examples], dtype=torch.long)
        log_probs = torch.log_softmax(scores, dim=-1)
        pred = scores.argmax(dim=-1)
        return {
            "accuracy": float((pred == truth).double().mean()),
            "macro_f1": float(f1_score(truth.numpy(), pred.numpy(), average="macro", zero_division=0)),
            "loss": float(-log_probs[torch.arange(n), truth].mean()),
            "n": float(n),
        }
    seqs = encode(tokenizer, task, examples, max_length=max_length)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            pad_id = _pad_id(tokenizer)
            sums, counts = _sequence_logprob_sums(model, seqs, pad_id=pad_id, batch_size=batch_size)
    finally:
        model.train(was_training)
    loss = float(-sums.sum() / counts.sum().clamp(min=1))
    return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "n": float(n)}


def _label(example: Example) -> int:
    if example.label is None:
        raise ValueError(f"{example.uid or example.text[:40]!r}: classification example without a label")
    return example.label
