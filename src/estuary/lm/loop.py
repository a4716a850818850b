"""The one training loop of Estuary's language models, and plain (supervised) training built on it.

`TrainingLoop` owns what every kind of local training shares: AdamW over the model's trainable (adapter)
parameters, resumed from an exported optimizer state (its moments and step counter, so 2 + 2 steps with a
hand-off equal 4 steps in one go), the model's train/eval mode (restored afterwards), a seeded RNG scope per
step (dropout masks from (seed, step, tag), the caller's RNG untouched), an optional linear learning-rate
decay, and the per-step record. A kind of training is only its step: `train_steps` here (completion-token
cross-entropy), `estuary.lm.distill.distill_steps` (the mixed LM + top-k KD + hidden-state loss), and
`estuary.privacy.dp_sgd.dp_train_steps` (Poisson batches, clipped and noised by Opacus).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from estuary.data.task import Example, Task
from estuary.lm.encoding import Encoded, encode, model_device, padding_id
from estuary.lm.model import trainable_parameters
from estuary.lm.optim import adamw, export_optimizer
from estuary.lm.scoring import completion_token_logprobs
from estuary.lm.seeding import batch_indices, mix_seed, rng_scope

LRSchedule = Literal["constant", "linear"]


@dataclass
class StepReport:
    """What one step reports: its loss, the tokens and examples it fed, and named parts of the loss."""

    loss: float
    tokens: int = 0
    examples: int = 0
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopResult:
    losses: list[float]
    parts: dict[str, list[float]]  # each named part of the loss, one value per step that reported it
    optimizer_state: dict[str, Any]  # pass back as `optimizer_state=` to continue (any worker, any device)
    tokens: int
    examples: int
    start_step: int  # the global step the loop resumed at
    seconds: float  # from the loop's construction to the end of `run`


class TrainingLoop:
    """AdamW steps on `model`'s trainable parameters (plus `extra_params`, e.g. a distillation projection)."""

    def __init__(self, model: torch.nn.Module, *, lr: float, seed: int, rng_tag: int, weight_decay: float = 0.0,
                 optimizer_state: dict[str, Any] | None = None,
                 extra_params: Iterable[tuple[str, torch.nn.Parameter]] = ()) -> None:
        self.began = time.perf_counter()
        named = trainable_parameters(model)
        if not named:
            raise ValueError("the model has no trainable parameters (attach_lora first)")
        named = [*named, *extra_params]
        self.model, self.lr, self.seed, self.rng_tag = model, lr, seed, rng_tag
        self.optimizer, self.names, self.params, self.start = adamw(named, lr, weight_decay, optimizer_state)
        self.device = model_device(model)
        self.was_training = model.training
        self.steps_done = 0

    def update(self, loss: torch.Tensor, grad_clip: float | None) -> None:
        """The plain update: backpropagate `loss`, clip the gradient norm, take an optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, grad_clip)
        self.optimizer.step()

    def run(self, steps: int, step: Callable[[int], StepReport], *, lr_schedule: LRSchedule = "constant") -> LoopResult:
        """Run `step(k)` for the global steps k = start .. start + steps - 1, each inside its seeded RNG scope, the
        model in training mode. `lr_schedule="linear"` decays the learning rate from `lr` towards 0 over this
        call's steps (restarting at every call, so hand-offs no longer equal one long run)."""
        if lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {lr_schedule!r}")
        losses: list[float] = []
        parts: dict[str, list[float]] = {}
        tokens = examples = 0
        self.model.train()
        try:
            for k in range(self.start, self.start + steps):
                if lr_schedule == "linear":
                    for group in self.optimizer.param_groups:
                        group["lr"] = self.lr * (1.0 - (k - self.start) / steps)
                with rng_scope(mix_seed(self.seed, k, self.rng_tag), self.device):
                    report = step(k)
                losses.append(report.loss)
                tokens += report.tokens
                examples += report.examples
                for name, value in report.parts.items():
                    parts.setdefault(name, []).append(value)
                self.steps_done += 1
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.model.train(self.was_training)
        return LoopResult(losses, parts, export_optimizer(self.optimizer, self.names, self.start + self.steps_done),
                          tokens, examples, self.start, time.perf_counter() - self.began)


@dataclass
class TrainResult:
    losses: list[float]  # mean completion-token cross-entropy of each step's batch
    optimizer_state: dict[str, Any]  # pass back as `optimizer_state=` to continue (any worker, any device)
    examples_seen: int  # steps * batch_size (sampled, so repeats count)
    tokens: int  # non-padding tokens fed through the model
    seconds: float  # wall time of the whole call


def train_steps(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    max_length: int,
    seed: int,
    optimizer_state: dict[str, Any] | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    lr_schedule: LRSchedule = "constant",
) -> TrainResult:
    """`steps` AdamW steps on the trainable (adapter) parameters.

    Each step's loss is the mean token cross-entropy over the completion tokens of its batch (label
    word, generation target, or whole text; prompts masked out), right-padded with an attention
    mask. Batches come from `batch_indices` (epoch-wise permutations seeded by `seed`); dropout is
    seeded per step from (seed, step). `optimizer_state` from a previous result continues training
    (see `TrainingLoop`); `lr` and `weight_decay` given here override the saved ones. Same inputs, seed
    and state give identical losses. The model is left in the mode it came in.

    `lr_schedule="linear"` damps the late-training swings of the label bias that constant-lr training
    with small batches shows.
    """
    if lr_schedule not in ("constant", "linear"):
        raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {lr_schedule!r}")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1 (got {steps}, {batch_size})")
    if not examples:
        raise ValueError("train_steps() needs at least one example")
    loop = TrainingLoop(model, lr=lr, seed=seed, rng_tag=2, weight_decay=weight_decay, optimizer_state=optimizer_state)
    pad = padding_id(tokenizer)
    cache: dict[int, Encoded] = {}

    def step(k: int) -> StepReport:
        idx = batch_indices(len(examples), batch_size, k, seed)
        todo = sorted({i for i in idx if i not in cache})
        if todo:
            cache.update(zip(todo, encode(tokenizer, task, [examples[i] for i in todo], max_length=max_length),
                             strict=True))
        batch = [cache[i] for i in idx]
        logprobs, _ = completion_token_logprobs(model, batch, pad_id=pad)
        loss = -logprobs.mean()
        loop.update(loss, grad_clip)
        return StepReport(float(loss.detach()), tokens=sum(len(ids) for ids, _ in batch), examples=len(idx))

    result = loop.run(steps, step, lr_schedule=lr_schedule)
    return TrainResult(result.losses, result.optimizer_state, steps * batch_size, result.tokens, result.seconds)
