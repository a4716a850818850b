"""DP-SGD on a client SLM's LoRA adapter with Opacus, charged to the client's privacy ledger.

`dp_train_steps` is DP-SGD as a step of the one training loop (`estuary.lm.loop.TrainingLoop`): Poisson sampling
(`UniformWithReplacementSampler`, so the sample rate is exactly q = batch_size / n) and noised steps of an
Opacus `DPStepper` (estuary.privacy.stepper: ghost clipping where Opacus supports the layers, per-example
hooks otherwise; Poisson batches above `privacy.max_physical_batch_size` run in physical chunks). Before
any training the accountant decides: σ is calibrated to the target ε (or taken from the config), the ε the
ledger would reach is computed, and work that would pass the budget is refused, not run.
Every call appends one entry to the ledger (dp-sgd, non-private or refused).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from estuary.data.task import Example, Task
from estuary.lm.encoding import Encoded, encode, padding_id
from estuary.lm.loop import LoopResult, StepReport, TrainingLoop, train_steps
from estuary.lm.model import trainable_parameters
from estuary.lm.seeding import mix_seed
from estuary.privacy.ledger import INF, BudgetExceeded, LedgerEntry, PrivacyError, PrivacyLedger
from estuary.privacy.stepper import DPStepper, check_wrappable, choose_clipping, make_generators

if TYPE_CHECKING:
    from estuary.config import PrivacyConfig

FROM_CONFIG: Any = object()  # target_epsilon default: the job's privacy.target_epsilon


@dataclass
class DPTrainResult:
    losses: list[float]  # mean per-example completion cross-entropy of each step's batch (nan: empty batch)
    optimizer_state: dict[str, Any] | None
    examples_seen: int  # sum of the Poisson batch sizes
    tokens: int
    seconds: float
    steps: int
    sigma: float | None  # noise multiplier (None: not private)
    sample_rate: float
    clipping: str  # "ghost_bk" | "ghost" | "hooks" | "none" (which ran)
    clipping_reason: str
    epsilon: float  # the ledger's ε after this call (inf once anything ran without DP)
    delta: float
    rng: str = ""
    batch_sizes: list[int] = field(default_factory=list)
    entry: LedgerEntry | None = None  # what was appended to the ledger (dp-sgd, non-private or refused)
    refused: bool = False
    refusal: str = ""

    def raise_if_refused(self) -> DPTrainResult:
        if self.refused:
            raise BudgetExceeded(self.refusal)
        return self


def dp_train_steps(
    model: Any,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    *,
    ledger: dict[str, Any],
    dp_cfg: PrivacyConfig,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int,
    lr: float,
    max_length: int,
    seed: int,
    optimizer_state: dict[str, Any] | None = None,
    weight_decay: float = 0.0,
    plan_steps: int | None = None,
    target_epsilon: float | None = FROM_CONFIG,
    purpose: str = "train",
    adapter_only: bool = True,
) -> DPTrainResult:
    """DP-SGD steps on the trainable (adapter) weights, charged to `ledger` (a client's `state.privacy`).

    Poisson sampling with rate q = batch_size / n (batch_size is the expected batch); `steps`, or
    `epochs` (steps = ceil(epochs / q)). σ is `dp_cfg.noise_multiplier`, or calibrated so that the ledger's
    ε after `plan_steps` (default `steps`; pass the steps of all DP work still planned at this q, e.g.
    over the remaining rounds) reaches `target_epsilon` (default `dp_cfg.target_epsilon`). If the ε after
    this call would pass `dp_cfg.budget`, nothing is trained and a refusal is returned (`refused`,
    `refusal`) and logged in the ledger. With privacy disabled (ε = ∞) the model trains without DP and
    the ledger becomes non-private for good. The model is left with no Opacus hooks, in its mode.
    Only LoRA adapter weights may be trainable (`adapter_only`), so a shared base model is never changed.
    """
    if not examples:
        raise ValueError("dp_train_steps() needs at least one example")
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps= or epochs=")
    if batch_size < 1 or (steps is not None and steps < 0) or (epochs is not None and epochs <= 0):
        raise ValueError(f"batch_size must be >= 1, steps >= 0, epochs > 0 (got {batch_size}, {steps}, {epochs})")
    named = trainable_parameters(model)
    others = [nm for nm, _ in named if "lora_" not in nm]
    if not named or (adapter_only and others):
        check_wrappable(model, adapter_only=adapter_only)  # raises the one-line PrivacyError
    began = time.perf_counter()
    n = len(examples)
    q = min(1.0, batch_size / n)
    n_steps = int(steps) if steps is not None else max(1, math.ceil(float(epochs or 0) / q))
    led = PrivacyLedger(ledger, accountant=dp_cfg.accountant)
    delta = led.fix_delta(dp_cfg.delta, n)
    common: dict[str, Any] = {"delta": delta, "accountant": led.accountant, "sample_rate": q, "purpose": purpose}

    def refuse(reason: str) -> DPTrainResult:
        entry = led.append(LedgerEntry(op="refused", mechanism="none", epsilon_after=led.epsilon, detail=reason,
                                       steps=n_steps, max_grad_norm=dp_cfg.max_grad_norm, **common))
        return DPTrainResult([], optimizer_state, 0, 0, time.perf_counter() - began, 0, None, q, "none", "",
                             led.epsilon, delta, entry=entry, refused=True, refusal=reason)

    if not dp_cfg.enabled:
        return _non_private(model, tokenizer, task, examples, led, common, n_steps, batch_size, lr, max_length,
                            seed, optimizer_state, weight_decay, began)
    if led.data.get("non_private"):
        return refuse("this client's data was already used without DP (ε = ∞); no DP guarantee is left to keep")
    target = dp_cfg.target_epsilon if target_epsilon is FROM_CONFIG else target_epsilon
    sigma = dp_cfg.noise_multiplier
    if sigma is None:
        if target is None:
            raise PrivacyError("privacy: set privacy.target_epsilon or privacy.noise_multiplier")
        try:
            sigma = led.calibrate(float(target), q, max(n_steps, plan_steps or 0))
        except BudgetExceeded as exc:
            return refuse(f"refused {n_steps} DP-SGD steps: {exc}")
    eps_after = led.project(sigma, q, n_steps) if n_steps else led.epsilon
    budget = dp_cfg.budget
    if budget is not None and eps_after > budget * (1 + 1e-9):
        return refuse(
            f"refused {n_steps} DP-SGD steps at σ={sigma:.4g}, q={q:.4g}: ε would reach {eps_after:.4g} "
            f"> budget {budget:g} (spent {led.epsilon:.4g})"
        )

    result, entry, eps_after, mode, why, rng, sizes = _dp_loop(
        model, tokenizer, task, examples, led=led, dp_cfg=dp_cfg, common=common, sigma=sigma, q=q, n_steps=n_steps,
        lr=lr, max_length=max_length, seed=seed, optimizer_state=optimizer_state, weight_decay=weight_decay)
    return DPTrainResult(
        losses=result.losses,
        optimizer_state=result.optimizer_state,
        examples_seen=result.examples,
        tokens=result.tokens,
        seconds=time.perf_counter() - began,
        steps=n_steps,
        sigma=sigma,
        sample_rate=q,
        clipping=mode,
        clipping_reason=why,
        epsilon=eps_after,
        delta=delta,
        rng=rng,
        batch_sizes=sizes,
        entry=entry,
    )


def _dp_loop(
    model: Any, tokenizer: Any, task: Task, examples: Sequence[Example], *, led: PrivacyLedger,
    dp_cfg: PrivacyConfig, common: dict[str, Any], sigma: float, q: float, n_steps: int, lr: float,
    max_length: int, seed: int, optimizer_state: dict[str, Any] | None, weight_decay: float,
) -> tuple[LoopResult, LedgerEntry, float, str, str, str, list[int]]:
    """The noised steps on the one training loop, charged to the ledger before the first one: (the loop's
    result, the ledger entry, ε after, clipping mode, why, the RNG's description, the Poisson batch sizes)."""
    n = len(examples)
    loop = TrainingLoop(model, lr=lr, seed=seed, rng_tag=2, weight_decay=weight_decay, optimizer_state=optimizer_state)
    mode, why = choose_clipping(model, dp_cfg.clipping)
    g_noise, g_sample, rng, secure = make_generators(dp_cfg.secure_rng, mix_seed(seed, loop.start), loop.device)
    pad = padding_id(tokenizer)
    stepper = DPStepper(model, loop.optimizer, mode=mode, sigma=sigma, max_grad_norm=dp_cfg.max_grad_norm,
                        expected_batch_size=q * n, noise_generator=g_noise, secure_mode=secure, pad_id=pad,
                        max_physical_batch_size=dp_cfg.max_physical_batch_size)
    sizes: list[int] = []
    try:
        # Charged before the first step: a crash mid-way can only over-count.
        eps_after = led.charge(sigma, q, n_steps) if n_steps else led.epsilon
        entry = led.append(LedgerEntry(op="dp-sgd", mechanism="subsampled-gaussian", epsilon_after=eps_after,
                                       sigma=sigma, steps=n_steps, max_grad_norm=dp_cfg.max_grad_norm,
                                       clipping=mode, rng=rng, detail=why, **common))
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        batches = iter(UniformWithReplacementSampler(num_samples=n, sample_rate=q, generator=g_sample, steps=n_steps))

        step = _poisson_step(stepper, batches, lambda idx: encode(tokenizer, task, [examples[i] for i in idx],
                                                                  max_length=max_length), pad, sizes)
        result = loop.run(n_steps, step)
    finally:
        stepper.close()
    if stepper.steps != n_steps:
        raise RuntimeError(f"Opacus took {stepper.steps} noised steps, the ledger charged {n_steps}")
    return result, entry, eps_after, mode, why, rng, sizes


def _poisson_step(stepper: DPStepper, batches: Iterator[list[int]], encode_rows: Callable[[list[int]], list[Encoded]],
                  pad: int, sizes: list[int]) -> Callable[[int], StepReport]:
    """The DP step: the next Poisson batch (its rows encoded once and cached), clipped and noised by `stepper`."""
    cache: dict[int, Encoded] = {}

    def step(_k: int) -> StepReport:
        idx = list(next(batches))
        todo = sorted({i for i in idx if i not in cache})
        if todo:
            cache.update(zip(todo, encode_rows(todo), strict=True))
        batch = [cache[i] for i in idx]
        weights = None
        if not batch:  # an empty Poisson batch still takes a noised (and accounted) step
            batch, weights = [([pad, pad], 1)], torch.zeros(1)
        sizes.append(len(idx))
        loss = stepper.step(batch, weights)
        return StepReport(loss if idx else float("nan"), tokens=sum(len(ids) for ids, _ in batch) if idx else 0,
                          examples=len(idx))

    return step


def _non_private(
    model: Any, tokenizer: Any, task: Task, examples: Sequence[Example], led: PrivacyLedger,
    common: dict[str, Any], n_steps: int, batch_size: int, lr: float, max_length: int, seed: int,
    optimizer_state: dict[str, Any] | None, weight_decay: float, began: float,
) -> DPTrainResult:
    """Privacy disabled (ε = ∞): ordinary training, and the ledger says so for good."""
    result = train_steps(model, tokenizer, task, list(examples), steps=n_steps, batch_size=batch_size, lr=lr,
                         max_length=max_length, seed=seed, optimizer_state=optimizer_state,
                         weight_decay=weight_decay)
    led.mark_non_private()
    detail = "PRIVACY DISABLED (privacy.target_epsilon: null, no noise_multiplier): trained without DP, ε = ∞"
    entry = led.append(LedgerEntry(op="non-private", mechanism="none", epsilon_after=INF, steps=n_steps,
                                   detail=detail, **common))
    return DPTrainResult(
        losses=result.losses, optimizer_state=result.optimizer_state, examples_seen=result.examples_seen,
        tokens=result.tokens, seconds=time.perf_counter() - began, steps=n_steps, sigma=None,
        sample_rate=common["sample_rate"], clipping="none", clipping_reason=detail, epsilon=INF,
        delta=common["delta"], rng="", batch_sizes=[batch_size] * n_steps, entry=entry,
    )
