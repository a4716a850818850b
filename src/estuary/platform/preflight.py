"""Before any actor starts: is the job's δ a guarantee for every client, and can Opacus DP-train every model
of the run with the job's LoRA adapter?

`check_delta` refuses a `privacy.delta` at or above 1/n for any client (n: its private training examples,
known on the driver from the seed before Ray starts); the ledger refuses it again when DP work is charged.

A run whose strategies do DP work (`uses_privacy = True` on the Strategy class) with privacy enabled has
each client model (and each DP generator or teacher model, `Strategy.generator_model`) built on PyTorch's
meta device — its config only, no weights — wrapped with the job's LoRA adapter, and checked like
`DPStepper` checks it. A model Opacus cannot wrap ends the run at once with one line naming the setting and
the fix, instead of failing in every worker after retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from estuary.config.privacy import delta_refusal, resolve_delta
from estuary.privacy.ledger import PrivacyError

if TYPE_CHECKING:
    from estuary.config import ExperimentConfig
    from estuary.data.federated import FederatedData


def uses_privacy(cfg: ExperimentConfig) -> bool:
    """Whether a strategy of this run (the method or a baseline) does DP work, with privacy enabled."""
    from estuary.registry import get

    return cfg.privacy.enabled and any(getattr(get(name), "uses_privacy", False) for name in cfg.strategies())


def check_model(path: str, cfg: ExperimentConfig, label: str) -> None:
    """Raise a one-line PrivacyError if Opacus cannot DP-train the model at `path` with the job's LoRA."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from estuary.lm.model import attach_lora
    from estuary.privacy.stepper import check_wrappable

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        try:
            lora = attach_lora(model, cfg.training.lora, seed=0)
        except ValueError:
            return  # a LoRA target the model lacks: the workers report it as they do without DP
    try:
        check_wrappable(lora)
    except PrivacyError as exc:
        raise PrivacyError(str(exc).replace("privacy: ", f"privacy: {label}: ", 1)) from None


def check_run_models(cfg: ExperimentConfig, model_paths: dict[str, str]) -> None:
    """`check_model` for every client model and each DP strategy's generator or teacher model
    (`Strategy.generator_model`), if the run does DP work."""
    from estuary.registry import get

    if not uses_privacy(cfg):
        return
    specs = {cfg.models.client, *cfg.models.per_client.values()}
    for spec in sorted(specs):
        check_model(model_paths[spec], cfg, f"client model {spec!r} with training.lora")
    gens = {m for name in cfg.strategies() if getattr(get(name), "uses_privacy", False)
            and (m := get(name).generator_model(cfg))}
    for gen in sorted(gens - specs):
        label = ("privacy.generator_model" if gen == cfg.privacy.generator_model else "the DP teacher model")
        check_model(model_paths[gen], cfg, f"{label} {gen!r} with training.lora")


def check_delta(cfg: ExperimentConfig, data: FederatedData | None = None) -> None:
    """Raise a one-line PrivacyError if the run does DP work and δ ≥ 1/n for a client holding n examples
    (`data`: the run's federated data; built from the job when not given, as `estuary validate` does)."""
    if not uses_privacy(cfg):
        return
    if data is None:
        from estuary.data.federated import build_federated_data

        data = build_federated_data(cfg.data.model_dump_json(), cfg.clients.count, cfg.seed)
    for cid, (n, _eval) in data.sizes().items():
        why = delta_refusal(resolve_delta(cfg.privacy.delta, n)[0], n, f"client {cid}")
        if why is not None:
            raise PrivacyError(why)


def lora_targets(cfg: ExperimentConfig) -> list[str]:
    """One line per client model: the LoRA targets `training.lora` picks in it (resolving `auto` on the model's
    config, no weights loaded). Raises a one-line ConfigError if named targets are not modules of the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from estuary.errors import ConfigError, ModelNotAvailable
    from estuary.lm.lora import AUTO, auto_targets
    from estuary.models import resolve_model

    lora, lines = cfg.training.lora, []
    for spec in sorted({cfg.models.for_client(i) for i in range(cfg.clients.count)}):
        try:
            path = resolve_model(spec, prepare=False)
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        except (ModelNotAvailable, OSError, ValueError):
            lines.append(f"training.lora.targets for {spec}: {lora.targets} (resolved once the model is prepared)")
            continue
        try:
            targets, why = auto_targets(skeleton) if lora.targets == AUTO else (list(lora.targets), "as given")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        leaves = {name.rsplit(".", 1)[-1] for name, _ in skeleton.named_modules()}
        missing = [t for t in targets if t not in leaves]
        if missing:
            have = sorted(n for n in leaves if n.endswith("proj")) or sorted(leaves)[:12]
            raise ConfigError(f"training.lora.targets: {missing} are not modules of {spec} (it has "
                              f"{', '.join(have)}); name some of those, or use auto")
        lines.append(f"training.lora.targets for {spec}: {', '.join(targets)} ({why})")
    return lines
