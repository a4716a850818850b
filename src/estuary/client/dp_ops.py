"""Client-side DP operations bound to a `ClientContext` (its state, private data and model).

`ClientContext.dp_train_steps` and `ClientContext.dp_synthesize` delegate here. The ledger is read from
and written to `ctx.state.privacy` (plain data: it travels with the state through the object store and
checkpoints); every ledger entry of the task is also queued on `ctx.privacy_rows`, which `ctx.egress()`
attaches to the Egress so the driver writes it to privacy.jsonl.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from estuary.client.dp_generator import GeneratorConfig, fresh_adapter_state, sample_synthetic, train_dp_generator
from estuary.data.task import Example
from estuary.privacy.dp_sgd import FROM_CONFIG, DPTrainResult, dp_train_steps
from estuary.privacy.ledger import LedgerEntry, PrivacyLedger

if TYPE_CHECKING:
    from estuary.client.context import ClientContext

GENERATOR_KEY = "dp_generator"  # ClientState.extra key of the client's DP generator (adapter, model, ε, σ, ...)


@dataclass
class SyntheticResult:
    examples: list[Example]  # labelled synthetic examples, safe to put on the Egress (`synthetic=`)
    stats: dict[str, int] = field(default_factory=dict)
    training: DPTrainResult | None = None  # the generator's DP training in this call (None: reused)
    epsilon: float = 0.0  # the client's ledger ε when the samples were released
    refused: bool = False
    refusal: str = ""


def _stamp(ctx: ClientContext, rnd: int, entry: LedgerEntry | None) -> None:
    """Fill client/strategy/round into the entry just appended to the ledger and queue it for egress."""
    if entry is None:
        return
    stamped = dataclasses.replace(entry, client=ctx.client_id, strategy=ctx.strategy, round=rnd)
    entries = ctx.state.privacy.get("entries", [])
    if entries and entries[-1].get("op") == entry.op:
        entries[-1].update(client=ctx.client_id, strategy=ctx.strategy, round=rnd)
    ctx.privacy_rows.append(stamped)


def client_dp_train(
    ctx: ClientContext,
    rnd: int,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    examples: list[Example] | tuple[Example, ...] | None = None,
    plan_steps: int | None = None,
    target_epsilon: Any = FROM_CONFIG,
    purpose: str = "train",
) -> DPTrainResult:
    """DP-SGD of the client's adapter on its private data (or `examples`), ledger in `ctx.state.privacy`.

    Defaults: `training.steps` steps at `training.batch_size` (expected Poisson batch), `training.lr`. The
    optimizer state is carried like `train_steps` does. A refusal trains nothing and is returned
    (`result.refused`), queued for egress, so the strategy sees it on the Egress.
    """
    tr = ctx.exp.training
    if steps is None and epochs is None:
        steps = tr.steps
    result = dp_train_steps(
        ctx.model, ctx.tokenizer, ctx.task, list(ctx.train if examples is None else examples),
        ledger=ctx.state.privacy, dp_cfg=ctx.exp.privacy, steps=steps, epochs=epochs,
        batch_size=tr.batch_size, lr=tr.lr, max_length=tr.max_length, seed=ctx.seed(rnd, f"dp-{purpose}"),
        optimizer_state=ctx.state.optimizer if tr.keep_optimizer_state else None,
        weight_decay=tr.weight_decay, plan_steps=plan_steps, target_epsilon=target_epsilon, purpose=purpose,
    )
    _stamp(ctx, rnd, result.entry)
    if not result.refused:
        ctx.state.optimizer = result.optimizer_state if tr.keep_optimizer_state else None
        ctx.state.steps_trained += result.steps
        ctx.state.rounds_trained += 1
        ctx.trained = True
    return result


def client_dp_synthesize(
    ctx: ClientContext,
    rnd: int,
    gen_cfg: GeneratorConfig | None = None,
    *,
    examples: list[Example] | tuple[Example, ...] | None = None,
    retrain: bool = False,
    steps: int | None = None,
    generator_model: str | None = None,
) -> SyntheticResult:
    """Train (once, or again with `retrain`) the client's DP generator and sample labelled synthetic data.

    The generator is a separate LoRA adapter on the client's SLM, started from a data-independent
    initialisation and kept in `state.extra["dp_generator"]` (a DP model: reusing it costs no ε). The
    client's own adapter is swapped back afterwards. With `generator_model` (else `privacy.generator_model`)
    set, the generator is a LoRA adapter on that model instead. Sampling and filtering are post-processing;
    the release is logged in the ledger with the ε in force.
    """
    from estuary.lm.model import adapter_state, load_adapter_state

    cfg = gen_cfg or GeneratorConfig()
    spec = generator_model or ctx.exp.privacy.generator_model or ctx.state.model
    model, tok = ctx.model_for(spec)
    saved = ctx.state.extra.get(GENERATOR_KEY)
    own = adapter_state(model)
    training: DPTrainResult | None = None
    try:
        if saved is None or retrain or saved.get("model", spec) != spec:
            load_adapter_state(model, fresh_adapter_state(model, ctx.seed(rnd, "dp-generator-init")))
            training = train_dp_generator(
                model, tok, ctx.task, list(ctx.train if examples is None else examples),
                ledger=ctx.state.privacy, dp_cfg=ctx.exp.privacy, gen_cfg=cfg,
                seed=ctx.seed(rnd, "dp-generator"), steps=steps,
            )
            _stamp(ctx, rnd, training.entry)
            if training.refused:
                return SyntheticResult([], training=training, epsilon=training.epsilon, refused=True,
                                       refusal=training.refusal)
            saved = {"adapter": adapter_state(model), "model": spec, "round": rnd, "epsilon": training.epsilon,
                     "delta": training.delta, "sigma": training.sigma, "sample_rate": training.sample_rate,
                     "steps": training.steps, "clipping": training.clipping}
            ctx.state.extra[GENERATOR_KEY] = saved
        else:
            load_adapter_state(model, saved["adapter"])
        batch = sample_synthetic(model, tok, ctx.task, cfg, seed=ctx.seed(rnd, "dp-sample"),
                                 uid_prefix=f"synthetic/{ctx.client_id}/r{rnd}")
    finally:
        load_adapter_state(model, own)
    led = PrivacyLedger(ctx.state.privacy, accountant=ctx.exp.privacy.accountant)
    release = led.append(LedgerEntry(
        op="release", mechanism="post-processing", epsilon_after=led.epsilon, delta=float(led.delta or 0.0),
        accountant=led.accountant, purpose="synthetic",
        detail=f"{len(batch.examples)} synthetic examples sampled from the DP generator of round {saved['round']}",
        extra={"stats": batch.stats},
    ))
    _stamp(ctx, rnd, release)
    return SyntheticResult(batch.examples, batch.stats, training, led.epsilon)
