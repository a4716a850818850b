"""The served LLM evaluated through its own deployment, any adapter version: classification by verbalizer
log-likelihood (the same rule as the SLMs' evaluation), or as a noisy channel (the label under whose generation
prompt the text is likeliest), and perplexity on a general text set.

Both read the per-token log-probabilities of the `topk_logprobs` payload (k = 1), so a version published
a moment ago is evaluated exactly as it serves, without loading the model a second time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from estuary.data.task import Example, Task


def _text_logprob(item: Any, start: int) -> float:
    return float(sum(lp for lp in item.token_logprobs[start:] if lp is not None))


def llm_predict(llm: Any, task: Task, examples: Sequence[Example], *, adapter: str | None = None,
                batch: int = 64, rule: str = "direct") -> list[int]:
    """The served LLM's label for each example. `direct`: the label word with the highest log-likelihood after
    the prompt (the same rule as the SLMs' evaluation). `channel`: the label whose label-conditioned generation
    prompt (the one CrossLM's LLM writes from and is trained on) gives the text the highest log-likelihood,
    i.e. argmax_y p(text | y) under a uniform prior (noisy-channel prompting, Min et al. 2022)."""
    if task.kind != "classification":
        raise ValueError(f"task {task.name!r} is not a classification task")
    if rule not in ("direct", "channel"):
        raise ValueError(f"rule must be direct or channel (got {rule!r})")
    if rule == "channel":
        return _channel_predict(llm, task, examples, adapter=adapter, batch=batch)
    preds: list[int] = []
    per = 1 + task.num_labels
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        texts: list[str] = []
        for ex in chunk:
            prompt = task.prompt(ex)
            texts += [prompt] + [prompt + word for word in task.label_words]
        items = llm.topk_logprobs(texts, k=1, adapter=adapter).texts
        for i in range(len(chunk)):
            n_prompt = len(items[i * per].token_ids)
            scores = [_text_logprob(items[i * per + 1 + j], n_prompt) for j in range(task.num_labels)]
            preds.append(max(range(task.num_labels), key=scores.__getitem__))
    return preds


def _channel_predict(llm: Any, task: Task, examples: Sequence[Example], *, adapter: str | None,
                     batch: int) -> list[int]:
    from estuary.knowledge.prompts import generation_prompt

    if any(ex.text_pair is not None for ex in examples):
        raise ValueError(f"task {task.name!r}: the channel rule scores single texts (no text_pair)")
    prompts = [generation_prompt(task, y) for y in range(task.num_labels)]
    n_prompt = [len(item.token_ids) for item in llm.topk_logprobs(prompts, k=1, adapter=adapter).texts]
    preds: list[int] = []
    step = max(1, batch // task.num_labels)
    for start in range(0, len(examples), step):
        chunk = examples[start:start + step]
        items = llm.topk_logprobs([p + " " + ex.text.strip() for ex in chunk for p in prompts], k=1,
                                  adapter=adapter).texts
        for i in range(len(chunk)):
            scores = [_text_logprob(items[i * task.num_labels + y], n_prompt[y]) for y in range(task.num_labels)]
            preds.append(max(range(task.num_labels), key=scores.__getitem__))
    return preds


def llm_classify(llm: Any, task: Task, examples: Sequence[Example], *, adapter: str | None = None,
                 batch: int = 64, rule: str = "direct") -> dict[str, float]:
    """accuracy and macro_f1 of the served LLM's labels under `rule` (see `llm_predict`)."""
    from sklearn.metrics import f1_score

    labelled = [ex for ex in examples if ex.label is not None]
    gold = [int(ex.label) for ex in labelled if ex.label is not None]
    preds = llm_predict(llm, task, labelled, adapter=adapter, batch=batch, rule=rule)
    correct = sum(p == g for p, g in zip(preds, gold, strict=True))
    return {"accuracy": correct / max(1, len(gold)),
            "macro_f1": float(f1_score(gold, preds, average="macro")) if gold else 0.0, "n": float(len(gold))}


def llm_perplexity(llm: Any, texts: Sequence[str], *, adapter: str | None = None, batch: int = 64) -> dict[str, float]:
    """Token-level perplexity of the served LLM on `texts` (the first token of each text has no context)."""
    total, count = 0.0, 0
    for start in range(0, len(texts), batch):
        for item in llm.topk_logprobs(list(texts[start:start + batch]), k=1, adapter=adapter).texts:
            lps = [lp for lp in item.token_logprobs[1:] if lp is not None]
            total -= sum(lps)
            count += len(lps)
    return {"perplexity": math.exp(total / count) if count else float("nan"), "tokens": float(count)}
