"""DistilDP on the clients (Flemings & Annavaram 2024): the DP teacher's knowledge on its own synthetic text,
and the student's training on the pooled synthetic text with hard labels, soft labels and hidden states.

Teacher side, in the client that owns the private data: `ClientContext.dp_synthesize` DP-trains the client's
generator once (a LoRA adapter on the teacher model, `DistilDP.generator_model`; None: the client's SLM),
charging the client's ledger, and samples text from it. With the DP adapter loaded, the teacher then reads
each kept sample and gives, at every token, its top-k next-token distribution and its last layer's hidden
state. The samples and everything computed from them and the DP model are post-processing of a DP
mechanism, so they may leave the client. The client holds both tokenizers, so it carries the teacher's rows
into the student's tokenisation there: positions paired where both tokenisations end a token at the same
point of the text (character edit distance) and, when the vocabularies differ, FedMKT's
minimum-edit-distance vocabulary mapping (`estuary.knowledge.alignment`).

Student side: the client's SLM adapter learns only from the pooled synthetic text (never from private data,
so it carries the teachers' guarantees) with `estuary.lm.distill.distill_steps`:
(1-λ)·CE(hard labels) + λ·KL(teacher top-k ‖ student) + β·hidden-state MSE (through a learned projection
kept in the client's state when the widths differ; β = 0 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from estuary.client.dp_generator import generator_examples, generator_task
from estuary.data.samples import parse_sample
from estuary.data.task import Example, Task
from estuary.lm.distill import DistillExample, DistillResult, distill_example, distill_steps
from estuary.lm.encoding import collate, encode, length_batches, model_device, padding_id
from estuary.lm.objective import KDReduction

if TYPE_CHECKING:
    from estuary.client.context import ClientContext

PROJECTION_KEY = "distildp_projection"  # ClientState.extra: the student → teacher hidden-state projection
HARD_KEY = "distildp_hard_labels"  # ClientState.extra: the hard-label-only twin student (adapter, optimizer)


@dataclass(frozen=True)
class TeacherTarget:
    """One synthetic sample with its teacher's knowledge in the student's tokenisation (what crosses the wire)."""

    example: Example  # the sample as a task example (E2E: meaning representation + target)
    student_model: str  # the model whose tokenisation the rows are in
    input_ids: list[int]  # the student's tokens of the example
    start: int  # where the completion starts (hard labels and soft targets from start - 1 on)
    topk_ids: list[list[int]]  # per student position: the teacher's top-k ids in the student's vocabulary
    topk_logprobs: list[list[float]]
    hidden: np.ndarray  # [len(input_ids), teacher width] float16: the teacher's last hidden state
    hidden_mask: tuple[bool, ...]  # positions that carry a teacher state
    coverage: float  # share of student positions aligned one-to-one to an equal teacher token


def synthetic_example(task: Task, text: str, uid: str) -> Example | None:
    """A generated sample as an example of `task` (None: it does not split into prompt and target). Unconditional
    text tasks take the text as it is; tasks with targets split it as the card says (`estuary.data.samples`:
    E2E's `sample_pattern`, else the card's own template)."""
    return parse_sample(task, text, uid)


def _teacher_pass(model: Any, tokenizer: Any, seqs: list[tuple[list[int], int]], k: int,
                  batch_size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per sequence: top-k ids [L, k], their log-probabilities [L, k] and the last hidden state [L, D]."""
    vocab = len(tokenizer)
    device = model_device(model)
    out: list[Any] = [None] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in length_batches([len(ids) for ids, _ in seqs], batch_size):
                input_ids, mask = collate([seqs[i] for i in batch], padding_id(tokenizer), device)
                res = model(input_ids=input_ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
                for row, i in enumerate(batch):
                    n = len(seqs[i][0])
                    logp = torch.log_softmax(res.logits[row, :n, :vocab].float(), dim=-1)
                    top = torch.topk(logp, min(k, vocab), dim=-1)
                    hidden = res.hidden_states[-1][row, :n].float().cpu().numpy().astype(np.float16)
                    out[i] = (top.indices.cpu().numpy(), top.values.cpu().numpy(), hidden)
    finally:
        model.train(was_training)
    return out


def teacher_targets(teacher: Any, teacher_tok: Any, student_tok: Any, task: Task, examples: list[Example],
                    raw_texts: list[str], *, student_model: str, k: int, max_length: int,
                    batch_size: int) -> list[TeacherTarget]:
    """The teacher's rows on each sample (read in its own generator format, `Label: text\\nText: <sample>`),
    carried to the student's tokenisation of the sample as a task example. Rows and hidden states are kept
    where the student learns: the positions that predict a completion token."""
    from estuary.knowledge.alignment import (
        cached_vocab_mapping,
        position_map,
        same_vocabulary,
        token_texts,
        transfer_topk,
    )

    t_seqs = encode(teacher_tok, generator_task(task), generator_examples(task, [Example(text=t) for t in raw_texts]),
                    max_length=max_length)
    s_seqs = encode(student_tok, task, examples, max_length=max_length)
    passes = _teacher_pass(teacher, teacher_tok, t_seqs, k, batch_size)
    same = same_vocabulary(teacher_tok, student_tok)
    mapping = np.arange(len(teacher_tok)) if same else cached_vocab_mapping(teacher_tok, student_tok).ids
    t_texts, s_texts = token_texts(teacher_tok), (None if same else token_texts(student_tok))
    out = []
    for ex, (t_ids, _), (s_ids, start), (top_ids, top_lps, hidden) in zip(examples, t_seqs, s_seqs, passes,
                                                                          strict=True):
        a = [t_texts[i] if i < len(t_texts) else "" for i in t_ids]
        b = [(s_texts if s_texts is not None else t_texts)[i] for i in s_ids]
        src, coverage = position_map(a, b)
        learn = [max(start, 1) - 1 <= j < len(s_ids) - 1 for j in range(len(s_ids))]
        src = [i if keep else -1 for i, keep in zip(src, learn, strict=True)]
        rows = transfer_topk(top_ids.tolist(), top_lps.tolist(), src, mapping)
        h = np.zeros((len(s_ids), hidden.shape[1]), dtype=np.float16)
        mask = tuple(i >= 0 for i in src)
        for j, i in enumerate(src):
            if i >= 0:
                h[j] = hidden[i]
        out.append(TeacherTarget(ex, student_model, list(s_ids), start, rows[0], rows[1], h, mask, coverage))
    return out


def client_teacher_targets(ctx: ClientContext, raw: list[Example], *, k: int) -> tuple[list[TeacherTarget], int]:
    """The client's DP teacher (its saved generator adapter) reads its own samples; (targets, unparsable)."""
    from estuary.client.dp_ops import GENERATOR_KEY
    from estuary.lm.model import adapter_state, load_adapter_state

    saved = ctx.state.extra[GENERATOR_KEY]
    examples = [synthetic_example(ctx.task, ex.text, ex.uid or "") for ex in raw]
    kept = [(ex, r.text) for ex, r in zip(examples, raw, strict=True) if ex is not None]
    if not kept:
        return [], len(raw)
    teacher, t_tok = ctx.model_for(saved["model"])
    own = adapter_state(teacher)
    load_adapter_state(teacher, saved["adapter"])
    try:
        targets = teacher_targets(
            teacher, t_tok, ctx.tokenizer, ctx.task, [e for e, _ in kept], [t for _, t in kept],
            student_model=ctx.state.model, k=k, max_length=ctx.exp.training.max_length,
            batch_size=ctx.exp.evaluation.batch_size)
    finally:
        load_adapter_state(teacher, own)
    return targets, len(raw) - len(kept)


def _projection(ctx: ClientContext, teacher_width: int, seed: int) -> torch.nn.Parameter | None:
    """The student → teacher hidden projection [Dt, Ds] (None when the widths agree), from the client state."""
    student_width = int(ctx.model.config.hidden_size)
    if student_width == teacher_width:
        return None
    saved = ctx.state.extra.get(PROJECTION_KEY)
    if saved is not None and tuple(saved.shape) == (teacher_width, student_width):
        weight = saved.clone().float()
    else:
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn((teacher_width, student_width), generator=gen) / student_width**0.5
    return torch.nn.Parameter(weight.to(next(p for _, p in ctx.model.named_parameters()).device))


def student_distill(ctx: ClientContext, rnd: int, targets: list[TeacherTarget], *, steps: int,
                    distill_weight: float, hidden_weight: float, temperature: float, tail_bucket: bool,
                    optimizer_state: dict[str, Any] | None, purpose: str,
                    kd_reduction: KDReduction = "token_mean") -> DistillResult:
    """`steps` of the client's adapter on the pooled synthetic samples (hard labels on the completion; the KL
    reduced by `kd_reduction`, see `estuary.lm.objective.topk_kl_loss`)."""
    foreign = sorted({t.student_model for t in targets} - {ctx.state.model})
    if foreign:
        raise ValueError(f"client {ctx.client_id} ({ctx.state.model}) got DistilDP targets tokenised for "
                         f"{foreign[0]}: every DistilDP student must use one client model")
    examples: list[DistillExample] = []
    for t in targets:
        base = distill_example(t.input_ids, t.start, (t.topk_ids, t.topk_logprobs), lm_loss="completion")
        examples.append(DistillExample(base.input_ids, base.labels, base.topk_ids, base.topk_logprobs,
                                       t.hidden, t.hidden_mask))
    width = int(targets[0].hidden.shape[1])
    projection = _projection(ctx, width, ctx.seed(rnd, "distildp-projection")) if hidden_weight > 0 else None
    tr = ctx.exp.training
    result = distill_steps(
        ctx.model, ctx.tokenizer, examples, steps=steps, batch_size=tr.batch_size, lr=tr.lr,
        seed=ctx.seed(rnd, purpose), distill_weight=distill_weight, temperature=temperature,
        tail_bucket=tail_bucket, optimizer_state=optimizer_state, weight_decay=tr.weight_decay,
        hidden_weight=hidden_weight, projection=projection, kd_reduction=kd_reduction)
    if projection is not None:
        ctx.state.extra[PROJECTION_KEY] = projection.detach().cpu().clone()
    return result
