"""`estuary audit RUN_DIR`: membership inference on a run's DP generator and on a non-DP twin.

For one client of the run (default: the one with the most training examples) the audit rebuilds its
private shard from the run's config and seed, and attacks two label-conditioned generators with the
loss-threshold attack (`estuary.privacy.mia`):

- the DP generator: the one the run trained (a client's `ClientState.extra["dp_generator"]`, from the
  latest checkpoint of a strategy that has one), else one trained now with the run's privacy settings
  (on a scratch ledger: the run's ledgers are never touched);
- a non-DP generator trained on the same data (the client's whole train split, as the run's generator
  was), from the same data-independent initialisation, with the same steps, batch and learning rate.

Members are a seeded sample of the client's train split; non-members as many held-out examples from the
same source (its eval split and other clients' data), then the global test split; texts it trained on are
excluded. The report (AUC with a DeLong 95 % CI, mean losses, and the AUC bound the generator's (ε, δ)
allows) is written to RUN_DIR/audit.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from estuary.client.dp_generator import GeneratorConfig, fresh_adapter_state, generator_examples, generator_task
from estuary.data.task import Example, Task
from estuary.errors import EstuaryError
from estuary.privacy.mia import dp_auc_bound, loss_threshold_attack


@dataclass
class AttackResult:
    generator: str  # "dp" | "non-dp"
    source: str  # where the generator came from
    auc: float
    ci_low: float
    ci_high: float
    auc_bound: float  # the largest AUC (ε, δ)-DP allows a one-example membership test (1 without DP)
    members: int
    non_members: int
    loss_members: float  # mean per-example loss
    loss_non_members: float
    epsilon: float | str  # the generator's ε ("inf" without DP)
    delta: float
    steps: int
    sigma: float | None
    clipping: str
    train_s: float


def _train(model: Any, tok: Any, task: Task, train: Sequence[Example], *, dp_cfg: Any, gen_cfg: GeneratorConfig,
           seed: int, steps: int) -> tuple[Any, float]:
    from estuary.client.dp_generator import train_dp_generator
    from estuary.lm.model import load_adapter_state

    load_adapter_state(model, fresh_adapter_state(model, seed))
    began = time.perf_counter()
    tr = train_dp_generator(model, tok, task, train, ledger={}, dp_cfg=dp_cfg, gen_cfg=gen_cfg, seed=seed,
                            steps=steps)
    if tr.refused:
        raise EstuaryError(f"audit: the DP generator could not be trained: {tr.refusal}")
    return tr, time.perf_counter() - began


def audit_generators(
    model: Any,
    tokenizer: Any,
    task: Task,
    train: Sequence[Example],
    members: Sequence[Example],
    non_members: Sequence[Example],
    *,
    dp_cfg: Any,
    gen_cfg: GeneratorConfig,
    seed: int,
    steps: int | None = None,
    dp_generator: dict[str, Any] | None = None,
    source: str = "",
    log: Callable[[str], None] = lambda _msg: None,
) -> list[AttackResult]:
    """Attack a DP generator (`dp_generator`: a saved one, adapter and training facts; None: train one on
    `train` with `dp_cfg`) and a non-DP generator trained on `train` with the same steps and settings.

    `model` is a LoRA model of the generator's architecture (its adapter is overwritten). `members` must
    be drawn from `train`; `non_members` must not be in it.
    """
    from estuary.lm.model import load_adapter_state

    gtask = generator_task(task)
    m_ex, n_ex = generator_examples(task, members), generator_examples(task, non_members)
    q = min(1.0, gen_cfg.batch_size / len(train))
    n_steps = steps if steps is not None else max(1, math.ceil(gen_cfg.epochs / q))
    out = []
    for name in ("dp", "non-dp"):
        if name == "dp" and dp_generator is not None:
            load_adapter_state(model, dp_generator["adapter"])
            info, train_s, where = dp_generator, 0.0, source or "the run's DP generator"
            n_steps = int(info.get("steps") or n_steps)  # the non-DP twin takes as many steps
        else:
            cfg = dp_cfg if name == "dp" else dp_cfg.model_copy(update={"target_epsilon": None,
                                                                        "noise_multiplier": None})
            log(f"training the {name} generator: {n_steps} steps on {len(train)} examples")
            tr, train_s = _train(model, tokenizer, task, train, dp_cfg=cfg, gen_cfg=gen_cfg, seed=seed,
                                 steps=n_steps)
            info = {"epsilon": tr.epsilon, "delta": tr.delta, "sigma": tr.sigma, "steps": tr.steps,
                    "clipping": tr.clipping}
            where = "trained for the audit" + (" (run's privacy settings, scratch ledger)" if name == "dp" else "")
        eps, delta = float(info["epsilon"]), float(info["delta"])
        log(f"attacking the {name} generator: {len(members)} members, {len(non_members)} non-members")
        res = loss_threshold_attack(model, tokenizer, gtask, m_ex, n_ex, max_length=gen_cfg.max_length)
        out.append(AttackResult(
            generator=name, source=where, **res, auc_bound=dp_auc_bound(eps, delta), members=len(members),
            non_members=len(non_members), epsilon="inf" if math.isinf(eps) else eps, delta=delta,
            steps=int(info["steps"]), sigma=info.get("sigma"), clipping=str(info.get("clipping", "")),
            train_s=round(train_s, 2),
        ))
    return out


def _saved_generator(path: Path, strategies: list[str], client: str) -> tuple[dict[str, Any] | None, str, str]:
    """(saved generator, where from, strategy): the client's DP generator from the latest checkpoint of the
    first strategy that saved one (None, "", "" if none did)."""
    from estuary.client.dp_ops import GENERATOR_KEY
    from estuary.platform.checkpoint import Checkpointer

    ckpt = Checkpointer(path)
    for name in strategies:
        rnd = ckpt.latest(name)
        if rnd is None:
            continue
        states, _, _ = ckpt.load(name, rnd)
        state = states.get(client)
        saved = state.extra.get(GENERATOR_KEY) if state is not None else None
        if saved:
            return saved, f"checkpoint of {name} after round {rnd} (trained in round {saved.get('round', '?')})", name
    return None, "", ""


def _members(data: Any, cid: str, count: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(members, non-members) of one client, as many of each (at most `count`).

    Non-members come from the same source as the members first (the client's eval split and the other
    clients' data, which this client's generator never saw), then from the global test split; any text
    in the client's train split is excluded.
    """
    train = list(data.clients[cid].train)
    seen = {ex.text for ex in train}
    same = [ex for c, cd in data.clients.items() for ex in ((*cd.eval, *cd.train) if c != cid else cd.eval)]
    same = [ex for ex in dict.fromkeys(same) if ex.text not in seen]
    test = [ex for ex in dict.fromkeys(data.test) if ex.text not in seen]
    k = min(count, len(train), len(same) + len(test))
    if k < 2:
        raise EstuaryError(f"audit: client {cid} has too few examples ({len(train)} train, {len(same) + len(test)} "
                           "held out) to audit; pick another with --client")
    rng = random.Random(seed)
    non = rng.sample(same, k) if len(same) >= k else [*same, *rng.sample(test, k - len(same))]
    return rng.sample(train, k), non


