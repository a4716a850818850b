"""DistilDP (Flemings & Annavaram 2024, arXiv 2403.00932): DP knowledge distillation through synthetic text.

Federated form. The teacher is DP-trained in the client that owns the data, not by averaging clients' DP
adapters: every client's ε is then its own ledger's (per-example DP-SGD on data that never leaves it), and
nothing has to average LoRA factors that were initialised and trained apart. Each round has two phases:

1. `teach` (clients): each client DP-fine-tunes its teacher once (LoRA on `teacher_model`, by default
   Qwen2.5-0.5B, larger than the SmolLM2 students as the paper's teacher is; `privacy.generator_model` when set;
   Opacus DP-SGD to privacy.target_epsilon; later rounds sample the same DP model at no further ε), samples text
   from it, and has the teacher read each sample: top-k next-token distributions and last-layer hidden
   states, carried into the student's tokenisation in the client (`estuary.client.distildp`). Only these
   leave the client, with the ledger's release entry.
2. server: the samples are pooled across clients (post-processing), recorded in knowledge/synthetic.jsonl
   and put once in the object store.
3. `distil` (clients): each student (the client's SLM adapter) trains on the pooled synthetic text only,
   (1-λ)·CE + λ·KL (+ β·hidden MSE, off by default as in the published commands; the KL summed per sequence
   as the reference code's, or with `kd_reduction: token_mean` a token mean), and is evaluated (perplexity on
   real held-out text). With `hard_label_baseline`, a twin trained on the same text from the same start with
   λ = β = 0 is evaluated too (hard_labels/*), so both students see the same teacher and samples.

Baselines for the paper's claim: `dp_standalone` (the student DP-trained on the private text, same ε) in the
same run, and a non-private teacher (`privacy.target_epsilon: null`) in a linked run (bench/distildp_ppl.py).
"""

from __future__ import annotations

import math
import random
import statistics
from typing import TYPE_CHECKING, Any, ClassVar

from estuary.errors import ConfigError, RoundFailed
from estuary.platform.strategy import Strategy
from estuary.registry import register
from estuary.strategies.distildp_config import DistilDPConfig
from estuary.strategies.dp_baselines import privacy_metrics
from estuary.wire import ClientTask, Egress, RoundOutcome

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
    from estuary.config import ExperimentConfig
    from estuary.data.task import Task
    from estuary.platform.run_context import ServerContext
    from estuary.strategies.distildp_client import TeacherTarget


