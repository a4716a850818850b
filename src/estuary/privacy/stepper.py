"""The Opacus machinery of one DP-SGD step on a LoRA model, attached and removed without wrapping it.

`DPStepper` is built from the pieces Opacus' `PrivacyEngine.make_private` composes — hooks attached without
wrapping the model (`prepare_module(..., wrap_model=False)`: `GradSampleHooks` for per-example gradients,
or `GradSampleHooksFastGradientClipping` for ghost clipping with `DPLossFastGradientClipping`) and a
`DPOptimizer` (`get_optimizer_class`) — so that a worker's shared model gets its hooks removed afterwards.
A fourth mode, `ghost_bk` (estuary.privacy.ghost_bk), keeps Opacus' ghost norms with one backward pass.
`choose_clipping` picks the mode and says why; `check_wrappable` turns what Opacus cannot train into one
`PrivacyError` line naming the setting and the fix. A Poisson batch larger than `max_physical_batch_size`
runs in physical chunks through Opacus' own virtual-step mechanism (`DPOptimizer.signal_skip_step`, what
`BatchMemoryManager` drives): each chunk's clipped gradients add into `summed_grad`, and only the last one
noises and steps, so the update and the guarantee are those of the whole batch at a fraction of the memory.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from estuary.lm.encoding import Encoded
from estuary.lm.model import trainable_parameters
from estuary.lm.scoring import completion_token_logprobs
from estuary.lm.seeding import mix_seed
from estuary.privacy.ledger import PrivacyError

_NO_FORWARD = (torch.nn.ParameterDict, torch.nn.ParameterList)  # parameters used outside a forward: no hook
_UNHOOKED = (
    "privacy: Opacus gets no per-example gradients of {what} (parameters used outside a layer's forward, e.g. "
    "LoRA on an Embedding layer); keep such layers out of training.lora.targets, or set "
    "privacy.target_epsilon: null to train without DP (ε = ∞)"
)

def per_example_losses(model: torch.nn.Module, seqs: Sequence[Encoded], pad_id: int) -> torch.Tensor:
    """[B] mean completion-token cross-entropy of each sequence (the DP unit is one example)."""
    logprobs, rows = completion_token_logprobs(model, seqs, pad_id=pad_id)
    b = len(seqs)
    sums = torch.zeros(b, dtype=logprobs.dtype, device=logprobs.device).index_add(0, rows, -logprobs)
    counts = torch.bincount(rows, minlength=b).clamp(min=1).to(logprobs.dtype)
    return sums / counts


class _PerExample(torch.nn.Module):
    """The criterion handed to Opacus' DPLossFastGradientClipping: losses arrive already per example."""

    reduction = "mean"

    def forward(self, per_example: torch.Tensor) -> torch.Tensor:
        return per_example


def choose_clipping(model: torch.nn.Module, requested: str) -> tuple[str, str]:
    """(mode, why): "ghost_bk" (ghost norms + book-keeping, one backward), "ghost" (Opacus, two backward
    passes) or "hooks" (Opacus per-example gradients). `auto` uses ghost clipping wherever Opacus has ghost
    norms for every trainable layer (book-keeping when they are all nn.Linear, as LoRA A/B are), else hooks."""
    from opacus.grad_sample import GradSampleHooksFastGradientClipping
    from opacus.utils.module_utils import trainable_modules

    from estuary.privacy.ghost_bk import unsupported_layers

    kinds = {type(m) for _, m in trainable_modules(model)}
    no_ghost = sorted(k.__name__ for k in kinds if k not in GradSampleHooksFastGradientClipping.NORM_SAMPLERS)
    no_bk = unsupported_layers(model)
    if requested == "hooks":
        return "hooks", "privacy.clipping=hooks (Opacus per-example gradients)"
    if requested == "ghost_bk" and not no_bk:
        return "ghost_bk", "privacy.clipping=ghost_bk (Opacus ghost norms, book-keeping: one backward pass)"
    if requested in ("ghost", "ghost_bk"):
        why = f"privacy.clipping={requested}"
        if requested == "ghost_bk":
            why += f": book-keeping needs nn.Linear layers only, not {no_bk}; Opacus ghost clipping instead"
        if no_ghost:
            why += f"; Opacus falls back to per-example gradients for {no_ghost}"
        return "ghost", why
    if no_ghost:
        return "hooks", f"auto: Opacus has no ghost norm for {no_ghost}; per-example gradient hooks instead"
    if not no_bk:
        return "ghost_bk", "auto: ghost clipping (Opacus ghost norms; book-keeping: one backward pass)"
    return "ghost", f"auto: Opacus ghost clipping (two backward passes: book-keeping needs nn.Linear, not {no_bk})"


def make_generators(secure: bool, seed: int, device: torch.device) -> tuple[Any, Any, str, bool]:
    """(noise generator, sampling generator, description, Opacus secure_mode)."""
    if not secure:
        noise = torch.Generator(device=device).manual_seed(mix_seed(seed, 3))
        sample = torch.Generator().manual_seed(mix_seed(seed, 4))
        return noise, sample, "seeded torch.Generator (reproducible; privacy.secure_rng=true for deployment)", False
    try:
        import torchcsprng as csprng

        gen = csprng.create_random_device_generator("/dev/urandom")
        return gen, gen, "torchcsprng /dev/urandom (Opacus secure mode)", True
    except ImportError:
        noise = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        sample = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        what = "OS-entropy-seeded torch.Generator + Opacus secure noise (torchcsprng not installed)"
        return noise, sample, what, True


