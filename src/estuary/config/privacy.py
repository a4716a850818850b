"""The `privacy:` section of a job: the DP guarantee every client's data gets (ε, δ), and how DP-SGD runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from estuary.config.section import Section

PER_CLIENT_DELTA = "1/n^1.1"  # privacy.delta's named rule: δ from each client's own data size n
DEFAULT_DELTA = 1e-5  # FDKT's published δ (Li et al. 2024)


def per_client_delta(n: int) -> float:
    """δ = 1/n^1.1 for a client holding n examples (below 1/n, as DP requires; `privacy.delta: 1/n^1.1`)."""
    return 1.0 / max(n, 2) ** 1.1


def resolve_delta(delta: float | str, n: int) -> tuple[float, str]:
    """(δ, where it comes from) for a client holding n private examples under `privacy.delta`."""
    if delta == PER_CLIENT_DELTA:
        return per_client_delta(n), f"{PER_CLIENT_DELTA} (n={n})"
    return float(delta), "privacy.delta"


def delta_refusal(delta: float, n: int, who: str) -> str | None:
    """Why δ is no guarantee for `who` (e.g. "client c003") holding n private examples (δ ≥ 1/n: releasing one
    whole example at random would satisfy it), as one line naming privacy.delta, n and the fix; None when δ < 1/n."""
    if delta < 1.0 / max(n, 1):
        return None
    return (f"privacy.delta={delta:g} is not below 1/n = {1.0 / max(n, 1):.3g} for {who} (n={n} private "
            f"examples): a δ that large allows leaking a whole example — set privacy.delta to at most "
            f"{0.1 / max(n, 1):.1g} (default {DEFAULT_DELTA:g}) or '{PER_CLIENT_DELTA}'")


class PrivacyConfig(Section):
    target_epsilon: float | None = Field(
        3.0,
        description="ε each client may reach (noise calibrated to it, across the DP work planned); "
        "null = ∞: DP disabled, recorded loudly in privacy.jsonl and summary.json.",
    )
    delta: float | Literal["1/n^1.1"] = Field(
        DEFAULT_DELTA,
        description="δ of every client's guarantee (default 1e-5, FDKT's published value), or '1/n^1.1': δ from "
        "each client's own data size n (a 24-example client gets 0.030, a 3 % chance of total failure). A δ at "
        "or above 1/n for any client is refused before the run starts.",
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

    @field_validator("delta", mode="before")
    @classmethod
    def _delta_range(cls, v: Any) -> float | str:
        if v == PER_CLIENT_DELTA:
            return PER_CLIENT_DELTA
        if v is None:
            raise ValueError(f"null no longer means {PER_CLIENT_DELTA}; write '{PER_CLIENT_DELTA}' for that rule, "
                             f"or leave privacy.delta out for {DEFAULT_DELTA:g}")
        try:
            d = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"δ is a number in (0, 1) far below 1/n (e.g. {DEFAULT_DELTA:g}), "
                             f"or '{PER_CLIENT_DELTA}'") from None
        if not 0 < d < 1:
            raise ValueError(f"δ must be in (0, 1), far below 1/n (e.g. {DEFAULT_DELTA:g}); "
                             f"'{PER_CLIENT_DELTA}' derives it from each client's data size")
        return d

    @property
    def enabled(self) -> bool:
        """False when the job disabled privacy (ε = ∞: no target ε and no noise multiplier)."""
        return self.target_epsilon is not None or self.noise_multiplier is not None

    @property
    def budget(self) -> float | None:
        return self.budget_epsilon if self.budget_epsilon is not None else self.target_epsilon