@register
class DistilDP(Strategy):
    name = "distildp"
    config_class: ClassVar[type] = DistilDPConfig
    uses_privacy: ClassVar[bool] = True  # its DP teacher's model is checked before the run starts
    description = ("Clients' DP teachers write synthetic text with their token distributions and hidden states; "
                   "SLM students learn hard labels, soft labels and hidden states from it.")
    task_kind = "generation"
    task_use = "distils language models on text"

    def __init__(self, exp: Any, params: Any | None = None) -> None:
        super().__init__(exp, params)
        self._pool: Any = None  # this round's pooled targets (an object-store reference under Ray)

    @classmethod
    def generator_model(cls, cfg: ExperimentConfig) -> str | None:
        """The DP teacher's model: privacy.generator_model when set, else `teacher_model` (None: the SLM)."""
        from estuary.registry import params_for

        return cfg.privacy.generator_model or params_for(cls, cfg.params_of(cls.name)).teacher_model

    @classmethod
    def task_misfit(cls, task: Task) -> str | None:
        """Also: a task with targets whose generated samples would not split into prompt and target."""
        from estuary.data.samples import layout_misfit

        return super().task_misfit(task) or layout_misfit(task)

    @classmethod
    def check_job(cls, cfg: ExperimentConfig, source: str) -> None:
        super().check_job(cfg, source)
        models = {cfg.models.for_client(i) for i in range(cfg.clients.count)}
        if len(models) > 1:
            raise ConfigError(f"{source}: distildp needs one student model for all clients (the teachers' rows are "
                              f"in the student's tokenisation); got {sorted(models)} — set models.client only")

    # ------------------------------------------------------------------ phase 1: DP teachers
    def configure_round(self, rnd: int, clients: list[str]) -> list[ClientTask]:
        return [ClientTask(cid, rnd, kind="teach", evaluate=False) for cid in clients]

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        if task.kind == "teach":
            return self._teach(ctx, task)
        return self._distil(ctx, task)

    def _teach(self, ctx: ClientContext, task: ClientTask) -> Egress:
        from estuary.strategies.distildp_client import client_teacher_targets

        p: DistilDPConfig = self.params
        res = ctx.dp_synthesize(task.round, p.generator, generator_model=self.generator_model(self.exp))
        metrics = {**privacy_metrics(res.epsilon, res.refused), "synthetic/refused": float(res.refused)}
        metrics.update({f"synthetic/{k}": float(v) for k, v in res.stats.items()})
        if res.training is not None:
            losses = [x for x in res.training.losses if not math.isnan(x)]
            if losses:
                metrics["teacher/loss"] = statistics.fmean(losses)
        if res.refused or not res.examples:
            return ctx.egress(task, metrics=metrics, payload={"refusal": res.refusal} if res.refused else {})
        targets, unparsed = client_teacher_targets(ctx, list(res.examples), k=p.topk)
        metrics["synthetic/unparsed"] = float(unparsed)
        metrics["synthetic/targets"] = float(len(targets))
        if targets:
            metrics["alignment/coverage"] = statistics.fmean(t.coverage for t in targets)
        parsed = {t.example.uid for t in targets}
        dropped = [{"uid": ex.uid, "text": ex.text} for ex in res.examples if ex.uid not in parsed]
        return ctx.egress(task, metrics=metrics, synthetic=list(res.examples),
                          payload={"targets": targets, "unparsed": dropped})

    # ------------------------------------------------------------------ phase 2: pool (post-processing)
    def aggregate(self, rnd: int, outcome: RoundOutcome) -> dict[str, Any]:
        targets = [t for cid in sorted(outcome.results) for t in outcome.results[cid].payload.get("targets", [])]
        refused = sorted(cid for cid, eg in outcome.results.items() if "refusal" in eg.payload)
        unparsed = [row for cid in sorted(outcome.results) for row in outcome.results[cid].payload.get("unparsed", [])]
        return {"targets": targets, "refused": refused, "unparsed": unparsed}

    def server_step(self, rnd: int, agg: dict[str, Any], server: ServerContext) -> dict[str, float]:
        from estuary.runtime import share

        p: DistilDPConfig = self.params
        targets: list[TeacherTarget] = agg["targets"]
        if p.max_synthetic is not None and len(targets) > p.max_synthetic:
            rng = random.Random(f"{self.exp.seed}/{self.name}/pool/{rnd}")
            targets = [targets[i] for i in sorted(rng.sample(range(len(targets)), p.max_synthetic))]
        unparsed: list[dict[str, Any]] = agg.get("unparsed", [])
        server.record("synthetic", [
            {"uid": t.example.uid, "client": _client_of(t.example.uid), "round": rnd, "strategy": self.name,
             "parsed": True, "text": t.example.text, "target": t.example.target, "tokens": len(t.input_ids),
             "coverage": round(t.coverage, 4)}
            for t in targets] + [
            {"uid": row["uid"], "client": _client_of(row["uid"]), "round": rnd, "strategy": self.name,
             "parsed": False, "text": row["text"]} for row in unparsed])
        self._pool = share(targets) if targets else None  # one copy in the object store for every student
        if not targets and unparsed and not agg["refused"]:
            raise RoundFailed(
                f"distildp round {rnd}: none of the {len(unparsed)} synthetic samples the DP teachers wrote parse as "
                f"{server.task.name} examples (they are in knowledge/synthetic.jsonl), so the students would learn "
                "nothing; give the teachers more to learn from (method_params.generator.epochs, "
                "privacy.target_epsilon) or a larger privacy.generator_model")
        if not targets:
            server.log(f"[yellow]distildp round {rnd}: no client sent synthetic text; students are not "
                       "trained this round[/yellow]")
        return {"pool/samples": float(len(targets)), "pool/tokens": float(sum(len(t.input_ids) for t in targets)),
                "synthetic/clients_refused": float(len(agg["refused"]))}

    # ------------------------------------------------------------------ phase 3: students
    def configure_followup(self, rnd: int, outcome: RoundOutcome) -> list[ClientTask]:
        ev = self.should_evaluate(rnd)
        return [ClientTask(cid, rnd, kind="distil", evaluate=ev, params={"pool": self._pool})
                for cid in sorted(outcome.results)]

    def _distil(self, ctx: ClientContext, task: ClientTask) -> Egress:
        from estuary.lm.model import adapter_state, load_adapter_state
        from estuary.runtime import resolve
        from estuary.strategies.distildp_client import HARD_KEY, student_distill

        p: DistilDPConfig = self.params
        pool = resolve(task.params.get("pool"))
        metrics: dict[str, float] = {"distil/samples": float(len(pool or []))}
        if not pool:
            if task.evaluate:
                metrics.update(ctx.evaluate(task))
            return ctx.egress(task, metrics=metrics)
        steps = self.exp.training.steps if p.steps is None else p.steps
        keep = self.exp.training.keep_optimizer_state
        if p.hard_label_baseline:  # the twin: same samples, same start, hard labels only
            own = adapter_state(ctx.model)
            twin = ctx.state.extra.get(HARD_KEY) or {"adapter": own, "optimizer": None}
            load_adapter_state(ctx.model, twin["adapter"])
            hard = student_distill(ctx, task.round, pool, steps=steps, distill_weight=0.0, hidden_weight=0.0,
                                   temperature=p.temperature, tail_bucket=p.tail_bucket,
                                   optimizer_state=twin["optimizer"] if keep else None, purpose="distildp-hard")
            metrics["hard_labels/train/loss"] = statistics.fmean(hard.losses) if hard.losses else 0.0
            if task.evaluate:
                metrics.update({f"hard_labels/{k}": v for k, v in ctx.evaluate(task).items()})
            ctx.state.extra[HARD_KEY] = {"adapter": adapter_state(ctx.model),
                                         "optimizer": hard.optimizer_state if keep else None}
            load_adapter_state(ctx.model, own)
        res = student_distill(ctx, task.round, pool, steps=steps, distill_weight=p.distill_weight,
                              hidden_weight=p.hidden_weight, temperature=p.temperature, tail_bucket=p.tail_bucket,
                              optimizer_state=ctx.state.optimizer if keep else None, purpose="distildp",
                              kd_reduction=p.kd_reduction)
        ctx.state.optimizer = res.optimizer_state if keep else None
        ctx.state.steps_trained += steps
        ctx.state.rounds_trained += 1
        ctx.trained = True
        for key, values in (("train/loss", res.losses), ("train/lm_loss", res.lm_losses),
                            ("train/kd_loss", res.kd_losses), ("train/hidden_loss", res.hidden_losses)):
            if values:
                metrics[key] = statistics.fmean(values)
        if task.evaluate:
            metrics.update(ctx.evaluate(task))
        return ctx.egress(task, metrics=metrics, losses=res.losses, examples=res.examples_seen)


def _client_of(uid: str | None) -> str | None:
    """The client in a synthetic sample's uid (synthetic/<client>/r<round>/...)."""
    parts = (uid or "").split("/")
    return parts[1] if len(parts) > 1 else None