def _cannot_train(model: torch.nn.Module, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"privacy: Opacus cannot train {type(model).__name__} with DP-SGD ({type(exc).__name__}: {first[:200]}); "
        "train only supported layers (LoRA on Linear layers, training.lora.targets) or set "
        "privacy.target_epsilon: null to train without DP (ε = ∞)"
    )


def check_wrappable(model: torch.nn.Module, *, adapter_only: bool = True) -> None:
    """Raise a one-line PrivacyError if Opacus cannot DP-train `model`'s trainable parameters (or, with
    `adapter_only`, if anything but LoRA adapter weights is trainable). Works on a meta-device model."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    named = trainable_parameters(model)
    if not named:
        raise PrivacyError("privacy: the model has no trainable parameters to DP-train (no LoRA adapter attached)")
    others = [nm for nm, _ in named if "lora_" not in nm]
    if adapter_only and others:
        raise PrivacyError(
            f"privacy: DP-SGD trains LoRA adapter weights only, but {len(others)} other parameters are trainable "
            f"(e.g. {others[0]}); freeze them (attach_lora does) or train without DP"
        )
    unhooked = [name for name, m in trainable_modules(model) if isinstance(m, _NO_FORWARD)]
    if unhooked:
        raise PrivacyError(_UNHOOKED.format(what=unhooked[0]))
    was_training = model.training
    model.train()  # Opacus validates a model in training mode
    try:
        ModuleValidator.validate(model, strict=True)
    except Exception as exc:
        raise PrivacyError(_cannot_train(model, exc)) from None
    finally:
        model.train(was_training)


class DPStepper:
    """Opacus DP-SGD machinery attached to a model for a block of steps; `close()` removes every trace."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mode: str,
        sigma: float,
        max_grad_norm: float,
        expected_batch_size: float,
        noise_generator: Any = None,
        secure_mode: bool = False,
        pad_id: int = 0,
        max_physical_batch_size: int | None = None,
    ) -> None:
        from opacus.grad_sample.utils import prepare_module
        from opacus.optimizers import get_optimizer_class
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
        if max_physical_batch_size is not None and max_physical_batch_size < 1:
            raise ValueError(f"max_physical_batch_size must be >= 1 or None, got {max_physical_batch_size}")
        self.model, self.mode, self.pad_id = model, mode, pad_id
        self.physical = max_physical_batch_size
        self.steps = 0
        check_wrappable(model, adapter_only=False)
        model.train()
        try:
            kwargs: dict[str, Any] = {"batch_first": True, "loss_reduction": "mean"}
            if mode in ("ghost", "ghost_bk"):
                kwargs["max_grad_norm"] = max_grad_norm
            if mode == "ghost_bk":
                from estuary.privacy.ghost_bk import GhostBKHooks

                self.hooks: Any = GhostBKHooks(model, **kwargs)
            else:
                self.hooks = prepare_module(model, mode, False, **kwargs)
        except Exception as exc:  # UnsupportedModuleError, NotImplementedError, ...
            raise PrivacyError(_cannot_train(model, exc)) from None
        forbid = getattr(self.hooks, "forbid_grad_accumulation", None)
        if callable(forbid):
            forbid()
        opacus_mode = "ghost" if mode == "ghost_bk" else mode  # same optimizer: it noises ready-clipped grads
        cls = get_optimizer_class(clipping="flat", distributed=False, grad_sample_mode=opacus_mode)
        self.optimizer = cls(
            optimizer,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=noise_generator,
            secure_mode=secure_mode,
        )
        self.optimizer.attach_step_hook(self._count)
        self.criterion = (
            DPLossFastGradientClipping(self.hooks, self.optimizer, _PerExample(), "mean") if mode == "ghost" else None
        )

    def _count(self, _optimizer: Any) -> None:
        self.steps += 1  # Opacus calls this once per noised step (where an accountant would step)

    def step(self, seqs: Sequence[Encoded], weights: torch.Tensor | None = None) -> float:
        """One noised step on a batch; `weights` (0/1) blank out placeholder rows of an empty batch. The batch
        runs in chunks of at most `max_physical_batch_size` rows; only the last chunk noises and steps."""
        size = self.physical or max(1, len(seqs))
        bounds = [(lo, min(lo + size, len(seqs))) for lo in range(0, len(seqs), size)]
        total = 0.0
        for j, (lo, hi) in enumerate(bounds):
            self.optimizer.signal_skip_step(do_skip=j < len(bounds) - 1)
            total += self._chunk(seqs[lo:hi], None if weights is None else weights[lo:hi])
        return total / len(seqs)

    def _chunk(self, seqs: Sequence[Encoded], weights: torch.Tensor | None) -> float:
        """Forward, clip and accumulate one physical chunk; returns the sum of its per-example losses."""
        per = per_example_losses(self.model, seqs, self.pad_id)
        if weights is not None:
            per = per * weights.to(per.device, per.dtype)
        self.optimizer.zero_grad(set_to_none=True)  # keeps summed_grad while a virtual step is open
        try:
            with warnings.catch_warnings():
                # The first adapter's input does not require grad (frozen base): harmless for Opacus' hooks.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                if self.criterion is not None:
                    self.criterion(per).backward()
                else:
                    per.mean().backward()
            if self.mode == "ghost_bk":
                self.hooks.write_clipped_gradients()
            self.optimizer.step()
        except (ValueError, AttributeError) as exc:  # a trainable parameter no Opacus hook saw
            if "_norm_sample" not in str(exc) and "Per sample gradient is not initialized" not in str(exc):
                raise
            raise PrivacyError(_UNHOOKED.format(what="some trainable parameters")) from None
        return float(per.detach().sum())

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.hooks.cleanup()
        for p in self.model.parameters():
            if hasattr(p, "summed_grad"):
                delattr(p, "summed_grad")
