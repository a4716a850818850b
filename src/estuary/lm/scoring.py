"""Scoring a causal LM on encoded examples: completion log-probabilities, label scores, evaluation metrics.

Only the logits at the positions that predict completion tokens are computed when the model's forward
accepts `logits_to_keep` (transformers >= 4.50 causal LMs): the LM head over a 49k vocab is otherwise a
fifth of SmolLM2's compute and most of its activation memory.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from estuary.data.task import Example, Task
from estuary.lm.encoding import (
    Encoded,
    collate,
    encode,
    encode_choices,
    label_token_ids,
    length_batches,
    model_device,
    padding_id,
)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


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


def _sequence_logprob_sums(
    model: torch.nn.Module, seqs: Sequence[Encoded], *, pad_id: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: (sum of completion-token log-probs, number of scored tokens), float64 on CPU."""
    sums = torch.zeros(len(seqs), dtype=torch.float64)
    counts = torch.zeros(len(seqs), dtype=torch.float64)
    for batch in length_batches([len(ids) for ids, _ in seqs], batch_size):
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
    for batch in length_batches([len(p) for p in prompts], batch_size):
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
    pad_id = padding_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            per_example = encode_choices(tokenizer, task, examples, label_ids, max_length=max_length)
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
            pad_id = padding_id(tokenizer)
            sums, counts = _sequence_logprob_sums(model, seqs, pad_id=pad_id, batch_size=batch_size)
    finally:
        model.train(was_training)
    loss = float(-sums.sum() / counts.sum().clamp(min=1))
    return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "n": float(n)}


def _label(example: Example) -> int:
    if example.label is None:
        raise ValueError(f"{example.uid or example.text[:40]!r}: classification example without a label")
    return example.label
