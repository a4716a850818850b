"""The served LLM's side of the mutual methods (CrossLM, FedMKT): train a LoRA adapter of it on what the
clients sent (Ray Train + DeepSpeed), publish it live as the next version, and evaluate any version through
the deployment."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from estuary.platform.run_context import ServerContext
    from estuary.platform.strategy import Strategy


def train_server_adapter(strategy: Strategy, rnd: int, server: ServerContext, records: list[dict[str, Any]],
                         config: dict[str, Any], what: str, start: str | None = None) -> tuple[str, dict[str, float]]:
    """Fine-tune the served model's adapter `strategy.params.adapter_name` on `records` with `config` (a
    TrainConfig mapping), from the published version `start` (None: a fresh adapter), and publish it; returns
    the new version id and the training metrics. Its timings split the call's wall time (`wall_s`): stopping
    the replica (`release_s`, with release_while_training), the trainer's setup before its first step
    (`startup_s`, inside `fit_s`), `fit_s`, and publishing the version (`redeploy_s`: its start again)."""
    from estuary.train import ServerTrainer
    from estuary.train.trainer import check_served_model

    entered = time.monotonic()
    if start is not None and "init_adapter" not in config:
        config = {**config, "init_adapter": published_path(server, start)}
    trainer = ServerTrainer(config, storage_path=server.run_dir / "llm_train" if server.run_dir else None)
    if server.running or not server.exp.server_config().release_while_training:  # else deployed after, from exp
        check_served_model(trainer.config, server.llm)
    began = time.monotonic()
    with server.released() as released:  # server.release_while_training: the replica's memory goes to training
        release_s = time.monotonic() - began
        outcome = trainer.fit(records, name=f"{strategy.name}-r{rnd}-{time.strftime('%H%M%S')}")
    began = time.monotonic()
    version = server.llm.publish(outcome.adapter_dir, name=strategy.params.adapter_name)
    extra = {"release_s": round(release_s, 2), "redeploy_s": round(time.monotonic() - began, 2)} if released else {}
    losses = outcome.losses
    server.log(f"[dim]{strategy.name} round {rnd}: LLM {what} on {len(records)} samples, loss {losses[0]:.3f} → "
               f"{losses[-1]:.3f}; published {version.id}[/dim]")
    return version.id, {"records": float(len(records)), "loss_first": losses[0], "loss_last": losses[-1],
                        "fit_s": outcome.fit_seconds, "startup_s": outcome.startup_seconds,
                        "tokens_per_s": outcome.tokens_per_second, **extra,
                        "wall_s": round(time.monotonic() - entered, 2)}


def evaluate_served_llm(server: ServerContext, version: str | None, n: int, *, channel: bool = False
                        ) -> dict[str, float]:
    """The served LLM (`version` of the adapter, None: the base model) on the first `n` test examples:
    accuracy for a classification task, perplexity of prompt + completion for a generation task; with
    `channel`, also the noisy-channel accuracy of a single-text classification task (`channel_accuracy`); and
    the seconds it took (`eval_s`)."""
    from estuary.knowledge.llm_eval import llm_classify, llm_perplexity

    if not n:
        return {}
    began = time.monotonic()
    test = list(server.test)[:n]
    if server.task.kind == "classification":
        res = llm_classify(server.llm, server.task, test, adapter=version)
        if channel and not any(ex.text_pair is not None for ex in test):
            res.update({f"channel_{k}": v for k, v in
                        llm_classify(server.llm, server.task, test, adapter=version, rule="channel").items()})
    else:
        res = llm_perplexity(server.llm, [server.task.prompt(ex) + server.task.completion(ex) for ex in test],
                             adapter=version)
    return {**{f"test/{k}": v for k, v in res.items() if k not in ("n", "channel_n")},
            "eval_s": round(time.monotonic() - began, 2)}


def method_llm_eval_size(exp: Any) -> int | None:
    """How many test examples the run's method evaluates its served LLM on (its config's `llm_eval_size`, the
    default applied when the job leaves it out); None when the method does not evaluate a served LLM."""
    from estuary.registry import build_params

    size = getattr(build_params(exp.method, dict(exp.method_params or {})), "llm_eval_size", None)
    return int(size) if size else None


def params_field(exp: Any, strategy: str, key: str) -> str:
    """The job field holding `key` of `strategy`'s parameters: method_params.<key> or baseline_params.<name>.<key>."""
    return f"method_params.{key}" if strategy == exp.method else f"baseline_params.{strategy}.{key}"


def mutual_training(strategy: str, exp: Any) -> tuple[str, dict[str, Any]] | None:
    """`Strategy.server_training` of the mutual methods (CrossLM, FedMKT): their llm_train when train_llm."""
    from estuary.registry import build_params

    p = build_params(strategy, dict(exp.params_of(strategy) or {}))
    return (params_field(exp, strategy, "llm_train"), dict(p.llm_train)) if p.train_llm else None


def published_path(server: ServerContext, version: str) -> str:
    """The adapter folder of a published version id (`name@vN`)."""
    name = version.rsplit("@v", 1)[0]
    for v in server.llm.versions().get(name, []):
        if v.id == version:
            return v.path
    raise KeyError(f"adapter version {version!r} is not published in the deployment")


def version_number(version: str | None) -> int:
    """`name@v3` → 3; the base model (None) → 0."""
    return int(version.rsplit("@v", 1)[1]) if version and "@v" in version else 0
