"""Ghost clipping with book-keeping: Opacus' ghost norms, one backward pass instead of two.

Opacus' ghost clipping (`DPLossFastGradientClipping`) runs the backward pass twice: once to get every
example's gradient norm (ghost norms, from layer inputs A and output gradients G, never materialising
per-example gradients), and again on the loss re-weighted by the clipping coefficients. With a frozen
base model and LoRA adapters the backward pass costs about as much as the forward, so the second pass
alone adds ~50 %. Book-keeping (Bu et al., 2023, "Differentially private optimization on large model at
small cost") keeps A and G of each trainable Linear layer from the single backward pass and, once all
norms are known, writes the clipped sum Σ_i c_i G_iᵀ A_i directly as the gradient.

`GhostBKHooks` subclasses Opacus' `GradSampleHooksFastGradientClipping` (same hooks, same ghost norm
samplers, same clipping coefficients) and pairs with Opacus' `DPOptimizerFastGradientClipping`, which
adds the noise and normalises as usual. Only `nn.Linear` trainable layers are supported (LoRA A/B);
the equality of its clipped gradients with Opacus' per-example ("hooks") clipping is a unit test.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.grad_sample import GradSampleHooksFastGradientClipping
from opacus.utils.module_utils import trainable_modules


def unsupported_layers(model: torch.nn.Module) -> list[str]:
    """Trainable layer types book-keeping cannot handle (it needs plain nn.Linear)."""
    return sorted({type(m).__name__ for _, m in trainable_modules(model) if type(m) is not torch.nn.Linear})


class GhostBKHooks(GradSampleHooksFastGradientClipping):
    """Opacus ghost-norm hooks that also keep (A, G) so clipped gradients need no second backward."""

    def __init__(self, m: torch.nn.Module, **kwargs: Any) -> None:
        bad = unsupported_layers(m)
        if bad:
            raise NotImplementedError(f"ghost_bk clipping supports trainable nn.Linear layers only, not {bad}")
        super().__init__(m, use_ghost_clipping=True, **kwargs)

    def capture_backprops_hook(
        self,
        module: torch.nn.Module,
        _forward_input: Any,
        forward_output: Any,
        loss_reduction: str,
        batch_first: bool,
    ) -> None:
        if not self.hooks_enabled:
            return
        activations, backprops = self.rearrange_grad_samples(
            module=module, backprops=forward_output[0].detach(), loss_reduction=loss_reduction,
            batch_first=batch_first,
        )
        norms = self.NORM_SAMPLERS[type(module)](module, activations, backprops)
        for param, ns in norms.items():
            if param.requires_grad:
                param._norm_sample = ns
                param._forward_counter -= 1
        if hasattr(module, "_bk_saved"):
            raise NotImplementedError("ghost_bk clipping needs one forward pass per layer and step (no reuse)")
        saved = (activations[0].to(backprops.dtype), backprops)  # A and the per-example-scaled G
        object.__setattr__(module, "_bk_saved", saved)  # a plain attribute, not a submodule or buffer
        if not module.activations and hasattr(module, "max_batch_len"):
            del module.max_batch_len

    def write_clipped_gradients(self) -> torch.Tensor:
        """Set each trainable weight's .grad to Σ_i c_i ∇ℓ_i; returns the per-example norms used."""
        coef = self.get_clipping_coef()
        for _, module in trainable_modules(self._module):
            saved = getattr(module, "_bk_saved", None)
            if saved is None:
                continue
            a, g = saved
            c = coef.to(device=g.device, dtype=g.dtype)
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if weight is not None and weight.requires_grad:
                weight.grad = torch.einsum("n,n...i,n...j->ij", c, g, a).to(weight.dtype)
            if bias is not None and bias.requires_grad:
                bias.grad = torch.einsum("n,n...k->k", c, g).to(bias.dtype)
            object.__delattr__(module, "_bk_saved")
        return self.per_sample_gradient_norms

    def cleanup(self) -> None:
        for _, module in trainable_modules(self._module):
            if hasattr(module, "_bk_saved"):
                object.__delattr__(module, "_bk_saved")
        super().cleanup()