def _generator_config(cfg: Any, strategy: str) -> GeneratorConfig:
    """The GeneratorConfig of a strategy's parameters (a `generator` field), else the defaults."""
    from estuary.registry import build_params

    gen = getattr(build_params(strategy, cfg.params_of(strategy)), "generator", None)
    return gen if isinstance(gen, GeneratorConfig) else GeneratorConfig()


def audit_run_dir(
    run_dir: str | Path,
    *,
    client: str | None = None,
    members: int = 64,
    epochs: float | None = None,
    steps: int | None = None,
    retrain: bool = False,
    write: bool = True,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Audit one client of a run (see the module doc); writes RUN_DIR/audit.json and returns the report."""
    from estuary.data.federated import build_federated_data
    from estuary.lm.model import attach_lora, load_base
    from estuary.models import resolve_model
    from estuary.platform.loading import load_config
    from estuary.platform.records import open_run_dir
    from estuary.platform.strategy import client_ids
    from estuary.registry import get

    path = open_run_dir(run_dir)
    cfg = load_config(path / "config.yaml")
    data = build_federated_data(cfg.data.model_dump_json(), cfg.clients.count, cfg.seed)
    ids = client_ids(cfg.clients.count)
    cid = client or max(ids, key=lambda c: len(data.clients[c].train))
    if cid not in data.clients:
        raise EstuaryError(f"audit: --client {cid!r} is not a client of this run ({ids[0]}..{ids[-1]})")
    train = list(data.clients[cid].train)
    member_set, non_member_set = _members(data, cid, members, cfg.seed)
    k = len(member_set)

    saved, source, strategy = (None, "", "") if retrain else _saved_generator(path, cfg.strategies(), cid)
    if saved is not None and math.isinf(float(saved.get("epsilon", 0.0))):
        saved, source = None, ""  # the run's generator was trained without DP: audit a DP one trained now
    gen_cfg = _generator_config(cfg, strategy or cfg.method)
    if epochs is not None:
        gen_cfg = dataclasses.replace(gen_cfg, epochs=epochs)
    dp_cfg = cfg.privacy if cfg.privacy.enabled else cfg.privacy.model_copy(update={"target_epsilon": 3.0})
    log(f"client {cid}: DP generator from the {source}" if saved is not None else
        f"client {cid}: no DP generator saved in the run; one is trained with the run's privacy settings")
    spec = ((saved or {}).get("model") or get(strategy or cfg.method).generator_model(cfg)
            or cfg.models.for_client(ids.index(cid)))
    base, tok = load_base(resolve_model(spec), dtype=cfg.models.dtype, bf16_matmul=cfg.models.bf16_matmul)
    model = attach_lora(base, cfg.training.lora, seed=cfg.seed)
    results = audit_generators(
        model, tok, data.task, train, member_set, non_member_set, dp_cfg=dp_cfg, gen_cfg=gen_cfg, seed=cfg.seed,
        steps=steps, dp_generator=saved, source=source, log=log,
    )
    note = "" if cfg.privacy.enabled else "the run disabled privacy (ε = ∞); the DP generator is one at target ε = 3"
    report = {
        "run": path.name, "client": cid, "model": spec, "train_examples": len(train),
        "attack": "loss threshold (score = -loss of the text given its label prefix); AUC with DeLong 95% CI",
        "members": f"{k} sampled from the client's train split (what both generators were trained on)",
        "non_members": f"{k} held out: the client's eval split and other clients' data, then the global test split",
        "auc_bound": "largest AUC a membership test of one example can reach under the generator's (ε, δ)",
        "generator": dataclasses.asdict(gen_cfg),
        "privacy": {**dp_cfg.model_dump(mode="json"), "note": note},
        "results": [dataclasses.asdict(r) for r in results],
    }
    if write:
        (path / "audit.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def report_table(report: dict[str, Any]) -> Any:
    """The audit report as a rich Table (one row per generator)."""
    from rich.table import Table

    table = Table("generator", "ε", "δ", "AUC", "95% CI", "AUC bound", "members / non", "loss m / n", "steps",
                  "source")
    for r in report["results"]:
        eps = r["epsilon"] if isinstance(r["epsilon"], str) else f"{r['epsilon']:.3g}"
        table.add_row(r["generator"], eps, f"{r['delta']:.3g}", f"{r['auc']:.3f}",
                      f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", f"{r['auc_bound']:.3f}",
                      f"{r['members']} / {r['non_members']}",
                      f"{r['loss_members']:.3f} / {r['loss_non_members']:.3f}", str(r["steps"]), r["source"])
    return table
