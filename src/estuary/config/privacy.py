"""The `privacy:` section of a job: the DP guarantee every client's data gets (ε, δ), and how DP-SGD runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from estuary.config.section import Section


class PrivacyConfig(Section):
    target_epsilon: float | None = Field(
        3.0,
        description="ε each client may reach (noise calibrated to it, across the DP work planned); "
        "null = ∞: DP disabled, recorded loudly in privacy.jsonl and summary.json.",
    )
    delta: float | None = Field(
        None, description="δ of every client's guarantee; null = 1/n^1.1 of the client's data size n."
    )
    noise_multiplier: float | None = Field(
        None, gt=0, description="Fixed noise multiplier σ instead of calibrating to target_epsilon."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Per-example gradient clipping norm C.")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus accountant that reports ε.")
    clipping: Literal["auto", "ghost", "ghost_bk", "hooks"] = Field(
        "auto",
        description="hooks: Opacus per-example gradients; ghost: Opacus ghost clipping (2 backward passes); "
        "ghost_bk: ghost norms + book-keeping (1 pass, Linear layers); auto: ghost clipping where Opacus "
        "supports every trainable layer (ghost_bk for LoRA on Linear layers, else ghost), hooks otherwise.",
    )
    max_physical_batch_size: int | None = Field(
        None, ge=1, description="Largest batch one forward/backward pass holds: a Poisson batch above it runs in "
        "chunks whose clipped gradients add up before one noised step (Opacus BatchMemoryManager's virtual steps); "
        "same update and guarantee, less memory. null: the whole batch at once.",
    )
    secure_rng: bool = Field(
        False, description="Cryptographic RNG for sampling and noise (torchcsprng if installed); not reproducible."
    )
    generator_model: str | None = Field(
        None, description="Model the clients' DP generators are fine-tuned from (alias, HF id or folder; "
        "null: each client's own SLM)."
    )
    budget_epsilon: float | None = Field(
        None, description="Hard cap on a client's ε over the run (null = target_epsilon); DP work past it is refused."
    )

    @field_validator("target_epsilon", "budget_epsilon")
    @classmethod
    def _positive_epsilon(cls, v: float | None) -> float | None:
        if v is None or v == float("inf"):
            return None
        if not v > 0:
            raise ValueError("ε must be > 0 (ε ≤ 0 leaves no budget); use e.g. 3.0, or null for ε = ∞")
        return v

    @field_validator("delta")
    @classmethod
    def _delta_range(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError("δ must be in (0, 1), far below 1/n (e.g. 1e-5); null uses 1/n^1.1")
        return v

    @property
    def enabled(self) -> bool:
        """False when the job disabled privacy (ε = ∞: no target ε and no noise multiplier)."""
        return self.target_epsilon is not None or self.noise_multiplier is not None

    @property
    def budget(self) -> float | None:
        return self.budget_epsilon if self.budget_epsilon is not None else self.target_epsilon
