"""A client's side of distillation (FedMKT, DistilDP): its SLM's top-k knowledge on public texts, as the wire
payload, and its LoRA trained towards the server-chosen targets (`estuary.lm.distill.distill_steps`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from estuary.data.task import Example, Task
from estuary.lm.distill import DistillResult, Rows, distill_example, distill_steps
from estuary.lm.encoding import Encoded, collate, encode, length_batches, model_device, padding_id
from estuary.serve.types import PositionTopK, TextTopK, TopKLogprobs

if TYPE_CHECKING:
    from estuary.client.context import ClientContext


def _token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Raw vocabulary strings of `ids` ("" for an id past the tokenizer's vocabulary, e.g. padded embeddings)."""
    return [t if isinstance(t, str) else "" for t in tokenizer.convert_ids_to_tokens(list(ids))]


def topk_knowledge(model: Any, tokenizer: Any, seqs: Sequence[Encoded], texts: Sequence[str], *, k: int,
                   batch_size: int) -> list[TextTopK]:
    """For each sequence: its tokens, log p(token t | tokens < t) and the top-k next-token distribution at
    every position (k capped at the vocabulary size). No gradient; the model's mode is restored."""
    pad = padding_id(tokenizer)
    device = model_device(model)
    out: list[TextTopK | None] = [None] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in length_batches([len(ids) for ids, _ in seqs], batch_size):
                input_ids, mask = collate([seqs[i] for i in batch], pad, device)
                logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                for row, i in enumerate(batch):
                    ids = seqs[i][0]
                    logp = torch.log_softmax(logits[row, : len(ids)].float(), dim=-1)  # one row at a time
                    top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
                    nxt = torch.tensor(ids[1:], dtype=torch.long, device=logp.device)
                    token_lps = logp[torch.arange(len(ids) - 1, device=logp.device), nxt].tolist()
                    top_ids, top_lps = top.indices.tolist(), top.values.tolist()
                    out[i] = TextTopK(
                        text=texts[i], token_ids=list(ids), tokens=_token_strings(tokenizer, ids),
                        token_logprobs=[None, *token_lps],
                        topk=[PositionTopK(ids=a, tokens=_token_strings(tokenizer, a), logprobs=b)
                              for a, b in zip(top_ids, top_lps, strict=True)])
    finally:
        model.train(was_training)
    return [t for t in out if t is not None]


def public_sequences(tokenizer: Any, task: Task, public: Sequence[Example], max_length: int) -> list[Encoded]:
    """The client's tokenisation of each public example (prompt + label word, as in its training)."""
    return encode(tokenizer, task, public, max_length=max_length)


def client_topk(ctx: ClientContext, public: Sequence[Example], k: int) -> dict[str, Any]:
    """The client's SLM top-k on the public texts, as a TopKLogprobs payload dict (what crosses the wire)."""
    seqs = public_sequences(ctx.tokenizer, ctx.task, public, ctx.exp.training.max_length)
    texts = [ctx.task.prompt(ex) + ctx.task.completion(ex) for ex in public]
    items = topk_knowledge(ctx.model, ctx.tokenizer, seqs, texts, k=k, batch_size=ctx.exp.evaluation.batch_size)
    k_eff = len(items[0].topk[0].ids) if items and items[0].topk else k
    payload = TopKLogprobs(model=ctx.state.model, adapter=None, k=k_eff, engine="transformers",
                           dtype=ctx.exp.models.dtype, texts=items)
    return payload.to_dict()


def client_distill(ctx: ClientContext, rnd: int, public: Sequence[Example], targets: Sequence[Rows | None], *,
                   steps: int, distill_weight: float, temperature: float = 1.0, tail_bucket: bool = True,
                   lm_loss: str = "text") -> DistillResult | None:
    """Train the client's LoRA on the public texts towards the server-chosen targets (one per public example,
    in the client's own tokenisation; None = no target for that example), its state carried over like
    `ClientContext.train_steps`. None when no example has a target that fits the client's tokenisation."""
    tr = ctx.exp.training
    seqs = public_sequences(ctx.tokenizer, ctx.task, public, tr.max_length)
    examples = [distill_example(ids, start, rows, lm_loss=lm_loss)
                for (ids, start), rows in zip(seqs, targets, strict=True)
                if rows is not None and len(rows[0]) == len(ids)]
    if not examples or steps == 0:
        return None
    result = distill_steps(
        ctx.model, ctx.tokenizer, examples, steps=steps, batch_size=tr.batch_size, lr=tr.lr,
        seed=ctx.seed(rnd, "distill"), distill_weight=distill_weight, temperature=temperature,
        tail_bucket=tail_bucket, optimizer_state=ctx.state.optimizer if tr.keep_optimizer_state else None,
        weight_decay=tr.weight_decay)
    ctx.state.optimizer = result.optimizer_state if tr.keep_optimizer_state else None
    ctx.state.steps_trained += steps
    ctx.trained = True
    return result
